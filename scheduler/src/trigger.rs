//! How a scheduled tick is run: in this process against `DATABASE_URL`, or over HTTP by the API
//! at `POOL_URL`. Either way the slot goes with it, so each slot ticks once.

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use agentpool_core::config::{ConfigError, ProviderKind, Secret};
use agentpool_core::heartbeat;
use agentpool_core::tick::slots;
use agentpool_core::{Pool, Settings};

pub enum Trigger {
    Database {
        pool: Pool,
        runner: String,
    },
    Http {
        client: reqwest::Client,
        tick_url: reqwest::Url,
        keep_alive_url: reqwest::Url,
        key: Secret,
    },
}

impl Trigger {
    /// `POOL_URL` ticks over HTTP, `DATABASE_URL` in-process; both at once is refused rather
    /// than guessed at (the operator may believe the other one is in use), as is neither.
    pub async fn from_settings(settings: Settings) -> anyhow::Result<Self> {
        match (
            settings.scheduler.pool_url.clone(),
            settings.db.database_url.is_some(),
        ) {
            (Some(_), true) => Err(config(
                "POOL_URL",
                "set together with DATABASE_URL; set POOL_URL (tick over HTTP) or DATABASE_URL \
                 (tick in this process), not both",
            )),
            (Some(url), false) => {
                let key = settings.server.pool_api_key.clone().ok_or_else(|| {
                    config("POOL_API_KEY", "missing; POOL_URL needs the API's key")
                })?;
                let at = |path: &str| {
                    reqwest::Url::parse(&format!("{}{path}", url.trim_end_matches('/')))
                        .map_err(|e| config("POOL_URL", &format!("not a base URL: {e}")))
                };
                let (tick_url, keep_alive_url) =
                    (at("/api/pool/tick")?, at("/api/pool/keepalive")?);
                // The API runs the tick before it answers: wait for its budget, and then for
                // work in flight as long as any other outside call.
                let timeout = settings.tick.tick_budget() + settings.outbound.outbound_timeout();
                let client = reqwest::Client::builder()
                    .timeout(timeout)
                    .build()
                    .context("building the HTTP client")?;
                Ok(Self::Http {
                    client,
                    tick_url,
                    keep_alive_url,
                    key,
                })
            }
            (None, true) => Ok(Self::Database {
                pool: Pool::connect(settings).await?,
                runner: slots::runner("agentpool-scheduler"),
            }),
            (None, false) => Err(config(
                "DATABASE_URL",
                "missing; set DATABASE_URL to tick in this process, or POOL_URL and POOL_API_KEY \
                 to tick over HTTP",
            )),
        }
    }

    pub fn mode(&self) -> &'static str {
        match self {
            Self::Database { .. } => "database",
            Self::Http { .. } => "http",
        }
    }

    /// Where ticks go, for the start-up line (no secret in either).
    pub fn target(&self) -> String {
        match self {
            Self::Database { .. } => "DATABASE_URL".into(),
            Self::Http { tick_url, .. } => tick_url.to_string(),
        }
    }

    /// Runs the tick of `slot` and returns its report as the API would show it. `stop` makes an
    /// in-process tick start no new work; a tick over HTTP is the API's to run, and its request
    /// is left to finish.
    pub async fn tick(
        &self,
        slot: DateTime<Utc>,
        stop: &CancellationToken,
    ) -> anyhow::Result<Value> {
        match self {
            Self::Database { pool, runner } => {
                let report = slots::run(pool, slot, runner, stop).await?;
                Ok(serde_json::to_value(report)?)
            }
            Self::Http {
                client,
                tick_url,
                key,
                ..
            } => post(client, tick_url, key, &json!({ "slot": slot })).await,
        }
    }

    /// Whether the provider keeps its instances alive, as far as this scheduler can tell: the
    /// provider itself in-process; over HTTP, the one `POOL_PROVIDER` names here (the API's own
    /// is not known from here: `SCHEDULER_KEEP_ALIVE=true` says so).
    pub fn keeps_alive(&self, settings_provider: ProviderKind) -> bool {
        match self {
            Self::Database { pool, .. } => pool.provider.keeps_alive(),
            Self::Http { .. } => settings_provider == ProviderKind::Sprites,
        }
    }

    /// Sends this interval's keep-alive round unless someone did (`heartbeat_rounds`), and returns
    /// what it did as the API would show it.
    pub async fn keep_alive(&self) -> anyhow::Result<Value> {
        match self {
            Self::Database { pool, .. } => {
                let round = heartbeat::beat(pool).await?;
                Ok(json!({"skipped": round.is_none(), "round": round}))
            }
            Self::Http {
                client,
                keep_alive_url,
                key,
                ..
            } => post(client, keep_alive_url, key, &json!({})).await,
        }
    }
}

/// A POST to the API with its key; a non-2xx answer is an error naming its message and code.
async fn post(
    client: &reqwest::Client,
    url: &reqwest::Url,
    key: &Secret,
    body: &Value,
) -> anyhow::Result<Value> {
    let response = client
        .post(url.clone())
        .bearer_auth(key.expose())
        .json(body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .with_context(|| format!("POST {url} answered {status}, not JSON"))?;
    anyhow::ensure!(
        status.is_success(),
        "POST {url} answered {status}: {} ({})",
        body["error"].as_str().unwrap_or("no message"),
        body["code"].as_str().unwrap_or("no code"),
    );
    Ok(body)
}

fn config(setting: &str, problem: &str) -> anyhow::Error {
    ConfigError {
        setting: setting.into(),
        problem: problem.into(),
    }
    .into()
}
