//! The [`Quantizer`] trait — the extension point a new quantization method plugs into — its one
//! generic implementation [`FakeQuant`] over any [`Kernel`], and [`build`], which turns a
//! [`QuantSpec`] (method, bits, signedness, granularity, initialisation) into a quantizer whose
//! learnable parameters live in the model's [`ParamStore`](q2_nn::ParamStore).
//!
//! To add a method: write its kernel in `methods/`, add a [`Method`] variant and one arm in
//! [`build`] (and in `case.rs` for `q2 quant`).

use std::sync::Arc;

use candle_core::{Tensor, Var};
use q2_nn::store::{Init, Role, Scope};
use serde::{Deserialize, Serialize};

use crate::kernel::{self, Kernel};
use crate::methods::*;
use crate::op::fake_quant;
use crate::{QuantError, Result};

/// The quantization methods q2 implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Lsq,
    LsqPlus,
    Pact,
    N2uq,
    Minmax,
}

impl Method {
    pub const ALL: [Method; 5] = [Method::Lsq, Method::LsqPlus, Method::Pact, Method::N2uq, Method::Minmax];

    pub fn name(self) -> &'static str {
        match self {
            Method::Lsq => "lsq",
            Method::LsqPlus => "lsq_plus",
            Method::Pact => "pact",
            Method::N2uq => "n2uq",
            Method::Minmax => "minmax",
        }
    }

    pub fn parse(s: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == s)
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a quantizer's parameters are initialised from data (`default`: the method's own rule).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitMode {
    #[default]
    Default,
    /// LSQ+ activations: min–max.
    MinMax,
    /// LSQ+ activations: MSE-optimal (s, β).
    Mse,
    /// PACT: α = max of the calibration batch.
    Max,
    /// PACT: a fixed α.
    Fixed(f32),
    /// N2UQ: the official code's constants.
    Official,
    /// N2UQ: scales set from the calibration batch's maximum.
    Calibrated,
}

/// One quantizer's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantSpec {
    pub method: Method,
    pub bits: u32,
    /// Signed grid (weights) or unsigned (activations); for `pact` and `n2uq` signed selects the
    /// method's weight quantizer (DoReFa, N2UQ weight rescaling).
    pub signed: bool,
    /// One set of parameters per output channel (axis 0) instead of one per tensor.
    #[serde(default)]
    pub per_channel: bool,
    #[serde(default)]
    pub init: InitMode,
}

impl QuantSpec {
    pub fn new(method: Method, bits: u32, signed: bool) -> Self {
        Self { method, bits, signed, per_channel: false, init: InitMode::Default }
    }

    pub fn validate(&self) -> Result<()> {
        if !(2..=8).contains(&self.bits) {
            return Err(QuantError::Config(format!("bits must be in 2..=8, got {}", self.bits)));
        }
        let per_tensor_only = matches!(self.method, Method::Pact) || (self.method == Method::N2uq && !self.signed);
        if self.per_channel && per_tensor_only {
            return Err(QuantError::Config(format!("{} (signed: {}) is defined per tensor only", self.method, self.signed)));
        }
        let ok = match (self.method, self.init) {
            (_, InitMode::Default) => true,
            (Method::LsqPlus, InitMode::MinMax | InitMode::Mse) => !self.signed,
            (Method::Pact, InitMode::Max | InitMode::Fixed(_)) => !self.signed,
            (Method::N2uq, InitMode::Official | InitMode::Calibrated) => !self.signed,
            _ => false,
        };
        if !ok {
            return Err(QuantError::Config(format!("init {:?} does not apply to {} (signed: {})", self.init, self.method, self.signed)));
        }
        Ok(())
    }
}

/// A fake quantizer: forward on the quantization grid, straight-through gradients into its input
/// and its learnable parameters.
pub trait Quantizer: Send + Sync + std::fmt::Debug {
    fn spec(&self) -> &QuantSpec;

    /// Parameter groups (1 per tensor, or the number of output channels).
    fn groups(&self) -> usize;

    /// y = Q(x), differentiable (STE) with respect to `x` and the parameters.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;

