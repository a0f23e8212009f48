//! Class-aware batched non-maximum suppression of decoded predictions, as YOLOv5
//! `utils/general.py::non_max_suppression` (val.py) and ultralytics `utils/nms.py::non_max_suppression`
//! (the 8.4 `DetectionValidator`) compute it, on plain `f32` slices.
//!
//! Per image:
//! 1. **Candidates.** YOLOv5 (rows `cx, cy, w, h, obj, cls…`): rows with `obj > conf_thres`, score
//!    `obj · cls` (float32). YOLO11 (channels `cx, cy, w, h, cls…` × anchors): score `cls`, no
//!    objectness; an anchor with a NaN class score is dropped (ultralytics' `amax` pre-filter).
//!    Multi-label: one candidate per (row, class) with `score > conf_thres`; otherwise the first
//!    best class of each row, if above the threshold. Comparisons are in float32 (torch casts the
//!    Python threshold to the tensor's dtype). Optional class filter.
//! 2. **Order.** Candidates sorted by score descending, ties in (row, class) order — torch's
//!    stable sort of the row-major candidate list, which torchvision's `nms` (stable sort) keeps;
//!    only the first `max_nms` enter the suppression.
//! 3. **Suppression** with torchvision `nms` semantics: walking the sorted list, a candidate is
//!    kept unless a kept box of its class (all kept boxes when `agnostic`) has IoU > `iou_thres`;
//!    IoU computed exactly as torchvision's CPU kernel does on the class-offset boxes
//!    (`box + class · max_wh`, float32; `inter / (area_i + area_j − inter)`, compared in double).
//!    Checking only the candidate's own class is the class-offset trick whenever offset boxes of
//!    different classes cannot overlap (every candidate's x-extent or every candidate's y-extent
//!    spans at most `max_wh`, checked per image); otherwise all kept boxes are checked, with the
//!    same arithmetic, so the result equals torchvision's in every case.
//! 4. The first `max_det` kept boxes (the walk stops there), in descending score order.
//!
//! Work is O(n log n) for the sort plus O(n · k) IoUs (k: kept boxes of a class, ≤ `max_det`),
//! memory O(n); images of a batch run in parallel (rayon), each deterministic.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use crate::{Family, Result, YoloError};

/// Settings of [`non_max_suppression`]; the constructors give the validators' values.
#[derive(Clone, Debug, PartialEq)]
pub struct NmsConfig {
    /// Candidates need a score `> conf_thres` (compared in float32), in [0, 1].
    pub conf_thres: f32,
    /// A box is suppressed by a kept box of its class with IoU `> iou_thres` (compared in double,
    /// as torchvision's `iou_threshold`), in [0, 1].
    pub iou_thres: f64,
    /// One candidate per class above the threshold (true) or only each row's best class.
    pub multi_label: bool,
    /// Suppress across classes.
    pub agnostic: bool,
    /// Detections kept per image.
    pub max_det: usize,
    /// Candidates (best scores) entering the suppression per image.
    pub max_nms: usize,
    /// Class offset in pixels of the batched-NMS trick (`max_wh`).
    pub max_wh: f32,
    /// Keep only these classes (`classes=`), `None` for all.
    pub classes: Option<Vec<usize>>,
}

impl NmsConfig {
    /// YOLOv5 val.py: `non_max_suppression(preds, conf_thres=0.001, iou_thres=0.6,
    /// multi_label=True, agnostic=single_cls=False, max_det=300)` (max_nms 30000, max_wh 7680).
    pub fn yolov5_val() -> Self {
        NmsConfig { conf_thres: 0.001, iou_thres: 0.6, multi_label: true, agnostic: false, max_det: 300, max_nms: 30000, max_wh: 7680.0, classes: None }
    }

