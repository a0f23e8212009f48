//! Element-wise tensor ops the losses need that candle lacks or computes wastefully, with exact
//! backward passes: `atan` (CIoU's aspect term), fused binary cross-entropy with logits
//! (`torch.nn.BCEWithLogitsLoss(reduction="none", pos_weight=…)`), softmax / log-softmax whose
//! subtracted maximum is detached (so no gradient is routed through the max), and a finiteness
//! check of head outputs.
//!
//! The fused kernels run on CPU f32 tensors; other devices or dtypes use an equivalent composition
//! of candle ops.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Shape, Tensor, D};

use rayon::prelude::*;

use crate::{Result, YoloError};

/// Borrows the contiguous f32 data of a CPU storage.
fn cpu_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        other => bail!("{op}: only f32 is supported, got {:?}", other.dtype()),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{op}: input must be contiguous"),
    }
}

fn fused(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// Element-wise arctangent with gradient `1 / (1 + x²)`.
pub fn atan(x: &Tensor) -> Result<Tensor> {
    if fused(x) {
        return Ok(x.contiguous()?.apply_op1(Atan)?);
    }
    // Other devices: the (small) tensor makes a round trip through the CPU kernel; `to_device`
    // is differentiable.
    let dev = x.device().clone();
    let y = x.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.contiguous()?.apply_op1(Atan)?;
    Ok(y.to_device(&dev)?.to_dtype(x.dtype())?)
}

struct Atan;

impl CustomOp1 for Atan {
    fn name(&self) -> &'static str {
        "q2-atan"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s, l, self.name())?;
        Ok((CpuStorage::F32(x.iter().map(|v| v.atan()).collect()), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // d atan(x) / dx = 1 / (1 + x²)
        Ok(Some(grad.div(&arg.sqr()?.affine(1.0, 1.0)?)?))
    }
}

/// Element-wise `BCEWithLogitsLoss(reduction="none", pos_weight=pw)` of logits `x` against
/// constant targets `y` (no gradient flows to `y`):
/// `l = (1 − y)·x + (1 + (pw − 1)·y)·(log(1 + e^{−|x|}) + max(−x, 0))`, PyTorch's stable form;
/// `dl/dx = (1 − y) − (1 + (pw − 1)·y)·(1 − σ(x))`.
pub fn bce_with_logits(x: &Tensor, y: &Tensor, pos_weight: f32) -> Result<Tensor> {
    let y = y.detach();
    if fused(x) && fused(&y) && x.shape() == y.shape() {
        return Ok(x.contiguous()?.apply_op2(&y.contiguous()?, Bce { pos_weight, sum: false })?);
    }
    let lw = y.affine((pos_weight - 1.0) as f64, 1.0)?;
    let sp = softplus_neg(x)?;
    Ok(((y.affine(-1.0, 1.0)? * x)? + (lw * sp)?)?)
}

/// The sum of [`bce_with_logits`] over all elements, as a 0-dim tensor: one pass forward and one
/// backward on CPU f32 (partial sums over fixed chunks in f64, added in order, so the result
/// does not depend on the number of threads).
pub fn bce_with_logits_sum(x: &Tensor, y: &Tensor, pos_weight: f32) -> Result<Tensor> {
    let y = y.detach();
    if fused(x) && fused(&y) && x.shape() == y.shape() {
        let x = x.flatten_all()?.contiguous()?;
        return Ok(x.apply_op2(&y.flatten_all()?.contiguous()?, Bce { pos_weight, sum: true })?.reshape(())?);
    }
    Ok(bce_with_logits(x, &y, pos_weight)?.sum_all()?)
}

/// `log(1 + e^{−x}) = log1p(e^{−|x|}) + max(−x, 0)` composed from candle ops.
fn softplus_neg(x: &Tensor) -> Result<Tensor> {
    let t = x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    Ok((t + x.neg()?.relu()?)?)
}

/// Elements per parallel chunk of the BCE kernels.
const CHUNK: usize = 1 << 15;

#[inline]
fn bce_elem(x: f32, y: f32, pw: f32) -> f32 {
    let lw = (pw - 1.0) * y + 1.0;
    (1.0 - y) * x + lw * ((-x.abs()).exp().ln_1p() + (-x).max(0.0))
}

#[inline]
fn bce_grad_elem(x: f32, y: f32, pw: f32) -> f32 {
    let lw = (pw - 1.0) * y + 1.0;
    // 1 − σ(x) = σ(−x), computed without cancellation
    let s_neg = if x >= 0.0 {
        let e = (-x).exp();
        e / (1.0 + e)
    } else {
        1.0 / (1.0 + x.exp())
    };
    (1.0 - y) - lw * s_neg
}

/// Fused BCE with logits: element-wise (`sum: false`) or summed to one element (`sum: true`).
struct Bce {
    pos_weight: f32,
    sum: bool,
}

impl CustomOp2 for Bce {
    fn name(&self) -> &'static str {
        "q2-bce-with-logits"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s1, l1, self.name())?;
        let y = cpu_f32(s2, l2, self.name())?;
        if x.len() != y.len() {
            bail!("{}: logits and targets differ in size ({} vs {})", self.name(), x.len(), y.len());
        }
        let pw = self.pos_weight;
        if self.sum {
            let parts: Vec<f64> = x
                .par_chunks(CHUNK)
                .zip(y.par_chunks(CHUNK))
                .map(|(xc, yc)| xc.iter().zip(yc).map(|(&a, &b)| bce_elem(a, b, pw) as f64).sum())
                .collect();
            let total: f64 = parts.iter().sum();
            return Ok((CpuStorage::F32(vec![total as f32]), Shape::from(1)));
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(y.par_chunks(CHUNK))).for_each(|(o, (xc, yc))| {
            for ((o, &a), &b) in o.iter_mut().zip(xc).zip(yc) {
                *o = bce_elem(a, b, pw);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, y) = (x.contiguous()?, y.contiguous()?);
        if self.sum {
            // the incoming gradient is one number: fold it into the kernel
            let g = grad.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?[0];
            let gx = x.apply_op2_no_bwd(&y, &BceGrad { pos_weight: self.pos_weight, scale: g })?;
            return Ok((Some(gx), None));
        }
        let gx = x.apply_op2_no_bwd(&y, &BceGrad { pos_weight: self.pos_weight, scale: 1.0 })?;
        Ok((Some(gx.mul(grad)?), None))
    }
}

/// `scale · d BCE / dx` for [`Bce`].
struct BceGrad {
    pos_weight: f32,
    scale: f32,
}

impl CustomOp2 for BceGrad {
    fn name(&self) -> &'static str {
        "q2-bce-with-logits-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s1, l1, self.name())?;
        let y = cpu_f32(s2, l2, self.name())?;
        let (pw, g) = (self.pos_weight, self.scale);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(y.par_chunks(CHUNK))).for_each(|(o, (xc, yc))| {
            for ((o, &a), &b) in o.iter_mut().zip(xc).zip(yc) {
                *o = g * bce_grad_elem(a, b, pw);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Softmax over the last dimension, the subtracted maximum detached (exact gradient, none routed
/// through the max).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Log-softmax over the last dimension, the subtracted maximum detached.
pub fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let d = x.broadcast_sub(&m)?;
    let lse = d.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(d.broadcast_sub(&lse)?)
}

/// Errors unless every element of `x` is finite; `what` names the tensor in the message
/// (`"p3_raw"`, …). One reduction: a sum is finite iff every term is finite, barring overflow of
/// logits beyond ~1e34, which is reported the same way.
pub fn check_finite(x: &Tensor, what: &str) -> Result<()> {
    let s = x.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    if s.is_finite() {
        return Ok(());
    }
    let v = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let bad = v.iter().position(|a| !a.is_finite());
    Err(YoloError::Invalid(match bad {
        Some(i) => format!(
            "loss: head output {what} {:?} holds a non-finite value ({} at flat index {i}; {} non-finite of {})",
            x.dims(),
            v[i],
            v.iter().filter(|a| !a.is_finite()).count(),
            v.len()
        ),
        None => format!("loss: head output {what} {:?} overflows float32 when summed (|values| too large)", x.dims()),
    }))
}

/// Errors unless every value of the slice `v` (the data of tensor `what`) is finite.
pub fn check_finite_slice(v: &[f32], dims: &[usize], what: &str) -> Result<()> {
    if let Some(i) = v.iter().position(|a| !a.is_finite()) {
        return Err(YoloError::Invalid(format!(
            "loss: head output {what} {dims:?} holds a non-finite value ({} at flat index {i}; {} non-finite of {})",
            v[i],
            v.iter().filter(|a| !a.is_finite()).count(),
            v.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn close(a: f32, b: f32, tol: f32) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    #[test]
    fn atan_value_and_gradient() {
        let xs = [-3.0f32, -0.5, 0.0, 0.7, 2.0, 40.0];
        let v = Var::from_slice(&xs, 6, &Device::Cpu).unwrap();
        let y = atan(v.as_tensor()).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let gy = g.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        for (i, x) in xs.iter().enumerate() {
            assert!(close(y.to_vec1::<f32>().unwrap()[i], x.atan(), 1e-6));
            assert!(close(gy[i], 1.0 / (1.0 + x * x), 1e-6));
        }
    }

    #[test]
    fn bce_matches_composed_and_finite_difference() {
        let xs = [-30.0f32, -4.0, -0.3, 0.0, 0.2, 3.0, 25.0];
        let ys = [0.0f32, 1.0, 0.3, 1.0, 0.0, 0.9, 1.0];
        for pw in [1.0f32, 0.8, 1.7] {
            let v = Var::from_slice(&xs, 7, &Device::Cpu).unwrap();
            let y = Tensor::from_slice(&ys, 7, &Device::Cpu).unwrap();
            let fused = bce_with_logits(v.as_tensor(), &y, pw).unwrap();
            let g = fused.sum_all().unwrap().backward().unwrap();
            let gf = g.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
            let lf = fused.to_vec1::<f32>().unwrap();
            for i in 0..xs.len() {
                let (x, t) = (xs[i] as f64, ys[i] as f64);
                let s = 1.0 / (1.0 + (-x).exp());
                let want = -(pw as f64 * t * s.ln() + (1.0 - t) * (1.0 - s).max(1e-300).ln());
                let want = if x < -20.0 && t == 0.0 { (1.0 + x.exp()).ln() } else { want };
                assert!(close(lf[i], want as f32, 1e-5), "loss {i}: {} vs {want}", lf[i]);
                let dwant = (1.0 - t) - (1.0 + (pw as f64 - 1.0) * t) * (1.0 - s);
                assert!(close(gf[i], dwant as f32, 1e-5), "grad {i}: {} vs {dwant}", gf[i]);
            }
        }
    }

    #[test]
    fn bce_sum_and_composed_path_agree_with_fused() {
        let xs: Vec<f32> = (0..100_000).map(|i| ((i * 7919) % 2001) as f32 / 100.0 - 10.0).collect();
        let ys: Vec<f32> = (0..100_000).map(|i| ((i * 31) % 11) as f32 / 10.0).collect();
        let v = Var::from_slice(&xs, xs.len(), &Device::Cpu).unwrap();
        let y = Tensor::from_slice(&ys, ys.len(), &Device::Cpu).unwrap();
        let s = bce_with_logits_sum(v.as_tensor(), &y, 1.3).unwrap().affine(0.5, 0.0).unwrap();
        let e = bce_with_logits(v.as_tensor(), &y, 1.3).unwrap().sum_all().unwrap().affine(0.5, 0.0).unwrap();
        let (s1, e1) = (s.to_scalar::<f32>().unwrap(), e.to_scalar::<f32>().unwrap());
        assert!(close(s1, e1, 1e-5), "{s1} vs {e1}");
        let gs = s.backward().unwrap().get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        let ge = e.backward().unwrap().get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(gs, ge);
        // f64 takes the composed path
        let x64 = v.as_tensor().to_dtype(DType::F64).unwrap();
        let c = bce_with_logits(&x64, &y.to_dtype(DType::F64).unwrap(), 1.3).unwrap().sum_all().unwrap();
        let c1 = c.to_scalar::<f64>().unwrap() * 0.5;
        assert!(close(c1 as f32, e1, 1e-5), "{c1} vs {e1}");
    }

    #[test]
    fn softmax_rows_sum_to_one_and_log_is_consistent() {
        let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0, -1.0, 0.0, 9.0], (2, 3), &Device::Cpu).unwrap();
        let s = softmax_last(&x).unwrap().to_vec2::<f32>().unwrap();
        let l = log_softmax_last(&x).unwrap().to_vec2::<f32>().unwrap();
        for r in 0..2 {
            assert!(close(s[r].iter().sum::<f32>(), 1.0, 1e-6));
            for c in 0..3 {
                assert!(close(l[r][c].exp(), s[r][c], 1e-6));
            }
        }
    }

    #[test]
    fn non_finite_is_named() {
        let x = Tensor::from_slice(&[1.0f32, f32::NAN, 3.0], 3, &Device::Cpu).unwrap();
        let e = check_finite(&x, "p4_raw").unwrap_err().to_string();
        assert!(e.contains("p4_raw") && e.contains("index 1"), "{e}");
        let x = Tensor::from_slice(&[1.0f32, f32::INFINITY], 2, &Device::Cpu).unwrap();
        assert!(check_finite(&x, "p3_cls_raw").is_err());
        assert!(check_finite(&Tensor::from_slice(&[1.0f32, 2.0], 2, &Device::Cpu).unwrap(), "x").is_ok());
    }
}
