//! One file per quantization method; each implements [`crate::kernel::Kernel`].

pub mod dorefa;
pub mod lsq;
pub mod lsq_plus;
pub mod minmax;
pub mod n2uq;
pub mod pact;

pub use dorefa::DoReFa;
pub use lsq::Lsq;
pub use lsq_plus::{LsqPlus, LsqPlusInit};
pub use minmax::MinMax;
pub use n2uq::{N2uqAct, N2uqInit, N2uqWeight};
pub use pact::{Pact, PactInit};
