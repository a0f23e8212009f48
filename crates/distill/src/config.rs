//! [`AdaConfig`]: the options of the Q-ADA loss, with the paper's values as defaults.

use serde::{Deserialize, Serialize};

use crate::error::{invalid, Result};

/// The per-channel divergence between the teacher map P and the student map R.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Divergence {
    /// Jensen–Shannon (Eq. 16), the paper's main choice.
    Js,
    /// Forward KL(P‖R), teacher first (the paper's ablation; the direction is ours).
    Kl,
}

/// How the teacher's distortion Δ is formed (the paper leaves it open, PAPER.md §3.2 item 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TeacherDelta {
    /// Reading (a): X̂ = Q_student(X_teacher), detached, with the student's step s_c.
    StudentQuantizer,
    /// Reading (b): Δ = 0, the teacher saliency uses only z.
    Zero,
}

/// Whether the student's r term carries gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RGrad {
    /// X̂ = Q(X) through the quantizer's straight-through op: r sends gradient into X and into
    /// the quantizer's parameters.
    Ste,
    /// r is a constant; only z (with μ_c, σ_c) sends gradient into X.
    Detach,
}

/// Q-ADA options. Unknown keys are rejected; missing keys take the defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaConfig {
    pub divergence: Divergence,
    /// Loss weight (paper: 0.01).
    pub weight: f64,
    /// γ of Eq. 15: weight of the quantization-vulnerability term.
    pub gamma: f64,
    /// κ of Eq. 14: keeps the denominators positive.
    pub kappa: f64,
    /// T in Ã = sigmoid(S / T); 1 is the paper. Whatever T, a row's max/min stays ≤ 2.
    pub temperature: f64,
    /// Not in the paper: subtract each channel's spatial mean of S before the sigmoid, so that
    /// Ã spans (0, 1) and T can sharpen the maps (the paper's maps are nearly flat, PAPER.md §3.2
    /// item 4). Default off.
    pub centre: bool,
    pub teacher_delta: TeacherDelta,
    pub r_grad: RGrad,
}

impl Default for AdaConfig {
    fn default() -> Self {
        Self {
            divergence: Divergence::Js,
            weight: 0.01,
            gamma: 1.0,
            kappa: 1e-3,
            temperature: 1.0,
            centre: false,
            teacher_delta: TeacherDelta::StudentQuantizer,
            r_grad: RGrad::Ste,
        }
    }
}

impl AdaConfig {
    /// Checks the numeric options: weight ≥ 0, γ ≥ 0, κ > 0, T > 0, all finite.
    pub fn validate(&self) -> Result<()> {
        let checks = [
            ("weight", self.weight, self.weight >= 0.0, ">= 0"),
            ("gamma", self.gamma, self.gamma >= 0.0, ">= 0"),
            ("kappa", self.kappa, self.kappa > 0.0, "> 0"),
            ("temperature", self.temperature, self.temperature > 0.0, "> 0"),
        ];
        for (name, v, ok, want) in checks {
            if !ok || !v.is_finite() {
                return invalid(format!("Q-ADA {name} must be finite and {want}, got {v}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_paper() {
        let c = AdaConfig::default();
        assert!(c.validate().is_ok());
        assert_eq!((c.divergence, c.weight, c.temperature), (Divergence::Js, 0.01, 1.0));
    }

    #[test]
    fn bad_values_are_rejected() {
        let d = AdaConfig::default();
        for c in [
            AdaConfig { weight: -1.0, ..d.clone() },
            AdaConfig { weight: f64::NAN, ..d.clone() },
            AdaConfig { gamma: -0.1, ..d.clone() },
            AdaConfig { kappa: 0.0, ..d.clone() },
            AdaConfig { temperature: 0.0, ..d.clone() },
            AdaConfig { temperature: f64::INFINITY, ..d.clone() },
        ] {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }
}
