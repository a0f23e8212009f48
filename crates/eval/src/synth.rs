//! A seeded, COCO-val-sized evaluation problem for benchmarks: 5,000 images, about 36,500
//! ground-truth boxes over COCO's 80 category ids, 100 detections per image.
//!
//! Ground truth: 0–15 objects per image (mean 7.3), a quarter of them "person" (id 1), sizes
//! log-uniform between 5 and 350 px, aspect ratios e^U(-0.7, 0.7), an `area` field of 55–95% of
//! the box (as segmentation areas are; small/medium/large 47/26/27% by it, COCO val: 41/34/24%),
//! 1% crowd boxes, coordinates rounded to 0.01. Detections: 80% of the objects found with a
//! jittered box (σ = 7% of the size), 8% of those with a wrong class, 30% with a second, worse
//! duplicate; the rest of the 100 are background boxes of random classes with low scores.
//! Per image the detections are in score order (as NMS writes them); boxes are rounded to 0.001
//! and scores to 1e-5, as YOLOv5's `save_one_json` does, so equal scores occur.
//! The same seed gives the same files on every machine.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::io::{Category, Detection, GroundTruth, ImageId, RawAnnotation};

/// COCO's 80 category ids (1..90 with gaps).
pub const COCO_CATEGORY_IDS: [i64; 80] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61,
    62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
];

/// Size of the synthetic problem.
#[derive(Clone, Copy, Debug)]
pub struct SynthConfig {
    /// Number of images (COCO val2017: 5,000).
    pub images: usize,
    /// Detections per image.
    pub dets_per_image: usize,
    /// RNG seed.
    pub seed: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig { images: 5000, dets_per_image: 100, seed: 0 }
    }
}

fn round_to(v: f64, scale: f64) -> f64 {
    (v * scale).round() / scale
}

/// A class index into [`COCO_CATEGORY_IDS`]: "person" a quarter of the time, else uniform.
fn class(rng: &mut ChaCha8Rng) -> u32 {
    if rng.random::<f64>() < 0.25 {
        0
    } else {
        rng.random_range(0..80)
    }
}

/// A box `[x, y, w, h]` of log-uniform size inside a `iw × ih` image.
fn random_box(rng: &mut ChaCha8Rng, iw: f64, ih: f64, scale: f64) -> [f64; 4] {
    let s = (rng.random_range(5f64.ln()..350f64.ln())).exp() * scale;
    let ar = rng.random_range(-0.7f64..0.7).exp().sqrt();
    let w = (s * ar).min(iw);
    let h = (s / ar).min(ih);
    let x = rng.random::<f64>() * (iw - w);
    let y = rng.random::<f64>() * (ih - h);
    [x, y, w, h]
}

/// Clips `[x, y, w, h]` to the image and rounds it to `scale`.
fn clip_round(b: [f64; 4], iw: f64, ih: f64, scale: f64) -> [f64; 4] {
    let x1 = b[0].clamp(0.0, iw);
    let y1 = b[1].clamp(0.0, ih);
    let x2 = (b[0] + b[2]).clamp(0.0, iw);
    let y2 = (b[1] + b[3]).clamp(0.0, ih);
    [round_to(x1, scale), round_to(y1, scale), round_to(x2 - x1, scale), round_to(y2 - y1, scale)]
}

