#!/usr/bin/env python3
"""Time the ultralytics YOLOv5 training dataloader, for comparison with `q2 bench-loader`.

It builds YOLOv5's own `create_dataloader` (utils/dataloaders.py: LoadImagesAndLabels with
mosaic, random_perspective, HSV, flips; InfiniteDataLoader with `--workers` processes) on a YOLO
layout dataset (e.g. the output of `q2 synth --format yolo`), lets it warm up, then times
`--batches` batches and prints images/s, in the same JSON shape as `q2 bench-loader --json`.

Needs a YOLOv5 checkout (not part of q2; pass its folder with --yolov5) and a Python with torch,
opencv-python and the `ultralytics` package (YOLOv5's utils import helpers from it). See
tools/README.md.

    python tools/bench_ultralytics_loader.py --yolov5 /path/to/yolov5 --data /tmp/b640 \
        --img 640 --batch 16 --workers 2 --batches 30 --warmup 3 --hyp scratch-low
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--yolov5", required=True, help="folder of a YOLOv5 checkout (ultralytics/yolov5)")
    ap.add_argument("--data", required=True, help="YOLO-layout dataset root (has images/<split>, labels/<split>)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--img", type=int, default=640)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batches", type=int, default=20, help="timed batches")
    ap.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    ap.add_argument("--hyp", default="scratch-low", help="scratch-low, voc, or a hyp YAML path")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", choices=["ram"], default=None, help="cache decoded images in RAM (YOLOv5's --cache ram)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    y5 = Path(a.yolov5).resolve()
    if not (y5 / "utils" / "dataloaders.py").is_file():
        sys.exit(f"{y5}: not a YOLOv5 checkout (no utils/dataloaders.py)")
    sys.path.insert(0, str(y5))
    os.chdir(y5)  # YOLOv5 resolves some paths against its own folder

    import torch
    import yaml
    from utils.dataloaders import create_dataloader  # noqa: E402  (YOLOv5 code)

    torch.set_num_threads(1)
    hyp_path = {"scratch-low": y5 / "data/hyps/hyp.scratch-low.yaml", "voc": y5 / "data/hyps/hyp.VOC.yaml"}.get(a.hyp, Path(a.hyp))
    hyp = yaml.safe_load(open(hyp_path))
    images = str(Path(a.data).resolve() / "images" / a.split)

    t0 = time.perf_counter()
    loader, dataset = create_dataloader(
        images, a.img, a.batch, 32, hyp=hyp, augment=True, cache=a.cache or False, rect=False, workers=a.workers, shuffle=True, seed=a.seed
    )
    scan_s = time.perf_counter() - t0
    it = iter(loader)
    for _ in range(a.warmup):
        next(it)
    t = time.perf_counter()
    n = 0
    for _ in range(a.batches):
        imgs, targets, paths, shapes = next(it)
        n += imgs.shape[0]
    secs = time.perf_counter() - t
    out = {
        "images_per_s": n / secs,
        "ms_per_batch": secs * 1e3 / a.batches,
        "batches": a.batches,
        "batch": a.batch,
        "img": a.img,
        "workers": loader.num_workers,
        "hyp": a.hyp,
        "mode": "train",
        "dataset_images": len(dataset),
        "scan_s": scan_s,
        "cache": a.cache == "ram",
        "torch": torch.__version__,
    }
    if a.json:
        print(json.dumps(out))
    else:
        print(
            f"ultralytics YOLOv5 loader: {out['images_per_s']:.1f} images/s ({out['ms_per_batch']:.1f} ms per batch of {a.batch}), "
            f"img {a.img}, {loader.num_workers} workers, {a.batches} timed batches after {a.warmup} warm-up"
        )


if __name__ == "__main__":
    main()
