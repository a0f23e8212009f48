//! The ultralytics building blocks on q2-nn's typed layer, every conv a q2-quant `QConv` so any
//! model can be quantized by configuration:
//! [`Conv`] (= `QConv`), [`DWConv`], [`Bottleneck`], [`C3`] (C3k is a `C3` with 3×3 bottlenecks,
//! [`C3k`]), [`SPPF`], [`C3k2`], [`Attention`], [`PSABlock`], [`C2PSA`] and [`DFL`].
//!
//! Widths are const generics; hidden widths that ultralytics derives (`c_ = int(c2·e)`) are
//! explicit parameters whose relation to the others is checked by inline const assertions, so a
//! wrong width fails the build. Repeat counts (`n`) are run time. Store keys follow ultralytics
//! (`cv1`, `cv2`, `cv3`, `m.<i>`, `qkv`, `proj`, `pe`, `ffn.0`, `ffn.1`, `attn`).
//!
//! Every block runs with a [`Ctx`]: the BatchNorm mode, whether quantizers are being calibrated
//! (each conv then initialises its quantizers from the input it sees), and an optional operation
//! counter used by the model summary (thop's conventions as ultralytics' `get_flops` uses them: a
//! conv costs `out·cin/g·k²` (bias not counted), a BatchNorm `4·numel`, a matmul `m·n·k`;
//! activations, pooling, nearest upsampling, sums and softmax cost nothing).

use std::cell::Cell;

use candle_core::{Tensor, Var};
use q2_nn::conv::Act;
use q2_nn::feat::{add, chunk2, concat2, concat_n, maxpool5};
use q2_nn::store::{Init, Role, Scope};
use q2_nn::{Feat, Mode};
use q2_quant::{LayerQuant, QConv};

use crate::dynconv::{Geom, QConvDyn};
use crate::Result;

/// Operation counter of one forward (thop's units: multiply-accumulates; GFLOPs = 2·ops/1e9).
/// `ops` grows linearly with the input area, `quad` (attention products) with its square, so a
/// count at a small input extrapolates exactly to any size with the same divisibility.
#[derive(Debug, Default)]
pub struct Prof {
    pub ops: Cell<u64>,
    pub quad: Cell<u64>,
}

impl Prof {
    pub fn add(&self, n: u64) {
        self.ops.set(self.ops.get() + n);
    }

    pub fn add_quad(&self, n: u64) {
        self.quad.set(self.quad.get() + n);
    }
}

/// How a forward pass runs.
#[derive(Clone, Copy, Debug)]
pub struct Ctx<'a> {
    pub mode: Mode,
    /// Initialise every quantizer from the tensors it sees (a calibration pass).
    pub calib: bool,
    /// Count operations into this counter.
    pub prof: Option<&'a Prof>,
}

impl Ctx<'_> {
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            calib: false,
            prof: None,
        }
    }

    fn count(&self, n: usize) {
        if let Some(p) = self.prof {
            p.add(n as u64);
        }
    }
}

/// ultralytics `Conv(c1=I, c2=O, k=K, s=S)`: conv (no bias) → BatchNorm2d → SiLU, quantizable.
pub type Conv<const I: usize, const O: usize, const K: usize, const S: usize> = QConv<I, O, K, S>;

/// ultralytics `DWConv(c1, c2, k, s)`: a [`Conv`] with `groups = gcd(c1, c2)`.
pub type DWConv<const I: usize, const O: usize, const K: usize, const S: usize> = QConv<I, O, K, S>;

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Builds `Conv(I, O, K, S)` with SiLU.
pub fn conv<const I: usize, const O: usize, const K: usize, const S: usize>(
    s: &mut Scope,
    q: &LayerQuant,
) -> Result<Conv<I, O, K, S>> {
    Ok(QConv::new(s, q)?)
}

/// Builds `Conv(I, O, K, S, act=False)`.
pub fn conv_linear<const I: usize, const O: usize, const K: usize, const S: usize>(
    s: &mut Scope,
    groups: usize,
    q: &LayerQuant,
) -> Result<Conv<I, O, K, S>> {
    Ok(QConv::with(s, groups, Act::Identity, q)?)
}

