//! Criterion bench of the batched NMS on a realistic validation input: YOLOv5s at 640
//! (16 × 25,200 rows × 85, val settings) and YOLO11s at 640 (16 × 84 × 8,400), scores mostly below
//! the threshold as a trained model's are. The input is the splitmix64-generated tensor of
//! `tools/make_nms_fixtures.py` (which times the Python references on the same input).

use criterion::{criterion_group, criterion_main, Criterion};
use q2_yolo::nms::{non_max_suppression, NmsConfig};
use q2_yolo::Family;

/// u in (0, 1) for element i: splitmix64(seed + (i + 1)·γ), top 53 bits plus half an ulp.
fn uniform(seed: u64, i: u64) -> f64 {
    let mut z = seed.wrapping_add(i.wrapping_mul(0x9E3779B97F4A7C15)).wrapping_add(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^= z >> 31;
    ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Rows (b, n, 4 + extra) as the script's generator: uniform boxes, score channels
/// sigmoid(bias + logistic noise).
fn rows(b: usize, n: usize, no: usize, seed: u64, bias: impl Fn(usize) -> f64) -> Vec<f32> {
    let mut out = vec![0f32; b * n * no];
    for (i, v) in out.iter_mut().enumerate() {
        let u = uniform(seed, i as u64);
        let k = i % no;
        *v = match k {
            0 | 1 => u * 640.0,
            2 | 3 => 4.0 + u * 200.0,
            _ => sigmoid(bias(k) + (u / (1.0 - u)).ln()),
        } as f32;
    }
    out
}

/// Sums of the kept scores and box coordinates (float64), printed by the fixture script too.
fn summary(out: &[Vec<q2_yolo::nms::Detection>]) {
    let score: f64 = out.iter().flatten().map(|d| d.score as f64).sum();
    let boxes: f64 = out.iter().flatten().flat_map(|d| d.xyxy).map(|v| v as f64).sum();
    eprintln!("  score_sum {score:.6} box_sum {boxes:.3}");
}

fn bench(c: &mut Criterion) {
    let (b, n, nc) = (16, 25200, 80);
    let v5 = rows(b, n, 5 + nc, 1, |k| if k == 4 { -9.0 } else { -6.0 });
    let cfg5 = NmsConfig::yolov5_val();
    let out = non_max_suppression(&v5, [b, n, 5 + nc], Family::V5, &cfg5).unwrap();
    eprintln!("YOLOv5s 640 batch 16: kept {:?}", out.iter().map(Vec::len).collect::<Vec<_>>());
    summary(&out);
    c.bench_function("nms_yolov5s_640_b16", |bch| bch.iter(|| non_max_suppression(&v5, [b, n, 5 + nc], Family::V5, &cfg5).unwrap()));

    let a = 8400;
    let r11 = rows(b, a, 4 + nc, 2, |_| -12.4);
    // (b, a, 4 + nc) → (b, 4 + nc, a)
    let mut v11 = vec![0f32; r11.len()];
    let no = 4 + nc;
    for bi in 0..b {
        for ai in 0..a {
            for k in 0..no {
                v11[bi * no * a + k * a + ai] = r11[bi * a * no + ai * no + k];
            }
        }
    }
    let cfg11 = NmsConfig::yolo11_val();
    let out = non_max_suppression(&v11, [b, no, a], Family::V11, &cfg11).unwrap();
    eprintln!("YOLO11s 640 batch 16: kept {:?}", out.iter().map(Vec::len).collect::<Vec<_>>());
    summary(&out);
    c.bench_function("nms_yolo11s_640_b16", |bch| bch.iter(|| non_max_suppression(&v11, [b, no, a], Family::V11, &cfg11).unwrap()));
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
