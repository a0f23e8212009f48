//! Errors of q2-quant.

#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Nn(#[from] q2_nn::NnError),
    /// A quantizer configuration that cannot be built.
    #[error("invalid quantizer configuration: {0}")]
    Config(String),
    /// A `q2 quant` case that cannot be evaluated.
    #[error("{0}")]
    BadCase(String),
}

pub type Result<T> = std::result::Result<T, QuantError>;
