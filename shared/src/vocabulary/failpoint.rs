//! Named failpoints for the failpoint sweep (`tests/tests/failpoints.rs`, `docs/failpoints.md`).
//!
//! [`failpoint!`](crate::failpoint) marks a line before or after an outside call or a database
//! write. Built without the `failpoints` feature (every release build) it expands to nothing.
//! With it, a failpoint configured through fail-rs (`fail::cfg`, or the `FAILPOINTS` variable of
//! a replica, read by [`from_env`]) as `return(ACTION)` does, on that line:
//!
//! - `return(error)`: the site's natural failure (a dropped database connection, an outside call
//!   that failed), through the expression the site gives;
//! - `return(delay)` / `return(delay:MS)`: waits (asynchronously, unlike fail-rs's `sleep`, which
//!   would block a runtime thread) [`DEFAULT_DELAY_MS`] or `MS`, past the caller's timeout;
//! - `return(kill)`: the process dies on that line (SIGKILL to itself), as a replica that is
//!   killed or loses its machine there.
//!
//! fail-rs's counts apply (`2*return(error)` fires twice), so a fault can be transient.

/// A delay with no duration given: longer than any caller's timeout at the sweep's scale.
pub const DEFAULT_DELAY_MS: u64 = 5_000;

/// What a configured failpoint asks of its site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Error,
    Delay(std::time::Duration),
    Kill,
}

impl Action {
    /// `error`, `delay`, `delay:MS` or `kill`; anything else is not an action of ours.
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim() {
            "error" => Some(Action::Error),
            "kill" => Some(Action::Kill),
            "delay" => Some(Action::Delay(std::time::Duration::from_millis(
                DEFAULT_DELAY_MS,
            ))),
            other => other
                .strip_prefix("delay:")
                .and_then(|ms| ms.parse().ok())
                .map(|ms| Action::Delay(std::time::Duration::from_millis(ms))),
        }
    }
}

/// Configures failpoints from `FAILPOINTS` (fail-rs's format: `name=actions;name=actions`).
/// Without the feature it does nothing, and a set `FAILPOINTS` is only warned about.
pub fn from_env() {
    let Ok(spec) = std::env::var("FAILPOINTS") else {
        return;
    };
    #[cfg(feature = "failpoints")]
    for entry in spec.split(';').filter(|e| !e.trim().is_empty()) {
        let Some((name, actions)) = entry.split_once('=') else {
            tracing::error!(entry, "FAILPOINTS entry without '='");
            continue;
        };
        if let Err(e) = fail::cfg(name.trim(), actions.trim()) {
            tracing::error!(name, error = %e, "FAILPOINTS entry refused");
        }
    }
    #[cfg(not(feature = "failpoints"))]
    tracing::warn!(
        spec,
        "FAILPOINTS is set but this build has no failpoints (feature `failpoints`)"
    );
}

/// Whether the site should fail now; waits out a delay, and never returns from a kill.
#[cfg(feature = "failpoints")]
pub async fn fired(name: &'static str) -> bool {
    let Some(action) = fail::eval(name, |arg| arg.as_deref().and_then(Action::parse)).flatten()
    else {
        return false;
    };
    // The sweep reads this line from a replica's log to know the failpoint was reached.
    tracing::warn!(failpoint = name, ?action, "failpoint fired");
    match action {
        Action::Error => true,
        Action::Delay(pause) => {
            tokio::time::sleep(pause).await;
            false
        }
        Action::Kill => {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            std::process::abort()
        }
    }
}

/// A database error as a dropped connection gives it.
pub fn db_error() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "failpoint: connection reset",
    ))
}

/// Marks a failpoint (see the module's doc). `failpoint!("name", on_error)` evaluates `on_error`
/// (typically `return Err(…)`) when the failpoint's action is `error`; `failpoint!("name")` has
/// no error of its own (a delay or a kill only). Without the `failpoints` feature: nothing.
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        {
            let _ = $crate::failpoint::fired($name).await;
        }
    };
    ($name:literal, $on_error:expr) => {
        #[cfg(feature = "failpoints")]
        {
            if $crate::failpoint::fired($name).await {
                #[allow(unreachable_code)]
                {
                    $on_error;
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_parse() {
        assert_eq!(Action::parse("error"), Some(Action::Error));
        assert_eq!(Action::parse("kill"), Some(Action::Kill));
        assert_eq!(
            Action::parse("delay:250"),
            Some(Action::Delay(std::time::Duration::from_millis(250)))
        );
        assert_eq!(Action::parse("sleep"), None);
    }
}
