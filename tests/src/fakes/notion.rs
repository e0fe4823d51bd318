//! A stateful fake of Notion's read API (`/v1/pages/{id}`, `/v1/blocks/{id}/children`), for the
//! prompts' tests: pages with a title and nested blocks, children paged by an opaque cursor (one
//! level per call, as at Notion: a block with `has_children` is read by another call), the
//! `Notion-Version` header required, and Notion's error shape
//! `{object: "error", status, code, message}`. A page not shared with the integration is
//! indistinguishable from a missing one: 404 `object_not_found`. Faults (429 with `Retry-After`,
//! 503, latency) come from [`super::faults`].
//!
//! Ops for faults and stats: `GET /v1/pages/{id}`, `GET /v1/blocks/{id}/children`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::faults::{bearer_in, unpoisoned, Controls, Fake, Faults, Server};
use super::rest::Params;

#[derive(Debug, Clone)]
pub struct NotionConfig {
    /// The integration token accepted as Bearer.
    pub token: String,
    /// Largest page of children, whatever `page_size` asks (Notion's is 100).
    pub page_size: usize,
    /// 0 = any free port.
    pub port: u16,
}

impl Default for NotionConfig {
    fn default() -> Self {
        Self {
            token: "fake-notion-integration-token".into(),
            page_size: 100,
            port: 0,
        }
    }
}

/// A block as a test writes it: its type (`paragraph`, `heading_1`, `bulleted_list_item`,
/// `table_row`, ...), its text (a `table_row`'s cells), and its children.
#[derive(Debug, Clone)]
pub struct Block {
    pub kind: String,
    pub text: Vec<String>,
    pub children: Vec<Block>,
}

impl Block {
    pub fn new(kind: &str, text: &str) -> Self {
        Self {
            kind: kind.into(),
            text: vec![text.into()],
            children: Vec::new(),
        }
    }

    pub fn row(cells: &[&str]) -> Self {
        Self {
            kind: "table_row".into(),
            text: cells.iter().map(|c| c.to_string()).collect(),
            children: Vec::new(),
        }
    }

    pub fn with(mut self, children: Vec<Block>) -> Self {
        self.children = children;
        self
    }
}

struct Stored {
    kind: String,
    text: Vec<String>,
    children: Vec<String>,
}

#[derive(Default)]
struct World {
    titles: HashMap<String, String>,
    /// Blocks by id; a page is a block whose children are its top-level blocks.
    blocks: HashMap<String, Stored>,
}

struct Inner {
    config: NotionConfig,
    world: Mutex<World>,
    faults: Faults,
}

impl Inner {
    fn world(&self) -> MutexGuard<'_, World> {
        unpoisoned(&self.world)
    }
}

/// Notion takes ids with or without dashes.
fn bare(id: &str) -> String {
    id.chars()
        .filter(|c| *c != '-')
        .collect::<String>()
        .to_ascii_lowercase()
}

/// A bare id as Notion writes it, with a UUID's dashes.
fn dashed(id: &str) -> String {
    if id.len() != 32 {
        return id.to_string();
    }
    format!(
        "{}-{}-{}-{}-{}",
        &id[..8],
        &id[8..12],
        &id[12..16],
        &id[16..20],
        &id[20..]
    )
}

fn rich_text(text: &str) -> Value {
    json!([{
        "type": "text",
        "text": {"content": text, "link": null},
        "plain_text": text,
        "href": null,
    }])
}

fn code_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "validation_error",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::NOT_FOUND => "object_not_found",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::SERVICE_UNAVAILABLE => "service_unavailable",
        _ => "internal_server_error",
    }
}

impl Fake for Inner {
    fn faults(&self) -> &Faults {
        &self.faults
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        bearer_in(headers, std::slice::from_ref(&self.config.token))
    }

    fn error(&self, status: StatusCode, message: &str) -> Response {
        (
            status,
            Json(json!({
                "object": "error",
                "status": status.as_u16(),
                "code": code_of(status),
                "message": message,
            })),
        )
            .into_response()
    }

    fn state(&self) -> Value {
        let world = self.world();
        json!({"pages": world.titles})
    }
}

/// A running fake; its server stops when it is dropped.
pub struct NotionFake {
    inner: Arc<Inner>,
    server: Server,
}

impl NotionFake {
    pub async fn start(config: NotionConfig) -> Self {
        let port = config.port;
        let inner = Arc::new(Inner {
            config,
            world: Mutex::new(World::default()),
            faults: Faults::default(),
        });
        let routes = Router::new()
            .route("/v1/pages/{id}", get(page))
            .route("/v1/blocks/{id}/children", get(children));
        let server = Server::rest("notion", port, inner.clone(), routes).await;
        Self { inner, server }
    }