    /// Learnable parameters with their full store names.
    fn params(&self) -> Vec<(String, Var)>;

    /// Sets the parameters from a calibration tensor (the method's data-driven rule).
    fn init_from(&self, x: &Tensor) -> Result<()>;

    /// The step of each group in input units (Q-ADA's s_c), for methods that have one.
    fn step(&self) -> Result<Option<Vec<f32>>>;

    /// Moves an input scale `c > 0` into the parameters (LN folding, Eq. 12): afterwards
    /// `Q_new(v) = Q_old(c·v) / gain`, and the returned `gain` is what the consumer's weights
    /// are multiplied by. An error for methods that cannot absorb one (weight quantizers).
    fn absorb_input_scale(&self, c: f64) -> Result<f64>;
}

/// The one [`Quantizer`] implementation: a kernel plus its parameters as store variables.
#[derive(Debug)]
pub struct FakeQuant<K: Kernel> {
    kernel: Arc<K>,
    spec: QuantSpec,
    groups: usize,
    /// (full name, width per group, variable of shape (groups,) or (groups, width)).
    vars: Vec<(String, usize, Var)>,
}

impl<K: Kernel> FakeQuant<K> {
    /// Registers the kernel's parameters under `scope` (role [`Role::Quant`]), initialised to the
    /// kernel's data-free defaults.
    pub fn new(kernel: K, spec: QuantSpec, groups: usize, scope: &mut Scope, lr_scale: f64) -> Result<Self> {
        let defaults = kernel.default_params();
        let mut vars = vec![];
        let mut off = 0;
        for (name, width) in kernel.param_layout() {
            let vals: Vec<f32> = (0..groups).flat_map(|_| defaults[off..off + width].to_vec()).collect();
            let var = if width == 1 {
                scope.add(name, groups, Role::Quant, Init::Values(vals))?
            } else {
                scope.add(name, (groups, width), Role::Quant, Init::Values(vals))?
            };
            if lr_scale != 1.0 {
                scope.set_lr_scale(name, lr_scale)?;
            }
            vars.push((scope.name(name), width, var));
            off += width;
        }
        Ok(Self { kernel: Arc::new(kernel), spec, groups, vars })
    }

    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// The parameters packed as (groups, P), differentiable back into each variable.
    fn packed(&self) -> Result<Option<Tensor>> {
        let parts: Vec<Tensor> =
            self.vars.iter().map(|(_, w, v)| v.as_tensor().reshape((self.groups, *w))).collect::<candle_core::Result<_>>()?;
        Ok(match parts.len() {
            0 => None,
            1 => Some(parts[0].clone()),
            _ => Some(Tensor::cat(&parts, 1)?),
        })
    }

    fn packed_values(&self) -> Result<Vec<f32>> {
        Ok(match self.packed()? {
            None => vec![],
            Some(p) => p.flatten_all()?.to_vec1::<f32>()?,
        })
    }
}

impl<K: Kernel> Quantizer for FakeQuant<K> {
    fn spec(&self) -> &QuantSpec {
        &self.spec
    }

    fn groups(&self) -> usize {
        self.groups
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.groups > 1 && x.dims().first() != Some(&self.groups) {
            return Err(QuantError::Config(format!(
                "{}: per-channel quantizer with {} channels applied to a tensor of shape {:?}",
                self.kernel.name(),
                self.groups,
                x.dims()
            )));
        }
        fake_quant(self.kernel.clone(), x, self.packed()?.as_ref(), self.groups)
    }

    fn params(&self) -> Vec<(String, Var)> {
        self.vars.iter().map(|(n, _, v)| (n.clone(), v.clone())).collect()
    }

    fn init_from(&self, x: &Tensor) -> Result<()> {
        if self.vars.is_empty() {
            return Ok(());
        }
        let data = x.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        if data.len() % self.groups != 0 || data.is_empty() {
            return Err(QuantError::Config(format!("cannot calibrate {} groups from {} values", self.groups, data.len())));
        }
        let p = kernel::init(&*self.kernel, &data, self.groups);
        self.set_packed(&p, "calibration")
    }

