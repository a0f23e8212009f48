//! LSQ+ (Bhalgat et al., CVPR-W 2020): LSQ with a learnable offset β (asymmetric grid for
//! activations with negative values, e.g. after SiLU), the gradient scale applied to both s and
//! β, and the paper's initialisations (min–max or MSE for activations, μ±3σ for weights).

use crate::kernel::{clamp, map_reduce, par_min_max, par_sum, rne, Kernel};
use crate::methods::lsq::grad_scale;

/// How LSQ+ initialises (s, β) from data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LsqPlusInit {
    /// Weights: s = max(|μ−3σ|, |μ+3σ|)/2^(b−1), β = 0.
    Weights,
    /// Activations: s = (max−min)/(p−n), β = min − n·s.
    MinMax,
    /// Activations: min–max refined by minimising ‖Q(x) − x‖² with Adam (200 steps).
    Mse,
}

#[derive(Clone, Debug)]
pub struct LsqPlus {
    pub bits: u32,
    pub signed: bool,
    /// Whether β is a parameter (activations); weights use β = 0 and learn only s.
    pub offset: bool,
    pub init: LsqPlusInit,
}

impl LsqPlus {
    /// (n, p): the integer grid [n, p].
    pub fn range(&self) -> (f32, f32) {
        if self.signed {
            (-((1u32 << (self.bits - 1)) as f32), ((1u32 << (self.bits - 1)) - 1) as f32)
        } else {
            (0.0, ((1u32 << self.bits) - 1) as f32)
        }
    }
}

/// LSQ+ forward: x̂ = ⌊clip((x−β)/s, n, p)⌉·s + β.
#[inline(always)]
pub fn lsq_plus_forward(x: f32, s: f32, beta: f32, n: f32, p: f32) -> f32 {
    rne(clamp((x - beta) / s, n, p)) * s + beta
}

impl Kernel for LsqPlus {
    type Ctx = (f32, f32);

    fn name(&self) -> &'static str {
        "lsq_plus"
    }

    fn param_layout(&self) -> Vec<(&'static str, usize)> {
        if self.offset {
            vec![("s", 1), ("beta", 1)]
        } else {
            vec![("s", 1)]
        }
    }

    fn num_acc(&self) -> usize {
        2
    }

    fn validate(&self, p: &[f32]) -> Result<(), String> {
        if !(p[0] > 0.0 && p[0].is_finite()) {
            return Err(format!("step s must be positive and finite, got {}", p[0]));
        }
        if self.offset && !p[1].is_finite() {
            return Err(format!("offset beta must be finite, got {}", p[1]));
        }
        Ok(())
    }

    fn prepare(&self, _x: &[f32], p: &[f32]) -> (f32, f32) {
        (p[0], if self.offset { p[1] } else { 0.0 })
    }

    #[inline(always)]
    fn forward(&self, &(s, beta): &(f32, f32), x: &[f32], y: &mut [f32]) {
        let (n, p) = self.range();
        y.iter_mut().zip(x).for_each(|(y, &x)| *y = lsq_plus_forward(x, s, beta, n, p));
    }

    #[inline(always)]
    fn backward(&self, &(s, beta): &(f32, f32), x: &[f32], g: &[f32], gx: &mut [f32], acc: &mut [f64]) {
        let (n, p) = self.range();
        map_reduce::<2>(x, g, gx, acc, |x, g| {
            let v = (x - beta) / s;
            let inside = (v > n) & (v < p);
            let clipped = if v <= n { n } else { p };
            let d = if inside { rne(v) - v } else { clipped };
            (if inside { g } else { 0.0 }, [g * d, if inside { 0.0 } else { g }])
        });
    }

    fn finish(&self, _: &(f32, f32), x: &[f32], _: &[f32], acc: &[f64], _: &mut [f32], gp: &mut [f32]) {
        let gs = grad_scale(x.len(), self.range().1);
        gp[0] = (acc[0] * gs) as f32;
        if self.offset {
            gp[1] = (acc[1] * gs) as f32;
        }
    }

    fn init(&self, x: &[f32]) -> Vec<f32> {
        let (n, p) = self.range();
        let (s, beta) = match self.init {
            LsqPlusInit::Weights => {
                let len = x.len().max(2) as f64;
                let mu = par_sum(x, |v| v as f64) / x.len().max(1) as f64;
                let sigma = (par_sum(x, |v| (v as f64 - mu).powi(2)) / (len - 1.0)).sqrt();
                let s = (mu - 3.0 * sigma).abs().max((mu + 3.0 * sigma).abs()) / (1u32 << (self.bits - 1)) as f64;
                (s as f32, 0.0)
            }
            LsqPlusInit::MinMax | LsqPlusInit::Mse => {
                let (lo, hi) = par_min_max(x);
                let s = (hi - lo) / (p - n);
                (s, lo - n * s)
            }
        };
        let s = s.max(1e-8);
        let (s, beta) = if self.init == LsqPlusInit::Mse { self.mse_refine(x, s, beta) } else { (s, beta) };
        if self.offset {
            vec![s, beta]
        } else {
            vec![s]
        }
    }

    fn default_params(&self) -> Vec<f32> {
        if self.offset {
            vec![1.0, 0.0]
        } else {
            vec![1.0]
        }
    }

    fn step(&self, p: &[f32]) -> Option<f32> {
        Some(p[0])
    }

    /// Q_{s,β}(c·v) = c·Q_{s/c, β/c}(v).
    fn absorb_input_scale(&self, p: &mut [f32], c: f32) -> Option<f32> {
        for v in p.iter_mut() {
            *v /= c;
        }
        Some(c)
    }
}

impl LsqPlus {
    /// LSQ+'s MSE initialisation: minimise mean (Q(x) − x)² over (s, β) with Adam, starting from
    /// min–max, using this kernel's own straight-through parameter gradients.
    fn mse_refine(&self, x: &[f32], s0: f32, b0: f32) -> (f32, f32) {
        let k = LsqPlus { offset: true, init: LsqPlusInit::MinMax, ..self.clone() };
        let mse = |s: f32, b: f32| -> f64 {
            let y = crate::kernel::forward(&k, x, &[s, b], 1);
            y.iter().zip(x).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / x.len() as f64
        };
        let (mut s, mut b) = (s0 as f64, b0 as f64);
        let (mut best, mut best_err) = ((s0, b0), mse(s0, b0));
        let (mut m, mut v) = ([0f64; 2], [0f64; 2]);
        let lr = 0.01 * s;
        let gs = grad_scale(x.len(), self.range().1);
        for t in 1..=200 {
            let y = crate::kernel::forward(&k, x, &[s as f32, b as f32], 1);
            let g: Vec<f32> = y.iter().zip(x).map(|(a, b)| 2.0 * (a - b) / x.len() as f32).collect();
            let (_, gp) = crate::kernel::backward(&k, x, &[s as f32, b as f32], &g, 1);
            for i in 0..2 {
                let gi = gp[i] as f64 / gs; // undo LSQ's gradient scale: plain gradient of the MSE
                m[i] = 0.9 * m[i] + 0.1 * gi;
                v[i] = 0.999 * v[i] + 0.001 * gi * gi;
                let step = lr * (m[i] / (1.0 - 0.9f64.powi(t))) / ((v[i] / (1.0 - 0.999f64.powi(t))).sqrt() + 1e-12);
                if i == 0 {
                    s = (s - step).max(1e-8);
                } else {
                    b -= step;
                }
            }
            let e = mse(s as f32, b as f32);
            if e < best_err {
                best_err = e;
                best = (s as f32, b as f32);
            }
        }
        best
    }
}
