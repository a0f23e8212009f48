//! candle plumbing: any [`Kernel`] becomes a differentiable custom op. The forward is a
//! `CustomOp2(x, params)`; its backward runs one fused pass (`CustomOp3(x, params, dL/dy)`) that
//! returns dL/dx and dL/dparams packed in one buffer, split here into two views.

use std::sync::Arc;

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use q2_nn::ops::cpu_f32;
use q2_nn::profile::{self, Op};

use crate::kernel::{self, Kernel};
use crate::Result;

/// Forward op: x (any shape, `groups` equal contiguous groups) and params (`groups × P`).
pub struct FqOp<K: Kernel> {
    pub k: Arc<K>,
    pub groups: usize,
}

/// Backward op: outputs `[dL/dx (numel) | dL/dparams (groups × P)]`.
pub struct FqBwdOp<K: Kernel> {
    pub k: Arc<K>,
    pub groups: usize,
}

fn check_groups(n: usize, groups: usize, name: &str) -> candle_core::Result<()> {
    if groups == 0 || n % groups != 0 {
        bail!("{name}: {n} elements cannot be split into {groups} groups");
    }
    Ok(())
}

impl<K: Kernel> CustomOp2 for FqOp<K> {
    fn name(&self) -> &'static str {
        self.k.name()
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s1, l1, self.name())?;
        let p = cpu_f32(s2, l2, self.name())?;
        check_groups(x.len(), self.groups, self.name())?;
        let y = profile::timed(Op::FakeQuantForward, || kernel::forward(&*self.k, x, p, self.groups));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        check_groups(l1.shape().elem_count(), self.groups, self.name())?;
        let y = crate::cuda::forward(&*self.k, s1, l1, s2, l2, self.groups)?;
        Ok((y, l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, p: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let bwd = FqBwdOp { k: self.k.clone(), groups: self.groups };
        let packed = x.apply_op3_no_bwd(p, &g.contiguous()?, &bwd)?;
        let n = x.elem_count();
        let gx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let np = self.k.num_params();
        let gp = if np == 0 { None } else { Some(packed.narrow(0, n, self.groups * np)?.reshape(p.shape())?) };
        Ok((Some(gx), gp))
    }
}

impl<K: Kernel> CustomOp3 for FqBwdOp<K> {
    fn name(&self) -> &'static str {
        self.k.name()
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s1, l1, self.name())?;
        let p = cpu_f32(s2, l2, self.name())?;
        let g = cpu_f32(s3, l3, self.name())?;
        let out = profile::timed(Op::FakeQuantBackward, || kernel::backward_packed(&*self.k, x, p, g, self.groups));
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let n = l1.shape().elem_count() + self.groups * self.k.num_params();
        let out = crate::cuda::backward(&*self.k, s1, l1, s2, l2, s3, l3, self.groups)?;
        Ok((out, Shape::from(n)))
    }
}

/// Applies kernel `k` to `x` split into `groups` groups, with packed parameters `p`
/// (`groups × k.num_params()`, any shape; ignored when the kernel has none).
/// Gradients flow to `x` and `p` through candle's autograd.
pub fn fake_quant<K: Kernel>(k: Arc<K>, x: &Tensor, p: Option<&Tensor>, groups: usize) -> Result<Tensor> {
    if x.dtype() != DType::F32 {
        return Err(crate::QuantError::Config(format!("{}: fake quantization needs f32 tensors, got {:?}", k.name(), x.dtype())));
    }
    let dummy;
    let p = match p {
        Some(p) => p.contiguous()?,
        None => {
            dummy = Tensor::zeros(1, DType::F32, x.device())?;
            dummy.clone()
        }
    };
    let want = groups * k.num_params();
    if k.num_params() > 0 && p.elem_count() != want {
        return Err(crate::QuantError::Config(format!(
            "{}: {} parameters given for {groups} group(s) of {} parameters",
            k.name(),
            p.elem_count(),
            k.num_params()
        )));
    }
    Ok(x.contiguous()?.apply_op2_arc(&p, Arc::new(Box::new(FqOp { k, groups })))?)
}
