//! ultralytics' `TaskAlignedAssigner` (`utils/tal.py`, version 8.4.190; TOOD, Feng et al. 2021)
//! on plain slices, one image at a time, without (anchors × ground truths) tensors.
//!
//! For each valid ground truth g (pixel xyxy box with x1 + y1 + x2 + y2 > 0):
//! 1. **candidates**: anchors whose centre lies strictly (by more than 1e-9) inside g's box, the
//!    box's sides smaller than `stride_val` (the second stride, 16) first enlarged to it about
//!    the centre (`select_candidates_in_gts`);
//! 2. **alignment**: overlap `o = max(CIoU(g, pred), 0)`, metric `t = s^α · o^β` with s the
//!    predicted sigmoid score of g's class (`get_box_metrics`);
//! 3. **topk**: the `topk` candidates of largest metric are g's positives
//!    (`select_topk_candidates`);
//! 4. **conflicts**: an anchor positive for several ground truths is given to the one of largest
//!    overlap among *all* ground truths of the image (first on ties; a ground truth for which the
//!    anchor is not a candidate counts with overlap 0), as `select_highest_overlaps`;
//! 5. **soft targets**: `score = t · max_g(o) / (max_g(t) + eps)` with both maxima over g's
//!    final positives; the class target is that score at g's class (`_forward`).
//!
//! In step 3 PyTorch's `topk` runs over *all* anchors: when fewer than `topk` candidates have a
//! metric > 0 it also returns zero-metric anchors, and those inside the box become positives
//! (with zero score, but they can turn a neighbouring box's anchor into a multi-assigned one and
//! so move it to the box of largest overlap). Which tied anchors it returns is decided by
//! PyTorch's CPU kernel (libstdc++ `nth_element` / `partial_sort`), reproduced by
//! [`super::topk`]; when the k-th and (k+1)-th metrics differ the plain sort decides.

use super::iou::{ciou_f32, BoxFmt};
use super::topk::torch_topk_indices;

/// Assigner parameters (ultralytics' v8DetectionLoss: topk 10, α 0.5, β 6, eps 1e-9).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TalConfig {
    pub topk: usize,
    pub alpha: f32,
    pub beta: f32,
    pub eps: f32,
    /// Minimum ground-truth side for the candidate test, pixels (ultralytics: `stride[1]`).
    pub stride_val: f32,
}

impl TalConfig {
    /// ultralytics' settings for detection with strides `strides`.
    pub fn ultralytics(strides: [usize; 3]) -> Self {
        Self { topk: 10, alpha: 0.5, beta: 6.0, eps: 1e-9, stride_val: strides[1] as f32 }
    }
}

/// One level of the anchor grid: anchor centres at `((i + 0.5)·stride, (j + 0.5)·stride)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Level {
    pub h: usize,
    pub w: usize,
    pub stride: f32,
    /// Index of this level's first anchor in the concatenation of all levels.
    pub offset: usize,
}

/// The anchor points of all levels, in ultralytics' order (level, then row, then column).
#[derive(Clone, Debug, PartialEq)]
pub struct AnchorGrid {
    pub levels: Vec<Level>,
}

impl AnchorGrid {
    /// Grids of sizes `hw[l]` with strides `strides[l]`.
    pub fn new(hw: &[(usize, usize)], strides: &[f32]) -> Self {
        let mut offset = 0;
        let levels = hw
            .iter()
            .zip(strides)
            .map(|(&(h, w), &stride)| {
                let l = Level { h, w, stride, offset };
                offset += h * w;
                l
            })
            .collect();
        Self { levels }
    }

    /// Total number of anchors.
    pub fn len(&self) -> usize {
        self.levels.last().map_or(0, |l| l.offset + l.h * l.w)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Level index and (row, column) of anchor `a`.
    pub fn locate(&self, a: usize) -> (usize, usize, usize) {
        let li = self.levels.iter().rposition(|l| l.offset <= a).unwrap_or(0);
        let l = &self.levels[li];
        let p = a - l.offset;
        (li, p / l.w, p % l.w)
    }

    /// Anchor point of anchor `a` in grid units of its level (`make_anchors`, offset 0.5) and the
    /// level's stride.
    pub fn point(&self, a: usize) -> ([f32; 2], f32) {
        let (li, r, c) = self.locate(a);
        ([c as f32 + 0.5, r as f32 + 0.5], self.levels[li].stride)
    }
}

/// A ground truth: class and pixel (x1, y1, x2, y2).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gt {
    pub label: usize,
    pub xyxy: [f32; 4],
}

/// A foreground anchor of one image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Assigned {
    /// Anchor index (over all levels).
    pub anchor: usize,
    /// Index of the ground truth in the image's list.
    pub gt: usize,
    /// Normalised alignment (the soft class target and the box-loss weight).
    pub score: f32,
}

