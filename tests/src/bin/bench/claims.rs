//! Claim throughput and latency: through `agentpool serve` replicas over HTTP, and in-process
//! against two naive ways of taking a row, to show what `FOR UPDATE SKIP LOCKED` buys.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use agentpool_core::claim::{self, ClaimRequest};
use agentpool_core::runtime::ProvisionRequest;
use agentpool_core::tick::TICK_LOCK_KEY;
use agentpool_core::{Error, Pool};

use crate::fleet::{cpu_seconds, rss_kib, Replica, SharedStub, API_KEY};
use crate::stats::Latency;
use crate::Scale;

const REPLICAS: [usize; 3] = [1, 2, 4];
const CLIENTS: [usize; 3] = [1, 16, 64];
/// Besides the closed loops, 16 clients offering this many claims a second between them: the
/// latency of a claim when the machine is not saturated.
const PACED_RATE: f64 = 1000.0;
const PACED_CLIENTS: usize = 16;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpCell {
    pub replicas: usize,
    pub clients: usize,
    /// Claims a second offered by paced clients; `None` for a closed loop.
    pub offered_per_second: Option<f64>,
    pub claims: usize,
    pub errors: usize,
    pub seconds: f64,
    pub claims_per_second: f64,
    pub latency: Latency,
    /// Where the CPU went, per claim.
    pub cpu_ms_per_claim: CpuSplit,
    /// Resident memory of each replica after the cell.
    pub replica_rss_kib: Vec<u64>,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuSplit {
    pub postgres: f64,
    pub replicas: f64,
    pub stub_agent: f64,
    pub load_generator: f64,
}

/// CPU seconds used so far by each part of the benchmark.
fn cpu_now(postgres_pid: u32, fleet: &[Replica], stub: &SharedStub) -> CpuSplit {
    CpuSplit {
        postgres: cpu_seconds(postgres_pid, true),
        replicas: fleet
            .iter()
            .map(|r| cpu_seconds(r.process.0.id(), false))
            .sum(),
        stub_agent: cpu_seconds(stub.process.0.id(), false),
        load_generator: cpu_seconds(std::process::id(), false),
    }
}

impl CpuSplit {
    fn per_claim_since(self, before: CpuSplit, claims: usize) -> CpuSplit {
        let per =
            |now: f64, then: f64| ((now - then) * 1e3 / claims.max(1) as f64 * 1e3).round() / 1e3;
        CpuSplit {
            postgres: per(self.postgres, before.postgres),
            replicas: per(self.replicas, before.replicas),
            stub_agent: per(self.stub_agent, before.stub_agent),
            load_generator: per(self.load_generator, before.load_generator),
        }
    }
}

/// One claim: the instance handed out, or why not.
pub type Outcome = Result<String, String>;

pub struct Load {
    pub samples: Vec<(Duration, Outcome)>,
    pub elapsed: Duration,
}

/// `clients` concurrent loops share `total` claims; each claim is timed on its own. Unpaced, a
/// client claims again as soon as it has its answer (a closed loop: the figures are at
/// saturation); paced, each client starts one claim per `pace`.
pub async fn load<F, Fut>(clients: usize, total: usize, pace: Option<Duration>, claim: F) -> Load
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send,
{
    let claim = Arc::new(claim);
    let tickets = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let (claim, tickets) = (claim.clone(), tickets.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut ticks = pace.map(|pace| {
                    // Staggered: clients in step would arrive as bursts.
                    let first = tokio::time::Instant::now() + pace * client as u32 / clients as u32;
                    let mut ticks = tokio::time::interval_at(first, pace);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    ticks
                });
                loop {
                    if let Some(ticks) = &mut ticks {
                        ticks.tick().await;
                    }
                    let ticket = tickets.fetch_add(1, Ordering::Relaxed);
                    if ticket >= total {
                        return samples;
                    }
                    let begun = Instant::now();
                    let outcome = claim(ticket).await;
                    samples.push((begun.elapsed(), outcome));
                }
            })
        })
        .collect();
    let mut samples = Vec::with_capacity(total);
    for task in tasks {
        samples.extend(task.await.unwrap_or_default());
    }
    Load {
        samples,
        elapsed: started.elapsed(),
    }
}

/// Empties the pool and fills it with `count` idle instances that all point at the shared stub.
pub async fn fill(db: &PgPool, stub: &SharedStub, count: usize) -> anyhow::Result<()> {
    sqlx::query("TRUNCATE instances, instance_events CASCADE")
        .execute(db)
        .await?;
    sqlx::query(
        "INSERT INTO instances (id, name, url, status, gateway_token, created_at)
         SELECT 'b' || lpad(g::text, 11, '0'), 'bench-b' || lpad(g::text, 11, '0'), $1, 'idle', $2,
                timestamptz '2026-01-01' + g * interval '1 millisecond'
           FROM generate_series(1, $3) g",
    )
    .bind(&stub.url)
    .bind(&stub.token)
    .bind(count as i64)
    .execute(db)
    .await?;
    sqlx::query("ANALYZE instances").execute(db).await?;
    Ok(())
}

