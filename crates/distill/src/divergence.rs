//! From saliency to per-channel spatial distributions, and the divergences between them (Eq. 16).

use candle_core::{Tensor, D};

use crate::error::{invalid, Result};
use crate::saliency::dims4;

/// Ã = sigmoid(S / T), normalised per (b, c) by its sum over the H·W positions (L1, not a
/// softmax). Returns (B, C, H·W); every row is > 0 and sums to 1.
pub fn attention_distribution(s: &Tensor, temperature: f64) -> Result<Tensor> {
    let (b, c, h, w) = dims4(s, "attention_distribution")?;
    if !(temperature > 0.0 && temperature.is_finite()) {
        return invalid(format!("attention_distribution: temperature must be finite and > 0, got {temperature}"));
    }
    // sigmoid(u) = 1 / (1 + e^{-u}); stable here because S ≥ 0.
    let a = ((s / temperature)?.neg()?.exp()? + 1.0)?.recip()?.reshape((b, c, h * w))?;
    Ok(a.broadcast_div(&a.sum_keepdim(D::Minus1)?)?)
}

/// Checks that P and R are matching (B, C, N) distributions.
fn check_pair(p: &Tensor, r: &Tensor, what: &str) -> Result<()> {
    if p.rank() != 3 || p.dims() != r.dims() {
        return invalid(format!("{what}: expected two (B, C, N) tensors of one shape, got {:?} and {:?}", p.dims(), r.dims()));
    }
    Ok(())
}

/// Eq. 16: JS(P, R) = ½ Σ P (log P − log M) + ½ Σ R (log R − log M), M = (P + R)/2, summed over
/// the last axis of (B, C, N) → (B, C). Entries must be > 0.
pub fn js_divergence(p: &Tensor, r: &Tensor) -> Result<Tensor> {
    check_pair(p, r, "js_divergence")?;
    let log_m = ((p + r)? * 0.5)?.log()?;
    let kp = (p * (p.log()? - &log_m)?)?.sum(D::Minus1)?;
    let kr = (r * (r.log()? - &log_m)?)?.sum(D::Minus1)?;
    Ok(((kp + kr)? * 0.5)?)
}

/// KL(P‖R) = Σ P (log P − log R) over the last axis of (B, C, N) → (B, C); P (the teacher)
/// first. Entries must be > 0.
pub fn kl_divergence(p: &Tensor, r: &Tensor) -> Result<Tensor> {
    check_pair(p, r, "kl_divergence")?;
    Ok((p * (p.log()? - r.log()?)?)?.sum(D::Minus1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn js_and_kl_match_hand_values() {
        let dev = Device::Cpu;
        let p = Tensor::new(&[[[0.5f64, 0.25, 0.25]]], &dev).unwrap();
        let r = Tensor::new(&[[[0.25f64, 0.25, 0.5]]], &dev).unwrap();
        let kl = kl_divergence(&p, &r).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()[0];
        approx::assert_relative_eq!(kl, 0.25 * 2f64.ln(), max_relative = 1e-12);
        let m = [0.375, 0.25, 0.375];
        let want = 0.5 * (0.5 * (0.5f64 / m[0]).ln() + 0.25 * (0.25f64 / m[2]).ln()) * 2.0;
        let js = js_divergence(&p, &r).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()[0];
        approx::assert_relative_eq!(js, want, max_relative = 1e-12);
    }

    #[test]
    fn temperature_cannot_break_the_factor_two() {
        // S ≥ 0 keeps sigmoid(S / T) in [0.5, 1) for every T > 0: T < 1 moves the max/min ratio
        // of a row towards 2, never past it.
        let s = Tensor::new(&[0f32, 0.5, 1.0, 2.0], &Device::Cpu).unwrap().reshape((1, 1, 2, 2)).unwrap();
        let ratio = |t: f64| {
            let p = attention_distribution(&s, t).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            p.iter().cloned().fold(0f32, f32::max) / p.iter().cloned().fold(1f32, f32::min)
        };
        let (r1, r_low) = (ratio(1.0), ratio(0.1));
        assert!(r1 < r_low && r_low <= 2.0, "{r1} {r_low}");
    }

    #[test]
    fn bad_shapes_are_errors() {
        let dev = Device::Cpu;
        let a = Tensor::ones((1, 2, 4), DType::F32, &dev).unwrap();
        let b = Tensor::ones((1, 2, 5), DType::F32, &dev).unwrap();
        assert!(js_divergence(&a, &b).is_err());
        assert!(kl_divergence(&a, &b).is_err());
        assert!(js_divergence(&a.flatten_all().unwrap(), &a.flatten_all().unwrap()).is_err());
        assert!(attention_distribution(&a, 1.0).is_err());
        assert!(attention_distribution(&a.unsqueeze(0).unwrap(), 0.0).is_err());
    }
}
