#!/usr/bin/env bash
# The main job on the embedded synthetic benchmark (2 CPU cores: 30 minutes plus the build, measured):
#   1. q2 synth: 500 images (400 train / 100 val), 12 shape classes;
#   2. q2 train: a full-precision YOLOv5n from scratch (30 epochs), then two FP fine-tunes with the
#      QAT recipe (5 epochs each): plain (with gradient taps: the FP imbalance reference) and with
#      Q-GBFusion inserted (Table 8's FP row) — the starting points of the QAT arms;
#   3. q2 grid: W4A4 LSQ and N2UQ × {baseline, +Q-GBFusion, +Q-ADA, +both} with the paper's recipe
#      (a short schedule), the Q-GBFusion cells LN-folded and fine-tuned (Table 6);
#   4. q2 plot-imbalance: the deep/shallow gradient ratio at the neck Concats in FP, W4A4 LSQ, and
#      W4A4 LSQ + Q-GBFusion (Fig. 1b, 3).
# Rerunning continues where an interrupted run stopped. Usage: scripts/reproduce.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/reproduce}
cargo build --release --bin q2
q2="target/release/q2"
data=data/synth500
[ -f "$data/data.yaml" ] || "$q2" synth --out "$data" --format yolo --images 500 --seed 7 --difficulty 0.3
common=(--data "$data" --model yolov5n --img 256 --batch 16 --nbs 16 --workers 2)
mkdir -p "$out"
# train DIR ARGS...: run to completion, resuming an interrupted run, skipping a finished one
train() {
  local dir=$1; shift
  if [ -f "$dir/summary.json" ]; then return; fi
  if [ -f "$dir/last.ckpt.safetensors" ]; then "$q2" train --resume --out "$dir"; else "$q2" train "$@" --out "$dir" --force; fi
}
train "$out/fp" "${common[@]}" --epochs 30 --val-every 5
printf 'hyp = "VOC"\ncos_lr = true\ntelemetry_every = 1\ntelemetry_mag_every = 50\n' > "$out/fp_cont.toml"
{ cat "$out/fp_cont.toml"; printf '[gbf]\n'; } > "$out/fp_gbf.toml"
train "$out/fp_cont" --config "$out/fp_cont.toml" "${common[@]}" --weights "$out/fp/best.safetensors" --epochs 5
train "$out/fp_gbf" --config "$out/fp_gbf.toml" "${common[@]}" --weights "$out/fp/best.safetensors" --epochs 5
"$q2" grid "${common[@]}" --weights "$out/fp_cont/best.safetensors" --gbf-weights "$out/fp_gbf/best.safetensors" \
  --methods lsq,n2uq --bit-widths 4 --epochs 3 --max-batches 10 --out "$out/grid" --fold
"$q2" plot-imbalance --run "$out/fp_cont" --run "$out/grid/lsq_w4a4_baseline" --run "$out/grid/lsq_w4a4_gbf" --out "$out/imbalance"
echo "tables: $out/grid/grid.md, $out/grid/*/fold.json; figures: $out/imbalance_*.svg"
