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

/// An error and its causes on one line, for a process's last words. Many errors repeat their
/// source in their own message (sqlx's do); a cause already said is not said again.
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = e.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_says_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset");
        let error = Error::Db(sqlx::Error::Io(io));
        assert_eq!(
            describe(&error),
            "database: error communicating with database: connection reset"
        );
        let nested = Error::io("reading state", std::io::Error::other("disk gone"));
        assert_eq!(describe(&nested), "reading state: disk gone");
    }
}