/// The ground truth and detections of the synthetic problem (see the module docs).
pub fn coco_val_like(cfg: SynthConfig) -> (GroundTruth, Vec<Detection>) {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let jitter = Normal::new(0.0, 0.07).expect("valid sigma");
    let log_jitter = Normal::new(0.0, 0.1).expect("valid sigma");
    // Distinct, increasing, gapped ids, listed in shuffled order (COCO's are not sequential).
    let mut ids: Vec<i64> = Vec::with_capacity(cfg.images);
    let mut next = 100;
    for _ in 0..cfg.images {
        next += rng.random_range(1..8);
        ids.push(next);
    }
    ids.shuffle(&mut rng);
    let images: Vec<ImageId> = ids.iter().map(|&i| ImageId::Int(i)).collect();
    let categories: Vec<Category> = COCO_CATEGORY_IDS.iter().map(|&id| Category { id, name: None }).collect();
    let mut anns = Vec::new();
    let mut dets = Vec::with_capacity(cfg.images * cfg.dets_per_image);
    let mut img_dets: Vec<Detection> = Vec::with_capacity(cfg.dets_per_image + 40);
    for (ii, id) in images.iter().enumerate() {
        let iw = rng.random_range(480.0..640.0f64).round();
        let ih = rng.random_range(360.0..640.0f64).round();
        let n = rng.random_range(0..=14) + usize::from(rng.random::<f64>() < 0.3);
        img_dets.clear();
        for _ in 0..n {
            let crowd = rng.random::<f64>() < 0.01;
            let c = class(&mut rng);
            let b = clip_round(random_box(&mut rng, iw, ih, if crowd { 2.0 } else { 1.0 }), iw, ih, 100.0);
            let area = round_to(b[2] * b[3] * rng.random_range(0.55..0.95), 100.0);
            anns.push(RawAnnotation { id: anns.len() as i64 + 1, image_id: id.clone(), category_id: COCO_CATEGORY_IDS[c as usize], bbox: b, area: Some(area), iscrowd: crowd, difficult: false });
            if crowd || rng.random::<f64>() >= 0.8 {
                continue;
            }
            let copies = 1 + usize::from(rng.random::<f64>() < 0.3);
            let mut score = 0.25 + 0.75 * rng.random::<f64>().powf(0.7);
            for k in 0..copies {
                let spread = if k == 0 { 1.0 } else { 2.0 };
                let dx = jitter.sample(&mut rng) * spread * b[2];
                let dy = jitter.sample(&mut rng) * spread * b[3];
                let w = b[2] * (log_jitter.sample(&mut rng) * spread).exp();
                let h = b[3] * (log_jitter.sample(&mut rng) * spread).exp();
                let cx = b[0] + b[2] / 2.0 + dx;
                let cy = b[1] + b[3] / 2.0 + dy;
                let cls = if rng.random::<f64>() < 0.92 { c } else { class(&mut rng) };
                if k > 0 {
                    score *= rng.random_range(0.3..0.9);
                }
                let bb = clip_round([cx - w / 2.0, cy - h / 2.0, w, h], iw, ih, 1000.0);
                img_dets.push(Detection { image: ii as u32, category: cls, bbox: bb, score: round_to(score, 1e5) });
            }
        }
        img_dets.truncate(cfg.dets_per_image);
        while img_dets.len() < cfg.dets_per_image {
            let bb = clip_round(random_box(&mut rng, iw, ih, 1.0), iw, ih, 1000.0);
            let score = 0.001 + 0.4 * rng.random::<f64>().powi(4);
            img_dets.push(Detection { image: ii as u32, category: class(&mut rng), bbox: bb, score: round_to(score, 1e5) });
        }
        img_dets.sort_by(|a, b| b.score.partial_cmp(&a.score).unwrap_or(std::cmp::Ordering::Equal));
        dets.extend_from_slice(&img_dets);
    }
    let gt = GroundTruth::new("synthetic", images, categories, anns).expect("the generator writes valid ground truth");
    (gt, dets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_sized_like_coco_val() {
        let cfg = SynthConfig { images: 300, ..SynthConfig::default() };
        let (g1, d1) = coco_val_like(cfg);
        let (g2, d2) = coco_val_like(cfg);
        assert_eq!(g1.annotations, g2.annotations);
        assert_eq!(d1, d2);
        assert_eq!(d1.len(), 300 * 100);
        let per_img = g1.annotations.len() as f64 / 300.0;
        assert!((6.0..8.5).contains(&per_img), "{per_img} boxes per image");
        let small = g1.annotations.iter().filter(|a| a.bbox[2] * a.bbox[3] < 1024.0).count() as f64 / g1.annotations.len() as f64;
        assert!((0.3..0.55).contains(&small), "{small} small");
        let (g3, _) = coco_val_like(SynthConfig { seed: 1, ..cfg });
        assert_ne!(g1.annotations, g3.annotations);
    }
}
