//! q2-fusion: the fusion hook at the neck's Concat nodes and Q-GBFusion, the paper's
//! gradient-balanced fusion (Sec. 3.2).
//!
//! - [`Fusion`]: an object-safe module that merges the branches of one neck node into one map
//!   (channel concat for [`Concat`]);
//! - [`fuse2`]: the typed two-branch call a model makes, checking `A + B == O` at compile time;
//! - [`FusionFactory`]: tells a model builder which fusion each neck node gets; [`PlainConcat`]
//!   is the default, [`gbf::GbfFactory`] builds Q-GBFusion. A factory receives the node's
//!   ultralytics layer index, its branch widths and the store scope of the node (`model.12`), so a
//!   learnable fusion registers its entries as `model.12.<name>` and they are saved, loaded and
//!   checkpointed with the rest of the model;
//! - [`gbf`]: Q-GBFusion (Eq. 4–10): softmax allocation, post-fusion LayerNorm ([`ln`], a fused
//!   CPU op), gradient-energy taps ([`tap`]), the closed-loop controller and its telemetry;
//! - [`fold`]: LayerNorm folding for deployment (Eq. 11–12, App. Eq. 17–22) and its inverse;
//! - [`proxy`]: the paper's linear error model (Eq. 1–3) for the theory suite.
//!
//! ```
//! use q2_fusion::{fuse2, FusionFactory, PlainConcat};
//! use q2_nn::{Device, DType, Feat, Mode, ParamStore, Tensor};
//! let mut store = ParamStore::new(Device::Cpu, 0);
//! let f = PlainConcat.make(12, &[4, 3], &mut store.scope("model.12")).unwrap();
//! let a = Feat::<4>::new(Tensor::zeros((1, 4, 2, 2), DType::F32, &Device::Cpu).unwrap()).unwrap();
//! let b = Feat::<3>::new(Tensor::ones((1, 3, 2, 2), DType::F32, &Device::Cpu).unwrap()).unwrap();
//! let y: Feat<7> = fuse2(&*f, &a, &b, Mode::Eval).unwrap();
//! assert_eq!(y.tensor().dims(), &[1, 7, 2, 2]);
//! ```
//!
//! A wrong output width does not compile:
//!
//! ```compile_fail
//! use q2_fusion::{fuse2, Concat};
//! use q2_nn::{Device, DType, Feat, Mode, Tensor};
//! let a = Feat::<4>::new(Tensor::zeros((1, 4, 2, 2), DType::F32, &Device::Cpu).unwrap()).unwrap();
//! let y: Feat<9> = fuse2(&Concat, &a, &a, Mode::Eval).unwrap(); // 4 + 4 != 9
//! ```

pub mod fold;
pub mod gbf;
pub mod ln;
pub mod proxy;
pub mod tap;

use candle_core::Tensor;
use q2_nn::{Feat, Mode, Scope};

pub use fold::{fold_node, insert_node, Consumer, FoldReport, LnStats};
pub use gbf::{GbfConfig, GbfFactory, GbfNode, NodeRecord};

