//! The two Detect heads and their inference decoding.
//!
//! - [`DetectV5`]: YOLOv5 `Detect` — three levels, three anchors each, one biased 1×1 conv per
//!   level (`m.{0,1,2}`, output `na·(5+nc)` channels: run time, since nc is), the `anchors`
//!   buffer of shape (3, 3, 2) in grid units (pixels / stride) exactly as YOLOv5's state_dict holds
//!   it after `Model.__init__` divides by the strides. Bias init as `Model._initialize_biases`.
//! - [`DetectV11`]: ultralytics 8.4 `Detect` (legacy=False) with reg_max 16: box branch `cv2.i`
//!   = Conv 3×3 → Conv 3×3 → Conv2d 1×1 (64 outputs), class branch `cv3.i` = (DWConv 3×3 → Conv
//!   1×1) → (DWConv 3×3 → Conv 1×1) → Conv2d 1×1 (nc outputs) with hidden width
//!   `c3 = max(ch[0], min(nc, 100))`, and the fixed [`DFL`]. Bias init as `Detect.bias_init`.
//!
//! The prediction convs (YOLOv5 `m.i`, YOLO11 `cv2.i.2` and `cv3.i.2`) are `LayerKind::Head`
//! for the quantization plan; every other conv of the heads is `LayerKind::Body`.

use candle_core::{DType, Device, Tensor, Var};
use q2_nn::conv::Act;
use q2_nn::store::{Init, Role, Scope};
use q2_nn::Feat;
use q2_quant::{LayerQuant, QConv2d};

use crate::blocks::{conv, dwconv, run_dyn, Conv, Ctx, DWConv, Run, DFL};
use crate::dynconv::{Geom, QConvDyn};
use crate::{Result, YoloError};

/// The strides of P3, P4, P5.
pub const STRIDES: [usize; 3] = [8, 16, 32];

/// YOLOv5's default P3–P5 anchors in pixels (`anchors:` of `yolov5*.yaml`), `[level][a] = (w, h)`.
pub const V5_ANCHORS: [[(f32, f32); 3]; 3] = [
    [(10., 13.), (16., 30.), (33., 23.)],
    [(30., 61.), (62., 45.), (59., 119.)],
    [(116., 90.), (156., 198.), (373., 326.)],
];

/// YOLO11's DFL bins.
pub const REG_MAX: usize = 16;

fn check_nc(nc: usize) -> Result<()> {
    if nc == 0 || nc > 10_000 {
        return Err(YoloError::Invalid(format!(
            "number of classes must be in 1..=10000, got {nc}"
        )));
    }
    Ok(())
}

/// Adds `delta` to the bias entries `idx` of a conv bias.
fn bump_bias(bias: &Var, f: impl Fn(usize) -> Option<f64>) -> Result<()> {
    let mut v = bias.as_tensor().to_dtype(DType::F32)?.to_vec1::<f32>()?;
    for (i, x) in v.iter_mut().enumerate() {
        if let Some(d) = f(i) {
            *x = (*x as f64 + d) as f32;
        }
    }
    let n = v.len();
    bias.set(&Tensor::from_vec(v, n, bias.device())?)?;
    Ok(())
}

/// Cell grid `(x, y)` of a level as two (h·w) vectors in row-major order.
fn grid_xy(h: usize, w: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
    let xs: Vec<f32> = (0..h * w).map(|i| (i % w) as f32).collect();
    let ys: Vec<f32> = (0..h * w).map(|i| (i / w) as f32).collect();
    Ok((
        Tensor::from_vec(xs, h * w, dev)?,
        Tensor::from_vec(ys, h * w, dev)?,
    ))
}

/// YOLOv5 `Detect(nc, anchors, ch=(C, D, E))`.
#[derive(Debug)]
pub struct DetectV5<const C: usize, const D: usize, const E: usize> {
    pub m: [QConvDyn; 3],
    /// (3, 3, 2) anchors in grid units (pixels / stride).
    pub anchors: Var,
    pub nc: usize,
    pub na: usize,
}

