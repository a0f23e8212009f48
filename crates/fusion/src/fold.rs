//! LayerNorm removal for deployment (paper Eq. 11–12, App. Eq. 17–22) and its inverse, the
//! calibrated insertion of Q-GBFusion into a trained model.
//!
//! Folding replaces a node's per-location LN(h) = (h − μ_h)/σ_h by the fixed affine map
//! Φ(h) = c·(h − μ̄) with calibration statistics μ̄ = E[μ_h] and c = 1/σ̄, σ̄ = sqrt(E[σ_h²] + ε)
//! ([`LnStats`], Eq. 11 / App. Eq. 17). The node then only subtracts μ̄ (a zero point) and the
//! scale c moves into each consumer conv: its input quantizer absorbs c
//! (`Quantizer::absorb_input_scale`, e.g. LSQ's step s → s/c) and returns a gain g with
//! Q_old(c·v) = g·Q_new(v); the conv's output is then 1/g of what it was, and its BatchNorm takes
//! the factor (running mean /g, running variance (σ²+ε)/g² − ε), which BN folding puts into the
//! conv's weights at deployment (Eq. 12's W' = W/σ̄ for LSQ, where g = c). Scaling the latent
//! weights instead would not be exact: an LSQ weight quantizer's step does not follow them and
//! DoReFa's tanh does not scale (`paper/THEORY.md`, P4 (d)). For an FP consumer the gain is c.
//! With an affine LN (γ, β) the map is per channel (App. Eq. 18–22), which only an FP consumer
//! (no quantizers) can absorb: its weights take A_c = γ_c·c per input channel and β's
//! contribution W·β moves into its BatchNorm's running mean. The approximation error is exactly
//! [`fold_residual_norm`] per location (P4 (a)).

use candle_core::{DType, Tensor, Var};
use q2_quant::Quantizer;
use serde::Serialize;

use crate::gbf::GbfNode;
use crate::{FusionError, Result};

/// Running sums of the per-location LN statistics of a node's input and, against a reference
/// fold (μ̄, c), of the relative approximation error ‖LN(h) − Φ(h)‖/‖LN(h)‖ (P4 (a)).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LnStats {
    /// Locations seen.
    pub n: u64,
    pub sum_mu: f64,
    pub sum_var: f64,
    /// (μ̄, c, ε_LN) of the fold the residual is measured against.
    pub reference: Option<(f64, f64, f64)>,
    pub sum_rel2: f64,
    pub max_rel: f64,
}

impl LnStats {
    /// Statistics that also measure the residual of the fold (μ̄, c) with LN's ε.
    pub fn against(mu_bar: f64, c: f64, eps: f64) -> Self {
        Self { reference: Some((mu_bar, c, eps)), ..Self::default() }
    }

    /// Adds locations: their channel means μ_h and population variances σ_h².
    pub fn add(&mut self, mu: &[f64], var: &[f64]) {
        self.n += mu.len() as u64;
        self.sum_mu += mu.iter().sum::<f64>();
        self.sum_var += var.iter().sum::<f64>();
        if let Some((mb, c, eps)) = self.reference {
            for (m, v) in mu.iter().zip(var) {
                // ‖LN − Φ‖²/C = v(1/σ − c)² + c²(μ − μ̄)², ‖LN‖²/C = v/(v + ε)
                let s = (v + eps).sqrt();
                let r2 = v * (1.0 / s - c).powi(2) + c * c * (m - mb).powi(2);
                let l2 = v / (v + eps);
                let rel2 = if l2 > 0.0 { r2 / l2 } else { r2 };
                self.sum_rel2 += rel2;
                self.max_rel = self.max_rel.max(rel2.sqrt());
            }
        }
    }

    /// (RMS, maximum) over the locations of ‖LN(h) − Φ(h)‖/‖LN(h)‖ against the reference fold.
    pub fn relative_residual(&self) -> (f64, f64) {
        ((self.sum_rel2 / self.n.max(1) as f64).sqrt(), self.max_rel)
    }

    /// Eq. 11 (App. Eq. 17: μ0): μ̄ = mean of μ_h.
    pub fn mu_bar(&self) -> f64 {
        self.sum_mu / self.n.max(1) as f64
    }

    /// Eq. 11 (App. Eq. 17: sqrt(σ0² + ε)): σ̄ = sqrt(mean of σ_h² + ε).
    pub fn sigma_bar(&self, eps: f64) -> f64 {
        (self.sum_var / self.n.max(1) as f64 + eps).sqrt()
    }
}

