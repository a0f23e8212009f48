//! Which CPU kernels the layers use: q2's fused ones ([`Kernels::Fused`]: GEMM convolution of
//! [`crate::gemm_conv`], fused BatchNorm + activation of [`crate::bn_act`]) or candle's built-in
//! ops ([`Kernels::Candle`], the reference path the fused kernels are tested against and the
//! "before" column of `docs/BENCHMARKS.md`). Process-wide; the default is `Fused`, and the
//! environment variable `Q2_KERNELS=candle` selects the reference path at start-up.

use std::sync::atomic::{AtomicU8, Ordering};

/// The kernel family of the CPU layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    Fused,
    Candle,
}

impl std::fmt::Display for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kernels::Fused => "fused",
            Kernels::Candle => "candle",
        })
    }
}

impl std::str::FromStr for Kernels {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fused" => Ok(Kernels::Fused),
            "candle" => Ok(Kernels::Candle),
            _ => Err(format!("unknown kernels `{s}` (expected fused or candle)")),
        }
    }
}

// 0: not read from the environment yet, 1: fused, 2: candle.
static KERNELS: AtomicU8 = AtomicU8::new(0);

/// Selects the kernel family for the whole process.
pub fn set_kernels(k: Kernels) {
    KERNELS.store(if k == Kernels::Fused { 1 } else { 2 }, Ordering::Relaxed);
}

/// The kernel family in use (`Q2_KERNELS` decides until [`set_kernels`] is called).
pub fn kernels() -> Kernels {
    match KERNELS.load(Ordering::Relaxed) {
        1 => Kernels::Fused,
        2 => Kernels::Candle,
        _ => {
            let k = match std::env::var("Q2_KERNELS") {
                Ok(v) if v == "candle" => Kernels::Candle,
                _ => Kernels::Fused,
            };
            set_kernels(k);
            k
        }
    }
}

/// Whether a tensor should take the fused CPU path.
pub(crate) fn fused_cpu(t: &candle_core::Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && kernels() == Kernels::Fused
}