impl<const C: usize, const D: usize, const E: usize> DetectV5<C, D, E> {
    /// Builds the head under `s` (`model.24`) with `head` quantizers on the prediction convs.
    pub fn new(s: &mut Scope, nc: usize, head: &LayerQuant) -> Result<Self> {
        check_nc(nc)?;
        let na = 3;
        let no = nc + 5;
        let mut convs = vec![];
        for (i, ch) in [C, D, E].into_iter().enumerate() {
            let c = QConvDyn::conv2d(&mut s.sub("m").sub(i), Geom::new(ch, na * no, 1, 1), head)?;
            // Model._initialize_biases: obj += log(8 / (640 / s)²), cls += log(0.6 / (nc − 0.99)).
            let stride = STRIDES[i] as f64;
            let obj = (8.0 / (640.0 / stride).powi(2)).ln();
            let cls = (0.6 / (nc as f64 - 0.99)).ln();
            bump_bias(c.bias.as_ref().expect("conv2d has a bias"), |j| {
                match j % no {
                    4 => Some(obj),
                    k if k >= 5 => Some(cls),
                    _ => None,
                }
            })?;
            convs.push(c);
        }
        let vals: Vec<f32> = V5_ANCHORS
            .iter()
            .zip(STRIDES)
            .flat_map(|(lv, st)| {
                lv.iter()
                    .flat_map(move |(w, h)| [w / st as f32, h / st as f32])
            })
            .collect();
        let anchors = s.add("anchors", (3, 3, 2), Role::Buffer, Init::Values(vals))?;
        let m: [QConvDyn; 3] = convs
            .try_into()
            .map_err(|_| YoloError::Invalid("three levels".into()))?;
        Ok(Self { m, anchors, nc, na })
    }

    /// The three raw prediction maps (B, na·(5+nc), h, w).
    pub fn forward(
        &self,
        p3: &Feat<C>,
        p4: &Feat<D>,
        p5: &Feat<E>,
        cx: Ctx,
    ) -> Result<[Tensor; 3]> {
        Ok([
            run_dyn(&self.m[0], p3.tensor(), cx)?,
            run_dyn(&self.m[1], p4.tensor(), cx)?,
            run_dyn(&self.m[2], p5.tensor(), cx)?,
        ])
    }

    /// Anchors in pixels, `[level][a] = (w, h)` (the buffer times the stride).
    pub fn anchors_px(&self) -> Result<Vec<[(f32, f32); 3]>> {
        let v = self
            .anchors
            .as_tensor()
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok((0..3)
            .map(|l| {
                let s = STRIDES[l] as f32;
                [0, 1, 2].map(|a| (v[l * 6 + a * 2] * s, v[l * 6 + a * 2 + 1] * s))
            })
            .collect())
    }
}

/// YOLOv5 inference decoding (`Detect.forward` in eval): per level, `raw` viewed as
/// (B, na, no, h, w) → (B, na, h, w, no), sigmoid, `xy = (σ·2 − 0.5 + grid)·stride`,
/// `wh = (σ·2)²·anchor_px`; rows by level then `(a·h + gy)·w + gx`. Output (B, Σ na·h·w, 5+nc).
pub fn decode_v5(raw: &[Tensor; 3], anchors_px: &[[(f32, f32); 3]], nc: usize) -> Result<Tensor> {
    let no = nc + 5;
    let na = 3;
    let mut outs = vec![];
    for (l, r) in raw.iter().enumerate() {
        let (b, c, h, w) = r.dims4()?;
        if c != na * no {
            return Err(YoloError::Invalid(format!(
                "decode: level {l} has {c} channels, expected {}",
                na * no
            )));
        }
        let dev = r.device();
        let stride = STRIDES[l] as f64;
        let y = r
            .reshape((b, na, no, h * w))?
            .transpose(2, 3)?
            .contiguous()?; // (B, na, hw, no)
        let y = candle_nn::ops::sigmoid(&y)?;
        let (gx, gy) = grid_xy(h, w, dev)?;
        let grid = Tensor::stack(&[gx, gy], 1)?.reshape((1, 1, h * w, 2))?;
        let grid = (grid - 0.5)?;
        let xy = ((y.narrow(3, 0, 2)? * 2.0)?.broadcast_add(&grid)? * stride)?;
        let anc: Vec<f32> = anchors_px[l]
            .iter()
            .flat_map(|(aw, ah)| [*aw, *ah])
            .collect();
        let anc = Tensor::from_vec(anc, (1, na, 1, 2), dev)?;
        let wh = (y.narrow(3, 2, 2)? * 2.0)?.sqr()?.broadcast_mul(&anc)?;
        let rest = y.narrow(3, 4, no - 4)?;
        outs.push(Tensor::cat(&[xy, wh, rest], 3)?.reshape((b, na * h * w, no))?);
    }
    Ok(Tensor::cat(&outs, 1)?)
}

