# q2 tasks: thin wrappers over cargo and the q2 CLI.

# The main job: synthetic benchmark → FP YOLOv5n → W4A4 LSQ/N2UQ × {baseline, +GBF, +ADA, +both}
# with LN folding → the gradient-imbalance figures (scripts/reproduce.sh; 30 min on 2 cores plus the build).
reproduce out="runs/reproduce":
    bash scripts/reproduce.sh {{out}}

# Every quantizer × {baseline, gbf, ada, both} at W4A4 and W3A3 from an FP checkpoint.
grid weights data="data/synth500" out="runs/grid" epochs="6":
    cargo run --release --bin q2 -- grid --data {{data}} --model yolov5n --img 256 --batch 16 --nbs 16 --weights {{weights}} --epochs {{epochs}} --out {{out}} --fold

# Evaluate one quantizer on the bundled example.
smoke:
    cargo run --release --bin q2 -- quant --in examples/quant/lsq_w4.json --out lsq_w4.result.json

# Unit, golden and property tests.
test:
    cargo test --workspace

# Criterion benches (quantizer kernels, conv step); numbers go to docs/BENCHMARKS.md.
bench:
    cargo bench --bench quant --bench conv --bench eval --bench loader

# The standard training-step table (yolov5n / yolo11n, FP / W4A4 LSQ QAT) on this machine.
bench-step:
    cargo run --release --bin q2 -- bench --table

# Assemble the CUDA 13.0 toolkit from PyPI wheels and build q2 with --features cuda.
cuda:
    bash scripts/cuda-toolkit.sh

# Regenerate the PyTorch reference fixtures (needs tools/.venv with torch; see tools/README.md).
fixtures:
    tools/.venv/bin/python tools/make_fixtures.py --out tests/fixtures

# Write the synthetic detection benchmark (VOC, COCO or YOLO layout) to DIR.
synth dir="data/synth" format="yolo" images="2000" seed="0":
    cargo run --release --bin q2 -- synth --out {{dir}} --format {{format}} --images {{images}} --seed {{seed}}

# The current main job: the synthetic benchmark and a full-precision YOLOv5n trained on it from scratch.
demo:
    cargo run --release --bin q2 -- synth --out data/synth --images 500 --force
    cargo run --release --bin q2 -- train --data data/synth --model yolov5n --img 256 --epochs 30 --nbs 16 --out runs/demo --force
