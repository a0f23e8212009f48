#!/usr/bin/env python3
"""Reference fixtures for q2-yolo's detection losses, computed with the reference Python code.

Writes (default folder tests/fixtures/yolo):

  loss_v5.safetensors    YOLOv5 `utils/loss.py` `ComputeLoss` (the YOLOv5 repository, checked out at
                         /tmp/yolov5 or --yolov5), with train.py's gain rescaling applied to hyp.
  loss_v11.safetensors   ultralytics 8.4.190 `v8DetectionLoss` (YOLOv8 / YOLO11 detection loss).
  loss_topk.json         `torch.topk(x, k)` on CPU for vectors with many tied values: which indices
                         it returns. The assigner's `topk` over all anchors breaks ties among
                         zero metrics this way (libstdc++ nth_element / partial_sort inside
                         PyTorch), and that decides some assignments; q2 reproduces it.

Nothing here re-implements a loss: the reference classes are imported and called on small random
cases through minimal stand-in model objects holding what their `__init__` reads.

Each case `NAME` stores (float32 inputs, float64 expected values):

  NAME.p{3,4,5}_raw                   (v5)  Detect outputs (B, na*(5+nc), h, w), channel a*(5+nc)+k
  NAME.p{3,4,5}_box_raw / _cls_raw    (v11) (B, 4*reg_max, h, w) and (B, nc, h, w)
  NAME.targets                        (N, 6): image, class, cx, cy, w, h (normalised)
  NAME.meta                           float64 vector, see V5_META / V11_META below
  NAME.anchors                        (v5) (3, 3, 2) anchors in pixels, NAME.strides (3,)
  NAME.total                          the back-propagated total (float64 scalar, 1-element)
  NAME.items                          the three detached loss items, float64
  NAME.grad_<raw name>                d total / d raw, float32

The total is what each reference trainer calls backward on: YOLOv5 train.py back-propagates the
first output of ComputeLoss, `(lbox + lobj + lcls) * bs`; ultralytics' BaseTrainer calls
`loss.sum()` on the first output of `v8DetectionLoss`, `loss * batch_size` with loss = [box, cls,
dfl], so the total is `(box + cls + dfl) * bs`. The items are YOLOv5's `[lbox, lobj, lcls]` and
ultralytics' `[box, cls, dfl]` (gain-scaled, not multiplied by the batch size).

Run from the repository root:  /work/venv/torch/bin/python tools/make_loss_fixtures.py
"""

import argparse
import json
import os
import sys
from types import SimpleNamespace

import torch
from safetensors.torch import save_file
from torch import nn

V5_META = ["nc", "img_h", "img_w", "imgsz", "box", "obj", "cls", "cls_pw", "obj_pw", "anchor_t",
           "fl_gamma", "label_smoothing"]
V11_META = ["nc", "img_h", "img_w", "reg_max", "box", "cls", "dfl"]

V5_ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]
STRIDES = [8.0, 16.0, 32.0]


def random_targets(gen, bs, nc, img_h, img_w, counts):
    """Random labels (image, class, cx, cy, w, h), normalised, sorted by image.

    Per image `counts[b]` boxes drawn from a mix: tiny (2-6 px), medium, large (up to the whole
    image), touching a border, and overlapping copies of a previous box (shifted slightly) so that
    assigners see competing ground truths.
    """
    rows = []
    for b in range(bs):
        prev = []
        for i in range(counts[b]):
            kind = i % 5
            u = lambda lo, hi: float(lo + (hi - lo) * torch.rand((), generator=gen))
            if kind == 0:  # tiny
                w, h = u(2, 6), u(2, 6)
                x1, y1 = u(0, img_w - w), u(0, img_h - h)
            elif kind == 1:  # medium
                w, h = u(0.15, 0.5) * img_w, u(0.15, 0.5) * img_h
                x1, y1 = u(0, img_w - w), u(0, img_h - h)
            elif kind == 2:  # large
                w, h = u(0.6, 1.0) * img_w, u(0.6, 1.0) * img_h
                x1, y1 = u(0, img_w - w), u(0, img_h - h)
            elif kind == 3:  # touching a border
                w, h = u(0.1, 0.4) * img_w, u(0.1, 0.4) * img_h
                side = i % 4
                x1 = 0.0 if side == 0 else (img_w - w if side == 1 else u(0, img_w - w))
                y1 = 0.0 if side == 2 else (img_h - h if side == 3 else u(0, img_h - h))
                if side >= 2:
                    x1 = 0.0 if side == 2 else img_w - w
            else:  # overlapping a previous box
                x1p, y1p, wp, hp = prev[-1] if prev else (0.3 * img_w, 0.3 * img_h, 0.3 * img_w, 0.3 * img_h)
                w, h = wp * u(0.7, 1.2), hp * u(0.7, 1.2)
                x1 = min(max(x1p + u(-4, 4), 0.0), img_w - min(w, img_w))
                y1 = min(max(y1p + u(-4, 4), 0.0), img_h - min(h, img_h))
                w, h = min(w, img_w - x1), min(h, img_h - y1)
            prev.append((x1, y1, w, h))
            c = int(torch.randint(0, nc, (), generator=gen))
            rows.append([b, c, (x1 + w / 2) / img_w, (y1 + h / 2) / img_h, w / img_w, h / img_h])
    if not rows:
        return torch.zeros(0, 6, dtype=torch.float32)
    return torch.tensor(rows, dtype=torch.float32)


