//! Small tensor ops with hand-written CPU kernels and PyTorch's exact backward semantics:
//! nearest 2x upsampling and "same" max pooling (stride 1, padding k/2, ties broken towards the
//! first window element in row-major order, as PyTorch's CPU kernel does).
//!
//! candle's own versions differ: its max-pool backward is unsupported for stride 1 and splits
//! gradients among ties, and its upsample backward is a grouped convolution (one conv per
//! channel). On devices without a kernel here, the candle built-ins are used.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::Result;

/// Borrows the contiguous f32 data of a CPU storage.
pub fn cpu_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        other => bail!("{op}: only f32 is supported, got {:?}", other.dtype()),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{op}: input must be contiguous"),
    }
}

/// Nearest-neighbour 2x upsampling of a (B, C, H, W) tensor.
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if x.device().is_cpu() {
        Ok(x.contiguous()?.apply_op1(Upsample2x)?)
    } else {
        Ok(x.upsample_nearest2d(2 * h, 2 * w)?)
    }
}

/// Max pooling, kernel `k` (odd), stride 1, padding `k / 2`: output size = input size.
pub fn max_pool_same(x: &Tensor, k: usize) -> Result<Tensor> {
    if k % 2 == 0 {
        return Err(crate::NnError::Invalid(format!("max_pool_same: kernel {k} must be odd")));
    }
    if x.device().is_cpu() {
        return Ok(x.contiguous()?.apply_op1(MaxPoolSame { k })?);
    }
    // Generic path: pad with -inf and take the running maximum of k*k shifted views.
    let (b, c, h, w) = x.dims4()?;
    let p = k / 2;
    let ninf = |hh, ww| Tensor::full(f32::NEG_INFINITY, (b, c, hh, ww), x.device());
    let xp = Tensor::cat(&[&ninf(h, p)?, x, &ninf(h, p)?], 3)?;
    let xp = Tensor::cat(&[&ninf(p, w + 2 * p)?, &xp, &ninf(p, w + 2 * p)?], 2)?;
    let mut out = xp.narrow(2, 0, h)?.narrow(3, 0, w)?;
    for i in 0..k {
        for j in 0..k {
            if i + j > 0 {
                out = out.maximum(&xp.narrow(2, i, h)?.narrow(3, j, w)?)?;
            }
        }
    }
    Ok(out)
}

struct Upsample2x;

impl CustomOp1 for Upsample2x {
    fn name(&self) -> &'static str {
        "q2-upsample2x"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s, l, self.name())?;
        let (b, c, h, w) = l.shape().dims4()?;
        let mut y = vec![0f32; b * c * h * w * 4];
        y.par_chunks_mut(4 * h * w).zip(x.par_chunks(h * w)).for_each(|(yp, xp)| {
            for i in 0..2 * h {
                let row = &xp[(i / 2) * w..(i / 2 + 1) * w];
                let out = &mut yp[i * 2 * w..(i + 1) * 2 * w];
                for (j, v) in row.iter().enumerate() {
                    out[2 * j] = *v;
                    out[2 * j + 1] = *v;
                }
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((b, c, 2 * h, 2 * w))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Upsample2xBwd { shape: arg.shape().clone() })?))
    }
}

struct Upsample2xBwd {
    shape: Shape,
}

impl CustomOp1 for Upsample2xBwd {
    fn name(&self) -> &'static str {
        "q2-upsample2x-bwd"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = cpu_f32(s, l, self.name())?;
        let (b, c, h, w) = self.shape.dims4()?;
        let mut gx = vec![0f32; b * c * h * w];
        gx.par_chunks_mut(h * w).zip(g.par_chunks(4 * h * w)).for_each(|(gp, yp)| {
            for i in 0..h {
                let r0 = &yp[2 * i * 2 * w..(2 * i + 1) * 2 * w];
                let r1 = &yp[(2 * i + 1) * 2 * w..(2 * i + 2) * 2 * w];
                for j in 0..w {
                    // Same summation order as PyTorch's CPU backward (row by row).
                    gp[i * w + j] = ((r0[2 * j] + r0[2 * j + 1]) + r1[2 * j]) + r1[2 * j + 1];
                }
            }
        });
        Ok((CpuStorage::F32(gx), self.shape.clone()))
    }
}

