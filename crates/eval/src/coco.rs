//! COCO box evaluation with pycocotools' `COCOeval` semantics (`iouType='bbox'`, default
//! parameters), operation for operation.
//!
//! - Images: every image of the ground truth, in ascending id order; categories: every category
//!   of the ground truth's `categories`, ascending id. A category without (non-crowd) ground
//!   truth has precision and recall -1 and drops out of every mean.
//! - Per image and category (`evaluateImg`): detections sorted by score, highest first, ties in
//!   file order (`np.argsort(-score, kind='mergesort')`), at most 100 kept. IoU as the C
//!   `bbIou` computes it in doubles; against a crowd box the union is the detection's own area.
//!   For each area range (`[0, 1e10]`, `[0, 32²]`, `[32², 96²]`, `[96², 1e10]`, bounds inclusive,
//!   tested on the ground truth's `area` field) the ground truth is ignored when crowd or outside
//!   the range, and sorted non-ignored first (stable). Greedy matching per IoU threshold
//!   (`0.5:0.05:0.95`, numpy's `linspace` values): each detection takes the best still-free
//!   ground truth with IoU >= the threshold (a crowd box stays free), a later ground truth
//!   winning an IoU tie, and stops at the first ignored one once it holds a regular match. A
//!   detection matched to an ignored ground truth is ignored, as is an unmatched one whose own
//!   area (w·h) lies outside the range.
//! - Accumulation (`accumulate`): for maxDets 1/10/100 the first maxDets detections of every
//!   image, concatenated in image order and stably sorted by score; precision
//!   `tp / (tp + fp + eps)`, its monotone envelope, read at 101 recall thresholds with
//!   `searchsorted(side='left')` (0 past the last recall reached); recall = final recall.
//! - `summarize`: the 12 standard numbers, each the mean over the entries > -1.
//!
//! Work is split over categories with rayon; each category's numbers do not depend on the
//! others or on the thread count.

use rayon::prelude::*;

use crate::io::{Detection, GroundTruth};
use crate::numeric;

/// Number of IoU thresholds (T).
pub const T: usize = 10;
/// Number of recall thresholds (R).
pub const R: usize = 101;
/// Number of area ranges (A).
pub const A: usize = 4;
/// Number of maxDets settings (M).
pub const M: usize = 3;
/// maxDets per image and category.
pub const MAX_DETS: [usize; M] = [1, 10, 100];
/// Area ranges `[lo, hi]` (inclusive) on the ground truth's `area` field: all, small, medium, large.
pub const AREA_RANGES: [(f64, f64); A] = [(0.0, 1e10), (0.0, 1024.0), (1024.0, 9216.0), (9216.0, 1e10)];
/// Names of [`AREA_RANGES`].
pub const AREA_LABELS: [&str; A] = ["all", "small", "medium", "large"];

/// IoU thresholds: `np.linspace(.5, 0.95, 10)`.
pub fn iou_thresholds() -> [f64; T] {
    numeric::linspace::<T>(0.5, 0.95)
}

/// Recall thresholds: `np.linspace(.0, 1.00, 101)`.
pub fn recall_thresholds() -> [f64; R] {
    numeric::linspace::<R>(0.0, 1.0)
}

/// Result of a COCO evaluation.
#[derive(Clone, Debug)]
pub struct CocoEval {
    /// Category ids, ascending (the K axis).
    pub category_ids: Vec<i64>,
    /// `precision[T][R][K][A][M]` flattened in that (numpy's) order; -1 where undefined.
    pub precision: Vec<f64>,
    /// `recall[T][K][A][M]` flattened; -1 where undefined.
    pub recall: Vec<f64>,
    /// The 12 summary numbers, in pycocotools' order (AP, AP50, AP75, AP small/medium/large,
    /// AR1, AR10, AR100, AR small/medium/large).
    pub stats: [f64; 12],
}

impl CocoEval {
    fn k(&self) -> usize {
        self.category_ids.len()
    }

    /// `precision[t, r, k, a, m]`.
    pub fn precision_at(&self, t: usize, r: usize, k: usize, a: usize, m: usize) -> f64 {
        self.precision[(((t * R + r) * self.k() + k) * A + a) * M + m]
    }

