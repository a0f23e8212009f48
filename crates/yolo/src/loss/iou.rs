//! Complete IoU (CIoU, Zheng et al. 2020, arXiv:1911.08287) as ultralytics
//! `utils/metrics.py::bbox_iou(box1, box2, xywh, CIoU=True, eps=1e-7)` computes it, which both
//! YOLOv5's `ComputeLoss` and ultralytics' `BboxLoss` / `TaskAlignedAssigner` call:
//!
//! ```text
//! xywh:   b_x1 = x − w/2, b_x2 = x + w/2 (w, h used as given)
//! xyxy:   w = x2 − x1, h = y2 − y1 + eps
//! inter = (min(b1_x2, b2_x2) − max(b1_x1, b2_x1)).clamp(0) · (… y …).clamp(0)
//! union = w1·h1 + w2·h2 − inter + eps,      iou = inter / union
//! c²    = cw² + ch² + eps                    (cw, ch: the enclosing box)
//! ρ²    = ((b2_x1 + b2_x2 − b1_x1 − b1_x2)² + (b2_y1 + b2_y2 − b1_y1 − b1_y2)²) / 4
//! v     = 4/π² · (atan(w2/h2) − atan(w1/h1))²
//! α     = v / (1 − iou + v + eps)            (under torch.no_grad: a constant for autograd)
//! CIoU  = iou − (ρ²/c² + v·α)
//! ```
//!
//! [`ciou`] is the differentiable tensor version (column tensors of equal length); [`ciou_f32`]
//! the scalar version used by the assigner on detached values, in float32 in the same order.

use candle_core::Tensor;

use super::ops::atan;
use crate::Result;

/// `eps` of ultralytics `bbox_iou`.
pub const IOU_EPS: f32 = 1e-7;
/// `4 / π²` as a float32 (PyTorch multiplies a float32 tensor by the Python float in float32).
const FOUR_OVER_PI2: f32 = (4.0 / (std::f64::consts::PI * std::f64::consts::PI)) as f32;

/// A box format of [`ciou`] and [`ciou_f32`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoxFmt {
    /// (cx, cy, w, h); widths used as given.
    Xywh,
    /// (x1, y1, x2, y2); heights get `+ eps` as in ultralytics.
    Xyxy,
}

/// Differentiable CIoU of `box1[i]` against `box2[i]`; each box is four tensors of one shape
/// (its components in `fmt`). Gradients flow to whichever inputs carry them; α is detached.
pub fn ciou(box1: [&Tensor; 4], box2: [&Tensor; 4], fmt: BoxFmt) -> Result<Tensor> {
    let eps = IOU_EPS as f64;
    let corners = |b: [&Tensor; 4]| -> Result<[Tensor; 6]> {
        Ok(match fmt {
            BoxFmt::Xywh => {
                let (hw, hh) = (b[2].affine(0.5, 0.0)?, b[3].affine(0.5, 0.0)?);
                [(b[0] - &hw)?, (b[1] - &hh)?, (b[0] + &hw)?, (b[1] + &hh)?, b[2].clone(), b[3].clone()]
            }
            BoxFmt::Xyxy => {
                let w = (b[2] - b[0])?;
                let h = (b[3] - b[1])?.affine(1.0, eps)?;
                [b[0].clone(), b[1].clone(), b[2].clone(), b[3].clone(), w, h]
            }
        })
    };
    let [ax1, ay1, ax2, ay2, w1, h1] = corners(box1)?;
    let [bx1, by1, bx2, by2, w2, h2] = corners(box2)?;

    let iw = (ax2.minimum(&bx2)? - ax1.maximum(&bx1)?)?.relu()?;
    let ih = (ay2.minimum(&by2)? - ay1.maximum(&by1)?)?.relu()?;
    let inter = (iw * ih)?;
    let union = ((((&w1 * &h1)? + (&w2 * &h2)?)? - &inter)?).affine(1.0, eps)?;
    let iou = (inter / union)?;

    let cw = (ax2.maximum(&bx2)? - ax1.minimum(&bx1)?)?;
    let ch = (ay2.maximum(&by2)? - ay1.minimum(&by1)?)?;
    let c2 = (cw.sqr()? + ch.sqr()?)?.affine(1.0, eps)?;
    let dx = (((&bx1 + &bx2)? - &ax1)? - &ax2)?;
    let dy = (((&by1 + &by2)? - &ay1)? - &ay2)?;
    let rho2 = (dx.sqr()? + dy.sqr()?)?.affine(0.25, 0.0)?;
    let v = (atan(&(&w2 / &h2)?)? - atan(&(&w1 / &h1)?)?)?.sqr()?.affine(FOUR_OVER_PI2 as f64, 0.0)?;
    let alpha = {
        let (v, iou) = (v.detach(), iou.detach());
        (&v / ((v.clone() - iou)?.affine(1.0, 1.0 + eps))?)?
    };
    let penalty = ((rho2 / c2)? + (v * alpha)?)?;
    Ok((iou - penalty)?)
}

