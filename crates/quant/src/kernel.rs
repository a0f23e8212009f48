//! The extension point for fake-quantization arithmetic: a [`Kernel`] describes one quantizer's
//! forward and straight-through backward on one *group* of elements (the whole tensor, or one
//! output channel), and the drivers here run it over all groups, in parallel, with a fixed
//! chunking so results do not depend on thread timing.
//!
//! Parameter gradients are accumulated in f64 per chunk of [`CHUNK`] elements and the chunk
//! partials are added in chunk order: same input, same bits, whatever the thread count.

use rayon::prelude::*;

/// Elements per work item; fixed so that floating-point reductions are reproducible.
pub const CHUNK: usize = 1 << 15;

/// Whether the AVX2 versions of the loops can run (checked once by the std macro's cache).
#[inline(always)]
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

// Kernel methods are `#[inline(always)]` so their loops land inside the AVX2 copy; AVX2 without
// FMA keeps the two copies bit-identical.
q2_nn::multiversion! {
    ["avx2"]
    fn forward_chunk<K: Kernel>(k: &K, c: &K::Ctx, x: &[f32], y: &mut [f32]) -> () {
        k.forward(c, x, y)
    }
}

q2_nn::multiversion! {
    ["avx2"]
    fn backward_chunk<K: Kernel>(k: &K, c: &K::Ctx, x: &[f32], g: &[f32], gx: &mut [f32], acc: &mut [f64]) -> () {
        k.backward(c, x, g, gx, acc)
    }
}

q2_nn::multiversion! {
    ["avx2"]
    fn sum_chunk<F: SumFn>(c: &[f32], f: &F) -> f64 {
        let mut lanes = [0f64; 8];
        let n8 = c.len() / 8 * 8;
        for ch in c[..n8].chunks_exact(8) {
            for j in 0..8 {
                lanes[j] += f.term(ch[j]);
            }
        }
        c[n8..].iter().for_each(|v| lanes[0] += f.term(*v));
        lanes.iter().sum::<f64>()
    }
}

/// (min, max, has NaN) of one chunk. LLVM does not vectorise min/max reductions without
/// fast-math, so the AVX2 version is written with intrinsics.
fn min_max_chunk(c: &[f32]) -> (f32, f32, bool) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { min_max_avx2(c) };
    }
    let lo = c.iter().fold(f32::INFINITY, |a, &b| if a < b { a } else { b });
    let hi = c.iter().fold(f32::NEG_INFINITY, |a, &b| if a > b { a } else { b });
    (lo, hi, c.iter().any(|v| v.is_nan()))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn min_max_avx2(c: &[f32]) -> (f32, f32, bool) {
    use std::arch::x86_64::*;
    let (mut lo, mut hi, mut nan) = (_mm256_set1_ps(f32::INFINITY), _mm256_set1_ps(f32::NEG_INFINITY), _mm256_setzero_ps());
    let mut it = c.chunks_exact(8);
    for ch in &mut it {
        // SAFETY: `ch` has exactly 8 f32s; unaligned load.
        let v = unsafe { _mm256_loadu_ps(ch.as_ptr()) };
        lo = _mm256_min_ps(lo, v);
        hi = _mm256_max_ps(hi, v);
        nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
    }
    let (mut l, mut h, mut m) = ([0f32; 8], [0f32; 8], [0f32; 8]);
    // SAFETY: each array holds 8 f32s; unaligned stores.
    unsafe {
        _mm256_storeu_ps(l.as_mut_ptr(), lo);
        _mm256_storeu_ps(h.as_mut_ptr(), hi);
        _mm256_storeu_ps(m.as_mut_ptr(), nan);
    }
    let tail = it.remainder();
    let lo = l.iter().chain(tail).fold(f32::INFINITY, |a, &b| if a < b { a } else { b });
    let hi = h.iter().chain(tail).fold(f32::NEG_INFINITY, |a, &b| if a > b { a } else { b });
    (lo, hi, m.iter().any(|v| v.to_bits() != 0) || tail.iter().any(|v| v.is_nan()))
}

