//! PACT (Choi et al., 2018) activations: a learned clipping level α, y = clip(x, 0, α) quantized
//! to 2^b − 1 uniform steps, straight-through input gradient inside (0, α), and ∂y/∂α = 1 where
//! the input is clipped at α (PACT Eq. 3; no rounding term).

use crate::kernel::{clamp, map_reduce, par_min_max, rne, Kernel};

/// How PACT's α is initialised.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PactInit {
    /// A fixed value (the PACT paper starts at 10).
    Fixed(f32),
    /// The calibration batch's maximum.
    Max,
}

#[derive(Clone, Debug)]
pub struct Pact {
    pub bits: u32,
    pub init: PactInit,
}

impl Pact {
    fn levels(&self) -> f32 {
        ((1u32 << self.bits) - 1) as f32
    }
}

/// PACT Eq. 1–2 with the step sc = α/n: y = ⌊clip(x/sc, 0, n)⌉·sc.
#[inline(always)]
pub fn pact_forward(x: f32, sc: f32, n: f32) -> f32 {
    rne(clamp(x / sc, 0.0, n)) * sc
}

impl Kernel for Pact {
    type Ctx = f32;

    fn name(&self) -> &'static str {
        "pact"
    }

    fn param_layout(&self) -> Vec<(&'static str, usize)> {
        vec![("alpha", 1)]
    }

    fn num_acc(&self) -> usize {
        1
    }

    fn validate(&self, p: &[f32]) -> Result<(), String> {
        if p[0] > 0.0 && p[0].is_finite() {
            Ok(())
        } else {
            Err(format!("clip level alpha must be positive and finite, got {}", p[0]))
        }
    }

    /// The step α/n.
    fn prepare(&self, _x: &[f32], p: &[f32]) -> f32 {
        p[0] / self.levels()
    }

    #[inline(always)]
    fn forward(&self, &sc: &f32, x: &[f32], y: &mut [f32]) {
        let n = self.levels();
        y.iter_mut().zip(x).for_each(|(y, &x)| *y = pact_forward(x, sc, n));
    }

    /// PACT Eq. 3: ∂y/∂x = 1 on (0, α), ∂y/∂α = 1 where x ≥ α.
    #[inline(always)]
    fn backward(&self, &sc: &f32, x: &[f32], g: &[f32], gx: &mut [f32], acc: &mut [f64]) {
        let n = self.levels();
        map_reduce::<1>(x, g, gx, acc, |x, g| {
            let v = x / sc;
            (if (v > 0.0) & (v < n) { g } else { 0.0 }, [if v >= n { g } else { 0.0 }])
        });
    }

    fn finish(&self, _: &f32, _: &[f32], _: &[f32], acc: &[f64], _: &mut [f32], gp: &mut [f32]) {
        gp[0] = acc[0] as f32;
    }

    fn init(&self, x: &[f32]) -> Vec<f32> {
        match self.init {
            PactInit::Fixed(a) => vec![a],
            PactInit::Max => vec![par_min_max(x).1.max(1e-8)],
        }
    }

    fn default_params(&self) -> Vec<f32> {
        match self.init {
            PactInit::Fixed(a) => vec![a],
            PactInit::Max => vec![10.0],
        }
    }

    fn step(&self, p: &[f32]) -> Option<f32> {
        Some(p[0] / self.levels())
    }

    /// PACT_α(c·v) = c·PACT_{α/c}(v).
    fn absorb_input_scale(&self, p: &mut [f32], c: f32) -> Option<f32> {
        p[0] /= c;
        Some(c)
    }
}