    /// ultralytics 8.4 `DetectionValidator.postprocess` for YOLO11: conf 0.001 (the val default
    /// of `conf: None`), iou 0.7, `multi_label=True`, `agnostic=single_cls or agnostic_nms`
    /// (False), max_det 300, max_nms 30000, max_wh 7680; not end-to-end. (The validator raises
    /// `max_det` to the largest label count of the dataset when that exceeds 300 and max_det was
    /// left at its default: set [`NmsConfig::max_det`] accordingly.)
    pub fn yolo11_val() -> Self {
        NmsConfig { iou_thres: 0.7, ..Self::yolov5_val() }
    }

    /// The validator's configuration of a family: [`Self::yolov5_val`] or [`Self::yolo11_val`].
    pub fn val(family: Family) -> Self {
        match family {
            Family::V5 => Self::yolov5_val(),
            Family::V11 => Self::yolo11_val(),
        }
    }

    /// YOLOv5 detect.py defaults: conf 0.25, iou 0.45, best class only, max_det 1000.
    pub fn yolov5_detect() -> Self {
        NmsConfig { conf_thres: 0.25, iou_thres: 0.45, multi_label: false, max_det: 1000, ..Self::yolov5_val() }
    }

    /// ultralytics predict defaults: conf 0.25, iou 0.7, best class only, max_det 300.
    pub fn yolo11_detect() -> Self {
        NmsConfig { conf_thres: 0.25, multi_label: false, ..Self::yolo11_val() }
    }

    /// Errors for thresholds outside [0, 1] (the references assert this) or a non-finite offset.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.conf_thres) {
            return Err(YoloError::Invalid(format!("NMS conf_thres {} is not in [0, 1]", self.conf_thres)));
        }
        if !(0.0..=1.0).contains(&self.iou_thres) {
            return Err(YoloError::Invalid(format!("NMS iou_thres {} is not in [0, 1]", self.iou_thres)));
        }
        if !self.max_wh.is_finite() {
            return Err(YoloError::Invalid(format!("NMS max_wh {} is not finite", self.max_wh)));
        }
        Ok(())
    }
}

/// One detection of an image in the letterboxed input's pixels: the NMS output row
/// `[x1, y1, x2, y2, score, class]` of the references, plus where it came from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detection {
    /// `[x1, y1, x2, y2]` (corners, pixels), as `xywh2xyxy` of the decoded row.
    pub xyxy: [f32; 4],
    /// Confidence: `obj · cls` (YOLOv5) or `cls` (YOLO11).
    pub score: f32,
    /// Class index (0-based, the model's).
    pub class: usize,
    /// Row (YOLOv5) or anchor (YOLO11) of the decoded tensor within its image.
    pub index: usize,
}

/// `[x1, y1, x2, y2]` from `cx, cy, w, h`, as ultralytics `ops.xywh2xyxy` (float32: `xy ∓ wh / 2`).
#[inline]
pub fn xywh2xyxy(cx: f32, cy: f32, w: f32, h: f32) -> [f32; 4] {
    let (hw, hh) = (w / 2.0, h / 2.0);
    [cx - hw, cy - hh, cx + hw, cy + hh]
}

/// C++ `std::max` (returns `a` unless `a < b`), as torchvision's kernel uses it.
#[inline(always)]
fn cmax(a: f32, b: f32) -> f32 {
    if a < b {
        b
    } else {
        a
    }
}

/// C++ `std::min` (returns `a` unless `b < a`).
#[inline(always)]
fn cmin(a: f32, b: f32) -> f32 {
    if b < a {
        b
    } else {
        a
    }
}

/// A box prepared for suppression: corners (class-offset) and area, as torchvision computes them.
#[derive(Clone, Copy, Debug)]
struct NmsBox {
    x1: f32,
    y1: f32,
    x2: f32,
    y2: f32,
    area: f32,
}

impl NmsBox {
    #[inline]
    fn new(b: [f32; 4], offset: f32) -> Self {
        let (x1, y1, x2, y2) = (b[0] + offset, b[1] + offset, b[2] + offset, b[3] + offset);
        NmsBox { x1, y1, x2, y2, area: (x2 - x1) * (y2 - y1) }
    }
}

