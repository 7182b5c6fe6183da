//! The error type of `zoo-train`.

use std::path::PathBuf;

/// What stopped training, loading or saving.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The loss became NaN or infinite; nothing was written for the failing epoch.
    #[error("loss is {value} at epoch {epoch}, step {step}: training stopped. {checkpoint_note}")]
    NonFiniteLoss {
        /// 1-based epoch.
        epoch: usize,
        /// Global step (1-based) at which the loss was non-finite.
        step: usize,
        /// The offending loss value.
        value: f32,
        /// Where the last good checkpoint is, if any.
        checkpoint_note: String,
    },
    /// A checkpoint or state file does not match the model or the configuration.
    #[error("{}: {message}", path.display())]
    Checkpoint {
        /// The file concerned.
        path: PathBuf,
        /// What does not match, and what was expected.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A data source failed to produce a batch.
    #[error(transparent)]
    Data(#[from] zoo_data::DataError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// `Result` with [`TrainError`].
pub type Result<T> = std::result::Result<T, TrainError>;
