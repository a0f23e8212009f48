//! Convolutions whose widths are known only at run time, with the same quantization hook as
//! q2-quant's `QConv`/`QConv2d`:
//! - the Detect prediction convs, whose output width depends on the number of classes
//!   (YOLOv5 `na·(5+nc)`, YOLO11 `nc`);
//! - YOLO11's class branch, whose hidden width `c3 = max(ch[0], min(nc, 100))` depends on nc;
//! - C3k2's output conv, whose input width `(2+n)·c` depends on the run-time depth n.
//!
//! [`QConvDyn`] is `conv (optional bias) → optional BatchNorm2d(eps 1e-3, momentum 0.03) →
//! optional SiLU`, keys `conv.weight` + `bn.*` (ultralytics `Conv`) or `weight` + `bias`
//! (`nn.Conv2d`), with explicit padding (the YOLOv5 stem uses k 6, s 2, p 2). The typed layer
//! wraps its outputs back into `Feat<C>` wherever the width is a constant.

use candle_core::{Tensor, Var};
use q2_nn::conv::{conv2d, Act};
use q2_nn::store::{Init, Role, Scope};
use q2_nn::{Mode, NnError};
use q2_quant::{build, LayerQuant, Quantizer};

use crate::Result;

/// BatchNorm2d with a run-time channel count (`q2_nn::bn::Bn`).
pub type DynBn = q2_nn::bn::Bn;

/// Geometry of a [`QConvDyn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geom {
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub s: usize,
    pub p: usize,
    pub groups: usize,
}

impl Geom {
    /// `k`×`k`, stride `s`, "same" padding `k / 2`, no groups.
    pub fn new(cin: usize, cout: usize, k: usize, s: usize) -> Self {
        Self {
            cin,
            cout,
            k,
            s,
            p: k / 2,
            groups: 1,
        }
    }
}

/// A conv with run-time widths and optional fake quantization of its weight and input.
#[derive(Debug)]
pub struct QConvDyn {
    pub geom: Geom,
    pub weight: Var,
    pub bias: Option<Var>,
    pub bn: Option<DynBn>,
    pub act: Act,
    pub wq: Option<Box<dyn Quantizer>>,
    pub aq: Option<Box<dyn Quantizer>>,
}

fn check(g: &Geom) -> Result<()> {
    if g.cin == 0
        || g.cout == 0
        || g.k == 0
        || g.s == 0
        || g.groups == 0
        || g.cin % g.groups != 0
        || g.cout % g.groups != 0
    {
        return Err(crate::YoloError::Invalid(format!(
            "conv: invalid geometry {g:?}"
        )));
    }
    Ok(())
}

/// A conv's optional weight and activation quantizers.
type QuantPair = (Option<Box<dyn Quantizer>>, Option<Box<dyn Quantizer>>);

fn quantizers(s: &mut Scope, q: &LayerQuant, g: &Geom) -> Result<QuantPair> {
    let wq = q
        .weight
        .as_ref()
        .map(|spec| build(spec, g.cout, &mut s.sub("wq")))
        .transpose()?;
    let aq = q
        .act
        .as_ref()
        .map(|spec| build(spec, g.cin, &mut s.sub("aq")))
        .transpose()?;
    Ok((wq, aq))
}

impl QConvDyn {
    /// ultralytics `Conv(cin, cout, k, s, p, g, act)`: keys `conv.weight`, `bn.*`.
    pub fn conv_bn(s: &mut Scope, geom: Geom, act: Act, q: &LayerQuant) -> Result<Self> {
        check(&geom)?;
        let fan_in = geom.cin / geom.groups * geom.k * geom.k;
        let weight = s.sub("conv").add(
            "weight",
            (geom.cout, geom.cin / geom.groups, geom.k, geom.k),
            Role::Weight,
            Init::KaimingUniform { fan_in },
        )?;
        let bn = DynBn::new(&mut s.sub("bn"), geom.cout)?;
        let (wq, aq) = quantizers(s, q, &geom)?;
        Ok(Self {
            geom,
            weight,
            bias: None,
            bn: Some(bn),
            act,
            wq,
            aq,
        })
    }