/// IoU of a kept box `i` (earlier in score order) and a later box `j`, as torchvision's CPU
/// `nms_kernel_impl`: `w = max(0, min(x2) − max(x1))`, likewise h, `inter / (area_i + area_j −
/// inter)`, all float32 (NaN coordinates give NaN, which never suppresses).
#[inline(always)]
fn tv_iou(i: &NmsBox, j: &NmsBox) -> f32 {
    let xx1 = cmax(i.x1, j.x1);
    let yy1 = cmax(i.y1, j.y1);
    let xx2 = cmin(i.x2, j.x2);
    let yy2 = cmin(i.y2, j.y2);
    let w = cmax(0.0, xx2 - xx1);
    let h = cmax(0.0, yy2 - yy1);
    let inter = w * h;
    inter / (i.area + j.area - inter)
}

/// IoU of two `[x1, y1, x2, y2]` boxes with torchvision `nms`'s float32 arithmetic.
pub fn box_iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    tv_iou(&NmsBox::new(a, 0.0), &NmsBox::new(b, 0.0))
}

/// `torchvision.ops.nms(boxes, scores, iou_thres)`: indices of the kept boxes in descending
/// score order (stable for ties). Single class; O(n·k) time, O(n) memory.
pub fn nms(boxes: &[[f32; 4]], scores: &[f32], iou_thres: f64) -> Vec<usize> {
    assert_eq!(boxes.len(), scores.len(), "nms: one score per box");
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    // torch's stable descending sort (NaN scores sort first, as torch treats NaN as largest)
    order.sort_by(|&a, &b| {
        let (sa, sb) = (scores[a], scores[b]);
        match (sa.is_nan(), sb.is_nan()) {
            (true, true) => std::cmp::Ordering::Equal,
            (true, false) => std::cmp::Ordering::Less,
            (false, true) => std::cmp::Ordering::Greater,
            _ => sb.partial_cmp(&sa).unwrap_or(std::cmp::Ordering::Equal),
        }
    });
    let mut kept: Vec<NmsBox> = Vec::new();
    let mut keep = Vec::new();
    for i in order {
        let b = NmsBox::new(boxes[i], 0.0);
        if !kept.iter().any(|k| tv_iou(k, &b) as f64 > iou_thres) {
            kept.push(b);
            keep.push(i);
        }
    }
    keep
}

/// A candidate sort key: score bits inverted in the high half (score descending; scores are
/// positive, so their bits order like their values), `row · nc + class` in the low half.
#[inline(always)]
fn key(score: f32, pos: u32) -> u64 {
    (((u32::MAX - score.to_bits()) as u64) << 32) | pos as u64
}

#[inline(always)]
fn unkey(k: u64) -> (f32, u32) {
    (f32::from_bits(u32::MAX - (k >> 32) as u32), k as u32)
}

/// The decoded predictions of one image, in either family's layout.
#[derive(Clone, Copy, Debug)]
pub struct ImagePreds<'a> {
    /// YOLOv5: `n × (5 + nc)` row-major; YOLO11: `(4 + nc) × n` channel-major.
    pub data: &'a [f32],
    /// Rows (YOLOv5) or anchors (YOLO11).
    pub n: usize,
    /// Classes.
    pub nc: usize,
    /// Layout and scoring.
    pub family: Family,
}