/// Builds `DWConv(I, O, K, S)` (SiLU, groups gcd(I, O)).
pub fn dwconv<const I: usize, const O: usize, const K: usize, const S: usize>(
    s: &mut Scope,
    q: &LayerQuant,
) -> Result<DWConv<I, O, K, S>> {
    Ok(QConv::with(s, gcd(I, O), Act::SiLU, q)?)
}

/// Running a typed conv inside a [`Ctx`] (calibration, counting).
pub trait Run<const I: usize, const O: usize> {
    fn run(&self, x: &Feat<I>, cx: Ctx) -> Result<Feat<O>>;
}

impl<const I: usize, const O: usize, const K: usize, const S: usize> Run<I, O>
    for QConv<I, O, K, S>
{
    fn run(&self, x: &Feat<I>, cx: Ctx) -> Result<Feat<O>> {
        if cx.calib {
            self.calibrate(x)?;
        }
        let y = self.forward(x, cx.mode)?;
        if cx.prof.is_some() {
            let n = y.tensor().elem_count();
            cx.count(n * (I / self.conv.groups) * K * K + 4 * n);
        }
        Ok(y)
    }
}

/// A conv as a fusion node's consumer (LN folding, Q-GBFusion's calibrated insertion).
pub fn consumer<'a, const I: usize, const O: usize, const K: usize, const S: usize>(
    name: &str,
    c: &'a QConv<I, O, K, S>,
) -> q2_fusion::Consumer<'a> {
    q2_fusion::Consumer {
        name: name.to_string(),
        weight: &c.conv.weight,
        act_quant: c.aq.as_deref(),
        weight_quantized: c.wq.is_some(),
        bn: Some((&c.conv.bn.0.running_mean, &c.conv.bn.0.running_var, c.conv.bn.0.eps)),
    }
}

/// Runs a typed conv with an explicit padding (the YOLOv5 stem `Conv(3, c, 6, 2, 2)`, whose
/// padding 2 is not ultralytics' `autopad(6) = 3`): the same arithmetic as `QConv::forward`.
pub fn run_padded<const I: usize, const O: usize, const K: usize, const S: usize>(
    c: &QConv<I, O, K, S>,
    x: &Feat<I>,
    pad: usize,
    cx: Ctx,
) -> Result<Feat<O>> {
    if cx.calib {
        c.calibrate(x)?;
    }
    let xq = match &c.aq {
        Some(q) => q.forward(x.tensor())?,
        None => x.tensor().clone(),
    };
    let w = match &c.wq {
        Some(q) => q.forward(c.conv.weight.as_tensor())?,
        None => c.conv.weight.as_tensor().clone(),
    };
    let y = q2_nn::conv::conv2d(&xq, &w, pad, S, c.conv.groups)?;
    let y = c.conv.bn.forward_act(&y, cx.mode, c.conv.act)?;
    if cx.prof.is_some() {
        let n = y.elem_count();
        cx.count(n * (I / c.conv.groups) * K * K + 4 * n);
    }
    Ok(Feat::new(y)?)
}

/// Runs a run-time-width conv inside a [`Ctx`].
pub fn run_dyn(c: &QConvDyn, x: &Tensor, cx: Ctx) -> Result<Tensor> {
    if cx.calib {
        c.calibrate(x)?;
    }
    let y = c.forward(x, cx.mode)?;
    if cx.prof.is_some() {
        let n = y.elem_count();
        let g = &c.geom;
        cx.count(n * (g.cin / g.groups) * g.k * g.k + if c.bn.is_some() { 4 * n } else { 0 });
    }
    Ok(y)
}