    fn step(&self) -> Result<Option<Vec<f32>>> {
        let p = self.packed_values()?;
        let np = self.kernel.num_params();
        let steps: Option<Vec<f32>> = (0..self.groups).map(|gi| self.kernel.step(&p[gi * np..(gi + 1) * np])).collect();
        Ok(steps)
    }

    fn absorb_input_scale(&self, c: f64) -> Result<f64> {
        if !(c.is_finite() && c > 0.0) {
            return Err(QuantError::Config(format!("{}: input scale must be positive and finite, got {c}", self.kernel.name())));
        }
        let mut p = self.packed_values()?;
        let np = self.kernel.num_params();
        let mut gain = None;
        for gi in 0..self.groups {
            let g = self.kernel.absorb_input_scale(&mut p[gi * np..(gi + 1) * np], c as f32).ok_or_else(|| {
                QuantError::Config(format!("{} (signed: {}) cannot absorb an input scale", self.kernel.name(), self.spec.signed))
            })?;
            gain = Some(g);
        }
        self.set_packed(&p, "absorbing an input scale")?;
        Ok(gain.unwrap_or(c as f32) as f64)
    }
}

impl<K: Kernel> FakeQuant<K> {
    /// Writes packed parameters (`groups × P`) back into the variables, validating each group.
    fn set_packed(&self, p: &[f32], what: &str) -> Result<()> {
        let np = self.kernel.num_params();
        for gi in 0..self.groups {
            self.kernel.validate(&p[gi * np..(gi + 1) * np]).map_err(|e| QuantError::Config(format!("{what} gave {e}")))?;
        }
        let mut off = 0;
        for (_, w, var) in &self.vars {
            let vals: Vec<f32> = (0..self.groups).flat_map(|gi| p[gi * np + off..gi * np + off + w].to_vec()).collect();
            var.set(&Tensor::from_vec(vals, var.shape(), var.device())?)?;
            off += w;
        }
        Ok(())
    }
}

