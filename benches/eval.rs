//! Detection metrics on a COCO-val-sized problem (q2_eval::synth: 5,000 images, about 36,500
//! ground-truth boxes, 100 detections per image over 80 categories): COCO (pycocotools'
//! evaluate + accumulate + summarize), VOC07, VOC12, the YOLOv5 metric, and parsing the two
//! JSON files. `tools/bench_pycocotools.py` times pycocotools on the same data
//! (docs/BENCHMARKS.md, "Detection metrics").

/// As in the `q2` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use q2::eval::{coco, io, synth, voc, yolo};

fn bench(c: &mut Criterion) {
    let (gt, dt) = synth::coco_val_like(synth::SynthConfig::default());
    let gt_text = gt.to_json();
    let dt_text = gt.detections_to_json(&dt);
    let mut g = c.benchmark_group("eval_coco_val");
    g.sample_size(10).measurement_time(Duration::from_secs(15)).warm_up_time(Duration::from_secs(2));
    g.bench_function("coco", |b| b.iter(|| coco::evaluate(&gt, &dt)));
    g.bench_function("voc07", |b| b.iter(|| voc::evaluate(&gt, &dt, voc::VocMetric::Voc07, false)));
    g.bench_function("voc12", |b| b.iter(|| voc::evaluate(&gt, &dt, voc::VocMetric::Voc12, false)));
    g.bench_function("yolo", |b| b.iter(|| yolo::evaluate(&gt, &dt)));
    g.bench_function("parse_json", |b| {
        b.iter(|| {
            let g = io::parse_ground_truth(gt_text.as_bytes(), "gt.json").unwrap();
            io::parse_detections(dt_text.as_bytes(), "dt.json", &g).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
