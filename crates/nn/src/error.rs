//! Error type of q2-nn: every message names the file or tensor it is about.

use std::path::PathBuf;

/// Errors raised by q2-nn.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: cannot read safetensors: {msg}")]
    Safetensors { path: PathBuf, msg: String },

    #[error("{path}: state dict does not match the model:{}", fmt_mismatch(.missing, .extra, .mis_shaped))]
    KeyMismatch {
        path: PathBuf,
        missing: Vec<String>,
        extra: Vec<String>,
        /// (key, shape in the model, shape in the file)
        mis_shaped: Vec<(String, Vec<usize>, Vec<usize>)>,
    },

    #[error("{what}: expected a (B, {expected}, H, W) feature map, got shape {got:?}")]
    Channels { what: String, expected: usize, got: Vec<usize> },

    #[error("parameter `{0}` is registered twice")]
    DuplicateParam(String),

    #[error("{0}")]
    Invalid(String),
}

fn fmt_mismatch(missing: &[String], extra: &[String], mis: &[(String, Vec<usize>, Vec<usize>)]) -> String {
    let mut s = String::new();
    if !missing.is_empty() {
        s += &format!("\n  missing in file ({}): {}", missing.len(), missing.join(", "));
    }
    if !extra.is_empty() {
        s += &format!("\n  unexpected in file ({}): {}", extra.len(), extra.join(", "));
    }
    for (k, want, got) in mis {
        s += &format!("\n  shape of {k}: model {want:?}, file {got:?}");
    }
    s
}

pub type Result<T> = std::result::Result<T, NnError>;