/// Builds the quantizer `spec` describes for a tensor whose axis 0 has `channels` entries,
/// registering its parameters under `scope`.
pub fn build(spec: &QuantSpec, channels: usize, scope: &mut Scope) -> Result<Box<dyn Quantizer>> {
    spec.validate()?;
    let (bits, signed) = (spec.bits, spec.signed);
    let per_channel = spec.per_channel || (spec.method == Method::N2uq && signed);
    let groups = if per_channel { channels } else { 1 };
    let s = spec.clone();
    Ok(match (spec.method, signed) {
        (Method::Lsq, _) => Box::new(FakeQuant::new(Lsq { bits, signed }, s, groups, scope, 1.0)?),
        (Method::LsqPlus, _) => {
            let init = match spec.init {
                InitMode::Mse => LsqPlusInit::Mse,
                _ if signed => LsqPlusInit::Weights,
                _ => LsqPlusInit::MinMax,
            };
            Box::new(FakeQuant::new(LsqPlus { bits, signed, offset: !signed, init }, s, groups, scope, 1.0)?)
        }
        (Method::Pact, false) => {
            let init = match spec.init {
                InitMode::Max => PactInit::Max,
                InitMode::Fixed(a) => PactInit::Fixed(a),
                _ => PactInit::Fixed(10.0),
            };
            Box::new(FakeQuant::new(Pact { bits, init }, s, groups, scope, 1.0)?)
        }
        (Method::Pact, true) => Box::new(FakeQuant::new(DoReFa { bits }, s, groups, scope, 1.0)?),
        (Method::N2uq, false) => {
            let init = if spec.init == InitMode::Official { N2uqInit::Official } else { N2uqInit::Calibrated };
            // N2UQ trains its quantizer parameters at 1/10 of the weight learning rate.
            Box::new(FakeQuant::new(N2uqAct { bits, init }, s, groups, scope, 0.1)?)
        }
        (Method::N2uq, true) => Box::new(FakeQuant::new(N2uqWeight { bits }, s, groups, scope, 1.0)?),
        (Method::Minmax, _) => Box::new(FakeQuant::new(MinMax { bits, signed }, s, groups, scope, 1.0)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use q2_nn::ParamStore;

    #[test]
    fn specs_are_validated() {
        assert!(QuantSpec::new(Method::Lsq, 1, true).validate().is_err());
        assert!(QuantSpec::new(Method::Lsq, 9, true).validate().is_err());
        assert!(QuantSpec { per_channel: true, ..QuantSpec::new(Method::Pact, 4, false) }.validate().is_err());
        assert!(QuantSpec { init: InitMode::Mse, ..QuantSpec::new(Method::Lsq, 4, false) }.validate().is_err());
        assert!(QuantSpec { init: InitMode::Mse, ..QuantSpec::new(Method::LsqPlus, 4, false) }.validate().is_ok());
        let json = r#"{"method": "n2uq", "bits": 3, "signed": false, "init": "official"}"#;
        let spec: QuantSpec = serde_json::from_str(json).unwrap();
        assert_eq!(spec.init, InitMode::Official);
    }

    #[test]
    fn steps_for_q_ada() {
        let mut store = ParamStore::new(Device::Cpu, 0);
        let lsq = build(&QuantSpec::new(Method::Lsq, 4, false), 1, &mut store.scope("a")).unwrap();
        assert_eq!(lsq.step().unwrap(), Some(vec![1.0]));
        let pact = build(&QuantSpec { init: InitMode::Fixed(3.0), ..QuantSpec::new(Method::Pact, 2, false) }, 1, &mut store.scope("b")).unwrap();
        assert_eq!(pact.step().unwrap(), Some(vec![1.0]));
        let n2 = build(&QuantSpec { init: InitMode::Official, ..QuantSpec::new(Method::N2uq, 2, false) }, 1, &mut store.scope("c")).unwrap();
        let s = n2.step().unwrap().unwrap()[0];
        assert!((s - 2.0 / 3.0).abs() < 1e-6, "{s}");
        let mm = build(&QuantSpec::new(Method::Minmax, 4, false), 1, &mut store.scope("d")).unwrap();
        assert_eq!(mm.step().unwrap(), None);
        // N2UQ's parameters train at a tenth of the learning rate
        assert_eq!(store.get("c.a").unwrap().lr_scale, 0.1);
    }

    /// Q_old(c·v) = gain·Q_new(v) for every activation method; weight quantizers refuse.
    #[test]
    fn absorbing_an_input_scale_keeps_the_quantized_function() {
        let dev = Device::Cpu;
        let v = q2_nn::store::seeded(4096, &q2_nn::store::Init::Normal { mean: 0.3, std: 1.0 }, 7, &dev).unwrap();
        let c = 0.37f64;
        for (i, method) in Method::ALL.into_iter().enumerate() {
            let mut store = ParamStore::new(dev.clone(), 0);
            let q = build(&QuantSpec::new(method, 4, false), 1, &mut store.scope(&format!("q{i}"))).unwrap();
            let cv = (&v * c).unwrap();
            q.init_from(&cv).unwrap();
            let want = q.forward(&cv).unwrap().to_vec1::<f32>().unwrap();
            let gain = q.absorb_input_scale(c).unwrap();
            let got = (q.forward(&v).unwrap() * gain).unwrap().to_vec1::<f32>().unwrap();
            // the same grid up to float rounding: an element on a rounding boundary may flip one step
            let step = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            let flips = want.iter().zip(&got).filter(|(a, b)| (*a - *b).abs() > 1e-5 * (1.0 + a.abs())).count();
            assert!(flips <= 2, "{method}: {flips} elements differ (max {step})");
            let w = build(&QuantSpec::new(method, 4, true), 1, &mut store.scope(&format!("w{i}"))).unwrap();
            let absorbs = w.absorb_input_scale(c).is_ok();
            assert_eq!(absorbs, matches!(method, Method::Lsq | Method::LsqPlus | Method::Minmax), "{method} (weights)");
        }
    }
}
