//! The YOLO11 (and YOLOv8) detection loss, as ultralytics 8.4.190 `utils/loss.py::v8DetectionLoss`
//! with `BboxLoss` / `DFLoss` and the [`super::tal`] assigner computes it.
//!
//! With A anchors over the three levels (`make_anchors`, centres at cell + 0.5, grid units),
//! `pred_dist = softmax(box_raw viewed (…, 4, reg_max)) · [0, 1, …, reg_max−1]` (l, t, r, b) and
//! pred box = (anchor − (l, t), anchor + (r, b)) in grid units:
//! - targets: labels (cx, cy, w, h normalised) × (W, H, W, H) of the input (P3's size × stride 8)
//!   → pixel xyxy; the assigner sees the detached sigmoid scores and pred boxes × stride;
//! - `cls = Σ BCE(cls_raw, target_scores) / max(Σ target_scores, 1)` over every anchor and class;
//! - `box = Σ_fg (1 − CIoU(pred, target/stride)) · w / tss`, w = the anchor's target score;
//! - `dfl = Σ_fg w · mean_sides(−(wl·log p[tl] + wr·log p[tr])) / tss`, target distances
//!   `bbox2dist` clamped to [0, reg_max − 1.01], tl = ⌊t⌋, tr = tl + 1, wl = tr − t, wr = 1 − wl;
//! - gains box 7.5, cls 0.5, dfl 1.5; `v8DetectionLoss` returns `[box, cls, dfl] · B` and
//!   ultralytics' `BaseTrainer` back-propagates its `.sum()`: the total here is
//!   `(box + cls + dfl) · B`, the items `[box, cls, dfl]` (not multiplied by B).
//!
//! Targets are grouped by image in their given order (ultralytics' `preprocess` assumes them
//! sorted by image, which its loader guarantees; here unsorted targets are stably sorted first).

use candle_core::{DType, Device, Tensor};

use super::iou::{ciou, BoxFmt};
use super::ops::{bce_with_logits_sum, check_finite_slice, log_softmax_last, softmax_last};
use super::tal::{assign_image, AnchorGrid, Gt, TalConfig};
use super::{dims4, validate_targets, LossOut};
use crate::{HeadOut, Result, Targets, YoloError};

/// Configuration of [`V8Loss`].
#[derive(Clone, Debug, PartialEq)]
pub struct V8LossConfig {
    /// Box (CIoU) gain, ultralytics `box` (7.5).
    pub box_gain: f32,
    /// Class (BCE) gain, ultralytics `cls` (0.5).
    pub cls_gain: f32,
    /// DFL gain, ultralytics `dfl` (1.5).
    pub dfl_gain: f32,
    /// Number of classes.
    pub nc: usize,
    /// DFL bins per side (16).
    pub reg_max: usize,
    /// Strides of P3, P4, P5.
    pub strides: [usize; 3],
    /// The task-aligned assigner.
    pub tal: TalConfig,
}

impl V8LossConfig {
    /// ultralytics' defaults (`default.yaml`: box 7.5, cls 0.5, dfl 1.5; reg_max 16; TAL topk
    /// 10, α 0.5, β 6).
    pub fn new(nc: usize, strides: [usize; 3]) -> Self {
        Self {
            box_gain: 7.5,
            cls_gain: 0.5,
            dfl_gain: 1.5,
            nc,
            reg_max: 16,
            strides,
            tal: TalConfig::ultralytics(strides),
        }
    }

    fn validate(&self) -> Result<()> {
        if self.nc == 0 || self.reg_max < 2 || self.strides.contains(&0) || self.tal.topk == 0 {
            return Err(YoloError::Invalid(format!(
                "V8 loss: need nc >= 1, reg_max >= 2, positive strides and topk >= 1, got {self:?}"
            )));
        }
        let g = [self.box_gain, self.cls_gain, self.dfl_gain, self.tal.alpha, self.tal.beta];
        if g.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(YoloError::Invalid(format!("V8 loss: invalid gains or assigner parameters {self:?}")));
        }
        Ok(())
    }
}

/// ultralytics `v8DetectionLoss` for YOLO11.
#[derive(Clone, Debug)]
pub struct V8Loss {
    pub cfg: V8LossConfig,
}

