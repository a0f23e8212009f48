//! Properties of the metrics on random problems (proptest): results do not depend on the thread
//! count, on the order of the `images` list, or on the order of detections in the file when
//! scores are distinct; every number is in range; a perfect detector scores what each reference
//! gives a perfect detector.

use proptest::prelude::*;
use q2_eval::io::{parse_detections, parse_ground_truth};
use q2_eval::{coco, voc, yolo, Detection, GroundTruth};
use serde_json::{json, Value};

/// A random problem as (ground truth JSON, detections JSON): `n_img` images, 3 categories,
/// boxes on a coarse grid so that IoUs take many values including exact ones.
fn problem() -> impl Strategy<Value = (Value, Vec<Value>)> {
    let gt_box = (0u32..5, 0u32..5, 1u32..4, 1u32..4, 0u32..3, prop::bool::weighted(0.1), prop::bool::weighted(0.1));
    let dt_box = (0u32..6, 0u32..6, 1u32..4, 1u32..4, 0u32..3);
    (1usize..5)
        .prop_flat_map(move |n_img| (Just(n_img), prop::collection::vec((0..n_img, gt_box.clone()), 0..14), prop::collection::vec((0..n_img, dt_box.clone()), 0..30)))
        .prop_map(|(n_img, gts, dts)| {
            let images: Vec<Value> = (0..n_img).map(|i| json!({"id": 10 + 7 * i})).collect();
            let anns: Vec<Value> = gts
                .iter()
                .enumerate()
                .map(|(k, (img, (x, y, w, h, c, crowd, diff)))| {
                    json!({"id": k + 1, "image_id": 10 + 7 * img, "category_id": c + 1, "bbox": [x * 10, y * 10, w * 10, h * 8],
                           "iscrowd": *crowd as u8, "difficult": *diff as u8})
                })
                .collect();
            // Distinct scores (k-dependent), so any file order gives the same ranking.
            let dets: Vec<Value> = dts
                .iter()
                .enumerate()
                .map(|(k, (img, (x, y, w, h, c)))| json!({"image_id": 10 + 7 * img, "category_id": c + 1, "bbox": [x * 10, y * 10 + 2, w * 10, h * 8], "score": 1.0 - k as f64 / 64.0}))
                .collect();
            (json!({"images": images, "annotations": anns, "categories": [{"id": 1}, {"id": 2}, {"id": 3}]}), dets)
        })
}

fn load(gt: &Value, dt: &[Value]) -> (GroundTruth, Vec<Detection>) {
    let g = parse_ground_truth(gt.to_string().as_bytes(), "gt.json").unwrap();
    let d = parse_detections(Value::from(dt.to_vec()).to_string().as_bytes(), "dt.json", &g).unwrap();
    (g, d)
}

/// Every metric's numbers as one vector of bit patterns.
fn all(g: &GroundTruth, d: &[Detection]) -> Vec<u64> {
    let mut v: Vec<f64> = coco::evaluate(g, d).stats.to_vec();
    for m in [voc::VocMetric::Voc07, voc::VocMetric::Voc12] {
        for plus1 in [false, true] {
            let r = voc::evaluate(g, d, m, plus1);
            v.push(r.map);
            v.extend(r.per_category.iter().map(|c| c.ap));
        }
    }
    let y = yolo::evaluate(g, d);
    v.extend([y.map50, y.map50_95]);
    v.iter().map(|x| x.to_bits()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn independent_of_threads_and_orders((gt, dt) in problem(), seed in any::<u64>()) {
        let (g, d) = load(&gt, &dt);
        let base = all(&g, &d);
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| all(&g, &d));
        prop_assert_eq!(&base, &one);
        let three = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap().install(|| all(&g, &d));
        prop_assert_eq!(&base, &three);
        // Reverse the images list and rotate the detections: same numbers.
        let mut gt2 = gt.clone();
        gt2["images"].as_array_mut().unwrap().reverse();
        let mut dt2 = dt.clone();
        if !dt2.is_empty() {
            let k = (seed % dt2.len() as u64) as usize;
            dt2.rotate_left(k);
        }
        let (g2, d2) = load(&gt2, &dt2);
        prop_assert_eq!(&base, &all(&g2, &d2));
    }

    #[test]
    fn numbers_are_in_range((gt, dt) in problem()) {
        let (g, d) = load(&gt, &dt);
        let e = coco::evaluate(&g, &d);
        for s in e.stats {
            prop_assert!(s == -1.0 || (0.0..=1.0).contains(&s), "{:?}", e.stats);
        }
        // AR grows with maxDets: the top 1 / 10 of an image's detections keep the matches they
        // have among the top 100 (greedy matching in score order).
        if e.stats[6] >= 0.0 {
            prop_assert!(e.stats[6] <= e.stats[7] && e.stats[7] <= e.stats[8], "{:?}", e.stats);
        }
        for m in [voc::VocMetric::Voc07, voc::VocMetric::Voc12] {
            let r = voc::evaluate(&g, &d, m, false);
            // VOC07 sums p / 11 eleven times: 1 + 2^-52 for a perfect class, as in voc_eval.py.
            prop_assert!(r.map == -1.0 || (0.0..=1.0 + 1e-15).contains(&r.map), "{:?}", r);
        }
        let y = yolo::evaluate(&g, &d);
        prop_assert!((0.0..=1.0).contains(&y.map50) && (0.0..=1.0).contains(&y.map50_95));
    }

    #[test]
    fn a_perfect_detector((n, cats) in (1usize..12, prop::collection::vec(1i64..4, 12))) {
        // Disjoint boxes, every one detected exactly, distinct scores.
        let anns: Vec<Value> = (0..n).map(|k| json!({"id": k + 1, "image_id": 1, "category_id": cats[k], "bbox": [k * 20, 0, 15, 15]})).collect();
        let dets: Vec<Value> = (0..n).map(|k| json!({"image_id": 1, "category_id": cats[k], "bbox": [k * 20, 0, 15, 15], "score": 0.9 - k as f64 / 100.0})).collect();
        let gt = json!({"images": [{"id": 1}], "annotations": anns, "categories": [{"id": 1}, {"id": 2}, {"id": 3}]});
        let (g, d) = load(&gt, &dets);
        let e = coco::evaluate(&g, &d);
        // pycocotools' precision is tp / (tp + fp + eps): a hair below 1.
        prop_assert!((e.stats[0] - 1.0).abs() < 1e-15 && e.stats[8] == 1.0, "{:?}", e.stats);
        prop_assert_eq!(voc::evaluate(&g, &d, voc::VocMetric::Voc12, false).map, 1.0);
        prop_assert!((voc::evaluate(&g, &d, voc::VocMetric::Voc07, true).map - 1.0).abs() < 1e-15);
        // YOLOv5's 101-point trapezoid reads precision 0 at recall 1: 0.995.
        let y = yolo::evaluate(&g, &d);
        prop_assert!((y.map50 - 0.995).abs() < 1e-12 && (y.map50_95 - 0.995).abs() < 1e-12, "{:?}", y);
    }
}
