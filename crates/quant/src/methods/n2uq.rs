//! N2UQ (Liu et al., CVPR 2022), following the official code (`LTQ`, `HardQuantizeConv`):
//! - [`N2uqAct`]: activations with learned, non-uniform input thresholds and uniform output
//!   levels; the generalized straight-through estimator (G-STE) back-propagates through a
//!   piecewise-linear ramp whose segment lengths are the learned intervals `a`;
//! - [`N2uqWeight`]: weights rescaled per output channel by the detached entropy-preserving
//!   factor c = ((2^b−1)/2^(b−1))·mean|W|, clipped to [−1, 1], quantized to 2^b uniform levels
//!   (no zero level), with the straight-through gradient dL/dW = dL/dy / c.

use crate::kernel::{clamp, par_min_max, par_sum, rne, Kernel};

/// Interval lengths below this are clamped (and get no gradient), as `LTQ.eps`.
pub const EPS: f32 = 1e-3;

/// How the activation quantizer's parameters start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum N2uqInit {
    /// The official code: start 0, a_i = 2/n, scale1 = scale2 = 1 (inputs assumed in [0, 2]).
    Official,
    /// scale1 = 2/max(x), scale2 = max(x)/2: the identity on [0, max x] at the start.
    Calibrated,
}

/// N2UQ activation quantizer; parameters `start`, `a` (n = 2^b − 1 values), `scale1`, `scale2`.
#[derive(Clone, Debug)]
pub struct N2uqAct {
    pub bits: u32,
    pub init: N2uqInit,
}

/// Up to this n = 2^b − 1 (5 bits) thresholds and bounds are scanned linearly in blocks of 8
/// lanes, which vectorises; above it each element binary-searches a bucket table.
const LINEAR_MAX_N: usize = 31;

/// Output levels of 8 inputs x' = x·scale1: Δ is added once per threshold passed. The passed
/// thresholds are a prefix (they are sorted), so the sum repeats exactly the f32 additions that
/// built L_k, and adding 0.0 leaves it unchanged: the result is L_k bit for bit.
#[inline(always)]
fn levels8(thresholds: &[f32], delta: f32, xs: &[f32; 8]) -> [f32; 8] {
    let mut acc = [0f32; 8];
    for &t in thresholds {
        for l in 0..8 {
            acc[l] += if xs[l] > t { delta } else { 0.0 };
        }
    }
    acc
}

/// Sorted breakpoints with a bucket table for O(1) expected "how many are < v" queries.
#[derive(Debug)]
struct Breaks {
    v: Vec<f32>,
    lo: f32,
    inv_w: f32,
    first: Vec<u16>,
}

impl Breaks {
    fn new(v: Vec<f32>) -> Self {
        let (lo, hi) = (v[0], v[v.len() - 1]);
        let nb = 4 * v.len();
        let inv_w = if hi > lo { nb as f32 / (hi - lo) } else { 0.0 };
        let first = (0..nb)
            .map(|b| {
                let edge = lo + b as f32 / inv_w.max(f32::MIN_POSITIVE);
                v.partition_point(|t| *t < edge) as u16
            })
            .collect();
        Self { v, lo, inv_w, first }
    }

    /// #{i : v_i < x}; exact whatever the bucket rounding (the loops fix the start up).
    #[inline(always)]
    fn count_less(&self, x: f32) -> usize {
        let b = (((x - self.lo) * self.inv_w) as usize).min(self.first.len() - 1);
        let mut k = self.first[b] as usize;
        while k > 0 && self.v[k - 1] >= x {
            k -= 1;
        }
        while k < self.v.len() && self.v[k] < x {
            k += 1;
        }
        k
    }
}

/// Per-call state of the activation quantizer: clamped intervals, thresholds, levels, bounds.
#[derive(Debug)]
pub struct N2uqCtx {
    s1: f32,
    s2: f32,
    delta: f32,
    a_pos: Vec<f32>,
    live: Vec<bool>,
    thresholds: Breaks,
    levels: Vec<f32>,
    bounds: Breaks,
}

