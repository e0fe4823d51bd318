//! Dashboard logins: sessions any replica can check, ended everywhere by a logout, and a growing
//! delay per client after wrong keys.
//!
//! A session cookie is `<id>.<mac>`: 32 random bytes and an HMAC-SHA256 of them under a key
//! derived from `POOL_API_KEY`. The MAC turns away forged cookies without a query, and a new API
//! key ends every session; the `admin_sessions` row (by a hash of the id) is what makes a session
//! live, so a logout on one replica is a logout on all. The CSRF token of a session is another MAC
//! of its id: nothing more to store, and it cannot be derived from the cookie without the key.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;

use crate::config::secrets_match;
use crate::error::Result;

type HmacSha256 = Hmac<Sha256>;

/// The key sessions are signed with, derived from the API key (never the API key itself, so
/// that nothing signed with it can help recover the key).
#[derive(Clone)]
pub struct SessionKey([u8; 32]);

impl SessionKey {
    pub fn derive(api_key: &str) -> Self {
        Self(mac_bytes(
            api_key.as_bytes(),
            b"agentpool dashboard sessions v1",
        ))
    }

    fn mac(&self, purpose: &str, id: &str) -> String {
        hex::encode(mac_bytes(&self.0, format!("{purpose}:{id}").as_bytes()))
    }
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(***)")
    }
}

fn mac_bytes(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    mac.update(message);
    mac.finalize().into_bytes().into()
}

fn hash_id(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// A live session, as a request presented it.
#[derive(Debug, Clone)]
pub struct Session {
    id: String,
}

impl Session {
    /// The token a page of this session sends back with every write (`X-CSRF-Token`).
    pub fn csrf_token(&self, key: &SessionKey) -> String {
        key.mac("csrf", &self.id)
    }

    pub fn csrf_matches(&self, key: &SessionKey, given: &str) -> bool {
        secrets_match(given, &self.csrf_token(key))
    }
}

/// Opens a session lasting `ttl` and returns its cookie value; drops sessions and throttling
/// records long expired.
pub async fn open(db: &PgPool, key: &SessionKey, ttl: Duration) -> Result<String> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let id = hex::encode(bytes);
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    crate::failpoint!(
        "sessions.open.before",
        return Err(crate::failpoint::db_error().into())
    );
    sqlx::query(
        "WITH gone AS (DELETE FROM admin_sessions WHERE expires_at < now()),
              forgotten AS (DELETE FROM admin_login_attempts WHERE blocked_until < now() - interval '1 day')
         INSERT INTO admin_sessions (id_hash, expires_at)
         VALUES ($1, now() + make_interval(secs => $2::double precision / 1000))",
    )
    .bind(hash_id(&id))
    .bind(ttl_ms as f64)
    .execute(db)
    .await?;
    crate::failpoint!(
        "sessions.open.after",
        return Err(crate::failpoint::db_error().into())
    );
    Ok(format!("{id}.{}", key.mac("session", &id)))
}

/// The session a cookie names, if its MAC is right and it is live (not logged out, not expired).
pub async fn check(db: &PgPool, key: &SessionKey, cookie: &str) -> Result<Option<Session>> {
    let Some((id, mac)) = cookie.split_once('.') else {
        return Ok(None);
    };
    if id.len() != 64 || !secrets_match(mac, &key.mac("session", id)) {
        return Ok(None);
    }
    let live: Option<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT expires_at FROM admin_sessions WHERE id_hash = $1 AND expires_at > now()",
    )
    .bind(hash_id(id))
    .fetch_optional(db)
    .await?;
    Ok(live.map(|_| Session { id: id.to_string() }))
}

/// Ends a session on every replica.
pub async fn close(db: &PgPool, session: &Session) -> Result<()> {
    crate::failpoint!(
        "sessions.close.before",
        return Err(crate::failpoint::db_error().into())
    );
    sqlx::query("DELETE FROM admin_sessions WHERE id_hash = $1")
        .bind(hash_id(&session.id))
        .execute(db)
        .await?;
    crate::failpoint!(
        "sessions.close.after",
        return Err(crate::failpoint::db_error().into())
    );
    Ok(())
}

/// The longest wait after wrong keys.
const MAX_DELAY: Duration = Duration::from_secs(300);

/// A client's wrong keys are forgotten once it has been allowed to try again for this long.
const FORGET_AFTER_SECS: f64 = 3600.0;

/// The wait imposed after the `n`-th attempt in a row, should it be wrong: none after the first (a
/// typo), then 1 s, doubling up to five minutes.
pub fn delay_after(n: i32) -> Duration {
    if n < 2 {
        return Duration::ZERO;
    }
    let doublings = u32::try_from(n - 2).unwrap_or(0).min(16);
    Duration::from_secs(1u64 << doublings).min(MAX_DELAY)
}

/// Whether a client may try a key now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Go ahead; if the key is wrong, the client must then wait this long.
    Allowed { wait_if_wrong: Duration },
    /// Too soon after wrong keys: the key is not even looked at.
    Blocked { wait: Duration },
}

