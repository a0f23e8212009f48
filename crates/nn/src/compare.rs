//! Comparing tensors: the parity measure every fixture check uses, `max |got − want| / max |want|`
//! (the "relative error" the issues state tolerances in).

use candle_core::{DType, Tensor};

use crate::{NnError, Result};

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(got: &Tensor, want: &Tensor) -> Result<f64> {
    if got.dims() != want.dims() {
        return Err(NnError::Invalid(format!("compare: shapes differ: {:?} vs {:?}", got.dims(), want.dims())));
    }
    Ok((got.to_dtype(DType::F64)? - want.to_dtype(DType::F64)?)?.abs()?.max_all()?.to_scalar::<f64>()?)
}

/// `max |got − want| / max |want|` (the denominator floored at 1e-30).
pub fn max_rel_diff(got: &Tensor, want: &Tensor) -> Result<f64> {
    let m = want.to_dtype(DType::F64)?.abs()?.max_all()?.to_scalar::<f64>()?;
    Ok(max_abs_diff(got, want)? / m.max(1e-30))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn relative_to_the_largest_reference_value() {
        let a = Tensor::new(&[1.0f32, -4.0, 2.0], &Device::Cpu).unwrap();
        let b = Tensor::new(&[1.5f32, -4.0, 2.0], &Device::Cpu).unwrap();
        assert_eq!(max_abs_diff(&b, &a).unwrap(), 0.5);
        assert_eq!(max_rel_diff(&b, &a).unwrap(), 0.125);
        assert!(max_abs_diff(&a, &Tensor::new(&[1.0f32], &Device::Cpu).unwrap()).is_err());
    }
}
