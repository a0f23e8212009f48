//! The post-fusion LayerNorm over channels (Eq. 6, App. Eq. 17) as one fused CPU op with its own
//! backward: per location, μ and σ² over C in f64, y = (x − μ)/sqrt(σ² + ε), and
//! dL/dx = (dL/dy − mean_C(dL/dy) − y·mean_C(dL/dy·y))/sqrt(σ² + ε). The channels of a location are
//! H·W apart in NCHW, so every pass runs over whole channel rows (contiguous, vectorised) with
//! per-location accumulators. Other devices and dtypes use the same formula in candle ops.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::Result;

/// Eq. 6 (App. Eq. 17): LN over the channels of every location of a (B, C, H, W) map,
/// LN(h) = (h − μ_h)/sqrt(σ_h² + ε), μ_h and σ_h² (population variance) over C, no affine.
pub fn layer_norm_channels(h: &Tensor, eps: f64) -> Result<Tensor> {
    if h.device().is_cpu() && h.dtype() == DType::F32 && h.rank() == 4 {
        return Ok(h.contiguous()?.apply_op1(LnOp { eps })?);
    }
    layer_norm_reference(h, eps)
}

/// The same LN in candle's ops (autograd through every step): the reference the fused op is
/// tested against, and the path for other devices and dtypes.
pub fn layer_norm_reference(h: &Tensor, eps: f64) -> Result<Tensor> {
    let mu = h.mean_keepdim(1)?;
    let hc = h.broadcast_sub(&mu)?;
    let var = hc.sqr()?.mean_keepdim(1)?;
    Ok(hc.broadcast_div(&(var + eps)?.sqrt()?)?)
}

struct LnOp {
    eps: f64,
}

/// 1/sqrt(σ² + ε) and μ per location of one image (C rows of `hw`).
fn stats(x: &[f32], c: usize, hw: usize, eps: f64) -> (Vec<f64>, Vec<f64>) {
    let mut mu = vec![0f64; hw];
    for row in x.chunks_exact(hw) {
        mu.iter_mut().zip(row).for_each(|(m, v)| *m += *v as f64);
    }
    mu.iter_mut().for_each(|m| *m /= c as f64);
    let mut var = vec![0f64; hw];
    for row in x.chunks_exact(hw) {
        var.iter_mut().zip(row).zip(&mu).for_each(|((s, v), m)| *s += (*v as f64 - m).powi(2));
    }
    let inv = var.into_iter().map(|s| 1.0 / (s / c as f64 + eps).sqrt()).collect();
    (mu, inv)
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    q2_nn::ops::cpu_f32(s, l, what)
}

impl CustomOp1 for LnOp {
    fn name(&self) -> &'static str {
        "q2-ln-channels"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let (_, c, h, w) = l.shape().dims4()?;
        let hw = h * w;
        let mut y = vec![0f32; x.len()];
        if hw > 0 && c > 0 {
            y.par_chunks_mut(c * hw).zip(x.par_chunks(c * hw)).for_each(|(yb, xb)| {
                let (mu, inv) = stats(xb, c, hw, self.eps);
                for (yr, xr) in yb.chunks_exact_mut(hw).zip(xb.chunks_exact(hw)) {
                    for i in 0..hw {
                        yr[i] = ((xr[i] as f64 - mu[i]) * inv[i]) as f32;
                    }
                }
            });
        }
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        let op = LnBwd { eps: self.eps };
        Ok(Some(arg.apply_op3_no_bwd(res, &g, &op)?))
    }
}

struct LnBwd {
    eps: f64,
}

impl candle_core::CustomOp3 for LnBwd {
    fn name(&self) -> &'static str {
        "q2-ln-channels-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let y = f32_slice(s2, l2, self.name())?;
        let g = f32_slice(s3, l3, self.name())?;
        let (_, c, h, w) = l1.shape().dims4()?;
        let hw = h * w;
        let mut gx = vec![0f32; x.len()];
        if hw > 0 && c > 0 {
            gx.par_chunks_mut(c * hw).zip(x.par_chunks(c * hw)).zip(y.par_chunks(c * hw).zip(g.par_chunks(c * hw))).for_each(|((gxb, xb), (yb, gb))| {
                let (_, inv) = stats(xb, c, hw, self.eps);
                let (mut m1, mut m2) = (vec![0f64; hw], vec![0f64; hw]);
                for (yr, gr) in yb.chunks_exact(hw).zip(gb.chunks_exact(hw)) {
                    for i in 0..hw {
                        m1[i] += gr[i] as f64;
                        m2[i] += gr[i] as f64 * yr[i] as f64;
                    }
                }
                let n = c as f64;
                for ((out, yr), gr) in gxb.chunks_exact_mut(hw).zip(yb.chunks_exact(hw)).zip(gb.chunks_exact(hw)) {
                    for i in 0..hw {
                        out[i] = ((gr[i] as f64 - m1[i] / n - yr[i] as f64 * m2[i] / n) * inv[i]) as f32;
                    }
                }
            });
        }
        Ok((CpuStorage::F32(gx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use q2_nn::store::{seeded, Init};

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        d / b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-12)
    }

    /// The fused op against the candle composite in f64: forward and the input gradient of a
    /// weighted loss, on maps with an offset and very different per-location scales.
    #[test]
    fn fused_ln_matches_the_composite() {
        let x = seeded((3, 5, 4, 3), &Init::Normal { mean: 0.7, std: 2.0 }, 1, &Device::Cpu).unwrap();
        let scale = seeded((1, 1, 4, 3), &Init::Uniform { lo: 0.01, hi: 3.0 }, 2, &Device::Cpu).unwrap();
        let x = x.broadcast_mul(&scale).unwrap();
        let w = seeded((3, 5, 4, 3), &Init::Normal { mean: 0.0, std: 1.0 }, 3, &Device::Cpu).unwrap();
        let v = Var::from_tensor(&x).unwrap();
        let y = layer_norm_channels(v.as_tensor(), 1e-5).unwrap();
        let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gx = g.get(v.as_tensor()).unwrap().clone();
        let v64 = Var::from_tensor(&x.to_dtype(DType::F64).unwrap()).unwrap();
        let y64 = layer_norm_reference(v64.as_tensor(), 1e-5).unwrap();
        let g64 = (&y64 * &w.to_dtype(DType::F64).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
        let gx64 = g64.get(v64.as_tensor()).unwrap().to_dtype(DType::F32).unwrap();
        assert!(max_rel(&y, &y64.to_dtype(DType::F32).unwrap()) < 1e-6);
        assert!(max_rel(&gx, &gx64) < 1e-5, "{}", max_rel(&gx, &gx64));
    }
}
