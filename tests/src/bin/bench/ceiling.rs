//! The ceiling of the claim's shape: the minimal claim served over HTTP by a server that does
//! nothing else — take the row, ask the runtime's `/pool/provision`, confirm — in a process of its
//! own, between the same load generator, Postgres and stub agent as a replica. An HTTP claim
//! crosses two more process boundaries than pgbench's minimal claim (the client's request, the
//! runtime's provision); this server's share of the minimal claim is what those crossings leave
//! for any implementation on this machine, and the replica's share is to be read against it.

use std::process::{Command, Stdio};

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use agentpool_tests::Guarded;

use crate::fleet::listening;
use crate::limit::{MINIMAL_FINISH, MINIMAL_TAKE};

/// The argument that makes `agentpool-bench` this server, then the database's URL.
pub const ARG: &str = "--bare-claim-server";

/// The server, started from this binary; it answers at `base` until dropped.
pub struct BareServer {
    pub base: String,
    process: Guarded,
}

impl BareServer {
    pub async fn start(database_url: &str) -> anyhow::Result<Self> {
        let child = Command::new(std::env::current_exe()?)
            .args([ARG, database_url])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the bare claim server")?;
        // Guarded first: a server that never says where it listens is stopped too.
        let mut process = Guarded(child);
        let addr = listening(&mut process.0, "bare claim server").await?;
        Ok(Self {
            base: format!("http://{addr}"),
            process,
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.0.id()
    }
}

#[derive(Clone)]
struct Bare {
    db: PgPool,
    http: reqwest::Client,
}

/// The server's process: `POST /api/pool/claim` (the path the load generator's claims take).
pub fn serve(database_url: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let bare = Bare {
            // The replica's own pool (its options, its default size): sqlx's defaults would
            // ping each connection on every acquire, a round trip per statement the replica
            // does not make, and the ceiling would sit lower than the shape's.
            db: agentpool_core::db::connect(
                database_url,
                agentpool_core::config::DbSettings::DEFAULT_MAX_CONNECTIONS,
            )
            .await?,
            http: reqwest::Client::new(),
        };
        let app = Router::new()
            .route("/api/pool/claim", post(claim))
            .with_state(bare);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("LISTENING {}", listener.local_addr()?);
        axum::serve(listener, app).await?;
        Ok(())
    })
}

type Failed = (StatusCode, String);

fn failed(e: impl std::fmt::Display) -> Failed {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

async fn claim(State(bare): State<Bare>, Json(body): Json<Value>) -> Result<Json<Value>, Failed> {
    let (id, url, gateway_token, claim_token): (String, String, String, Uuid) =
        sqlx::query_as(MINIMAL_TAKE)
            .fetch_one(&bare.db)
            .await
            .map_err(failed)?;
    let provisioned: Value = bare
        .http
        .post(format!("{url}/pool/provision"))
        .bearer_auth(gateway_token)
        .json(&json!({"agentName": body["agentName"], "instructions": body["instructions"]}))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(failed)?
        .json()
        .await
        .map_err(failed)?;
    let confirmed: Option<String> = sqlx::query_scalar(MINIMAL_FINISH)
        .bind(&id)
        .bind(claim_token)
        .fetch_optional(&bare.db)
        .await
        .map_err(failed)?;
    confirmed.ok_or_else(|| failed("the claim token no longer held the row"))?;
    Ok(Json(json!({
        "instanceId": id,
        "inviteUrl": provisioned["inviteUrl"],
        "conversationId": provisioned["conversationId"],
    })))
}