/// ultralytics `Bottleneck(c1=I, c2=O, shortcut, e)` with hidden width `H` and first kernel
/// `K1` (YOLOv5/C3: 1, C3k2/C3k: 3; the second is always 3): `x + cv2(cv1(x))` when
/// `shortcut and I == O`.
#[derive(Debug)]
pub struct Bottleneck<const I: usize, const O: usize, const H: usize, const K1: usize> {
    pub cv1: Conv<I, H, K1, 1>,
    pub cv2: Conv<H, O, 3, 1>,
    pub add: bool,
}

impl<const I: usize, const O: usize, const H: usize, const K1: usize> Bottleneck<I, O, H, K1> {
    pub fn new(s: &mut Scope, shortcut: bool, q: &LayerQuant) -> Result<Self> {
        Ok(Self {
            cv1: conv(&mut s.sub("cv1"), q)?,
            cv2: conv(&mut s.sub("cv2"), q)?,
            add: shortcut && I == O,
        })
    }

    pub fn forward(&self, x: &Feat<I>, cx: Ctx) -> Result<Feat<O>> {
        let y = self.cv2.run(&self.cv1.run(x, cx)?, cx)?;
        if self.add {
            // I == O here; re-type the input for the sum.
            let xi = Feat::<O>::new(x.tensor().clone())?;
            Ok(add(&xi, &y)?)
        } else {
            Ok(y)
        }
    }
}

/// ultralytics `C3(c1=I, c2=O, n, shortcut, e=0.5)`: hidden `H = c2·e`, `H2 = 2H`, bottlenecks
/// `Bottleneck(H, H, e=1.0)` with first kernel `K1` (1 in C3; 3 in C3k).
/// `cv3(cat(m(cv1(x)), cv2(x)))`.
#[derive(Debug)]
pub struct C3<const I: usize, const O: usize, const H: usize, const H2: usize, const K1: usize> {
    pub cv1: Conv<I, H, 1, 1>,
    pub cv2: Conv<I, H, 1, 1>,
    pub cv3: Conv<H2, O, 1, 1>,
    pub m: Vec<Bottleneck<H, H, H, K1>>,
}

/// ultralytics `C3k(c1, c2, n=2, shortcut, e=0.5, k=3)`.
pub type C3k<const I: usize, const O: usize, const H: usize, const H2: usize> = C3<I, O, H, H2, 3>;

impl<const I: usize, const O: usize, const H: usize, const H2: usize, const K1: usize>
    C3<I, O, H, H2, K1>
{
    pub fn new(s: &mut Scope, n: usize, shortcut: bool, q: &LayerQuant) -> Result<Self> {
        const { assert!(H2 == 2 * H, "C3: H2 must be twice the hidden width") };
        let mut m = vec![];
        for i in 0..n {
            m.push(Bottleneck::new(&mut s.sub("m").sub(i), shortcut, q)?);
        }
        Ok(Self {
            cv1: conv(&mut s.sub("cv1"), q)?,
            cv2: conv(&mut s.sub("cv2"), q)?,
            cv3: conv(&mut s.sub("cv3"), q)?,
            m,
        })
    }

    pub fn forward(&self, x: &Feat<I>, cx: Ctx) -> Result<Feat<O>> {
        let mut y = self.cv1.run(x, cx)?;
        for b in &self.m {
            y = b.forward(&y, cx)?;
        }
        let z = self.cv2.run(x, cx)?;
        self.cv3.run(&concat2::<H, H, H2>(&y, &z)?, cx)
    }
}

/// ultralytics `SPPF(c1=I, c2=O, k=5)`: hidden `H = c1 / 2`, `H4 = 4H`;
/// `cv2(cat(x1, m(x1), m(m(x1)), m(m(m(x1)))))` with `x1 = cv1(x)` and `m` max-pool 5/1/2.
#[derive(Debug)]
pub struct SPPF<const I: usize, const O: usize, const H: usize, const H4: usize> {
    pub cv1: Conv<I, H, 1, 1>,
    pub cv2: Conv<H4, O, 1, 1>,
}

