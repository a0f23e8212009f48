//! The mAP50 and mAP50-95 that ultralytics YOLOv5's `val.py` prints (v6.2 and later: matching
//! repeated at every IoU threshold), on COCO-format input. This is the metric behind the
//! paper's VOC numbers.
//!
//! - Labels: the ground truth without crowd and difficult boxes (YOLOv5's label conversion drops
//!   both). Predictions of an image: its detections by score, highest first, ties in file order
//!   (the order NMS returns them in).
//! - `process_batch`, per image and IoU threshold t (numpy's `linspace(0.5, 0.95, 10)`): the
//!   (label, prediction) pairs of one class with IoU >= t, IoU as `box_iou` (`inter / (area1 +
//!   area2 - inter + 1e-7)`). With more than one pair: sorted by IoU, highest first; the first
//!   pair of every prediction kept (`np.unique` by prediction, which re-orders by prediction
//!   index); then the first pair of every label in that order, i.e. the earliest prediction.
//!   Those predictions are correct at t.
//! - `ap_per_class`: all predictions of all images (in the ground truth's image order) sorted
//!   by confidence; for every class with at least one label (ascending category id) the
//!   cumulative tp / fp, recall = tpc / (labels + 1e-16), precision = tpc / (tpc + fpc);
//!   `compute_ap`: sentinels (0, 1) and (1, 0), the monotone envelope, `np.interp` at 101
//!   recall points, `np.trapz`. A class without predictions has AP 0.
//! - mAP50 = mean of AP at 0.5; mAP50-95 = mean over classes of the class's mean AP over the 10
//!   thresholds. 0 when no class has a label, as `val.py` reports.
//!
//! Fixed where YOLOv5 is platform dependent (docs/EVAL.md): equal scores and equal IoUs are
//! ordered as a stable sort would order them (numpy's default sort is not stable, and its order
//! of equal keys differs between machines), so among pairs of equal IoU for one prediction the
//! one with the higher label index is kept. IoU and thresholds are float64 (YOLOv5 uses
//! float32 tensors).

use rayon::prelude::*;

use crate::io::{Detection, GroundTruth};
use crate::numeric;

/// Number of IoU thresholds.
pub const T: usize = 10;

/// One class's APs.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct YoloCategory {
    /// Category id.
    pub category_id: i64,
    /// AP at IoU 0.5.
    pub ap50: f64,
    /// Mean AP over IoU 0.5:0.05:0.95.
    pub ap50_95: f64,
}

/// Result of the ultralytics evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct YoloResult {
    /// mAP at IoU 0.5.
    pub map50: f64,
    /// mAP over IoU 0.5:0.05:0.95.
    pub map50_95: f64,
    /// Per class with labels, ascending category id.
    pub per_category: Vec<YoloCategory>,
}

/// `box_iou` of two `[x1, y1, x2, y2]` boxes (label first, as YOLOv5 calls it).
#[inline]
fn box_iou(l: &[f64; 4], d: &[f64; 4]) -> f64 {
    let iw = (l[2].min(d[2]) - l[0].max(d[0])).max(0.0);
    let ih = (l[3].min(d[3]) - l[1].max(d[1])).max(0.0);
    let inter = iw * ih;
    let a1 = (l[2] - l[0]) * (l[3] - l[1]);
    let a2 = (d[2] - d[0]) * (d[3] - d[1]);
    inter / (a1 + a2 - inter + 1e-7)
}

#[inline]
fn corners(b: &[f64; 4]) -> [f64; 4] {
    [b[0], b[1], b[0] + b[2], b[1] + b[3]]
}

