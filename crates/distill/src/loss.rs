//! The Q-ADA loss: teacher and student saliency → distributions P, R → divergence, reduced over
//! channels, batch and feature levels.

use candle_core::Tensor;

use crate::config::{AdaConfig, Divergence, RGrad, TeacherDelta};
use crate::divergence::{attention_distribution, js_divergence, kl_divergence};
use crate::error::{invalid, Result};
use crate::saliency::{dims4, saliency_with};

/// One supervised feature level of the student: the pre-quantizer map and the quantizer that
/// consumes it.
#[derive(Clone, Copy, Debug)]
pub struct StudentFeature<'a> {
    pub x: &'a Tensor,
    pub quantizer: Option<&'a dyn q2_quant::Quantizer>,
}

/// The divergence between teacher and student maps of one level, averaged over (B, C); not
/// weighted. The teacher map is detached.
pub fn ada_level_loss(cfg: &AdaConfig, student: &StudentFeature, teacher: &Tensor) -> Result<Tensor> {
    cfg.validate()?;
    let xs = student.x;
    dims4(xs, "student feature")?;
    if xs.dims() != teacher.dims() || xs.dtype() != teacher.dtype() {
        return invalid(format!(
            "student feature {:?} ({:?}) and teacher feature {:?} ({:?}) differ",
            xs.dims(),
            xs.dtype(),
            teacher.dims(),
            teacher.dtype()
        ));
    }
    let xt = teacher.detach();
    let (xq_s, xq_t, step) = match student.quantizer {
        None => (None, None, None),
        Some(q) => {
            let xq_s = match cfg.r_grad {
                RGrad::Ste => q.forward(xs)?,
                RGrad::Detach => q.forward(&xs.detach())?.detach(),
            };
            let xq_t = match cfg.teacher_delta {
                TeacherDelta::StudentQuantizer => Some(q.forward(&xt)?.detach()),
                TeacherDelta::Zero => None,
            };
            (Some(xq_s), xq_t, q.step()?)
        }
    };
    let detach_r = cfg.r_grad == RGrad::Detach;
    let s_student = saliency_with(xs, xq_s.as_ref(), step.as_deref(), cfg.gamma, cfg.kappa, detach_r)?;
    let s_teacher = saliency_with(&xt, xq_t.as_ref(), step.as_deref(), cfg.gamma, cfg.kappa, true)?.detach();
    let (s_teacher, s_student) = if cfg.centre { (centre(&s_teacher)?, centre(&s_student)?) } else { (s_teacher, s_student) };
    let p = attention_distribution(&s_teacher, cfg.temperature)?;
    let r = attention_distribution(&s_student, cfg.temperature)?;
    let d = match cfg.divergence {
        Divergence::Js => js_divergence(&p, &r)?,
        Divergence::Kl => kl_divergence(&p, &r)?,
    };
    Ok(d.mean_all()?)
}

/// S minus its spatial mean per (b, c) (the `centre` option; not in the paper).
fn centre(s: &Tensor) -> Result<Tensor> {
    Ok(s.broadcast_sub(&s.mean_keepdim(3)?.mean_keepdim(2)?)?)
}