/// YOLO11 box branch `cv2.i`: Conv 3×3 (X → 64) → Conv 3×3 → Conv2d 1×1 (64 logits).
#[derive(Debug)]
pub struct BoxBranch<const X: usize> {
    pub c0: Conv<X, 64, 3, 1>,
    pub c1: Conv<64, 64, 3, 1>,
    pub c2: QConv2d<64, 64, 1, 1>,
}

impl<const X: usize> BoxBranch<X> {
    fn new(s: &mut Scope, body: &LayerQuant, head: &LayerQuant) -> Result<Self> {
        Ok(Self {
            c0: conv(&mut s.sub(0), body)?,
            c1: conv(&mut s.sub(1), body)?,
            c2: QConv2d::new(&mut s.sub(2), head)?,
        })
    }

    fn forward(&self, x: &Feat<X>, cx: Ctx) -> Result<Tensor> {
        let y = self.c1.run(&self.c0.run(x, cx)?, cx)?;
        if cx.calib {
            self.c2.calibrate(&y)?;
        }
        let out = self.c2.forward(&y)?.into_tensor();
        if let Some(p) = cx.prof {
            p.add((out.elem_count() * 64) as u64);
        }
        Ok(out)
    }
}

/// YOLO11 class branch `cv3.i`: (DWConv 3×3 X→X, Conv 1×1 X→c3), (DWConv 3×3 c3→c3, Conv 1×1
/// c3→c3), Conv2d 1×1 c3→nc.
#[derive(Debug)]
pub struct ClsBranch<const X: usize> {
    pub dw0: DWConv<X, X, 3, 1>,
    pub pw0: QConvDyn,
    pub dw1: QConvDyn,
    pub pw1: QConvDyn,
    pub out: QConvDyn,
}

impl<const X: usize> ClsBranch<X> {
    fn new(
        s: &mut Scope,
        c3: usize,
        nc: usize,
        body: &LayerQuant,
        head: &LayerQuant,
    ) -> Result<Self> {
        let dw0 = dwconv(&mut s.sub(0).sub(0), body)?;
        let pw0 = QConvDyn::conv_bn(
            &mut s.sub(0).sub(1),
            Geom::new(X, c3, 1, 1),
            Act::SiLU,
            body,
        )?;
        let dw1 = QConvDyn::conv_bn(
            &mut s.sub(1).sub(0),
            Geom {
                groups: c3,
                ..Geom::new(c3, c3, 3, 1)
            },
            Act::SiLU,
            body,
        )?;
        let pw1 = QConvDyn::conv_bn(
            &mut s.sub(1).sub(1),
            Geom::new(c3, c3, 1, 1),
            Act::SiLU,
            body,
        )?;
        let out = QConvDyn::conv2d(&mut s.sub(2), Geom::new(c3, nc, 1, 1), head)?;
        Ok(Self {
            dw0,
            pw0,
            dw1,
            pw1,
            out,
        })
    }

    fn forward(&self, x: &Feat<X>, cx: Ctx) -> Result<Tensor> {
        let y = self.dw0.run(x, cx)?;
        let y = run_dyn(&self.pw0, y.tensor(), cx)?;
        let y = run_dyn(&self.dw1, &y, cx)?;
        let y = run_dyn(&self.pw1, &y, cx)?;
        run_dyn(&self.out, &y, cx)
    }
}

/// ultralytics 8.4 `Detect(nc, reg_max=16, ch=(C, D, E))`, legacy=False.
#[derive(Debug)]
pub struct DetectV11<const C: usize, const D: usize, const E: usize> {
    pub cv2: (BoxBranch<C>, BoxBranch<D>, BoxBranch<E>),
    pub cv3: (ClsBranch<C>, ClsBranch<D>, ClsBranch<E>),
    pub dfl: DFL,
    pub nc: usize,
    pub c3: usize,
}

