//! PASCAL VOC AP at IoU 0.5, as py-faster-rcnn's `lib/datasets/voc_eval.py` computes it, on
//! COCO-format input.
//!
//! Per category (ascending id; only categories with at least one positive, i.e. non-difficult
//! and non-crowd, ground-truth box are evaluated and averaged):
//! - detections of the category sorted by score, highest first, ties in file order;
//! - each detection takes the ground-truth box of its image and category with the largest IoU
//!   (the first on a tie), difficult ones included; IoU > 0.5 (strictly) on a positive box not
//!   yet taken is a true positive, on a taken one a false positive (duplicate), on a difficult or
//!   crowd box neither; IoU <= 0.5 (or no box) is a false positive;
//! - recall = tp / positives, precision = tp / (tp + fp);
//! - [`VocMetric::Voc07`]: mean over t = 0, 0.1, ..., 1 (numpy's `arange` values) of the largest
//!   precision at recall >= t (0 where none); [`VocMetric::Voc12`] (VOC2010 and later): the area
//!   under the monotone precision envelope, summed at the points where recall changes.
//!
//! Box geometry: COCO's by default (x2 = x + w, intersection and areas without +1); with
//! `pixel_plus1`, py-faster-rcnn's (x2 = x + w, +1 on every width and height, as its inclusive
//! pixel coordinates need).
//!
//! Where `voc_eval.py` is undefined or platform dependent q2 fixes the behaviour (docs/EVAL.md):
//! ties in score keep file order (numpy's default quicksort does not promise any order); an IoU
//! with an empty union is 0 (numpy gives NaN); a precision of 0/0 (only ignored detections so
//! far) does not take part in the VOC07 maximum (numpy's `max` would return NaN, MATLAB's
//! devkit skips it).

use rayon::prelude::*;

use crate::io::{Detection, GroundTruth};
use crate::{numeric, CategoryAp};

/// Which VOC average precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VocMetric {
    /// VOC2007: 11-point interpolated AP.
    Voc07,
    /// VOC2010 and later ("VOC12"): all-point AP (area under the precision envelope).
    Voc12,
}

/// Result of a VOC evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct VocResult {
    /// Mean AP over the evaluated categories; -1 when no category has a positive box.
    pub map: f64,
    /// AP per evaluated category, ascending id.
    pub per_category: Vec<CategoryAp>,
}

/// IoU threshold (strict: IoU must exceed it).
pub const IOU_THRESHOLD: f64 = 0.5;

/// `voc_ap(rec, prec, use_07_metric)`.
pub fn voc_ap(rec: &[f64], prec: &[f64], metric: VocMetric) -> f64 {
    match metric {
        VocMetric::Voc07 => {
            let mut ap = 0.0;
            for i in 0..11 {
                // np.arange(0., 1.1, 0.1): start + i * (second - start).
                let t = 0.0 + i as f64 * 0.1;
                // NaN precisions (0/0) are skipped; prec >= 0, so starting at 0 also covers
                // "no recall >= t".
                let p = rec.iter().zip(prec).filter(|(r, _)| **r >= t).fold(0.0f64, |m, (_, &p)| m.max(p));
                ap += p / 11.0;
            }
            ap
        }
        VocMetric::Voc12 => {
            let n = rec.len() + 2;
            let mut mrec = Vec::with_capacity(n);
            mrec.push(0.0);
            mrec.extend_from_slice(rec);
            mrec.push(1.0);
            let mut mpre = Vec::with_capacity(n);
            mpre.push(0.0);
            mpre.extend_from_slice(prec);
            mpre.push(0.0);
            for i in (1..n).rev() {
                mpre[i - 1] = numeric::maximum(mpre[i - 1], mpre[i]);
            }
            let terms: Vec<f64> = (0..n - 1).filter(|&i| mrec[i + 1] != mrec[i]).map(|i| (mrec[i + 1] - mrec[i]) * mpre[i + 1]).collect();
            numeric::sum(&terms)
        }
    }
}

/// `[x1, y1, x2, y2]` of a COCO `[x, y, w, h]` box.
#[inline]
fn corners(b: &[f64; 4]) -> [f64; 4] {
    [b[0], b[1], b[0] + b[2], b[1] + b[3]]
}

