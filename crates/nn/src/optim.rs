//! Optimizers with PyTorch's exact update rules, over named parameter groups:
//! - [`Sgd`]: `torch.optim.SGD(momentum, nesterov, dampening=0)`, L2 weight decay added to the
//!   gradient;
//! - [`Adam`]: `torch.optim.Adam(betas=(momentum, β2), eps)`, L2 weight decay;
//! - [`yolov5_groups`]: YOLOv5's `smart_optimizer` split into biases (no decay), weights
//!   (decay) and normalisation weights (no decay), plus quantizer parameters (no decay) grouped
//!   by learning-rate multiplier;
//! - [`GradAccumulator`]: sums gradients over several backward passes (YOLOv5's accumulation to
//!   the nominal batch) and clips their global norm.

use std::collections::{BTreeMap, HashMap};

use candle_core::backprop::GradStore;
use candle_core::{Tensor, TensorId, Var};

use crate::store::{ParamStore, Role};
use crate::Result;

/// A set of parameters sharing hyper-parameters; `lr` and `momentum` are rewritten by the
/// schedule every iteration, `initial_lr` is the base the schedule multiplies.
#[derive(Clone, Debug)]
pub struct ParamGroup {
    pub name: String,
    pub params: Vec<Var>,
    pub lr: f64,
    pub initial_lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Multiplies `lr` in the update (e.g. 0.1 for N2UQ thresholds).
    pub lr_scale: f64,
}

impl ParamGroup {
    pub fn new(name: &str, params: Vec<Var>, lr: f64, momentum: f64, weight_decay: f64) -> Self {
        Self { name: name.to_string(), params, lr, initial_lr: lr, momentum, weight_decay, lr_scale: 1.0 }
    }
}

/// YOLOv5's optimizer groups, in its order: `[0]` biases (no decay; the warm-up gives it the
/// bias LR), `[1]` weights with `decay`, `[2]` normalisation weights (no decay); then one group
/// per distinct learning-rate multiplier of quantizer parameters (no decay). Empty quantizer
/// groups are omitted; the first three are always present.
pub fn yolov5_groups(store: &ParamStore, lr: f64, momentum: f64, decay: f64) -> Vec<ParamGroup> {
    let pick = |role: Role| store.iter().filter(|(_, e)| e.role == role).map(|(_, e)| e.var.clone()).collect::<Vec<_>>();
    let mut groups = vec![
        ParamGroup::new("bias", pick(Role::Bias), lr, momentum, 0.0),
        ParamGroup::new("weight", pick(Role::Weight), lr, momentum, decay),
        ParamGroup::new("norm_weight", pick(Role::NormWeight), lr, momentum, 0.0),
    ];
    let mut quant: BTreeMap<u64, Vec<Var>> = BTreeMap::new();
    for (_, e) in store.iter().filter(|(_, e)| e.role == Role::Quant) {
        quant.entry(e.lr_scale.to_bits()).or_default().push(e.var.clone());
    }
    for (bits, params) in quant {
        let scale = f64::from_bits(bits);
        let mut g = ParamGroup::new(&format!("quant(lr×{scale})"), params, lr, momentum, 0.0);
        g.lr_scale = scale;
        groups.push(g);
    }
    groups
}

/// Where an optimizer reads gradients from.
pub trait Grads {
    fn grad(&self, v: &Var) -> Option<&Tensor>;
}

impl Grads for GradStore {
    fn grad(&self, v: &Var) -> Option<&Tensor> {
        self.get(v.as_tensor())
    }
}

/// Common interface of the optimizers (the schedule only touches the groups).
pub trait Optimizer {
    fn groups(&self) -> &[ParamGroup];
    fn groups_mut(&mut self) -> &mut [ParamGroup];
    fn step(&mut self, grads: &dyn Grads) -> Result<()>;
}