impl<const C: usize, const D: usize, const E: usize> DetectV11<C, D, E> {
    pub fn new(s: &mut Scope, nc: usize, body: &LayerQuant, head: &LayerQuant) -> Result<Self> {
        check_nc(nc)?;
        let c3 = C.max(nc.min(100));
        let cv2 = {
            let mut s2 = s.sub("cv2");
            (
                BoxBranch::new(&mut s2.sub(0), body, head)?,
                BoxBranch::new(&mut s2.sub(1), body, head)?,
                BoxBranch::new(&mut s2.sub(2), body, head)?,
            )
        };
        let cv3 = {
            let mut s3 = s.sub("cv3");
            (
                ClsBranch::new(&mut s3.sub(0), c3, nc, body, head)?,
                ClsBranch::new(&mut s3.sub(1), c3, nc, body, head)?,
                ClsBranch::new(&mut s3.sub(2), c3, nc, body, head)?,
            )
        };
        let dfl = DFL::new(&mut s.sub("dfl"), REG_MAX)?;
        // Detect.bias_init (ultralytics 8.4.190): box bias 2.0, cls bias log(5 / nc / (640 / s)²).
        let boxes = [
            &cv2.0.c2.conv.bias,
            &cv2.1.c2.conv.bias,
            &cv2.2.c2.conv.bias,
        ];
        let clss = [&cv3.0.out, &cv3.1.out, &cv3.2.out];
        for l in 0..3 {
            let n = boxes[l].elem_count();
            boxes[l].set(&Tensor::full(2.0f32, n, boxes[l].device())?)?;
            let v = (5.0 / nc as f64 / (640.0 / STRIDES[l] as f64).powi(2)).ln() as f32;
            let b = clss[l].bias.as_ref().expect("conv2d has a bias");
            b.set(&Tensor::full(v, nc, b.device())?)?;
        }
        Ok(Self {
            cv2,
            cv3,
            dfl,
            nc,
            c3,
        })
    }

    /// (box logits, class logits) per level.
    pub fn forward(
        &self,
        p3: &Feat<C>,
        p4: &Feat<D>,
        p5: &Feat<E>,
        cx: Ctx,
    ) -> Result<([Tensor; 3], [Tensor; 3])> {
        let b = [
            self.cv2.0.forward(p3, cx)?,
            self.cv2.1.forward(p4, cx)?,
            self.cv2.2.forward(p5, cx)?,
        ];
        let c = [
            self.cv3.0.forward(p3, cx)?,
            self.cv3.1.forward(p4, cx)?,
            self.cv3.2.forward(p5, cx)?,
        ];
        Ok((b, c))
    }
}

/// Anchor points (cell centres, grid units) and strides of all levels, as ultralytics
/// `make_anchors(feats, strides, 0.5)`: (2, A) and (1, A), levels then `gy·w + gx`.
pub fn make_anchors(sizes: &[(usize, usize); 3], dev: &Device) -> Result<(Tensor, Tensor)> {
    let mut xs = vec![];
    let mut ys = vec![];
    let mut st = vec![];
    for (l, &(h, w)) in sizes.iter().enumerate() {
        for i in 0..h * w {
            xs.push((i % w) as f32 + 0.5);
            ys.push((i / w) as f32 + 0.5);
            st.push(STRIDES[l] as f32);
        }
    }
    let a = xs.len();
    let xs = Tensor::from_vec(xs, (1, a), dev)?;
    let ys = Tensor::from_vec(ys, (1, a), dev)?;
    Ok((
        Tensor::cat(&[xs, ys], 0)?,
        Tensor::from_vec(st, (1, a), dev)?,
    ))
}

