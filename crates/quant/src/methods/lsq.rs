//! LSQ (Esser et al., ICLR 2020): learned step size `s`, clip to [−Qn, Qp], round half to even,
//! straight-through input gradient inside the open clip interior, and the step gradient of LSQ
//! Eq. 3 scaled by `g = 1/sqrt(numel·Qp)`.

use crate::kernel::{clamp, map_reduce, rne, Kernel};

/// LSQ on a signed (weights: [−2^(b−1), 2^(b−1)−1]) or unsigned ([0, 2^b−1]) grid.
#[derive(Clone, Debug)]
pub struct Lsq {
    pub bits: u32,
    pub signed: bool,
}

impl Lsq {
    /// (Qn, Qp) of LSQ Eq. 1.
    pub fn range(&self) -> (f32, f32) {
        if self.signed {
            ((1u32 << (self.bits - 1)) as f32, ((1u32 << (self.bits - 1)) - 1) as f32)
        } else {
            (0.0, ((1u32 << self.bits) - 1) as f32)
        }
    }
}

/// LSQ Eq. 1–2: v̂ = ⌊clip(v/s, −Qn, Qp)⌉·s.
#[inline(always)]
pub fn lsq_forward(x: f32, s: f32, qn: f32, qp: f32) -> f32 {
    rne(clamp(x / s, -qn, qp)) * s
}

/// LSQ Eq. 3 and 5: (∂v̂/∂v mask, ∂v̂/∂s) at one element. Written with non-short-circuit
/// comparisons and selects so that the loop vectorises.
#[inline(always)]
pub fn lsq_grads(x: f32, s: f32, qn: f32, qp: f32) -> (bool, f32) {
    let v = x / s;
    let inside = (v > -qn) & (v < qp);
    let clipped = if v <= -qn { -qn } else { qp };
    (inside, if inside { rne(v) - v } else { clipped })
}

/// LSQ's gradient scale g = 1/sqrt(numel·Qp).
pub fn grad_scale(numel: usize, qp: f32) -> f64 {
    1.0 / ((numel as f64) * qp as f64).sqrt()
}

impl Kernel for Lsq {
    type Ctx = f32;

    fn name(&self) -> &'static str {
        "lsq"
    }

    fn param_layout(&self) -> Vec<(&'static str, usize)> {
        vec![("s", 1)]
    }

    fn num_acc(&self) -> usize {
        1
    }

    fn validate(&self, p: &[f32]) -> Result<(), String> {
        if p[0] > 0.0 && p[0].is_finite() {
            Ok(())
        } else {
            Err(format!("step s must be positive and finite, got {}", p[0]))
        }
    }

    fn prepare(&self, _x: &[f32], p: &[f32]) -> f32 {
        p[0]
    }

    #[inline(always)]
    fn forward(&self, &s: &f32, x: &[f32], y: &mut [f32]) {
        let (qn, qp) = self.range();
        y.iter_mut().zip(x).for_each(|(y, &x)| *y = lsq_forward(x, s, qn, qp));
    }

    #[inline(always)]
    fn backward(&self, &s: &f32, x: &[f32], g: &[f32], gx: &mut [f32], acc: &mut [f64]) {
        let (qn, qp) = self.range();
        map_reduce::<1>(x, g, gx, acc, |x, g| {
            let (inside, d) = lsq_grads(x, s, qn, qp);
            (if inside { g } else { 0.0 }, [g * d])
        });
    }

    fn finish(&self, _: &f32, x: &[f32], _: &[f32], acc: &[f64], _: &mut [f32], gp: &mut [f32]) {
        gp[0] = (acc[0] * grad_scale(x.len(), self.range().1)) as f32;
    }

    /// s = 2·mean|x|/sqrt(Qp) (LSQ §2.1), floored at 1e-8.
    fn init(&self, x: &[f32]) -> Vec<f32> {
        let mean_abs = crate::kernel::par_sum(x, |v| v.abs() as f64) / x.len().max(1) as f64;
        vec![((2.0 * mean_abs / (self.range().1 as f64).sqrt()) as f32).max(1e-8)]
    }

    fn default_params(&self) -> Vec<f32> {
        vec![1.0]
    }

    fn step(&self, p: &[f32]) -> Option<f32> {
        Some(p[0])
    }

    /// Q_s(c·v) = c·Q_{s/c}(v).
    fn absorb_input_scale(&self, p: &mut [f32], c: f32) -> Option<f32> {
        p[0] /= c;
        Some(c)
    }
}