/// The summand of [`par_sum`] (a trait rather than a closure so it inlines into the SIMD loop).
pub trait SumFn: Sync {
    fn term(&self, v: f32) -> f64;
}

impl<F: Fn(f32) -> f64 + Sync> SumFn for F {
    #[inline(always)]
    fn term(&self, v: f32) -> f64 {
        self(v)
    }
}

/// An output buffer whose every element the kernel writes before anything reads it (zeroing
/// 16 MB first would cost as much as a third of a fake-quant pass). Same technique as candle's
/// own CPU kernels; f32 has no invalid bit patterns.
#[allow(clippy::uninit_vec)]
fn alloc_output(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: capacity is n; callers overwrite all n elements before returning the buffer.
    unsafe { v.set_len(n) };
    v
}

/// Round half to even for |v| < 2^22 (every quantizer rounds a clipped code, |v| ≤ 255):
/// adding and subtracting 1.5·2^23 leaves the nearest integer under IEEE round-to-nearest-even.
/// Unlike `f32::round_ties_even` it vectorises without SSE4.1. NaN stays NaN.
#[inline(always)]
pub fn rne(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// Clamp that propagates NaN (as `torch.clamp`): `lo` if v < lo, `hi` if v > hi, else v.
#[inline(always)]
pub fn clamp(v: f32, lo: f32, hi: f32) -> f32 {
    if v < lo {
        lo
    } else if v > hi {
        hi
    } else {
        v
    }
}

/// One quantizer's arithmetic on one group. See `docs/QUANTIZERS.md` for every method's formulas.
pub trait Kernel: Send + Sync + std::fmt::Debug + 'static {
    /// State computed once per group before the elementwise pass (statistics, thresholds).
    type Ctx: Send + Sync;

    fn name(&self) -> &'static str;

    /// Parameter names and widths per group, in packing order (`[("s", 1)]` for LSQ).
    fn param_layout(&self) -> Vec<(&'static str, usize)>;

    fn num_params(&self) -> usize {
        self.param_layout().iter().map(|(_, w)| w).sum()
    }

    /// f64 accumulators one group's backward pass needs.
    fn num_acc(&self) -> usize;

    /// Checks one group's parameters; the message says what is wrong.
    fn validate(&self, _p: &[f32]) -> Result<(), String> {
        Ok(())
    }

    /// Per-group state from the group's data `x` and parameters `p`.
    fn prepare(&self, x: &[f32], p: &[f32]) -> Self::Ctx;

    /// y = Q(x) on one chunk.
    fn forward(&self, c: &Self::Ctx, x: &[f32], y: &mut [f32]);

    /// On one chunk: writes dL/dx into `gx` and adds parameter-gradient partial sums into `acc`.
    fn backward(&self, c: &Self::Ctx, x: &[f32], g: &[f32], gx: &mut [f32], acc: &mut [f64]);

    /// After all chunks of a group: turns the summed accumulators into parameter gradients `gp`
    /// and applies any group-level correction to `gx` (DoReFa's gradient through its maximum).
    fn finish(&self, c: &Self::Ctx, x: &[f32], g: &[f32], acc: &[f64], gx: &mut [f32], gp: &mut [f32]);

    /// Data-driven initial parameters of one group.
    fn init(&self, x: &[f32]) -> Vec<f32>;

    /// Parameters of one group before any data is seen.
    fn default_params(&self) -> Vec<f32>;

    /// The quantization step of one group in input units (Q-ADA's s_c), where the method has a
    /// data-independent one.
    fn step(&self, _p: &[f32]) -> Option<f32> {
        None
    }

    /// Rewrites one group's parameters `p` so that the quantizer applied to `v` reproduces the
    /// old quantizer applied to `c·v` (c > 0) up to an output factor, which is returned:
    /// `Q_old(c·v) = gain · Q_new(v)`. This is how an input scale (LN folding, Eq. 12) moves into
    /// a quantizer. `None`: the method cannot absorb an input scale (weight quantizers).
    fn absorb_input_scale(&self, _p: &mut [f32], _c: f32) -> Option<f32> {
        None
    }
}

/// Elementwise map + reduction into `A` sums, in 8 independent lanes so that the f64 sums
/// vectorise without reassociation. `f(x, g) -> (dL/dx, [contribution to each sum])`.
#[inline(always)]
pub fn map_reduce<const A: usize>(x: &[f32], g: &[f32], gx: &mut [f32], acc: &mut [f64], f: impl Fn(f32, f32) -> (f32, [f32; A])) {
    let mut lanes = [[0f64; 8]; A];
    let n8 = x.len() / 8 * 8;
    for ((xc, gc), oc) in x[..n8].chunks_exact(8).zip(g[..n8].chunks_exact(8)).zip(gx[..n8].chunks_exact_mut(8)) {
        for j in 0..8 {
            let (d, c) = f(xc[j], gc[j]);
            oc[j] = d;
            for a in 0..A {
                lanes[a][j] += c[a] as f64;
            }
        }
    }
    for i in n8..x.len() {
        let (d, c) = f(x[i], g[i]);
        gx[i] = d;
        for a in 0..A {
            lanes[a][0] += c[a] as f64;
        }
    }
    for a in 0..A {
        acc[a] += lanes[a].iter().sum::<f64>();
    }
}

/// Sum of `f(x)` over a slice in f64, in 8 lanes per chunk of [`CHUNK`] (vectorised,
/// reproducible), chunks in parallel and added in order.
pub fn par_sum(x: &[f32], f: impl Fn(f32) -> f64 + Sync) -> f64 {
    let parts: Vec<f64> = x.par_chunks(CHUNK).map(|c| sum_chunk(c, &f)).collect();
    parts.iter().sum()
}

/// (min, max) of a slice; (NaN, NaN) if it holds a NaN. Vectorised, chunks in parallel.
pub fn par_min_max(x: &[f32]) -> (f32, f32) {
    let parts: Vec<(f32, f32, bool)> = x.par_chunks(CHUNK).map(min_max_chunk).collect();
    if parts.iter().any(|p| p.2) {
        return (f32::NAN, f32::NAN);
    }
    parts.into_iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), (a, b, _)| (lo.min(a), hi.max(b)))
}

