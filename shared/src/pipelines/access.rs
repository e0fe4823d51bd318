//! Who gets in: the dashboard's logins and sessions, and the throttle on wrong keys, which the
//! dashboard's logins and the API's Bearer keys share per client. All of it in Postgres, so that
//! every replica throttles alike and a session opened on one is good on all.

use std::time::Duration;

use crate::config::{secrets_match, Secret};
use crate::error::Result;
use crate::sessions::{self, Attempt};
use crate::Pool;

pub use crate::sessions::{Session, SessionKey};

/// The longest a right key's answer waits for its client's wrong keys to be forgotten.
const FORGET_WAIT: Duration = Duration::from_millis(250);

/// What became of a login.
#[derive(Debug)]
pub enum Login {
    /// Too soon after wrong keys: the key was not even looked at.
    Blocked { wait: Duration },
    /// A wrong key; the client must wait this long before its next.
    Wrong { wait: Duration },
    /// A session is open; this is its cookie's value.
    Opened { cookie: String },
}

/// A dashboard login of `client` with `offered`, against the pool's `api_key`.
pub async fn login(
    pool: &Pool,
    key: &SessionKey,
    api_key: &Secret,
    client: &str,
    offered: &str,
) -> Result<Login> {
    match sessions::attempt(&pool.db, client).await? {
        Attempt::Blocked { wait } => Ok(Login::Blocked { wait }),
        Attempt::Allowed { wait_if_wrong } => {
            if !secrets_match(offered, api_key.expose()) {
                return Ok(Login::Wrong {
                    wait: wait_if_wrong,
                });
            }
            sessions::forget_attempts(&pool.db, client).await?;
            let ttl = pool.settings.dashboard.admin_session_ttl();
            let cookie = sessions::open(&pool.db, key, ttl).await?;
            Ok(Login::Opened { cookie })
        }
    }
}

/// The live session a cookie names, if any.
pub async fn session(pool: &Pool, key: &SessionKey, cookie: &str) -> Result<Option<Session>> {
    sessions::check(&pool.db, key, cookie).await
}

/// Ends a session on every replica.
pub async fn logout(pool: &Pool, session: &Session) -> Result<()> {
    sessions::close(&pool.db, session).await
}

/// A right API key from `client`: `Some(wait)` while the client waits out its wrong keys (a guess
/// made then must not learn that it was right); else its wrong keys are forgotten. One read when
/// the client has no record, the common case.
pub async fn right_key(pool: &Pool, client: &str) -> Result<Option<Duration>> {
    match sessions::standing(&pool.db, client).await? {
        None => Ok(None),
        Some(wait) if !wait.is_zero() => Ok(Some(wait)),
        Some(_) => {
            // Forgotten before the answer as a rule, so that a wrong key right after is a first
            // one again; but a stalled database holds the request up only so long: the forget
            // then goes on in the background (a record left over waits out nothing, and the next
            // right key forgets it).
            let (db, client) = (pool.db.clone(), client.to_string());
            let forget = tokio::spawn(async move {
                if let Err(e) = sessions::forget_attempts(&db, &client).await {
                    tracing::warn!(error = %e, "forgetting a client's wrong keys");
                }
            });
            let _ = tokio::time::timeout(FORGET_WAIT, forget).await;
            Ok(None)
        }
    }
}

/// A wrong API key from `client`, counted as a wrong login is: `Some(wait)` if the client must
/// now wait (the answer is 429), `None` if it is merely refused (401).
pub async fn wrong_key(pool: &Pool, client: &str) -> Result<Option<Duration>> {
    Ok(match sessions::attempt(&pool.db, client).await? {
        Attempt::Blocked { wait } => Some(wait),
        Attempt::Allowed { .. } => None,
    })
}
