//! The non-learned min–max baseline (DoReFa-style): the grid spans the data's own range, taken
//! per tensor or per channel and treated as a constant in the backward pass, so nothing is
//! clipped and the input gradient passes straight through everywhere.
//! Unsigned: asymmetric [min, max] with 2^b levels. Signed: r = x/(2·max|x|) + 1/2 quantized to
//! 2^b levels and mapped back to [−max|x|, max|x|].

use crate::kernel::{par_min_max, rne, Kernel};

#[derive(Clone, Debug)]
pub struct MinMax {
    pub bits: u32,
    pub signed: bool,
}

/// (offset, step) for unsigned; (max|x|, unused) for signed.
pub type MinMaxCtx = (f32, f32);

impl MinMax {
    fn n(&self) -> f32 {
        ((1u32 << self.bits) - 1) as f32
    }
}

impl Kernel for MinMax {
    type Ctx = MinMaxCtx;

    fn name(&self) -> &'static str {
        "minmax"
    }

    fn param_layout(&self) -> Vec<(&'static str, usize)> {
        vec![]
    }

    fn num_acc(&self) -> usize {
        0
    }

    fn prepare(&self, x: &[f32], _p: &[f32]) -> MinMaxCtx {
        let (lo, hi) = par_min_max(x);
        if self.signed {
            (lo.abs().max(hi.abs()), 0.0)
        } else {
            (lo, (hi - lo) / self.n())
        }
    }

    #[inline(always)]
    fn forward(&self, &(a, b): &MinMaxCtx, x: &[f32], y: &mut [f32]) {
        let n = self.n();
        if self.signed {
            let m = a;
            if m == 0.0 {
                y.fill(0.0);
            } else {
                y.iter_mut().zip(x).for_each(|(y, &x)| *y = m * (2.0 * (rne((x / (2.0 * m) + 0.5) * n) / n) - 1.0));
            }
        } else {
            let (lo, sc) = (a, b);
            if sc == 0.0 {
                y.copy_from_slice(x);
            } else {
                y.iter_mut().zip(x).for_each(|(y, &x)| *y = rne((x - lo) / sc) * sc + lo);
            }
        }
    }

    #[inline(always)]
    fn backward(&self, _: &MinMaxCtx, _x: &[f32], g: &[f32], gx: &mut [f32], _: &mut [f64]) {
        gx.copy_from_slice(g);
    }

    fn finish(&self, _: &MinMaxCtx, _: &[f32], _: &[f32], _: &[f64], _: &mut [f32], _: &mut [f32]) {}

    fn init(&self, _x: &[f32]) -> Vec<f32> {
        vec![]
    }

    fn default_params(&self) -> Vec<f32> {
        vec![]
    }

    /// The grid follows the data's range, which scales with c: Q(c·v) = c·Q(v).
    fn absorb_input_scale(&self, _p: &mut [f32], c: f32) -> Option<f32> {
        Some(c)
    }
}
