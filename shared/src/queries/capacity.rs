//! `creation_pauses`: creation paused while a provider is at capacity, for every replica.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::error::Result;

/// Creation is paused until `until` because the provider said `code`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pause {
    pub until: DateTime<Utc>,
    pub code: String,
    /// Creations refused for capacity since the pause began.
    pub refusals: i64,
}

/// Pauses `provider`'s creations for `retry_after` from now (never shortening a pause in force).
pub async fn pause(
    db: &PgPool,
    provider: &str,
    code: &str,
    retry_after: std::time::Duration,
) -> Result<()> {
    let millis = i64::try_from(retry_after.as_millis()).unwrap_or(i64::MAX);
    sqlx::query(
        "INSERT INTO creation_pauses (provider, until, code)
         VALUES ($1, now() + $3 * interval '1 millisecond', $2)
         ON CONFLICT (provider) DO UPDATE
            SET until = GREATEST(creation_pauses.until, EXCLUDED.until), code = EXCLUDED.code,
                refusals = CASE WHEN creation_pauses.until > now()
                                THEN creation_pauses.refusals + 1 ELSE 1 END,
                since = CASE WHEN creation_pauses.until > now()
                             THEN creation_pauses.since ELSE now() END",
    )
    .bind(provider)
    .bind(code)
    .bind(millis)
    .execute(db)
    .await?;
    Ok(())
}

/// The pause in force for `provider`, if any.
pub async fn current(db: &PgPool, provider: &str) -> Result<Option<Pause>> {
    Ok(sqlx::query_as(
        "SELECT until, code, refusals FROM creation_pauses WHERE provider = $1 AND until > now()",
    )
    .bind(provider)
    .fetch_optional(db)
    .await?)
}
