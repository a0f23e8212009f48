//! The saliency map S of a feature map X (paper Eq. 13–15) and its per-(b, c) statistics.

use candle_core::{Tensor, D};

use crate::error::{invalid, Result};

/// Floor on the variance before the square root, so that a constant channel gets a finite σ
/// gradient (sqrt'(0) = ∞); far below any variance a real feature map has.
const VAR_FLOOR: f64 = 1e-30;

/// Checks that `x` is a non-empty (B, C, H, W) map; `what` names it in the error.
pub(crate) fn dims4(x: &Tensor, what: &str) -> Result<(usize, usize, usize, usize)> {
    match *x.dims() {
        [b, c, h, w] if b * c * h * w > 0 => Ok((b, c, h, w)),
        _ => invalid(format!("{what}: expected a non-empty (B, C, H, W) tensor, got shape {:?}", x.dims())),
    }
}

/// μ_c and σ_c of each (b, c): mean and population standard deviation over the H·W positions,
/// each of shape (B, C, 1, 1). Differentiable.
pub fn channel_stats(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let (b, c, h, w) = dims4(x, "channel_stats")?;
    let flat = x.reshape((b, c, h * w))?;
    let mu = flat.mean_keepdim(D::Minus1)?;
    let var = flat.broadcast_sub(&mu)?.sqr()?.mean_keepdim(D::Minus1)?;
    let sigma = var.maximum(VAR_FLOOR)?.sqrt()?;
    Ok((mu.reshape((b, c, 1, 1))?, sigma.reshape((b, c, 1, 1))?))
}

/// Eq. 13: the quantization distortion Δ = |X − X̂|.
pub fn distortion(x: &Tensor, xq: &Tensor) -> Result<Tensor> {
    if x.dims() != xq.dims() {
        return invalid(format!("distortion: X has shape {:?} but X̂ has shape {:?}", x.dims(), xq.dims()));
    }
    Ok((x - xq)?.abs()?)
}

/// Eq. 14: z = |X − μ_c| / (σ_c + κ) and, when Δ is given, r = Δ / (s_c + κ).
///
/// `step` holds s_c: one value (per tensor) or C values (per channel); `None` uses σ_c.
/// Returns (z, r), each (B, C, H, W).
pub fn standardise(x: &Tensor, delta: Option<&Tensor>, step: Option<&[f32]>, kappa: f64) -> Result<(Tensor, Option<Tensor>)> {
    let (_, c, _, _) = dims4(x, "saliency")?;
    let (mu, sigma) = channel_stats(x)?;
    let z = x.broadcast_sub(&mu)?.abs()?.broadcast_div(&(&sigma + kappa)?)?;
    if let Some(s) = step {
        if s.len() != 1 && s.len() != c {
            return invalid(format!("saliency: {} quantization steps given for a map of shape {:?} (want 1 or {c})", s.len(), x.dims()));
        }
        if s.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return invalid(format!("saliency: quantization steps must be finite and >= 0, got {s:?}"));
        }
    }
    let Some(delta) = delta else { return Ok((z, None)) };
    let denom = match step {
        None => (&sigma + kappa)?,
        Some(s) => {
            let s: Vec<f64> = s.iter().map(|v| *v as f64 + kappa).collect();
            Tensor::from_vec(s.clone(), (1, s.len(), 1, 1), x.device())?.to_dtype(x.dtype())?
        }
    };
    Ok((z, Some(delta.broadcast_div(&denom)?)))
}

/// Eq. 15: S = log(1 + z²) + γ·log(1 + r²); r = None means r = 0.
pub fn combine(z: &Tensor, r: Option<&Tensor>, gamma: f64) -> Result<Tensor> {
    let s = (z.sqr()? + 1.0)?.log()?;
    Ok(match r {
        Some(r) if gamma != 0.0 => (s + ((r.sqr()? + 1.0)?.log()? * gamma)?)?,
        _ => s,
    })
}

/// The saliency S (B, C, H, W) of Eq. 13–15 for the map `x` and its quantized copy `xq`
/// (`None`: no Δ, r = 0). `step` as in [`standardise`].
pub fn saliency(x: &Tensor, xq: Option<&Tensor>, step: Option<&[f32]>, gamma: f64, kappa: f64) -> Result<Tensor> {
    saliency_with(x, xq, step, gamma, kappa, false)
}

