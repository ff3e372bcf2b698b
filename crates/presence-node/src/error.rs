//! Why a node cannot start (or stopped with an error).

use presence_store::StoreError;

/// A setting is invalid; the message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl From<&str> for ConfigError {
    fn from(s: &str) -> Self {
        ConfigError(s.to_owned())
    }
}

impl From<String> for ConfigError {
    fn from(s: String) -> Self {
        ConfigError(s)
    }
}

/// What ends [`serve`](crate::app::serve) with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// Redis could not be used (unreachable past the start-up wait, or
    /// refused: a bad URL, an untrusted certificate).
    #[error("cannot use Redis: {0}")]
    Redis(StoreError),
    /// The listening socket failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// The server task ended abnormally.
    #[error("the server task failed: {0}")]
    Server(String),
}