/// `process_batch` for one image: bit t of the result is set when prediction i is correct at
/// threshold t. `labels`: (class, box); `preds`: (class, box) in NMS order.
fn process_batch(labels: &[(u32, [f64; 4])], preds: &[(u32, [f64; 4])], thr: &[f64; T]) -> Vec<u16> {
    let (nl, np) = (labels.len(), preds.len());
    let mut correct = vec![0u16; np];
    if nl == 0 || np == 0 {
        return correct;
    }
    let mut iou = vec![0.0; nl * np];
    for (li, (lc, lb)) in labels.iter().enumerate() {
        for (pi, (pc, pb)) in preds.iter().enumerate() {
            // Pairs of different classes never qualify.
            iou[li * np + pi] = if lc == pc { box_iou(lb, pb) } else { f64::NEG_INFINITY };
        }
    }
    let mut best: Vec<(usize, f64)> = vec![(usize::MAX, 0.0); np];
    let mut label_pick: Vec<usize> = vec![usize::MAX; nl];
    for (ti, &t) in thr.iter().enumerate() {
        let bit = 1u16 << ti;
        // Candidate pairs in torch.where's row-major order (label, then prediction).
        let mut count = 0usize;
        let mut only = (0, 0);
        for b in best.iter_mut() {
            *b = (usize::MAX, 0.0);
        }
        for li in 0..nl {
            for pi in 0..np {
                let v = iou[li * np + pi];
                if v >= t {
                    count += 1;
                    only = (li, pi);
                    // Sorted by IoU descending as the reverse of a stable ascending sort: among
                    // equal IoUs the later pair in row-major order comes first, so `>=`.
                    if best[pi].0 == usize::MAX || v >= best[pi].1 {
                        best[pi] = (li, v);
                    }
                }
            }
        }
        match count {
            0 => {}
            1 => correct[only.1] |= bit,
            _ => {
                // Unique by prediction (kept in prediction order), then the first pair per label.
                label_pick.iter_mut().for_each(|p| *p = usize::MAX);
                for (pi, &(li, _)) in best.iter().enumerate() {
                    if li != usize::MAX && label_pick[li] == usize::MAX {
                        label_pick[li] = pi;
                    }
                }
                for &pi in &label_pick {
                    if pi != usize::MAX {
                        correct[pi] |= bit;
                    }
                }
            }
        }
    }
    correct
}

/// `compute_ap(recall, precision)` with the 'interp' method.
pub fn compute_ap(recall: &[f64], precision: &[f64]) -> f64 {
    let n = recall.len() + 2;
    let mut mrec = Vec::with_capacity(n);
    mrec.push(0.0);
    mrec.extend_from_slice(recall);
    mrec.push(1.0);
    let mut mpre = Vec::with_capacity(n);
    mpre.push(1.0);
    mpre.extend_from_slice(precision);
    mpre.push(0.0);
    for i in (0..n - 1).rev() {
        mpre[i] = numeric::maximum(mpre[i + 1], mpre[i]);
    }
    let x = numeric::linspace::<101>(0.0, 1.0);
    let y: Vec<f64> = x.iter().map(|&v| numeric::interp(v, &mrec, &mpre)).collect();
    numeric::trapz(&y, &x)
}

