#!/usr/bin/env python3
"""Fixtures for q2-yolo's NMS and post-processing, made by the reference implementations, and
timings of those references on a realistic input.

Runs YOLOv5's `utils/general.py::non_max_suppression` (as val.py calls it), ultralytics'
`utils/nms.py::non_max_suppression` (as the 8.4 DetectionValidator calls it for YOLO11), YOLOv5's
`scale_boxes` and ultralytics' `ops.scale_boxes`, and YOLOv5 val.py's `save_one_json`, on random
decoded tensors, and writes

- tests/fixtures/yolo/nms_v5.safetensors, nms_v11.safetensors: per case the decoded input
  (`CASE.input`), per configuration and image the kept detections in output order as int32 ids
  row * nc + class (`CASE.CFG.IMAGE.ids`), and for the val configuration also the output rows
  [x1, y1, x2, y2, score, class] (`CASE.val.IMAGE.rows`);
- tests/fixtures/yolo/nms_cases.json: the cases, their configurations and shapes;
- tests/fixtures/yolo/nms_scale.json: scale_boxes and COCO-results cases.

The timing part builds the benchmark input of crates/yolo/benches/nms.rs (the same splitmix64
generator, so the numbers are bit-identical up to libm rounding of exp/log) and times both
references on it.

Usage (repository root):
    /work/venv/torch/bin/python tools/make_nms_fixtures.py [--yolov5 /tmp/yolov5] [--no-write]
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision  # noqa: F401  (ultralytics' NMS uses torchvision when it is imported, as in val)
from safetensors.numpy import save_file

OUT = Path("tests/fixtures/yolo")


# ----------------------------------------------------------------------------------------------
# Random decoded tensors with clustered boxes.
# ----------------------------------------------------------------------------------------------

def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def make_rows(rng, n, nc, img=640, objects=8, cluster_frac=0.5, empty=False, sparse_small=False,
              quantize=None, edge_values=False):
    """Rows (n, 5 + nc): cx, cy, w, h (pixels), objectness, class sigmoids (float32).

    Half the rows (cluster_frac) jitter around `objects` ground boxes with high scores for the
    object's class; the rest are background boxes with low scores, some above 0.001.
    """
    rows = np.zeros((n, 5 + nc), np.float64)
    ncl = int(n * cluster_frac)
    if sparse_small:
        # many separate small confident boxes: more than max_det survive
        g = int(math.ceil(math.sqrt(n)))
        idx = np.arange(n)
        cell = img / g
        rows[:, 0] = (idx % g + 0.5) * cell + rng.uniform(-2, 2, n)
        rows[:, 1] = (idx // g + 0.5) * cell + rng.uniform(-2, 2, n)
        rows[:, 2] = cell * rng.uniform(0.3, 0.6, n)
        rows[:, 3] = cell * rng.uniform(0.3, 0.6, n)
        rows[:, 4] = sigmoid(rng.normal(2.0, 1.0, n))
        rows[:, 5:] = sigmoid(rng.normal(0.0, 2.0, (n, nc)))
    else:
        gt = np.stack([rng.uniform(0, img, objects), rng.uniform(0, img, objects),
                       rng.uniform(12, img / 2, objects), rng.uniform(12, img / 2, objects)], 1)
        gcls = rng.integers(0, nc, objects)
        k = rng.integers(0, objects, ncl)
        jit = rng.normal(0, 0.12, (ncl, 4))
        rows[:ncl, 0] = gt[k, 0] + jit[:, 0] * gt[k, 2]
        rows[:ncl, 1] = gt[k, 1] + jit[:, 1] * gt[k, 3]
        rows[:ncl, 2] = gt[k, 2] * np.exp(jit[:, 2])
        rows[:ncl, 3] = gt[k, 3] * np.exp(jit[:, 3])
        rows[:ncl, 4] = sigmoid(rng.normal(0.5, 2.0, ncl))
        cls = rng.normal(-5.0, 2.5, (ncl, nc))
        cls[np.arange(ncl), gcls[k]] = rng.normal(1.5, 1.5, ncl)
        # a second plausible class for some rows (multi-label matters)
        second = rng.random(ncl) < 0.3
        cls[second, (gcls[k][second] + 1) % nc] = rng.normal(0.0, 1.5, second.sum())
        rows[:ncl, 5:] = sigmoid(cls)
        nb = n - ncl
        rows[ncl:, 0] = rng.uniform(-20, img + 20, nb)
        rows[ncl:, 1] = rng.uniform(-20, img + 20, nb)
        rows[ncl:, 2] = rng.uniform(4, img / 3, nb)
        rows[ncl:, 3] = rng.uniform(4, img / 3, nb)
        rows[ncl:, 4] = sigmoid(rng.normal(-7.0, 2.0, nb))
        rows[ncl:, 5:] = sigmoid(rng.normal(-3.0, 2.5, (nb, nc)))
        perm = rng.permutation(n)
        rows = rows[perm]
    if empty:
        rows[:, 4] = rng.uniform(0, 0.0009, n)
        rows[:, 5:] = rng.uniform(0, 0.0009, (n, nc))
    if quantize:
        rows[:, 4:] = np.round(rows[:, 4:] * quantize) / quantize
        rows[:, 0:4] = np.round(rows[:, 0:4] * 4) / 4
    rows = rows.astype(np.float32)
    if edge_values:
        # values exactly on the threshold (float32(0.001)) and products that tie
        m = n // 10
        rows[:m, 4] = np.float32(0.001)
        rows[m:2 * m, 5] = np.float32(0.001)
        rows[2 * m:3 * m, 4] = np.float32(1.0)
        rows[2 * m:3 * m, 5] = np.float32(0.5)
    return rows


# ----------------------------------------------------------------------------------------------
# References.
# ----------------------------------------------------------------------------------------------

def load_refs(yolov5):
    sys.path.insert(0, yolov5)
    from utils.general import non_max_suppression as v5_nms  # noqa: E402
    from utils.general import scale_boxes as v5_scale  # noqa: E402
    from ultralytics.utils import ops  # noqa: E402
    from ultralytics.utils.nms import non_max_suppression as ul_nms  # noqa: E402
    import types

    class Stub(types.ModuleType):
        def __getattr__(self, name):
            return None

    # plotting-only imports of val.py (utils/plots.py), not needed for save_one_json
    for missing in ("seaborn", "scipy", "scipy.ndimage"):
        try:
            __import__(missing)
        except ImportError:
            sys.modules[missing] = Stub(missing)
    import val as v5_val  # noqa: E402

    return v5_nms, v5_scale, ul_nms, ops, v5_val


V5_CFGS = {
    # val.py: conf 0.001, iou 0.6, multi_label=True, agnostic=single_cls=False, max_det 300
    "val": dict(conf_thres=0.001, iou_thres=0.6, multi_label=True, agnostic=False, max_det=300),
    "agnostic": dict(conf_thres=0.001, iou_thres=0.6, multi_label=True, agnostic=True, max_det=300),
    "single": dict(conf_thres=0.001, iou_thres=0.6, multi_label=False, agnostic=False, max_det=300),
    # detect.py defaults
    "predict": dict(conf_thres=0.25, iou_thres=0.45, multi_label=False, agnostic=False, max_det=1000),
    "maxdet": dict(conf_thres=0.001, iou_thres=0.6, multi_label=True, agnostic=False, max_det=50),
}

V11_CFGS = {
    # DetectionValidator.postprocess: conf 0.001, iou 0.7, multi_label=True, agnostic False,
    # max_det 300, max_nms 30000, max_wh 7680
    "val": dict(conf_thres=0.001, iou_thres=0.7, multi_label=True, agnostic=False, max_det=300),
    "agnostic": dict(conf_thres=0.001, iou_thres=0.7, multi_label=True, agnostic=True, max_det=300),
    "single": dict(conf_thres=0.001, iou_thres=0.7, multi_label=False, agnostic=False, max_det=300),
    "predict": dict(conf_thres=0.25, iou_thres=0.7, multi_label=False, agnostic=False, max_det=300),
    "maxnms": dict(conf_thres=0.001, iou_thres=0.7, multi_label=True, agnostic=False, max_det=300,
                   max_nms=200),
    "maxdet": dict(conf_thres=0.001, iou_thres=0.7, multi_label=True, agnostic=False, max_det=50),
}


def xywh2xyxy32(x):
    """float32 (N, 4) cx, cy, w, h -> x1, y1, x2, y2, as ultralytics `ops.xywh2xyxy` computes it."""
    half = x[:, 2:4] / np.float32(2)
    return np.concatenate([x[:, :2] - half, x[:, :2] + half], 1)


def run_v5(v5_nms, pred, cfg, stable=False):
    """Rows per image and the kept (row, class) ids row * nc + class, recovered by matching each
    output row to the unique input row with that box and that obj * cls score.

    With `stable`, YOLOv5's pre-sort `x[:, 4].argsort(descending=True)` is made stable. torch's
    default argsort is not: the order of tied scores is implementation-defined (it depends on
    the CPU's sort kernel), so the reference itself has no portable answer when tied boxes of
    one class overlap. q2 uses the stable order, which ultralytics' path (no pre-sort below
    max_nms; torchvision's stable sort) also gives."""
    if stable:
        orig = torch.Tensor.argsort

        def stable_argsort(self, dim=-1, descending=False, stable=False):
            return torch.sort(self, dim=dim, descending=descending, stable=True)[1]

        torch.Tensor.argsort = stable_argsort
    try:
        out = v5_nms(torch.from_numpy(pred.copy()), labels=(), **cfg)
    finally:
        if stable:
            torch.Tensor.argsort = orig
    nc = pred.shape[2] - 5
    rows, ids = [], []
    for b, o in enumerate(out):
        o = o.numpy().astype(np.float32)
        boxes = xywh2xyxy32(pred[b, :, :4])
        conf = pred[b, :, 5:] * pred[b, :, 4:5]
        idb = []
        for r in o:
            c = int(r[5])
            hit = np.nonzero((boxes == r[:4]).all(1) & (conf[:, c] == r[4]))[0]
            assert len(hit) >= 1, "output row not found in the input"
            assert len(hit) == 1 or (boxes[hit] == boxes[hit[0]]).all(), "ambiguous output row"
            idb.append(int(hit[0]) * nc + c)
        rows.append(o)
        ids.append(np.array(idb, np.int32))
    return rows, ids


def run_v11(ul_nms, pred, cfg):
    out, idx = ul_nms(torch.from_numpy(pred.copy()), return_idxs=True, **cfg)
    nc = pred.shape[1] - 4
    rows = [o.numpy().astype(np.float32) for o in out]
    ids = [(i.numpy().astype(np.int64).reshape(-1) * nc + r[:, 5].astype(np.int64)).astype(np.int32)
           for i, r in zip(idx, rows)]
    return rows, ids


def nms_fixtures(v5_nms, ul_nms, write):
    rng = np.random.default_rng(20240917)
    # (name, batch specs, nc, configs)
    specs = [
        ("a", [dict(n=300), dict(n=300, empty=True), dict(n=300, objects=3)], 3, None),
        ("b", [dict(n=500, objects=12), dict(n=500, objects=20)], 4, ["val", "agnostic", "maxdet"]),
        ("c", [dict(n=400, sparse_small=True), dict(n=400, sparse_small=True)], 2, ["val", "single"]),
        ("d", [dict(n=150, objects=6), dict(n=150, objects=10)], 20, ["val", "agnostic", "single"]),
        ("ties", [dict(n=250, quantize=32, edge_values=True), dict(n=250, quantize=16)], 4,
         ["val", "agnostic", "single"]),
    ]
    manifest = {"v5": [], "v11": []}
    for family in ("v5", "v11"):
        tensors = {}
        for name, imgs, nc, cfgs in specs:
            rows = np.stack([make_rows(rng, nc=nc, **kw) for kw in imgs])  # (B, N, 5+nc)
            if family == "v5":
                pred = rows
                table = V5_CFGS
            else:
                # YOLO11 has no objectness: (B, 4 + nc, A), class scores folded with objectness
                # so that the score distribution stays alike
                cls = rows[..., 5:] * rows[..., 4:5] if name != "ties" else rows[..., 5:]
                pred = np.concatenate([rows[..., :4], cls.astype(np.float32)], -1).transpose(0, 2, 1)
                pred = np.ascontiguousarray(pred, np.float32)
                table = V11_CFGS
            use = cfgs or list(table)
            tensors[f"{name}.input"] = pred
            case = {"name": name, "shape": list(pred.shape), "nc": nc, "configs": {},
                    "stable_presort": family == "v5" and name == "ties"}
            for c in use:
                cfg = table[c]
                # ties: YOLOv5 with a stable pre-sort (see run_v5)
                outs, ids = (run_v5(v5_nms, pred, cfg, stable=name == "ties") if family == "v5"
                             else run_v11(ul_nms, pred, cfg))
                counts = [int(o.shape[0]) for o in outs]
                case["configs"][c] = {**cfg, "counts": counts}
                for i, (o, d) in enumerate(zip(outs, ids)):
                    tensors[f"{name}.{c}.{i}.ids"] = d
                    if c == "val":  # full rows for the val configuration
                        tensors[f"{name}.{c}.{i}.rows"] = o.reshape(-1, 6)
                print(f"{family} {name} {c}: kept {counts}")
            # candidate counts (for the record)
            if family == "v5":
                cand = [int(((pred[b, :, 4] > np.float32(0.001))[:, None]
                             & (pred[b, :, 5:] * pred[b, :, 4:5] > np.float32(0.001))).sum())
                        for b in range(pred.shape[0])]
            else:
                cand = [int((pred[b, 4:] > np.float32(0.001)).sum()) for b in range(pred.shape[0])]
            case["candidates"] = cand
            print(f"{family} {name}: shape {list(pred.shape)}, multi-label candidates {cand}")
            manifest[family].append(case)
        if write:
            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                      str(OUT / f"nms_{family}.safetensors"))
    return manifest