/// CIoU of two boxes in float32, same operations and order as [`ciou`] / ultralytics.
pub fn ciou_f32(b1: [f32; 4], b2: [f32; 4], fmt: BoxFmt) -> f32 {
    let eps = IOU_EPS;
    let corners = |b: [f32; 4]| match fmt {
        BoxFmt::Xywh => {
            let (hw, hh) = (b[2] / 2.0, b[3] / 2.0);
            [b[0] - hw, b[1] - hh, b[0] + hw, b[1] + hh, b[2], b[3]]
        }
        BoxFmt::Xyxy => [b[0], b[1], b[2], b[3], b[2] - b[0], b[3] - b[1] + eps],
    };
    let [ax1, ay1, ax2, ay2, w1, h1] = corners(b1);
    let [bx1, by1, bx2, by2, w2, h2] = corners(b2);
    let inter = (ax2.min(bx2) - ax1.max(bx1)).max(0.0) * (ay2.min(by2) - ay1.max(by1)).max(0.0);
    let union = w1 * h1 + w2 * h2 - inter + eps;
    let iou = inter / union;
    let cw = ax2.max(bx2) - ax1.min(bx1);
    let ch = ay2.max(by2) - ay1.min(by1);
    let c2 = cw * cw + ch * ch + eps;
    let dx = bx1 + bx2 - ax1 - ax2;
    let dy = by1 + by2 - ay1 - ay2;
    let rho2 = (dx * dx + dy * dy) / 4.0;
    let d = (w2 / h2).atan() - (w1 / h1).atan();
    let v = FOUR_OVER_PI2 * (d * d);
    let alpha = v / (1.0 - iou + v + eps);
    iou - (rho2 / c2 + v * alpha)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn col(v: &[f32]) -> Tensor {
        Tensor::from_slice(v, v.len(), &Device::Cpu).unwrap()
    }

    fn ciou_t(b1: [f32; 4], b2: [f32; 4], fmt: BoxFmt) -> f32 {
        let a: Vec<Tensor> = b1.iter().map(|v| col(&[*v])).collect();
        let b: Vec<Tensor> = b2.iter().map(|v| col(&[*v])).collect();
        let r = ciou([&a[0], &a[1], &a[2], &a[3]], [&b[0], &b[1], &b[2], &b[3]], fmt).unwrap();
        r.to_vec1::<f32>().unwrap()[0]
    }

    /// Closed forms, evaluated in f64 without the eps terms.
    fn closed(b1: [f64; 4], b2: [f64; 4]) -> f64 {
        let (w1, h1, w2, h2) = (b1[2] - b1[0], b1[3] - b1[1], b2[2] - b2[0], b2[3] - b2[1]);
        let inter = (b1[2].min(b2[2]) - b1[0].max(b2[0])).max(0.0) * (b1[3].min(b2[3]) - b1[1].max(b2[1])).max(0.0);
        let iou = inter / (w1 * h1 + w2 * h2 - inter);
        let cw = b1[2].max(b2[2]) - b1[0].min(b2[0]);
        let ch = b1[3].max(b2[3]) - b1[1].min(b2[1]);
        let rho2 = ((b1[0] + b1[2] - b2[0] - b2[2]).powi(2) + (b1[1] + b1[3] - b2[1] - b2[3]).powi(2)) / 4.0;
        let v = 4.0 / std::f64::consts::PI.powi(2) * ((w2 / h2).atan() - (w1 / h1).atan()).powi(2);
        let alpha = if v == 0.0 { 0.0 } else { v / (1.0 - iou + v) };
        iou - rho2 / (cw * cw + ch * ch) - alpha * v
    }

    #[test]
    fn identical_boxes_give_one() {
        for fmt in [BoxFmt::Xywh, BoxFmt::Xyxy] {
            let b = [3.0, 4.0, 9.0, 7.0];
            assert!((ciou_f32(b, b, fmt) - 1.0).abs() < 1e-6);
            assert!((ciou_t(b, b, fmt) - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn same_aspect_concentric_is_plain_iou() {
        // 2x2 inside 4x4, same centre and aspect: v = 0, ρ = 0, CIoU = IoU = 4/16.
        let a = [1.0, 1.0, 3.0, 3.0];
        let b = [0.0, 0.0, 4.0, 4.0];
        assert!((ciou_f32(a, b, BoxFmt::Xyxy) - 0.25).abs() < 1e-6);
        assert!((ciou_t(a, b, BoxFmt::Xyxy) - 0.25).abs() < 1e-6);
    }

    #[test]
    fn disjoint_same_shape_is_minus_distance_ratio() {
        // Unit squares with centres 3 apart along x: IoU 0, v 0, ρ² = 9, c² = 4² + 1² = 17.
        let a = [0.0, 0.0, 1.0, 1.0];
        let b = [3.0, 0.0, 4.0, 1.0];
        assert!((ciou_f32(a, b, BoxFmt::Xyxy) + 9.0 / 17.0).abs() < 1e-6);
        assert!((ciou_t(a, b, BoxFmt::Xyxy) + 9.0 / 17.0).abs() < 1e-6);
    }

    #[test]
    fn general_cases_match_closed_form_and_formats_agree() {
        let cases = [
            ([0.0, 0.0, 4.0, 2.0], [1.0, 0.5, 3.0, 5.0]),
            ([10.0, 12.0, 30.0, 20.0], [11.0, 9.0, 26.0, 40.0]),
            ([0.2, 0.3, 0.9, 0.5], [0.1, 0.1, 0.15, 0.9]),
            ([5.0, 5.0, 6.0, 9.0], [1.0, 2.0, 3.0, 3.0]),
        ];
        for (a, b) in cases {
            let want = closed(a.map(|v| v as f64), b.map(|v| v as f64)) as f32;
            assert!((ciou_f32(a, b, BoxFmt::Xyxy) - want).abs() < 2e-5, "{a:?} {b:?}");
            assert!((ciou_t(a, b, BoxFmt::Xyxy) - want).abs() < 2e-5);
            let xywh = |b: [f32; 4]| [(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0, b[2] - b[0], b[3] - b[1]];
            assert!((ciou_f32(xywh(a), xywh(b), BoxFmt::Xywh) - want).abs() < 2e-5);
            assert!((ciou_t(xywh(a), xywh(b), BoxFmt::Xywh) - want).abs() < 2e-5);
            // symmetric
            assert!((ciou_f32(b, a, BoxFmt::Xyxy) - want).abs() < 2e-5);
        }
    }

    #[test]
    fn gradient_matches_finite_difference_with_alpha_held() {
        // d CIoU / d box1 by central differences of the f64 closed form with α frozen at its
        // value at the base point (ultralytics computes α under no_grad).
        let b2 = [1.0f64, 0.5, 3.0, 5.0];
        let b1 = [0.3f64, 0.1, 4.2, 2.2];
        let v = |b: [f64; 4]| {
            4.0 / std::f64::consts::PI.powi(2)
                * (((b2[2] - b2[0]) / (b2[3] - b2[1])).atan() - ((b[2] - b[0]) / (b[3] - b[1])).atan()).powi(2)
        };
        let iou = |b: [f64; 4]| {
            let inter = (b[2].min(b2[2]) - b[0].max(b2[0])).max(0.0) * (b[3].min(b2[3]) - b[1].max(b2[1])).max(0.0);
            inter / ((b[2] - b[0]) * (b[3] - b[1]) + (b2[2] - b2[0]) * (b2[3] - b2[1]) - inter)
        };
        let alpha0 = v(b1) / (1.0 - iou(b1) + v(b1));
        let f = |b: [f64; 4]| closed(b, b2) + v(b) * (v(b) / (1.0 - iou(b) + v(b))) - v(b) * alpha0;
        let vars: Vec<Var> = b1.iter().map(|x| Var::from_slice(&[*x as f32], 1, &Device::Cpu).unwrap()).collect();
        let t2: Vec<Tensor> = b2.iter().map(|x| col(&[*x as f32])).collect();
        let r = ciou(
            [vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor(), vars[3].as_tensor()],
            [&t2[0], &t2[1], &t2[2], &t2[3]],
            BoxFmt::Xyxy,
        )
        .unwrap();
        let g = r.sum_all().unwrap().backward().unwrap();
        for k in 0..4 {
            let h = 1e-6;
            let (mut p, mut m) = (b1, b1);
            p[k] += h;
            m[k] -= h;
            let fd = (f(p) - f(m)) / (2.0 * h);
            let got = g.get(vars[k].as_tensor()).unwrap().to_vec1::<f32>().unwrap()[0] as f64;
            assert!((got - fd).abs() < 1e-4 * (1.0 + fd.abs()), "component {k}: {got} vs {fd}");
        }
    }
}