/// Errors of a fusion node.
#[derive(Debug, thiserror::Error)]
pub enum FusionError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Nn(#[from] q2_nn::NnError),
    #[error(transparent)]
    Quant(#[from] q2_quant::QuantError),
    /// Branches that cannot be fused (wrong count, widths or spatial sizes); names the node.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, FusionError>;

/// One neck fusion node: merges K branch maps (B, C_i, H, W) into one (B, ΣC_i, H, W) map.
///
/// Implementations are object safe so a model holds `Box<dyn Fusion>` per node and the fusion
/// issue can swap the plain concat for Q-GBFusion without touching the model code.
pub trait Fusion: Send + Sync + std::fmt::Debug {
    /// Fuses the branches in the order of the ultralytics `from` list (e.g. `[-1, 6]`: the
    /// upsampled deep map first, then the backbone skip).
    fn fuse(&self, branches: &[&Tensor], mode: Mode) -> Result<Tensor>;

    /// A short name for summaries (`Concat`, `QGBFusion`).
    fn kind(&self) -> &str {
        "Concat"
    }
}

/// ultralytics `Concat(dimension=1)`: channel concatenation, no parameters.
#[derive(Clone, Copy, Debug, Default)]
pub struct Concat;

/// Checks that branches can be concatenated along channels: (B, C_i, H, W) with equal B, H, W.
pub fn check_branches(branches: &[&Tensor], what: &str) -> Result<()> {
    if branches.is_empty() {
        return Err(FusionError::Invalid(format!("{what}: no branches to fuse")));
    }
    let first = branches[0].dims();
    for b in branches {
        let d = b.dims();
        if d.len() != 4 || first.len() != 4 || d[0] != first[0] || d[2..] != first[2..] {
            return Err(FusionError::Invalid(format!(
                "{what}: branch shapes {:?} differ in batch or spatial size",
                branches.iter().map(|t| t.dims().to_vec()).collect::<Vec<_>>()
            )));
        }
    }
    Ok(())
}

impl Fusion for Concat {
    fn fuse(&self, branches: &[&Tensor], _mode: Mode) -> Result<Tensor> {
        check_branches(branches, "Concat")?;
        Ok(Tensor::cat(branches, 1)?)
    }
}

/// Typed two-branch fusion: `A + B == O` is checked at compile time, the output width at run
/// time (a fusion must preserve the concat's width so the following block is unchanged).
pub fn fuse2<const A: usize, const B: usize, const O: usize>(
    f: &dyn Fusion,
    a: &Feat<A>,
    b: &Feat<B>,
    mode: Mode,
) -> Result<Feat<O>> {
    const {
        assert!(
            A + B == O,
            "fuse2: output channels must equal the sum of the branches' channels"
        )
    };
    Ok(Feat::new(f.fuse(&[a.tensor(), b.tensor()], mode)?)?)
}

/// Creates the fusion module of each neck node while a model is built.
pub trait FusionFactory {
    /// The fusion for the neck node with ultralytics layer index `node` (YOLOv5: 12, 16, 19, 22;
    /// YOLO11: 12, 15, 18, 21) whose branches have `widths` channels (in `from` order).
    /// Parameters must be registered under `scope` (the node's prefix, `model.<node>`).
    fn make(&self, node: usize, widths: &[usize], scope: &mut Scope) -> Result<Box<dyn Fusion>>;
}

/// The default factory: a plain [`Concat`] at every node, exactly the ultralytics model.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainConcat;

impl FusionFactory for PlainConcat {
    fn make(&self, _node: usize, widths: &[usize], _scope: &mut Scope) -> Result<Box<dyn Fusion>> {
        if widths.len() < 2 || widths.contains(&0) {
            return Err(FusionError::Invalid(format!(
                "Concat: needs two or more non-empty branches, got widths {widths:?}"
            )));
        }
        Ok(Box::new(Concat))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use q2_nn::ParamStore;

    fn t(c: usize, h: usize, w: usize, v: f32) -> Tensor {
        (Tensor::ones((2, c, h, w), DType::F32, &Device::Cpu).unwrap() * v as f64).unwrap()
    }

    #[test]
    fn concat_orders_branches_along_channels() {
        let a = Feat::<2>::new(t(2, 3, 4, 1.0)).unwrap();
        let b = Feat::<1>::new(t(1, 3, 4, 5.0)).unwrap();
        let y: Feat<3> = fuse2(&Concat, &a, &b, Mode::Train).unwrap();
        let v = y
            .tensor()
            .get(0)
            .unwrap()
            .flatten_from(1)
            .unwrap()
            .max(1)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(v, [1.0, 1.0, 5.0]);
    }

    #[test]
    fn mismatched_spatial_sizes_are_an_error() {
        let e = Concat
            .fuse(&[&t(2, 3, 4, 1.0), &t(2, 3, 5, 1.0)], Mode::Eval)
            .unwrap_err()
            .to_string();
        assert!(e.contains("spatial"), "{e}");
        assert!(Concat.fuse(&[], Mode::Eval).is_err());
    }

    #[test]
    fn plain_factory_registers_nothing_and_checks_widths() {
        let mut store = ParamStore::new(Device::Cpu, 0);
        let f = PlainConcat
            .make(12, &[256, 256], &mut store.scope("model.12"))
            .unwrap();
        assert_eq!(f.kind(), "Concat");
        assert!(store.is_empty());
        assert!(PlainConcat
            .make(12, &[256], &mut store.scope("model.12"))
            .is_err());
    }

    /// A factory with parameters (the shape Q-GBFusion will have) registers them under the node.
    #[test]
    fn a_learnable_factory_registers_under_the_node_scope() {
        #[derive(Debug)]
        struct Weighted(q2_nn::Var);
        impl Fusion for Weighted {
            fn fuse(&self, branches: &[&Tensor], _mode: Mode) -> Result<Tensor> {
                let w = self.0.as_tensor().softmax_last_dim_like()?;
                let scaled: Vec<Tensor> = branches
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b.broadcast_mul(&w.narrow(0, i, 1)?.reshape((1, 1, 1, 1))?))
                    .collect::<candle_core::Result<_>>()?;
                Ok(Tensor::cat(&scaled, 1)?)
            }
        }
        trait SoftmaxLike {
            fn softmax_last_dim_like(&self) -> candle_core::Result<Tensor>;
        }
        impl SoftmaxLike for Tensor {
            fn softmax_last_dim_like(&self) -> candle_core::Result<Tensor> {
                let e = self.exp()?;
                e.broadcast_div(&e.sum_all()?)
            }
        }
        struct F;
        impl FusionFactory for F {
            fn make(
                &self,
                _node: usize,
                widths: &[usize],
                scope: &mut Scope,
            ) -> Result<Box<dyn Fusion>> {
                let v = scope.add(
                    "alpha",
                    widths.len(),
                    q2_nn::Role::Quant,
                    q2_nn::store::Init::Const(0.0),
                )?;
                Ok(Box::new(Weighted(v)))
            }
        }
        let mut store = ParamStore::new(Device::Cpu, 0);
        let f = F.make(15, &[2, 1], &mut store.scope("model.15")).unwrap();
        assert!(store.get("model.15.alpha").is_some());
        let a = Feat::<2>::new(t(2, 3, 4, 1.0)).unwrap();
        let b = Feat::<1>::new(t(1, 3, 4, 1.0)).unwrap();
        let y: Feat<3> = fuse2(&*f, &a, &b, Mode::Eval).unwrap();
        let m = y.tensor().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!((m - 0.5).abs() < 1e-6);
    }
}
