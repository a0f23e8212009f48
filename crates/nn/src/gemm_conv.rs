//! 2-D convolution on the CPU as a blocked GEMM (the `gemm` crate, AVX-512/AVX2/FMA micro-kernels
//! chosen at run time), a candle `CustomOp2` with our own backward:
//! - forward, per image and group: `Y = W · col(X)`;
//! - input gradient: `dX = col⁻¹(Wᵀ · dY)` (col2im scatter-add);
//! - weight gradient: `dW = Σ_images dY · col(X)ᵀ`.
//!
//! `col` (im2col) is skipped for 1×1 stride-1 unpadded convs, whose input already is the GEMM
//! operand. Images run in parallel (rayon), one single-threaded GEMM each; with fewer images than
//! threads the GEMM itself is parallel. The weight gradient sums fixed groups of images in a fixed
//! order, so results do not depend on thread timing. Only `col` of one image per worker is ever
//! materialised (recomputed in the backward pass instead of kept).

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::ops::cpu_f32;
use crate::profile::{self, Op};
use crate::Result;

/// `conv2d(x, w)` with zero padding `pad`, `stride` and `groups`; x (B, C, H, W), w
/// (O, C/groups, KH, KW). Uses the GEMM kernel for f32 CPU tensors when the fused kernels are
/// selected ([`crate::kernels`]), candle's `conv2d` otherwise.
pub fn conv2d(x: &Tensor, w: &Tensor, pad: usize, stride: usize, groups: usize) -> Result<Tensor> {
    if crate::kernels::fused_cpu(x) && crate::kernels::fused_cpu(w) {
        let op = GemmConv { pad, stride, groups };
        Ok(x.contiguous()?.apply_op2(&w.contiguous()?, op)?)
    } else {
        Ok(x.conv2d(w, pad, stride, 1, groups)?)
    }
}

#[derive(Clone, Copy, Debug)]
struct GemmConv {
    pad: usize,
    stride: usize,
    groups: usize,
}

/// All sizes of one convolution.
#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    /// Input / output channels per group.
    cg: usize,
    og: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    s: usize,
    p: usize,
    groups: usize,
}

impl Dims {
    fn new(g: &GemmConv, x: &[usize], w: &[usize]) -> candle_core::Result<Self> {
        let (&[b, c, h, wd], &[o, cg, kh, kw]) = (x, w) else {
            bail!("gemm-conv: expected 4-D input and weight, got {x:?} and {w:?}")
        };
        if g.groups == 0 || g.stride == 0 || c != cg * g.groups || o % g.groups != 0 {
            bail!("gemm-conv: input {x:?} and weight {w:?} do not fit groups {}", g.groups)
        }
        if h + 2 * g.pad < kh || wd + 2 * g.pad < kw {
            bail!("gemm-conv: kernel {kh}x{kw} larger than the padded input {x:?}")
        }
        let oh = (h + 2 * g.pad - kh) / g.stride + 1;
        let ow = (wd + 2 * g.pad - kw) / g.stride + 1;
        Ok(Self { b, c, h, w: wd, o, cg, og: o / g.groups, kh, kw, oh, ow, s: g.stride, p: g.pad, groups: g.groups })
    }

    /// Rows of one group's `col` matrix (= columns of its weight matrix).
    fn kk(&self) -> usize {
        self.cg * self.kh * self.kw
    }

    fn ohw(&self) -> usize {
        self.oh * self.ow
    }

    /// A 1×1, stride-1, unpadded conv reads its input as the GEMM operand directly.
    fn direct(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.s == 1 && self.p == 0
    }

    fn col_len(&self) -> usize {
        if self.direct() {
            0
        } else {
            self.kk() * self.ohw()
        }
    }

    /// The output columns `ox` whose input column `ox·s + kj − p` lies inside the image.
    fn valid_cols(&self, kj: usize) -> (usize, usize) {
        let lo = (self.p.saturating_sub(kj)).div_ceil(self.s).min(self.ow);
        let hi = if self.w + self.p > kj { ((self.w - 1 + self.p - kj) / self.s + 1).min(self.ow) } else { 0 };
        (lo, hi.max(lo))
    }