/// [`saliency`], with the r term detached when `detach_r` is set.
pub(crate) fn saliency_with(
    x: &Tensor,
    xq: Option<&Tensor>,
    step: Option<&[f32]>,
    gamma: f64,
    kappa: f64,
    detach_r: bool,
) -> Result<Tensor> {
    dims4(x, "saliency")?;
    let delta = xq.map(|xq| distortion(x, xq)).transpose()?;
    let (z, r) = standardise(x, delta.as_ref(), step, kappa)?;
    let r = if detach_r { r.map(|r| r.detach()) } else { r };
    combine(&z, r.as_ref(), gamma)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// x: one sample, 2 channels of 2×3, f64.
    fn sample() -> Vec<f64> {
        vec![0.3, -1.2, 2.5, 0.0, 0.7, 1.1, 5.0, 4.0, 4.5, 6.5, 3.0, 4.2]
    }

    /// Reference S for one (1, 2, 2, 3) map, by hand in f64. `step`: None → σ_c.
    fn reference(x: &[f64], xq: Option<&[f64]>, step: Option<f64>, gamma: f64, kappa: f64) -> Vec<f64> {
        let mut out = vec![];
        for ch in x.chunks(6).zip(0..) {
            let (v, c) = ch;
            let mu = v.iter().sum::<f64>() / 6.0;
            let sigma = (v.iter().map(|a| (a - mu).powi(2)).sum::<f64>() / 6.0).sqrt();
            for (i, a) in v.iter().enumerate() {
                let z = (a - mu).abs() / (sigma + kappa);
                let r = match xq {
                    None => 0.0,
                    Some(q) => (a - q[c * 6 + i]).abs() / (step.unwrap_or(sigma) + kappa),
                };
                out.push((1.0 + z * z).ln() + gamma * (1.0 + r * r).ln());
            }
        }
        out
    }

    fn rounded(x: &[f64], s: f64) -> Vec<f64> {
        x.iter().map(|a| (a / s).round() * s).collect()
    }

    /// (X̂, step given, step the reference uses).
    type Case<'a> = (Option<&'a Tensor>, Option<&'a [f32]>, Option<f64>);

    #[test]
    fn saliency_matches_hand_reference() {
        let dev = Device::Cpu;
        let xv = sample();
        let xqv = rounded(&xv, 0.5);
        let x = Tensor::from_vec(xv.clone(), (1, 2, 2, 3), &dev).unwrap();
        let xq = Tensor::from_vec(xqv.clone(), (1, 2, 2, 3), &dev).unwrap();
        let cases: [Case; 4] =
            [(None, None, None), (Some(&xq), Some(&[0.5]), Some(0.5)), (Some(&xq), Some(&[0.5, 0.5]), Some(0.5)), (Some(&xq), None, None)];
        for (q, step, ref_step) in cases {
            let got = saliency(&x, q, step, 0.7, 1e-3).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let want = reference(&sample(), q.map(|_| xqv.as_slice()), ref_step, 0.7, 1e-3);
            for (g, w) in got.iter().zip(&want) {
                approx::assert_relative_eq!(*g, *w, max_relative = 1e-9);
            }
        }
    }

    #[test]
    fn saliency_is_nonnegative_and_f32_works() {
        let x = Tensor::randn(0f32, 1.0, (2, 3, 4, 4), &Device::Cpu).unwrap();
        let s = saliency(&x, Some(&x.round().unwrap()), Some(&[1.0]), 1.0, 1e-3).unwrap();
        assert_eq!(s.dims(), x.dims());
        assert!(s.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|v| *v >= 0.0));
    }

    #[test]
    fn constant_channel_has_finite_gradient() {
        let x = candle_core::Var::from_tensor(&Tensor::ones((1, 1, 2, 2), DType::F32, &Device::Cpu).unwrap()).unwrap();
        let xq = (x.as_tensor() * 0.5).unwrap();
        let s = saliency(x.as_tensor(), Some(&xq), None, 1.0, 1e-3).unwrap();
        let g = s.sum_all().unwrap().backward().unwrap();
        let gx = g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(gx.iter().all(|v| v.is_finite()), "{gx:?}");
    }

    #[test]
    fn bad_inputs_are_errors() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 2, 2, 2), DType::F32, &dev).unwrap();
        assert!(saliency(&x.flatten_all().unwrap(), None, None, 1.0, 1e-3).is_err());
        assert!(saliency(&x, Some(&x), Some(&[1.0, 1.0, 1.0]), 1.0, 1e-3).is_err());
        assert!(saliency(&x, Some(&x), Some(&[-1.0]), 1.0, 1e-3).is_err());
        let other = Tensor::zeros((1, 2, 2, 3), DType::F32, &dev).unwrap();
        assert!(saliency(&x, Some(&other), None, 1.0, 1e-3).is_err());
        assert!(channel_stats(&Tensor::zeros((0, 2, 2, 2), DType::F32, &dev).unwrap()).is_err());
    }
}
