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

    /// Something other than an instance is not there (a template, a Notion page); the message
    /// says what.
    #[error("{0}")]
    Missing(String),

    /// A template's slug is another template's already.
    #[error("slug {0:?} is taken by another template")]
    SlugTaken(String),

    /// A tool a claim provisions for its template failed; what the claim made was rolled back.
    #[error("tool {tool} failed: {cause}")]
    ToolFailed { tool: String, cause: Box<Error> },

    /// Notion could not give a page's text and no copy of it is kept.
    #[error("Notion failed: {failure}")]
    Notion {
        failure: crate::calls::Failure,
        /// Seconds Notion asked to wait (its `Retry-After`).
        retry_after: Option<u32>,
    },

    /// Every attempt of a claim reached a runtime and every runtime failed.
    #[error("claim failed after {attempts} attempts; last: {last}")]
    ClaimFailed {
        attempts: u32,
        last: crate::calls::ProvisionError,
    },

    /// An agent is already in (or joining) the conversation a claim asked to join.
    #[error("instance {instance_id} is already {status} for this joinUrl")]
    ConversationTaken {
        instance_id: String,
        status: InstanceStatus,
    },

    /// The claim's deadline (`CLAIM_TIMEOUT_MS`) passed while a step (a statement, the runtime)
    /// still ran: the client is answered by then, whatever hangs.
    #[error("the claim did not finish within its deadline")]
    ClaimTimedOut,

    /// A claim with the same `Idempotency-Key` is still running.
    #[error("another claim with this Idempotency-Key or joinUrl is in progress; retry shortly")]
    ClaimInProgress,

    /// The same `Idempotency-Key` came with a different request.
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyKeyReused,

    #[error("provider {provider}: {message}")]
    Provider {
        provider: &'static str,
        message: String,
    },

    /// The provider refused a creation for capacity (Sprites' `concurrent_sprite_limit_exceeded`,
    /// a creation rate limit): a limit to wait out until `retry_after`, not a fault to retry.
    #[error("provider {provider} at capacity ({code}); retry after {} s", retry_after.as_secs())]
    Capacity {
        provider: &'static str,
        code: String,
        retry_after: std::time::Duration,
    },

    /// A call to an outside API failed, after the retries it was allowed.
    #[error("{} failed: {failure}", if service == step { service.to_string() } else { format!("{service} {step}") })]
    Outbound {
        service: &'static str,
        step: &'static str,
        failure: crate::calls::Failure,
    },

    /// A listing that lacks most of what the rows say exists (an empty page, a project answered
    /// as null): not believed, so that nothing is judged absent from it.
    #[error(
        "{service} listing not believed: it lacks {missing} of the {expected} resources the rows record"
    )]
    ImplausibleListing {
        service: &'static str,
        missing: usize,
        expected: usize,
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
    /// A stable snake_case code for API replies, tick reports and SSE events.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "invalid_request",
            Error::NotFound(_) => "not_found",
            Error::WrongState { .. } => "wrong_state",
            Error::NoIdle => "no_idle_instance",
            Error::Missing(_) => "not_found",
            Error::SlugTaken(_) => "slug_taken",
            Error::ToolFailed { .. } => "tool_failed",
            Error::Notion { .. } => "notion_failed",
            Error::ClaimFailed { .. } => "runtime_failed",
            Error::ConversationTaken { .. } => "conversation_taken",
            Error::ClaimInProgress => "claim_in_progress",
            Error::ClaimTimedOut => "claim_timed_out",
            Error::IdempotencyKeyReused => "idempotency_key_reused",
            Error::Provider { .. } | Error::Outbound { .. } => "provider_failed",
            Error::Capacity { .. } => "provider_at_capacity",
            Error::ImplausibleListing { .. } => "implausible_listing",
            Error::Db(e) if unavailable(e) => "database_unavailable",
            Error::Db(_) | Error::Migrate(_) | Error::Config(_) | Error::Io { .. } => "internal",
        }
    }

    /// A short cause fit for a client: never SQL, a provider's own words, a path or a secret
    /// (those stay in the log, from `Display`).
    pub fn public_message(&self) -> String {
        match self {
            Error::Invalid(_)
            | Error::NotFound(_)
            | Error::WrongState { .. }
            | Error::NoIdle
            | Error::Missing(_)
            | Error::SlugTaken(_)
            | Error::Notion { .. }
            | Error::ClaimFailed { .. }
            | Error::ConversationTaken { .. }
            | Error::ClaimInProgress
            | Error::ClaimTimedOut
            | Error::IdempotencyKeyReused
            | Error::Outbound { .. }
            | Error::Capacity { .. }
            | Error::ImplausibleListing { .. } => self.to_string(),
            Error::Provider { provider, .. } => format!("provider {provider} failed"),
            Error::ToolFailed { tool, cause } => {
                format!("tool {tool} failed: {}", cause.public_message())
            }
            Error::Db(e) if unavailable(e) => "database unavailable".into(),
            Error::Db(_) | Error::Migrate(_) | Error::Config(_) | Error::Io { .. } => {
                "internal error".into()
            }
        }
    }

    pub fn provider(provider: &'static str, message: impl Into<String>) -> Self {
        Error::Provider {
            provider,
            message: message.into(),
        }
    }

    /// The creation step an error is about, where it says.
    pub fn step(&self) -> Option<&'static str> {
        match self {
            Error::Outbound { step, .. } => Some(step),
            _ => None,
        }
    }

    pub fn outbound(
        service: &'static str,
        step: &'static str,
        failure: crate::calls::Failure,
    ) -> Self {
        Error::Outbound {
            service,
            step,
            failure,
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// The database is down, restarting or out of connections: worth retrying, and a client of the
/// API may simply retry too.
pub fn unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        // Class 57 (operator intervention: shutdown, restart) and 08 (connection exception).
        sqlx::Error::Database(e) => e
            .code()
            .is_some_and(|code| code.starts_with("57") || code.starts_with("08")),
        _ => false,
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
    fn public_messages_keep_internals_out() {
        let provider = Error::provider("local", "starting /opt/agentpool/bin/agentpool: EACCES");
        assert_eq!(provider.public_message(), "provider local failed");
        assert_eq!(provider.code(), "provider_failed");
        let io = Error::io("reading /var/lib/x.json", std::io::Error::other("disk"));
        assert_eq!(io.public_message(), "internal error");
        let db = Error::Db(sqlx::Error::Protocol("relation \"instances\" ...".into()));
        assert_eq!(
            (db.code(), db.public_message().as_str()),
            ("internal", "internal error")
        );
    }

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