    /// The input row read by output row `oy` for kernel row `ki`, if inside the image.
    fn in_row(&self, oy: usize, ki: usize) -> Option<usize> {
        (oy * self.s + ki).checked_sub(self.p).filter(|&iy| iy < self.h)
    }
}

/// `dst (m×n, row stride dst_rs) (+)= a (m×k) · b (k×n)`, each operand given by its row and
/// column strides.
#[allow(clippy::too_many_arguments)]
fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    (a, a_rs, a_cs): (&[f32], usize, usize),
    (b, b_rs, b_cs): (&[f32], usize, usize),
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() >= (m - 1) * dst_rs + n, "gemm-conv: destination too small");
    if k > 0 {
        assert!(a.len() > (m - 1) * a_rs + (k - 1) * a_cs && b.len() > (k - 1) * b_rs + (n - 1) * b_cs);
    }
    // SAFETY: the asserts above keep every index the GEMM touches inside the three slices, and
    // `dst` is borrowed mutably so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// im2col of one group of one image: `x` (cg, h, w) → `col` (cg·kh·kw, oh·ow), zero-padded.
fn im2col(d: &Dims, x: &[f32], col: &mut [f32]) {
    let ohw = d.ohw();
    for c in 0..d.cg {
        let xc = &x[c * d.h * d.w..(c + 1) * d.h * d.w];
        for ki in 0..d.kh {
            for kj in 0..d.kw {
                let r = (c * d.kh + ki) * d.kw + kj;
                let row = &mut col[r * ohw..(r + 1) * ohw];
                let (lo, hi) = d.valid_cols(kj);
                for oy in 0..d.oh {
                    let out = &mut row[oy * d.ow..(oy + 1) * d.ow];
                    let Some(iy) = d.in_row(oy, ki) else {
                        out.fill(0.0);
                        continue;
                    };
                    let xr = &xc[iy * d.w..(iy + 1) * d.w];
                    out[..lo].fill(0.0);
                    out[hi..].fill(0.0);
                    if d.s == 1 {
                        out[lo..hi].copy_from_slice(&xr[lo + kj - d.p..hi + kj - d.p]);
                    } else {
                        for (ox, v) in out[lo..hi].iter_mut().enumerate() {
                            *v = xr[(lo + ox) * d.s + kj - d.p];
                        }
                    }
                }
            }
        }
    }
}

/// col2im of one group of one image: adds `col` (cg·kh·kw, oh·ow) into `x` (cg, h, w).
fn col2im_add(d: &Dims, col: &[f32], x: &mut [f32]) {
    let ohw = d.ohw();
    for c in 0..d.cg {
        let xc = &mut x[c * d.h * d.w..(c + 1) * d.h * d.w];
        for ki in 0..d.kh {
            for kj in 0..d.kw {
                let r = (c * d.kh + ki) * d.kw + kj;
                let row = &col[r * ohw..(r + 1) * ohw];
                let (lo, hi) = d.valid_cols(kj);
                for oy in 0..d.oh {
                    let Some(iy) = d.in_row(oy, ki) else { continue };
                    let src = &row[oy * d.ow + lo..oy * d.ow + hi];
                    let xr = &mut xc[iy * d.w..(iy + 1) * d.w];
                    if d.s == 1 {
                        for (v, s) in xr[lo + kj - d.p..hi + kj - d.p].iter_mut().zip(src) {
                            *v += s;
                        }
                    } else {
                        for (ox, s) in src.iter().enumerate() {
                            xr[(lo + ox) * d.s + kj - d.p] += s;
                        }
                    }
                }
            }
        }
    }
}

/// Runs `f(image, out_chunk, scratch, gemm_parallelism)` over the images: in parallel with
/// single-threaded GEMMs when there are at least as many images as threads, else one image at a
/// time with a parallel GEMM.
fn per_image<F>(out: &mut [f32], per: usize, scratch: usize, f: F)
where
    F: Fn(usize, &mut [f32], &mut [f32], Parallelism) + Sync,
{
    let threads = rayon::current_num_threads();
    let images = if per == 0 { 0 } else { out.len() / per };
    if images >= threads || threads == 1 {
        out.par_chunks_mut(per)
            .enumerate()
            .for_each_init(|| vec![0f32; scratch], |col, (i, o)| f(i, o, col, Parallelism::None));
    } else {
        let mut col = vec![0f32; scratch];
        for (i, o) in out.chunks_mut(per).enumerate() {
            f(i, o, &mut col, Parallelism::Rayon(threads));
        }
    }
}