/// P4 (a): ‖LN(h) − c·(h − μ̄)‖₂ at one location h ∈ R^C, by the exact identity
/// C·v_h·(1/σ_h − c)² + C·c²·(μ_h − μ̄)² (h − μ_h ⊥ 1), with σ_h = sqrt(v_h + ε).
pub fn fold_residual_norm(h: &[f64], mu_bar: f64, c: f64, eps: f64) -> f64 {
    let n = h.len() as f64;
    let mu = h.iter().sum::<f64>() / n;
    let v = h.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / n;
    let s = (v + eps).sqrt();
    (n * v * (1.0 / s - c).powi(2) + n * c * c * (mu - mu_bar).powi(2)).sqrt()
}

/// A conv that reads a fusion node's output (a 1×1 conv in YOLOv5's C3 and YOLO11's C3k2).
pub struct Consumer<'a> {
    /// Store prefix, for messages (`model.13.cv1`).
    pub name: String,
    /// (O, C, k, k) weight.
    pub weight: &'a Var,
    /// Its input (activation) fake quantizer.
    pub act_quant: Option<&'a dyn Quantizer>,
    /// Whether its weights are fake-quantized.
    pub weight_quantized: bool,
    /// The BatchNorm after it: running mean, running variance, ε.
    pub bn: Option<(&'a Var, &'a Var, f64)>,
}

/// What folding did at one node.
#[derive(Clone, Debug, Serialize)]
pub struct FoldReport {
    pub node: usize,
    pub mu_bar: f64,
    pub sigma_bar: f64,
    /// Locations the statistics came from.
    pub locations: u64,
    /// (consumer, gain its BatchNorm absorbed: the conv's output is divided by it).
    pub gains: Vec<(String, f64)>,
}

fn vec_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// W ← W·A (A per input channel, or one value) and, when `shift` is given, running_mean ←
/// running_mean − W·shift (per output channel).
fn rescale_consumer(c: &Consumer, a: &[f64], shift: Option<&[f64]>) -> Result<()> {
    let dims = c.weight.dims().to_vec();
    let (o, ci) = (dims[0], dims[1]);
    if a.len() != ci && a.len() != 1 {
        return Err(FusionError::Invalid(format!("{}: {} input channels, node has {}", c.name, ci, a.len())));
    }
    let per = dims[2..].iter().product::<usize>();
    let w = vec_f32(c.weight.as_tensor())?;
    let mut w2 = w.clone();
    for (k, v) in w2.iter_mut().enumerate() {
        let ic = (k / per) % ci;
        *v = (*v as f64 * a[if a.len() == 1 { 0 } else { ic }]) as f32;
    }
    if let Some(shift) = shift {
        let rm = c.bn.ok_or_else(|| FusionError::Invalid(format!("{}: a bias shift needs a BatchNorm after the conv", c.name)))?.0;
        let mut m: Vec<f64> = vec_f32(rm.as_tensor())?.into_iter().map(f64::from).collect();
        for (oc, mv) in m.iter_mut().enumerate().take(o) {
            let mut s = 0.0;
            for ic in 0..ci {
                for k in 0..per {
                    s += w[(oc * ci + ic) * per + k] as f64 * shift[ic];
                }
            }
            *mv -= s;
        }
        rm.set(&Tensor::from_vec(m.into_iter().map(|v| v as f32).collect::<Vec<_>>(), rm.shape(), rm.device())?)?;
    }
    c.weight.set(&Tensor::from_vec(w2, c.weight.shape(), c.weight.device())?)?;
    Ok(())
}

/// The conv's output is divided by `g`: its BatchNorm's running statistics follow (eval-mode
/// output unchanged; train mode normalises with batch statistics, which follow by themselves).
fn scale_bn(c: &Consumer, g: f64) -> Result<()> {
    let (rm, rv, eps) = c.bn.ok_or_else(|| FusionError::Invalid(format!("{}: folding needs the BatchNorm after the conv", c.name)))?;
    let m: Vec<f32> = vec_f32(rm.as_tensor())?.into_iter().map(|v| (v as f64 / g) as f32).collect();
    let v: Vec<f32> = vec_f32(rv.as_tensor())?.into_iter().map(|v| ((v as f64 + eps) / (g * g) - eps) as f32).collect();
    rm.set(&Tensor::from_vec(m, rm.shape(), rm.device())?)?;
    rv.set(&Tensor::from_vec(v, rv.shape(), rv.device())?)?;
    Ok(())
}

