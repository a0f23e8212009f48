//! Convolution layers with ultralytics names:
//! - [`Conv`]: `Conv2d(bias=False)` → `BatchNorm2d` → SiLU (keys `conv.weight`, `bn.*`);
//!   grouped when `groups > 1` (ultralytics `DWConv` uses `groups = gcd(c1, c2)`);
//! - [`Conv2d`]: a plain convolution with bias (the Detect heads' prediction convs).
//!
//! Both are typed by input/output channels, kernel and stride, and use "same" padding `K / 2`.
//! `forward_with` takes the weight explicitly so a quantizer can substitute a fake-quantized one.

use candle_core::{Tensor, Var};

use crate::bn::BatchNorm2d;
pub use crate::gemm_conv::conv2d;
use crate::store::{Init, Role, Scope};
use crate::{Feat, Mode, NnError, Result};

/// The activation ending a [`Conv`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    SiLU,
    Identity,
}

/// ultralytics `Conv(c1=I, c2=O, k=K, s=S, g=groups, act)`.
#[derive(Clone, Debug)]
pub struct Conv<const I: usize, const O: usize, const K: usize, const S: usize> {
    pub weight: Var,
    pub bn: BatchNorm2d<O>,
    pub act: Act,
    pub groups: usize,
}

fn check_groups(i: usize, o: usize, g: usize) -> Result<()> {
    if g == 0 || i % g != 0 || o % g != 0 {
        return Err(NnError::Invalid(format!("conv: groups {g} must divide in {i} and out {o} channels")));
    }
    Ok(())
}

impl<const I: usize, const O: usize, const K: usize, const S: usize> Conv<I, O, K, S> {
    /// `Conv` with SiLU and no grouping, registered as `<scope>.conv.weight` and `<scope>.bn.*`.
    pub fn new(s: &mut Scope) -> Result<Self> {
        Self::with(s, 1, Act::SiLU)
    }

    pub fn with(s: &mut Scope, groups: usize, act: Act) -> Result<Self> {
        check_groups(I, O, groups)?;
        let fan_in = I / groups * K * K;
        let weight = s.sub("conv").add("weight", (O, I / groups, K, K), Role::Weight, Init::KaimingUniform { fan_in })?;
        let bn = BatchNorm2d::new(&mut s.sub("bn"))?;
        Ok(Self { weight, bn, act, groups })
    }

    pub fn forward(&self, x: &Feat<I>, mode: Mode) -> Result<Feat<O>> {
        self.forward_with(x.tensor(), self.weight.as_tensor(), mode)
    }

    /// The same layer with `x` and the weight `w` supplied (e.g. fake-quantized versions).
    pub fn forward_with(&self, x: &Tensor, w: &Tensor, mode: Mode) -> Result<Feat<O>> {
        let y = conv2d(x, w, K / 2, S, self.groups)?;
        Feat::new(self.bn.forward_act(&y, mode, self.act)?)
    }
}

/// `nn.Conv2d(I, O, K, S, padding=K/2, bias=True)`; keys `weight`, `bias`.
#[derive(Clone, Debug)]
pub struct Conv2d<const I: usize, const O: usize, const K: usize, const S: usize> {
    pub weight: Var,
    pub bias: Var,
}

impl<const I: usize, const O: usize, const K: usize, const S: usize> Conv2d<I, O, K, S> {
    pub fn new(s: &mut Scope) -> Result<Self> {
        let fan_in = I * K * K;
        let b = 1.0 / (fan_in as f64).sqrt();
        Ok(Self {
            weight: s.add("weight", (O, I, K, K), Role::Weight, Init::KaimingUniform { fan_in })?,
            bias: s.add("bias", O, Role::Bias, Init::Uniform { lo: -b, hi: b })?,
        })
    }

    pub fn forward(&self, x: &Feat<I>) -> Result<Feat<O>> {
        self.forward_with(x.tensor(), self.weight.as_tensor())
    }

    pub fn forward_with(&self, x: &Tensor, w: &Tensor) -> Result<Feat<O>> {
        let y = conv2d(x, w, K / 2, S, 1)?;
        Feat::new(y.broadcast_add(&self.bias.as_tensor().reshape((1, O, 1, 1))?)?)
    }
}