impl N2uqAct {
    pub fn n(&self) -> usize {
        (1usize << self.bits) - 1
    }

    /// Output-level step Δ = 2/n (before scale2).
    pub fn delta(&self) -> f32 {
        (2.0f64 / self.n() as f64) as f32
    }

    /// Splits a packed parameter row into (start, a, scale1, scale2).
    pub fn unpack<'a>(&self, p: &'a [f32]) -> (f32, &'a [f32], f32, f32) {
        let n = self.n();
        (p[0], &p[1..1 + n], p[1 + n], p[2 + n])
    }
}

impl Kernel for N2uqAct {
    type Ctx = N2uqCtx;

    fn name(&self) -> &'static str {
        "n2uq"
    }

    fn param_layout(&self) -> Vec<(&'static str, usize)> {
        vec![("start", 1), ("a", self.n()), ("scale1", 1), ("scale2", 1)]
    }

    /// [Σ g·L_k, then per segment: Σ g, Σ g·(x'−B_i), Σ g·x]
    fn num_acc(&self) -> usize {
        1 + 3 * self.n()
    }

    fn validate(&self, p: &[f32]) -> Result<(), String> {
        if let Some(v) = p.iter().find(|v| !v.is_finite()) {
            return Err(format!("parameters must be finite, got {v}"));
        }
        Ok(())
    }

    fn prepare(&self, _x: &[f32], p: &[f32]) -> N2uqCtx {
        let (start, a, s1, s2) = self.unpack(p);
        let n = self.n();
        let delta = self.delta();
        let a_pos: Vec<f32> = a.iter().map(|&v| if v > EPS { v } else { EPS }).collect();
        let mut t = Vec::with_capacity(n);
        let mut levels = vec![0f32; n + 1];
        let mut bounds = Vec::with_capacity(n + 1);
        bounds.push(start + 0.0);
        for i in 0..n {
            t.push(if i == 0 { start + a_pos[0] / 2.0 } else { t[i - 1] + (a_pos[i - 1] / 2.0 + a_pos[i] / 2.0) });
            levels[i + 1] = levels[i] + delta;
            bounds.push(bounds[i] + a_pos[i]);
        }
        N2uqCtx {
            s1,
            s2,
            delta,
            live: a.iter().map(|&v| v > EPS).collect(),
            a_pos,
            thresholds: Breaks::new(t),
            levels,
            bounds: Breaks::new(bounds),
        }
    }

    #[inline(always)]
    fn forward(&self, c: &N2uqCtx, x: &[f32], y: &mut [f32]) {
        let mut done = 0;
        if self.n() <= LINEAR_MAX_N {
            for (xc, yc) in x.chunks_exact(8).zip(y.chunks_exact_mut(8)) {
                let xs: [f32; 8] = std::array::from_fn(|l| xc[l] * c.s1);
                let lv = levels8(&c.thresholds.v, c.delta, &xs);
                for l in 0..8 {
                    yc[l] = lv[l] * c.s2;
                }
            }
            done = x.len() / 8 * 8;
        }
        for (y, &x) in y[done..].iter_mut().zip(&x[done..]) {
            *y = c.levels[c.thresholds.count_less(x * c.s1)] * c.s2;
        }
    }

    #[inline(always)]
    fn backward(&self, c: &N2uqCtx, x: &[f32], g: &[f32], gx: &mut [f32], acc: &mut [f64]) {
        let n = self.n();
        let b = &c.bounds.v;
        let (top, bottom) = (b[n], b[0]);
        let (head, rest) = acc.split_at_mut(1);
        let (s_g, rest) = rest.split_at_mut(n);
        let (s_gd, s_gx) = rest.split_at_mut(n);
        let mut s_level = [0f64; 8];
        let mut done = 0;
        if n <= LINEAR_MAX_N {
            // Blocks of 8 lanes: levels and segments by linear scans over the (few) sorted
            // thresholds and bounds, which vectorise; then the per-segment sums, lane by lane.
            let m = 8 * (n + 1);
            let mut bins = vec![0f64; 3 * m];
            for ((xc, gc), gxc) in x.chunks_exact(8).zip(g.chunks_exact(8)).zip(gx.chunks_exact_mut(8)) {
                let xs: [f32; 8] = std::array::from_fn(|l| xc[l] * c.s1);
                let lv = levels8(&c.thresholds.v, c.delta, &xs);
                // The segment is the number of interior bounds passed: the same vectorised scan.
                let seg = levels8(&b[1..n], 1.0, &xs);
                let seg: [usize; 8] = std::array::from_fn(|l| seg[l] as usize);
                let ca: [f32; 8] = std::array::from_fn(|l| c.a_pos[seg[l]]);
                let cb: [f32; 8] = std::array::from_fn(|l| b[seg[l]]);
                let mut inside = [false; 8];
                for l in 0..8 {
                    s_level[l] += (gc[l] * lv[l]) as f64;
                    inside[l] = (xs[l] > bottom) & (xs[l] < top);
                    let slope = c.delta / ca[l];
                    gxc[l] = if inside[l] { gc[l] * c.s2 * c.s1 * slope } else { 0.0 };
                }
                // Lane-private bins, so consecutive elements never wait on the same accumulator;
                // clipped lanes go to a discarded bin (segment n) instead of branching.
                for l in 0..8 {
                    let i = 8 * (if inside[l] { seg[l] } else { n }) + l;
                    bins[i] += gc[l] as f64;
                    bins[m + i] += (gc[l] * (xs[l] - cb[l])) as f64;
                    bins[2 * m + i] += (gc[l] * xc[l]) as f64;
                }
            }
            for i in 0..n {
                s_g[i] += bins[8 * i..8 * i + 8].iter().sum::<f64>();
                s_gd[i] += bins[m + 8 * i..m + 8 * i + 8].iter().sum::<f64>();
                s_gx[i] += bins[2 * m + 8 * i..2 * m + 8 * i + 8].iter().sum::<f64>();
            }
            done = x.len() / 8 * 8;
        }
        for ((&x, &g), gx) in x[done..].iter().zip(&g[done..]).zip(gx[done..].iter_mut()) {
            let xs = x * c.s1;
            s_level[0] += (g * c.levels[c.thresholds.count_less(xs)]) as f64;
            // Below (or NaN) or at/above the top: clipped, no gradient.
            let inside = xs > bottom && xs < top;
            if !inside {
                *gx = 0.0;
                continue;
            }
            let i = c.bounds.count_less(xs) - 1;
            let slope = c.delta / c.a_pos[i];
            *gx = g * c.s2 * c.s1 * slope;
            s_g[i] += g as f64;
            s_gd[i] += (g * (xs - b[i])) as f64;
            s_gx[i] += (g * x) as f64;
        }
        head[0] += s_level.iter().sum::<f64>();
    }

    fn finish(&self, c: &N2uqCtx, _: &[f32], _: &[f32], acc: &[f64], _: &mut [f32], gp: &mut [f32]) {
        let n = self.n();
        let (s_g, s_gd, s_gx) = (&acc[1..1 + n], &acc[1 + n..1 + 2 * n], &acc[1 + 2 * n..1 + 3 * n]);
        let (s2, d) = (c.s2 as f64, c.delta as f64);
        let ap: Vec<f64> = c.a_pos.iter().map(|&v| v as f64).collect();
        let per_seg: Vec<f64> = (0..n).map(|i| s_g[i] / ap[i]).collect();
        // start
        gp[0] = (-s2 * d * per_seg.iter().sum::<f64>()) as f32;
        // a_j: segments above j move with B_{i>j}; segment j's own slope changes.
        let mut above = 0f64;
        for j in (0..n).rev() {
            let gj = -s2 * d * (above + s_gd[j] / (ap[j] * ap[j]));
            gp[1 + j] = if c.live[j] { gj as f32 } else { 0.0 };
            above += per_seg[j];
        }
        // scale1, scale2
        gp[1 + n] = (s2 * d * (0..n).map(|i| s_gx[i] / ap[i]).sum::<f64>()) as f32;
        gp[2 + n] = acc[0] as f32;
    }

    fn init(&self, x: &[f32]) -> Vec<f32> {
        let n = self.n();
        let (s1, s2) = match self.init {
            N2uqInit::Official => (1.0, 1.0),
            N2uqInit::Calibrated => {
                let m = par_min_max(x).1;
                let m = if m > 0.0 && m.is_finite() { m } else { 1.0 };
                (2.0 / m, m / 2.0)
            }
        };
        let mut p = vec![0.0];
        p.extend(std::iter::repeat_n((2.0f64 / n as f64) as f32, n));
        p.extend([s1, s2]);
        p
    }

    fn default_params(&self) -> Vec<f32> {
        N2uqAct { init: N2uqInit::Official, ..self.clone() }.init(&[])
    }

    /// Mean clamped interval in input units: mean(a⁺)/scale1 (PAPER.md §8.5).
    fn step(&self, p: &[f32]) -> Option<f32> {
        let (_, a, s1, _) = self.unpack(p);
        let mean = a.iter().map(|&v| v.max(EPS) as f64).sum::<f64>() / a.len() as f64;
        Some((mean / s1 as f64) as f32)
    }

    /// The input scale multiplies scale1; the output levels do not depend on it (gain 1).
    fn absorb_input_scale(&self, p: &mut [f32], c: f32) -> Option<f32> {
        let i = 1 + self.n();
        p[i] *= c;
        Some(1.0)
    }
}