/// SGD with momentum (dampening 0), optionally Nesterov, as `torch.optim.SGD`.
#[derive(Debug)]
pub struct Sgd {
    pub groups: Vec<ParamGroup>,
    pub nesterov: bool,
    bufs: Vec<Vec<Option<Tensor>>>,
}

impl Sgd {
    pub fn new(groups: Vec<ParamGroup>, nesterov: bool) -> Self {
        let bufs = groups.iter().map(|g| vec![None; g.params.len()]).collect();
        Self { groups, nesterov, bufs }
    }

    /// Momentum buffers (for checkpoints), per group and parameter.
    pub fn buffers(&self) -> &[Vec<Option<Tensor>>] {
        &self.bufs
    }

    pub fn set_buffers(&mut self, bufs: Vec<Vec<Option<Tensor>>>) {
        self.bufs = bufs;
    }
}

impl Optimizer for Sgd {
    fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    fn groups_mut(&mut self) -> &mut [ParamGroup] {
        &mut self.groups
    }

    fn step(&mut self, grads: &dyn Grads) -> Result<()> {
        for (g, bufs) in self.groups.iter().zip(self.bufs.iter_mut()) {
            let lr = g.lr * g.lr_scale;
            for (p, buf) in g.params.iter().zip(bufs.iter_mut()) {
                let Some(grad) = grads.grad(p) else { continue };
                // Detached: a gradient computed from activations still references the forward graph, and
                // a momentum buffer built from it would keep every step's graph alive.
                let mut d = grad.detach();
                if g.weight_decay != 0.0 {
                    d = (d + (p.as_tensor().detach() * g.weight_decay)?)?;
                }
                if g.momentum != 0.0 {
                    let b = match buf.take() {
                        None => d.copy()?,
                        Some(b) => ((b * g.momentum)? + &d)?,
                    };
                    d = if self.nesterov { (d + (&b * g.momentum)?)? } else { b.clone() };
                    *buf = Some(b);
                }
                p.set(&(p.as_tensor() - (d * lr)?)?)?;
            }
        }
        Ok(())
    }
}

/// Adam as `torch.optim.Adam` (L2 weight decay, bias correction); β1 is the group's `momentum`.
#[derive(Debug)]
pub struct Adam {
    pub groups: Vec<ParamGroup>,
    pub beta2: f64,
    pub eps: f64,
    /// (step, exp_avg, exp_avg_sq) per group and parameter.
    state: Vec<Vec<Option<(u64, Tensor, Tensor)>>>,
}

impl Adam {
    pub fn new(groups: Vec<ParamGroup>, beta2: f64, eps: f64) -> Self {
        let state = groups.iter().map(|g| vec![None; g.params.len()]).collect();
        Self { groups, beta2, eps, state }
    }
}

impl Optimizer for Adam {
    fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    fn groups_mut(&mut self) -> &mut [ParamGroup] {
        &mut self.groups
    }

    fn step(&mut self, grads: &dyn Grads) -> Result<()> {
        for (g, states) in self.groups.iter().zip(self.state.iter_mut()) {
            let (b1, b2, lr) = (g.momentum, self.beta2, g.lr * g.lr_scale);
            for (p, st) in g.params.iter().zip(states.iter_mut()) {
                let Some(grad) = grads.grad(p) else { continue };
                // Detached: a gradient computed from activations still references the forward graph, and
                // a momentum buffer built from it would keep every step's graph alive.
                let mut d = grad.detach();
                if g.weight_decay != 0.0 {
                    d = (d + (p.as_tensor().detach() * g.weight_decay)?)?;
                }
                let (step, m, v) = match st.take() {
                    None => (0, d.zeros_like()?, d.zeros_like()?),
                    Some(s) => s,
                };
                let step = step + 1;
                // exp_avg.lerp_(grad, 1 − β1); exp_avg_sq.mul_(β2).addcmul_(grad, grad, 1 − β2)
                let m = (&m + ((&d - &m)? * (1.0 - b1))?)?;
                let v = ((v * b2)? + (d.sqr()? * (1.0 - b2))?)?;
                let bc1 = 1.0 - b1.powi(step as i32);
                let bc2_sqrt = (1.0 - b2.powi(step as i32)).sqrt();
                let denom = ((v.sqrt()? / bc2_sqrt)? + self.eps)?;
                p.set(&(p.as_tensor() - ((&m / &denom)? * (lr / bc1))?)?)?;
                *st = Some((step, m, v));
            }
        }
        Ok(())
    }
}