/// A foreground anchor of the batch, for the gathers.
struct Fg {
    level: usize,
    b: usize,
    pos: usize,
    /// anchor point, grid units of its level
    ap: [f32; 2],
    /// target box, grid units (target pixels / stride)
    target: [f32; 4],
    score: f32,
    label: usize,
}

impl V8Loss {
    pub fn new(cfg: V8LossConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self { cfg })
    }

    /// The loss of raw head outputs `HeadOut::V11` against `targets`.
    pub fn forward(&self, out: &HeadOut, targets: &Targets) -> Result<LossOut> {
        let (box_raw, cls_raw) = match out {
            HeadOut::V11 { box_raw, cls_raw } => (box_raw, cls_raw),
            HeadOut::V5 { .. } => return Err(YoloError::Invalid("V8 loss: got YOLOv5 head outputs (raw)".into())),
        };
        let cfg = &self.cfg;
        let (nc, rm) = (cfg.nc, cfg.reg_max);
        let dev = cls_raw[0].device().clone();

        // shapes, data (detached, for the assigner) and finiteness
        let mut hw_l = [(0usize, 0usize); 3];
        let mut bs = None;
        let mut box_data: Vec<Vec<f32>> = Vec::with_capacity(3);
        let mut cls_data: Vec<Vec<f32>> = Vec::with_capacity(3);
        for l in 0..3 {
            let (bn, cn) = (format!("p{}_box_raw", l + 3), format!("p{}_cls_raw", l + 3));
            let (b1, c1, h1, w1) = dims4(&box_raw[l], &bn)?;
            let (b2, c2, h2, w2) = dims4(&cls_raw[l], &cn)?;
            if c1 != 4 * rm || c2 != nc || (b1, h1, w1) != (b2, h2, w2) {
                return Err(YoloError::Invalid(format!(
                    "V8 loss: {bn} {:?} and {cn} {:?} must be (B, 4·reg_max = {}, h, w) and (B, nc = {nc}, h, w)",
                    box_raw[l].dims(),
                    cls_raw[l].dims(),
                    4 * rm
                )));
            }
            if *bs.get_or_insert(b1) != b1 {
                return Err(YoloError::Invalid(format!("V8 loss: {bn} has batch {b1}, P3 has {}", bs.unwrap())));
            }
            hw_l[l] = (h1, w1);
            let bv = box_raw[l].detach().flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            check_finite_slice(&bv, box_raw[l].dims(), &bn)?;
            let cv = cls_raw[l].detach().flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            check_finite_slice(&cv, cls_raw[l].dims(), &cn)?;
            box_data.push(bv);
            cls_data.push(cv);
        }
        let bs = bs.unwrap_or(0);
        validate_targets(targets, bs, nc)?;

        let strides = cfg.strides.map(|s| s as f32);
        let grid = AnchorGrid::new(&hw_l, &strides);
        // input size: P3's grid × the first stride (ultralytics `imgsz`)
        let (img_h, img_w) = (hw_l[0].0 as f32 * strides[0], hw_l[0].1 as f32 * strides[0]);

        // targets per image, in order, pixel xyxy (xywhn · (W, H, W, H), then xywh2xyxy)
        let mut per_image: Vec<Vec<Gt>> = vec![Vec::new(); bs];
        for i in 0..targets.len() {
            let [cx, cy, w, h] = targets.xywhn[i];
            let (cx, cy, w, h) = (cx * img_w, cy * img_h, w * img_w, h * img_h);
            let (hw, hh) = (w / 2.0, h / 2.0);
            per_image[targets.image[i]]
                .push(Gt { label: targets.class[i], xyxy: [cx - hw, cy - hh, cx + hw, cy + hh] });
        }

        // assignment on the detached predictions
        let mut fg: Vec<Fg> = Vec::new();
        for (b, gts) in per_image.iter().enumerate() {
            let pd_box = |a: usize| {
                let (li, r, c) = grid.locate(a);
                let (h, w) = hw_l[li];
                let (hw, pos) = (h * w, r * w + c);
                let d = decode_dist(&box_data[li], b, pos, hw, rm);
                let ([ax, ay], s) = grid.point(a);
                [(ax - d[0]) * s, (ay - d[1]) * s, (ax + d[2]) * s, (ay + d[3]) * s]
            };
            let pd_score = |a: usize, k: usize| {
                let (li, r, c) = grid.locate(a);
                let (h, w) = hw_l[li];
                let x = cls_data[li][(b * nc + k) * h * w + r * w + c];
                1.0 / (1.0 + (-x).exp())
            };
            for asg in assign_image(&cfg.tal, &grid, gts, pd_box, pd_score) {
                let (level, r, c) = grid.locate(asg.anchor);
                let (ap, s) = grid.point(asg.anchor);
                let t = gts[asg.gt].xyxy;
                fg.push(Fg {
                    level,
                    b,
                    pos: r * hw_l[level].1 + c,
                    ap,
                    target: [t[0] / s, t[1] / s, t[2] / s, t[3] / s],
                    score: asg.score,
                    label: gts[asg.gt].label,
                });
            }
        }
        // dense class targets in the raw layout (B, nc, h, w): the score at the gt's class
        let mut cls_t: Vec<Vec<f32>> = hw_l.iter().map(|&(h, w)| vec![0f32; bs * nc * h * w]).collect();
        for f in &fg {
            let (h, w) = hw_l[f.level];
            cls_t[f.level][(f.b * nc + f.label) * h * w + f.pos] = f.score;
        }
        let tss = (fg.iter().map(|f| f.score as f64).sum::<f64>() as f32).max(1.0);

        // class loss over every anchor and class
        let mut lcls: Option<Tensor> = None;
        for l in 0..3 {
            let t = Tensor::from_vec(std::mem::take(&mut cls_t[l]), cls_raw[l].shape(), &dev)?;
            let s = bce_with_logits_sum(&cls_raw[l], &t, 1.0)?;
            lcls = Some(match lcls {
                Some(a) => (a + s)?,
                None => s,
            });
        }
        let lcls = lcls.expect("three levels").affine(1.0 / tss as f64, 0.0)?;

        // box and DFL losses over the foreground
        let (lbox, ldfl) = if fg.is_empty() {
            // zero, with box_raw kept in the graph (zero gradient) as ultralytics keeps pred_distri
            // (candle prunes `affine(0, …)` from the graph; a product with a zero tensor stays)
            let zero = Tensor::zeros((), DType::F32, &dev)?;
            let mut z = zero.clone();
            for x in box_raw.iter() {
                z = (z + (x.sum_all()?.to_dtype(DType::F32)? * &zero)?)?;
            }
            (z.clone(), z)
        } else {
            self.box_dfl(box_raw, &hw_l, &fg, tss, &dev)?
        };

        let lbox = lbox.affine(cfg.box_gain as f64, 0.0)?;
        let lcls = lcls.affine(cfg.cls_gain as f64, 0.0)?;
        let ldfl = ldfl.affine(cfg.dfl_gain as f64, 0.0)?;
        let items = [scalar(&lbox)?, scalar(&lcls)?, scalar(&ldfl)?];
        let total = ((lbox + lcls)? + ldfl)?.affine(bs as f64, 0.0)?;
        Ok(LossOut { total, items, names: ["box_loss", "cls_loss", "dfl_loss"] })
    }

    /// CIoU box loss and DFL over the foreground anchors, both divided by `tss`.
    fn box_dfl(
        &self,
        box_raw: &[Tensor; 3],
        hw_l: &[(usize, usize); 3],
        fg: &[Fg],
        tss: f32,
        dev: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let rm = self.cfg.reg_max;
        // gather each level's foreground rows (n_l, 4·reg_max), in fg order within the level
        let mut rows: Vec<Tensor> = Vec::new();
        let mut order: Vec<&Fg> = Vec::with_capacity(fg.len());
        for (l, x) in box_raw.iter().enumerate() {
            let (h, w) = hw_l[l];
            let hw = h * w;
            let sel: Vec<&Fg> = fg.iter().filter(|f| f.level == l).collect();
            if sel.is_empty() {
                continue;
            }
            let mut idx = Vec::with_capacity(sel.len() * 4 * rm);
            for f in &sel {
                idx.extend((0..4 * rm).map(|c| ((f.b * 4 * rm + c) * hw + f.pos) as u32));
            }
            let idx = Tensor::from_vec(idx, sel.len() * 4 * rm, dev)?;
            rows.push(x.flatten_all()?.index_select(&idx, 0)?.reshape((sel.len(), 4, rm))?);
            order.extend(sel);
        }
        let n = order.len();
        let logits = Tensor::cat(&rows, 0)?; // (n, 4, reg_max)

        // expected distances and predicted boxes, grid units
        let proj: Vec<f32> = (0..rm).map(|i| i as f32).collect();
        let proj = Tensor::from_vec(proj, (1, 1, rm), dev)?;
        let dist = softmax_last(&logits)?.broadcast_mul(&proj)?.sum(2)?; // (n, 4)
        let ax = Tensor::from_vec(order.iter().map(|f| f.ap[0]).collect::<Vec<_>>(), n, dev)?;
        let ay = Tensor::from_vec(order.iter().map(|f| f.ap[1]).collect::<Vec<_>>(), n, dev)?;
        let d = |k: usize| -> Result<Tensor> { Ok(dist.narrow(1, k, 1)?.reshape(n)?) };
        let px1 = (&ax - d(0)?)?;
        let py1 = (&ay - d(1)?)?;
        let px2 = (&ax + d(2)?)?;
        let py2 = (&ay + d(3)?)?;
        let tcol = |k: usize| Tensor::from_vec(order.iter().map(|f| f.target[k]).collect::<Vec<_>>(), n, dev);
        let (t0, t1, t2, t3) = (tcol(0)?, tcol(1)?, tcol(2)?, tcol(3)?);
        let iou = ciou([&px1, &py1, &px2, &py2], [&t0, &t1, &t2, &t3], BoxFmt::Xyxy)?;
        let wt = Tensor::from_vec(order.iter().map(|f| f.score).collect::<Vec<_>>(), n, dev)?;
        let lbox = (iou.affine(-1.0, 1.0)? * &wt)?.sum_all()?.affine(1.0 / tss as f64, 0.0)?;

        // DFL: a (n, 4, reg_max) weight holding wl at tl and wr at tr, times w / 4 (the side mean)
        let hi = (rm - 1) as f32 - 0.01;
        let mut dw = vec![0f32; n * 4 * rm];
        for (r, f) in order.iter().enumerate() {
            let [ax, ay] = f.ap;
            let t = [ax - f.target[0], ay - f.target[1], f.target[2] - ax, f.target[3] - ay];
            for (side, &v) in t.iter().enumerate() {
                let v = v.clamp(0.0, hi); // bbox2dist, then DFLoss' clamp (same bounds)
                let tl = v as usize;
                let wl = (tl + 1) as f32 - v;
                let wr = 1.0 - wl;
                let base = (r * 4 + side) * rm;
                dw[base + tl] += wl * f.score / 4.0;
                dw[base + tl + 1] += wr * f.score / 4.0;
            }
        }
        let dw = Tensor::from_vec(dw, (n, 4, rm), dev)?;
        let ldfl = (log_softmax_last(&logits)? * dw)?.sum_all()?.affine(-1.0 / tss as f64, 0.0)?;
        Ok((lbox, ldfl))
    }
}

/// `softmax(bins) · [0, …, reg_max−1]` of the four sides of one anchor (`bbox_decode`), from the
/// raw (B, 4·reg_max, h·w) data of its level.
fn decode_dist(data: &[f32], b: usize, pos: usize, hw: usize, rm: usize) -> [f32; 4] {
    let mut out = [0f32; 4];
    let mut e = vec![0f32; rm];
    for (side, o) in out.iter_mut().enumerate() {
        let at = |k: usize| data[(b * 4 * rm + side * rm + k) * hw + pos];
        let m = (0..rm).map(at).fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for (k, ek) in e.iter_mut().enumerate() {
            *ek = (at(k) - m).exp();
            sum += *ek;
        }
        *o = e.iter().enumerate().map(|(k, ek)| (ek / sum) * k as f32).sum();
    }
    out
}

fn scalar(t: &Tensor) -> Result<f32> {
    Ok(t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.to_scalar::<f32>()?)
}