/// Eq. 11–12 (App. Eq. 17–22): folds the LN of `node` away using calibration `stats`. Each
/// consumer's input quantizer absorbs c = 1/σ̄ and its BatchNorm the returned gain; the node
/// afterwards computes concat(α_i·F_i) − μ̄. With an affine LN only FP consumers can be folded
/// (per-channel scale; the β term goes into the BatchNorm's running mean).
pub fn fold_node(node: &GbfNode, stats: &LnStats, consumers: &[Consumer]) -> Result<FoldReport> {
    let name = format!("node {}", node.node);
    if !node.balances() || !node.cfg.ln {
        return Err(FusionError::Invalid(format!("{name}: no post-fusion LayerNorm to fold")));
    }
    if node.fold_state()?.0 {
        return Err(FusionError::Invalid(format!("{name}: already folded")));
    }
    if stats.n == 0 {
        return Err(FusionError::Invalid(format!("{name}: no calibration statistics (run the calibration images through the model first)")));
    }
    let (mu, sigma) = (stats.mu_bar(), stats.sigma_bar(node.cfg.ln_eps));
    let c = 1.0 / sigma;
    if !(c.is_finite() && mu.is_finite()) {
        return Err(FusionError::Invalid(format!("{name}: calibration statistics are not finite (μ̄ {mu}, σ̄ {sigma})")));
    }
    let affine = match node.ln_affine() {
        Some((w, b)) => Some((vec_f32(w.as_tensor())?, vec_f32(b.as_tensor())?)),
        None => None,
    };
    let mut gains = vec![];
    for cons in consumers {
        let gain = match (&affine, cons.act_quant) {
            (None, Some(q)) => {
                if cons.bn.is_none() {
                    return Err(FusionError::Invalid(format!("{name}, {}: folding needs the BatchNorm after the conv", cons.name)));
                }
                let g = q.absorb_input_scale(c).map_err(|e| FusionError::Invalid(format!("{name}, {}: {e}", cons.name)))?;
                scale_bn(cons, g)?;
                g
            }
            (None, None) => {
                scale_bn(cons, c)?;
                c
            }
            (Some((gamma, beta)), None) if !cons.weight_quantized => {
                let a: Vec<f64> = gamma.iter().map(|g| *g as f64 * c).collect();
                if a.iter().any(|v| *v == 0.0 || !v.is_finite()) {
                    return Err(FusionError::Invalid(format!("{name}: an LN scale γ_c is zero or not finite; cannot fold")));
                }
                // W·(A⊙(h−μ̄) + β) = W'·(h−μ̄) + W·β with W' = W·A: the constant W·β leaves the
                // conv and the BN's running mean absorbs it (rm' = rm − W·β = rm − W'·(β/A)).
                rescale_consumer(cons, &a, None)?;
                let beta_over_a: Vec<f64> = beta.iter().zip(&a).map(|(b, a)| *b as f64 / a).collect();
                rescale_consumer(cons, &[1.0], Some(&beta_over_a))?;
                c
            }
            (Some(_), _) => {
                return Err(FusionError::Invalid(format!(
                    "{name}, {}: an affine LayerNorm (per-channel γ, β) cannot be folded into a quantized consumer (a per-tensor activation quantizer cannot absorb a per-channel scale); train with ln_affine = false (Eq. 6 has no affine) to fold",
                    cons.name
                )))
            }
        };
        gains.push((cons.name.clone(), gain));
    }
    node.set_folded(mu, c)?;
    Ok(FoldReport { node: node.node, mu_bar: mu, sigma_bar: sigma, locations: stats.n, gains })
}