    /// `recall[t, k, a, m]`.
    pub fn recall_at(&self, t: usize, k: usize, a: usize, m: usize) -> f64 {
        self.recall[((t * self.k() + k) * A + a) * M + m]
    }

    /// AP of category k (index into [`CocoEval::category_ids`]): the mean of
    /// `precision[:, :, k, area=all, maxDets=100]` over its entries > -1; None when it has none
    /// (no non-crowd ground truth).
    pub fn category_ap(&self, k: usize) -> Option<f64> {
        let mut v = Vec::with_capacity(T * R);
        for t in 0..T {
            for r in 0..R {
                let p = self.precision_at(t, r, k, 0, M - 1);
                if p > -1.0 {
                    v.push(p);
                }
            }
        }
        (!v.is_empty()).then(|| numeric::mean(&v))
    }

    /// Per-category AP (see [`CocoEval::category_ap`]), ascending category id, categories
    /// without ground truth left out.
    pub fn per_category(&self) -> Vec<crate::CategoryAp> {
        (0..self.k()).filter_map(|k| self.category_ap(k).map(|ap| crate::CategoryAp { category_id: self.category_ids[k], ap })).collect()
    }

    /// The lines pycocotools' `summarize()` prints, with the same formatting.
    pub fn summary_lines(&self) -> Vec<String> {
        STAT_DEFS
            .iter()
            .zip(self.stats)
            .map(|(d, v)| {
                let (title, ty) = if d.ap { ("Average Precision", "(AP)") } else { ("Average Recall", "(AR)") };
                let iou = match d.iou {
                    None => "0.50:0.95".to_string(),
                    Some(t) => format!("{t:.2}"),
                };
                format!(" {title:<18} {ty} @[ IoU={iou:<9} | area={:>6} | maxDets={:>3} ] = {v:.3}", AREA_LABELS[d.area], MAX_DETS[d.max_det])
            })
            .collect()
    }
}

/// One of the 12 summary numbers: AP or AR, at one IoU threshold or all, one area range, one
/// maxDets index.
struct StatDef {
    ap: bool,
    iou: Option<f64>,
    area: usize,
    max_det: usize,
}

const fn sd(ap: bool, iou: Option<f64>, area: usize, max_det: usize) -> StatDef {
    StatDef { ap, iou, area, max_det }
}

const STAT_DEFS: [StatDef; 12] = [
    sd(true, None, 0, 2),
    sd(true, Some(0.5), 0, 2),
    sd(true, Some(0.75), 0, 2),
    sd(true, None, 1, 2),
    sd(true, None, 2, 2),
    sd(true, None, 3, 2),
    sd(false, None, 0, 0),
    sd(false, None, 0, 1),
    sd(false, None, 0, 2),
    sd(false, None, 1, 2),
    sd(false, None, 2, 2),
    sd(false, None, 3, 2),
];

/// One kept detection of one image and category, with its matching outcome per area range:
/// bit t of `tp[a]` / `fp[a]` is set when it is a true / false positive at threshold t (neither
/// when ignored).
#[derive(Clone, Copy)]
struct DetRec {
    score: f64,
    /// Rank within its image and category (0 = highest score), < 100.
    rank: u8,
    tp: [u16; A],
    fp: [u16; A],
}