/// N2UQ weight quantizer (per output channel, no parameters).
#[derive(Clone, Debug)]
pub struct N2uqWeight {
    pub bits: u32,
}

impl N2uqWeight {
    /// The entropy-preserving scale c = ((2^b−1)/2^(b−1))·mean|W| of one channel.
    pub fn scale(&self, w: &[f32]) -> f32 {
        let gamma = (((1u32 << self.bits) - 1) as f64 / (1u32 << (self.bits - 1)) as f64) as f32;
        let mean = (par_sum(w, |v| v.abs() as f64) / w.len().max(1) as f64) as f32;
        gamma * mean
    }

    /// y = c·(⌊(clip(w/c, −1, 1) + 1)·h⌉/h − 1) with h = (2^b − 1)/2, for a given c.
    #[inline(always)]
    pub fn quantize_with(&self, w: f32, c: f32) -> f32 {
        if c == 0.0 {
            return 0.0;
        }
        let h = ((1u32 << self.bits) - 1) as f32 / 2.0;
        let wc = clamp(w / c, -1.0, 1.0);
        c * (rne((wc + 1.0) * h) / h - 1.0)
    }
}

impl Kernel for N2uqWeight {
    type Ctx = f32;

    fn name(&self) -> &'static str {
        "n2uq_weight"
    }

    fn param_layout(&self) -> Vec<(&'static str, usize)> {
        vec![]
    }

    fn num_acc(&self) -> usize {
        0
    }

    fn prepare(&self, x: &[f32], _p: &[f32]) -> f32 {
        self.scale(x)
    }

    #[inline(always)]
    fn forward(&self, &c: &f32, x: &[f32], y: &mut [f32]) {
        y.iter_mut().zip(x).for_each(|(y, &w)| *y = self.quantize_with(w, c));
    }

    #[inline(always)]
    fn backward(&self, &c: &f32, _x: &[f32], g: &[f32], gx: &mut [f32], _: &mut [f64]) {
        if c == 0.0 {
            gx.fill(0.0);
        } else {
            gx.iter_mut().zip(g).for_each(|(gx, &g)| *gx = g / c);
        }
    }

    fn finish(&self, _: &f32, _: &[f32], _: &[f32], _: &[f64], _: &mut [f32], _: &mut [f32]) {}

    fn init(&self, _x: &[f32]) -> Vec<f32> {
        vec![]
    }

    fn default_params(&self) -> Vec<f32> {
        vec![]
    }
}
