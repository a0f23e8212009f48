//! YOLOv5's training loss, as the YOLOv5 repository's `utils/loss.py::ComputeLoss` (with
//! `autobalance=False`, `sort_obj_iou=False`, `gr = 1.0`) computes it, and train.py's rescaling
//! of the loss gains (lines `hyp['box'] *= 3 / nl` …).
//!
//! For level i with grid h×w, anchors `anchors_px[i] / stride[i]` (grid units) and predictions
//! `p = raw.view(B, na, 5+nc, h, w).permute(0, 1, 3, 4, 2)`:
//! - **matching** (`build_targets`): a target (gx, gy, gw, gh) = xywhn · (w, h, w, h) matches
//!   anchor a when `max(r, 1/r) < anchor_t` for both ratios r = (gw, gh) / anchor_a; each match
//!   also claims the neighbouring cell left/up when the centre's fractional part is < 0.5 (and
//!   gxy > 1), right/down when the fractional part of (w, h) − gxy is < 0.5 (and > 1)
//!   (g = 0.5, YOLOv5's j, k, l, m masks). Cell = trunc(gxy − offset), clamped to the grid for
//!   indexing; the box target is (gxy − cell, gwh), cell unclamped.
//! - **box**: pxy = 2σ − 0.5, pwh = (2σ)² · anchor; `lbox += mean(1 − CIoU(pbox, tbox))`.
//! - **objectness**: target = CIoU detached and clamped ≥ 0 at matched cells (0 elsewhere; when
//!   several matches hit one cell the last one written wins, as PyTorch's serial CPU
//!   `index_put_`); `lobj += BCE_obj(p[..., 4], tobj).mean() · balance[i]`, balance [4, 1, 0.4].
//! - **class** (only if nc > 1): BCE against cn everywhere and cp at the class
//!   (`smooth_bce(label_smoothing)`: cp = 1 − ε/2, cn = ε/2), mean over the matches' nc logits.
//! - BCE uses `pos_weight` cls_pw / obj_pw; with fl_gamma > 0 both become YOLOv5's `FocalLoss`
//!   (γ = fl_gamma, α = 0.25).
//! - returns `(lbox·box + lobj·obj + lcls·cls) · B` and items `[lbox·box, lobj·obj, lcls·cls]`.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::iou::{ciou, BoxFmt};
use super::ops::{bce_with_logits, bce_with_logits_sum, check_finite};
use super::{dims4, validate_targets, LossOut};
use crate::{HeadOut, Result, Targets, YoloError};

/// Number of anchors per level.
pub const NA: usize = 3;
/// Level balance of `ComputeLoss` for three levels (P3, P4, P5).
pub const BALANCE: [f32; 3] = [4.0, 1.0, 0.4];
/// YOLOv5's default anchors in pixels (models/yolov5*.yaml), `[level][anchor] = (w, h)`.
pub const DEFAULT_ANCHORS: [[(f32, f32); 3]; 3] = [
    [(10.0, 13.0), (16.0, 30.0), (33.0, 23.0)],
    [(30.0, 61.0), (62.0, 45.0), (59.0, 119.0)],
    [(116.0, 90.0), (156.0, 198.0), (373.0, 326.0)],
];

/// The loss hyperparameters of a YOLOv5 hyp file, before train.py's rescaling. Defaults are
/// `data/hyps/hyp.scratch-low.yaml` (the paper trains from its FP checkpoints with these).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct V5Hyp {
    /// Box loss gain (`box`).
    #[serde(rename = "box")]
    pub box_gain: f32,
    /// Objectness loss gain (`obj`).
    #[serde(rename = "obj")]
    pub obj_gain: f32,
    /// Class loss gain (`cls`).
    #[serde(rename = "cls")]
    pub cls_gain: f32,
    /// BCE positive weight of the class loss (`cls_pw`).
    pub cls_pw: f32,
    /// BCE positive weight of the objectness loss (`obj_pw`).
    pub obj_pw: f32,
    /// Anchor-multiple threshold of the matching (`anchor_t`).
    pub anchor_t: f32,
    /// Focal loss gamma (`fl_gamma`); 0 disables focal loss.
    pub fl_gamma: f32,
    /// Label smoothing ε (train.py's `--label-smoothing`).
    pub label_smoothing: f32,
}