/// Holds the tick lock on its own connection: every tick that claims kick then skips
/// after one round trip, so the figures are the claims' and not health checks of the bench rows.
pub struct TickLock(sqlx::pool::PoolConnection<sqlx::Postgres>);

impl TickLock {
    pub async fn take(db: &PgPool) -> anyhow::Result<Self> {
        let mut conn = db.acquire().await?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(TICK_LOCK_KEY)
            .execute(&mut *conn)
            .await?;
        Ok(Self(conn))
    }

    pub async fn release(mut self) -> anyhow::Result<()> {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(TICK_LOCK_KEY)
            .execute(&mut *self.0)
            .await?;
        Ok(())
    }
}

pub async fn http(
    db: &PgPool,
    database_url: &str,
    postgres_pid: u32,
    stub: &SharedStub,
    scale: Scale,
) -> anyhow::Result<Vec<HttpCell>> {
    let lock = TickLock::take(db).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut cells = Vec::new();
    for replicas in REPLICAS {
        let mut fleet = Vec::new();
        for _ in 0..replicas {
            fleet.push(Replica::start(database_url, &http).await?);
        }
        let bases: Arc<Vec<String>> = Arc::new(fleet.iter().map(|r| r.base.clone()).collect());
        let paced = Duration::from_secs_f64(PACED_CLIENTS as f64 / PACED_RATE);
        let runs = CLIENTS
            .map(|clients| (clients, None))
            .into_iter()
            .chain([(PACED_CLIENTS, Some(paced))]);
        for (clients, pace) in runs {
            let total = if clients == 1 {
                scale.single_client_claims
            } else {
                scale.claims
            };
            let warmup = (clients * 4).max(50);
            fill(db, stub, warmup + total).await?;
            let claim = {
                let (http, bases) = (http.clone(), bases.clone());
                move |ticket: usize| {
                    let (http, bases) = (http.clone(), bases.clone());
                    async move { claim_over_http(&http, &bases[ticket % bases.len()]).await }
                }
            };
            load(clients, warmup, None, claim.clone()).await;
            let cpu_before = cpu_now(postgres_pid, &fleet, stub);
            let load = load(clients, total, pace, claim).await;
            let cpu = cpu_now(postgres_pid, &fleet, stub).per_claim_since(cpu_before, total);
            let errors = load.samples.iter().filter(|(_, o)| o.is_err()).count();
            if let Some((_, Err(first))) = load.samples.iter().find(|(_, o)| o.is_err()) {
                eprintln!("bench: {replicas} replicas, {clients} clients: {errors} errors, first: {first}");
            }
            let cell = HttpCell {
                replicas,
                clients,
                offered_per_second: pace.map(|_| PACED_RATE),
                claims: total,
                errors,
                seconds: load.elapsed.as_secs_f64(),
                claims_per_second: (total - errors) as f64 / load.elapsed.as_secs_f64(),
                latency: Latency::of(load.samples.into_iter().map(|(d, _)| d).collect()),
                cpu_ms_per_claim: cpu,
                replica_rss_kib: fleet
                    .iter()
                    .filter_map(|r| rss_kib(r.process.0.id()))
                    .collect(),
            };
            eprintln!(
                "bench: {replicas} replicas, {clients:>2} clients{}: {:>7.0} claims/s, p50 {} ms, p99 {} ms",
                if pace.is_some() { " (paced)" } else { "" },
                cell.claims_per_second, cell.latency.p50_ms, cell.latency.p99_ms
            );
            cells.push(cell);
        }
    }
    lock.release().await?;
    Ok(cells)
}

