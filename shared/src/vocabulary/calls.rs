//! What can go wrong with a call to the outside (a SaaS API, an agent's runtime), and the tally
//! of failed attempts that outside clients report and `metrics` writes. Outside clients say what
//! happened here and know nothing of counters; the pipelines and the scrape hand the tally on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// What went wrong with a call, in words fit for a client: no server text, no credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("timed out")]
    TimedOut,
    #[error("connection failed")]
    Connection,
    #[error("rate limited")]
    RateLimited,
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("not found")]
    NotFound,
    #[error("credentials refused")]
    Unauthorized,
    #[error("unreadable reply")]
    BadReply,
    #[error("request refused")]
    Refused,
}

impl Failure {
    /// The kind `/metrics` counts it under; `None` for an answer that is not an error (not found).
    pub fn kind(&self) -> Option<&'static str> {
        Some(match self {
            Failure::TimedOut => "timed_out",
            Failure::Connection => "connection",
            Failure::RateLimited => "rate_limited",
            Failure::Status(500..=599) => "server_error",
            Failure::Status(_) => "client_error",
            Failure::NotFound => return None,
            Failure::Unauthorized => "unauthorized",
            Failure::BadReply => "bad_reply",
            Failure::Refused => "refused",
        })
    }
}

/// Why a provision failed, short enough for a client and a report. The details (the runtime's
/// own words) go to the log at the call site.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProvisionError {
    #[error("runtime unreachable")]
    Unreachable,
    #[error("runtime timed out")]
    TimedOut,
    #[error("runtime answered HTTP {0}")]
    Status(u16),
    #[error("runtime reply unreadable")]
    BadReply,
    #[error("runtime refused the provision")]
    Refused,
    #[error("instance has no URL")]
    NoUrl,
    /// The claim was reaped while the runtime answered, or its idempotency key taken over.
    #[error("claim fenced out while the runtime answered")]
    FencedOut,
}

/// Failed attempts of outside calls that nobody has written yet, by (service, kind). One per
/// `Pool`: the outside clients it built add to it, the tick and the scrape write it out. Held in
/// memory until then; a process that dies first loses what it had not handed on.
#[derive(Clone, Default)]
pub struct Tally(Arc<Mutex<BTreeMap<(&'static str, &'static str), i64>>>);

impl Tally {
    /// Records a failed attempt of a call to `service` (not-found answers are not failures).
    pub fn failed(&self, service: &'static str, failure: &Failure) {
        if let Some(kind) = failure.kind() {
            *self.lock().entry((service, kind)).or_default() += 1;
        }
    }

    /// Takes the failed attempts recorded so far.
    pub fn take(&self) -> BTreeMap<(&'static str, &'static str), i64> {
        std::mem::take(&mut *self.lock())
    }

    /// Gives back attempts taken but not written, for the next taker.
    pub fn put_back(&self, taken: BTreeMap<(&'static str, &'static str), i64>) {
        let mut failed = self.lock();
        for (key, n) in taken {
            *failed.entry(key).or_default() += n;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(&'static str, &'static str), i64>> {
        // A panic while counting leaves a count, not a broken map.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