impl<const I: usize, const O: usize, const H: usize, const H4: usize> SPPF<I, O, H, H4> {
    pub fn new(s: &mut Scope, q: &LayerQuant) -> Result<Self> {
        const { assert!(2 * H == I && H4 == 4 * H, "SPPF: H = c1/2, H4 = 4H") };
        Ok(Self {
            cv1: conv(&mut s.sub("cv1"), q)?,
            cv2: conv(&mut s.sub("cv2"), q)?,
        })
    }

    pub fn forward(&self, x: &Feat<I>, cx: Ctx) -> Result<Feat<O>> {
        let x1 = self.cv1.run(x, cx)?;
        let y1 = maxpool5(&x1)?;
        let y2 = maxpool5(&y1)?;
        let y3 = maxpool5(&y2)?;
        self.cv2
            .run(&concat_n::<H, 4, H4>([&x1, &y1, &y2, &y3])?, cx)
    }
}

/// One inner block of a [`C3k2`]: `Bottleneck(c, c, k=(3,3), e=0.5)` or `C3k(c, c, n=2)`.
#[derive(Debug)]
pub enum C3k2Inner<const H: usize, const Q: usize> {
    Bottleneck(Bottleneck<H, H, Q, 3>),
    C3k(C3k<H, H, Q, H>),
}

/// ultralytics `C3k2(c1=I, c2=O, n, c3k, e, shortcut=True)` (a C2f): `c = c2·e = H`, `H2 = 2H`,
/// inner width `Q = H/2`. `cv2(cat(y0, y1, m0(y1), m1(m0(y1)), ...))` with `(y0, y1) =
/// cv1(x).chunk(2)`. The output conv's input width `(2+n)·H` depends on the run-time n, so it is
/// a run-time-width conv.
#[derive(Debug)]
pub struct C3k2<const I: usize, const O: usize, const H2: usize, const H: usize, const Q: usize> {
    pub cv1: Conv<I, H2, 1, 1>,
    pub cv2: QConvDyn,
    pub m: Vec<C3k2Inner<H, Q>>,
    pub c3k: bool,
}

impl<const I: usize, const O: usize, const H2: usize, const H: usize, const Q: usize>
    C3k2<I, O, H2, H, Q>
{
    pub fn new(s: &mut Scope, n: usize, c3k: bool, shortcut: bool, q: &LayerQuant) -> Result<Self> {
        const { assert!(H2 == 2 * H && H == 2 * Q, "C3k2: H2 = 2H, Q = H/2") };
        let mut m = vec![];
        for i in 0..n {
            let mut si = s.sub("m");
            let mut si = si.sub(i);
            m.push(if c3k {
                C3k2Inner::C3k(C3::new(&mut si, 2, shortcut, q)?)
            } else {
                C3k2Inner::Bottleneck(Bottleneck::new(&mut si, shortcut, q)?)
            });
        }
        let cv1 = conv(&mut s.sub("cv1"), q)?;
        let cv2 = QConvDyn::conv_bn(
            &mut s.sub("cv2"),
            Geom::new((2 + n) * H, O, 1, 1),
            Act::SiLU,
            q,
        )?;
        Ok(Self { cv1, cv2, m, c3k })
    }

    pub fn forward(&self, x: &Feat<I>, cx: Ctx) -> Result<Feat<O>> {
        let (a, b) = chunk2::<H2, H>(&self.cv1.run(x, cx)?)?;
        let mut ys = vec![a, b];
        for blk in &self.m {
            let last = ys.last().expect("two chunks");
            ys.push(match blk {
                C3k2Inner::Bottleneck(bn) => bn.forward(last, cx)?,
                C3k2Inner::C3k(c) => c.forward(last, cx)?,
            });
        }
        let ts: Vec<&Tensor> = ys.iter().map(|f| f.tensor()).collect();
        Ok(Feat::new(run_dyn(&self.cv2, &Tensor::cat(&ts, 1)?, cx)?)?)
    }
}

