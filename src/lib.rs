//! q2: a Rust reproduction of *Q²: Quantization-Aware Gradient Balancing and Attention Alignment
//! for Low-Bit Quantization* (arXiv 2511.05898).
//!
//! This facade re-exports the workspace crates; it owns the cross-crate tests (`tests/`) and the
//! criterion benches (`benches/`).

pub use q2_data as data;
pub use q2_distill as distill;
pub use q2_eval as eval;
pub use q2_fusion as fusion;
pub use q2_nn as nn;
pub use q2_quant as quant;

/// Path of a file under the repository's `tests/fixtures/` (for tests and benches).
pub fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}