impl ImagePreds<'_> {
    #[inline(always)]
    fn coord(&self, row: usize, k: usize) -> f32 {
        match self.family {
            Family::V5 => self.data[row * (5 + self.nc) + k],
            Family::V11 => self.data[k * self.n + row],
        }
    }

    fn xyxy(&self, row: usize) -> [f32; 4] {
        xywh2xyxy(self.coord(row, 0), self.coord(row, 1), self.coord(row, 2), self.coord(row, 3))
    }

    /// Candidate keys (unsorted) of this image.
    fn candidates(&self, cfg: &NmsConfig) -> Vec<u64> {
        let (n, nc, conf) = (self.n, self.nc, cfg.conf_thres);
        let multi = cfg.multi_label && nc > 1;
        let allowed: Option<Vec<bool>> = cfg.classes.as_ref().map(|cl| {
            let mut a = vec![false; nc];
            for &c in cl {
                if c < nc {
                    a[c] = true;
                }
            }
            a
        });
        let ok = |c: usize| allowed.as_ref().is_none_or(|a| a[c]);
        let mut out = Vec::new();
        match self.family {
            Family::V5 => {
                let no = 5 + nc;
                for (r, row) in self.data.chunks_exact(no).enumerate().take(n) {
                    let obj = row[4];
                    // `obj > conf` (NaN fails)
                    if obj.partial_cmp(&conf) != Some(std::cmp::Ordering::Greater) {
                        continue;
                    }
                    let cls = &row[5..];
                    if multi {
                        for (c, &p) in cls.iter().enumerate() {
                            let s = p * obj;
                            if s > conf && ok(c) {
                                out.push(key(s, (r * nc + c) as u32));
                            }
                        }
                    } else {
                        // torch `max(1)`: first maximum; NaN propagates (and fails the threshold)
                        let (mut best, mut arg, mut nan) = (f32::NEG_INFINITY, 0usize, false);
                        for (c, &p) in cls.iter().enumerate() {
                            let s = p * obj;
                            if s.is_nan() {
                                nan = true;
                                break;
                            }
                            if s > best || c == 0 {
                                best = s;
                                arg = c;
                            }
                        }
                        if !nan && best > conf && ok(arg) {
                            out.push(key(best, (r * nc + arg) as u32));
                        }
                    }
                }
            }
            Family::V11 => {
                let cls = &self.data[4 * n..(4 + nc) * n];
                if multi {
                    let mut nan_rows = Vec::new();
                    for (c, ch) in cls.chunks_exact(n).enumerate() {
                        let take = ok(c);
                        for (a, &s) in ch.iter().enumerate() {
                            if s > conf {
                                if take {
                                    out.push(key(s, (a * nc + c) as u32));
                                }
                            } else if s.is_nan() {
                                nan_rows.push(a);
                            }
                        }
                    }
                    if !nan_rows.is_empty() {
                        // ultralytics pre-filters anchors by `amax(classes) > conf`: NaN drops the anchor
                        let mut bad = vec![false; n];
                        for a in nan_rows {
                            bad[a] = true;
                        }
                        out.retain(|&k| !bad[unkey(k).1 as usize / nc]);
                    }
                } else {
                    let mut best = vec![f32::NEG_INFINITY; n];
                    let mut arg = vec![0u32; n];
                    let mut nan = vec![false; n];
                    for (c, ch) in cls.chunks_exact(n).enumerate() {
                        for (a, &s) in ch.iter().enumerate() {
                            if s.is_nan() {
                                nan[a] = true;
                            } else if s > best[a] || c == 0 {
                                best[a] = s;
                                arg[a] = c as u32;
                            }
                        }
                    }
                    for a in 0..n {
                        let c = arg[a] as usize;
                        if !nan[a] && best[a] > conf && ok(c) {
                            out.push(key(best[a], (a * nc + c) as u32));
                        }
                    }
                }
            }
        }
        out
    }
}