/// ultralytics `Attention(dim=D, num_heads=D/64, attn_ratio=0.5)`: `qkv` (D → D2 = D + 2·nh·kd,
/// no act), `proj` (no act), `pe` (3×3 depthwise, no act).
/// `proj(v·softmax(qᵀk·kd^-½)ᵀ + pe(v))`.
#[derive(Debug)]
pub struct Attention<const D: usize, const D2: usize> {
    pub qkv: Conv<D, D2, 1, 1>,
    pub proj: Conv<D, D, 1, 1>,
    pub pe: Conv<D, D, 3, 1>,
    pub num_heads: usize,
    pub key_dim: usize,
    pub head_dim: usize,
}

impl<const D: usize, const D2: usize> Attention<D, D2> {
    pub fn new(s: &mut Scope, num_heads: usize, q: &LayerQuant) -> Result<Self> {
        let head_dim = D / num_heads.max(1);
        let key_dim = head_dim / 2; // int(head_dim * attn_ratio), attn_ratio 0.5
        if num_heads == 0 || D % num_heads != 0 || D + 2 * key_dim * num_heads != D2 {
            return Err(crate::YoloError::Invalid(format!(
                "Attention: {num_heads} heads do not fit dim {D} / qkv width {D2}"
            )));
        }
        Ok(Self {
            qkv: conv_linear(&mut s.sub("qkv"), 1, q)?,
            proj: conv_linear(&mut s.sub("proj"), 1, q)?,
            pe: conv_linear(&mut s.sub("pe"), D, q)?,
            num_heads,
            key_dim,
            head_dim,
        })
    }

    pub fn forward(&self, x: &Feat<D>, cx: Ctx) -> Result<Feat<D>> {
        let (b, h, w) = x.bhw();
        let n = h * w;
        let (nh, kd, hd) = (self.num_heads, self.key_dim, self.head_dim);
        let qkv = self
            .qkv
            .run(x, cx)?
            .into_tensor()
            .reshape((b, nh, 2 * kd + hd, n))?;
        let q = qkv.narrow(2, 0, kd)?;
        let k = qkv.narrow(2, kd, kd)?;
        let v = qkv.narrow(2, 2 * kd, hd)?.contiguous()?;
        let scale = (kd as f64).powf(-0.5);
        let attn = (q.transpose(2, 3)?.contiguous()?.matmul(&k.contiguous()?)? * scale)?;
        let attn = candle_nn::ops::softmax_last_dim(&attn)?;
        let y = v
            .matmul(&attn.transpose(2, 3)?.contiguous()?)?
            .reshape((b, D, h, w))?;
        if let Some(p) = cx.prof {
            // thop's matmul rule: output elements × contracted length (the softmax is not counted).
            p.add_quad((b * nh * n * n * kd + b * nh * hd * n * n) as u64);
        }
        let pe = self.pe.run(&Feat::new(v.reshape((b, D, h, w))?)?, cx)?;
        let y = Feat::<D>::new((y + pe.tensor())?)?;
        self.proj.run(&y, cx)
    }
}

/// ultralytics `PSABlock(c=D, attn_ratio=0.5, num_heads, shortcut=True)`:
/// `x = x + attn(x); x = x + ffn(x)` with `ffn = Conv(D, 2D) → Conv(2D, D, act=False)`.
#[derive(Debug)]
pub struct PSABlock<const D: usize, const D2: usize> {
    pub attn: Attention<D, D2>,
    pub ffn0: Conv<D, D2, 1, 1>,
    pub ffn1: Conv<D2, D, 1, 1>,
}

impl<const D: usize, const D2: usize> PSABlock<D, D2> {
    pub fn new(s: &mut Scope, num_heads: usize, q: &LayerQuant) -> Result<Self> {
        const { assert!(D2 == 2 * D, "PSABlock: D2 = 2D") };
        Ok(Self {
            attn: Attention::new(&mut s.sub("attn"), num_heads, q)?,
            ffn0: conv(&mut s.sub("ffn").sub(0), q)?,
            ffn1: conv_linear(&mut s.sub("ffn").sub(1), 1, q)?,
        })
    }

