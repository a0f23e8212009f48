//! Errors of q2-yolo. Messages name the model, the file and the tensor or item concerned.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum YoloError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Nn(#[from] q2_nn::NnError),
    #[error(transparent)]
    Quant(#[from] q2_quant::QuantError),
    #[error(transparent)]
    Fusion(#[from] q2_fusion::FusionError),
    /// An argument or configuration that cannot be used (unknown model name, bad class count, ...).
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, YoloError>;
