//! The gradient tap: an identity op whose backward records the L2 norm of the gradient flowing
//! through it. candle keeps no gradient of an intermediate tensor in its `GradStore`; a tap on a
//! fusion branch's input measures G_i = ‖∂L/∂F̃_i‖₂ (paper Sec. 3.2) during the ordinary backward
//! pass, without a second one and without changing the forward.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Shape, Tensor};

/// Where taps write: one slot per branch, `None` until a backward pass reaches the tap.
#[derive(Debug, Default)]
pub struct TapSlots {
    pub norms: Vec<Option<f64>>,
    pub numel: Vec<usize>,
}

/// Identity in the forward; its backward stores ‖grad‖₂ (summed in f64, in a fixed order) into
/// `slots.norms[slot]` and passes the gradient on unchanged.
pub struct GradTap {
    pub slot: usize,
    pub slots: Arc<Mutex<TapSlots>>,
}

/// ‖g‖₂ of a tensor, squares summed in f64 in a fixed order (deterministic).
pub fn l2_norm(g: &Tensor) -> candle_core::Result<f64> {
    let v = g.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
    Ok(q2_quant::kernel::par_sum(&v, |x| (x as f64) * (x as f64)).sqrt())
}

impl CustomOp1 for GradTap {
    fn name(&self) -> &'static str {
        "q2-grad-tap"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some((a, b)) = l.contiguous_offsets() else { bail!("grad tap: input must be contiguous") };
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(v[a..b].to_vec()),
            CpuStorage::F64(v) => CpuStorage::F64(v[a..b].to_vec()),
            other => bail!("grad tap: float input expected, got {:?}", other.dtype()),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let n = l2_norm(grad)?;
        let mut s = self.slots.lock().map_err(|_| candle_core::Error::Msg("grad tap: poisoned lock".into()))?;
        if let Some(slot) = s.norms.get_mut(self.slot) {
            *slot = Some(n);
        }
        if let Some(c) = s.numel.get_mut(self.slot) {
            *c = arg.elem_count();
        }
        Ok(Some(grad.clone()))
    }
}

/// Taps `x` into `slots[slot]` (a contiguous copy of `x` in the forward).
pub fn tap(x: &Tensor, slot: usize, slots: &Arc<Mutex<TapSlots>>) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(GradTap { slot, slots: slots.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn tap_is_the_identity_and_records_the_gradient_norm() {
        let slots = Arc::new(Mutex::new(TapSlots { norms: vec![None, None], numel: vec![0, 0] }));
        let x = Var::from_vec(vec![1f32, -2.0, 3.0, 0.5], (1, 1, 2, 2), &Device::Cpu).unwrap();
        let y = tap(x.as_tensor(), 1, &slots).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [1.0, -2.0, 3.0, 0.5]);
        // L = Σ 3·y² → dL/dy = 6y
        let g = (y.sqr().unwrap() * 3.0).unwrap().sum_all().unwrap().backward().unwrap();
        let gx = g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(gx, [6.0, -12.0, 18.0, 3.0]);
        let want = (36.0f64 + 144.0 + 324.0 + 9.0).sqrt();
        let s = slots.lock().unwrap();
        assert_eq!(s.norms[0], None);
        assert!((s.norms[1].unwrap() - want).abs() < 1e-12);
        assert_eq!(s.numel[1], 4);
    }
}
