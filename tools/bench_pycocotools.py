#!/usr/bin/env python3
"""Times pycocotools' COCOeval on the files `q2 bench-eval --out DIR` writes, beside q2's own
timing of the same files, and checks that both give the same 12 stats.

With --q2 PATH it first runs `PATH bench-eval --out DIR --json` (so both are measured in one
session, on one machine, on the same files); without it, DIR must already hold gt.json, dt.json
and q2.json from such a run.

pycocotools is timed as people run it: COCO(gt) + loadRes(dt) ("load"), then
evaluate() + accumulate() + summarize() ("eval"). q2's "eval" is its COCO evaluation of the
parsed files and its "load" the parsing of both files (`q2 bench-eval` reports the median of its
--repeat runs).

Usage (repository root; venv as in tools/README.md):
    /work/venv/coco/bin/python tools/bench_pycocotools.py --q2 target/release/q2 --dir /tmp/q2-bench
"""

import argparse
import contextlib
import importlib.metadata
import io
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True, help="folder with gt.json, dt.json, q2.json (written by q2 bench-eval --out)")
    ap.add_argument("--q2", help="q2 binary: run `q2 bench-eval --out DIR` first")
    ap.add_argument("--q2-args", default="", help="extra arguments for q2 bench-eval (e.g. '--repeat 5 --images 5000')")
    ap.add_argument("--repeat", type=int, default=1, help="pycocotools evaluation runs (median reported)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()

    if args.q2:
        cmd = [args.q2, "bench-eval", "--out", args.dir, "--json"] + args.q2_args.split()
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed: {r.stderr}")
    with open(os.path.join(args.dir, "q2.json")) as f:
        q2 = json.load(f)

    sink = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sink):
        gt = COCO(os.path.join(args.dir, "gt.json"))
        dt = gt.loadRes(os.path.join(args.dir, "dt.json"))
    load_s = time.perf_counter() - t0

    runs = []
    for _ in range(max(1, args.repeat)):
        with contextlib.redirect_stdout(sink):
            e = COCOeval(gt, dt, "bbox")
            t0 = time.perf_counter()
            e.evaluate()
            t1 = time.perf_counter()
            e.accumulate()
            t2 = time.perf_counter()
            e.summarize()
            t3 = time.perf_counter()
        runs.append((t1 - t0, t2 - t1, t3 - t2, t3 - t0))
    med = lambda i: statistics.median(r[i] for r in runs)
    ev, acc, summ, total = (med(i) * 1e3 for i in range(4))
    diff = float(np.max(np.abs(np.array(e.stats) - np.array(q2["coco_stats"]))))
    res = {
        "images": q2["images"],
        "annotations": q2["annotations"],
        "detections": q2["detections"],
        "pycocotools": importlib.metadata.version("pycocotools"),
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "pycocotools_load_ms": load_s * 1e3,
        "pycocotools_evaluate_ms": ev,
        "pycocotools_accumulate_ms": acc,
        "pycocotools_summarize_ms": summ,
        "pycocotools_eval_ms": total,
        "q2_parse_ms": q2["parse_ms"],
        "q2_eval_ms": q2["coco_ms"],
        "q2_threads": q2["threads"],
        "ratio_eval": total / q2["coco_ms"],
        "ratio_load_and_eval": (load_s * 1e3 + total) / (q2["parse_ms"] + q2["coco_ms"]),
        "max_abs_stats_diff": diff,
        "stats": [float(s) for s in e.stats],
    }
    if args.json:
        print(json.dumps(res))
        return
    print(f"{res['images']} images, {res['annotations']} ground-truth boxes, {res['detections']} detections")
    print(f"{'':28s} {'pycocotools':>12s} {'q2':>10s} {'ratio':>8s}")
    print(f"{'load (parse gt + dt)':28s} {load_s * 1e3:12.1f} {q2['parse_ms']:10.1f} {load_s * 1e3 / q2['parse_ms']:7.1f}x")
    print(f"{'evaluate+accumulate+summarize':28s} {total:12.1f} {q2['coco_ms']:10.1f} {res['ratio_eval']:7.1f}x")
    print(f"{'load + eval':28s} {load_s * 1e3 + total:12.1f} {q2['parse_ms'] + q2['coco_ms']:10.1f} {res['ratio_load_and_eval']:7.1f}x")
    print(f"pycocotools: evaluate {ev:.0f} ms, accumulate {acc:.0f} ms, summarize {summ:.0f} ms; q2 on {q2['threads']} threads")
    print(f"max |stats(pycocotools) - stats(q2)| = {diff:.3g}")


if __name__ == "__main__":
    main()
