//! Property tests of the NMS: against a naive transcription of the reference pipeline
//! (candidates in torch's row-major order, stable sort, class-offset boxes, torchvision's
//! suppressed-array loop, max_det cut), and the invariants: descending scores, at most max_det,
//! every score above the threshold, no two kept boxes of one class (any class when agnostic)
//! with IoU above the threshold.

use proptest::prelude::*;
use q2_yolo::nms::{box_iou, non_max_suppression, xywh2xyxy, Detection, NmsConfig};
use q2_yolo::Family;

/// The reference pipeline, written out naively (O(n²)), for YOLOv5 rows.
fn naive_v5(data: &[f32], n: usize, nc: usize, cfg: &NmsConfig) -> Vec<(usize, usize)> {
    let no = 5 + nc;
    let mut cand: Vec<(f32, usize, usize)> = Vec::new(); // (score, row, class) in torch order
    for r in 0..n {
        let row = &data[r * no..(r + 1) * no];
        if row[4] <= cfg.conf_thres {
            continue;
        }
        let conf: Vec<f32> = row[5..].iter().map(|&c| c * row[4]).collect();
        if cfg.multi_label && nc > 1 {
            for (c, &s) in conf.iter().enumerate() {
                if s > cfg.conf_thres {
                    cand.push((s, r, c));
                }
            }
        } else {
            let mut best = 0;
            for c in 1..nc {
                if conf[c] > conf[best] {
                    best = c;
                }
            }
            if conf[best] > cfg.conf_thres {
                cand.push((conf[best], r, best));
            }
        }
    }
    cand.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap()); // stable
    cand.truncate(cfg.max_nms);
    let boxes: Vec<[f32; 4]> = cand
        .iter()
        .map(|&(_, r, c)| {
            let b = xywh2xyxy(data[r * no], data[r * no + 1], data[r * no + 2], data[r * no + 3]);
            let o = if cfg.agnostic { 0.0 } else { c as f32 * cfg.max_wh };
            [b[0] + o, b[1] + o, b[2] + o, b[3] + o]
        })
        .collect();
    // torchvision: walk in order; a kept box suppresses every later box with IoU > thres
    let mut suppressed = vec![false; cand.len()];
    let mut keep = Vec::new();
    for i in 0..cand.len() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        for j in i + 1..cand.len() {
            if !suppressed[j] && box_iou(boxes[i], boxes[j]) as f64 > cfg.iou_thres {
                suppressed[j] = true;
            }
        }
    }
    keep.truncate(cfg.max_det);
    keep.into_iter().map(|i| (cand[i].1, cand[i].2)).collect()
}

fn grid(v: f32, step: f32) -> f32 {
    (v / step).round() * step
}

