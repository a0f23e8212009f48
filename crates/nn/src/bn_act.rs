//! Training-mode BatchNorm2d fused with the activation that follows it (SiLU or identity), a
//! candle `CustomOp3` over (x, γ, β) with the closed-form backward:
//!
//! forward: `x̂ = (x − μ)/√(σ² + ε)`, `z = γ·x̂ + β`, `y = act(z)` (μ, σ² the biased batch
//! statistics per channel); backward, with `dz = dy·act′(z)` and `n = B·H·W`:
//! `dβ = Σ dz`, `dγ = Σ dz·x̂`, `dx = γ/√(σ² + ε) · (dz − dβ/n − x̂·dγ/n)`.
//!
//! The candle path builds the same function from ~12 elementwise ops and reductions, each a
//! full pass over the tensor with its own temporary; this one makes one pass for the statistics,
//! one for the output, and two for the gradient. Statistics are accumulated in f64.

use std::sync::Arc;

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::conv::Act;
use crate::ops::cpu_f32;
use crate::profile::{self, Op};
use crate::Result;

/// Per-channel batch mean and biased variance of a (B, C, H, W) CPU f32 tensor.
pub fn batch_stats(x: &Tensor) -> Result<(Vec<f32>, Vec<f32>)> {
    let s = x.contiguous()?.apply_op1_no_bwd(&Stats)?.to_vec2::<f32>()?;
    Ok((s[0].clone(), s[1].clone()))
}

/// `act(γ·(x − mean)/√(var + eps) + β)` with gradients to x (through the batch statistics), γ
/// and β. `mean` and `var` must be [`batch_stats`] of `x`.
pub fn batch_norm_act(x: &Tensor, gamma: &Tensor, beta: &Tensor, mean: Vec<f32>, var: &[f32], eps: f64, act: Act) -> Result<Tensor> {
    let inv_std = var.iter().map(|v| (1.0 / (*v as f64 + eps).sqrt()) as f32).collect();
    let op = BnAct { mean: Arc::new(mean), inv_std: Arc::new(inv_std), act };
    Ok(x.contiguous()?.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?)
}

/// Splits a contiguous (B, C, H, W) layout into (B, C, H·W).
fn bchw(l: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let (b, c, h, w) = l.shape().dims4()?;
    Ok((b, c, h * w))
}

struct Stats;

impl CustomOp1 for Stats {
    fn name(&self) -> &'static str {
        "q2-bn-stats"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        profile::timed(Op::BnStats, || -> candle_core::Result<(CpuStorage, Shape)> {
            let x = cpu_f32(s, l, self.name())?;
            let (b, c, hw) = bchw(l)?;
            let n = (b * hw) as f64;
            let stats: Vec<(f32, f32)> = (0..c)
                .into_par_iter()
                .map(|ch| {
                    let planes = || (0..b).map(move |i| &x[(i * c + ch) * hw..(i * c + ch + 1) * hw]);
                    // Shifted by the first value (exact for constant channels), then corrected.
                    let shift = x[ch * hw];
                    let (s1, s2) = planes().map(|p| plane_moments(p, shift)).fold((0f64, 0f64), |a, m| (a.0 + m.0, a.1 + m.1));
                    let d = s1 / n;
                    ((shift as f64 + d) as f32, (s2 / n - d * d).max(0.0) as f32)
                })
                .collect();
            let mut out: Vec<f32> = stats.iter().map(|s| s.0).collect();
            out.extend(stats.iter().map(|s| s.1));
            Ok((CpuStorage::F32(out), Shape::from((2, c))))
        })
    }
}

#[derive(Clone)]
struct BnAct {
    mean: Arc<Vec<f32>>,
    inv_std: Arc<Vec<f32>>,
    act: Act,
}

/// `eˣ` to within 2 ulp, branch-free so loops over it vectorize: `2ᵏ·p(r)` with
/// `k = round(x·log₂e)`, `r = x − k·ln 2` (Cody–Waite split) and a degree-6 Taylor polynomial on
/// |r| ≤ ln2/2. Inputs are clamped to [−87.3, 88.3] (results stay finite and normal); NaN stays NaN.
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding and subtracting it rounds to an integer
    let x = x.clamp(-87.3, 88.3);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let k = t - ROUND;
    let r = (x - k * 0.693_145_75) - k * 1.428_606_8e-6;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // k as an integer sits in t's low mantissa bits (no float→int conversion, which would not
    // vectorize); 2ᵏ is then built from its exponent field.
    let ki = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    p * f32::from_bits((ki.wrapping_add(127) as u32) << 23)
}

