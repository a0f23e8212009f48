//! q2-distill: Q-ADA, the paper's attention-distribution distillation (arXiv 2511.05898v2,
//! Sec. 3.3, Eq. 13–16). A frozen full-precision teacher f and the quantized student q are
//! compared at chosen feature levels; each (B, C, H, W) map X becomes, per sample b and channel
//! c, a distribution over the H·W positions, and the student's is pulled towards the teacher's.
//!
//! Per (b, c), with μ_c, σ_c the mean and population standard deviation over H·W:
//!
//! - Eq. 13 (distortion): Δ = |X − X̂|, X̂ = Q(X) by the quantizer that consumes X;
//! - Eq. 14 (statistics): z = |X − μ_c| / (σ_c + κ), r = Δ / (s_c + κ), s_c the quantizer's
//!   step (per tensor: one s for all c), σ_c when the quantizer has no step; r = 0 without Δ;
//! - Eq. 15 (saliency): S = log(1 + z²) + γ·log(1 + r²);
//! - attention Ã = sigmoid(S / T), then P_{c,ij} = Ã_{c,ij} / Σ_{i'j'} Ã_{c,i'j'} (teacher) and
//!   R likewise (student); an L1 normalisation, not a softmax;
//! - Eq. 16 (loss): JS(P, R) = ½ Σ P log(P/M) + ½ Σ R log(R/M), M = (P + R)/2; KL(P‖R) is the
//!   alternative.
//!
//! The loss is `weight · mean_levels mean_{b,c} D(P, R)`, see [`ada_loss`].
//!
//! Options ([`AdaConfig`]) and what is ours rather than the paper's (PAPER.md §3.2):
//!
//! - `divergence` (`js` | `kl`): both are in the paper (Table 4). The KL direction, teacher
//!   first (forward KL), is ours.
//! - `weight` 0.01 is the paper (App. 8). `gamma` 1 and `kappa` 1e-3 are ours (no values given).
//! - `temperature` T (default 1 = the paper) is a deviation. S ≥ 0 puts Ã in [0.5, 1) for
//!   every T, so the entries of a row of P differ by at most 2× ("flatness", PAPER.md §3.2
//!   item 4). T < 1 spreads small S over more of that range but cannot pass the factor 2; it
//!   does not cure the flatness.
//! - `teacher_delta`: the paper leaves the teacher's Δ open. `student_quantizer` (default,
//!   reading (a)) passes the teacher map through the student's quantizer (detached, same s_c);
//!   `zero` (reading (b)) sets Δ = 0 for the teacher.
//! - `r_grad`: `ste` (default) lets r send gradient into X and the quantizer's parameters
//!   through the quantizer's straight-through op; `detach` makes r a constant. z always carries
//!   gradient (through μ_c and σ_c too). The teacher never does.
//! - Reductions (mean over channels, batch and levels) are ours; the paper gives the per-channel
//!   loss only. σ_c is computed as √max(var, 1e-30) so constant channels keep finite gradients.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use q2_distill::{ada_loss, AdaConfig, StudentFeature};
//! let x = Tensor::arange(0f32, 512.0, &Device::Cpu).unwrap().reshape((2, 4, 8, 8)).unwrap().sin().unwrap();
//! let t = x.cos().unwrap();
//! let l = ada_loss(&AdaConfig::default(), &[StudentFeature { x: &x, quantizer: None }], &[t]).unwrap();
//! assert!(l.to_scalar::<f32>().unwrap() >= 0.0);
//! ```

pub mod config;
pub mod divergence;
pub mod error;
pub mod loss;
pub mod saliency;

pub use config::{AdaConfig, Divergence, RGrad, TeacherDelta};
pub use divergence::{attention_distribution, js_divergence, kl_divergence};
pub use error::{DistillError, Result};
pub use loss::{ada_level_loss, ada_loss, DistillLoss, StudentFeature};
pub use saliency::{channel_stats, saliency};