/// `x^e` as PyTorch's `pow(tensor, scalar)` computes it for the exponents it special-cases.
fn pow_t(x: f32, e: f32) -> f32 {
    if e == 0.5 {
        x.sqrt()
    } else if e == 1.0 {
        x
    } else if e == 2.0 {
        x * x
    } else if e == 3.0 {
        x * x * x
    } else {
        x.powf(e)
    }
}

/// One candidate pair (ground truth, anchor).
#[derive(Clone, Copy)]
struct Cand {
    anchor: usize,
    overlap: f32,
    metric: f32,
}

/// Assigns the anchors of one image. `pd_box(a)` gives anchor a's detached predicted box in
/// pixels (xyxy), `pd_score(a, c)` its sigmoid score for class c; both are only called for
/// candidate anchors. Returns the foreground anchors in increasing anchor order.
pub fn assign_image(
    cfg: &TalConfig,
    grid: &AnchorGrid,
    gts: &[Gt],
    mut pd_box: impl FnMut(usize) -> [f32; 4],
    mut pd_score: impl FnMut(usize, usize) -> f32,
) -> Vec<Assigned> {
    let na = grid.len();
    if gts.is_empty() || na == 0 {
        return Vec::new();
    }
    let eps = 1e-9f32; // select_candidates_in_gts' own eps
    // per anchor: number of positive ground truths, the last positive's (gt, overlap, metric),
    // and the running arg-max over all ground truths of the overlap (first on ties; starts at
    // ground truth 0 with overlap 0 as torch's max over a zero-filled column)
    let mut count = vec![0u16; na];
    let mut pos: Vec<(usize, f32, f32)> = vec![(0, 0.0, 0.0); na];
    let mut best: Vec<(usize, f32, f32)> = vec![(0, 0.0, 0.0); na];
    let mut dense: Option<Vec<f32>> = None;
    for (g, gt) in gts.iter().enumerate() {
        let [x1, y1, x2, y2] = gt.xyxy;
        if x1 + y1 + x2 + y2 <= 0.0 {
            continue; // mask_gt: padding / degenerate
        }
        // xyxy2xywh, floor tiny sides at stride_val, xywh2xyxy (the same float ops)
        let (cx, cy, mut w, mut h) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0, x2 - x1, y2 - y1);
        if w < cfg.stride_val {
            w = cfg.stride_val;
        }
        if h < cfg.stride_val {
            h = cfg.stride_val;
        }
        let (hw, hh) = (w / 2.0, h / 2.0);
        let (ex1, ey1, ex2, ey2) = (cx - hw, cy - hh, cx + hw, cy + hh);
        let mut cands: Vec<Cand> = Vec::new();
        for l in &grid.levels {
            // column / row ranges that can hold centres inside, then the exact test
            let lo = |v: f32| ((v / l.stride - 0.5).floor() as i64 - 1).max(0) as usize;
            let hi = |v: f32, n: usize| ((v / l.stride - 0.5).ceil() as i64 + 1).clamp(-1, n as i64 - 1);
            let (c0, c1) = (lo(ex1), hi(ex2, l.w));
            let (r0, r1) = (lo(ey1), hi(ey2, l.h));
            if c1 < 0 || r1 < 0 {
                continue;
            }
            for r in r0..=r1 as usize {
                let ay = (r as f32 + 0.5) * l.stride;
                if !(ay - ey1 > eps && ey2 - ay > eps) {
                    continue;
                }
                for c in c0..=c1 as usize {
                    let ax = (c as f32 + 0.5) * l.stride;
                    if ax - ex1 > eps && ex2 - ax > eps {
                        let a = l.offset + r * l.w + c;
                        let overlap = ciou_f32(gt.xyxy, pd_box(a), BoxFmt::Xyxy).max(0.0);
                        let metric = pow_t(pd_score(a, gt.label), cfg.alpha) * pow_t(overlap, cfg.beta);
                        cands.push(Cand { anchor: a, overlap, metric });
                    }
                }
            }
        }
        cands.sort_by_key(|c| c.anchor);
        for c in &cands {
            if c.overlap > best[c.anchor].1 {
                best[c.anchor] = (g, c.overlap, c.metric);
            }
        }
        // top-k by metric over all anchors, as torch.topk on CPU picks them
        let mut order: Vec<&Cand> = cands.iter().filter(|c| c.metric > 0.0).collect();
        order.sort_by(|a, b| b.metric.total_cmp(&a.metric).then(a.anchor.cmp(&b.anchor)));
        let k = cfg.topk.min(na);
        // the set is unambiguous with a strict cut after k positives, exactly k positives, or
        // fewer than k positives and no zero-metric candidate (the zeros picked lie outside)
        let unambiguous = (order.len() > k && order[k - 1].metric > order[k].metric)
            || order.len() == k
            || (order.len() < k && order.len() == cands.len());
        if unambiguous {
            for c in order.into_iter().take(k) {
                count[c.anchor] += 1;
                pos[c.anchor] = (g, c.overlap, c.metric);
            }
        } else {
            // fewer than k positive metrics (zeros tie) or a tie at the cut: which anchors
            // PyTorch's topk returns depends on its tie-breaking, reproduced by `topk`
            let dense = dense.get_or_insert_with(|| vec![0f32; na]);
            for c in &cands {
                dense[c.anchor] = c.metric;
            }
            let picked = torch_topk_indices(dense, k);
            for c in &cands {
                dense[c.anchor] = 0.0;
                if picked.binary_search(&c.anchor).is_ok() {
                    count[c.anchor] += 1;
                    pos[c.anchor] = (g, c.overlap, c.metric);
                }
            }
        }
    }
    // resolve conflicts, then normalise per ground truth
    let mut fg: Vec<(usize, usize, f32, f32)> = Vec::new(); // (anchor, gt, overlap, metric)
    for a in 0..na {
        match count[a] {
            0 => {}
            1 => fg.push((a, pos[a].0, pos[a].1, pos[a].2)),
            _ => fg.push((a, best[a].0, best[a].1, best[a].2)),
        }
    }
    let mut max_metric = vec![0f32; gts.len()];
    let mut max_overlap = vec![0f32; gts.len()];
    for &(_, g, o, t) in &fg {
        max_metric[g] = max_metric[g].max(t);
        max_overlap[g] = max_overlap[g].max(o);
    }
    fg.into_iter()
        .map(|(a, g, _, t)| Assigned { anchor: a, gt: g, score: t * max_overlap[g] / (max_metric[g] + cfg.eps) })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> AnchorGrid {
        AnchorGrid::new(&[(8, 8), (4, 4), (2, 2)], &[8.0, 16.0, 32.0])
    }

    #[test]
    fn grid_layout() {
        let g = grid();
        assert_eq!(g.len(), 84);
        assert_eq!(g.locate(0), (0, 0, 0));
        assert_eq!(g.locate(63), (0, 7, 7));
        assert_eq!(g.locate(64), (1, 0, 0));
        assert_eq!(g.locate(83), (2, 1, 1));
        assert_eq!(g.point(65), ([1.5, 0.5], 16.0));
    }

    /// A perfect prediction at every anchor: the anchors inside the box get the best metrics
    /// and the best of them is normalised to the best overlap (1).
    #[test]
    fn perfect_prediction_gets_score_one() {
        let g = grid();
        let gt = Gt { label: 1, xyxy: [10.0, 10.0, 40.0, 30.0] };
        let out = assign_image(&TalConfig::ultralytics([8, 16, 32]), &g, &[gt], |_| gt.xyxy, |_, _| 0.5);
        assert!(!out.is_empty() && out.len() <= 10);
        for a in &out {
            let ([x, y], s) = g.point(a.anchor);
            assert!(x * s > 10.0 && x * s < 40.0 && y * s > 10.0 && y * s < 30.0);
            assert!((a.score - 1.0).abs() < 1e-6);
        }
    }

    /// A box smaller than 16 px is enlarged to 16 px for the candidate test.
    #[test]
    fn tiny_box_is_enlarged() {
        let g = grid();
        // 2x2 box centred at (20, 20): no anchor centre lies strictly inside it, but the 16x16
        // enlargement (12..28) holds P3's 20 (anchor 18), P4's 24 (69) and P5's 16 (80).
        let gt = Gt { label: 0, xyxy: [19.0, 19.0, 21.0, 21.0] };
        let out = assign_image(&TalConfig::ultralytics([8, 16, 32]), &g, &[gt], |_| [18.0, 18.0, 22.0, 22.0], |_, _| 0.5);
        let anchors: Vec<usize> = out.iter().map(|a| a.anchor).collect();
        assert_eq!(anchors, vec![2 * 8 + 2, 64 + 4 + 1, 80]);
    }

    /// An anchor positive for two boxes goes to the one it overlaps more.
    #[test]
    fn conflicts_go_to_highest_overlap() {
        let g = AnchorGrid::new(&[(2, 2)], &[16.0]);
        let a = Gt { label: 0, xyxy: [0.0, 0.0, 32.0, 32.0] };
        let b = Gt { label: 1, xyxy: [2.0, 2.0, 30.0, 30.0] };
        let pred = [1.0, 1.0, 29.0, 29.0]; // closer to b
        let out = assign_image(&TalConfig::ultralytics([8, 16, 32]), &g, &[a, b], |_| pred, |_, _| 0.3);
        assert_eq!(out.len(), 4);
        assert!(out.iter().all(|x| x.gt == 1));
    }
}