    pub fn forward(&self, x: &Feat<D>, cx: Ctx) -> Result<Feat<D>> {
        let x = add(x, &self.attn.forward(x, cx)?)?;
        let f = self.ffn1.run(&self.ffn0.run(&x, cx)?, cx)?;
        Ok(add(&x, &f)?)
    }
}

/// ultralytics `C2PSA(c1=C, c2=C, n, e=0.5)`: `c = H = C/2`; `(a, b) = cv1(x).split(c)`,
/// `cv2(cat(a, m(b)))` with `m` n × `PSABlock(c, num_heads=c/64)`.
#[derive(Debug)]
pub struct C2PSA<const C: usize, const H: usize> {
    pub cv1: Conv<C, C, 1, 1>,
    pub cv2: Conv<C, C, 1, 1>,
    pub m: Vec<PSABlock<H, C>>,
}

impl<const C: usize, const H: usize> C2PSA<C, H> {
    pub fn new(s: &mut Scope, n: usize, q: &LayerQuant) -> Result<Self> {
        const { assert!(C == 2 * H, "C2PSA: H = C/2") };
        let mut m = vec![];
        for i in 0..n {
            m.push(PSABlock::new(&mut s.sub("m").sub(i), H / 64, q)?);
        }
        Ok(Self {
            cv1: conv(&mut s.sub("cv1"), q)?,
            cv2: conv(&mut s.sub("cv2"), q)?,
            m,
        })
    }

    pub fn forward(&self, x: &Feat<C>, cx: Ctx) -> Result<Feat<C>> {
        let (a, mut b) = chunk2::<C, H>(&self.cv1.run(x, cx)?)?;
        for blk in &self.m {
            b = blk.forward(&b, cx)?;
        }
        self.cv2.run(&concat2::<H, H, C>(&a, &b)?, cx)
    }
}

/// ultralytics `DFL(c1=16)`: the expectation of a softmax over `reg_max` bins, as a fixed 1×1
/// conv whose weight is `arange(reg_max)` (key `conv.weight`, shape (1, reg_max, 1, 1); a buffer:
/// ultralytics sets `requires_grad_(False)`).
#[derive(Debug)]
pub struct DFL {
    pub weight: Var,
    pub reg_max: usize,
}

impl DFL {
    pub fn new(s: &mut Scope, reg_max: usize) -> Result<Self> {
        let vals: Vec<f32> = (0..reg_max).map(|i| i as f32).collect();
        let weight = s.sub("conv").add(
            "weight",
            (1, reg_max, 1, 1),
            Role::Buffer,
            Init::Values(vals),
        )?;
        Ok(Self { weight, reg_max })
    }

    /// (B, 4·reg_max, A) logits → (B, 4, A) expected distances (in grid units).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, a) = x.dims3()?;
        let r = self.reg_max;
        if c != 4 * r {
            return Err(crate::YoloError::Invalid(format!(
                "DFL: expected {} channels, got {c}",
                4 * r
            )));
        }
        let p = candle_nn::ops::softmax(&x.reshape((b, 4, r, a))?, 2)?;
        let w = self.weight.as_tensor().reshape((1, 1, r, 1))?;
        Ok(p.broadcast_mul(&w)?.sum(2)?)
    }
}

