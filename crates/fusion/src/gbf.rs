//! Q-GBFusion (paper Sec. 3.2, Eq. 4–10): at a neck fusion node with K branches, dual logits λ
//! give the allocation α = softmax(λ); each branch is scaled by α_i, the branches are
//! concatenated and normalised by a LayerNorm over channels at every location. The gradient
//! energy G_i = ‖∂L/∂F̃_i‖₂ of each branch *input* is measured by a gradient tap during the
//! ordinary backward pass; after the backward pass its EMA Ḡ (Eq. 8) gives the balance error
//! e (Eq. 9) and, before the optimizer step, the feedback law λ ← λ − η·e (Eq. 10) moves the
//! allocation. λ is a buffer: SGD never touches it.
//!
//! - the equations as plain functions: [`softmax`] (Eq. 5), [`layer_norm_channels`] (Eq. 6),
//!   [`residual_energy`] (Eq. 7), [`ema_update`] (Eq. 8), [`balance_error`] (Eq. 9),
//!   [`feedback`] (Eq. 10);
//! - [`GbfConfig`]: every option, recorded in a run's configuration;
//! - [`GbfNode`]: the module at one node (a [`Fusion`]), with its telemetry ([`NodeRecord`]);
//! - [`GbfFactory`]: builds a node at each selected neck Concat and keeps handles to them.
//!
//! Store entries of a node at `model.<i>`: `lam` (K, buffer), `gbar` (K, buffer, 0 until the
//! first measurement), `fold` (3, buffer: folded flag, μ̄, 1/σ̄; see [`crate::fold`]) and, with
//! an affine LN, `ln.weight` / `ln.bias` (C, trained). With `balance = false` the node is a
//! plain Concat with gradient taps (to measure the imbalance of an unmodified model) and
//! registers nothing.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Tensor, Var};
use q2_nn::store::{Init, Role, Scope};
use q2_nn::Mode;
use serde::{Deserialize, Serialize};

use crate::fold::LnStats;
use crate::tap::{tap, TapSlots};
use crate::{check_branches, Fusion, FusionError, FusionFactory, Result};

/// Eq. 5: α = softmax(λ) (computed in f64, max-shifted).
pub fn softmax(lam: &[f64]) -> Vec<f64> {
    let m = lam.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = lam.iter().map(|l| (l - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

pub use crate::ln::layer_norm_channels;

/// Eq. 7: the residual energy ‖∂L/∂F'_i‖₂ = G_i/α_i (F'_i = α_i·F̃_i, so by the chain rule
/// log G_i = log α_i + log ‖∂L/∂F'_i‖₂ exactly).
pub fn residual_energy(g: f64, alpha: f64) -> f64 {
    g / alpha
}

/// Eq. 8: Ḡ ← (1−β)·Ḡ + β·G; the first measurement initialises Ḡ (`first`).
pub fn ema_update(gbar: &mut [f64], g: &[f64], beta: f64, first: bool) {
    for (b, g) in gbar.iter_mut().zip(g) {
        *b = if first { *g } else { (1.0 - beta) * *b + beta * g };
    }
}

/// Eq. 9: e_i = log(Ḡ_i+ε) − (1/K)·Σ_j log(Ḡ_j+ε) − τ_i (τ empty: zeros).
pub fn balance_error(gbar: &[f64], eps: f64, tau: &[f64]) -> Vec<f64> {
    let l: Vec<f64> = gbar.iter().map(|g| (g + eps).ln()).collect();
    let mean = l.iter().sum::<f64>() / l.len() as f64;
    l.iter().enumerate().map(|(i, v)| v - mean - tau.get(i).copied().unwrap_or(0.0)).collect()
}

/// Eq. 10: λ ← λ − η·e.
pub fn feedback(lam: &mut [f64], e: &[f64], eta: f64) {
    for (l, e) in lam.iter_mut().zip(e) {
        *l -= eta * e;
    }
}

/// Which energy the controller balances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Energy {
    /// ‖∂L/∂F̃_i‖₂ as in Eq. 4 (the paper).
    #[default]
    Raw,
    /// ‖∂L/∂F̃_i‖₂ / sqrt(numel_i): per-element RMS, for branches of unequal widths (YOLO11).
    PerElement,
}

/// How a node starts when it is inserted into a trained (FP) model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GbfInit {
    /// Calibrate μ̄, σ̄ of the node's input and rescale the consumer convs (weights ×σ̄/α_i,
    /// BN running mean shifted) so that the node with its LN approximates the Concat it replaces
    /// (the inverse of LN folding, [`crate::fold::insert_node`]).
    #[default]
    Calibrated,
    /// Insert as is (the consumers see LN's unit-variance output).
    Raw,
}

/// Every option of Q-GBFusion. The paper gives none of η, β, ε, the initial λ, the LN affine or
/// the nodes; our defaults are in `paper/DEVIATIONS.md`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GbfConfig {
    /// Neck nodes (ultralytics layer indices) that get the module; empty: all four neck Concats.
    pub nodes: Vec<usize>,
    /// α-scaling and LN (the module). false: a plain Concat with gradient taps (measurement).
    pub balance: bool,
    /// The closed loop (Eq. 8–10). false: α stays at its initial value (uniform).
    pub controller: bool,
    /// Feedback step η (Eq. 10).
    pub eta: f64,
    /// EMA momentum β (Eq. 8).
    pub beta: f64,
    /// ε inside the logs (Eq. 9); far below the gradient scale (~1e-5 at YOLO neck nodes).
    pub eps: f64,
    /// Targets τ_i (Eq. 4, 9); empty: zeros (equal log-energies).
    pub tau: Vec<f64>,
    pub energy: Energy,
    /// The post-fusion LayerNorm (Eq. 6).
    pub ln: bool,
    /// Per-channel γ, β on the LN (Eq. 6 shows none).
    pub ln_affine: bool,
    pub ln_eps: f64,
    pub init: GbfInit,
}