/// YOLO11 inference decoding (`Detect._inference`): DFL expectation → `dist2bbox(xywh=True)` ×
/// stride, then class sigmoids: (B, 4+nc, A).
pub fn decode_v11(box_raw: &[Tensor; 3], cls_raw: &[Tensor; 3], dfl: &DFL) -> Result<Tensor> {
    let b = box_raw[0].dim(0)?;
    let mut sizes = [(0, 0); 3];
    let mut boxes = vec![];
    let mut clss = vec![];
    for l in 0..3 {
        let (_, c, h, w) = box_raw[l].dims4()?;
        let (_, nc, h2, w2) = cls_raw[l].dims4()?;
        if (h, w) != (h2, w2) || c != 4 * dfl.reg_max {
            return Err(YoloError::Invalid(format!(
                "decode: level {l} box/class maps disagree: {:?} vs {:?}",
                box_raw[l].dims(),
                cls_raw[l].dims()
            )));
        }
        sizes[l] = (h, w);
        boxes.push(box_raw[l].reshape((b, c, h * w))?);
        clss.push(cls_raw[l].reshape((b, nc, h * w))?);
    }
    let d = dfl.forward(&Tensor::cat(&boxes, 2)?)?; // (B, 4, A)
    let (anc, st) = make_anchors(&sizes, box_raw[0].device())?;
    let anc = anc.unsqueeze(0)?;
    let lt = d.narrow(1, 0, 2)?;
    let rb = d.narrow(1, 2, 2)?;
    let x1y1 = anc.broadcast_sub(&lt)?;
    let x2y2 = anc.broadcast_add(&rb)?;
    let cxy = ((&x1y1 + &x2y2)? / 2.0)?;
    let wh = (x2y2 - x1y1)?;
    let dbox = Tensor::cat(&[cxy, wh], 1)?.broadcast_mul(&st.unsqueeze(0)?)?;
    let cls = candle_nn::ops::sigmoid(&Tensor::cat(&clss, 2)?)?;
    Ok(Tensor::cat(&[dbox, cls], 1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use q2_nn::ParamStore;

    #[test]
    fn v5_anchor_buffer_is_in_grid_units_and_biases_are_initialised() {
        let mut s = ParamStore::new(Device::Cpu, 0);
        let d: DetectV5<8, 16, 32> =
            DetectV5::new(&mut s.scope("model.24"), 20, &LayerQuant::default()).unwrap();
        let a = s
            .get("model.24.anchors")
            .unwrap()
            .var
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(&a[..6], &[1.25, 1.625, 2.0, 3.75, 4.125, 2.875]);
        assert_eq!(&a[12..14], &[3.625, 2.8125]);
        assert_eq!(d.anchors_px().unwrap()[2][2], (373.0, 326.0));
        assert_eq!(
            s.get("model.24.m.0.weight").unwrap().var.dims(),
            &[75, 8, 1, 1]
        );
        let b = s
            .get("model.24.m.2.bias")
            .unwrap()
            .var
            .to_vec1::<f32>()
            .unwrap();
        let bound = 1.0 / 32f32.sqrt();
        let obj = (8.0f32 / 400.0).ln();
        assert!((b[4] - obj).abs() <= bound + 1e-6 && b[4] < obj + bound);
        assert!(b[0].abs() <= bound);
        assert!((b[30 + 5] - (0.6f32 / 19.01).ln()).abs() <= bound + 1e-6);
    }

    #[test]
    fn v11_head_widths_and_bias_init() {
        let mut s = ParamStore::new(Device::Cpu, 0);
        let q = LayerQuant::default();
        let d: DetectV11<64, 128, 256> =
            DetectV11::new(&mut s.scope("model.23"), 80, &q, &q).unwrap();
        assert_eq!(d.c3, 80);
        assert_eq!(
            s.get("model.23.cv3.0.0.0.conv.weight").unwrap().var.dims(),
            &[64, 1, 3, 3]
        );
        assert_eq!(
            s.get("model.23.cv3.1.0.1.conv.weight").unwrap().var.dims(),
            &[80, 128, 1, 1]
        );
        assert_eq!(
            s.get("model.23.cv3.2.2.weight").unwrap().var.dims(),
            &[80, 80, 1, 1]
        );
        assert_eq!(
            s.get("model.23.cv2.2.2.bias")
                .unwrap()
                .var
                .to_vec1::<f32>()
                .unwrap(),
            vec![2.0; 64]
        );
        let c = s
            .get("model.23.cv3.0.2.bias")
            .unwrap()
            .var
            .to_vec1::<f32>()
            .unwrap();
        assert!((c[0] - (5.0f32 / 80.0 / 6400.0).ln()).abs() < 1e-5);
    }

    #[test]
    fn v11_decode_of_uniform_logits_is_a_centred_box() {
        let mut s = ParamStore::new(Device::Cpu, 0);
        let dfl = DFL::new(&mut s.scope("dfl"), 16).unwrap();
        let z = |c, h, w| Tensor::zeros((1, c, h, w), DType::F32, &Device::Cpu).unwrap();
        let y = decode_v11(
            &[z(64, 2, 2), z(64, 1, 1), z(64, 1, 1)],
            &[z(3, 2, 2), z(3, 1, 1), z(3, 1, 1)],
            &dfl,
        )
        .unwrap();
        assert_eq!(y.dims(), &[1, 7, 6]);
        let v = y.get(0).unwrap().to_vec2::<f32>().unwrap();
        // anchor 1 of P3: centre (1.5, 0.5)·8, width (7.5 + 7.5)·8
        assert_eq!(
            (v[0][1], v[1][1], v[2][1], v[3][1], v[4][1]),
            (12.0, 4.0, 120.0, 120.0, 0.5)
        );
    }
}
