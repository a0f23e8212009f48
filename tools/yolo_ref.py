"""Shared helpers of tools/make_yolo_fixtures.py and tools/export_ultralytics.py: building the
reference PyTorch models (the YOLOv5 repository and the ultralytics package), the deterministic
weight recipe of q2-yolo's `weights.rs` (identical arithmetic), and running a model the way
`q2 forward` reports it.
"""
import contextlib
import io
import math
import os
import sys

import numpy as np
import torch

M64 = (1 << 64) - 1


def fnv1a64(s: str) -> int:
    h = 0xCBF29CE484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def recipe_uniform(key: str, n: int, lo: float, hi: float) -> np.ndarray:
    """n values U(lo, hi) from the splitmix64 stream seeded by fnv1a64(key) (weights.rs)."""
    seed = np.uint64(fnv1a64(key))
    i = np.arange(1, n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = seed + i * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return (lo + (hi - lo) * u).astype(np.float32)


def recipe_range(key: str, shape):
    if key.endswith(".anchors") or key.endswith(".dfl.conv.weight") or key.endswith("num_batches_tracked"):
        return None
    if key.startswith("input"):
        return (0.0, 1.0)
    for suffix, r in ((".bn.weight", (0.5, 1.5)), (".bn.bias", (-0.1, 0.1)), (".bn.running_mean", (-0.2, 0.2)), (".bn.running_var", (0.5, 2.0))):
        if key.endswith(suffix):
            return r
    if len(shape) == 4:
        b = math.sqrt(3.0 / (shape[1] * shape[2] * shape[3]))
        return (-b, b)
    if key.endswith(".bias"):
        return (-0.5, 0.5)
    return None


def recipe_tensor(key, shape):
    lo, hi = recipe_range(key, shape)
    return torch.from_numpy(recipe_uniform(key, int(np.prod(shape)), lo, hi).reshape(shape))


def recipe_fill(model):
    with torch.no_grad():
        for k, v in model.state_dict().items():
            r = recipe_range(k, tuple(v.shape))
            if r is not None and v.dtype.is_floating_point:
                v.copy_(torch.from_numpy(recipe_uniform(k, v.numel(), *r).reshape(tuple(v.shape))))


def build(name: str, nc: int, yolov5_dir="/tmp/yolov5"):
    """The reference model `name` (yolov5{n,s,m} from the YOLOv5 repository, yolo11{n,s,m} from
    ultralytics) with nc classes, float32, eval mode."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        if name.startswith("yolov5"):
            if yolov5_dir not in sys.path:
                sys.path.insert(0, yolov5_dir)
            from models.yolo import Model

            m = Model(os.path.join(yolov5_dir, "models", f"{name}.yaml"), ch=3, nc=nc)
        else:
            from ultralytics.nn.tasks import DetectionModel

            m = DetectionModel(f"{name}.yaml", nc=nc, verbose=False)
    return m.float().eval()


def head(model):
    return model.model[-1]


def run(model, x):
    """Outputs as `q2 forward` names them."""
    det = head(model)
    caught = {}
    hooks = []
    if hasattr(det, "anchors") and hasattr(det, "m"):  # YOLOv5
        for i, m in enumerate(det.m):
            hooks.append(m.register_forward_hook(lambda _m, _i, o, i=i: caught.__setitem__(f"p{i + 3}_raw", o.detach().clone())))
    else:
        for i, m in enumerate(det.cv2):
            hooks.append(m.register_forward_hook(lambda _m, _i, o, i=i: caught.__setitem__(f"p{i + 3}_box_raw", o.detach().clone())))
        for i, m in enumerate(det.cv3):
            hooks.append(m.register_forward_hook(lambda _m, _i, o, i=i: caught.__setitem__(f"p{i + 3}_cls_raw", o.detach().clone())))
    with torch.no_grad():
        y = model(x)
    for h in hooks:
        h.remove()
    caught["decoded"] = (y[0] if isinstance(y, (tuple, list)) else y).detach().clone()
    return {k: v.float().contiguous() for k, v in caught.items()}