/// Gradients summed over several backward passes, keyed by parameter.
#[derive(Debug, Default)]
pub struct GradAccumulator {
    sums: Vec<(Var, Tensor)>,
    index: HashMap<TensorId, usize>,
}

impl GradAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the gradients of `params` found in `grads`.
    pub fn add<'a>(&mut self, params: impl IntoIterator<Item = &'a Var>, grads: &GradStore) -> Result<()> {
        for p in params {
            let Some(g) = grads.get(p.as_tensor()) else { continue };
            // Detached, so that the sums do not keep the batches' forward graphs alive.
            let g = g.detach();
            match self.index.get(&p.id()) {
                Some(&i) => self.sums[i].1 = (&self.sums[i].1 + &g)?,
                None => {
                    self.index.insert(p.id(), self.sums.len());
                    self.sums.push((p.clone(), g.copy()?));
                }
            }
        }
        Ok(())
    }

    pub fn clear(&mut self) {
        self.sums.clear();
        self.index.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.sums.is_empty()
    }

    /// The accumulated sums, in the order parameters were first seen (for checkpoints).
    pub fn sums(&self) -> &[(Var, Tensor)] {
        &self.sums
    }

    /// Sets the accumulated sum of one parameter (restoring a checkpoint).
    pub fn set(&mut self, v: &Var, sum: Tensor) {
        let sum = sum.detach();
        match self.index.get(&v.id()) {
            Some(&i) => self.sums[i].1 = sum,
            None => {
                self.index.insert(v.id(), self.sums.len());
                self.sums.push((v.clone(), sum));
            }
        }
    }

    /// `torch.nn.utils.clip_grad_norm_`: scales all gradients by max_norm/(‖g‖ + 1e-6) when that
    /// is below 1. Returns the total L2 norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Result<f64> {
        let mut total = 0f64;
        for (_, g) in &self.sums {
            total += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        }
        let total = total.sqrt();
        let coef = max_norm / (total + 1e-6);
        if coef < 1.0 {
            for (_, g) in self.sums.iter_mut() {
                *g = (&*g * coef)?;
            }
        }
        Ok(total)
    }
}

impl Grads for GradAccumulator {
    fn grad(&self, v: &Var) -> Option<&Tensor> {
        self.index.get(&v.id()).map(|&i| &self.sums[i].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A gradient computed through activations can reference the forward graph, and weight decay
    /// mixes in the parameter (a variable): optimizer state and accumulated sums must track
    /// nothing, or each step's buffers keep the previous step's alive (a training run grew by
    /// gigabytes per minute before this was fixed).
    #[test]
    fn optimizer_state_and_sums_hold_no_graph() {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[0.5f32, -1.0, 2.0], &dev).unwrap()).unwrap();
        let act = Tensor::new(&[1.0f32, 2.0, 3.0], &dev).unwrap().exp().unwrap();
        let loss = w.as_tensor().mul(&act.sin().unwrap()).unwrap().sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let mut acc = GradAccumulator::new();
        acc.add([&w], &grads).unwrap();
        acc.add([&w], &grads).unwrap();
        assert!(acc.sums().iter().all(|(_, s)| !s.track_op()));
        let mut sgd = Sgd::new(vec![ParamGroup::new("w", vec![w.clone()], 0.1, 0.9, 1e-4)], true);
        sgd.step(&acc).unwrap();
        sgd.step(&grads).unwrap();
        assert!(sgd.buffers().iter().flatten().flatten().all(|b| !b.track_op()));
    }
}
