//! The error type of `zoo-data`: every variant names the file or source it concerns.

use std::path::PathBuf;

/// What went wrong while finding, reading or batching a data set.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be opened or read (missing, permissions, I/O failure).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file was read but its content is not what the format requires.
    #[error("{}: {message}", path.display())]
    Format {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong, and where possible what was expected.
        message: String,
    },
    /// No location held the data set and the hub could not provide it.
    #[error("{0}")]
    NotFound(String),
    /// The Hugging Face hub (or its local cache) could not provide a file.
    #[error("hugging face hub, {repo} {file}: {message}")]
    Hub {
        /// `owner/name` of the dataset repository.
        repo: String,
        /// The file inside the repository.
        file: String,
        /// What went wrong.
        message: String,
    },
    /// An argument given by the caller is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The `tokenizers` crate failed (training, encoding, or reading/writing `tokenizer.json`).
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A tensor operation failed while building a batch.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Format {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl From<DataError> for candle_core::Error {
    fn from(e: DataError) -> Self {
        match e {
            DataError::Candle(e) => e,
            other => candle_core::Error::Msg(other.to_string()),
        }
    }
}

/// `Result` with [`DataError`].
pub type Result<T> = std::result::Result<T, DataError>;