impl Default for V5Hyp {
    fn default() -> Self {
        Self {
            box_gain: 0.05,
            obj_gain: 1.0,
            cls_gain: 0.5,
            cls_pw: 1.0,
            obj_pw: 1.0,
            anchor_t: 4.0,
            fl_gamma: 0.0,
            label_smoothing: 0.0,
        }
    }
}

/// Everything [`V5Loss`] needs, gains already rescaled.
#[derive(Clone, Debug, PartialEq)]
pub struct V5LossConfig {
    /// Final box gain (after rescaling).
    pub box_gain: f32,
    /// Final objectness gain.
    pub obj_gain: f32,
    /// Final class gain.
    pub cls_gain: f32,
    pub cls_pw: f32,
    pub obj_pw: f32,
    pub anchor_t: f32,
    pub fl_gamma: f32,
    pub label_smoothing: f32,
    /// Number of classes.
    pub nc: usize,
    /// Anchors in pixels, `[level][anchor] = (w, h)`.
    pub anchors_px: [[(f32, f32); 3]; 3],
    /// Strides of P3, P4, P5.
    pub strides: [usize; 3],
    /// Objectness balance per level.
    pub balance: [f32; 3],
}

impl V5LossConfig {
    /// The configuration train.py hands to `ComputeLoss`: `box *= 3/nl`,
    /// `cls *= nc/80 · 3/nl`, `obj *= (img_size/640)² · 3/nl` with nl = 3, where `img_size`
    /// is the nominal training size (`--img`), not a batch's possibly rectangular size.
    pub fn from_hyp(
        hyp: &V5Hyp,
        nc: usize,
        img_size: usize,
        anchors_px: &[[(f32, f32); 3]],
        strides: [usize; 3],
    ) -> Result<Self> {
        let nl = 3.0f64;
        let box_gain = (hyp.box_gain as f64 * (3.0 / nl)) as f32;
        let cls_gain = (hyp.cls_gain as f64 * (nc as f64 / 80.0 * 3.0 / nl)) as f32;
        let obj_gain = (hyp.obj_gain as f64 * ((img_size as f64 / 640.0).powi(2) * 3.0 / nl)) as f32;
        Self::new(
            V5Hyp { box_gain, cls_gain, obj_gain, ..hyp.clone() },
            nc,
            anchors_px,
            strides,
        )
    }

    /// A configuration with the gains of `hyp` used as given (no rescaling).
    pub fn new(hyp: V5Hyp, nc: usize, anchors_px: &[[(f32, f32); 3]], strides: [usize; 3]) -> Result<Self> {
        if nc == 0 {
            return Err(YoloError::Invalid("V5 loss: nc must be at least 1".into()));
        }
        let anchors_px: [[(f32, f32); 3]; 3] = anchors_px.try_into().map_err(|_| {
            YoloError::Invalid(format!("V5 loss: need anchors for 3 levels, got {}", anchors_px.len()))
        })?;
        if anchors_px.iter().flatten().any(|&(w, h)| !(w > 0.0 && h > 0.0 && w.is_finite() && h.is_finite())) {
            return Err(YoloError::Invalid(format!("V5 loss: anchors must be positive, got {anchors_px:?}")));
        }
        if strides.contains(&0) {
            return Err(YoloError::Invalid(format!("V5 loss: strides must be positive, got {strides:?}")));
        }
        let vals = [hyp.box_gain, hyp.obj_gain, hyp.cls_gain, hyp.cls_pw, hyp.obj_pw, hyp.anchor_t, hyp.fl_gamma];
        if vals.iter().any(|v| !v.is_finite() || *v < 0.0) || !(0.0..=1.0).contains(&hyp.label_smoothing) {
            return Err(YoloError::Invalid(format!("V5 loss: invalid hyperparameters {hyp:?}")));
        }
        Ok(Self {
            box_gain: hyp.box_gain,
            obj_gain: hyp.obj_gain,
            cls_gain: hyp.cls_gain,
            cls_pw: hyp.cls_pw,
            obj_pw: hyp.obj_pw,
            anchor_t: hyp.anchor_t,
            fl_gamma: hyp.fl_gamma,
            label_smoothing: hyp.label_smoothing,
            nc,
            anchors_px,
            strides,
            balance: BALANCE,
        })
    }
}