impl Default for GbfConfig {
    fn default() -> Self {
        Self {
            nodes: vec![],
            balance: true,
            controller: true,
            eta: 0.05,
            beta: 0.1,
            eps: 1e-12,
            tau: vec![],
            energy: Energy::Raw,
            ln: true,
            ln_affine: false,
            ln_eps: 1e-5,
            init: GbfInit::Calibrated,
        }
    }
}

impl GbfConfig {
    /// The measurement-only configuration: plain Concats with gradient taps.
    pub fn measure_only() -> Self {
        Self { balance: false, controller: false, ..Self::default() }
    }

    /// Checks the values; the message names the option.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(FusionError::Invalid(format!("gbf: {m}")));
        if !(self.eta.is_finite() && self.eta >= 0.0) {
            return bad(format!("eta must be ≥ 0, got {}", self.eta));
        }
        if !(self.beta > 0.0 && self.beta <= 1.0) {
            return bad(format!("beta must be in (0, 1], got {}", self.beta));
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return bad(format!("eps must be ≥ 0, got {}", self.eps));
        }
        if !(self.ln_eps.is_finite() && self.ln_eps > 0.0) {
            return bad(format!("ln_eps must be > 0, got {}", self.ln_eps));
        }
        if self.tau.iter().any(|t| !t.is_finite()) {
            return bad(format!("tau must be finite, got {:?}", self.tau));
        }
        Ok(())
    }
}

/// What a node measures besides the gradients: LN statistics and channel magnitudes.
#[derive(Debug, Default)]
struct Probe {
    /// LN statistics being collected (calibration / folding).
    stats: Option<LnStats>,
    /// Record per-channel magnitudes at the next forward.
    want_mag: bool,
    mag: Option<Vec<f64>>,
}

/// One node's telemetry after a backward pass (JSON in `telemetry.jsonl`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeRecord {
    /// ultralytics layer index.
    pub node: usize,
    /// G_i = ‖∂L/∂F̃_i‖₂ per branch (branch 0 = the `-1` input, the deeper path), raw.
    pub g: Vec<f64>,
    /// ‖∂L/∂F'_i‖₂ = G_i/α_i: the gradient before the allocation's gain (Eq. 7).
    pub g_res: Vec<f64>,
    /// Branch widths C_i.
    pub widths: Vec<usize>,
    /// α used in this step's forward (empty for a measurement-only node).
    pub alpha: Vec<f64>,
    /// λ after this step's update.
    pub lam: Vec<f64>,
    /// Ḡ after this measurement (the controller's units).
    pub gbar: Vec<f64>,
    /// e (Eq. 9) from this Ḡ.
    pub e: Vec<f64>,
    /// Per-channel mean |y| of the node's output (Fig. 3a), when sampled: 32 channels, the
    /// same number from each branch, evenly spaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mag: Option<Vec<f64>>,
}