/// Runs a kernel's forward over `groups` equal contiguous groups of `x`; `p` holds
/// `groups × num_params` parameters.
pub fn forward<K: Kernel>(k: &K, x: &[f32], p: &[f32], groups: usize) -> Vec<f32> {
    let (gl, np) = (x.len() / groups, k.num_params());
    let ctxs: Vec<K::Ctx> =
        (0..groups).into_par_iter().map(|gi| k.prepare(&x[gi * gl..(gi + 1) * gl], &p[gi * np..(gi + 1) * np])).collect();
    if gl == 0 {
        return vec![0f32; x.len()];
    }
    let mut y = alloc_output(x.len());
    y.par_chunks_mut(gl).zip(x.par_chunks(gl)).zip(ctxs.par_iter()).for_each(|((yg, xg), c)| {
        yg.par_chunks_mut(CHUNK).zip(xg.par_chunks(CHUNK)).for_each(|(yc, xc)| forward_chunk(k, c, xc, yc));
    });
    y
}

/// Runs a kernel's backward: returns (dL/dx, dL/dp with `groups × num_params` entries).
pub fn backward<K: Kernel>(k: &K, x: &[f32], p: &[f32], g: &[f32], groups: usize) -> (Vec<f32>, Vec<f32>) {
    let mut packed = backward_packed(k, x, p, g, groups);
    let gp = packed.split_off(x.len());
    (packed, gp)
}

