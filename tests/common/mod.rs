//! Shared helpers of the theory suites: a Q-GBFusion node driven with fixed residual energies
//! through real forward and backward passes (`paper/THEORY.md` P2's local model).

#![allow(dead_code)]

use candle_core::{Device, Tensor, Var};
use q2::fusion::gbf::{GbfConfig, GbfNode};
use q2::fusion::Fusion;
use q2::nn::{Mode, ParamStore};

/// A node without LN (`ln = false`), so that y = [α_0·F_0; α_1·F_1; …] and, with the linear loss
/// L = Σ w⊙y, ∂L/∂F'_i = w_i: the residual energy of branch i is ‖w_i‖ = `r[i]` whatever α is.
pub struct Driven {
    pub node: GbfNode,
    pub store: ParamStore,
    branches: Vec<Var>,
    weights: Vec<Tensor>,
}

impl Driven {
    pub fn new(r: &[f64], cfg: GbfConfig) -> Self {
        let mut store = ParamStore::new(Device::Cpu, 0);
        let widths = vec![2; r.len()];
        let node = GbfNode::new(16, &widths, &GbfConfig { ln: false, ..cfg }, &mut store.scope("model.16")).unwrap();
        let branches = (0..r.len()).map(|i| Var::from_tensor(&(Tensor::ones((1, 2, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap() * (i as f64 + 1.0)).unwrap()).unwrap()).collect();
        // w_i: 8 equal entries of norm r_i
        let weights = r.iter().map(|ri| (Tensor::ones((1, 2, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap() * (ri / 8f64.sqrt())).unwrap()).collect();
        Self { node, store, branches, weights }
    }

    /// One training iteration: forward, backward, `observe` (Eq. 8), `control` (Eq. 9–10).
    /// Returns the measured energies G_i.
    pub fn step(&self) -> Vec<f64> {
        let b: Vec<&Tensor> = self.branches.iter().map(|v| v.as_tensor()).collect();
        let y = self.node.fuse(&b, Mode::Train).unwrap();
        let w = Tensor::cat(&self.weights, 1).unwrap();
        let l = (y * w).unwrap().sum_all().unwrap();
        l.backward().unwrap();
        let rec = self.node.observe().unwrap().expect("every branch was reached");
        self.node.control().unwrap();
        rec.g
    }
}

/// P·log g − τ: the violation of Eq. 4 (THEORY.md P2's u).
pub fn balance_violation(g: &[f64], tau: &[f64]) -> Vec<f64> {
    let l: Vec<f64> = g.iter().map(|v| v.ln()).collect();
    let m = l.iter().sum::<f64>() / l.len() as f64;
    l.iter().enumerate().map(|(i, v)| v - m - tau.get(i).copied().unwrap_or(0.0)).collect()
}

pub fn inf_norm(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |a, b| a.max(b.abs()))
}
