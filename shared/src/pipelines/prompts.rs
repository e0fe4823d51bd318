//! Agent instructions kept as Notion pages (seed 000's `GET /api/prompts/:pageId`, and a template's
//! or a claim's `instructionsPageId`).
//!
//! Every replica serves one copy of a page, kept in Postgres for `PROMPT_CACHE_TTL_MS`. When the
//! copy is missing or old, the first replica to ask takes the page's lock (a transaction-scoped
//! advisory lock) and fetches it; the others wait on the lock and then find the fresh copy, so
//! Notion sees one fetch per page per period however many replicas ask at once. When Notion fails,
//! the old copy is served, marked stale; a page Notion says is missing (or not shared with the
//! integration) is forgotten and answered 404.
//!
//! Kill points: a replica that dies while fetching ends its transaction, which releases the lock;
//! the next asker fetches. The copy is written in that same transaction, so no half-written copy
//! is ever seen.

use crate::error::{Error, Result};
use crate::prompt_cache::{self, Cached};
use crate::template::check_page_id;
use crate::Pool;

/// The instructions a page holds: its title, then its blocks.
pub type Prompt = Cached;

pub async fn get(pool: &Pool, page_id: &str) -> Result<Prompt> {
    let page_id = check_page_id(page_id)
        .map_err(|_| Error::Missing(format!("Notion page {page_id:?} is not a page id")))?;
    let ttl_ms = i64::try_from(pool.settings.prompts.prompt_cache_ttl_ms).unwrap_or(i64::MAX);
    if let Some(fresh) = prompt_cache::get(&pool.db, &page_id, ttl_ms)
        .await?
        .filter(|c| !c.stale)
    {
        return Ok(fresh);
    }
    let Some(notion) = pool.notion.as_ref() else {
        return Err(Error::Missing(
            "Notion prompts are not configured (NOTION_API_KEY is unset)".into(),
        ));
    };
    let mut tx = pool.db.begin().await?;
    prompt_cache::lock_page(&mut tx, &page_id).await?;
    // Another replica may have fetched it while this one waited for the lock.
    let kept = prompt_cache::get(&mut *tx, &page_id, ttl_ms).await?;
    if let Some(fresh) = kept.clone().filter(|c| !c.stale) {
        return Ok(fresh);
    }
    match notion.page_text(&page_id).await {
        Ok(page) => {
            let stored = prompt_cache::store(&mut *tx, &page_id, &page.title, &page.text).await?;
            tx.commit().await?;
            tracing::info!(page_id = %page_id, "Notion page fetched");
            Ok(stored)
        }
        Err(missing @ Error::Missing(_)) => {
            prompt_cache::forget(&mut *tx, &page_id).await?;
            tx.commit().await?;
            Err(missing)
        }
        Err(failure) => {
            drop(tx);
            match kept {
                Some(stale) => {
                    tracing::warn!(page_id = %page_id, error = %failure, "Notion failed; serving the stale copy");
                    Ok(stale)
                }
                None => Err(failure),
            }
        }
    }
}

/// The instructions a page holds, for a claim.
pub async fn instructions(pool: &Pool, page_id: &str) -> Result<String> {
    Ok(get(pool, page_id).await?.text)
}
