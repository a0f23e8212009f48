//! Errors of q2-distill.

/// Everything Q-ADA can reject or fail on.
#[derive(Debug, thiserror::Error)]
pub enum DistillError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Quant(#[from] q2_quant::QuantError),
    /// Bad input: a configuration value, a shape, a level count or a step length.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, DistillError>;

/// Shorthand for an [`DistillError::Invalid`] error.
pub(crate) fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(DistillError::Invalid(msg.into()))
}
