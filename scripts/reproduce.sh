#!/usr/bin/env bash
# The main job on the embedded synthetic benchmark (2 CPU cores: about 30 minutes plus the build):
#   1. q2 synth: 500 images (400 train / 100 val), 12 shape classes, VOC-like difficulty;
#   2. q2 train: a full-precision YOLOv5n from scratch (30 epochs) — the FP checkpoint QAT starts from;
#   3. q2 grid: W4A4 LSQ and N2UQ × {baseline, +Q-GBFusion, +Q-ADA, +both} with the paper's recipe
#      (short schedule), Q-GBFusion cells LN-folded and fine-tuned (Table 6);
#   4. q2 plot-imbalance: the deep/shallow gradient ratio at the neck Concats without and with
#      Q-GBFusion (Fig. 1b, 3).
# Rerunning continues where an interrupted run stopped. Usage: scripts/reproduce.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/reproduce}
cargo build --release --bin q2
q2="target/release/q2"
data=data/synth500
[ -f "$data/data.yaml" ] || "$q2" synth --out "$data" --format yolo --images 500 --seed 7 --difficulty 0.3
common=(--data "$data" --model yolov5n --img 256 --batch 16 --nbs 16 --workers 2)
if [ ! -f "$out/fp/summary.json" ]; then
  if [ -f "$out/fp/last.ckpt.safetensors" ]; then
    "$q2" train --resume --out "$out/fp"
  else
    "$q2" train "${common[@]}" --epochs 30 --val-every 5 --out "$out/fp" --force
  fi
fi
"$q2" grid "${common[@]}" --weights "$out/fp/best.safetensors" --methods lsq,n2uq --bit-widths 4 \
  --epochs 3 --max-batches 10 --out "$out/grid" --fold
"$q2" plot-imbalance --run "$out/grid/lsq_w4a4_baseline" --run "$out/grid/lsq_w4a4_gbf" --out "$out/imbalance"
echo "tables: $out/grid/grid.md; figures: $out/imbalance_*.svg"