/// voc_eval.py's overlap of a detection `bb` with a ground-truth box `g` (corner form), `p` = 1
/// for the +1 pixel geometry, 0 for COCO's.
#[inline]
fn overlap(bb: &[f64; 4], g: &[f64; 4], p: f64) -> f64 {
    let ixmin = g[0].max(bb[0]);
    let iymin = g[1].max(bb[1]);
    let ixmax = g[2].min(bb[2]);
    let iymax = g[3].min(bb[3]);
    let iw = (ixmax - ixmin + p).max(0.0);
    let ih = (iymax - iymin + p).max(0.0);
    let inters = iw * ih;
    let uni = (bb[2] - bb[0] + p) * (bb[3] - bb[1] + p) + (g[2] - g[0] + p) * (g[3] - g[1] + p) - inters;
    if uni > 0.0 {
        inters / uni
    } else {
        0.0
    }
}

/// Precision/recall curve of one category: `(rec, prec)` in score order, or None when the
/// category has no positive box.
fn category_curve(gt: &GroundTruth, dets: &[Detection], gts: &[u32], dts: &mut [u32], pixel_plus1: bool) -> Option<(Vec<f64>, Vec<f64>)> {
    let p = if pixel_plus1 { 1.0 } else { 0.0 };
    // Ground truth of this category per image (file order): (corners, difficult).
    let nimg = gt.images.len();
    let mut start = vec![0u32; nimg + 1];
    for &g in gts {
        start[gt.annotations[g as usize].image as usize + 1] += 1;
    }
    for i in 0..nimg {
        start[i + 1] += start[i];
    }
    let mut fill = start.clone();
    let mut boxes = vec![([0.0; 4], false); gts.len()];
    let mut npos = 0usize;
    for &g in gts {
        let a = &gt.annotations[g as usize];
        let hard = a.difficult || a.iscrowd;
        npos += usize::from(!hard);
        let slot = &mut fill[a.image as usize];
        boxes[*slot as usize] = (corners(&a.bbox), hard);
        *slot += 1;
    }
    if npos == 0 {
        return None;
    }
    let mut taken = vec![false; gts.len()];
    dts.sort_by(|&a, &b| dets[b as usize].score.partial_cmp(&dets[a as usize].score).unwrap_or(std::cmp::Ordering::Equal));
    let (mut tp, mut fp) = (0u64, 0u64);
    let mut rec = Vec::with_capacity(dts.len());
    let mut prec = Vec::with_capacity(dts.len());
    let npos_f = npos as f64;
    for &d in dts.iter() {
        let det = &dets[d as usize];
        let bb = corners(&det.bbox);
        let (s, e) = (start[det.image as usize] as usize, start[det.image as usize + 1] as usize);
        let mut ovmax = f64::NEG_INFINITY;
        let mut jmax = 0;
        for (j, (g, _)) in boxes[s..e].iter().enumerate() {
            let ov = overlap(&bb, g, p);
            if ov > ovmax {
                ovmax = ov;
                jmax = s + j;
            }
        }
        if ovmax > IOU_THRESHOLD {
            if !boxes[jmax].1 {
                if !taken[jmax] {
                    tp += 1;
                    taken[jmax] = true;
                } else {
                    fp += 1;
                }
            }
        } else {
            fp += 1;
        }
        let (tpf, fpf) = (tp as f64, fp as f64);
        rec.push(tpf / npos_f);
        prec.push(tpf / (tpf + fpf));
    }
    Some((rec, prec))
}