    /// `nn.Conv2d(cin, cout, k, s, k/2, bias=True)` (PyTorch's default init): keys `weight`, `bias`.
    pub fn conv2d(s: &mut Scope, geom: Geom, q: &LayerQuant) -> Result<Self> {
        check(&geom)?;
        let fan_in = geom.cin / geom.groups * geom.k * geom.k;
        let b = 1.0 / (fan_in as f64).sqrt();
        let weight = s.add(
            "weight",
            (geom.cout, geom.cin / geom.groups, geom.k, geom.k),
            Role::Weight,
            Init::KaimingUniform { fan_in },
        )?;
        let bias = s.add(
            "bias",
            geom.cout,
            Role::Bias,
            Init::Uniform { lo: -b, hi: b },
        )?;
        let (wq, aq) = quantizers(s, q, &geom)?;
        Ok(Self {
            geom,
            weight,
            bias: Some(bias),
            bn: None,
            act: Act::Identity,
            wq,
            aq,
        })
    }

    /// Forward on a (B, cin, H, W) tensor.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let g = &self.geom;
        if x.rank() != 4 || x.dim(1)? != g.cin {
            return Err(NnError::Channels {
                what: "conv".into(),
                expected: g.cin,
                got: x.dims().to_vec(),
            }
            .into());
        }
        let xq = match &self.aq {
            Some(q) => q.forward(x)?,
            None => x.clone(),
        };
        let w = match &self.wq {
            Some(q) => q.forward(self.weight.as_tensor())?,
            None => self.weight.as_tensor().clone(),
        };
        let mut y = conv2d(&xq, &w, g.p, g.s, g.groups)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(&b.as_tensor().reshape((1, g.cout, 1, 1))?)?;
        }
        Ok(match &self.bn {
            Some(bn) => bn.forward_act(&y, mode, self.act)?,
            None if self.act == Act::SiLU => y.silu()?,
            None => y,
        })
    }

    /// Data-driven quantizer initialisation from the input `x` and the current weight.
    pub fn calibrate(&self, x: &Tensor) -> Result<()> {
        if let Some(q) = &self.aq {
            q.init_from(x)?;
        }
        if let Some(q) = &self.wq {
            q.init_from(self.weight.as_tensor())?;
        }
        Ok(())
    }

    /// Multiply-accumulates of one forward at output size `oh`×`ow` (batch 1).
    pub fn macs(&self, oh: usize, ow: usize) -> u64 {
        let g = &self.geom;
        (g.cout * oh * ow * (g.cin / g.groups) * g.k * g.k) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use q2_nn::conv::Conv;
    use q2_nn::store::seeded;
    use q2_nn::{Device, Feat, ParamStore};

    #[test]
    fn matches_the_typed_conv_in_train_and_eval() {
        let mut store = ParamStore::new(Device::Cpu, 5);
        let typed: Conv<3, 4, 3, 2> = Conv::new(&mut store.scope("a")).unwrap();
        let dynamic = QConvDyn::conv_bn(
            &mut store.scope("b"),
            Geom::new(3, 4, 3, 2),
            Act::SiLU,
            &LayerQuant::default(),
        )
        .unwrap();
        dynamic.weight.set(typed.weight.as_tensor()).unwrap();
        let x = seeded(
            (2, 3, 8, 6),
            &Init::Normal {
                mean: 0.0,
                std: 1.0,
            },
            1,
            &Device::Cpu,
        )
        .unwrap();
        for mode in [Mode::Train, Mode::Train, Mode::Eval] {
            let a = typed
                .forward(&Feat::<3>::new(x.clone()).unwrap(), mode)
                .unwrap()
                .into_tensor();
            let b = dynamic.forward(&x, mode).unwrap();
            let d = q2_nn::compare::max_abs_diff(&a, &b).unwrap();
            assert!(d < 1e-6, "{mode:?}: {d}");
        }
        let rv = |n: &str| store.get(n).unwrap().var.to_vec1::<f32>().unwrap();
        assert_eq!(rv("a.bn.running_var"), rv("b.bn.running_var"));
        assert_eq!(dynamic.macs(4, 3), 4 * 12 * 27);
    }

    #[test]
    fn rejects_wrong_input_width_and_bad_geometry() {
        let mut store = ParamStore::new(Device::Cpu, 5);
        let c = QConvDyn::conv2d(
            &mut store.scope("h"),
            Geom::new(3, 7, 1, 1),
            &LayerQuant::default(),
        )
        .unwrap();
        assert!(store.get("h.weight").is_some() && store.get("h.bias").is_some());
        let x = Tensor::zeros((1, 4, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(c.forward(&x, Mode::Eval).is_err());
        let bad = Geom {
            groups: 2,
            ..Geom::new(3, 4, 1, 1)
        };
        assert!(QConvDyn::conv2d(&mut store.scope("g"), bad, &LayerQuant::default()).is_err());
    }
}
