//! DoReFa weight quantization (Zhou et al., 2016), the weight quantizer of PACT:
//! w_q = 2·quantize_b(tanh(w)/(2·max|tanh w|) + 1/2) − 1, here multiplied by m = max|tanh w| so
//! the weights keep their full-precision scale (see `paper/DEVIATIONS.md`). Straight-through on
//! the rounding only; m is differentiated, its gradient split evenly among tied maxima.

use crate::kernel::{par_min_max, rne, Kernel};

#[derive(Clone, Debug)]
pub struct DoReFa {
    pub bits: u32,
}

/// (m = max|tanh w|, number of levels n).
#[derive(Debug)]
pub struct DoReFaCtx {
    m: f32,
    n: f32,
}

impl DoReFa {
    #[inline(always)]
    fn quant(t: f32, m: f32, n: f32) -> f32 {
        let r = t / (2.0 * m) + 0.5;
        rne(r * n) / n
    }
}

impl Kernel for DoReFa {
    type Ctx = DoReFaCtx;

    fn name(&self) -> &'static str {
        "dorefa"
    }

    fn param_layout(&self) -> Vec<(&'static str, usize)> {
        vec![]
    }

    /// [Σ g·((2q−1) − t/m), number of tied maxima]
    fn num_acc(&self) -> usize {
        2
    }

    /// m = max|tanh w| = tanh(max|w|) (tanh is odd and increasing).
    fn prepare(&self, x: &[f32], _p: &[f32]) -> DoReFaCtx {
        let (lo, hi) = par_min_max(x);
        DoReFaCtx { m: lo.abs().max(hi.abs()).tanh(), n: ((1u32 << self.bits) - 1) as f32 }
    }

    #[inline(always)]
    fn forward(&self, c: &DoReFaCtx, x: &[f32], y: &mut [f32]) {
        if c.m == 0.0 {
            y.fill(0.0);
            return;
        }
        y.iter_mut().zip(x).for_each(|(y, &w)| *y = c.m * (2.0 * Self::quant(w.tanh(), c.m, c.n) - 1.0));
    }

    #[inline(always)]
    fn backward(&self, c: &DoReFaCtx, x: &[f32], g: &[f32], gx: &mut [f32], acc: &mut [f64], marks: &mut Vec<usize>, offset: usize) {
        for (i, ((&w, &g), gx)) in x.iter().zip(g).zip(gx.iter_mut()).enumerate() {
            let t = w.tanh();
            *gx = g * (1.0 - t * t);
            if c.m == 0.0 {
                continue;
            }
            let q = Self::quant(t, c.m, c.n);
            acc[0] += (g * ((2.0 * q - 1.0) - t / c.m)) as f64;
            if t.abs() == c.m {
                acc[1] += 1.0;
                marks.push(offset + i);
            }
        }
    }

    /// Adds the gradient through m to the tied maxima.
    fn finish(&self, c: &DoReFaCtx, x: &[f32], _: &[f32], acc: &[f64], marks: &[usize], gx: &mut [f32], _: &mut [f32]) {
        if c.m == 0.0 || marks.is_empty() {
            return;
        }
        let share = acc[0] / acc[1];
        for &i in marks {
            let t = x[i].tanh();
            gx[i] += (t.signum() as f64 * share * (1.0 - (t * t) as f64)) as f32;
        }
    }

    fn init(&self, _x: &[f32]) -> Vec<f32> {
        vec![]
    }

    fn default_params(&self) -> Vec<f32> {
        vec![]
    }
}