/// Intersection over union as pycocotools' C `bbIou` computes it (`[x, y, w, h]` boxes).
#[inline]
fn bb_iou(d: &[f64; 4], g: &[f64; 4], crowd: bool) -> f64 {
    let w = (d[2] + d[0]).min(g[2] + g[0]) - d[0].max(g[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (d[3] + d[1]).min(g[3] + g[1]) - d[1].max(g[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let i = w * h;
    let da = d[2] * d[3];
    let u = if crowd { da } else { da + g[2] * g[3] - i };
    i / u
}

/// Sorts detection indices by score, highest first, ties in their current order (stable).
fn sort_by_score(idx: &mut [u32], dets: &[Detection]) {
    idx.sort_by(|&a, &b| dets[b as usize].score.partial_cmp(&dets[a as usize].score).unwrap_or(std::cmp::Ordering::Equal));
}

/// Scratch buffers reused across the images of one category.
#[derive(Default)]
struct Scratch {
    ious: Vec<f64>,
    ignore: Vec<bool>,
    order: Vec<u32>,
    gtm: Vec<u16>,
    dtm: Vec<u16>,
    dtig: Vec<u16>,
}

const ALL_T: u16 = (1 << T) - 1;

/// What every image and category is evaluated against.
struct Ctx<'a> {
    gt: &'a GroundTruth,
    dets: &'a [Detection],
    /// Rank of each image (by index into `gt.images`) in ascending id order.
    img_rank: &'a [u32],
    thr: [f64; T],
    rec_thr: [f64; R],
}

/// `evaluateImg` for one image and category at all area ranges. `g`: ground-truth indices in file
/// order; `d`: detection indices sorted by score and cut to 100. Appends the detections'
/// outcomes to `out` and adds the non-ignored ground truth per range to `npig`.
fn evaluate_img(cx: &Ctx, g: &[u32], d: &[u32], s: &mut Scratch, out: &mut Vec<DetRec>, npig: &mut [usize; A]) {
    let (gt, dets, thr) = (cx.gt, cx.dets, &cx.thr);
    let (ng, nd) = (g.len(), d.len());
    s.ious.clear();
    for &di in d {
        let db = &dets[di as usize].bbox;
        for &gi in g {
            let a = &gt.annotations[gi as usize];
            s.ious.push(bb_iou(db, &a.bbox, a.iscrowd));
        }
    }
    let first = out.len();
    for (rank, &di) in d.iter().enumerate() {
        out.push(DetRec { score: dets[di as usize].score, rank: rank as u8, tp: [0; A], fp: [0; A] });
    }
    for (ai, &(lo, hi)) in AREA_RANGES.iter().enumerate() {
        s.ignore.clear();
        s.ignore.extend(g.iter().map(|&gi| {
            let a = &gt.annotations[gi as usize];
            a.iscrowd || a.area < lo || a.area > hi
        }));
        npig[ai] += s.ignore.iter().filter(|&&i| !i).count();
        if nd == 0 {
            continue;
        }
        // Ground truth, non-ignored first, each group in file order (stable argsort on ignore).
        s.order.clear();
        s.order.extend((0..ng as u32).filter(|&j| !s.ignore[j as usize]));
        s.order.extend((0..ng as u32).filter(|&j| s.ignore[j as usize]));
        s.gtm.clear();
        s.gtm.resize(ng, 0);
        s.dtm.clear();
        s.dtm.resize(nd, 0);
        s.dtig.clear();
        s.dtig.resize(nd, 0);
        if ng > 0 {
            for (ti, &t) in thr.iter().enumerate() {
                let bit = 1u16 << ti;
                for dj in 0..nd {
                    let row = &s.ious[dj * ng..(dj + 1) * ng];
                    let mut best = t.min(1.0 - 1e-10);
                    let mut m = usize::MAX;
                    for &gj in &s.order {
                        let gj = gj as usize;
                        if s.gtm[gj] & bit != 0 && !gt.annotations[g[gj] as usize].iscrowd {
                            continue;
                        }
                        if m != usize::MAX && !s.ignore[m] && s.ignore[gj] {
                            break;
                        }
                        if row[gj] < best {
                            continue;
                        }
                        best = row[gj];
                        m = gj;
                    }
                    if m == usize::MAX {
                        continue;
                    }
                    if s.ignore[m] {
                        s.dtig[dj] |= bit;
                    }
                    s.dtm[dj] |= bit;
                    s.gtm[m] |= bit;
                }
            }
        }
        for (dj, &di) in d.iter().enumerate() {
            let b = &dets[di as usize].bbox;
            let area = b[2] * b[3];
            let outside = area < lo || area > hi;
            let mut ig = s.dtig[dj];
            if outside {
                ig |= !s.dtm[dj] & ALL_T;
            }
            let rec = &mut out[first + dj];
            rec.tp[ai] = s.dtm[dj] & !ig & ALL_T;
            rec.fp[ai] = !s.dtm[dj] & !ig & ALL_T;
        }
    }
}

/// Precision at the recall thresholds and final recall of one (category, area, maxDets), per
/// IoU threshold: pycocotools' `accumulate` inner loop, computed at the true positives only.
///
/// pycocotools evaluates `rc = tp / npig` and `pr = tp / (fp + tp + eps)` at every detection,
/// takes the suffix maximum of `pr` and reads it at the first index with `rc >= r`. Recall only
/// grows at a true positive, so (for r > 0) that index is a true positive; and within a run of
/// detections after one true positive `pr` only falls, so every suffix maximum is attained at a
/// true positive (or is 0 before the first). Evaluating the same expressions at the true
/// positives alone therefore gives the same numbers bit for bit, with work proportional to the
/// matches instead of the detections.
fn accumulate(list: &[(u16, u16)], npig: usize, rec_thr: &[f64; R], prec: &mut [[f64; R]; T], recall: &mut [f64; T], events: &mut [Vec<(f64, f64)>; T]) {
    let npig_f = npig as f64;
    let mut tp = [0u32; T];
    let mut fp = [0u32; T];
    for e in events.iter_mut() {
        e.clear();
    }
    for &(tpm, fpm) in list {
        for t in 0..T {
            let bt = u32::from((tpm >> t) & 1);
            tp[t] += bt;
            fp[t] += u32::from((fpm >> t) & 1);
            if bt != 0 {
                let (tpf, fpf) = (tp[t] as f64, fp[t] as f64);
                events[t].push((tpf / npig_f, tpf / (fpf + tpf + f64::EPSILON)));
            }
        }
    }
    for t in 0..T {
        recall[t] = if list.is_empty() { 0.0 } else { tp[t] as f64 / npig_f };
        let ev = &mut events[t];
        for i in (1..ev.len()).rev() {
            if ev[i].1 > ev[i - 1].1 {
                ev[i - 1].1 = ev[i].1;
            }
        }
        for (r, &thr) in rec_thr.iter().enumerate() {
            let pi = ev.partition_point(|e| e.0 < thr);
            prec[t][r] = if pi < ev.len() { ev[pi].1 } else { 0.0 };
        }
    }
}

/// Precision `[A][M][T][R]` and recall `[A][M][T]` of one category (None where undefined).
struct CatResult {
    precision: Vec<Option<Box<[[f64; R]; T]>>>,
    recall: Vec<Option<[f64; T]>>,
}

fn evaluate_category(cx: &Ctx, gts_k: &[u32], dts_k: &[u32]) -> CatResult {
    let (gt, dets, img_rank, rec_thr) = (cx.gt, cx.dets, cx.img_rank, &cx.rec_thr);
    let mut s = Scratch::default();
    let mut recs: Vec<DetRec> = Vec::with_capacity(dts_k.len());
    let mut npig = [0usize; A];
    let mut d_buf: Vec<u32> = Vec::new();
    let (mut gi, mut di) = (0, 0);
    let gimg = |i: usize| img_rank[gt.annotations[gts_k[i] as usize].image as usize];
    let dimg = |i: usize| img_rank[dets[dts_k[i] as usize].image as usize];
    while gi < gts_k.len() || di < dts_k.len() {
        let r = match (gi < gts_k.len(), di < dts_k.len()) {
            (true, true) => gimg(gi).min(dimg(di)),
            (true, false) => gimg(gi),
            _ => dimg(di),
        };
        let g0 = gi;
        while gi < gts_k.len() && gimg(gi) == r {
            gi += 1;
        }
        let d0 = di;
        while di < dts_k.len() && dimg(di) == r {
            di += 1;
        }
        d_buf.clear();
        d_buf.extend_from_slice(&dts_k[d0..di]);
        sort_by_score(&mut d_buf, dets);
        d_buf.truncate(MAX_DETS[M - 1]);
        evaluate_img(cx, &gts_k[g0..gi], &d_buf, &mut s, &mut recs, &mut npig);
    }
    // Concatenated in image order; a stable sort by score keeps (image, rank) order among ties.
    recs.sort_by(|a, b| b.score.partial_cmp(&a.score).unwrap_or(std::cmp::Ordering::Equal));
    let mut precision = Vec::with_capacity(A * M);
    let mut recall = Vec::with_capacity(A * M);
    let mut events: [Vec<(f64, f64)>; T] = Default::default();
    let mut list = Vec::new();
    for (ai, &np) in npig.iter().enumerate() {
        for &md in &MAX_DETS {
            if np == 0 {
                precision.push(None);
                recall.push(None);
                continue;
            }
            list.clear();
            list.extend(recs.iter().filter(|r| (r.rank as usize) < md).map(|r| (r.tp[ai], r.fp[ai])));
            let mut p = Box::new([[0.0; R]; T]);
            let mut rcl = [0.0; T];
            accumulate(&list, np, rec_thr, &mut p, &mut rcl, &mut events);
            precision.push(Some(p));
            recall.push(Some(rcl));
        }
    }
    CatResult { precision, recall }
}

/// Mean over the entries > -1, or -1 when there are none (pycocotools' `_summarize`).
fn mean_defined(v: &[f64]) -> f64 {
    let kept: Vec<f64> = v.iter().copied().filter(|&x| x > -1.0).collect();
    if kept.is_empty() {
        -1.0
    } else {
        numeric::mean(&kept)
    }
}

/// Evaluates `dets` against `gt` (COCOeval bbox, default parameters).
pub fn evaluate(gt: &GroundTruth, dets: &[Detection]) -> CocoEval {
    let thr = iou_thresholds();
    let rec_thr = recall_thresholds();
    // Ascending image ids give each image its rank; categories ascending by id.
    let mut by_id: Vec<u32> = (0..gt.images.len() as u32).collect();
    by_id.sort_by(|&a, &b| gt.images[a as usize].cmp(&gt.images[b as usize]));
    let mut img_rank = vec![0u32; gt.images.len()];
    for (r, &i) in by_id.iter().enumerate() {
        img_rank[i as usize] = r as u32;
    }
    let mut cats: Vec<u32> = (0..gt.categories.len() as u32).collect();
    cats.sort_by_key(|&c| gt.categories[c as usize].id);
    let k_of: Vec<usize> = {
        let mut v = vec![0; cats.len()];
        for (k, &c) in cats.iter().enumerate() {
            v[c as usize] = k;
        }
        v
    };
    let kn = cats.len();
    // Per category, ground truth and detections in file order, then stably by image rank.
    let mut gts_by: Vec<Vec<u32>> = vec![Vec::new(); kn];
    for (i, a) in gt.annotations.iter().enumerate() {
        gts_by[k_of[a.category as usize]].push(i as u32);
    }
    let mut dts_by: Vec<Vec<u32>> = vec![Vec::new(); kn];
    for (i, d) in dets.iter().enumerate() {
        dts_by[k_of[d.category as usize]].push(i as u32);
    }
    let cx = Ctx { gt, dets, img_rank: &img_rank, thr, rec_thr };
    let results: Vec<CatResult> = gts_by
        .par_iter_mut()
        .zip(dts_by.par_iter_mut())
        .map(|(g, d)| {
            g.sort_by_key(|&i| img_rank[gt.annotations[i as usize].image as usize]);
            d.sort_by_key(|&i| img_rank[dets[i as usize].image as usize]);
            evaluate_category(&cx, g, d)
        })
        .collect();

    let mut precision = vec![-1.0; T * R * kn * A * M];
    let mut recall = vec![-1.0; T * kn * A * M];
    for (k, res) in results.iter().enumerate() {
        for a in 0..A {
            for m in 0..M {
                if let Some(p) = &res.precision[a * M + m] {
                    for t in 0..T {
                        for r in 0..R {
                            precision[(((t * R + r) * kn + k) * A + a) * M + m] = p[t][r];
                        }
                    }
                }
                if let Some(rc) = &res.recall[a * M + m] {
                    for t in 0..T {
                        recall[((t * kn + k) * A + a) * M + m] = rc[t];
                    }
                }
            }
        }
    }
    let mut e = CocoEval { category_ids: cats.iter().map(|&c| gt.categories[c as usize].id).collect(), precision, recall, stats: [0.0; 12] };
    for (i, d) in STAT_DEFS.iter().enumerate() {
        // `np.where(iouThr == p.iouThrs)`: the thresholds equal to the requested one (0.75 is
        // exactly one of them; an absent one would select nothing and give -1).
        let ts: Vec<usize> = (0..T).filter(|&t| d.iou.is_none_or(|v| thr[t] == v)).collect();
        let mut v = Vec::new();
        for &t in &ts {
            if d.ap {
                for r in 0..R {
                    for k in 0..kn {
                        v.push(e.precision_at(t, r, k, d.area, d.max_det));
                    }
                }
            } else {
                for k in 0..kn {
                    v.push(e.recall_at(t, k, d.area, d.max_det));
                }
            }
        }
        e.stats[i] = mean_defined(&v);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{parse_detections, parse_ground_truth};

    fn run(gt: &str, dt: &str) -> CocoEval {
        let g = parse_ground_truth(gt.as_bytes(), "gt.json").unwrap();
        let d = parse_detections(dt.as_bytes(), "dt.json", &g).unwrap();
        evaluate(&g, &d)
    }

    #[test]
    fn perfect_detection_scores_one_and_no_gt_scores_minus_one() {
        let gt = r#"{"images": [{"id": 1}], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50]}], "categories": [{"id": 1}, {"id": 2}]}"#;
        let e = run(gt, r#"[{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9}]"#);
        // Area 2500 is medium: small and large have no ground truth (-1).
        // Precision 1 / (1 + eps) per pycocotools: just below 1.
        let want = [1.0, 1.0, 1.0, -1.0, 1.0, -1.0, 1.0, 1.0, 1.0, -1.0, 1.0, -1.0];
        for (i, (&got, &w)) in e.stats.iter().zip(&want).enumerate() {
            assert!((got - w).abs() < 1e-15, "stat {i}: {got} vs {w}");
        }
        assert!(e.stats[0] < 1.0);
        assert_eq!(e.category_ap(1), None);
        assert_eq!(e.per_category().len(), 1);
        let empty = run(r#"{"images": [{"id": 1}], "annotations": [], "categories": [{"id": 1}]}"#, "[]");
        assert_eq!(empty.stats, [-1.0; 12]);
    }

    #[test]
    fn crowd_region_absorbs_many_detections() {
        // Two detections inside a crowd box: both matched to it (ignored), neither is a false
        // positive, so the one regular object's AP is that of a perfect ranking.
        let gt = r#"{"images": [{"id": 1}], "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "iscrowd": 1},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [200, 200, 40, 40]}], "categories": [{"id": 1}]}"#;
        let dt = r#"[{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.95},
                     {"image_id": 1, "category_id": 1, "bbox": [50, 50, 20, 20], "score": 0.9},
                     {"image_id": 1, "category_id": 1, "bbox": [200, 200, 40, 40], "score": 0.5}]"#;
        let e = run(gt, dt);
        assert!((e.stats[0] - 1.0).abs() < 1e-12, "{:?}", e.stats);
        // Without the crowd flag the two would be false positives ahead of the true one.
        let e2 = run(&gt.replace(r#", "iscrowd": 1"#, ""), dt);
        assert!(e2.stats[1] < 0.9, "{:?}", e2.stats);
    }

    #[test]
    fn iou_is_the_c_formula() {
        assert_eq!(bb_iou(&[0., 0., 10., 5.], &[0., 0., 10., 10.], false), 0.5);
        assert_eq!(bb_iou(&[0., 0., 10., 5.], &[0., 0., 10., 10.], true), 1.0);
        assert_eq!(bb_iou(&[10., 0., 10., 5.], &[0., 0., 10., 10.], false), 0.0, "touching boxes do not overlap");
        assert_eq!(bb_iou(&[0., 0., 0., 5.], &[0., 0., 10., 10.], true), 0.0);
    }

    #[test]
    fn summary_lines_match_pycocotools_format() {
        let gt = r#"{"images": [{"id": 1}], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50]}], "categories": [{"id": 1}]}"#;
        let e = run(gt, "[]");
        let l = e.summary_lines();
        assert_eq!(l[0], " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.000");
        assert_eq!(l[1], " Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ] = 0.000");
        assert_eq!(l[3], " Average Precision  (AP) @[ IoU=0.50:0.95 | area= small | maxDets=100 ] = -1.000");
        assert_eq!(l[6], " Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ] = 0.000");
    }
}
