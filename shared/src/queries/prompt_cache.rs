//! Queries on `notion_prompts`: one copy of each Notion page's text for every replica, and the
//! per-page lock under which one replica fetches it while the others wait for its answer.

use sqlx::PgConnection;

use crate::error::Result;

/// A page's text as kept.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Cached {
    pub page_id: String,
    pub title: String,
    pub text: String,
    pub fetched_at: chrono::DateTime<chrono::Utc>,
    /// Fetched longer than the cache's TTL ago.
    pub stale: bool,
}

/// The kept copy of a page, fresh or not.
pub async fn get(
    db: impl sqlx::PgExecutor<'_>,
    page_id: &str,
    ttl_ms: i64,
) -> Result<Option<Cached>> {
    Ok(sqlx::query_as(
        "SELECT page_id, title, text, fetched_at,
                fetched_at < now() - $2 * interval '1 millisecond' AS stale
           FROM notion_prompts WHERE page_id = $1",
    )
    .bind(page_id)
    .bind(ttl_ms)
    .fetch_optional(db)
    .await?)
}

/// Waits for, and takes until the transaction ends, the lock on one page's fetch.
pub async fn lock_page(tx: &mut PgConnection, page_id: &str) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('notion_prompts:' || $1, 0))")
        .bind(page_id)
        .execute(tx)
        .await?;
    Ok(())
}

pub async fn store(
    db: impl sqlx::PgExecutor<'_>,
    page_id: &str,
    title: &str,
    text: &str,
) -> Result<Cached> {
    Ok(sqlx::query_as(
        "INSERT INTO notion_prompts (page_id, title, text, fetched_at)
         VALUES ($1, $2, $3, now())
         ON CONFLICT (page_id) DO UPDATE
            SET title = EXCLUDED.title, text = EXCLUDED.text, fetched_at = EXCLUDED.fetched_at
         RETURNING page_id, title, text, fetched_at, false AS stale",
    )
    .bind(page_id)
    .bind(title)
    .bind(text)
    .fetch_one(db)
    .await?)
}

/// Forgets a page Notion no longer shows us (deleted, or no longer shared).
pub async fn forget(db: impl sqlx::PgExecutor<'_>, page_id: &str) -> Result<()> {
    sqlx::query("DELETE FROM notion_prompts WHERE page_id = $1")
        .bind(page_id)
        .execute(db)
        .await?;
    Ok(())
}