/// Q-GBFusion at one node (or, with `balance = false`, a tapped plain Concat).
#[derive(Debug)]
pub struct GbfNode {
    pub node: usize,
    pub widths: Vec<usize>,
    pub cfg: GbfConfig,
    lam: Option<Var>,
    gbar: Option<Var>,
    fold: Option<Var>,
    ln_weight: Option<Var>,
    ln_bias: Option<Var>,
    slots: Arc<Mutex<TapSlots>>,
    probe: Mutex<Probe>,
}

fn vec_f64(v: &Var) -> Result<Vec<f64>> {
    Ok(v.as_tensor().to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

fn set_f64(v: &Var, vals: &[f64]) -> Result<()> {
    let t = Tensor::from_vec(vals.iter().map(|x| *x as f32).collect::<Vec<_>>(), v.shape(), v.device())?;
    Ok(v.set(&t)?)
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock().map_err(|_| FusionError::Invalid("fusion node: poisoned lock".into()))
}

/// The 32 channel indices sampled for magnitudes: the same number from each branch, evenly spaced.
fn sampled_channels(widths: &[usize]) -> Vec<usize> {
    let per = (32 / widths.len().max(1)).max(1);
    let mut out = vec![];
    let mut off = 0;
    for &w in widths {
        let n = per.min(w);
        out.extend((0..n).map(|j| off + j * w / n));
        off += w;
    }
    out
}

impl GbfNode {
    /// Builds the module for node `node` with branch `widths`, registering its entries under `scope`.
    pub fn new(node: usize, widths: &[usize], cfg: &GbfConfig, scope: &mut Scope) -> Result<Self> {
        cfg.validate()?;
        if widths.len() < 2 || widths.contains(&0) {
            return Err(FusionError::Invalid(format!("Q-GBFusion at node {node}: needs two or more non-empty branches, got widths {widths:?}")));
        }
        if !cfg.tau.is_empty() && cfg.tau.len() != widths.len() {
            return Err(FusionError::Invalid(format!("Q-GBFusion at node {node}: tau has {} entries for {} branches", cfg.tau.len(), widths.len())));
        }
        let k = widths.len();
        let c: usize = widths.iter().sum();
        let (mut lam, mut gbar, mut fold, mut ln_weight, mut ln_bias) = (None, None, None, None, None);
        if cfg.balance {
            lam = Some(scope.add("lam", k, Role::Buffer, Init::Const(0.0))?);
            gbar = Some(scope.add("gbar", k, Role::Buffer, Init::Const(0.0))?);
            fold = Some(scope.add("fold", 3, Role::Buffer, Init::Values(vec![0.0, 0.0, 1.0]))?);
            if cfg.ln && cfg.ln_affine {
                let mut ln = scope.sub("ln");
                ln_weight = Some(ln.add("weight", c, Role::NormWeight, Init::Const(1.0))?);
                ln_bias = Some(ln.add("bias", c, Role::Bias, Init::Const(0.0))?);
            }
        }
        let slots = Arc::new(Mutex::new(TapSlots { norms: vec![None; k], numel: vec![0; k] }));
        Ok(Self { node, widths: widths.to_vec(), cfg: cfg.clone(), lam, gbar, fold, ln_weight, ln_bias, slots, probe: Mutex::new(Probe::default()) })
    }

    /// Whether the node scales and normalises (Q-GBFusion) or only measures (tapped Concat).
    pub fn balances(&self) -> bool {
        self.cfg.balance
    }

    /// λ (zeros for a measurement-only node).
    pub fn lambda(&self) -> Result<Vec<f64>> {
        match &self.lam {
            Some(v) => vec_f64(v),
            None => Ok(vec![0.0; self.widths.len()]),
        }
    }

    /// Sets λ (a buffer, so optimizers never see it).
    pub fn set_lambda(&self, lam: &[f64]) -> Result<()> {
        match &self.lam {
            Some(v) if lam.len() == self.widths.len() => set_f64(v, lam),
            Some(_) => Err(FusionError::Invalid(format!("node {}: λ needs {} values", self.node, self.widths.len()))),
            None => Err(FusionError::Invalid(format!("node {}: a measurement-only node has no λ", self.node))),
        }
    }

    /// α = softmax(λ) (Eq. 5); uniform for a measurement-only node.
    pub fn alpha(&self) -> Result<Vec<f64>> {
        Ok(softmax(&self.lambda()?))
    }

    /// Ḡ (zeros before the first measurement).
    pub fn gbar(&self) -> Result<Vec<f64>> {
        match &self.gbar {
            Some(v) => vec_f64(v),
            None => Ok(vec![0.0; self.widths.len()]),
        }
    }

    /// (folded, μ̄, c = 1/σ̄) of the LN folding (see [`crate::fold`]).
    pub fn fold_state(&self) -> Result<(bool, f64, f64)> {
        match &self.fold {
            Some(v) => {
                let f = vec_f64(v)?;
                Ok((f[0] > 0.5, f[1], f[2]))
            }
            None => Ok((false, 0.0, 1.0)),
        }
    }

    /// Marks the node folded: its LN is replaced by the subtraction of μ̄ (the scale c has gone
    /// into the consumers).
    pub fn set_folded(&self, mu: f64, c: f64) -> Result<()> {
        match &self.fold {
            Some(v) => set_f64(v, &[1.0, mu, c]),
            None => Err(FusionError::Invalid(format!("node {}: a measurement-only node cannot be folded", self.node))),
        }
    }

    /// The LN's (γ, β) when affine.
    pub fn ln_affine(&self) -> Option<(&Var, &Var)> {
        self.ln_weight.as_ref().zip(self.ln_bias.as_ref())
    }

    /// Starts collecting the LN statistics of the node's input (the α-scaled concat).
    pub fn start_stats(&self) -> Result<()> {
        lock(&self.probe)?.stats = Some(LnStats::default());
        Ok(())
    }

    /// As [`Self::start_stats`], also measuring the residual of the fold (μ̄, c) (P4 (a)).
    pub fn start_stats_against(&self, mu_bar: f64, c: f64) -> Result<()> {
        lock(&self.probe)?.stats = Some(LnStats::against(mu_bar, c, self.cfg.ln_eps));
        Ok(())
    }

    /// The statistics collected since [`Self::start_stats`] (and stops collecting).
    pub fn take_stats(&self) -> Result<Option<LnStats>> {
        Ok(lock(&self.probe)?.stats.take())
    }

    /// Samples the per-channel output magnitudes at the next forward.
    pub fn request_magnitudes(&self) -> Result<()> {
        lock(&self.probe)?.want_mag = true;
        Ok(())
    }

    /// The raw branch energies G_i of the last backward pass (`None` if a branch was not reached),
    /// clearing them.
    pub fn take_energies(&self) -> Result<Option<Vec<f64>>> {
        let mut s = lock(&self.slots)?;
        let g: Option<Vec<f64>> = s.norms.iter().cloned().collect();
        s.norms.iter_mut().for_each(|n| *n = None);
        Ok(g)
    }

    /// The energies in the controller's units ([`Energy`]).
    fn controller_energies(&self, g: &[f64]) -> Result<Vec<f64>> {
        Ok(match self.cfg.energy {
            Energy::Raw => g.to_vec(),
            Energy::PerElement => {
                let s = lock(&self.slots)?;
                g.iter().zip(&s.numel).map(|(g, n)| g / (*n.max(&1) as f64).sqrt()).collect()
            }
        })
    }

    /// After a backward pass: reads the branch energies and updates Ḡ (Eq. 8). Returns the
    /// node's telemetry record, or `None` when the backward pass did not reach every branch.
    pub fn observe(&self) -> Result<Option<NodeRecord>> {
        let Some(g) = self.take_energies()? else { return Ok(None) };
        let alpha = if self.balances() { self.alpha()? } else { vec![1.0; g.len()] };
        let mut gbar = self.gbar()?;
        let first = gbar.iter().all(|v| *v <= 0.0);
        let ge = self.controller_energies(&g)?;
        ema_update(&mut gbar, &ge, self.cfg.beta, first || self.gbar.is_none());
        if let Some(v) = &self.gbar {
            set_f64(v, &gbar)?;
        }
        let e = balance_error(&gbar, self.cfg.eps, &self.cfg.tau);
        let mag = lock(&self.probe)?.mag.take();
        Ok(Some(NodeRecord {
            node: self.node,
            g_res: g.iter().zip(&alpha).map(|(g, a)| residual_energy(*g, *a)).collect(),
            g,
            widths: self.widths.clone(),
            alpha: if self.balances() { alpha } else { vec![] },
            lam: self.lambda()?,
            gbar,
            e,
            mag,
        }))
    }

    /// Before the optimizer step: the feedback law (Eq. 9–10) on the current Ḡ. Does nothing
    /// before the first measurement, for a measurement-only node or with the controller off.
    /// Returns the new λ.
    pub fn control(&self) -> Result<Vec<f64>> {
        let mut lam = self.lambda()?;
        let gbar = self.gbar()?;
        if !(self.balances() && self.cfg.controller) || gbar.iter().all(|v| *v <= 0.0) {
            return Ok(lam);
        }
        let e = balance_error(&gbar, self.cfg.eps, &self.cfg.tau);
        feedback(&mut lam, &e, self.cfg.eta);
        self.set_lambda(&lam)?;
        Ok(lam)
    }

    fn record_magnitudes(&self, y: &Tensor) -> Result<()> {
        let mut p = lock(&self.probe)?;
        if !p.want_mag {
            return Ok(());
        }
        p.want_mag = false;
        let m = y.detach().abs()?.mean_keepdim(3)?.mean_keepdim(2)?.mean_keepdim(0)?.flatten_all()?;
        let m = m.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        p.mag = Some(sampled_channels(&self.widths).into_iter().map(|c| m[c]).collect());
        Ok(())
    }

    fn collect_stats(&self, h: &Tensor) -> Result<()> {
        let mut p = lock(&self.probe)?;
        let Some(stats) = p.stats.as_mut() else { return Ok(()) };
        let h = h.detach().to_dtype(DType::F64)?;
        let mu = h.mean_keepdim(1)?;
        let var = h.broadcast_sub(&mu)?.sqr()?.mean_keepdim(1)?;
        stats.add(&mu.flatten_all()?.to_vec1::<f64>()?, &var.flatten_all()?.to_vec1::<f64>()?);
        Ok(())
    }
}

impl Fusion for GbfNode {
    fn fuse(&self, branches: &[&Tensor], mode: Mode) -> Result<Tensor> {
        check_branches(branches, &format!("Q-GBFusion at node {}", self.node))?;
        if branches.len() != self.widths.len() {
            return Err(FusionError::Invalid(format!("Q-GBFusion at node {}: {} branches, built for {}", self.node, branches.len(), self.widths.len())));
        }
        let alpha = if self.balances() { Some(self.alpha()?) } else { None };
        let mut parts = Vec::with_capacity(branches.len());
        for (i, b) in branches.iter().enumerate() {
            let t = if mode.is_train() { tap(b, i, &self.slots)? } else { (*b).clone() };
            parts.push(match &alpha {
                Some(a) => t.affine(a[i], 0.0)?,
                None => t,
            });
        }
        let h = Tensor::cat(&parts, 1)?;
        if !self.balances() {
            self.record_magnitudes(&h)?;
            return Ok(h);
        }
        let (folded, mu, _) = self.fold_state()?;
        let y = if folded {
            h.affine(1.0, -mu)?
        } else {
            self.collect_stats(&h)?;
            if !self.cfg.ln {
                h
            } else {
                let y = layer_norm_channels(&h, self.cfg.ln_eps)?;
                match self.ln_affine() {
                    Some((w, b)) => {
                        let c = w.dims()[0];
                        y.broadcast_mul(&w.as_tensor().reshape((1, c, 1, 1))?)?.broadcast_add(&b.as_tensor().reshape((1, c, 1, 1))?)?
                    }
                    None => y,
                }
            }
        };
        self.record_magnitudes(&y)?;
        Ok(y)
    }

    fn kind(&self) -> &str {
        if self.balances() {
            "QGBFusion"
        } else {
            "Concat"
        }
    }
}

/// A shared handle used as a model's fusion module (the factory keeps another).
#[derive(Debug)]
struct Shared(Arc<GbfNode>);

impl Fusion for Shared {
    fn fuse(&self, branches: &[&Tensor], mode: Mode) -> Result<Tensor> {
        self.0.fuse(branches, mode)
    }

    fn kind(&self) -> &str {
        self.0.kind()
    }
}

/// Builds [`GbfNode`]s at the configured neck nodes (plain Concats elsewhere) and keeps a handle
/// to each, in build order, for the trainer's controller and telemetry.
#[derive(Debug, Default)]
pub struct GbfFactory {
    pub cfg: GbfConfig,
    nodes: Mutex<Vec<Arc<GbfNode>>>,
}

impl GbfFactory {
    pub fn new(cfg: GbfConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self { cfg, nodes: Mutex::new(vec![]) })
    }

    /// The nodes built so far, in build order (the model's neck order).
    pub fn nodes(&self) -> Vec<Arc<GbfNode>> {
        self.nodes.lock().map(|n| n.clone()).unwrap_or_default()
    }
}

impl FusionFactory for GbfFactory {
    fn make(&self, node: usize, widths: &[usize], scope: &mut Scope) -> Result<Box<dyn Fusion>> {
        if !self.cfg.nodes.is_empty() && !self.cfg.nodes.contains(&node) {
            return crate::PlainConcat.make(node, widths, scope);
        }
        let n = Arc::new(GbfNode::new(node, widths, &self.cfg, scope)?);
        lock(&self.nodes)?.push(n.clone());
        Ok(Box::new(Shared(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use q2_nn::ParamStore;

    fn branch(c: usize, seed: u64) -> Tensor {
        q2_nn::store::seeded((2, c, 3, 4), &Init::Normal { mean: 0.2, std: 1.0 }, seed, &Device::Cpu).unwrap()
    }

    #[test]
    fn equations_5_to_10() {
        let a = softmax(&[0.0, (3f64).ln()]);
        assert!((a[0] - 0.25).abs() < 1e-15 && (a[1] - 0.75).abs() < 1e-15);
        let mut gbar = vec![0.0, 0.0];
        ema_update(&mut gbar, &[2.0, 4.0], 0.1, true);
        assert_eq!(gbar, [2.0, 4.0]);
        ema_update(&mut gbar, &[4.0, 4.0], 0.1, false);
        assert!((gbar[0] - 2.2).abs() < 1e-12 && gbar[1] == 4.0);
        let e = balance_error(&[1.0, std::f64::consts::E.powi(2)], 0.0, &[]);
        assert!((e[0] + 1.0).abs() < 1e-12 && (e[1] - 1.0).abs() < 1e-12);
        let e = balance_error(&[1.0, 1.0], 0.0, &[0.5, -0.5]);
        assert_eq!(e, [-0.5, 0.5]);
        let mut lam = vec![0.0, 0.0];
        feedback(&mut lam, &[-1.0, 1.0], 0.1);
        assert_eq!(lam, [0.1, -0.1]);
        assert_eq!(residual_energy(1.0, 0.25), 4.0);
    }

    #[test]
    fn node_scales_concatenates_and_normalises() {
        let mut store = ParamStore::new(Device::Cpu, 0);
        let node = GbfNode::new(12, &[3, 2], &GbfConfig::default(), &mut store.scope("model.12")).unwrap();
        assert!(store.get("model.12.lam").is_some() && store.get("model.12.ln.weight").is_none());
        node.set_lambda(&[0.0, (3f64).ln()]).unwrap();
        let (a, b) = (branch(3, 1), branch(2, 2));
        let y = node.fuse(&[&a, &b], Mode::Eval).unwrap();
        let h = Tensor::cat(&[(&a * 0.25).unwrap(), (&b * 0.75).unwrap()], 1).unwrap();
        let want = layer_norm_channels(&h, 1e-5).unwrap();
        let d = (y - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-6, "{d}");
    }

    #[test]
    fn controller_moves_lambda_against_the_larger_energy() {
        let mut store = ParamStore::new(Device::Cpu, 0);
        let node = GbfNode::new(16, &[2, 2], &GbfConfig::default(), &mut store.scope("model.16")).unwrap();
        let a = Var::from_tensor(&branch(2, 3)).unwrap();
        let b = Var::from_tensor(&branch(2, 4)).unwrap();
        let y = node.fuse(&[a.as_tensor(), b.as_tensor()], Mode::Train).unwrap();
        // a loss that weighs the first branch's channels 10x
        let w = Tensor::new(&[10f32, 10.0, 1.0, 1.0], &Device::Cpu).unwrap().reshape((1, 4, 1, 1)).unwrap();
        let g = y.broadcast_mul(&w).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let rec = node.observe().unwrap().unwrap();
        let ga = l2(g.get(a.as_tensor()).unwrap());
        assert!((rec.g[0] - ga).abs() < 1e-9 * ga, "{} vs {ga}", rec.g[0]);
        assert!(rec.g[0] > rec.g[1] && rec.e[0] > 0.0);
        assert_eq!(rec.gbar, rec.g);
        let lam = node.control().unwrap();
        assert!(lam[0] < 0.0 && lam[1] > 0.0, "{lam:?}");
        assert!((lam[0] + 0.05 * rec.e[0]).abs() < 1e-6);
        assert!(node.take_energies().unwrap().is_none(), "energies are consumed");
    }

    fn l2(t: &Tensor) -> f64 {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt()
    }

    #[test]
    fn measurement_only_node_is_a_plain_concat() {
        let mut store = ParamStore::new(Device::Cpu, 0);
        let f = GbfFactory::new(GbfConfig::measure_only()).unwrap();
        let node = f.make(19, &[2, 3], &mut store.scope("model.19")).unwrap();
        assert!(store.is_empty());
        assert_eq!(node.kind(), "Concat");
        let (a, b) = (branch(2, 5), branch(3, 6));
        for mode in [Mode::Train, Mode::Eval] {
            let y = node.fuse(&[&a, &b], mode).unwrap();
            let want = Tensor::cat(&[&a, &b], 1).unwrap();
            assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
        assert_eq!(f.nodes().len(), 1);
    }

    #[test]
    fn factory_selects_nodes_and_checks_options() {
        let cfg = GbfConfig { nodes: vec![16], ..GbfConfig::default() };
        let f = GbfFactory::new(cfg).unwrap();
        let mut store = ParamStore::new(Device::Cpu, 0);
        assert_eq!(f.make(12, &[2, 2], &mut store.scope("model.12")).unwrap().kind(), "Concat");
        assert_eq!(f.make(16, &[2, 2], &mut store.scope("model.16")).unwrap().kind(), "QGBFusion");
        assert_eq!(f.nodes().iter().map(|n| n.node).collect::<Vec<_>>(), [16]);
        assert!(GbfFactory::new(GbfConfig { beta: 0.0, ..GbfConfig::default() }).is_err());
        let e = GbfNode::new(3, &[2, 2], &GbfConfig { tau: vec![1.0], ..GbfConfig::default() }, &mut store.scope("x")).unwrap_err();
        assert!(e.to_string().contains("tau"), "{e}");
    }

    /// `energy = per_element`: Ḡ holds ‖g_i‖/sqrt(numel_i), so branches of unequal widths with the
    /// same per-element gradient are balanced; the telemetry's `g` stays raw.
    #[test]
    fn per_element_energies_divide_by_the_branch_size() {
        let mut store = ParamStore::new(Device::Cpu, 0);
        let cfg = GbfConfig { energy: Energy::PerElement, ln: false, ..GbfConfig::default() };
        let node = GbfNode::new(18, &[1, 4], &cfg, &mut store.scope("model.18")).unwrap();
        let a = Var::from_tensor(&branch(1, 7)).unwrap();
        let b = Var::from_tensor(&branch(4, 8)).unwrap();
        let y = node.fuse(&[a.as_tensor(), b.as_tensor()], Mode::Train).unwrap();
        y.sum_all().unwrap().backward().unwrap(); // dL/dF̃_i = α_i everywhere
        let rec = node.observe().unwrap().unwrap();
        let (n0, n1) = (2.0 * 1.0 * 12.0, 2.0 * 4.0 * 12.0);
        assert!((rec.g[0] - 0.5 * f64::sqrt(n0)).abs() < 1e-6 && (rec.g[1] - 0.5 * f64::sqrt(n1)).abs() < 1e-6, "{:?}", rec.g);
        assert!((rec.gbar[0] - 0.5).abs() < 1e-6 && (rec.gbar[1] - 0.5).abs() < 1e-6, "{:?}", rec.gbar);
        assert!(rec.e.iter().all(|e| e.abs() < 1e-6));
    }

    #[test]
    fn magnitudes_sample_each_branch() {
        assert_eq!(sampled_channels(&[4, 2]).len(), 6);
        let s = sampled_channels(&[64, 128]);
        assert_eq!(s.len(), 32);
        assert_eq!((s[0], s[15], s[16], s[31]), (0, 60, 64, 64 + 120));
    }
}