    /// The API base, `http://127.0.0.1:PORT/v1` (what `NOTION_API_URL` takes).
    pub fn url(&self) -> String {
        format!("{}/v1", self.server.base_url())
    }

    pub fn token(&self) -> &str {
        &self.inner.config.token
    }

    /// Adds (or replaces) a page shared with the integration.
    pub fn put_page(&self, id: &str, title: &str, blocks: Vec<Block>) {
        let id = bare(id);
        let mut world = self.inner.world();
        let children = blocks.into_iter().map(|b| store(&mut world, b)).collect();
        world.titles.insert(id.clone(), title.into());
        world.blocks.insert(
            id,
            Stored {
                kind: "page".into(),
                text: Vec::new(),
                children,
            },
        );
    }

    /// Unshares a page: from now on it answers 404, as a missing one does.
    pub fn remove_page(&self, id: &str) {
        let id = bare(id);
        let mut world = self.inner.world();
        world.titles.remove(&id);
        world.blocks.remove(&id);
    }
}

fn store(world: &mut World, block: Block) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let children = block
        .children
        .into_iter()
        .map(|b| store(world, b))
        .collect();
    world.blocks.insert(
        id.clone(),
        Stored {
            kind: block.kind,
            text: block.text,
            children,
        },
    );
    id
}

/// Notion's refusal of a request without `Notion-Version`.
fn unversioned(inner: &Inner, headers: &HeaderMap) -> Option<Response> {
    headers.get("notion-version").is_none().then(|| {
        inner.error(
            StatusCode::BAD_REQUEST,
            "Notion-Version header failed validation: Notion-Version header should be defined",
        )
    })
}

fn not_found(inner: &Inner, id: &str) -> Response {
    inner.error(
        StatusCode::NOT_FOUND,
        &format!(
            "Could not find block with ID: {}. Make sure the relevant pages and databases are shared with your integration.",
            dashed(id)
        ),
    )
}

async fn page(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(refused) = unversioned(&inner, &headers) {
        return refused;
    }
    let id = bare(&id);
    let world = inner.world();
    let Some(title) = world.titles.get(&id) else {
        return not_found(&inner, &id);
    };
    Json(json!({
        "object": "page",
        "id": dashed(&id),
        "properties": {
            "Name": {"id": "title", "type": "title", "title": rich_text(title)},
        },
    }))
    .into_response()
}

async fn children(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    if let Some(refused) = unversioned(&inner, &headers) {
        return refused;
    }
    let read = || -> Result<(usize, usize), String> {
        let params = Params::read(query)?;
        let size = match params.uint("page_size")? {
            Some(0) => return Err("page_size should be ≥ 1".into()),
            Some(n) => n.min(inner.config.page_size),
            None => inner.config.page_size,
        };
        let start = match params.get("start_cursor") {
            None | Some("") => 0,
            Some(cursor) => cursor
                .strip_prefix("cursor-")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("start_cursor should be a valid cursor, not {cursor:?}"))?,
        };
        Ok((size, start))
    };
    let (size, start) = match read() {
        Ok(read) => read,
        Err(message) => return inner.error(StatusCode::BAD_REQUEST, &message),
    };
    let id = bare(&id);
    let world = inner.world();
    let Some(parent) = world.blocks.get(&id) else {
        return not_found(&inner, &id);
    };
    let end = (start + size).min(parent.children.len());
    let results: Vec<Value> = parent.children[start.min(end)..end]
        .iter()
        .filter_map(|child| world.blocks.get(child).map(|b| (child, b)))
        .map(|(child, block)| {
            let content = match block.kind.as_str() {
                "table_row" => {
                    json!({"cells": block.text.iter().map(|c| rich_text(c)).collect::<Vec<_>>()})
                }
                "table" => json!({"table_width": 2, "has_column_header": false}),
                "divider" | "child_page" | "child_database" => json!({}),
                _ => json!({"rich_text": rich_text(&block.text.concat()), "color": "default"}),
            };
            json!({
                "object": "block",
                "id": dashed(child),
                "type": block.kind,
                "has_children": !block.children.is_empty(),
                block.kind.clone(): content,
            })
        })
        .collect();
    let more = end < parent.children.len();
    Json(json!({
        "object": "list",
        "results": results,
        "next_cursor": if more { json!(format!("cursor-{end}")) } else { Value::Null },
        "has_more": more,
        "type": "block",
        "block": {},
    }))
    .into_response()
}

impl Controls for NotionFake {
    fn server(&self) -> &Server {
        &self.server
    }

    fn faults(&self) -> &Faults {
        &self.inner.faults
    }
}