/// One (target, anchor, cell) match of [`build_targets`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Match {
    /// Image in the batch.
    pub b: usize,
    /// Anchor index at this level.
    pub a: usize,
    /// Grid row and column (clamped to the grid).
    pub gj: usize,
    pub gi: usize,
    /// Box target (x, y offset from the unclamped cell, w, h), grid units.
    pub tbox: [f32; 4],
    /// The anchor (w, h), grid units.
    pub anchor: (f32, f32),
    /// Class.
    pub cls: usize,
}

/// YOLOv5 `ComputeLoss.build_targets` for one level on slices, in PyTorch's order (offset, then
/// anchor, then target). `grid = (h, w)`, `anchors` in grid units.
pub fn build_targets(t: &Targets, grid: (usize, usize), anchors: &[(f32, f32); 3], anchor_t: f32) -> Vec<Match> {
    const G: f32 = 0.5;
    const OFF: [(f32, f32); 5] = [(0.0, 0.0), (G, 0.0), (0.0, G), (-G, 0.0), (0.0, -G)];
    let (h, w) = grid;
    let (gw_f, gh_f) = (w as f32, h as f32);
    // anchor-matched (a, target) pairs with the five offset masks
    let mut matched: Vec<(usize, usize, [bool; 5])> = Vec::new();
    for (a, &(aw, ah)) in anchors.iter().enumerate() {
        for (k, b) in t.xywhn.iter().enumerate() {
            let (gwv, ghv) = (b[2] * gw_f, b[3] * gh_f);
            let (rw, rh) = (gwv / aw, ghv / ah);
            let m = rw.max(1.0 / rw).max(rh.max(1.0 / rh));
            if m < anchor_t {
                let (gx, gy) = (b[0] * gw_f, b[1] * gh_f);
                let (gxi, gyi) = (gw_f - gx, gh_f - gy);
                let near = |v: f32| v.rem_euclid(1.0) < G && v > 1.0;
                matched.push((a, k, [true, near(gx), near(gy), near(gxi), near(gyi)]));
            }
        }
    }
    let mut out = Vec::with_capacity(matched.len() * 3);
    for (o, &(ox, oy)) in OFF.iter().enumerate() {
        for &(a, k, mask) in &matched {
            if !mask[o] {
                continue;
            }
            let b = t.xywhn[k];
            let (gx, gy) = (b[0] * gw_f, b[1] * gh_f);
            // `(gxy - offsets).long()`: truncation toward zero
            let (ci, cj) = ((gx - ox) as i64, (gy - oy) as i64);
            out.push(Match {
                b: t.image[k],
                a,
                gj: cj.clamp(0, h as i64 - 1) as usize,
                gi: ci.clamp(0, w as i64 - 1) as usize,
                tbox: [gx - ci as f32, gy - cj as f32, b[2] * gw_f, b[3] * gh_f],
                anchor: anchors[a],
                cls: t.class[k],
            });
        }
    }
    out
}

/// YOLOv5 `ComputeLoss`.
#[derive(Clone, Debug)]
pub struct V5Loss {
    pub cfg: V5LossConfig,
}

impl V5Loss {
    pub fn new(cfg: V5LossConfig) -> Self {
        Self { cfg }
    }

