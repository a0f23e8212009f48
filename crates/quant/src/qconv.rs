//! Quantized convolutions: [`QConv`] wraps an ultralytics `Conv` (conv + BN + SiLU) and
//! [`QConv2d`] a plain biased `Conv2d` (Detect's prediction convs), fake-quantizing the weight
//! and the input activation with any [`Quantizer`]. [`QuantPlan`] assigns bit-widths per layer:
//! the body at WxAy, the first conv (image input) and the Detect prediction convs at 8 bits by
//! default (the LSQ/PACT convention), each configurable.

use q2_nn::conv::{Act, Conv, Conv2d};
use q2_nn::store::Scope;
use q2_nn::{Feat, Mode};
use serde::{Deserialize, Serialize};

use crate::quantizer::{build, InitMode, Method, QuantSpec, Quantizer};
use crate::Result;

/// Which quantizers one conv layer gets (`None`: full precision).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerQuant {
    pub weight: Option<QuantSpec>,
    pub act: Option<QuantSpec>,
}

/// Where a conv sits, for the plan's per-layer bit-widths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// The first conv, which sees the image.
    First,
    Body,
    /// A Detect prediction conv.
    Head,
}

fn eight() -> Option<u32> {
    Some(8)
}

/// A model-wide quantization plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantPlan {
    pub method: Method,
    pub w_bits: u32,
    pub a_bits: u32,
    /// Bits of the first conv (`None`: full precision).
    #[serde(default = "eight")]
    pub first_bits: Option<u32>,
    /// Bits of the Detect prediction convs (`None`: full precision).
    #[serde(default = "eight")]
    pub head_bits: Option<u32>,
    /// Per-output-channel weight quantizers (where the method allows it).
    #[serde(default)]
    pub per_channel_weights: bool,
    /// Signed activation grids (LSQ, LSQ+, MinMax only; PACT and N2UQ activations are unsigned).
    #[serde(default)]
    pub act_signed: bool,
    #[serde(default)]
    pub act_init: InitMode,
}

impl QuantPlan {
    pub fn new(method: Method, w_bits: u32, a_bits: u32) -> Self {
        Self {
            method,
            w_bits,
            a_bits,
            first_bits: Some(8),
            head_bits: Some(8),
            per_channel_weights: false,
            act_signed: false,
            act_init: InitMode::Default,
        }
    }

    /// The quantizers of a layer of the given kind.
    pub fn layer(&self, kind: LayerKind) -> LayerQuant {
        let (wb, ab) = match kind {
            LayerKind::Body => (Some(self.w_bits), Some(self.a_bits)),
            LayerKind::First => (self.first_bits, self.first_bits),
            LayerKind::Head => (self.head_bits, self.head_bits),
        };
        let per_channel = self.per_channel_weights && matches!(self.method, Method::Lsq | Method::LsqPlus | Method::Minmax);
        let act_signed = self.act_signed && matches!(self.method, Method::Lsq | Method::LsqPlus | Method::Minmax);
        LayerQuant {
            weight: wb.map(|bits| QuantSpec { method: self.method, bits, signed: true, per_channel, init: InitMode::Default }),
            act: ab.map(|bits| QuantSpec { method: self.method, bits, signed: act_signed, per_channel: false, init: self.act_init }),
        }
    }
}

/// A layer's optional weight and activation quantizers.
type QuantPair = (Option<Box<dyn Quantizer>>, Option<Box<dyn Quantizer>>);

fn quantizers(s: &mut Scope, q: &LayerQuant, in_ch: usize, out_ch: usize) -> Result<QuantPair> {
    let wq = q.weight.as_ref().map(|spec| build(spec, out_ch, &mut s.sub("wq"))).transpose()?;
    let aq = q.act.as_ref().map(|spec| build(spec, in_ch, &mut s.sub("aq"))).transpose()?;
    Ok((wq, aq))
}

fn apply(q: &Option<Box<dyn Quantizer>>, t: &candle_core::Tensor) -> Result<candle_core::Tensor> {
    match q {
        Some(q) => q.forward(t),
        None => Ok(t.clone()),
    }
}

/// Initialises the activation quantizer from the input `x` and the weight quantizer from `w`.
fn calibrate(aq: &Option<Box<dyn Quantizer>>, wq: &Option<Box<dyn Quantizer>>, x: &candle_core::Tensor, w: &candle_core::Tensor) -> Result<()> {
    if let Some(q) = aq {
        q.init_from(x)?;
    }
    if let Some(q) = wq {
        q.init_from(w)?;
    }
    Ok(())
}

/// ultralytics `Conv` with fake-quantized weight and input; quantizer parameters are stored as
/// `<scope>.wq.*` and `<scope>.aq.*`.
#[derive(Debug)]
pub struct QConv<const I: usize, const O: usize, const K: usize, const S: usize> {
    pub conv: Conv<I, O, K, S>,
    pub wq: Option<Box<dyn Quantizer>>,
    pub aq: Option<Box<dyn Quantizer>>,
}

impl<const I: usize, const O: usize, const K: usize, const S: usize> QConv<I, O, K, S> {
    pub fn new(s: &mut Scope, q: &LayerQuant) -> Result<Self> {
        Self::with(s, 1, Act::SiLU, q)
    }

    pub fn with(s: &mut Scope, groups: usize, act: Act, q: &LayerQuant) -> Result<Self> {
        let conv = Conv::with(s, groups, act)?;
        let (wq, aq) = quantizers(s, q, I, O)?;
        Ok(Self { conv, wq, aq })
    }

