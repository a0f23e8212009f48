#!/usr/bin/env python3
"""Fixtures of q2-yolo's model tests, computed with the reference implementations (the YOLOv5
repository at /tmp/yolov5 or --yolov5 DIR, and the ultralytics package).

  python tools/make_yolo_fixtures.py            # writes tests/fixtures/yolo/
  python tools/make_yolo_fixtures.py check-large --q2 target/debug/q2   # local, not CI

Writes to tests/fixtures/yolo/:
  reference.json              parameters, GFLOPs (ultralytics get_flops at 640) and state_dict
                              size of yolov5{n,s,m} and yolo11{n,s,m} at nc 20 and 80;
  keys_<model>_nc80.json      state_dict key → shape of yolov5n/s and yolo11n/s (nc 80);
  parity_<model>.safetensors  yolov5n and yolo11n (nc 3) with the deterministic recipe weights
                              (tools/yolo_ref.py = crates/yolo/src/weights.rs): the outputs of
                              `q2 forward` for two inputs, case `a` (batch 2, 64×96) and case `b`
                              (batch 1, 96×64), named `<case>.<output>`; the inputs are the recipe
                              tensors `input.a` / `input.b` and are not stored.

`check-large` compares `q2 forward` with PyTorch for yolov5s and yolo11s at 640×640 (batch 2)
with recipe weights and prints the relative errors (max |diff| / max |ref|) per output.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import yolo_ref  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "yolo")
CASES = {"a": (2, 64, 96), "b": (1, 96, 64)}
PARITY_NC = 3


def reference(args):
    from ultralytics.utils.torch_utils import get_flops

    ref = {}
    for name in ["yolov5n", "yolov5s", "yolov5m", "yolo11n", "yolo11s", "yolo11m"]:
        for nc in (20, 80):
            m = yolo_ref.build(name, nc, args.yolov5)
            sd = m.state_dict()
            ref[f"{name}_{nc}"] = {
                "params": sum(p.numel() for p in m.parameters()),
                "gflops": get_flops(m, 640),
                "n_keys": len(sd),
            }
            if nc == 80 and name[-1] in "ns":
                keys = {k: list(v.shape) for k, v in sd.items()}
                with open(os.path.join(OUT, f"keys_{name}_nc80.json"), "w") as f:
                    json.dump(keys, f, indent=0, sort_keys=True)
            print(name, nc, ref[f"{name}_{nc}"], flush=True)
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1, sort_keys=True)


def parity(args):
    for name in ["yolov5n", "yolo11n"]:
        m = yolo_ref.build(name, PARITY_NC, args.yolov5)
        yolo_ref.recipe_fill(m)
        out = {}
        for case, (b, h, w) in CASES.items():
            x = yolo_ref.recipe_tensor(f"input.{case}", (b, 3, h, w))
            for k, v in yolo_ref.run(m, x).items():
                out[f"{case}.{k}"] = v
        path = os.path.join(OUT, f"parity_{name}.safetensors")
        save_file(out, path, metadata={"model": name, "nc": str(PARITY_NC), "recipe": "crates/yolo/src/weights.rs"})
        print(path, os.path.getsize(path), "bytes")


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def check_large(args):
    """yolov5s / yolo11s at 640 (batch 2) and at 320×512 (batch 3): q2 forward vs PyTorch."""
    with tempfile.TemporaryDirectory() as d:
        for name in ["yolov5s", "yolo11s"]:
            nc = 80
            m = yolo_ref.build(name, nc, args.yolov5)
            yolo_ref.recipe_fill(m)
            w = os.path.join(d, "w.safetensors")
            save_file({k: v.contiguous() for k, v in m.state_dict().items()}, w, metadata={"model": name, "nc": str(nc)})
            for shape in [(2, 3, 640, 640), (3, 3, 320, 512)]:
                x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
                xp, yp = os.path.join(d, "x.safetensors"), os.path.join(d, "y.safetensors")
                save_file({"input": x}, xp)
                subprocess.run([args.q2, "forward", "--model", name, "--nc", str(nc), "--weights", w, "--input", xp, "--out", yp], check=True)
                got = load_file(yp)
                want = yolo_ref.run(m, x)
                errs = {k: rel(got[k], v) for k, v in want.items()}
                print(name, shape, json.dumps({k: f"{e:.2e}" for k, e in errs.items()}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="?", default="all", choices=["all", "reference", "parity", "check-large"])
    ap.add_argument("--yolov5", default="/tmp/yolov5", help="YOLOv5 repository checkout")
    ap.add_argument("--q2", default="target/debug/q2", help="q2 binary for check-large")
    args = ap.parse_args()
    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)
    if args.what in ("all", "reference"):
        reference(args)
    if args.what in ("all", "parity"):
        parity(args)
    if args.what == "check-large":
        check_large(args)


if __name__ == "__main__":
    main()