# ----------------------------------------------------------------------------------------------
# scale_boxes and COCO rows.
# ----------------------------------------------------------------------------------------------

def v5_letterbox_geometry(w0, h0, img_size, shape):
    """YOLOv5 load_image + letterbox(auto=False, scaleup=False) as in val: returns the
    letterboxed (h, w) and ratio_pad ((h/h0, w/w0), (dw, dh))."""
    r = img_size / max(h0, w0)
    w, h = (math.ceil(w0 * r), math.ceil(h0 * r)) if r != 1 else (w0, h0)
    nh, nw = shape
    rr = min(nh / h, nw / w, 1.0)
    uw, uh = int(round(w * rr)), int(round(h * rr))
    dw, dh = (nw - uw) / 2, (nh - uh) / 2
    return (nh, nw), ((h / h0, w / w0), (dw, dh))


def scale_fixtures(v5_scale, ops, v5_val):
    rng = np.random.default_rng(7)
    cases = []
    geoms = [
        # (orig w, h, letterboxed (h, w))
        (500, 375, (640, 640)),
        (333, 500, (640, 448)),
        (640, 427, (448, 640)),
        (1280, 720, (384, 640)),
        (97, 211, (640, 320)),
    ]
    class_map = [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13, 14]
    for gi, (w0, h0, shape) in enumerate(geoms):
        n = 25
        hh, ww = shape
        x1 = rng.uniform(-30, ww, n)
        y1 = rng.uniform(-30, hh, n)
        boxes = np.stack([x1, y1, x1 + rng.uniform(0.5, 300, n), y1 + rng.uniform(0.5, 300, n)], 1)
        if gi == 0:
            boxes[:4] = np.round(boxes[:4] * 16) / 16  # exact binary fractions: rounding ties
        boxes = boxes.astype(np.float32)
        scores = rng.uniform(0.001, 1, n).astype(np.float32)
        scores[:3] = np.array([0.5, 0.123455, 0.0010000001], np.float32)
        cls = rng.integers(0, len(class_map), n).astype(np.float32)
        (lh, lw), ratio_pad = v5_letterbox_geometry(w0, h0, 640, shape)
        # YOLOv5 val.py: scale_boxes(im.shape[1:], predn[:, :4], (h0, w0), shapes[si][1])
        v5_rp = torch.from_numpy(boxes.copy())
        v5_scale((lh, lw), v5_rp, (h0, w0), ratio_pad)
        v5_none = torch.from_numpy(boxes.copy())
        v5_scale((lh, lw), v5_none, (h0, w0), None)
        # ultralytics: ratio_pad ((gain_h, gain_w), (left, top)) with integer pads
        (gh, gw), (dw, dh) = ratio_pad
        ul_ratio_pad = ((gh, gw), (int(round(dw - 0.1)), int(round(dh - 0.1))))
        ul_rp = ops.scale_boxes((lh, lw), torch.from_numpy(boxes.copy()), (h0, w0), ratio_pad=ul_ratio_pad)
        ul_none = ops.scale_boxes((lh, lw), torch.from_numpy(boxes.copy()), (h0, w0))
        # COCO rows as val.py's save_one_json writes them, for the ratio_pad result
        predn = torch.cat([v5_rp, torch.from_numpy(scores)[:, None], torch.from_numpy(cls)[:, None]], 1)
        image_id = "42" if gi % 2 == 0 else f"img_{gi}"
        jdict = []
        v5_val.save_one_json(predn, jdict, Path(f"/data/{image_id}.jpg"), class_map)
        cases.append({
            "orig_wh": [w0, h0],
            "input_hw": [lh, lw],
            "ratio": [ratio_pad[0][1], ratio_pad[0][0]],  # (rx, ry) as q2-data's ShapeInfo
            "pad": list(ratio_pad[1]),  # (dw, dh)
            "ul_pad": list(ul_ratio_pad[1]),
            "boxes": boxes.astype(np.float64).tolist(),
            "scores": scores.astype(np.float64).tolist(),
            "classes": cls.astype(np.float64).tolist(),
            "v5_ratio_pad": v5_rp.numpy().astype(np.float64).tolist(),
            "v5_none": v5_none.numpy().astype(np.float64).tolist(),
            "ul_ratio_pad": ul_rp.numpy().astype(np.float64).tolist(),
            "ul_none": ul_none.numpy().astype(np.float64).tolist(),
            "image_id": image_id,
            "coco": jdict,
        })
    # Python's round(x, n) on values that are exact binary ties and near-ties
    vals = [0.0625, 0.1875, 2.0625, 1.0005, 0.00015, 123.4565, 0.5, 1.5, 2.5, 1e-9, 638.4375, -0.0625,
            0.000005, 0.000015, 0.123455, 0.99999949]
    rounding = [{"x": v, "r3": round(v, 3), "r5": round(v, 5)} for v in vals]
    return {"class_map": class_map, "cases": cases, "rounding": rounding}