fn forward(d: &Dims, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (kk, ohw, chw) = (d.kk(), d.ohw(), d.c * d.h * d.w);
    let mut y = vec![0f32; d.b * d.o * ohw];
    per_image(&mut y, d.o * ohw, d.col_len(), |i, yb, col, par| {
        let xb = &x[i * chw..(i + 1) * chw];
        for g in 0..d.groups {
            let xg = &xb[g * d.cg * d.h * d.w..(g + 1) * d.cg * d.h * d.w];
            let rhs = if d.direct() {
                xg
            } else {
                im2col(d, xg, col);
                &col[..]
            };
            let wg = &w[g * d.og * kk..(g + 1) * d.og * kk];
            let yg = &mut yb[g * d.og * ohw..(g + 1) * d.og * ohw];
            matmul((d.og, ohw, kk), yg, ohw, false, (wg, kk, 1), (rhs, ohw, 1), par);
        }
    });
    y
}

fn backward_input(d: &Dims, gy: &[f32], w: &[f32]) -> Vec<f32> {
    let (kk, ohw, chw) = (d.kk(), d.ohw(), d.c * d.h * d.w);
    let mut dx = vec![0f32; d.b * chw];
    per_image(&mut dx, chw, d.col_len(), |i, dxb, col, par| {
        let gyb = &gy[i * d.o * ohw..(i + 1) * d.o * ohw];
        for g in 0..d.groups {
            let gyg = &gyb[g * d.og * ohw..(g + 1) * d.og * ohw];
            // Wᵀ of this group: (kk × og), element (r, o) at o·kk + r.
            let wt = (&w[g * d.og * kk..(g + 1) * d.og * kk], 1, kk);
            let dxg = &mut dxb[g * d.cg * d.h * d.w..(g + 1) * d.cg * d.h * d.w];
            if d.direct() {
                matmul((kk, ohw, d.og), dxg, ohw, false, wt, (gyg, ohw, 1), par);
            } else {
                matmul((kk, ohw, d.og), col, ohw, false, wt, (gyg, ohw, 1), par);
                col2im_add(d, col, dxg);
            }
        }
    });
    dx
}

/// Images per partial weight gradient: fixed, so the summation order never depends on threads.
const WGRAD_IMAGES: usize = 4;

fn backward_weight(d: &Dims, x: &[f32], gy: &[f32]) -> Vec<f32> {
    let (kk, ohw, chw) = (d.kk(), d.ohw(), d.c * d.h * d.w);
    let len = d.o * kk;
    let parts = d.b.div_ceil(WGRAD_IMAGES);
    let mut partial = vec![0f32; parts * len];
    let par = if parts >= rayon::current_num_threads() { Parallelism::None } else { Parallelism::Rayon(0) };
    partial.par_chunks_mut(len.max(1)).enumerate().for_each_init(
        || vec![0f32; d.col_len()],
        |col, (p, dw)| {
            for i in p * WGRAD_IMAGES..((p + 1) * WGRAD_IMAGES).min(d.b) {
                let xb = &x[i * chw..(i + 1) * chw];
                let gyb = &gy[i * d.o * ohw..(i + 1) * d.o * ohw];
                for g in 0..d.groups {
                    let xg = &xb[g * d.cg * d.h * d.w..(g + 1) * d.cg * d.h * d.w];
                    let colg = if d.direct() {
                        xg
                    } else {
                        im2col(d, xg, col);
                        &col[..]
                    };
                    let gyg = &gyb[g * d.og * ohw..(g + 1) * d.og * ohw];
                    let dwg = &mut dw[g * d.og * kk..(g + 1) * d.og * kk];
                    // dW_g (og × kk) += dY_g (og × ohw) · colᵀ (ohw × kk).
                    matmul((d.og, kk, ohw), dwg, kk, true, (gyg, ohw, 1), (colg, 1, ohw), par);
                }
            }
        },
    );
    let mut dw = partial[..len].to_vec();
    for part in partial.chunks(len.max(1)).skip(1) {
        for (a, b) in dw.iter_mut().zip(part) {
            *a += b;
        }
    }
    dw
}

