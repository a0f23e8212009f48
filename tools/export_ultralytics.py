#!/usr/bin/env python3
"""Convert a PyTorch YOLO checkpoint to the safetensors file q2 loads (`q2 forward --weights`,
`q2_yolo::weights::load`).

  python tools/export_ultralytics.py IN.pt OUT.safetensors [--yolov5 DIR] [--model NAME]

IN.pt is a checkpoint of the YOLOv5 repository (train.py's `last.pt`/`best.pt`, or
`torch.save({'model': model}, ...)`; unpickling needs the repository on sys.path: /tmp/yolov5 or
--yolov5 DIR) or of the `ultralytics` package (`YOLO(...).save(...)`, train's weights). The
model (`ema` when `model` is absent) is written as float32 with its state_dict keys unchanged
(`model.0.conv.weight`, ..., `model.24.anchors`, `model.23.dfl.conv.weight`,
`num_batches_tracked` as int64); the safetensors metadata records `model` (e.g. `yolov5s`, from
the model's yaml file name and scale, or --model), `nc` and `names` (JSON).
"""
import argparse
import json
import os
import re
import sys


def model_name(m, override):
    if override:
        return override
    y = getattr(m, "yaml", {}) or {}
    yaml_file = y.get("yaml_file") or getattr(m, "yaml_file", "")  # ultralytics: in the dict; YOLOv5: an attribute
    stem = os.path.splitext(os.path.basename(str(yaml_file)))[0]  # yolov5s / yolo11n
    scale = y.get("scale")
    if scale and re.fullmatch(r"yolo(v\d+|\d+)", stem):
        stem += scale  # ultralytics strips the scale letter: yolo11.yaml + scale n
    return stem or "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="checkpoint .pt")
    ap.add_argument("output", help="safetensors file to write")
    ap.add_argument("--yolov5", default="/tmp/yolov5", help="YOLOv5 repository checkout (for YOLOv5 checkpoints)")
    ap.add_argument("--model", help="model name to record (default: from the checkpoint's yaml)")
    args = ap.parse_args()
    if os.path.isdir(args.yolov5) and args.yolov5 not in sys.path:
        sys.path.insert(0, args.yolov5)

    import torch
    from safetensors.torch import save_file

    ckpt = torch.load(args.input, map_location="cpu", weights_only=False)
    m = ckpt
    if isinstance(ckpt, dict):
        m = ckpt.get("model") or ckpt.get("ema")
        if m is None:
            sys.exit(f"{args.input}: no `model` or `ema` entry in the checkpoint (keys: {list(ckpt)})")
    if not hasattr(m, "state_dict"):
        sys.exit(f"{args.input}: the checkpoint's model is a {type(m).__name__}, not a torch module")
    m = m.float()
    sd = {k: v.detach().contiguous().clone() for k, v in m.state_dict().items()}
    for k, v in sd.items():
        if v.dtype.is_floating_point:
            sd[k] = v.float()
            if not torch.isfinite(sd[k]).all():
                sys.exit(f"{args.input}: tensor `{k}` holds NaN/Inf values")
    nc = getattr(m, "nc", None) or (getattr(m, "yaml", {}) or {}).get("nc")
    names = getattr(m, "names", None)
    if isinstance(names, dict):
        names = [names[i] for i in sorted(names)]
    meta = {"model": model_name(m, args.model), "nc": str(nc), "names": json.dumps(names or [])}
    save_file(sd, args.output, metadata=meta)
    print(f"{args.output}: {len(sd)} tensors, model {meta['model']}, nc {nc}")


if __name__ == "__main__":
    main()
