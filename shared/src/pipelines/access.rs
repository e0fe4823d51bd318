//! Who gets in: the dashboard's logins and sessions, and the throttle on wrong keys, which the
//! dashboard's logins and the API's Bearer keys share per client. All of it in Postgres, so that
//! every replica throttles alike and a session opened on one is good on all.

use std::collections::HashSet;
use std::sync::RwLock;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::{secrets_match, Secret};
use crate::error::Result;
use crate::sessions::{self, Attempt, RecordChange};
use crate::Pool;

pub use crate::sessions::{Session, SessionKey};

/// The longest a right key's answer waits for its client's wrong keys to be forgotten.
const FORGET_WAIT: Duration = Duration::from_millis(250);

/// How often a following replica makes sure its connection still hears announcements, and how
/// long it waits for the answer: a connection lost without a word (a silent network) leaves the
/// set stale for no longer than the two together.
const FOLLOW_CHECK_EVERY: Duration = Duration::from_secs(10);
const FOLLOW_CHECK_WAIT: Duration = Duration::from_secs(5);
/// After a failed attempt to follow, the wait before the next; every right key reads meanwhile.
const FOLLOW_RETRY: Duration = Duration::from_secs(1);

/// The clients with a record of wrong keys, as this replica has heard from Postgres
/// ([`follow_records`]), so that a right key from any other client, nearly every request, is let
/// in without a read. Unknown while the replica is not following (not yet, a lost connection, or
/// never, on Lambda, whose frozen process would hear late): then every right key reads.
///
/// A record made on another replica is heard a moment after it is committed; a right key in
/// that moment is let in as it would have been just before. Wrong keys are counted in Postgres
/// whatever this set says, and a record made here is in it at once.
#[derive(Debug, Default)]
pub struct Records {
    known: RwLock<Option<HashSet<String>>>,
}

impl Records {
    /// Whether a right key from `client` must read its record.
    fn may_have(&self, client: &str) -> bool {
        match &*self.known.read().unwrap_or_else(|e| e.into_inner()) {
            Some(clients) => clients.contains(client),
            None => true,
        }
    }

    /// Whether the set is known, so that right keys from clients without a record are not read.
    pub fn known(&self) -> bool {
        self.known
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn replace(&self, clients: Option<HashSet<String>>) {
        *self.known.write().unwrap_or_else(|e| e.into_inner()) = clients;
    }

    fn change(&self, change: RecordChange) {
        if let Some(clients) = &mut *self.known.write().unwrap_or_else(|e| e.into_inner()) {
            match change {
                RecordChange::Made(client) => clients.insert(client),
                RecordChange::Forgotten(client) => clients.remove(&client),
            };
        }
    }

    /// An attempt was counted here: the client has a record, whether or not it has been heard.
    fn counted(&self, client: &str) {
        self.change(RecordChange::Made(client.to_string()));
    }
}

/// Keeps `records` from Postgres's announcements until `stop`; after any failure the set is
/// unknown (every right key reads) until it is read again.
pub async fn follow_records(db: &PgPool, records: &Records, stop: &CancellationToken) {
    while !stop.is_cancelled() {
        let followed = follow_once(db, records, stop).await;
        records.replace(None);
        if let Err(e) = followed {
            tracing::warn!(error = %e, "following wrong keys' records; right keys read them meanwhile");
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(FOLLOW_RETRY) => {}
            }
        }
    }
}

/// Why a replica stopped following.
#[derive(Debug, thiserror::Error)]
enum Lost {
    #[error(transparent)]
    Failed(#[from] crate::error::Error),
    #[error("the connection was lost and made again; what was announced in between is not known")]
    Dropped,
    #[error("the connection did not answer within {FOLLOW_CHECK_WAIT:?}")]
    Silent,
}

/// Follows until the connection is lost (an error) or `stop` (`Ok`).
async fn follow_once(
    db: &PgPool,
    records: &Records,
    stop: &CancellationToken,
) -> std::result::Result<(), Lost> {
    let (mut listener, clients) = sessions::follow_records(db).await?;
    records.replace(Some(clients));
    let mut check = tokio::time::interval(FOLLOW_CHECK_EVERY);
    check.reset();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            heard = listener.try_recv() => {
                let note = heard.map_err(crate::error::Error::from)?.ok_or(Lost::Dropped)?;
                match RecordChange::parse(note.payload()) {
                    Some(change) => records.change(change),
                    None => tracing::warn!(payload = note.payload(), "an unreadable wrong keys' announcement"),
                }
            }
            _ = check.tick() => {
                tokio::time::timeout(FOLLOW_CHECK_WAIT, sessions::still_following(&mut listener))
                    .await
                    .map_err(|_| Lost::Silent)??;
            }
        }
    }
}

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
    records: &Records,
    key: &SessionKey,
    api_key: &Secret,
    client: &str,
    offered: &str,
) -> Result<Login> {
    let attempt = sessions::attempt(&pool.db, client).await?;
    records.counted(client);
    match attempt {
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
/// made then must not learn that it was right); else its wrong keys are forgotten. No statement
/// when the client has no record, the common case, and this replica knows it.
pub async fn right_key(pool: &Pool, records: &Records, client: &str) -> Result<Option<Duration>> {
    if !records.may_have(client) {
        return Ok(None);
    }
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
pub async fn wrong_key(pool: &Pool, records: &Records, client: &str) -> Result<Option<Duration>> {
    let attempt = sessions::attempt(&pool.db, client).await?;
    records.counted(client);
    Ok(match attempt {
        Attempt::Blocked { wait } => Some(wait),
        Attempt::Allowed { .. } => None,
    })
}