# ----------------------------------------------------------------------------------------------
# YOLOv5 ComputeLoss
# ----------------------------------------------------------------------------------------------

class _V5Detect(nn.Module):
    """What ComputeLoss reads from YOLOv5's Detect: nl, na, nc, stride, anchors (grid units)."""

    def __init__(self, nc, anchors_px, strides):
        super().__init__()
        self.nl, self.na, self.nc = 3, 3, nc
        self.stride = torch.tensor(strides, dtype=torch.float32)
        a = torch.tensor(anchors_px, dtype=torch.float32).view(3, 3, 2)
        self.register_buffer("anchors", a / self.stride.view(-1, 1, 1))  # as models/yolo.py


class _V5Model(nn.Module):
    def __init__(self, nc, anchors_px, strides, hyp):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))  # ComputeLoss reads the device from parameters()
        self.model = nn.ModuleList([_V5Detect(nc, anchors_px, strides)])
        self.hyp = hyp


def v5_case(name, gen, *, bs, nc, img_h, img_w, imgsz, counts, anchors_px, hyp, scale=1.5):
    sys.path.insert(0, YOLOV5)
    from utils.loss import ComputeLoss  # noqa: E402  (the YOLOv5 repository's own loss)

    nl, na, no = 3, 3, 5 + nc
    h = dict(hyp)
    # train.py lines 326-328: scale the gains to layers, classes and image size
    h["box"] *= 3 / nl
    h["cls"] *= nc / 80 * 3 / nl
    h["obj"] *= (imgsz / 640) ** 2 * 3 / nl
    model = _V5Model(nc, anchors_px, STRIDES, h)
    loss_fn = ComputeLoss(model)

    raws = []
    for s in STRIDES:
        ny, nx = int(img_h // s), int(img_w // s)
        raws.append((torch.randn(bs, na * no, ny, nx, generator=gen) * scale).requires_grad_(True))
    # models/yolo.py Detect.forward in training: view(bs, na, no, ny, nx).permute(0, 1, 3, 4, 2)
    p = [r.view(bs, na, no, r.shape[2], r.shape[3]).permute(0, 1, 3, 4, 2) for r in raws]
    targets = random_targets(gen, bs, nc, img_h, img_w, counts)
    total, items = loss_fn(p, targets)
    total.backward()

    # Matches, for the report: how many (target, anchor, cell) rows each level got
    tcls, _, indices, _ = loss_fn.build_targets(p, targets)
    print(f"  {name}: B={bs} nc={nc} {img_h}x{img_w} targets={targets.shape[0]} "
          f"matches/level={[int(i[0].shape[0]) for i in indices]} total={total.item():.6f} "
          f"items={items.tolist()}")

    out = {}
    for lvl, r in zip((3, 4, 5), raws):
        out[f"{name}.p{lvl}_raw"] = r.detach().contiguous()
        out[f"{name}.grad_p{lvl}_raw"] = r.grad.detach().contiguous()
    out[f"{name}.targets"] = targets
    meta = dict(nc=nc, img_h=img_h, img_w=img_w, imgsz=imgsz, **hyp)
    out[f"{name}.meta"] = torch.tensor([float(meta[k]) for k in V5_META], dtype=torch.float64)
    out[f"{name}.anchors"] = torch.tensor(anchors_px, dtype=torch.float32).view(3, 3, 2)
    out[f"{name}.strides"] = torch.tensor(STRIDES, dtype=torch.float32)
    out[f"{name}.total"] = total.detach().double().view(1)
    out[f"{name}.items"] = items.detach().double().view(3)
    return out


# ----------------------------------------------------------------------------------------------
# ultralytics v8DetectionLoss (YOLO11)
# ----------------------------------------------------------------------------------------------

class _V8Detect(nn.Module):
    """What v8DetectionLoss reads from ultralytics' Detect: stride, nc, reg_max."""

    def __init__(self, nc, reg_max, strides):
        super().__init__()
        self.nc, self.reg_max = nc, reg_max
        self.stride = torch.tensor(strides, dtype=torch.float32)


class _V8Model(nn.Module):
    def __init__(self, nc, reg_max, strides, args):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.model = nn.ModuleList([_V8Detect(nc, reg_max, strides)])
        self.args = args


def tal_diagnostics(loss_fn, preds, batch):
    """Counts of situations where the reference leaves a choice open (see docs/LOSSES.md):
    topk picks among zero-metric ties that are inside a box, and near-ties at the topk cut."""
    a = loss_fn.assigner
    seen = {}
    orig = a.select_topk_candidates

    def spy(metrics, topk_mask=None):
        res = orig(metrics, topk_mask)
        vals, _ = torch.topk(metrics, a.topk + 1, dim=-1)
        seen["ties"] = int(((vals[..., a.topk - 1] == 0) & (topk_mask[..., 0])).sum())
        gap = (vals[..., a.topk - 1] - vals[..., a.topk]) / vals[..., a.topk - 1].clamp(min=1e-30)
        seen["min_gap"] = float(gap[(vals[..., a.topk - 1] > 0) & topk_mask[..., 0]].min()) if (
            (vals[..., a.topk - 1] > 0) & topk_mask[..., 0]).any() else float("inf")
        return res

    a.select_topk_candidates = spy
    with torch.no_grad():
        loss_fn.get_assigned_targets_and_loss(preds, batch)
    a.select_topk_candidates = orig
    return seen


def v11_case(name, gen, *, bs, nc, img_h, img_w, counts, reg_max=16, box_scale=2.5, cls_mean=-1.0,
             cls_scale=1.5, gains=(7.5, 0.5, 1.5)):
    from ultralytics.utils.loss import v8DetectionLoss

    args = SimpleNamespace(box=gains[0], cls=gains[1], dfl=gains[2])
    model = _V8Model(nc, reg_max, STRIDES, args)
    loss_fn = v8DetectionLoss(model)  # tal_topk=10 as DetectionModel.init_criterion

    box_raws, cls_raws = [], []
    for s in STRIDES:
        ny, nx = int(img_h // s), int(img_w // s)
        box_raws.append((torch.randn(bs, 4 * reg_max, ny, nx, generator=gen) * box_scale).requires_grad_(True))
        cls_raws.append((torch.randn(bs, nc, ny, nx, generator=gen) * cls_scale + cls_mean).requires_grad_(True))
    # ultralytics Detect.forward_head: concatenate the flattened levels
    preds = {
        "boxes": torch.cat([b.view(bs, 4 * reg_max, -1) for b in box_raws], -1),
        "scores": torch.cat([c.view(bs, nc, -1) for c in cls_raws], -1),
        "feats": box_raws,  # only their (h, w) and dtype are read
    }
    targets = random_targets(gen, bs, nc, img_h, img_w, counts)
    batch = {"batch_idx": targets[:, 0], "cls": targets[:, 1:2], "bboxes": targets[:, 2:6]}
    diag = tal_diagnostics(loss_fn, {k: (v.detach() if torch.is_tensor(v) else v) for k, v in preds.items()},
                           batch) if targets.shape[0] else {}
    loss, items = loss_fn(preds, batch)
    total = loss.sum()  # ultralytics BaseTrainer: self.loss = loss.sum(); backward
    total.backward()
    items = torch.stack([items[k] for k in ("box_loss", "cls_loss", "dfl_loss")])
    (fg_mask, *_), _, _ = loss_fn.get_assigned_targets_and_loss(
        {k: (v.detach() if torch.is_tensor(v) else v) for k, v in preds.items()}, batch)
    print(f"  {name}: B={bs} nc={nc} {img_h}x{img_w} targets={targets.shape[0]} fg={int(fg_mask.sum())} "
          f"total={total.item():.6f} items={items.tolist()} tal={diag}")

    out = {}
    for lvl, b, c in zip((3, 4, 5), box_raws, cls_raws):
        out[f"{name}.p{lvl}_box_raw"] = b.detach().contiguous()
        out[f"{name}.p{lvl}_cls_raw"] = c.detach().contiguous()
        out[f"{name}.grad_p{lvl}_box_raw"] = b.grad.detach().contiguous()
        out[f"{name}.grad_p{lvl}_cls_raw"] = c.grad.detach().contiguous()
    out[f"{name}.targets"] = targets
    meta = dict(nc=nc, img_h=img_h, img_w=img_w, reg_max=reg_max, box=gains[0], cls=gains[1], dfl=gains[2])
    out[f"{name}.meta"] = torch.tensor([float(meta[k]) for k in V11_META], dtype=torch.float64)
    out[f"{name}.total"] = total.detach().double().view(1)
    out[f"{name}.items"] = items.detach().double().view(3)
    return out


def topk_cases(gen):
    """torch.topk (largest, CPU, float32) on sparse vectors with heavy ties: lengths on both sides
    of PyTorch's switch from nth_element to partial_sort (k * 64 <= n)."""
    cases = []
    for n, k, density in [(21, 10, 0.2), (63, 10, 0.1), (84, 10, 0.05), (84, 10, 0.0), (100, 10, 0.3),
                          (500, 10, 0.01), (639, 10, 0.01), (640, 10, 0.01), (700, 10, 0.0),
                          (1000, 10, 0.005), (2100, 10, 0.002), (8400, 10, 0.0005), (84, 5, 0.1),
                          (336, 10, 0.02), (1344, 13, 0.003)]:
        x = torch.zeros(n)
        nz = torch.rand(n, generator=gen) < density
        # a few distinct values and exact ties among them
        x[nz] = torch.randint(1, 4, (int(nz.sum()),), generator=gen).float() * 0.25
        _, idx = torch.topk(x, k)
        cases.append({"n": n, "k": k, "nonzero": [[int(i), float(x[i])] for i in nz.nonzero().flatten()],
                      "indices": [int(i) for i in idx]})
    return cases


SCRATCH_LOW = dict(box=0.05, obj=1.0, cls=0.5, cls_pw=1.0, obj_pw=1.0, anchor_t=4.0, fl_gamma=0.0,
                   label_smoothing=0.0)


def main():
    global YOLOV5
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/yolo")
    ap.add_argument("--yolov5", default="/tmp/yolov5")
    args = ap.parse_args()
    YOLOV5 = args.yolov5
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    small = [[v * 0.5 for v in lvl] for lvl in V5_ANCHORS]

    print("loss_v5.safetensors")
    gen = torch.Generator().manual_seed(5)
    v5 = {}
    # 64x64, default anchors and hyp.scratch-low
    v5.update(v5_case("a", gen, bs=2, nc=3, img_h=64, img_w=64, imgsz=64, counts=[6, 4],
                      anchors_px=V5_ANCHORS, hyp=SCRATCH_LOW))
    # 64 high x 96 wide, batch 3 with an empty image, half-size anchors, label smoothing, focal
    # loss, positive weights, a looser anchor_t
    hyp_b = dict(SCRATCH_LOW, cls_pw=1.5, obj_pw=0.8, anchor_t=5.0, fl_gamma=1.5, label_smoothing=0.1)
    v5.update(v5_case("b", gen, bs=3, nc=5, img_h=64, img_w=96, imgsz=96, counts=[7, 0, 5],
                      anchors_px=small, hyp=hyp_b))
    # no targets at all
    v5.update(v5_case("c", gen, bs=2, nc=3, img_h=32, img_w=64, imgsz=64, counts=[0, 0],
                      anchors_px=V5_ANCHORS, hyp=SCRATCH_LOW))
    # one class (no class loss), imgsz different from the batch's size
    v5.update(v5_case("d", gen, bs=2, nc=1, img_h=64, img_w=32, imgsz=128, counts=[3, 5],
                      anchors_px=small, hyp=dict(SCRATCH_LOW, box=0.06, obj=0.8)))
    save_file(v5, os.path.join(args.out, "loss_v5.safetensors"),
              metadata={"generator": "tools/make_loss_fixtures.py", "meta": ",".join(V5_META)})

    print("loss_v11.safetensors")
    gen = torch.Generator().manual_seed(11)
    v11 = {}
    v11.update(v11_case("a", gen, bs=2, nc=3, img_h=64, img_w=64, counts=[7, 5]))
    v11.update(v11_case("b", gen, bs=3, nc=5, img_h=32, img_w=64, counts=[6, 0, 9]))
    v11.update(v11_case("c", gen, bs=2, nc=2, img_h=32, img_w=32, counts=[0, 0]))
    save_file(v11, os.path.join(args.out, "loss_v11.safetensors"),
              metadata={"generator": "tools/make_loss_fixtures.py", "meta": ",".join(V11_META)})
    gen = torch.Generator().manual_seed(3)
    with open(os.path.join(args.out, "loss_topk.json"), "w") as fh:
        json.dump({"generator": "tools/make_loss_fixtures.py", "torch": torch.__version__,
                   "cases": topk_cases(gen)}, fh, separators=(",", ":"))
    for f in ("loss_v5.safetensors", "loss_v11.safetensors", "loss_topk.json"):
        print(f, os.path.getsize(os.path.join(args.out, f)), "bytes")


YOLOV5 = "/tmp/yolov5"

if __name__ == "__main__":
    main()