/// NMS of one image (see the module documentation). The result is in descending score order.
pub fn nms_image(preds: ImagePreds<'_>, cfg: &NmsConfig) -> Vec<Detection> {
    let nc = preds.nc;
    if preds.n == 0 || nc == 0 {
        return Vec::new();
    }
    let mut cand = preds.candidates(cfg);
    if cand.is_empty() {
        return Vec::new();
    }
    if cand.len() > cfg.max_nms {
        if cfg.max_nms == 0 {
            return Vec::new();
        }
        cand.select_nth_unstable(cfg.max_nms - 1);
        cand.truncate(cfg.max_nms);
    }
    cand.sort_unstable();

    // Boxes (plain and class-offset) of the candidates.
    let mut items: Vec<(Detection, NmsBox)> = Vec::with_capacity(cand.len());
    let (mut lo_x, mut hi_x, mut lo_y, mut hi_y) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &k in &cand {
        let (score, pos) = unkey(k);
        let (row, class) = (pos as usize / nc, pos as usize % nc);
        let xyxy = preds.xyxy(row);
        // torch: `x[:, 5:6] * max_wh` (float32 class index times the offset), then `box + c`
        let offset = if cfg.agnostic { 0.0 } else { class as f32 * cfg.max_wh };
        lo_x = lo_x.min(xyxy[0] as f64);
        hi_x = hi_x.max(xyxy[2] as f64);
        lo_y = lo_y.min(xyxy[1] as f64);
        hi_y = hi_y.max(xyxy[3] as f64);
        items.push((Detection { xyxy, score, class, index: row }, NmsBox::new(xyxy, offset)));
    }
    // Offset boxes of different classes are disjoint when all boxes fit in one max_wh band on
    // some axis; then a per-class check is the class-offset trick exactly.
    let span = cfg.max_wh as f64;
    let per_class = cfg.agnostic || hi_x - lo_x <= span || hi_y - lo_y <= span;
    let groups = if per_class && !cfg.agnostic { nc } else { 1 };
    let mut kept: Vec<Vec<NmsBox>> = vec![Vec::new(); groups];
    let mut out = Vec::with_capacity(cfg.max_det.min(items.len()));
    for (det, b) in items {
        if out.len() >= cfg.max_det {
            break;
        }
        let g = if groups == 1 { 0 } else { det.class };
        let suppressed = kept[g].iter().any(|k| tv_iou(k, &b) as f64 > cfg.iou_thres);
        if !suppressed {
            kept[g].push(b);
            out.push(det);
        }
    }
    out
}

/// Checks a decoded tensor's dims for `family` and returns (batch, rows or anchors, classes).
fn layout(len: usize, dims: [usize; 3], family: Family) -> Result<(usize, usize, usize)> {
    let [b, d1, d2] = dims;
    if b.checked_mul(d1).and_then(|x| x.checked_mul(d2)) != Some(len) {
        return Err(YoloError::Invalid(format!("NMS: decoded data has {len} values, not {b}×{d1}×{d2}")));
    }
    let (n, nc) = match family {
        Family::V5 if d2 >= 6 => (d1, d2 - 5),
        Family::V11 if d1 >= 5 => (d2, d1 - 4),
        Family::V5 => return Err(YoloError::Invalid(format!("NMS: YOLOv5 decoded rows have {d2} values, need 5 + nc ≥ 6"))),
        Family::V11 => return Err(YoloError::Invalid(format!("NMS: YOLO11 decoded tensor has {d1} channels, need 4 + nc ≥ 5"))),
    };
    if n.checked_mul(nc).is_none_or(|x| x > u32::MAX as usize) {
        return Err(YoloError::Invalid(format!("NMS: {n} rows × {nc} classes exceed 2^32 candidates per image")));
    }
    Ok((b, n, nc))
}

/// Batched NMS of a decoded tensor given as a flat slice with its dims: YOLOv5 `(B, N, 5 + nc)`,
/// YOLO11 `(B, 4 + nc, A)` (the [`crate::Detector::decode`] layouts). One list per image.
pub fn non_max_suppression(decoded: &[f32], dims: [usize; 3], family: Family, cfg: &NmsConfig) -> Result<Vec<Vec<Detection>>> {
    cfg.validate()?;
    let (b, n, nc) = layout(decoded.len(), dims, family)?;
    if b == 0 {
        return Ok(Vec::new());
    }
    let per = decoded.len() / b;
    if per == 0 || n == 0 {
        return Ok(vec![Vec::new(); b]);
    }
    let run = |data: &[f32]| nms_image(ImagePreds { data, n, nc, family }, cfg);
    Ok(if b == 1 { vec![run(decoded)] } else { decoded.par_chunks(per).map(run).collect() })
}