prop_compose! {
    fn inputs()(n in 1usize..90, nc in 1usize..6, quant in prop::bool::ANY, seed in 0u64..u64::MAX)
        -> (Vec<f32>, usize, usize) {
        // a small deterministic generator per case: clustered boxes, scores possibly quantized (ties)
        let mut s = seed;
        let mut u = move || {
            s = s.wrapping_add(0x9E3779B97F4A7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
        };
        let centres: Vec<(f32, f32)> = (0..4).map(|_| (u() * 300.0, u() * 300.0)).collect();
        let mut data = Vec::with_capacity(n * (5 + nc));
        for _ in 0..n {
            let (cx, cy) = centres[(u() * 4.0) as usize % 4];
            data.extend([cx + (u() - 0.5) * 20.0, cy + (u() - 0.5) * 20.0, 10.0 + u() * 40.0, 10.0 + u() * 40.0]);
            for _ in 0..1 + nc {
                let v = u();
                data.push(if quant { grid(v, 0.125) } else { v });
            }
        }
        (data, n, nc)
    }
}

fn config() -> impl Strategy<Value = NmsConfig> {
    (0.0f32..0.3, prop::sample::select(vec![0.3f64, 0.45, 0.6, 0.7]), any::<bool>(), any::<bool>(), 1usize..40, 1usize..200).prop_map(
        |(conf, iou, multi, agn, max_det, max_nms)| NmsConfig {
            conf_thres: conf,
            iou_thres: iou,
            multi_label: multi,
            agnostic: agn,
            max_det,
            max_nms,
            ..NmsConfig::yolov5_val()
        },
    )
}

fn invariants(dets: &[Detection], cfg: &NmsConfig) {
    assert!(dets.len() <= cfg.max_det);
    for w in dets.windows(2) {
        assert!(w[0].score >= w[1].score, "not sorted by score");
    }
    for (i, a) in dets.iter().enumerate() {
        assert!(a.score > cfg.conf_thres);
        for b in &dets[i + 1..] {
            if cfg.agnostic || a.class == b.class {
                assert!(box_iou(a.xyxy, b.xyxy) as f64 <= cfg.iou_thres + 1e-6, "two kept boxes overlap: {a:?} {b:?}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn matches_naive_reference((data, n, nc) in inputs(), cfg in config()) {
        let out = non_max_suppression(&data, [1, n, 5 + nc], Family::V5, &cfg).unwrap();
        let got: Vec<(usize, usize)> = out[0].iter().map(|d| (d.index, d.class)).collect();
        prop_assert_eq!(got, naive_v5(&data, n, nc, &cfg));
        invariants(&out[0], &cfg);
    }

    #[test]
    fn v11_layout_equals_v5_with_unit_objectness((data, n, nc) in inputs(), cfg in config()) {
        // YOLO11 channels-first with scores s equal YOLOv5 rows with obj = 1 and cls = s
        let no = 5 + nc;
        let mut v5 = data.clone();
        let mut v11 = vec![0.0f32; (4 + nc) * n];
        for r in 0..n {
            v5[r * no + 4] = 1.0;
            for k in 0..4 {
                v11[k * n + r] = data[r * no + k];
            }
            for c in 0..nc {
                v11[(4 + c) * n + r] = data[r * no + 5 + c];
            }
        }
        let a = non_max_suppression(&v5, [1, n, no], Family::V5, &cfg).unwrap();
        let b = non_max_suppression(&v11, [1, 4 + nc, n], Family::V11, &cfg).unwrap();
        prop_assert_eq!(a, b);
    }

    #[test]
    fn batch_equals_images_alone((data, n, nc) in inputs(), cfg in config()) {
        let mut two = data.clone();
        two.extend(data.iter().rev().copied());
        let both = non_max_suppression(&two, [2, n, 5 + nc], Family::V5, &cfg).unwrap();
        let first = non_max_suppression(&data, [1, n, 5 + nc], Family::V5, &cfg).unwrap();
        let second = non_max_suppression(&two[data.len()..], [1, n, 5 + nc], Family::V5, &cfg).unwrap();
        prop_assert_eq!(&both[0], &first[0]);
        prop_assert_eq!(&both[1], &second[0]);
    }
}

#[test]
fn agnostic_suppresses_across_classes_and_class_aware_does_not() {
    // two identical boxes of two classes
    let data = [50.0, 50.0, 20.0, 20.0, 1.0, 0.9, 0.0, 50.0, 50.0, 20.0, 20.0, 1.0, 0.0, 0.8];
    let mut cfg = NmsConfig::yolov5_val();
    let aware = non_max_suppression(&data, [1, 2, 7], Family::V5, &cfg).unwrap();
    assert_eq!(aware[0].len(), 2);
    cfg.agnostic = true;
    let agn = non_max_suppression(&data, [1, 2, 7], Family::V5, &cfg).unwrap();
    assert_eq!(agn[0].len(), 1);
    assert_eq!((agn[0][0].index, agn[0][0].class), (0, 0));
}

#[test]
fn max_det_cuts_the_sorted_list() {
    // 500 disjoint boxes: all survive suppression, max_det keeps the best 300
    let n = 500;
    let mut data = Vec::new();
    for i in 0..n {
        let (x, y) = ((i % 25) as f32 * 30.0, (i / 25) as f32 * 30.0);
        data.extend([x + 10.0, y + 10.0, 10.0, 10.0, 1.0, (i as f32 + 1.0) / n as f32]);
    }
    let out = non_max_suppression(&data, [1, n, 6], Family::V5, &NmsConfig::yolov5_val()).unwrap();
    assert_eq!(out[0].len(), 300);
    assert_eq!(out[0][0].index, n - 1);
    assert_eq!(out[0][299].index, n - 300);
}
