//! BatchNorm2d with ultralytics' settings (eps 1e-3, momentum 0.03) and PyTorch semantics:
//! training normalises with the biased batch variance and updates the running variance with the
//! unbiased one; evaluation uses the running statistics.

use candle_core::{Tensor, Var};

use crate::bn_act;
use crate::conv::Act;
use crate::store::{Init, Role, Scope};
use crate::{Mode, NnError, Result};

/// `nn.BatchNorm2d(C, eps=1e-3, momentum=0.03)` with a run-time channel count; state_dict keys
/// `weight`, `bias`, `running_mean`, `running_var`, `num_batches_tracked`.
#[derive(Clone, Debug)]
pub struct Bn {
    pub channels: usize,
    pub weight: Var,
    pub bias: Var,
    pub running_mean: Var,
    pub running_var: Var,
    pub num_batches_tracked: Var,
    pub eps: f64,
    pub momentum: f64,
}

/// [`Bn`] whose channel count `C` is part of the type.
#[derive(Clone, Debug)]
pub struct BatchNorm2d<const C: usize>(pub Bn);

impl<const C: usize> std::ops::Deref for BatchNorm2d<C> {
    type Target = Bn;
    fn deref(&self) -> &Bn {
        &self.0
    }
}

impl<const C: usize> BatchNorm2d<C> {
    pub fn new(s: &mut Scope) -> Result<Self> {
        Ok(Self(Bn::new(s, C)?))
    }
}

impl Bn {
    /// ultralytics `initialize_weights` sets these on every BatchNorm2d.
    pub const EPS: f64 = 1e-3;
    pub const MOMENTUM: f64 = 0.03;

    pub fn new(s: &mut Scope, channels: usize) -> Result<Self> {
        Ok(Self {
            channels,
            weight: s.add("weight", channels, Role::NormWeight, Init::Const(1.0))?,
            bias: s.add("bias", channels, Role::Bias, Init::Const(0.0))?,
            running_mean: s.add("running_mean", channels, Role::Buffer, Init::Const(0.0))?,
            running_var: s.add("running_var", channels, Role::Buffer, Init::Const(1.0))?,
            num_batches_tracked: s.add_i64("num_batches_tracked", ())?,
            eps: Self::EPS,
            momentum: Self::MOMENTUM,
        })
    }

    fn per_channel(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.reshape((1, self.channels, 1, 1))?)
    }

    /// Normalises a (B, C, H, W) tensor. In [`Mode::Train`] the running statistics are updated.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.forward_act(x, mode, Act::Identity)
    }

    /// `act(BatchNorm(x))`; in training on the CPU one fused kernel ([`crate::bn_act`]).
    pub fn forward_act(&self, x: &Tensor, mode: Mode, act: Act) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        if c != self.channels {
            return Err(NnError::Channels { what: "BatchNorm2d".into(), expected: self.channels, got: x.dims().to_vec() });
        }
        let y = match mode {
            Mode::Eval => {
                let (scale, shift) = self.eval_affine()?;
                x.broadcast_mul(&self.per_channel(&scale)?)?.broadcast_add(&self.per_channel(&shift)?)?
            }
            Mode::Train => {
                let n = b * h * w;
                if n < 2 {
                    return Err(NnError::Invalid(format!(
                        "BatchNorm2d: expected more than 1 value per channel when training, got input {:?}",
                        x.dims()
                    )));
                }
                if crate::kernels::fused_cpu(x) {
                    let (mean, var) = bn_act::batch_stats(x)?;
                    let (mt, vt) = (Tensor::new(mean.as_slice(), x.device())?, Tensor::new(var.as_slice(), x.device())?);
                    self.update_running(&mt, &vt, n)?;
                    return bn_act::batch_norm_act(x, self.weight.as_tensor(), self.bias.as_tensor(), mean, &var, self.eps, act);
                }
                let mean = x.mean_keepdim((0, 2, 3))?;
                let xc = x.broadcast_sub(&mean)?;
                let var = xc.sqr()?.mean_keepdim((0, 2, 3))?;
                let inv_std = (var.clone() + self.eps)?.sqrt()?.recip()?;
                let w4 = self.per_channel(self.weight.as_tensor())?;
                let b4 = self.per_channel(self.bias.as_tensor())?;
                let y = xc.broadcast_mul(&inv_std)?.broadcast_mul(&w4)?.broadcast_add(&b4)?;
                self.update_running(&mean.detach().flatten_all()?, &var.detach().flatten_all()?, n)?;
                y
            }
        };
        Ok(match act {
            Act::SiLU => y.silu()?,
            Act::Identity => y,
        })
    }

    /// running ← (1 − m)·running + m·batch (variance unbiased), PyTorch's update.
    fn update_running(&self, mean: &Tensor, var_biased: &Tensor, n: usize) -> Result<()> {
        let m = self.momentum;
        let unbiased = (var_biased * (n as f64 / (n as f64 - 1.0)))?;
        let rm = ((mean * m)? + (self.running_mean.as_tensor() * (1.0 - m))?)?;
        let rv = ((unbiased * m)? + (self.running_var.as_tensor() * (1.0 - m))?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)?;
        let nbt = (self.num_batches_tracked.as_tensor() + 1.0)?;
        self.num_batches_tracked.set(&nbt)?;
        Ok(())
    }

    /// The per-channel affine map `y = scale·x + shift` that evaluation applies
    /// (scale = γ/sqrt(running_var + eps), shift = β − running_mean·scale); used for BN folding.
    pub fn eval_affine(&self) -> Result<(Tensor, Tensor)> {
        let scale = self.weight.as_tensor().div(&(self.running_var.as_tensor() + self.eps)?.sqrt()?)?;
        let shift = (self.bias.as_tensor() - self.running_mean.as_tensor().mul(&scale)?)?;
        Ok((scale, shift))
    }
}