/// Evaluates `dets` against `gt` as YOLOv5's `val.py` does.
pub fn evaluate(gt: &GroundTruth, dets: &[Detection]) -> YoloResult {
    let thr = numeric::linspace::<T>(0.5, 0.95);
    let nimg = gt.images.len();
    let mut labels: Vec<Vec<(u32, [f64; 4])>> = vec![Vec::new(); nimg];
    let mut nt = vec![0usize; gt.categories.len()];
    for a in &gt.annotations {
        if !a.iscrowd && !a.difficult {
            labels[a.image as usize].push((a.category, corners(&a.bbox)));
            nt[a.category as usize] += 1;
        }
    }
    let mut preds: Vec<Vec<u32>> = vec![Vec::new(); nimg];
    for (i, d) in dets.iter().enumerate() {
        preds[d.image as usize].push(i as u32);
    }
    let by_score = |a: &u32, b: &u32| dets[*b as usize].score.partial_cmp(&dets[*a as usize].score).unwrap_or(std::cmp::Ordering::Equal);
    // Per image (ground-truth order): (score, class, correct) of its predictions in NMS order.
    let per_image: Vec<Vec<(f64, u32, u16)>> = preds
        .par_iter_mut()
        .zip(labels.par_iter())
        .map(|(p, l)| {
            p.sort_by(by_score);
            let pb: Vec<(u32, [f64; 4])> = p.iter().map(|&i| (dets[i as usize].category, corners(&dets[i as usize].bbox))).collect();
            let c = process_batch(l, &pb, &thr);
            p.iter().zip(c).map(|(&i, c)| (dets[i as usize].score, dets[i as usize].category, c)).collect()
        })
        .collect();
    let mut stats: Vec<(f64, u32, u16)> = per_image.into_iter().flatten().collect();
    stats.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal));

    let mut classes: Vec<u32> = (0..gt.categories.len() as u32).filter(|&c| nt[c as usize] > 0).collect();
    classes.sort_by_key(|&c| gt.categories[c as usize].id);
    let mut by_class: Vec<Vec<u16>> = vec![Vec::new(); gt.categories.len()];
    for &(_, c, m) in &stats {
        by_class[c as usize].push(m);
    }
    let per_category: Vec<YoloCategory> = classes
        .par_iter()
        .map(|&c| {
            let tp = &by_class[c as usize];
            let mut ap = [0.0; T];
            if !tp.is_empty() {
                let n_l = nt[c as usize] as f64 + 1e-16;
                let mut recall = Vec::with_capacity(tp.len());
                let mut precision = Vec::with_capacity(tp.len());
                for (j, apj) in ap.iter_mut().enumerate() {
                    recall.clear();
                    precision.clear();
                    let (mut tpc, mut fpc) = (0u64, 0u64);
                    for &m in tp {
                        if m >> j & 1 == 1 {
                            tpc += 1;
                        } else {
                            fpc += 1;
                        }
                        recall.push(tpc as f64 / n_l);
                        precision.push(tpc as f64 / (tpc as f64 + fpc as f64));
                    }
                    *apj = compute_ap(&recall, &precision);
                }
            }
            YoloCategory { category_id: gt.categories[c as usize].id, ap50: ap[0], ap50_95: numeric::mean(&ap) }
        })
        .collect();
    if per_category.is_empty() {
        return YoloResult { map50: 0.0, map50_95: 0.0, per_category };
    }
    let ap50: Vec<f64> = per_category.iter().map(|c| c.ap50).collect();
    let ap: Vec<f64> = per_category.iter().map(|c| c.ap50_95).collect();
    YoloResult { map50: numeric::mean(&ap50), map50_95: numeric::mean(&ap), per_category }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thr() -> [f64; T] {
        numeric::linspace::<T>(0.5, 0.95)
    }

    #[test]
    fn one_label_goes_to_the_earliest_prediction_whose_best_label_it_is() {
        // Two predictions on one label: the first (higher score) is correct even though the
        // second overlaps more, because after `np.unique` by prediction the pairs are in
        // prediction order.
        let labels = [(0, [0.0, 0.0, 10.0, 10.0])];
        let preds = [(0, [0.0, 0.0, 10.0, 8.0]), (0, [0.0, 0.0, 10.0, 10.0])];
        let c = process_batch(&labels, &preds, &thr());
        // IoU 0.8 (minus the 1e-7 epsilon's effect): correct at 0.5..0.75, not at 0.8 and above...
        assert_eq!(c[0], 0b00_0011_1111);
        // ...where only the second prediction qualifies and is taken.
        assert_eq!(c[1], 0b11_1100_0000);
    }

    #[test]
    fn classes_must_agree_and_equal_iou_goes_to_the_later_label() {
        let labels = [(1, [0.0, 0.0, 10.0, 10.0]), (1, [0.0, 0.0, 10.0, 10.0])];
        let preds = [(1, [0.0, 0.0, 10.0, 10.0]), (1, [0.0, 0.0, 10.0, 10.0]), (2, [0.0, 0.0, 10.0, 10.0])];
        let c = process_batch(&labels, &preds, &thr());
        // Both predictions pick label 1 (the later of two equal IoUs); label 1 keeps prediction 0.
        assert_eq!(c, vec![0b11_1111_1111, 0, 0]);
    }

    #[test]
    fn compute_ap_perfect_and_empty() {
        // recall 1 at precision 1: the interpolation at recall 1 reads the sentinel 0, so the
        // trapezoid loses half a step: 0.995.
        let ap = compute_ap(&[1.0], &[1.0]);
        assert!((ap - 0.995).abs() < 1e-12, "{ap}");
        assert_eq!(compute_ap(&[0.0, 0.0], &[0.0, 0.0]), 0.0);
    }
}
