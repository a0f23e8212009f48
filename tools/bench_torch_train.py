#!/usr/bin/env python3
"""Time one PyTorch training step of the reference models, for comparison with `q2 bench`.

The same protocol as `q2 bench` (crates/repro/src/bench_cmd.rs): forward in train mode, the
model's own loss (YOLOv5 `ComputeLoss` from the yolov5 repository; ultralytics `v8DetectionLoss`
for YOLO11), backward, SGD Nesterov step, on a fixed seeded batch of uniform random images with
2-6 random boxes each; 2 warm-up steps, then the median of --steps.

    python tools/bench_torch_train.py --yolov5 /tmp/yolov5 --model yolov5n --img 256 --batch 16 --threads 2 --json
    python tools/bench_torch_train.py ... --mode qat --bits 4

With `--mode qat` every Conv2d (except YOLO11's fixed DFL conv) becomes an LSQ fake-quantized
conv written as ordinary PyTorch modules (the LSQ paper's formulation: learnable step, gradient
scale 1/sqrt(N·Qp), straight-through rounding), weights signed and activations unsigned; the
first conv and the Detect prediction convs at 8 bits, the rest at --bits, as `q2 bench --mode qat`.

Needs torch and (for YOLO11) the `ultralytics` package; for YOLOv5 a checkout of the yolov5
repository (--yolov5). Prints one JSON object like `q2 bench --json`.
"""
import argparse
import json
import resource
import statistics
import sys
import time


def lsq_modules():
    import math
    import torch
    from torch import nn

    def grad_scale(x, g):
        return (x - x * g).detach() + x * g

    def round_ste(x):
        return (x.round() - x).detach() + x

    class Lsq(nn.Module):
        def __init__(self, bits, signed):
            super().__init__()
            self.qn, self.qp = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
            self.step = nn.Parameter(torch.tensor(0.1))

        def forward(self, x):
            s = grad_scale(self.step, 1.0 / math.sqrt(x.numel() * self.qp))
            return round_ste(torch.clamp(x / s, self.qn, self.qp)) * s

    class QConv2d(nn.Module):
        def __init__(self, conv, bits):
            super().__init__()
            self.conv, self.wq, self.aq = conv, Lsq(bits, True), Lsq(bits, False)

        def forward(self, x):
            c = self.conv
            return nn.functional.conv2d(self.aq(x), self.wq(c.weight), c.bias, c.stride, c.padding, c.dilation, c.groups)

    return QConv2d


def quantize_convs(model, bits):
    """Replaces every Conv2d (not the DFL's) by an LSQ fake-quantized one, in place."""
    from torch import nn

    QConv2d = lsq_modules()
    layers = model.model
    first, head = layers[0], layers[-1]
    head_convs = set()
    if hasattr(head, "m"):  # YOLOv5 Detect
        head_convs = {id(c) for c in head.m}
    else:  # YOLO11 Detect: the last conv of each cv2 / cv3 branch
        head_convs = {id(b[-1]) for b in list(head.cv2) + list(head.cv3)}
    first_convs = {id(m) for m in first.modules() if isinstance(m, nn.Conv2d)}
    for parent in list(model.modules()):
        if type(parent).__name__ == "DFL":
            continue
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d):
                b = 8 if id(child) in head_convs or id(child) in first_convs else bits
                setattr(parent, name, QConv2d(child, b))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="yolov5n")
    ap.add_argument("--img", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--nc", type=int, default=20)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--yolov5", default="/tmp/yolov5")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--mode", default="fp", choices=["fp", "qat"])
    ap.add_argument("--bits", type=int, default=4)
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    g = torch.Generator().manual_seed(a.seed)
    x = torch.rand(a.batch, 3, a.img, a.img, generator=g)
    rows = []
    for i in range(a.batch):
        for _ in range(int(torch.randint(2, 7, (1,), generator=g))):
            w, h = (0.03 + 0.57 * torch.rand(2, generator=g)).tolist()
            cx = w / 2 + (1 - w) * float(torch.rand(1, generator=g))
            cy = h / 2 + (1 - h) * float(torch.rand(1, generator=g))
            rows.append([i, int(torch.randint(0, a.nc, (1,), generator=g)), cx, cy, w, h])
    targets = torch.tensor(rows, dtype=torch.float32)

    if a.model.startswith("yolov5"):
        sys.path.insert(0, a.yolov5)
        from models.yolo import Model
        from utils.loss import ComputeLoss
        import yaml

        model = Model(f"{a.yolov5}/models/{a.model}.yaml", ch=3, nc=a.nc)
        with open(f"{a.yolov5}/data/hyps/hyp.scratch-low.yaml") as f:
            hyp = yaml.safe_load(f)
        nl = model.model[-1].nl
        hyp["box"] *= 3 / nl
        hyp["cls"] *= a.nc / 80 * 3 / nl
        hyp["obj"] *= (a.img / 640) ** 2 * 3 / nl
        model.hyp = hyp
        model.gr = 1.0
        crit = ComputeLoss(model)

        def loss_fn(pred):
            return crit(pred, targets)[0]
    else:
        from ultralytics.nn.tasks import DetectionModel
        from ultralytics.cfg import get_cfg

        model = DetectionModel(f"{a.model}.yaml", ch=3, nc=a.nc, verbose=False)
        model.args = get_cfg()
        batch = {"batch_idx": targets[:, 0], "cls": targets[:, 1:2], "bboxes": targets[:, 2:6], "img": x}
        crit = model.init_criterion()

        def loss_fn(pred):
            l, _ = crit(pred, batch)
            return l.sum()

    if a.mode == "qat":
        quantize_convs(model, a.bits)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.937, nesterov=True)
    step, fwd, bwd = [], [], []
    for i in range(a.steps + 2):
        t0 = time.perf_counter()
        pred = model(x)
        loss = loss_fn(pred)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if i >= 2:
            step.append((t3 - t0) * 1e3)
            fwd.append((t1 - t0) * 1e3)
            bwd.append((t2 - t1) * 1e3)
    ms = statistics.median(step)
    out = {
        "ms_per_step": ms,
        "img_per_s": a.batch * 1e3 / ms,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "fwd_ms": statistics.median(fwd),
        "bwd_ms": statistics.median(bwd),
        "model": a.model, "mode": a.mode, "img": a.img, "batch": a.batch, "threads": a.threads, "torch": torch.__version__,
    }
    print(json.dumps(out) if a.json else out)


if __name__ == "__main__":
    main()