/// Counts an attempt of `client` before its key is checked, so that parallel guesses are throttled
/// like serial ones: each attempt let through moves the client's next chance out by the delay it
/// would earn by being wrong; a right key then clears the record ([`forget_attempts`]).
pub async fn attempt(db: &PgPool, client: &str) -> Result<Attempt> {
    crate::failpoint!(
        "sessions.attempt.before",
        return Err(crate::failpoint::db_error().into())
    );
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO admin_login_attempts (client, attempts, blocked_until)
         VALUES ($1, 0, 'epoch') ON CONFLICT (client) DO NOTHING",
    )
    .bind(client)
    .execute(&mut *tx)
    .await?;
    let (attempts, wait_secs, stale): (i32, f64, bool) = sqlx::query_as(
        "SELECT attempts,
                greatest(0, extract(epoch FROM blocked_until - clock_timestamp()))::double precision,
                blocked_until < clock_timestamp() - make_interval(secs => $2)
           FROM admin_login_attempts WHERE client = $1 FOR UPDATE",
    )
    .bind(client)
    .bind(FORGET_AFTER_SECS)
    .fetch_one(&mut *tx)
    .await?;
    if wait_secs > 0.0 {
        tx.commit().await?;
        return Ok(Attempt::Blocked {
            wait: Duration::from_secs_f64(wait_secs),
        });
    }
    let n = if stale { 1 } else { attempts.saturating_add(1) };
    let delay = delay_after(n);
    sqlx::query(
        "UPDATE admin_login_attempts
            SET attempts = $2, blocked_until = clock_timestamp() + make_interval(secs => $3)
          WHERE client = $1",
    )
    .bind(client)
    .bind(n)
    .bind(delay.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    crate::failpoint!(
        "sessions.attempt.after",
        return Err(crate::failpoint::db_error().into())
    );
    Ok(Attempt::Allowed {
        wait_if_wrong: delay,
    })
}

/// Where a client stands after its wrong keys, read without counting an attempt: `None` if it
/// has no record, else how long it must still wait (zero: it may try again).
pub async fn standing(db: &PgPool, client: &str) -> Result<Option<Duration>> {
    let wait: Option<f64> = sqlx::query_scalar(
        "SELECT greatest(0, extract(epoch FROM blocked_until - clock_timestamp()))::double precision
           FROM admin_login_attempts WHERE client = $1",
    )
    .bind(client)
    .fetch_optional(db)
    .await?;
    Ok(wait.map(Duration::from_secs_f64))
}

/// The channel on which Postgres announces each record of wrong keys made (`+client`) or
/// forgotten (`-client`), at commit (migration 0017).
const RECORDS_CHANNEL: &str = "agentpool_wrong_keys";

/// The following connection's `application_name`, to tell it apart in `pg_stat_activity`.
pub const FOLLOWER_NAME: &str = "agentpool-follower";

/// A change to the clients with a record of wrong keys, as announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordChange {
    Made(String),
    Forgotten(String),
}

impl RecordChange {
    pub fn parse(payload: &str) -> Option<Self> {
        if let Some(client) = payload.strip_prefix('+') {
            return Some(Self::Made(client.to_string()));
        }
        payload
            .strip_prefix('-')
            .map(|client| Self::Forgotten(client.to_string()))
    }
}

/// Listens for [`RecordChange`]s on a connection of its own, outside `db`'s pool (it is held
/// for as long as the replica runs), then reads every client with a record: a change committed
/// after the read is announced, so nothing falls between the two.
pub async fn follow_records(db: &PgPool) -> Result<(PgListener, HashSet<String>)> {
    let own = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(
            (*db.connect_options())
                .clone()
                .application_name(FOLLOWER_NAME),
        );
    let mut listener = PgListener::connect_with(&own).await?;
    listener.listen(RECORDS_CHANNEL).await?;
    let clients: Vec<String> = sqlx::query_scalar("SELECT client FROM admin_login_attempts")
        .fetch_all(&mut listener)
        .await?;
    Ok((listener, clients.into_iter().collect()))
}

/// One round trip on a following connection: an answer shows that it still hears announcements.
pub async fn still_following(listener: &mut PgListener) -> Result<()> {
    sqlx::query("SELECT 1").execute(listener).await?;
    Ok(())
}

/// A right key: the client's wrong ones are forgotten.
pub async fn forget_attempts(db: &PgPool, client: &str) -> Result<()> {
    crate::failpoint!(
        "sessions.forget_attempts.before",
        return Err(crate::failpoint::db_error().into())
    );
    sqlx::query("DELETE FROM admin_login_attempts WHERE client = $1")
        .bind(client)
        .execute(db)
        .await?;
    crate::failpoint!(
        "sessions.forget_attempts.after",
        return Err(crate::failpoint::db_error().into())
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_grows_after_the_first_wrong_key() {
        let delays: Vec<u64> = (1..=12).map(|n| delay_after(n).as_secs()).collect();
        assert_eq!(delays, [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(delay_after(i32::MAX), MAX_DELAY);
    }

    #[test]
    fn announcements_read_as_records_made_and_forgotten() {
        assert_eq!(
            RecordChange::parse("+203.0.113.9"),
            Some(RecordChange::Made("203.0.113.9".into()))
        );
        assert_eq!(
            RecordChange::parse("-2001:db8::1"),
            Some(RecordChange::Forgotten("2001:db8::1".into()))
        );
        assert_eq!(RecordChange::parse("203.0.113.9"), None);
        assert_eq!(RecordChange::parse(""), None);
    }

    #[test]
    fn csrf_tokens_belong_to_their_session_and_key() {
        let key = SessionKey::derive("0123456789abcdef-key");
        let a = Session { id: "a".repeat(64) };
        let b = Session { id: "b".repeat(64) };
        let token = a.csrf_token(&key);
        assert!(a.csrf_matches(&key, &token));
        assert!(!b.csrf_matches(&key, &token));
        let other = SessionKey::derive("another-key-0123456789");
        assert!(!a.csrf_matches(&other, &token));
        assert!(!token.contains("0123456789abcdef-key"));
    }
}
