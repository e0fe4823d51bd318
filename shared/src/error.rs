//! The library's one error type. `handlers/src/error.rs` maps it to HTTP in one place.

use crate::domain::InstanceStatus;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid request: {0}")]
    Invalid(String),

    #[error("instance {0} not found")]
    NotFound(String),

    #[error("instance {id} is {actual}, expected {expected}")]
    WrongState {
        id: String,
        actual: InstanceStatus,
        expected: &'static str,
    },

    #[error("no idle instance available")]
    NoIdle,

    #[error("runtime of instance {instance_id} failed: {message}")]
    Runtime {
        instance_id: String,
        message: String,
    },

    /// Every attempt of a claim reached a runtime and every runtime failed.
    #[error("claim failed after {attempts} attempts; last error: {last}")]
    ClaimFailed { attempts: u32, last: String },

    #[error("provider {provider}: {message}")]
    Provider {
        provider: &'static str,
        message: String,
    },

    #[error("database: {0}")]
    Db(#[from] sqlx::Error),

    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn provider(provider: &'static str, message: impl Into<String>) -> Self {
        Error::Provider {
            provider,
            message: message.into(),
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