# ----------------------------------------------------------------------------------------------
# Benchmark input (same generator as crates/yolo/benches/nms.rs) and reference timings.
# ----------------------------------------------------------------------------------------------

def splitmix_uniform(seed, n):
    """u in (0, 1): splitmix64(seed + i) for i in 0..n, top 53 bits, plus half an ulp."""
    with np.errstate(over="ignore"):
        z = (np.uint64(seed) + np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             + np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def bench_input_v5(b=16, n=25200, nc=80, img=640.0, seed=1):
    """(B, N, 5 + nc) float32: uniform boxes; objectness sigmoid(-9 + L) and class scores
    sigmoid(-6 + L) with L logistic noise (about 11% of rows have objectness > 0.001)."""
    no = 5 + nc
    u = splitmix_uniform(seed, b * n * no).reshape(b, n, no)
    logistic = np.log(u / (1.0 - u))
    x = np.empty((b, n, no), np.float64)
    x[..., 0] = u[..., 0] * img
    x[..., 1] = u[..., 1] * img
    x[..., 2] = 4.0 + u[..., 2] * 200.0
    x[..., 3] = 4.0 + u[..., 3] * 200.0
    x[..., 4] = 1.0 / (1.0 + np.exp(-(-9.0 + logistic[..., 4])))
    x[..., 5:] = 1.0 / (1.0 + np.exp(-(-6.0 + logistic[..., 5:])))
    return x.astype(np.float32)


def bench_input_v11(b=16, a=8400, nc=80, img=640.0, seed=2):
    """(B, 4 + nc, A) float32: uniform boxes, class scores sigmoid(-12.4 + L) (about 0.4% of the
    anchor-class pairs above 0.001, some 2,800 candidates per image, like the YOLOv5 input)."""
    no = 4 + nc
    u = splitmix_uniform(seed, b * a * no).reshape(b, a, no)
    logistic = np.log(u / (1.0 - u))
    x = np.empty((b, a, no), np.float64)
    x[..., 0] = u[..., 0] * img
    x[..., 1] = u[..., 1] * img
    x[..., 2] = 4.0 + u[..., 2] * 200.0
    x[..., 3] = 4.0 + u[..., 3] * 200.0
    x[..., 4:] = 1.0 / (1.0 + np.exp(-(-12.4 + logistic[..., 4:])))
    return np.ascontiguousarray(x.astype(np.float32).transpose(0, 2, 1))


def timeit(f, reps):
    f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def bench(v5_nms, ul_nms, reps):
    x5 = torch.from_numpy(bench_input_v5())
    x11 = torch.from_numpy(bench_input_v11())
    c5 = int(((x5[..., 4:5] > 0.001) & (x5[..., 5:] * x5[..., 4:5] > 0.001)).sum())
    c11 = int((x11[:, 4:] > 0.001).sum())
    o5 = v5_nms(x5.clone(), 0.001, 0.6, labels=(), multi_label=True, agnostic=False, max_det=300)
    o11 = ul_nms(x11.clone(), 0.001, 0.7, multi_label=True, agnostic=False, max_det=300)
    t5 = timeit(lambda: v5_nms(x5.clone(), 0.001, 0.6, labels=(), multi_label=True, agnostic=False,
                               max_det=300), reps)
    t11 = timeit(lambda: ul_nms(x11.clone(), 0.001, 0.7, multi_label=True, agnostic=False, max_det=300),
                 reps)
    res = {
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "threads": torch.get_num_threads(),
        "v5": {"shape": list(x5.shape), "candidates": c5, "kept": [int(o.shape[0]) for o in o5],
               "ms_per_batch": t5, "score_sum": sum(float(o[:, 4].double().sum()) for o in o5),
               "box_sum": sum(float(o[:, :4].double().sum()) for o in o5)},
        "v11": {"shape": list(x11.shape), "candidates": c11, "kept": [int(o.shape[0]) for o in o11],
                "ms_per_batch": t11, "score_sum": sum(float(o[:, 4].double().sum()) for o in o11),
                "box_sum": sum(float(o[:, :4].double().sum()) for o in o11)},
    }
    print(json.dumps(res))
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--yolov5", default="/tmp/yolov5")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--reps", type=int, default=10, help="timed repetitions of the benchmark")
    ap.add_argument("--no-bench", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    v5_nms, v5_scale, ul_nms, ops, v5_val = load_refs(args.yolov5)
    OUT.mkdir(parents=True, exist_ok=True)
    manifest = nms_fixtures(v5_nms, ul_nms, not args.no_write)
    scale = scale_fixtures(v5_scale, ops, v5_val)
    if not args.no_write:
        (OUT / "nms_cases.json").write_text(json.dumps(manifest, indent=1) + "\n")
        (OUT / "nms_scale.json").write_text(json.dumps(scale) + "\n")
        for p in sorted(OUT.glob("nms*")):
            print(f"{p}: {p.stat().st_size} bytes")
    if not args.no_bench:
        bench(v5_nms, ul_nms, args.reps)


if __name__ == "__main__":
    main()