#[inline(always)]
fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + exp_approx(-z))
}

/// Lanes of the plane reductions: independent partial sums the compiler can keep in one vector.
const LANES: usize = 8;

crate::multiversion! {
    ["avx2", "fma"]
    /// Σ (x − m) and Σ (x − m)² of one plane (m: a shift for accuracy).
    fn plane_moments(x: &[f32], m: f32) -> (f64, f64) {
        let (mut s1, mut s2) = ([0f32; LANES], [0f32; LANES]);
        let n = x.len() / LANES * LANES;
        for ch in x[..n].chunks_exact(LANES) {
            for j in 0..LANES {
                let d = ch[j] - m;
                s1[j] += d;
                s2[j] += d * d;
            }
        }
        let (mut t1, mut t2) = (s1.iter().map(|v| *v as f64).sum::<f64>(), s2.iter().map(|v| *v as f64).sum::<f64>());
        for v in &x[n..] {
            let d = (v - m) as f64;
            t1 += d;
            t2 += d * d;
        }
        (t1, t2)
    }
}

crate::multiversion! {
    ["avx2", "fma"]
    /// y = act(k·x + sh) over one plane.
    fn forward_plane(k: f32, sh: f32, silu: bool, x: &[f32], y: &mut [f32]) -> () {
        if silu {
            for (y, x) in y.iter_mut().zip(x) {
                let z = k * x + sh;
                *y = z * sigmoid(z);
            }
        } else {
            for (y, x) in y.iter_mut().zip(x) {
                *y = k * x + sh;
            }
        }
    }
}

crate::multiversion! {
    ["avx2", "fma"]
    /// dz = dy·act′(k·x + sh) into `dz`; returns (Σ dz, Σ dz·(x − m)·inv).
    fn grad_plane(k: f32, sh: f32, m: f32, inv: f32, silu: bool, x: &[f32], gy: &[f32], dz: &mut [f32]) -> (f64, f64) {
        let (mut s1, mut s2) = ([0f32; LANES], [0f32; LANES]);
        let n = x.len() / LANES * LANES;
        let one = |x: f32, g: f32| -> f32 {
            if silu {
                let z = k * x + sh;
                let s = sigmoid(z);
                g * s * (1.0 + z * (1.0 - s))
            } else {
                g
            }
        };
        for ((xc, gc), dc) in x[..n].chunks_exact(LANES).zip(gy[..n].chunks_exact(LANES)).zip(dz[..n].chunks_exact_mut(LANES)) {
            for j in 0..LANES {
                let d = one(xc[j], gc[j]);
                dc[j] = d;
                s1[j] += d;
                s2[j] += d * ((xc[j] - m) * inv);
            }
        }
        let (mut t1, mut t2) = (s1.iter().map(|v| *v as f64).sum::<f64>(), s2.iter().map(|v| *v as f64).sum::<f64>());
        for ((x, g), d) in x[n..].iter().zip(&gy[n..]).zip(&mut dz[n..]) {
            *d = one(*x, *g);
            t1 += *d as f64;
            t2 += (*d * ((x - m) * inv)) as f64;
        }
        (t1, t2)
    }
}

crate::multiversion! {
    ["avx2", "fma"]
    /// dx = k·(dz − a − (x − m)·inv·b), in place over `dz`.
    fn input_grad_plane(k: f32, m: f32, inv: f32, a: f32, b: f32, x: &[f32], dz: &mut [f32]) -> () {
        for (d, x) in dz.iter_mut().zip(x) {
            *d = k * (*d - a - (x - m) * inv * b);
        }
    }
}

impl BnAct {
    fn check(&self, c: usize, gamma: &[f32], beta: &[f32]) -> candle_core::Result<()> {
        if self.mean.len() != c || gamma.len() != c || beta.len() != c {
            bail!("q2-bn-act: {c} channels but {} statistics, {} weights, {} biases", self.mean.len(), gamma.len(), beta.len())
        }
        Ok(())
    }

