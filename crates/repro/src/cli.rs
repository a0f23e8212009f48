//! Implementations of the `q2` subcommands, and the mapping of errors to exit codes
//! (2: the user's input is invalid; 1: anything else).

use std::path::Path;

use anyhow::{Context, Result};

/// An error caused by the user's input (bad file, bad value): exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// 2 when the chain contains an input error, 1 otherwise.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    let input = e.chain().any(|c| c.is::<InputError>() || matches!(c.downcast_ref::<q2_quant::QuantError>(), Some(q2_quant::QuantError::BadCase(_) | q2_quant::QuantError::Config(_))));
    if input {
        2
    } else {
        1
    }
}

/// Sizes the global rayon pool (our kernels) and tells candle's CPU backend the same.
pub fn set_threads(n: usize) {
    let n = n.max(1);
    // SAFETY: called at start-up, before any other thread exists.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
}

fn device(name: &str) -> Result<candle_core::Device> {
    match name {
        "cpu" => Ok(candle_core::Device::Cpu),
        "cuda" => candle_core::Device::new_cuda(0)
            .map_err(|e| InputError(format!("--device cuda: no CUDA device available ({e}); build with `--features cuda` and run on a GPU machine")).into()),
        other => Err(InputError(format!("--device must be cpu or cuda, got `{other}`")).into()),
    }
}

/// `q2 quant --in CASE.json --out RESULT.json`
pub fn quant(input: &Path, out: &Path, device_name: &str) -> Result<()> {
    let dev = device(device_name)?;
    let text = std::fs::read_to_string(input).map_err(|e| InputError(format!("{}: {e}", input.display())))?;
    let case: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| InputError(format!("{}: invalid JSON: {e}", input.display())))?;
    let result = q2_quant::case::evaluate_on(&case, &dev).map_err(|e| InputError(format!("{}: {e}", input.display())))?;
    let bytes = serde_json::to_vec(&result)?;
    q2_nn::fsutil::write_atomic(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    tracing::info!("wrote {}", out.display());
    Ok(())
}
