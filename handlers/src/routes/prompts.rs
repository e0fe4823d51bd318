//! `GET /api/prompts/:pageId` (seed 000): an agent's instructions kept as a Notion page, served
//! from the copy every replica shares (see `agentpool_core::prompts`).

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use agentpool_core::prompts;

use crate::error::{ApiResult, ErrorBody};
use crate::extract::Path;
use crate::state::AppState;

/// Says that the text is an old copy, served because Notion failed.
pub const STALE_HEADER: &str = "x-prompt-stale";

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PromptReply {
    /// 32 hex digits, no dashes.
    page_id: String,
    title: String,
    /// The title as the first line, then the page's blocks, one a line, nested ones indented.
    text: String,
    fetched_at: chrono::DateTime<chrono::Utc>,
    /// True when Notion failed and this is a copy older than `PROMPT_CACHE_TTL_MS`.
    stale: bool,
}

#[utoipa::path(get, path = "/api/prompts/{pageId}", tag = "prompts",
    description = "A Notion page's text (title and blocks, recursively), cached for every replica \
                   for `PROMPT_CACHE_TTL_MS`. When Notion fails, the last copy is served with \
                   `X-Prompt-Stale: true`.",
    params(("pageId" = String, Path, description = "The page id, 32 hex digits (dashes allowed)")),
    responses(
        (status = 200, description = "The page's text", body = PromptReply,
         headers(("X-Prompt-Stale" = String, description = "`true` on a stale copy"))),
        (status = 404, description = "Not a page id, or the page is missing or not shared with the integration, or `NOTION_API_KEY` is unset", body = ErrorBody),
        (status = 502, description = "`notion_failed` and no copy is kept (with `Retry-After` when rate limited)", body = ErrorBody),
    ))]
pub async fn prompt(
    State(state): State<AppState>,
    Path(page_id): Path<String>,
) -> ApiResult<Response> {
    let prompt = prompts::get(&state.pool, &page_id).await?;
    let stale = prompt.stale;
    let mut response = Json(PromptReply {
        page_id: prompt.page_id,
        title: prompt.title,
        text: prompt.text,
        fetched_at: prompt.fetched_at,
        stale,
    })
    .into_response();
    if stale {
        response.headers_mut().insert(
            HeaderName::from_static(STALE_HEADER),
            HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}