    /// The loss of raw head outputs `HeadOut::V5` against `targets`.
    pub fn forward(&self, out: &HeadOut, targets: &Targets) -> Result<LossOut> {
        let raw = match out {
            HeadOut::V5 { raw } => raw,
            HeadOut::V11 { .. } => {
                return Err(YoloError::Invalid("V5 loss: got YOLO11 head outputs (box_raw/cls_raw)".into()))
            }
        };
        let cfg = &self.cfg;
        let no = 5 + cfg.nc;
        let names = ["p3_raw", "p4_raw", "p5_raw"];
        let mut bs = None;
        for (x, name) in raw.iter().zip(names) {
            let (b, c, _, _) = dims4(x, name)?;
            if c != NA * no {
                return Err(YoloError::Invalid(format!(
                    "V5 loss: {name} has {c} channels, expected na·(5+nc) = {} for nc = {}",
                    NA * no,
                    cfg.nc
                )));
            }
            if *bs.get_or_insert(b) != b {
                return Err(YoloError::Invalid(format!("V5 loss: {name} has batch {b}, P3 has {}", bs.unwrap())));
            }
            check_finite(x, name)?;
        }
        let bs = bs.unwrap_or(0);
        validate_targets(targets, bs, cfg.nc)?;
        let (cp, cn) = (1.0 - 0.5 * cfg.label_smoothing, 0.5 * cfg.label_smoothing);
        let dev = raw[0].device().clone();

        let mut lbox: Option<Tensor> = None;
        let mut lobj: Option<Tensor> = None;
        let mut lcls: Option<Tensor> = None;
        let add = |acc: &mut Option<Tensor>, t: Tensor| -> Result<()> {
            *acc = Some(match acc.take() {
                Some(a) => (a + t)?,
                None => t,
            });
            Ok(())
        };
        for (i, x) in raw.iter().enumerate() {
            let (_, _, h, w) = x.dims4()?;
            let hw = h * w;
            let s = cfg.strides[i] as f32;
            let anchors = cfg.anchors_px[i].map(|(aw, ah)| (aw / s, ah / s));
            let m = build_targets(targets, (h, w), &anchors, cfg.anchor_t);
            let mut tobj = vec![0f32; bs * NA * hw];
            // one gather per level: the objectness logit of every cell, then the matched rows
            // (one index_add in the backward pass instead of a narrow, a gather and a sum)
            let nobj = bs * NA * hw;
            let n = m.len();
            let mut idx: Vec<u32> = Vec::with_capacity(nobj + n * no);
            for ba in 0..bs * NA {
                let base = (ba * no + 4) * hw;
                idx.extend((base..base + hw).map(|v| v as u32));
            }
            for mt in &m {
                let base = (mt.b * NA + mt.a) * no * hw + mt.gj * w + mt.gi;
                idx.extend((0..no).map(|k| (base + k * hw) as u32));
            }
            let len = idx.len();
            let gathered = x.flatten_all()?.index_select(&Tensor::from_vec(idx, len, &dev)?, 0)?;
            let pobj = gathered.narrow(0, 0, nobj)?;
            if n > 0 {
                let p = gathered.narrow(0, nobj, n * no)?.reshape((n, no))?;
                let sig = candle_nn::ops::sigmoid(&p.narrow(1, 0, 4)?)?;
                let pxy = sig.narrow(1, 0, 2)?.affine(2.0, -0.5)?;
                let anc: Vec<f32> = m.iter().flat_map(|mt| [mt.anchor.0, mt.anchor.1]).collect();
                let anc = Tensor::from_vec(anc, (n, 2), &dev)?;
                let pwh = (sig.narrow(1, 2, 2)?.affine(2.0, 0.0)?.sqr()? * anc)?;
                let tb: Vec<f32> = m.iter().flat_map(|mt| mt.tbox).collect();
                let tb = Tensor::from_vec(tb, (n, 4), &dev)?;
                let col = |t: &Tensor, k: usize| t.narrow(1, k, 1);
                let (px, py, pw, ph) = (col(&pxy, 0)?, col(&pxy, 1)?, col(&pwh, 0)?, col(&pwh, 1)?);
                let (tx, ty, tw, th) = (col(&tb, 0)?, col(&tb, 1)?, col(&tb, 2)?, col(&tb, 3)?);
                let iou = ciou([&px, &py, &pw, &ph], [&tx, &ty, &tw, &th], BoxFmt::Xywh)?.reshape(n)?;
                add(&mut lbox, iou.affine(-1.0, 1.0)?.mean_all()?)?;
                // objectness target: detached IoU clamped at 0, last write wins
                let iou_v = iou.detach().to_dtype(DType::F32)?.to_vec1::<f32>()?;
                for (mt, v) in m.iter().zip(&iou_v) {
                    tobj[(mt.b * NA + mt.a) * hw + mt.gj * w + mt.gi] = v.max(0.0);
                }
                if cfg.nc > 1 {
                    let pcls = p.narrow(1, 5, cfg.nc)?;
                    let mut t = vec![cn; n * cfg.nc];
                    for (r, mt) in m.iter().enumerate() {
                        t[r * cfg.nc + mt.cls] = cp;
                    }
                    let t = Tensor::from_vec(t, (n, cfg.nc), &dev)?;
                    add(&mut lcls, self.bce(&pcls, &t, cfg.cls_pw)?)?;
                }
            }
            let tobj = Tensor::from_vec(tobj, bs * NA * hw, &dev)?;
            let obji = self.bce(&pobj, &tobj, cfg.obj_pw)?;
            add(&mut lobj, obji.affine(cfg.balance[i] as f64, 0.0)?)?;
        }
        let zero = || Tensor::zeros((), DType::F32, &dev);
        let lbox = lbox.map_or_else(zero, Ok)?.affine(cfg.box_gain as f64, 0.0)?;
        let lobj = lobj.map_or_else(zero, Ok)?.affine(cfg.obj_gain as f64, 0.0)?;
        let lcls = lcls.map_or_else(zero, Ok)?.affine(cfg.cls_gain as f64, 0.0)?;
        let items = [scalar(&lbox)?, scalar(&lobj)?, scalar(&lcls)?];
        let total = ((lbox + lobj)? + lcls)?.affine(bs as f64, 0.0)?;
        Ok(LossOut { total, items, names: ["box_loss", "obj_loss", "cls_loss"] })
    }