/// Evaluates `dets` against `gt` with the given VOC metric and box geometry.
pub fn evaluate(gt: &GroundTruth, dets: &[Detection], metric: VocMetric, pixel_plus1: bool) -> VocResult {
    let mut cats: Vec<u32> = (0..gt.categories.len() as u32).collect();
    cats.sort_by_key(|&c| gt.categories[c as usize].id);
    let nc = gt.categories.len();
    let mut gts_by: Vec<Vec<u32>> = vec![Vec::new(); nc];
    for (i, a) in gt.annotations.iter().enumerate() {
        gts_by[a.category as usize].push(i as u32);
    }
    let mut dts_by: Vec<Vec<u32>> = vec![Vec::new(); nc];
    for (i, d) in dets.iter().enumerate() {
        dts_by[d.category as usize].push(i as u32);
    }
    let per_category: Vec<CategoryAp> = cats
        .par_iter()
        .zip(cats.iter().map(|&c| std::mem::take(&mut dts_by[c as usize])).collect::<Vec<_>>())
        .filter_map(|(&c, mut dts)| {
            let (rec, prec) = category_curve(gt, dets, &gts_by[c as usize], &mut dts, pixel_plus1)?;
            Some(CategoryAp { category_id: gt.categories[c as usize].id, ap: voc_ap(&rec, &prec, metric) })
        })
        .collect();
    let aps: Vec<f64> = per_category.iter().map(|c| c.ap).collect();
    let map = if aps.is_empty() { -1.0 } else { numeric::mean(&aps) };
    VocResult { map, per_category }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{parse_detections, parse_ground_truth};

    fn run(gt: &str, dt: &str, metric: VocMetric, plus1: bool) -> VocResult {
        let g = parse_ground_truth(gt.as_bytes(), "gt.json").unwrap();
        let d = parse_detections(dt.as_bytes(), "dt.json", &g).unwrap();
        evaluate(&g, &d, metric, plus1)
    }

    const GT: &str = r#"{"images": [{"id": 1}], "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10], "difficult": 1}],
        "categories": [{"id": 1}, {"id": 2}]}"#;

    #[test]
    fn iou_exactly_half_is_not_a_match() {
        // [0, 0, 10, 5] against [0, 0, 10, 10]: IoU 0.5 exactly, not > 0.5.
        let r = run(GT, r#"[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 5], "score": 1}]"#, VocMetric::Voc12, false);
        assert_eq!(r.map, 0.0);
        // With +1 geometry the same boxes overlap 11·6 / (11·11) = 0.545...: a match.
        let r = run(GT, r#"[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 5], "score": 1}]"#, VocMetric::Voc12, true);
        assert_eq!(r.map, 1.0);
        assert_eq!(r.per_category, vec![CategoryAp { category_id: 1, ap: 1.0 }], "category 2 has no positive box");
    }

    #[test]
    fn difficult_is_neither_and_duplicates_are_false() {
        let dt = r#"[{"image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10], "score": 0.99},
                     {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
                     {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.8}]"#;
        // Order: difficult (ignored, precision 0/0), TP, duplicate FP. VOC07: recall 1 reached
        // at precision 1 -> 11/11; VOC12: 1.
        let r07 = run(GT, dt, VocMetric::Voc07, false);
        assert!((r07.map - 1.0).abs() < 1e-15, "{r07:?}");
        assert_eq!(run(GT, dt, VocMetric::Voc12, false).map, 1.0);
    }

    #[test]
    fn eleven_point_and_all_point_differ() {
        // rec = [0.5, 0.5, 1.0], prec = [1, 0.5, 2/3].
        let rec = [0.5, 0.5, 1.0];
        let prec = [1.0, 0.5, 2.0 / 3.0];
        let a12 = voc_ap(&rec, &prec, VocMetric::Voc12);
        assert!((a12 - (0.5 + 0.5 * 2.0 / 3.0)).abs() < 1e-15);
        let a07 = voc_ap(&rec, &prec, VocMetric::Voc07);
        assert!((a07 - (6.0 + 5.0 * 2.0 / 3.0) / 11.0).abs() < 1e-15);
        assert_eq!(voc_ap(&[], &[], VocMetric::Voc07), 0.0);
        assert_eq!(voc_ap(&[], &[], VocMetric::Voc12), 0.0);
    }

    #[test]
    fn no_positive_box_gives_minus_one() {
        let gt = r#"{"images": [{"id": 1}], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 1}], "categories": [{"id": 1}]}"#;
        let r = run(gt, "[]", VocMetric::Voc07, false);
        assert_eq!((r.map, r.per_category.len()), (-1.0, 0));
    }
}