struct MaxPoolSame {
    k: usize,
}

/// Index (within the plane) of the window maximum at output (i, j); first maximum in row-major
/// window order wins, NaN propagates (PyTorch CPU semantics).
#[inline]
fn window_argmax(x: &[f32], h: usize, w: usize, k: usize, i: usize, j: usize) -> usize {
    let p = k / 2;
    let (i0, i1) = (i.saturating_sub(p), (i + p + 1).min(h));
    let (j0, j1) = (j.saturating_sub(p), (j + p + 1).min(w));
    let mut best = i0 * w + j0;
    let mut m = f32::NEG_INFINITY;
    for ii in i0..i1 {
        for jj in j0..j1 {
            let v = x[ii * w + jj];
            if v > m || v.is_nan() {
                m = v;
                best = ii * w + jj;
            }
        }
    }
    best
}

impl CustomOp1 for MaxPoolSame {
    fn name(&self) -> &'static str {
        "q2-maxpool-same"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s, l, self.name())?;
        let (_, _, h, w) = l.shape().dims4()?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(h * w).zip(x.par_chunks(h * w)).for_each(|(yp, xp)| {
            for i in 0..h {
                for j in 0..w {
                    yp[i * w + j] = xp[window_argmax(xp, h, w, self.k, i, j)];
                }
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &MaxPoolSameBwd { k: self.k })?))
    }
}

struct MaxPoolSameBwd {
    k: usize,
}

impl CustomOp2 for MaxPoolSameBwd {
    fn name(&self) -> &'static str {
        "q2-maxpool-same-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s1, l1, self.name())?;
        let g = cpu_f32(s2, l2, self.name())?;
        let (_, _, h, w) = l1.shape().dims4()?;
        let mut gx = vec![0f32; x.len()];
        gx.par_chunks_mut(h * w).zip(x.par_chunks(h * w).zip(g.par_chunks(h * w))).for_each(|(gp, (xp, yp))| {
            for i in 0..h {
                for j in 0..w {
                    gp[window_argmax(xp, h, w, self.k, i, j)] += yp[i * w + j];
                }
            }
        });
        Ok((CpuStorage::F32(gx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn maxpool_generic_path_matches_kernel() {
        let x = Tensor::randn(0f32, 1., (2, 3, 6, 7), &Device::Cpu).unwrap();
        let a = max_pool_same(&x, 5).unwrap();
        // The generic (non-CPU) formula evaluated on CPU tensors.
        let (b, c, h, w) = x.dims4().unwrap();
        let ninf = |hh, ww| Tensor::full(f32::NEG_INFINITY, (b, c, hh, ww), x.device()).unwrap();
        let xp = Tensor::cat(&[&ninf(h, 2), &x, &ninf(h, 2)], 3).unwrap();
        let xp = Tensor::cat(&[&ninf(2, w + 4), &xp, &ninf(2, w + 4)], 2).unwrap();
        let mut m = xp.narrow(2, 0, h).unwrap().narrow(3, 0, w).unwrap();
        for i in 0..5 {
            for j in 0..5 {
                m = m.maximum(&xp.narrow(2, i, h).unwrap().narrow(3, j, w).unwrap()).unwrap();
            }
        }
        let d = (a - m).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0);
    }

    #[test]
    fn upsample_backward_sums_blocks() {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (1, 2, 3, 4), &Device::Cpu).unwrap()).unwrap();
        let y = upsample_nearest2x(x.as_tensor()).unwrap();
        assert_eq!(y.dims(), &[1, 2, 6, 8]);
        let g = y.sum_all().unwrap().backward().unwrap();
        let gx = g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(gx.iter().all(|v| *v == 4.0));
    }
}
