//! Notion's read API, for instructions kept as pages (seed 000's prompts; DESIGN.md, "Notion"):
//! a page's title (`GET /v1/pages/{id}`) and its blocks, one level per call
//! (`GET /v1/blocks/{id}/children`, paged by `next_cursor`), recursing into blocks with
//! `has_children`. The text is each block's `rich_text` `plain_text` (a table row's cells), one
//! line per block, nested blocks indented.
//!
//! 5xx and 429 are retried by [`crate::outbound`] (429 after its `Retry-After`); a 404 is a page
//! that is missing or not shared with the integration: Notion does not say which.

use std::sync::Arc;

use serde_json::Value;

use crate::calls::Tally;
use crate::config::{PromptSettings, Secret};
use crate::error::{Error, Result};
use crate::outbound::{Call, Failure, Outbound, Policy, Replay};

const NOTION_VERSION: &str = "2025-09-03";
const PAGE_SIZE: usize = 100;
/// Bounds on one page's text: a page nested deeper, or longer, is cut there.
const MAX_DEPTH: usize = 8;
const MAX_BLOCKS: usize = 2000;
/// Block types whose children are another page or a database, not this page's text.
const OTHER_PAGES: [&str; 2] = ["child_page", "child_database"];

/// A page's text as read from Notion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageText {
    pub title: String,
    /// The title as its first line, then the blocks.
    pub text: String,
}

pub struct Notion {
    out: Arc<Outbound>,
    api: String,
    key: Secret,
}

impl Notion {
    /// `None` without `NOTION_API_KEY`.
    pub fn from_settings(settings: &PromptSettings, tally: &Tally) -> Option<Self> {
        let key = settings.notion_api_key.clone()?;
        Some(Self {
            // Notion allows about 3 requests a second: a page of many nested blocks may meet a
            // 429, whose Retry-After (seconds) is honoured up to a bound a request can wait.
            out: Arc::new(Outbound::new(
                Policy {
                    timeout: std::time::Duration::from_secs(10),
                    attempts: 4,
                    max_retry_after: std::time::Duration::from_secs(10),
                    per_host: 3,
                    ..Policy::default()
                },
                tally.clone(),
            )),
            api: settings.notion_api_url.trim_end_matches('/').to_string(),
            key,
        })
    }

    async fn get(&self, step: &'static str, url: &str) -> std::result::Result<Value, Failure> {
        let call = Call {
            service: "notion",
            step,
            replay: Replay::Safe,
        };
        self.out
            .json(call, url, |http| {
                http.get(url)
                    .bearer_auth(self.key.expose())
                    .header("Notion-Version", NOTION_VERSION)
            })
            .await
    }

    /// The page's title and text. `page_id` is 32 hex digits (see `template::check_page_id`).
    pub async fn page_text(&self, page_id: &str) -> Result<PageText> {
        let failed = |failure: Failure| match failure {
            Failure::NotFound => Error::Missing(format!(
                "Notion page {page_id} is missing or not shared with the integration"
            )),
            failure => Error::Notion {
                retry_after: matches!(failure, Failure::RateLimited).then_some(10),
                failure,
            },
        };
        let page = self
            .get("page", &format!("{}/pages/{page_id}", self.api))
            .await
            .map_err(failed)?;
        let title = title_of(&page);
        let mut lines = vec![title.clone()];
        let mut blocks = 0usize;
        self.children(page_id, 0, &mut lines, &mut blocks)
            .await
            .map_err(failed)?;
        Ok(PageText {
            title,
            text: lines.join("\n").trim().to_string(),
        })
    }

    /// Appends the text of `parent`'s children, and theirs, depth first.
    async fn children(
        &self,
        parent: &str,
        depth: usize,
        lines: &mut Vec<String>,
        blocks: &mut usize,
    ) -> std::result::Result<(), Failure> {
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!(
                "{}/blocks/{parent}/children?page_size={PAGE_SIZE}",
                self.api
            );
            if let Some(cursor) = &cursor {
                url.push_str("&start_cursor=");
                url.push_str(&urlencoding(cursor));
            }
            let page = self.get("blocks", &url).await?;
            let results = page["results"].as_array().ok_or(Failure::BadReply)?;
            for block in results {
                *blocks += 1;
                if *blocks > MAX_BLOCKS {
                    return Ok(());
                }
                let kind = block["type"].as_str().unwrap_or_default();
                if let Some(line) = line_of(block, kind) {
                    lines.push(format!("{}{line}", "  ".repeat(depth)));
                }
                let nested = block["has_children"].as_bool().unwrap_or(false)
                    && !OTHER_PAGES.contains(&kind)
                    && depth + 1 < MAX_DEPTH;
                if let (true, Some(id)) = (nested, block["id"].as_str()) {
                    Box::pin(self.children(id, depth + 1, lines, blocks)).await?;
                }
            }
            match (page["has_more"].as_bool(), page["next_cursor"].as_str()) {
                (Some(true), Some(next)) => cursor = Some(next.to_string()),
                _ => return Ok(()),
            }
        }
    }
}

/// A cursor as a query value: Notion's are UUIDs, but nothing says they stay so.
fn urlencoding(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn plain(rich_text: &Value) -> String {
    rich_text
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item["plain_text"].as_str())
                .collect::<String>()
        })
        .unwrap_or_default()
}

/// The title property's text (its name varies: it is the one whose type is `title`).
fn title_of(page: &Value) -> String {
    page["properties"]
        .as_object()
        .and_then(|properties| {
            properties
                .values()
                .find(|p| p["type"].as_str() == Some("title"))
        })
        .map(|p| plain(&p["title"]))
        .unwrap_or_default()
}

/// One block's line: its text, marked as Markdown would (a heading, a list item, a to-do).
fn line_of(block: &Value, kind: &str) -> Option<String> {
    let content = &block[kind];
    if kind == "table_row" {
        let cells: Vec<String> = content["cells"].as_array()?.iter().map(plain).collect();
        return Some(cells.join(" | "));
    }
    let text = plain(content.get("rich_text")?);
    let marked = match kind {
        "heading_1" => format!("# {text}"),
        "heading_2" => format!("## {text}"),
        "heading_3" => format!("### {text}"),
        "bulleted_list_item" | "toggle" => format!("- {text}"),
        "numbered_list_item" => format!("1. {text}"),
        "to_do" if content["checked"].as_bool() == Some(true) => format!("[x] {text}"),
        "to_do" => format!("[ ] {text}"),
        "quote" => format!("> {text}"),
        _ => text,
    };
    Some(marked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn blocks_read_as_lines() {
        let rt = |t: &str| json!([{"plain_text": t}]);
        let heading = json!({"type": "heading_1", "heading_1": {"rich_text": rt("Rules")}});
        assert_eq!(line_of(&heading, "heading_1").as_deref(), Some("# Rules"));
        let row = json!({"type": "table_row", "table_row": {"cells": [rt("a"), rt("b")]}});
        assert_eq!(line_of(&row, "table_row").as_deref(), Some("a | b"));
        let divider = json!({"type": "divider", "divider": {}});
        assert_eq!(line_of(&divider, "divider"), None);
        let page = json!({"properties": {"Title": {"type": "title", "title": rt("Trip")}}});
        assert_eq!(title_of(&page), "Trip");
    }
}