/// [`non_max_suppression`] of a decoded candle tensor (any float dtype, any device; converted
/// to float32 on the CPU once).
pub fn non_max_suppression_tensor(decoded: &Tensor, family: Family, cfg: &NmsConfig) -> Result<Vec<Vec<Detection>>> {
    let dims: [usize; 3] =
        decoded.dims().try_into().map_err(|_| YoloError::Invalid(format!("NMS: decoded tensor has shape {:?}, expected 3 dims", decoded.dims())))?;
    let data = decoded.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    non_max_suppression(&data, dims, family, cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v5_rows(rows: &[[f32; 7]]) -> Vec<f32> {
        rows.iter().flatten().copied().collect()
    }

    #[test]
    fn torchvision_example() {
        let boxes = [[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0]];
        assert_eq!(nms(&boxes, &[0.9, 0.8, 0.7], 0.5), vec![0, 2]);
        assert_eq!(nms(&boxes, &[0.8, 0.9, 0.7], 0.5), vec![1, 2]);
        // IoU 81/119 ≈ 0.68: kept at a higher threshold
        assert_eq!(nms(&boxes, &[0.9, 0.8, 0.7], 0.7), vec![0, 1, 2]);
        assert!((box_iou(boxes[0], boxes[1]) - 81.0 / 119.0).abs() < 1e-6);
    }

    #[test]
    fn iou_threshold_compared_in_double() {
        // IoU 60/100 rounds to 0.6f32 = 0.60000002 > 0.6 (double): torchvision suppresses
        // (checked: nms([[0,0,10,10],[0,0,10,6]], [.9,.8], 0.6) == [0]); a float32 compare would not
        let boxes = [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 6.0]];
        assert_eq!(nms(&boxes, &[0.9, 0.8], 0.6), vec![0]);
        assert_eq!(nms(&boxes, &[0.9, 0.8], 0.6000001), vec![0, 1]);
        let d = v5_rows(&[[5.0, 5.0, 10.0, 10.0, 0.9, 0.9, 0.0], [5.0, 3.0, 10.0, 6.0, 0.9, 0.8, 0.0]]);
        let out = non_max_suppression(&d, [1, 2, 7], Family::V5, &NmsConfig::yolov5_val()).unwrap();
        assert_eq!(out[0].len(), 1);
    }

    #[test]
    fn class_aware_and_agnostic() {
        // two overlapping boxes, different best classes, one far box
        let d = v5_rows(&[[50.0, 50.0, 20.0, 20.0, 0.9, 0.9, 0.1], [51.0, 51.0, 20.0, 20.0, 0.8, 0.1, 0.9], [200.0, 200.0, 20.0, 20.0, 0.5, 0.9, 0.0]]);
        let mut cfg = NmsConfig::yolov5_detect();
        cfg.conf_thres = 0.05;
        let out = non_max_suppression(&d, [1, 3, 7], Family::V5, &cfg).unwrap();
        let got: Vec<(usize, usize)> = out[0].iter().map(|d| (d.index, d.class)).collect();
        assert_eq!(got, vec![(0, 0), (1, 1), (2, 0)]);
        cfg.agnostic = true;
        let out = non_max_suppression(&d, [1, 3, 7], Family::V5, &cfg).unwrap();
        let got: Vec<(usize, usize)> = out[0].iter().map(|d| (d.index, d.class)).collect();
        assert_eq!(got, vec![(0, 0), (2, 0)]);
        // multi-label: rows 0 and 1 also give class 1 (0.09) and class 0 (0.08) candidates, which
        // their own-class twins suppress at IoU 361/439 ≈ 0.82 > 0.6 but not > 0.9; the far row's
        // class 1 (score 0) is no candidate
        let mut cfg = NmsConfig::yolov5_val();
        cfg.conf_thres = 0.05;
        let out = non_max_suppression(&d, [1, 3, 7], Family::V5, &cfg).unwrap();
        let got: Vec<(usize, usize)> = out[0].iter().map(|d| (d.index, d.class)).collect();
        assert_eq!(got, vec![(0, 0), (1, 1), (2, 0)]);
        cfg.iou_thres = 0.9;
        let out = non_max_suppression(&d, [1, 3, 7], Family::V5, &cfg).unwrap();
        let got: Vec<(usize, usize)> = out[0].iter().map(|d| (d.index, d.class)).collect();
        assert_eq!(got, vec![(0, 0), (1, 1), (2, 0), (0, 1), (1, 0)]);
        assert_eq!(out[0][0].xyxy, [40.0, 40.0, 60.0, 60.0]);
        assert!((out[0][0].score - 0.81).abs() < 1e-6);
    }

    #[test]
    fn v11_layout_and_nan() {
        // 3 anchors, 2 classes, channel-major
        let (cx, cy, w, h) = ([10.0, 11.0, 100.0], [10.0, 11.0, 100.0], [8.0, 8.0, 8.0], [8.0, 8.0, 8.0]);
        let c0 = [0.9, 0.8, f32::NAN];
        let c1 = [0.0, 0.0, 0.7];
        let d: Vec<f32> = [cx, cy, w, h, c0, c1].concat();
        let out = non_max_suppression(&d, [1, 6, 3], Family::V11, &NmsConfig::yolo11_val()).unwrap();
        let got: Vec<(usize, usize)> = out[0].iter().map(|d| (d.index, d.class)).collect();
        // anchors 0 and 1 overlap with IoU 49/79 ≈ 0.62 ≤ 0.7; anchor 2 has a NaN class score and
        // is dropped entirely (its class 1 too), as ultralytics' amax pre-filter does
        assert_eq!(got, vec![(0, 0), (1, 0)]);
    }

    #[test]
    fn empty_and_bad_input() {
        let cfg = NmsConfig::yolov5_val();
        let out = non_max_suppression(&[0.0; 14], [2, 1, 7], Family::V5, &cfg).unwrap();
        assert_eq!(out, vec![vec![], vec![]]);
        // no rows / anchors at all
        assert_eq!(non_max_suppression(&[], [2, 0, 7], Family::V5, &cfg).unwrap(), vec![vec![], vec![]]);
        assert_eq!(non_max_suppression(&[], [3, 6, 0], Family::V11, &cfg).unwrap(), vec![vec![]; 3]);
        assert!(non_max_suppression(&[0.0; 13], [2, 1, 7], Family::V5, &cfg).is_err());
        assert!(non_max_suppression(&[0.0; 10], [2, 1, 5], Family::V5, &cfg).is_err());
        assert!(non_max_suppression(&[0.0; 8], [2, 4, 1], Family::V11, &cfg).is_err());
        let bad = NmsConfig { iou_thres: 1.5, ..cfg };
        assert!(non_max_suppression(&[0.0; 14], [2, 1, 7], Family::V5, &bad).is_err());
    }

    #[test]
    fn far_apart_boxes_use_the_exact_fallback() {
        // boxes spanning more than max_wh on both axes: the all-kept check gives the same
        // answer as torchvision on offset boxes
        let mut cfg = NmsConfig::yolov5_val();
        cfg.max_wh = 100.0;
        let d = v5_rows(&[
            [20.0, 20.0, 20.0, 20.0, 0.9, 0.9, 0.0],
            // class 1 box at x≈-80 offset by +100 lands on the class-0 box
            [-80.0, -80.0, 20.0, 20.0, 0.8, 0.0, 0.9],
            [500.0, 500.0, 20.0, 20.0, 0.7, 0.9, 0.0],
        ]);
        let out = non_max_suppression(&d, [1, 3, 7], Family::V5, &cfg).unwrap();
        let got: Vec<(usize, usize)> = out[0].iter().map(|d| (d.index, d.class)).collect();
        assert_eq!(got, vec![(0, 0), (2, 0)]);
        let boxes: Vec<[f32; 4]> = [[20.0f32, 20.0], [-80.0, -80.0], [500.0, 500.0]]
            .iter()
            .zip([0.0f32, 100.0, 0.0])
            .map(|(c, o)| {
                let b = xywh2xyxy(c[0], c[1], 20.0, 20.0);
                [b[0] + o, b[1] + o, b[2] + o, b[3] + o]
            })
            .collect();
        assert_eq!(nms(&boxes, &[0.81, 0.72, 0.63], 0.6), vec![0, 2]);
    }
}