    /// (scale, shift) of channel `ch`: z = scale·x + shift.
    fn affine(&self, ch: usize, gamma: &[f32], beta: &[f32]) -> (f32, f32) {
        let k = gamma[ch] * self.inv_std[ch];
        (k, beta[ch] - self.mean[ch] * k)
    }
}

impl CustomOp3 for BnAct {
    fn name(&self) -> &'static str {
        "q2-bn-act"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        profile::timed(Op::BnActForward, || -> candle_core::Result<(CpuStorage, Shape)> {
            let x = cpu_f32(xs, xl, self.name())?;
            let (gamma, beta) = (cpu_f32(gs, gl, self.name())?, cpu_f32(bs, bl, self.name())?);
            let (_, c, hw) = bchw(xl)?;
            self.check(c, gamma, beta)?;
            let mut y = vec![0f32; x.len()];
            y.par_chunks_mut(hw.max(1)).zip(x.par_chunks(hw.max(1))).enumerate().for_each(|(i, (yp, xp))| {
                let (k, sh) = self.affine(i % c, gamma, beta);
                forward_plane(k, sh, self.act == Act::SiLU, xp, yp);
            });
            Ok((CpuStorage::F32(y), xl.shape().clone()))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _y: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = x.elem_count();
        let c = gamma.elem_count();
        let gb = Tensor::cat(&[gamma, beta], 0)?;
        let packed = x.apply_op3_no_bwd(&gy.contiguous()?, &gb, &BnActGrad(self.clone()))?;
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dgamma = packed.narrow(0, n, c)?;
        let dbeta = packed.narrow(0, n + c, c)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// `(x, dy, [γ; β]) → [dx; dγ; dβ]` (flat) of a [`BnAct`].
struct BnActGrad(BnAct);

/// A raw pointer to the gradient buffer, written at disjoint (channel) positions by workers.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: every worker writes only the planes of its own channel.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl CustomOp3 for BnActGrad {
    fn name(&self) -> &'static str {
        "q2-bn-act-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        profile::timed(Op::BnActBackward, || -> candle_core::Result<(CpuStorage, Shape)> {
            let op = &self.0;
            let x = cpu_f32(xs, xl, self.name())?;
            let gy = cpu_f32(gs, gl, self.name())?;
            let gb = cpu_f32(ps, pl, self.name())?;
            let (b, c, hw) = bchw(xl)?;
            if gy.len() != x.len() || gb.len() != 2 * c {
                bail!("{}: gradient {:?} or parameters {:?} do not match input {:?}", self.name(), gl.dims(), pl.dims(), xl.dims())
            }
            let (gamma, beta) = gb.split_at(c);
            op.check(c, gamma, beta)?;
            let n = x.len();
            let mut out = vec![0f32; n + 2 * c];
            let (dx, dpar) = out.split_at_mut(n);
            let dz_ptr = Shared(dx.as_mut_ptr());
            // Pass 1, per channel: dz into dx's storage, and the two sums.
            let sums: Vec<(f64, f64)> = (0..c)
                .into_par_iter()
                .map(|ch| {
                    let dz_ptr = dz_ptr;
                    let (k, sh) = op.affine(ch, gamma, beta);
                    let (m, inv) = (op.mean[ch], op.inv_std[ch]);
                    let (mut s1, mut s2) = (0f64, 0f64);
                    for i in 0..b {
                        let off = (i * c + ch) * hw;
                        // SAFETY: plane (i, ch) belongs to this channel's worker only.
                        let dz = unsafe { std::slice::from_raw_parts_mut(dz_ptr.0.add(off), hw) };
                        let (a1, a2) = grad_plane(k, sh, m, inv, op.act == Act::SiLU, &x[off..off + hw], &gy[off..off + hw], dz);
                        s1 += a1;
                        s2 += a2;
                    }
                    (s1, s2)
                })
                .collect();
            for (ch, (s1, s2)) in sums.iter().enumerate() {
                dpar[ch] = *s2 as f32;
                dpar[c + ch] = *s1 as f32;
            }
            // Pass 2, per plane: dx = γ·inv·(dz − dβ/n − x̂·dγ/n).
            let cnt = (b * hw) as f64;
            dx.par_chunks_mut(hw.max(1)).zip(x.par_chunks(hw.max(1))).enumerate().for_each(|(i, (dp, xp))| {
                let ch = i % c;
                let (m, inv) = (op.mean[ch], op.inv_std[ch]);
                let k = gamma[ch] * inv;
                let a = (sums[ch].0 / cnt) as f32;
                let bb = (sums[ch].1 / cnt) as f32;
                input_grad_plane(k, m, inv, a, bb, xp, dp);
            });
            Ok((CpuStorage::F32(out), Shape::from(n + 2 * c)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::max_rel_diff;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};

    fn rand(shape: &[usize], seed: u64, lo: f32, hi: f32) -> Tensor {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        Tensor::from_vec((0..n).map(|_| r.random_range(lo..hi)).collect::<Vec<f32>>(), shape, &Device::Cpu).unwrap()
    }

    /// The unfused candle graph of the same function.
    fn reference(x: &Tensor, g: &Tensor, b: &Tensor, eps: f64, act: Act) -> Tensor {
        let c = g.elem_count();
        let mean = x.mean_keepdim((0, 2, 3)).unwrap();
        let xc = x.broadcast_sub(&mean).unwrap();
        let var = xc.sqr().unwrap().mean_keepdim((0, 2, 3)).unwrap();
        let inv = (var + eps).unwrap().sqrt().unwrap().recip().unwrap();
        let z = xc
            .broadcast_mul(&inv)
            .unwrap()
            .broadcast_mul(&g.reshape((1, c, 1, 1)).unwrap())
            .unwrap()
            .broadcast_add(&b.reshape((1, c, 1, 1)).unwrap())
            .unwrap();
        match act {
            Act::SiLU => z.silu().unwrap(),
            Act::Identity => z,
        }
    }

    fn check(shape: [usize; 4], act: Act, seed: u64) {
        let x = Var::from_tensor(&(rand(&shape, seed, -2.0, 3.0) * 1.5).unwrap()).unwrap();
        let g = Var::from_tensor(&rand(&[shape[1]], seed + 1, 0.5, 1.5)).unwrap();
        let b = Var::from_tensor(&rand(&[shape[1]], seed + 2, -0.5, 0.5)).unwrap();
        let (mean, var) = batch_stats(x.as_tensor()).unwrap();
        let ours = batch_norm_act(x.as_tensor(), g.as_tensor(), b.as_tensor(), mean, &var, 1e-3, act).unwrap();
        let refr = reference(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-3, act);
        assert!(max_rel_diff(&ours, &refr).unwrap() < 1e-5, "forward {:?}", max_rel_diff(&ours, &refr));
        let gy = rand(&shape, seed + 3, -1.0, 1.0);
        let go = (ours * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (refr * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        for (v, what) in [(&x, "dx"), (&g, "dgamma"), (&b, "dbeta")] {
            let d = max_rel_diff(go.get(v).unwrap(), gr.get(v).unwrap()).unwrap();
            assert!(d < 1e-4, "{what}: {d}");
        }
    }

    #[test]
    fn matches_the_candle_graph() {
        check([4, 3, 5, 7], Act::SiLU, 1);
        check([2, 8, 16, 16], Act::SiLU, 2);
        check([3, 5, 4, 4], Act::Identity, 3);
        check([16, 2, 1, 1], Act::SiLU, 4);
    }

    #[test]
    fn exp_approx_is_within_float_rounding() {
        let mut worst = 0f64;
        for i in -87_000..88_000 {
            let x = i as f32 * 1e-3 + 3.7e-4;
            let e = (x as f64).exp();
            worst = worst.max(((exp_approx(x) as f64) - e).abs() / e);
        }
        assert!(worst < 4e-7, "relative error {worst}");
        assert!(exp_approx(f32::NAN).is_nan());
        assert!(exp_approx(-1e30) > 0.0 && exp_approx(1e30).is_finite());
    }

    #[test]
    fn stats_are_the_biased_batch_moments() {
        let x = Tensor::from_vec(vec![1f32, 2., 3., 4., 10., 20., 30., 40.], (2, 2, 1, 2), &Device::Cpu).unwrap();
        // channel 0: 1, 2, 10, 20; channel 1: 3, 4, 30, 40
        let (m, v) = batch_stats(&x).unwrap();
        assert_eq!(m, vec![8.25, 19.25]);
        let var0 = [1f64, 2., 10., 20.].iter().map(|a| (a - 8.25f64).powi(2)).sum::<f64>() / 4.0;
        assert!((v[0] as f64 - var0).abs() < 1e-5);
    }
}
