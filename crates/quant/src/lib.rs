//! q2-quant: the fake quantizers Q² plugs into.
//!
//! - [`kernel`]: the [`Kernel`] trait (one method's arithmetic on one group of elements) and the
//!   parallel, reproducible CPU drivers;
//! - [`methods`]: LSQ, LSQ+, PACT (+ DoReFa weights), N2UQ (activations and weights), MinMax;
//! - [`op`]: every kernel as a differentiable candle custom op (fused forward, fused backward);
//! - [`quantizer`]: the [`Quantizer`] trait, [`QuantSpec`] and [`build`];
//! - [`qconv`]: [`QConv`]/[`QConv2d`] and the per-layer [`QuantPlan`];
//! - [`case`]: `q2 quant`'s JSON evaluation.
//!
//! Exact semantics of every method: `docs/QUANTIZERS.md`.

pub mod case;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod error;
pub mod kernel;
pub mod methods;
pub mod op;
pub mod qconv;
pub mod quantizer;

pub use error::{QuantError, Result};
pub use kernel::Kernel;
pub use qconv::{LayerKind, LayerQuant, QConv, QConv2d, QuantPlan};
pub use quantizer::{build, FakeQuant, InitMode, Method, QuantSpec, Quantizer};