    /// YOLOv5's `BCEWithLogitsLoss(pos_weight)` (mean), wrapped in its `FocalLoss` (α 0.25)
    /// when fl_gamma > 0.
    fn bce(&self, x: &Tensor, y: &Tensor, pw: f32) -> Result<Tensor> {
        let g = self.cfg.fl_gamma;
        if g <= 0.0 {
            return Ok(bce_with_logits_sum(x, y, pw)?.affine(1.0 / x.elem_count() as f64, 0.0)?);
        }
        let l = bce_with_logits(x, y, pw)?;
        const ALPHA: f64 = 0.25;
        let p = candle_nn::ops::sigmoid(x)?;
        // 1 − p_t = 1 − (y·p + (1 − y)(1 − p)) = y + p − 2·y·p
        let one_m_pt = ((y + &p)? - (y * &p)?.affine(2.0, 0.0)?)?;
        let alpha_factor = y.affine(2.0 * ALPHA - 1.0, 1.0 - ALPHA)?;
        let modulating = one_m_pt.powf(g as f64)?;
        Ok(((l * alpha_factor)? * modulating)?.mean_all()?)
    }
}

fn scalar(t: &Tensor) -> Result<f32> {
    Ok(t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.to_scalar::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_hyp_rescales_like_train_py() {
        let c = V5LossConfig::from_hyp(&V5Hyp::default(), 20, 320, &DEFAULT_ANCHORS, [8, 16, 32]).unwrap();
        assert!((c.box_gain - 0.05).abs() < 1e-8);
        assert!((c.cls_gain - 0.5 * 20.0 / 80.0).abs() < 1e-8);
        assert!((c.obj_gain - 0.25).abs() < 1e-8);
    }

    #[test]
    fn matching_uses_ratio_threshold_and_neighbours() {
        // 8x8 grid, one target at (2.3, 5.7) grid units, size 2x3 grid units.
        let t = Targets { image: vec![0], class: vec![1], xywhn: vec![[2.3 / 8.0, 5.7 / 8.0, 2.0 / 8.0, 3.0 / 8.0]] };
        // anchor 0 matches (ratios 2, 1.5), anchor 1 does not (ratio 5 > 4), anchor 2 matches
        let anchors = [(1.0, 2.0), (10.0, 3.0), (2.0, 3.0)];
        let m = build_targets(&t, (8, 8), &anchors, 4.0);
        // x frac 0.3 < 0.5 and x > 1 → left neighbour; y frac 0.7 → (8 − 5.7) frac 0.3 → lower neighbour
        let cells: Vec<(usize, usize, usize)> = m.iter().map(|m| (m.a, m.gj, m.gi)).collect();
        assert_eq!(cells, vec![(0, 5, 2), (2, 5, 2), (0, 5, 1), (2, 5, 1), (0, 6, 2), (2, 6, 2)]);
        let left = m[2];
        assert!((left.tbox[0] - 1.3).abs() < 1e-5 && (left.tbox[1] - 0.7).abs() < 1e-5);
        let down = m[4];
        assert!((down.tbox[1] + 0.3).abs() < 1e-5);
    }

    #[test]
    fn hyp_deserialises_with_yolov5_names() {
        let h: V5Hyp = serde_json::from_str(r#"{"box": 0.1, "obj": 0.7, "cls": 0.3, "fl_gamma": 1.5}"#).unwrap();
        assert_eq!(h.box_gain, 0.1);
        assert_eq!(h.obj_gain, 0.7);
        assert_eq!(h.cls_gain, 0.3);
        assert_eq!(h.anchor_t, 4.0);
        assert_eq!(h.fl_gamma, 1.5);
    }
}