/// The inverse of folding, used when Q-GBFusion enters a trained model ([`crate::gbf::GbfInit`]):
/// with the node's input statistics `stats` (of the α-scaled concat h_α), rescales every consumer
/// so that W'·LN(h_α) ≈ W·h, h the plain concat: weights ×σ̄/α_b(c) per input channel and BatchNorm
/// running means −Σ_c W_oc·μ̄/α_b(c). Without the LN (`ln = false`) the weights take 1/α_b(c)
/// and the node computes exactly what the Concat did. Consumers must not have calibrated
/// quantizers yet.
pub fn insert_node(node: &GbfNode, stats: &LnStats, consumers: &[Consumer]) -> Result<()> {
    if !node.balances() {
        return Ok(());
    }
    let alpha = node.alpha()?;
    let per_ch: Vec<f64> = node.widths.iter().zip(&alpha).flat_map(|(w, a)| std::iter::repeat_n(1.0 / a, *w)).collect();
    if !node.cfg.ln {
        // Without the LN the node only scales branch i by α_i: the consumers undo it exactly.
        for cons in consumers {
            rescale_consumer(cons, &per_ch, None)?;
        }
        return Ok(());
    }
    if stats.n == 0 {
        return Err(FusionError::Invalid(format!("node {}: no statistics for the calibrated insertion", node.node)));
    }
    let (mu, sigma) = (stats.mu_bar(), stats.sigma_bar(node.cfg.ln_eps));
    let scale: Vec<f64> = per_ch.iter().map(|p| p * sigma).collect();
    let shift: Vec<f64> = per_ch.iter().map(|p| p * mu).collect();
    for cons in consumers {
        // shift first (it uses the original weights), then the scale
        rescale_consumer(cons, &[1.0], Some(&shift))?;
        rescale_consumer(cons, &scale, None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gbf::GbfConfig;
    use crate::Fusion;
    use candle_core::Device;
    use q2_nn::{Feat, Mode, ParamStore};
    use q2_quant::QConv;

    fn consumer<'a>(c: &'a QConv<5, 3, 1, 1>) -> Consumer<'a> {
        Consumer { name: "c".into(), weight: &c.conv.weight, act_quant: None, weight_quantized: false, bn: Some((&c.conv.bn.0.running_mean, &c.conv.bn.0.running_var, 1e-3)) }
    }

    /// The calibrated insertion preserves the function of the plain Concat + consumer: exactly
    /// without the LN, and with it when every location has the same channel mean and variance
    /// (then LN is exactly the calibrated affine map).
    #[test]
    fn insertion_reproduces_the_concat_it_replaces() {
        let dev = Device::Cpu;
        // per location: channel values a permutation of one fixed vector (same μ_h and σ_h everywhere)
        let base = [0.3f32, 1.7, -0.4, 0.9, 2.2];
        let vals: Vec<f32> = (0..2 * 5 * 3).map(|i| base[(i / 6 + i % 6) % 5]).collect();
        let h = Tensor::from_vec(vals, (2, 5, 3, 1), &dev).unwrap().permute((0, 1, 3, 2)).unwrap().contiguous().unwrap();
        let (a, b) = (h.narrow(1, 0, 3).unwrap(), h.narrow(1, 3, 2).unwrap());
        for ln in [false, true] {
            let mut store = ParamStore::new(dev.clone(), 3);
            let node = GbfNode::new(12, &[3, 2], &GbfConfig { ln, ..GbfConfig::default() }, &mut store.scope("n")).unwrap();
            let conv: QConv<5, 3, 1, 1> = QConv::new(&mut store.scope("c"), &Default::default()).unwrap();
            let want = conv.forward(&Feat::new(h.clone()).unwrap(), Mode::Eval).unwrap().tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            node.start_stats().unwrap();
            node.fuse(&[&a, &b], Mode::Eval).unwrap();
            let st = node.take_stats().unwrap().unwrap();
            insert_node(&node, &st, &[consumer(&conv)]).unwrap();
            let y = node.fuse(&[&a, &b], Mode::Eval).unwrap();
            let got = conv.forward(&Feat::new(y).unwrap(), Mode::Eval).unwrap().tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let d = want.iter().zip(&got).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(d < 1e-4, "ln {ln}: {d}");
        }
    }

    #[test]
    fn residual_norm_matches_the_definition() {
        let h = [0.3, -1.2, 2.5, 0.7, 0.1];
        let (mu_bar, c, eps) = (0.2, 0.8, 1e-5);
        let n = h.len() as f64;
        let mu = h.iter().sum::<f64>() / n;
        let v = h.iter().map(|x| (x - mu) * (x - mu)).sum::<f64>() / n;
        let direct: f64 = h.iter().map(|x| ((x - mu) / (v + eps).sqrt() - c * (x - mu_bar)).powi(2)).sum::<f64>().sqrt();
        assert!((fold_residual_norm(&h, mu_bar, c, eps) - direct).abs() < 1e-12);
        let mut s = LnStats::default();
        s.add(&[1.0, 3.0], &[4.0, 0.0]);
        assert_eq!((s.mu_bar(), s.sigma_bar(0.0)), (2.0, 2.0f64.sqrt()));
    }
}
