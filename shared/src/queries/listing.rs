//! Listings of instances for the API, a page at a time: keyset pagination in the order
//! `(created_at, id)`, so a request reads at most `limit + 1` rows however large the fleet, and
//! a row created or deleted between two pages neither shifts nor repeats the others.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgPool};

use crate::domain::{Instance, InstanceStatus, INSTANCE_COLUMNS};
use crate::error::{Error, Result};

/// Covers a normal pool whole, so a client that does not page still sees everything.
pub const DEFAULT_LIMIT: u32 = 1_000;
/// The most rows one request may ask for: bounds a request's memory whatever the fleet.
pub const MAX_LIMIT: u32 = 5_000;

/// Where the next page starts: just after the last row of the previous one, by `(created_at,
/// key)`. The operator's listing keys rows by instance id; the public one by a hash of the row's
/// gateway token, so that its cursors reveal no id a visitor could not see otherwise (the hash of
/// a 256-bit random secret gives nothing back, and is as unique and as stable as the id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    created_at: DateTime<Utc>,
    key: String,
}

impl Cursor {
    /// Opaque to clients (hex), so that its layout stays ours to change.
    pub fn encode(&self) -> String {
        hex::encode(format!(
            "{}:{}",
            self.created_at.timestamp_micros(),
            self.key
        ))
    }

    pub fn decode(text: &str) -> Result<Self> {
        Self::parse(text).ok_or_else(|| {
            Error::Invalid("after must be a nextCursor from an earlier page of this listing".into())
        })
    }

    fn parse(text: &str) -> Option<Self> {
        let bytes = hex::decode(text).ok()?;
        let decoded = std::str::from_utf8(&bytes).ok()?;
        let (micros, key) = decoded.split_once(':')?;
        // Postgres keeps microseconds, so this is exactly the row's `created_at`. No row was
        // created before 1970; earlier times could fall outside what Postgres stores.
        if micros.is_empty() || !micros.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let created_at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
        let key_ok = !key.is_empty()
            && key.len() <= 64
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        key_ok.then(|| Cursor {
            created_at,
            key: key.to_string(),
        })
    }
}

/// One page, and where the next one starts (`None`: this was the last).
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Cursor>,
}

/// What the public listing shows of an instance, and all it reads: never `instructions`, the id or
/// anything else that is not shown.
#[derive(Debug, Clone, FromRow)]
pub struct PublicAgent {
    pub agent_name: Option<String>,
    pub status: InstanceStatus,
    pub status_since: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub claimed_at: Option<DateTime<Utc>>,
}

const PUBLIC_COLUMNS: &str = "agent_name, status, status_since, created_at, claimed_at";

/// The public listing's order within one `created_at`: see [`Cursor`].
const PUBLIC_KEY: &str = "encode(sha256(convert_to(gateway_token, 'UTF8')), 'hex')";

/// The statuses of agents someone is using: what the public page shows.
pub const LIVE: [InstanceStatus; 3] = [
    InstanceStatus::Claiming,
    InstanceStatus::Claimed,
    InstanceStatus::Crashed,
];

trait Created {
    fn created_at(&self) -> DateTime<Utc>;
}

impl Created for PublicAgent {
    fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
}

impl Created for Instance {
    fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
}

/// A listed row and its ordering key.
#[derive(FromRow)]
struct Listed<T> {
    #[sqlx(flatten)]
    item: T,
    cursor_key: String,
}

/// A page of the public view, of every status or of `only` these.
pub async fn public_page(
    db: &PgPool,
    after: Option<&Cursor>,
    limit: u32,
    only: Option<&[InstanceStatus]>,
) -> Result<Page<PublicAgent>> {
    page(db, PUBLIC_COLUMNS, PUBLIC_KEY, after, limit, only).await
}

/// A page of the operator's view: whole rows (which never include the gateway token).
pub async fn operator_page(
    db: &PgPool,
    after: Option<&Cursor>,
    limit: u32,
    only: Option<&[InstanceStatus]>,
) -> Result<Page<Instance>> {
    page(db, INSTANCE_COLUMNS, "id", after, limit, only).await
}

async fn page<T>(
    db: &PgPool,
    columns: &str,
    key: &str,
    after: Option<&Cursor>,
    limit: u32,
    only: Option<&[InstanceStatus]>,
) -> Result<Page<T>>
where
    T: for<'r> FromRow<'r, PgRow> + Created + Send + Unpin,
{
    let limit = limit.clamp(1, MAX_LIMIT);
    // One row more than asked says whether there is a next page without a count.
    let fetch = i64::from(limit) + 1;
    let statuses: Option<Vec<&str>> = only.map(|s| s.iter().map(|s| s.as_str()).collect());
    // Conditions are added only when asked for, rather than `$1 IS NULL OR ...`, which would
    // keep a generic plan from using an index.
    let mut conditions = Vec::new();
    let mut n = 1;
    if after.is_some() {
        conditions.push(format!("(created_at, {key}) > (${n}, ${})", n + 1));
        n += 2;
    }
    if statuses.is_some() {
        conditions.push(format!("status = ANY(${n})"));
        n += 1;
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let sql = format!(
        "SELECT {columns}, {key} AS cursor_key FROM instances {filter}
          ORDER BY created_at, cursor_key LIMIT ${n}"
    );
    let mut query = sqlx::query_as::<_, Listed<T>>(&sql);
    if let Some(cursor) = after {
        query = query.bind(cursor.created_at).bind(&cursor.key);
    }
    if let Some(statuses) = &statuses {
        query = query.bind(statuses);
    }
    let mut rows = query.bind(fetch).fetch_all(db).await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = if more {
        rows.last().map(|row| Cursor {
            created_at: row.item.created_at(),
            key: row.cursor_key.clone(),
        })
    } else {
        None
    };
    Ok(Page {
        items: rows.into_iter().map(|row| row.item).collect(),
        next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_what_they_did_not_make() {
        let cursor = Cursor {
            created_at: DateTime::from_timestamp_micros(1_780_000_000_123_456).unwrap(),
            key: "abc123def456".into(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        let encoded = cursor.encode();
        for bad in [
            String::new(),
            "zz".into(),
            format!("{encoded}0"),
            format!("{encoded}2f"),
            hex::encode("123"),
            hex::encode("x:abc"),
            hex::encode("1:"),
            hex::encode("1:ABC"),
            hex::encode(format!("1:{}", "a".repeat(65))),
            hex::encode(format!("{}:abc", i64::MAX)),
            hex::encode("-1:abc"),
            hex::encode("+1:abc"),
        ] {
            assert!(Cursor::decode(&bad).is_err(), "{bad:?} decoded");
        }
    }
}