/// Softmax over the last axis, re-exported for the heads.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax(x, candle_core::D::Minus1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use q2_nn::store::seeded;
    use q2_nn::{Device, ParamStore};

    fn x<const C: usize>(h: usize, w: usize) -> Feat<C> {
        Feat::new(
            seeded(
                (2, C, h, w),
                &Init::Normal {
                    mean: 0.0,
                    std: 1.0,
                },
                9,
                &Device::Cpu,
            )
            .unwrap(),
        )
        .unwrap()
    }

    fn keys(s: &ParamStore) -> Vec<String> {
        s.iter()
            .map(|(k, _)| k.to_string())
            .filter(|k| !k.contains("bn."))
            .collect()
    }

    #[test]
    fn c3_keys_and_shapes() {
        let mut s = ParamStore::new(Device::Cpu, 0);
        let c: C3<8, 8, 4, 8, 1> =
            C3::new(&mut s.scope("model.2"), 2, true, &LayerQuant::default()).unwrap();
        let y = c.forward(&x::<8>(4, 6), Ctx::new(Mode::Eval)).unwrap();
        assert_eq!(y.tensor().dims(), &[2, 8, 4, 6]);
        assert_eq!(
            keys(&s),
            [
                "model.2.cv1.conv.weight",
                "model.2.cv2.conv.weight",
                "model.2.cv3.conv.weight",
                "model.2.m.0.cv1.conv.weight",
                "model.2.m.0.cv2.conv.weight",
                "model.2.m.1.cv1.conv.weight",
                "model.2.m.1.cv2.conv.weight"
            ]
        );
        assert_eq!(
            s.get("model.2.m.1.cv1.conv.weight").unwrap().var.dims(),
            &[4, 4, 1, 1]
        );
    }

    #[test]
    fn c3k2_c2psa_sppf_shapes() {
        let mut s = ParamStore::new(Device::Cpu, 0);
        let q = LayerQuant::default();
        let a: C3k2<16, 32, 16, 8, 4> = C3k2::new(&mut s.scope("a"), 2, false, true, &q).unwrap();
        let b: C3k2<16, 32, 32, 16, 8> = C3k2::new(&mut s.scope("b"), 1, true, true, &q).unwrap();
        let c: C2PSA<256, 128> = C2PSA::new(&mut s.scope("c"), 1, &q).unwrap();
        let d: SPPF<16, 16, 8, 32> = SPPF::new(&mut s.scope("d"), &q).unwrap();
        let cx = Ctx::new(Mode::Eval);
        assert_eq!(
            a.forward(&x::<16>(4, 4), cx).unwrap().tensor().dims(),
            &[2, 32, 4, 4]
        );
        assert_eq!(
            s.get("a.cv2.conv.weight").unwrap().var.dims(),
            &[32, 32, 1, 1]
        );
        assert_eq!(
            s.get("a.m.1.cv1.conv.weight").unwrap().var.dims(),
            &[4, 8, 3, 3]
        );
        assert_eq!(
            b.forward(&x::<16>(4, 4), cx).unwrap().tensor().dims(),
            &[2, 32, 4, 4]
        );
        assert_eq!(
            s.get("b.m.0.m.1.cv1.conv.weight").unwrap().var.dims(),
            &[8, 8, 3, 3]
        );
        assert_eq!(
            c.forward(&x::<256>(2, 3), cx).unwrap().tensor().dims(),
            &[2, 256, 2, 3]
        );
        assert_eq!(
            s.get("c.m.0.attn.qkv.conv.weight").unwrap().var.dims(),
            &[256, 128, 1, 1]
        );
        assert_eq!(
            s.get("c.m.0.attn.pe.conv.weight").unwrap().var.dims(),
            &[128, 1, 3, 3]
        );
        assert_eq!(
            s.get("c.m.0.ffn.1.conv.weight").unwrap().var.dims(),
            &[128, 256, 1, 1]
        );
        assert_eq!(
            d.forward(&x::<16>(5, 5), cx).unwrap().tensor().dims(),
            &[2, 16, 5, 5]
        );
    }

    #[test]
    fn dfl_is_the_softmax_expectation() {
        let mut s = ParamStore::new(Device::Cpu, 0);
        let d = DFL::new(&mut s.scope("dfl"), 16).unwrap();
        assert_eq!(s.get("dfl.conv.weight").unwrap().role, Role::Buffer);
        // one-hot logits at bin 3 (large) → 3
        let mut v = vec![0f32; 64];
        for side in 0..4 {
            v[side * 16 + 3 + side] = 50.0;
        }
        let t = Tensor::from_vec(v, (1, 64, 1), &Device::Cpu).unwrap();
        let y = d
            .forward(&t)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (side, yv) in y.iter().enumerate() {
            assert!((yv - (3 + side) as f32).abs() < 1e-4, "{y:?}");
        }
    }
}
