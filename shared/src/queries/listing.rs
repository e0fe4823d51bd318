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

/// Where the next page starts: just after the last row of the previous one. The public
/// listing's cursors carry an instance id too: an id is no secret (every route that takes one
/// needs the key); the public view merely has no use for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    created_at: DateTime<Utc>,
    id: String,
}

impl Cursor {
    /// Opaque to clients (hex), so that its layout stays ours to change.
    pub fn encode(&self) -> String {
        hex::encode(format!(
            "{}:{}",
            self.created_at.timestamp_micros(),
            self.id
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
        let (micros, id) = decoded.split_once(':')?;
        // Postgres keeps microseconds, so this is exactly the row's `created_at`. No row was
        // created before 1970; earlier times could fall outside what Postgres stores.
        if micros.is_empty() || !micros.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let created_at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
        let id_ok = !id.is_empty()
            && id.len() <= 64
            && id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        id_ok.then(|| Cursor {
            created_at,
            id: id.to_string(),
        })
    }
}

/// One page, and where the next one starts (`None`: this was the last).
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Cursor>,
}

/// What the public listing shows of an instance, and all it reads: never `instructions` or
/// anything else that is not shown. The id is read for the cursor only.
#[derive(Debug, Clone, FromRow)]
pub struct PublicAgent {
    pub id: String,
    pub agent_name: Option<String>,
    pub status: InstanceStatus,
    pub status_since: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub claimed_at: Option<DateTime<Utc>>,
}

const PUBLIC_COLUMNS: &str = "id, agent_name, status, status_since, created_at, claimed_at";

/// Ordering fields of a listed row.
trait Keyed {
    fn key(&self) -> Cursor;
}

impl Keyed for PublicAgent {
    fn key(&self) -> Cursor {
        Cursor {
            created_at: self.created_at,
            id: self.id.clone(),
        }
    }
}

impl Keyed for Instance {
    fn key(&self) -> Cursor {
        Cursor {
            created_at: self.created_at,
            id: self.id.clone(),
        }
    }
}

/// A page of the public view.
pub async fn public_page(
    db: &PgPool,
    after: Option<&Cursor>,
    limit: u32,
) -> Result<Page<PublicAgent>> {
    page(db, PUBLIC_COLUMNS, after, limit).await
}

/// A page of the operator's view: whole rows (which never include the gateway token).
pub async fn operator_page(
    db: &PgPool,
    after: Option<&Cursor>,
    limit: u32,
) -> Result<Page<Instance>> {
    page(db, INSTANCE_COLUMNS, after, limit).await
}

async fn page<T>(db: &PgPool, columns: &str, after: Option<&Cursor>, limit: u32) -> Result<Page<T>>
where
    T: for<'r> FromRow<'r, PgRow> + Keyed + Send + Unpin,
{
    let limit = limit.clamp(1, MAX_LIMIT);
    // One row more than asked says whether there is a next page without a count.
    let fetch = i64::from(limit) + 1;
    // Two statements rather than `$1 IS NULL OR ...`, which would keep a generic plan from
    // using the `(created_at, id)` index.
    let mut rows: Vec<T> = match after {
        Some(cursor) => {
            sqlx::query_as(&format!(
                "SELECT {columns} FROM instances WHERE (created_at, id) > ($1, $2)
                  ORDER BY created_at, id LIMIT $3"
            ))
            .bind(cursor.created_at)
            .bind(&cursor.id)
            .bind(fetch)
            .fetch_all(db)
            .await?
        }
        None => {
            sqlx::query_as(&format!(
                "SELECT {columns} FROM instances ORDER BY created_at, id LIMIT $1"
            ))
            .bind(fetch)
            .fetch_all(db)
            .await?
        }
    };
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = if more {
        rows.last().map(Keyed::key)
    } else {
        None
    };
    Ok(Page { items: rows, next })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_what_they_did_not_make() {
        let cursor = Cursor {
            created_at: DateTime::from_timestamp_micros(1_780_000_000_123_456).unwrap(),
            id: "abc123def456".into(),
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