/// `weight` · mean over levels of [`ada_level_loss`]; `student[i]` is compared with `teacher[i]`.
pub fn ada_loss(cfg: &AdaConfig, student: &[StudentFeature], teacher: &[Tensor]) -> Result<Tensor> {
    cfg.validate()?;
    if student.len() != teacher.len() || student.is_empty() {
        return invalid(format!(
            "Q-ADA: {} student levels and {} teacher levels (need the same number, at least 1)",
            student.len(),
            teacher.len()
        ));
    }
    let mut losses = Vec::with_capacity(student.len());
    for (i, (s, t)) in student.iter().zip(teacher).enumerate() {
        if s.x.dims() != t.dims() {
            return invalid(format!("Q-ADA level {i}: student feature {:?} vs teacher feature {:?}", s.x.dims(), t.dims()));
        }
        let l = ada_level_loss(cfg, s, t).map_err(|e| match e {
            crate::DistillError::Invalid(m) => crate::DistillError::Invalid(format!("Q-ADA level {i}: {m}")),
            e => e,
        })?;
        losses.push(l);
    }
    Ok((Tensor::stack(&losses, 0)?.mean_all()? * cfg.weight)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use q2_nn::ParamStore;
    use q2_quant::{build, Method, QuantSpec, Quantizer};

    /// Deterministic pseudo-random values in [-2, 2).
    fn data(n: usize, seed: f64) -> Vec<f64> {
        (0..n).map(|i| ((i as f64 * 12.9898 + seed * 78.233).sin() * 43758.5453).fract() * 2.0).collect()
    }

    fn tensor(n: (usize, usize, usize, usize), seed: f64, dtype: DType) -> Tensor {
        let v = data(n.0 * n.1 * n.2 * n.3, seed);
        Tensor::from_vec(v, n, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
    }

    fn lsq(store: &mut ParamStore, x: &Tensor) -> Box<dyn Quantizer> {
        let q = build(&QuantSpec::new(Method::Lsq, 4, false), 1, &mut store.scope("aq")).unwrap();
        q.init_from(x).unwrap();
        q
    }

    fn scalar(t: &Tensor) -> f64 {
        t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn identical_features_give_exactly_zero() {
        let mut store = ParamStore::new(Device::Cpu, 0);
        let x = tensor((2, 3, 5, 5), 1.0, DType::F32);
        let q = lsq(&mut store, &x);
        for divergence in [Divergence::Js, Divergence::Kl] {
            for r_grad in [RGrad::Ste, RGrad::Detach] {
                let cfg = AdaConfig { divergence, r_grad, ..AdaConfig::default() };
                let s = StudentFeature { x: &x, quantizer: Some(&*q) };
                let l = ada_loss(&cfg, &[s, s], &[x.clone(), x.clone()]).unwrap();
                assert_eq!(scalar(&l), 0.0, "{cfg:?}");
            }
        }
        // With Δ_teacher = 0 the maps differ, and the loss is positive.
        let cfg = AdaConfig { teacher_delta: TeacherDelta::Zero, ..AdaConfig::default() };
        let l = ada_loss(&cfg, &[StudentFeature { x: &x, quantizer: Some(&*q) }], std::slice::from_ref(&x)).unwrap();
        assert!(scalar(&l) > 0.0);
    }

    /// The `centre` option: the maps are no longer flat (max/min > 2) and a lower temperature
    /// sharpens them; identical features still give exactly zero.
    #[test]
    fn centring_lets_the_temperature_sharpen() {
        let x = tensor((1, 2, 6, 6), 3.0, DType::F32);
        let t = tensor((1, 2, 6, 6), 4.0, DType::F32);
        let s = crate::saliency(&x, None, None, 1.0, 1e-3).unwrap();
        let ratio = |temp: f64| {
            let p = attention_distribution(&centre(&s).unwrap(), temp).unwrap().to_vec3::<f32>().unwrap();
            p[0].iter().map(|row| row.iter().cloned().fold(0f32, f32::max) / row.iter().cloned().fold(f32::MAX, f32::min)).fold(0f32, f32::max)
        };
        assert!(ratio(1.0) > 2.0 && ratio(0.25) > ratio(1.0), "{} {}", ratio(1.0), ratio(0.25));
        let cfg = AdaConfig { centre: true, temperature: 0.5, ..AdaConfig::default() };
        let f = StudentFeature { x: &x, quantizer: None };
        assert_eq!(scalar(&ada_loss(&cfg, &[f], std::slice::from_ref(&x)).unwrap()), 0.0);
        assert!(scalar(&ada_loss(&cfg, &[f], &[t]).unwrap()) > 0.0);
    }

    #[test]
    fn gradients_reach_student_and_step_but_not_teacher() {
        let mut store = ParamStore::new(Device::Cpu, 0);
        let x = Var::from_tensor(&tensor((2, 3, 6, 6), 2.0, DType::F32)).unwrap();
        let t = Var::from_tensor(&tensor((2, 3, 6, 6), 3.0, DType::F32)).unwrap();
        let q = lsq(&mut store, x.as_tensor());
        let (_, step) = q.params().into_iter().next().unwrap();
        let nonzero = |g: Option<&Tensor>| g.is_some_and(|g| g.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().any(|v| *v != 0.0));
        for r_grad in [RGrad::Ste, RGrad::Detach] {
            let cfg = AdaConfig { r_grad, ..AdaConfig::default() };
            let s = StudentFeature { x: x.as_tensor(), quantizer: Some(&*q) };
            let l = ada_loss(&cfg, &[s], &[t.as_tensor().clone()]).unwrap();
            let g = l.backward().unwrap();
            assert!(nonzero(g.get(x.as_tensor())), "{r_grad:?}: no gradient into X");
            assert!(g.get(t.as_tensor()).is_none(), "{r_grad:?}: gradient into the teacher");
            assert_eq!(nonzero(g.get(step.as_tensor())), r_grad == RGrad::Ste, "{r_grad:?}: step gradient");
        }
    }

    #[test]
    fn finite_differences_match_backprop_in_f64() {
        let dims = (1, 2, 3, 3);
        let x0 = data(18, 4.0);
        let t = tensor(dims, 5.0, DType::F64);
        for divergence in [Divergence::Js, Divergence::Kl] {
            let cfg = AdaConfig { divergence, ..AdaConfig::default() };
            let loss = |v: &[f64]| {
                let x = Tensor::from_vec(v.to_vec(), dims, &Device::Cpu).unwrap();
                scalar(&ada_level_loss(&cfg, &StudentFeature { x: &x, quantizer: None }, &t).unwrap())
            };
            let x = Var::from_vec(x0.clone(), dims, &Device::Cpu).unwrap();
            let l = ada_level_loss(&cfg, &StudentFeature { x: x.as_tensor(), quantizer: None }, &t).unwrap();
            let g = l.backward().unwrap().get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let h = 1e-6;
            let fd: Vec<f64> = (0..x0.len())
                .map(|i| {
                    let (mut a, mut b) = (x0.clone(), x0.clone());
                    a[i] += h;
                    b[i] -= h;
                    (loss(&a) - loss(&b)) / (2.0 * h)
                })
                .collect();
            let err = g.iter().zip(&fd).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
            let norm = fd.iter().map(|a| a * a).sum::<f64>().sqrt();
            assert!(norm > 0.0 && err / norm < 1e-5, "{divergence:?}: |g - fd| / |fd| = {}", err / norm);
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let cfg = AdaConfig::default();
        let a = tensor((1, 2, 3, 3), 1.0, DType::F32);
        let b = tensor((1, 2, 3, 4), 1.0, DType::F32);
        let s = StudentFeature { x: &a, quantizer: None };
        let msg = ada_loss(&cfg, &[s, s], &[a.clone(), b.clone()]).unwrap_err().to_string();
        assert!(msg.contains("level 1") && msg.contains("[1, 2, 3, 4]"), "{msg}");
        assert!(ada_loss(&cfg, &[s, s], std::slice::from_ref(&a)).is_err());
        assert!(ada_loss(&cfg, &[], &[]).is_err());
        let flat = a.flatten_all().unwrap();
        assert!(ada_level_loss(&cfg, &StudentFeature { x: &flat, quantizer: None }, &flat).is_err());
        assert!(ada_level_loss(&cfg, &s, &a.to_dtype(DType::F64).unwrap()).is_err());
        let bad = AdaConfig { kappa: -1.0, ..AdaConfig::default() };
        assert!(ada_loss(&bad, &[s], std::slice::from_ref(&a)).is_err());
        // The quantizer op is f32 only: an error, not a panic.
        let mut store = ParamStore::new(Device::Cpu, 0);
        let q = lsq(&mut store, &a);
        let a64 = a.to_dtype(DType::F64).unwrap();
        assert!(ada_level_loss(&cfg, &StudentFeature { x: &a64, quantizer: Some(&*q) }, &a64).is_err());
    }
}

/// The extension point for feature distillation: a loss between the student's supervised
/// features (with the quantizers that read them) and the frozen teacher's, returned weighted and
/// per image. The trainer holds a `Box<dyn DistillLoss>`; Q-ADA ([`AdaConfig`]) is one. A new
/// loss implements this trait and gets one arm where `q2 qat` builds its teacher.
pub trait DistillLoss: Send + Sync {
    /// A short name for logs (`Q-ADA (js)`).
    fn name(&self) -> String;
    /// The weighted loss, a scalar.
    fn loss(&self, student: &[StudentFeature], teacher: &[Tensor]) -> Result<Tensor>;
}

impl DistillLoss for AdaConfig {
    fn name(&self) -> String {
        format!("Q-ADA ({})", match self.divergence {
            Divergence::Js => "js",
            Divergence::Kl => "kl",
        })
    }

    fn loss(&self, student: &[StudentFeature], teacher: &[Tensor]) -> Result<Tensor> {
        ada_loss(self, student, teacher)
    }
}
