//! q2-nn: the tensor substrate of q2.
//!
//! candle (`candle-core`) supplies tensors and autograd; this crate adds what a YOLO QAT
//! reproduction needs on top of it:
//! - [`feat`]: feature maps whose channel count is part of their type (`Feat<C>`), with channel
//!   arithmetic (concat) checked at compile time;
//! - [`conv`], [`bn`], [`ops`]: the ultralytics building layers (Conv = Conv2d + BatchNorm2d +
//!   SiLU, plain Conv2d with bias, nearest 2x upsample, max-pool k5 s1 p2, channel concat);
//! - [`gemm_conv`], [`bn_act`], [`kernels`]: the fast CPU path (GEMM convolution with its own
//!   backward, BatchNorm fused with its activation) and the switch back to candle's ops;
//! - [`store`]: a parameter store keyed by ultralytics `state_dict` names, with safetensors IO;
//! - [`optim`], [`sched`], [`ema`]: SGD (Nesterov) / Adam with YOLOv5's parameter groups,
//!   YOLOv5's LR schedules and warm-up, and the weight EMA;
//! - [`fsutil`]: atomic file writes.
//!
//! Every component is checked against PyTorch in `tests/` (fixtures made by `tools/make_fixtures.py`).

pub mod bn;
pub mod bn_act;
pub mod compare;
pub mod conv;
pub mod ema;
pub mod error;
pub mod feat;
pub mod fsutil;
pub mod gemm_conv;
pub mod kernels;
pub mod ops;
pub mod optim;
pub mod profile;
pub mod sched;
pub mod simd;
pub mod store;

pub use candle_core::{self as candle, DType, Device, Tensor, Var};
pub use error::{NnError, Result};
pub use feat::Feat;
pub use store::{ParamStore, Role, Scope};

/// Whether a forward pass trains (batch statistics, running-stat updates) or evaluates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

impl Mode {
    pub fn is_train(self) -> bool {
        self == Mode::Train
    }
}