/// Runs a kernel's backward into one buffer `[dL/dx | dL/dp]` (what the candle op returns),
/// so the large gradient is written once and never copied.
pub fn backward_packed<K: Kernel>(k: &K, x: &[f32], p: &[f32], g: &[f32], groups: usize) -> Vec<f32> {
    let (gl, np, na) = (x.len() / groups, k.num_params(), k.num_acc());
    if gl == 0 {
        return vec![0f32; x.len() + groups * np];
    }
    let mut out = alloc_output(x.len() + groups * np);
    let (gx, gp) = out.split_at_mut(x.len());
    gp.fill(0.0);
    let gp_groups: Vec<&mut [f32]> = if np == 0 { (0..groups).map(|_| &mut [][..]).collect() } else { gp.chunks_mut(np).collect() };
    let chunks: Vec<_> = gx.chunks_mut(gl).zip(gp_groups).enumerate().collect();
    chunks.into_par_iter().for_each(|(gi, (gxg, gpg))| {
        let xg = &x[gi * gl..(gi + 1) * gl];
        let gg = &g[gi * gl..(gi + 1) * gl];
        let c = k.prepare(xg, &p[gi * np..(gi + 1) * np]);
        let parts: Vec<Vec<f64>> = gxg
            .par_chunks_mut(CHUNK)
            .zip(xg.par_chunks(CHUNK).zip(gg.par_chunks(CHUNK)))
            .map(|(gxc, (xc, gc))| {
                let mut acc = vec![0f64; na];
                backward_chunk(k, &c, xc, gc, gxc, &mut acc);
                acc
            })
            .collect();
        let mut acc = vec![0f64; na];
        for a in parts {
            acc.iter_mut().zip(&a).for_each(|(s, v)| *s += v);
        }
        k.finish(&c, xg, gg, &acc, gxg, gpg);
    });
    out
}

/// Data-driven initial parameters for every group (`groups × num_params`).
pub fn init<K: Kernel>(k: &K, x: &[f32], groups: usize) -> Vec<f32> {
    let gl = x.len() / groups;
    (0..groups).into_par_iter().map(|gi| k.init(&x[gi * gl..(gi + 1) * gl])).collect::<Vec<_>>().concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rne_is_round_half_even() {
        for (v, r) in [(0.5f32, 0.0f32), (1.5, 2.0), (2.5, 2.0), (-0.5, -0.0), (-1.5, -2.0), (3.49999, 3.0), (254.5, 254.0), (-128.0, -128.0)] {
            assert_eq!(rne(v), r, "{v}");
            assert_eq!(rne(v), v.round_ties_even(), "{v}");
        }
        assert!(rne(f32::NAN).is_nan());
    }

    #[test]
    fn clamp_propagates_nan() {
        assert!(clamp(f32::NAN, 0.0, 1.0).is_nan());
        assert_eq!(clamp(-2.0, -1.0, 1.0), -1.0);
        assert_eq!(clamp(2.0, -1.0, 1.0), 1.0);
    }

    #[test]
    fn min_max_and_sum_cover_tails_infinities_and_nan() {
        for n in [1usize, 7, 8, 9, 100, CHUNK + 13] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
            let (lo, hi) = par_min_max(&x);
            assert_eq!(lo, x.iter().cloned().fold(f32::INFINITY, f32::min), "n {n}");
            assert_eq!(hi, x.iter().cloned().fold(f32::NEG_INFINITY, f32::max), "n {n}");
            let s = par_sum(&x, |v| v as f64);
            assert!((s - x.iter().map(|v| *v as f64).sum::<f64>()).abs() < 1e-9);
            for pos in [0, n / 2, n - 1] {
                let mut y = x.clone();
                y[pos] = f32::NAN;
                let (a, b) = par_min_max(&y);
                assert!(a.is_nan() && b.is_nan(), "NaN at {pos} of {n}");
                y[pos] = f32::NEG_INFINITY;
                assert_eq!(par_min_max(&y).0, f32::NEG_INFINITY);
            }
        }
    }

    #[test]
    fn map_reduce_matches_serial() {
        let x: Vec<f32> = (0..37).map(|i| i as f32 * 0.3 - 4.0).collect();
        let g: Vec<f32> = (0..37).map(|i| (i % 5) as f32 - 2.0).collect();
        let mut gx = vec![0f32; 37];
        let mut acc = [0f64; 2];
        map_reduce::<2>(&x, &g, &mut gx, &mut acc, |x, g| (x * g, [g, x * g]));
        let s0: f64 = g.iter().map(|v| *v as f64).sum();
        let s1: f64 = x.iter().zip(&g).map(|(a, b)| (a * b) as f64).sum();
        assert!((acc[0] - s0).abs() < 1e-9 && (acc[1] - s1).abs() < 1e-9);
        assert_eq!(gx[36], x[36] * g[36]);
    }
}