impl CustomOp2 for GemmConv {
    fn name(&self) -> &'static str {
        "q2-gemm-conv"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = Dims::new(self, xl.dims(), wl.dims())?;
        let (x, w) = (cpu_f32(xs, xl, self.name())?, cpu_f32(ws, wl, self.name())?);
        let y = profile::timed(Op::ConvForward, || forward(&d, x, w));
        Ok((CpuStorage::F32(y), Shape::from((d.b, d.o, d.oh, d.ow))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, gy: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let gy = gy.contiguous()?;
        let dx = gy.apply_op2_no_bwd(w, &InputGrad { conv: *self, x_shape: x.shape().clone() })?;
        let dw = x.apply_op2_no_bwd(&gy, &WeightGrad { conv: *self, w_shape: w.shape().clone() })?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `(dY, W) → dX` of a [`GemmConv`].
struct InputGrad {
    conv: GemmConv,
    x_shape: Shape,
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "q2-gemm-conv-input-grad"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, ws: &CpuStorage, wl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = Dims::new(&self.conv, self.x_shape.dims(), wl.dims())?;
        if gl.dims() != [d.b, d.o, d.oh, d.ow] {
            bail!("{}: gradient {:?} does not match the output of {d:?}", self.name(), gl.dims())
        }
        let (gy, w) = (cpu_f32(gs, gl, self.name())?, cpu_f32(ws, wl, self.name())?);
        let dx = profile::timed(Op::ConvInputGrad, || backward_input(&d, gy, w));
        Ok((CpuStorage::F32(dx), self.x_shape.clone()))
    }
}

/// `(X, dY) → dW` of a [`GemmConv`].
struct WeightGrad {
    conv: GemmConv,
    w_shape: Shape,
}

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "q2-gemm-conv-weight-grad"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, gs: &CpuStorage, gl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = Dims::new(&self.conv, xl.dims(), self.w_shape.dims())?;
        if gl.dims() != [d.b, d.o, d.oh, d.ow] {
            bail!("{}: gradient {:?} does not match the output of {d:?}", self.name(), gl.dims())
        }
        let (x, gy) = (cpu_f32(xs, xl, self.name())?, cpu_f32(gs, gl, self.name())?);
        let dw = profile::timed(Op::ConvWeightGrad, || backward_weight(&d, x, gy));
        Ok((CpuStorage::F32(dw), self.w_shape.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::max_rel_diff;
    use candle_core::{Device, Var};
    use proptest::prelude::*;

    /// Forward and both gradients of the GEMM conv against candle's conv2d.
    fn check(b: usize, c: usize, o: usize, hw: (usize, usize), k: usize, s: usize, p: usize, g: usize, seed: u64) {
        let dev = Device::Cpu;
        let mk = |shape: &[usize], sd: u64| {
            use rand::{Rng, SeedableRng};
            let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(sd);
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect();
            Tensor::from_vec(v, shape, &dev).unwrap()
        };
        let x = Var::from_tensor(&mk(&[b, c, hw.0, hw.1], seed)).unwrap();
        let w = Var::from_tensor(&mk(&[o, c / g, k, k], seed + 1)).unwrap();
        let ours = x.as_tensor().apply_op2(w.as_tensor(), GemmConv { pad: p, stride: s, groups: g }).unwrap();
        let reference = x.as_tensor().conv2d(w.as_tensor(), p, s, 1, g).unwrap();
        assert_eq!(ours.dims(), reference.dims());
        let tol = 1e-5;
        assert!(max_rel_diff(&ours, &reference).unwrap() < tol, "forward");
        let gy = mk(ours.dims(), seed + 2);
        let g_ours = (ours * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = (reference * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        for (v, what) in [(&x, "input grad"), (&w, "weight grad")] {
            let a = g_ours.get(v).unwrap();
            let r = g_ref.get(v).unwrap();
            assert!(max_rel_diff(a, r).unwrap() < tol, "{what}: {}", max_rel_diff(a, r).unwrap());
        }
    }

    #[test]
    fn yolo_shapes_match_candle() {
        check(2, 3, 8, (20, 18), 6, 2, 2, 1, 1); // YOLOv5 stem
        check(5, 8, 16, (9, 9), 3, 2, 1, 1, 2); // downsampling conv
        check(3, 8, 8, (7, 8), 3, 1, 1, 8, 3); // depthwise
        check(6, 16, 12, (5, 6), 1, 1, 0, 1, 4); // 1×1, direct
        check(1, 8, 8, (6, 6), 1, 1, 0, 2, 5); // grouped 1×1, single image
        check(2, 4, 4, (4, 4), 5, 1, 2, 1, 6);
    }

    /// The definition, in f64: y, dx and dw for output gradient `gy`.
    fn naive(d: &Dims, x: &[f32], w: &[f32], gy: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (mut y, mut dx, mut dw) = (vec![0f64; gy.len()], vec![0f64; x.len()], vec![0f64; w.len()]);
        for b in 0..d.b {
            for o in 0..d.o {
                let g = o / d.og;
                for oy in 0..d.oh {
                    for ox in 0..d.ow {
                        let yi = ((b * d.o + o) * d.oh + oy) * d.ow + ox;
                        for ci in 0..d.cg {
                            let c = g * d.cg + ci;
                            for ki in 0..d.kh {
                                for kj in 0..d.kw {
                                    let (iy, ix) = ((oy * d.s + ki) as isize - d.p as isize, (ox * d.s + kj) as isize - d.p as isize);
                                    if iy < 0 || ix < 0 || iy >= d.h as isize || ix >= d.w as isize {
                                        continue;
                                    }
                                    let xi = ((b * d.c + c) * d.h + iy as usize) * d.w + ix as usize;
                                    let wi = ((o * d.cg + ci) * d.kh + ki) * d.kw + kj;
                                    y[yi] += x[xi] as f64 * w[wi] as f64;
                                    dx[xi] += gy[yi] as f64 * w[wi] as f64;
                                    dw[wi] += gy[yi] as f64 * x[xi] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, dx, dw)
    }

    fn rel(a: &[f32], r: &[f64]) -> f64 {
        let m = r.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
        a.iter().zip(r).fold(0f64, |e, (a, r)| e.max((*a as f64 - r).abs())) / m
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        /// Any geometry (including strides that leave input rows unread, where candle's own
        /// conv2d backward fails) against the definition.
        #[test]
        fn any_geometry_matches_the_definition(b in 1usize..6, cg in 1usize..4, og in 1usize..4, g in 1usize..3,
                                               h in 1usize..9, w in 1usize..9, kh in 1usize..4, kw in 1usize..4,
                                               s in 1usize..4, p in 0usize..3, seed in 0u64..1000) {
            prop_assume!(h + 2 * p >= kh && w + 2 * p >= kw);
            use rand::{Rng, SeedableRng};
            let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let conv = GemmConv { pad: p, stride: s, groups: g };
            let d = Dims::new(&conv, &[b, cg * g, h, w], &[og * g, cg, kh, kw]).unwrap();
            let mut v = |n: usize| (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect::<Vec<f32>>();
            let (x, wt, gy) = (v(b * d.c * h * w), v(d.o * d.kk()), v(b * d.o * d.ohw()));
            let (y0, dx0, dw0) = naive(&d, &x, &wt, &gy);
            prop_assert!(rel(&forward(&d, &x, &wt), &y0) < 1e-5);
            prop_assert!(rel(&backward_input(&d, &gy, &wt), &dx0) < 1e-5);
            prop_assert!(rel(&backward_weight(&d, &x, &gy), &dw0) < 1e-5);
        }
    }

    #[test]
    fn bad_geometry_is_an_error() {
        let x = Tensor::zeros((1, 6, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let w = Tensor::zeros((4, 4, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(x.apply_op2(&w, GemmConv { pad: 1, stride: 1, groups: 1 }).is_err());
        let w = Tensor::zeros((4, 6, 9, 9), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(x.apply_op2(&w, GemmConv { pad: 1, stride: 1, groups: 1 }).is_err());
    }
}