    pub fn forward(&self, x: &Feat<I>, mode: Mode) -> Result<Feat<O>> {
        let xq = apply(&self.aq, x.tensor())?;
        let wq = apply(&self.wq, self.conv.weight.as_tensor())?;
        Ok(self.conv.forward_with(&xq, &wq, mode)?)
    }

    /// Data-driven initialisation: the activation quantizer from `x`, the weight quantizer from
    /// the current weights.
    pub fn calibrate(&self, x: &Feat<I>) -> Result<()> {
        calibrate(&self.aq, &self.wq, x.tensor(), self.conv.weight.as_tensor())
    }
}

/// A biased `Conv2d` with fake-quantized weight and input (the Detect prediction convs).
#[derive(Debug)]
pub struct QConv2d<const I: usize, const O: usize, const K: usize, const S: usize> {
    pub conv: Conv2d<I, O, K, S>,
    pub wq: Option<Box<dyn Quantizer>>,
    pub aq: Option<Box<dyn Quantizer>>,
}

impl<const I: usize, const O: usize, const K: usize, const S: usize> QConv2d<I, O, K, S> {
    pub fn new(s: &mut Scope, q: &LayerQuant) -> Result<Self> {
        let conv = Conv2d::new(s)?;
        let (wq, aq) = quantizers(s, q, I, O)?;
        Ok(Self { conv, wq, aq })
    }

    pub fn forward(&self, x: &Feat<I>) -> Result<Feat<O>> {
        let xq = apply(&self.aq, x.tensor())?;
        let wq = apply(&self.wq, self.conv.weight.as_tensor())?;
        Ok(self.conv.forward_with(&xq, &wq)?)
    }

    /// As [`QConv::calibrate`].
    pub fn calibrate(&self, x: &Feat<I>) -> Result<()> {
        calibrate(&self.aq, &self.wq, x.tensor(), self.conv.weight.as_tensor())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use q2_nn::store::{seeded, Init, ParamStore, Role};

    fn input() -> Feat<3> {
        Feat::new(seeded((2, 3, 6, 6), &Init::Normal { mean: 0.5, std: 1.0 }, 1, &Device::Cpu).unwrap()).unwrap()
    }

    #[test]
    fn full_precision_qconv_is_the_conv() {
        let mut store = ParamStore::new(Device::Cpu, 3);
        let q: QConv<3, 4, 3, 1> = QConv::new(&mut store.scope("model.0"), &LayerQuant::default()).unwrap();
        let x = input();
        let a = q.forward(&x, Mode::Eval).unwrap().tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = q.conv.forward(&x, Mode::Eval).unwrap().tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn plan_assigns_bits_and_registers_quantizer_parameters() {
        let plan = QuantPlan::new(Method::Lsq, 4, 3);
        let body = plan.layer(LayerKind::Body);
        assert_eq!((body.weight.as_ref().unwrap().bits, body.act.as_ref().unwrap().bits), (4, 3));
        assert!(body.weight.as_ref().unwrap().signed && !body.act.as_ref().unwrap().signed);
        assert_eq!(plan.layer(LayerKind::First).weight.unwrap().bits, 8);
        assert_eq!(plan.layer(LayerKind::Head).act.unwrap().bits, 8);
        let fp_ends = QuantPlan { first_bits: None, head_bits: None, ..plan.clone() };
        assert_eq!(fp_ends.layer(LayerKind::First), LayerQuant::default());

        let mut store = ParamStore::new(Device::Cpu, 3);
        let q: QConv<3, 4, 3, 1> = QConv::new(&mut store.scope("model.1"), &body).unwrap();
        let names: Vec<_> = store.iter().filter(|(_, e)| e.role == Role::Quant).map(|(k, _)| k.to_string()).collect();
        assert_eq!(names, ["model.1.aq.s", "model.1.wq.s"]);
        // calibration sets LSQ's data-driven steps; gradients reach them
        let x = input();
        q.calibrate(&x).unwrap();
        let s = store.get("model.1.aq.s").unwrap().var.to_vec1::<f32>().unwrap()[0];
        let mean_abs = x.tensor().abs().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
        assert!((s - 2.0 * mean_abs / 7f32.sqrt()).abs() < 1e-5);
        let y = q.forward(&x, Mode::Train).unwrap();
        let g = y.tensor().sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for (name, var) in q.aq.as_ref().unwrap().params().into_iter().chain(q.wq.as_ref().unwrap().params()) {
            let gv = g.get(&var).unwrap_or_else(|| panic!("no gradient for {name}")).to_vec1::<f32>().unwrap();
            assert!(gv[0].is_finite() && gv[0] != 0.0, "{name}: {gv:?}");
        }
    }

    #[test]
    fn every_method_builds_for_weights_and_activations() {
        for method in Method::ALL {
            let plan = QuantPlan { per_channel_weights: true, ..QuantPlan::new(method, 4, 4) };
            let mut store = ParamStore::new(Device::Cpu, 0);
            let q: QConv2d<3, 5, 1, 1> = QConv2d::new(&mut store.scope("h"), &plan.layer(LayerKind::Body)).unwrap();
            let x = Var::from_tensor(input().tensor()).unwrap();
            let fx = Feat::new(x.as_tensor().clone()).unwrap();
            q.calibrate(&fx).unwrap();
            let y = q.forward(&fx).unwrap();
            let g = y.tensor().sum_all().unwrap().backward().unwrap();
            assert!(g.get(&x).is_some(), "{method}");
            assert!(g.get(&q.conv.weight).is_some(), "{method}");
            let groups = q.wq.as_ref().unwrap().groups();
            let want = if matches!(method, Method::Pact) { 1 } else { 5 };
            assert_eq!(groups, want, "{method}: weight quantizer groups");
        }
    }
}