pub async fn claim_over_http(http: &reqwest::Client, base: &str) -> Outcome {
    let response = http
        .post(format!("{base}/api/pool/claim"))
        .bearer_auth(API_KEY)
        .json(&json!({"agentName": "bench", "instructions": "Answer at once."}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {body}"));
    }
    body["instanceId"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| format!("no instanceId in {body}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Strategy {
    /// The product's claim: one statement, `FOR UPDATE SKIP LOCKED`, fenced finish.
    SkipLocked,
    /// The same statement with plain `FOR UPDATE`: correct, but claimers queue on one row;
    /// Postgres re-checks the row a claimer waited for and moves on to the next.
    ForUpdate,
    /// `SELECT` the oldest idle row, then `UPDATE` it by id: two claimers can take the same row.
    SelectThenUpdate,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StrategyCell {
    pub strategy: Strategy,
    pub clients: usize,
    pub claims: usize,
    pub claims_per_second: f64,
    pub latency: Latency,
    /// Replies that handed out an instance already handed to someone else.
    pub double_claims: usize,
    /// "No idle instance" although idle instances were there all along.
    pub spurious_empty: usize,
    pub other_errors: usize,
}

pub async fn strategies(
    db: &PgPool,
    database_url: &str,
    stub: &SharedStub,
    scale: Scale,
) -> anyhow::Result<Vec<StrategyCell>> {
    let pool = crate::tick::pool_over(database_url, 0, 1, stub, Default::default()).await?;
    let mut cells = Vec::new();
    for clients in CLIENTS {
        for strategy in [
            Strategy::SkipLocked,
            Strategy::ForUpdate,
            Strategy::SelectThenUpdate,
        ] {
            let total = if clients == 1 {
                scale.single_client_claims
            } else {
                scale.claims
            };
            // Twice as many rows as claims: any "none idle" is spurious.
            fill(db, stub, 2 * total).await?;
            let pool = pool.clone();
            let load = load(clients, total, None, move |_| {
                let pool = pool.clone();
                async move { claim_with(&pool, strategy).await }
            })
            .await;
            let mut handed = HashSet::new();
            let (mut double_claims, mut spurious_empty, mut other_errors) = (0, 0, 0);
            for (_, outcome) in &load.samples {
                match outcome {
                    Ok(id) if !handed.insert(id.clone()) => double_claims += 1,
                    Ok(_) => {}
                    Err(e) if e == NO_IDLE => spurious_empty += 1,
                    Err(_) => other_errors += 1,
                }
            }
            let cell = StrategyCell {
                strategy,
                clients,
                claims: total,
                claims_per_second: (total - spurious_empty - other_errors) as f64
                    / load.elapsed.as_secs_f64(),
                latency: Latency::of(load.samples.into_iter().map(|(d, _)| d).collect()),
                double_claims,
                spurious_empty,
                other_errors,
            };
            eprintln!(
                "bench: {strategy:?} {clients:>2} clients: {:>7.0} claims/s, {} double, {} spurious empty",
                cell.claims_per_second, cell.double_claims, cell.spurious_empty
            );
            cells.push(cell);
        }
    }
    pool.db.close().await;
    Ok(cells)
}

const NO_IDLE: &str = "no idle instance";

async fn claim_with(pool: &Pool, strategy: Strategy) -> Outcome {
    if strategy == Strategy::SkipLocked {
        let request = ClaimRequest::new("bench".into(), "Answer at once.".into(), None, None, None)
            .map_err(|e| e.to_string())?;
        return match claim::claim(pool, &request, None).await {
            Ok(claimed) => Ok(claimed.instance_id),
            Err(Error::NoIdle) => Err(NO_IDLE.into()),
            Err(e) => Err(e.to_string()),
        };
    }
    // Both variants write the same events as the product, so only the taking differs.
    let token = Uuid::new_v4();
    let taken: Option<(String, String, String)> = match strategy {
        Strategy::ForUpdate => sqlx::query_as(
            "WITH t AS (
               UPDATE instances SET status = 'claiming', claim_token = $1, status_since = now()
                WHERE id = (SELECT id FROM instances WHERE status = 'idle'
                             ORDER BY created_at, id LIMIT 1 FOR UPDATE)
               RETURNING id, url, gateway_token
             ),
             e AS (
               INSERT INTO instance_events (instance_id, from_status, to_status, reason, actor)
               SELECT id, 'idle', 'claiming', 'claim started', 'claim' FROM t
             )
             SELECT id, url, gateway_token FROM t",
        )
        .bind(token)
        .fetch_optional(&pool.db)
        .await
        .map_err(|e| e.to_string())?,
        _ => {
            let row: Option<(String, String, String)> = sqlx::query_as(
                "SELECT id, url, gateway_token FROM instances WHERE status = 'idle'
                  ORDER BY created_at, id LIMIT 1",
            )
            .fetch_optional(&pool.db)
            .await
            .map_err(|e| e.to_string())?;
            if let Some((id, _, _)) = &row {
                sqlx::query(
                    "WITH t AS (
                       UPDATE instances SET status = 'claiming', claim_token = $2,
                              status_since = now()
                        WHERE id = $1
                       RETURNING id
                     )
                     INSERT INTO instance_events (instance_id, from_status, to_status, reason, actor)
                     SELECT id, 'idle', 'claiming', 'claim started', 'claim' FROM t",
                )
                .bind(id)
                .bind(token)
                .execute(&pool.db)
                .await
                .map_err(|e| e.to_string())?;
            }
            row
        }
    };
    let (id, url, gateway_token) = taken.ok_or_else(|| NO_IDLE.to_string())?;
    let request = ProvisionRequest {
        agent_name: "bench".into(),
        instructions: "Answer at once.".into(),
        join_url: None,
        ..ProvisionRequest::default()
    };
    let reply = pool
        .runtime
        .provision(
            &url,
            &gateway_token,
            &request,
            tokio::time::Instant::now() + pool.settings.claim.claim_timeout(),
        )
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query(
        "WITH t AS (
           UPDATE instances
              SET status = 'claimed', claim_token = NULL, status_since = now(), claimed_at = now(),
                  agent_name = $2, instructions = $3, conversation_id = $4, invite_url = $5
            WHERE id = $1
           RETURNING id
         )
         INSERT INTO instance_events (instance_id, from_status, to_status, reason, actor)
         SELECT id, 'claiming', 'claimed', 'provisioned', 'claim' FROM t",
    )
    .bind(&id)
    .bind(&request.agent_name)
    .bind(&request.instructions)
    .bind(&reply.conversation_id)
    .bind(&reply.invite_url)
    .execute(&pool.db)
    .await
    .map_err(|e| e.to_string())?;
    Ok(id)
}
