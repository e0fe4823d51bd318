//! The claim against its limit: the *minimal claim* (the two statements no claim can do without,
//! on tables with only the indexes they need) and the project's own claim SQL, both through
//! pgbench, and claims over HTTP through one replica, measured in interleaved rounds on the same
//! Postgres. Absolute figures move with whatever else the machine runs; the shares, taken round by
//! round from runs seconds apart, are what the report compares from run to run.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::ceiling::BareServer;
use crate::claims::{claim_over_http, fill, load, TickLock};
use crate::fleet::{cpu_seconds, Replica, SharedStub};
use crate::Scale;

pub const CLIENTS: [usize; 2] = [1, 16];

/// The minimal claim's tables: the row's identity, where its runtime is, its status, the claim
/// token that fences the finish, the order of taking; and an append-only event log.
const MINIMAL_SCHEMA: &str = "
DROP SCHEMA IF EXISTS minimal CASCADE;
CREATE SCHEMA minimal;
CREATE TABLE minimal.instances (
    id            TEXT PRIMARY KEY,
    url           TEXT,
    gateway_token TEXT NOT NULL,
    status        TEXT NOT NULL,
    claim_token   UUID,
    status_since  TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX minimal_idle ON minimal.instances (created_at, id) WHERE status = 'idle';
CREATE TABLE minimal.events (
    id          BIGSERIAL PRIMARY KEY,
    instance_id TEXT NOT NULL,
    from_status TEXT,
    to_status   TEXT NOT NULL,
    reason      TEXT NOT NULL,
    actor       TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);";

/// The minimal claim's first statement: take the oldest idle row and record the event.
pub const MINIMAL_TAKE: &str = "WITH t AS (
  UPDATE minimal.instances SET status = 'claiming', claim_token = gen_random_uuid(), status_since = now()
   WHERE id = (SELECT id FROM minimal.instances WHERE status = 'idle'
                ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
  RETURNING id, url, gateway_token, claim_token
), e AS (
  INSERT INTO minimal.events (instance_id, from_status, to_status, reason, actor)
  SELECT id, 'idle', 'claiming', 'claim started', 'claim' FROM t
)
SELECT id, url, gateway_token, claim_token FROM t";

/// Its second: confirm the row, fenced by the claim token (`$1` id, `$2` token), and record the
/// event.
pub const MINIMAL_FINISH: &str = "WITH t AS (
  UPDATE minimal.instances SET status = 'claimed', claim_token = NULL, status_since = now()
   WHERE id = $1 AND claim_token = $2 AND status = 'claiming'
  RETURNING id
), e AS (
  INSERT INTO minimal.events (instance_id, from_status, to_status, reason, actor)
  SELECT id, 'claiming', 'claimed', 'provisioned', 'claim' FROM t
)
SELECT id FROM t";

/// Both as a pgbench script: the first's columns become variables for the second.
fn minimal_script() -> String {
    let finish = MINIMAL_FINISH
        .replace("$1", ":id")
        .replace("$2", ":claim_token");
    format!("{MINIMAL_TAKE} \\gset\n{finish};\n")
}

/// `shared/src/pipelines/claim/mod.rs`'s two statements as a claim without an `Idempotency-Key` runs them
/// (`take_idle`, then `finish`), with the runtime's reply as literals.
const PROJECT_CLAIM: &str = r"WITH t AS (
   UPDATE instances
      SET status = 'claiming', claim_token = gen_random_uuid(), status_since = now(), join_url = NULL
    WHERE id = (SELECT id FROM instances WHERE status = 'idle'
                 ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
   RETURNING id, url, gateway_token, claim_token
 ),
 e AS (
   INSERT INTO instance_events (instance_id, from_status, to_status, reason, actor)
   SELECT id, 'idle', 'claiming', 'claim started', 'claim' FROM t
 )
 SELECT id, claim_token AS tok FROM t \gset
WITH t AS (
   UPDATE instances
      SET status = 'claimed', claim_token = NULL, status_since = now(), claimed_at = now(),
          agent_name = 'bench', instructions = 'Answer at once.', join_url = NULL,
          conversation_id = 'bench-conversation', invite_url = NULL, health_failures = 0,
          failing_since = NULL
    WHERE id = :id AND claim_token = :tok AND status = 'claiming'
   RETURNING id
 ),
 e AS (
   INSERT INTO instance_events (instance_id, from_status, to_status, reason, actor)
   SELECT id, 'claiming', 'claimed', 'provisioned: conversation ' || coalesce('bench-conversation', '-'), 'claim'
     FROM t
 )
 SELECT id FROM t;
";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LimitCell {
    pub clients: usize,
    pub rounds: usize,
    /// Medians over the rounds, claims a second.
    pub minimal_per_second: f64,
    pub claim_sql_per_second: f64,
    pub http_per_second: f64,
    /// Medians of each round's ratio to that round's minimal claim.
    pub claim_sql_share: f64,
    pub http_share: f64,
    /// The minimal claim served over HTTP by a server that does nothing else
    /// ([`crate::ceiling`]), and its share: what the shape leaves for any implementation.
    pub ceiling_per_second: f64,
    pub ceiling_share: f64,
    /// The median of each round's HTTP claims ÷ ceiling: the replica's own overhead, whatever
    /// the machine.
    pub http_ceiling_share: f64,
    /// Medians over the rounds of the CPU (user and system) one claim cost the replica's process
    /// and the ceiling's server, in ms: the gap between the two is what the replica does beyond
    /// the shape, and at one client it is on every claim's path.
    #[serde(default)]
    pub http_cpu_ms: f64,
    #[serde(default)]
    pub ceiling_cpu_ms: f64,
    /// Every round's `[minimal, claim SQL, HTTP, ceiling]` claims a second.
    pub runs: Vec<[f64; 4]>,
}

pub async fn measure(
    db: &PgPool,
    database_url: &str,
    stub: &SharedStub,
    scale: Scale,
) -> anyhow::Result<Vec<LimitCell>> {
    sqlx::raw_sql(MINIMAL_SCHEMA).execute(db).await?;
    let scripts = tempfile::Builder::new()
        .prefix("agentpool-bench-pgbench-")
        .tempdir()?;
    let minimal_script = scripts.path().join("minimal.sql");
    let project_script = scripts.path().join("project.sql");
    std::fs::write(&minimal_script, self::minimal_script())?;
    std::fs::write(&project_script, PROJECT_CLAIM)?;
    let pgbench = agentpool_core::db::embedded::find_bin_dir()?.join("pgbench");

    let lock = TickLock::take(db).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()?;
    let replica = Replica::start(database_url, &http).await?;
    let bare = BareServer::start(database_url).await?;
    let mut cells = Vec::new();
    for clients in CLIENTS {
        let claims = scale.claims;
        // More rows than the fastest run on this kind of machine takes in that time.
        let rows = scale.limit_seconds * 20_000;
        let mut runs = Vec::new();
        let (mut http_cpu, mut ceiling_cpu) = (Vec::new(), Vec::new());
        for round in 0..scale.limit_rounds {
            // Each round opens with a different one, so that a drift in the machine's load
            // does not favour one side.
            let mut order = [0usize, 1, 2, 3];
            order.rotate_left(round % 4);
            let mut run = [0.0; 4];
            for which in order {
                run[which] = match which {
                    0 => {
                        fill_minimal(db, stub, rows).await?;
                        pgbench_run(&pgbench, database_url, &minimal_script, clients, scale).await?
                    }
                    1 => {
                        fill(db, stub, rows).await?;
                        pgbench_run(&pgbench, database_url, &project_script, clients, scale).await?
                    }
                    2 => {
                        let (rate, cpu) =
                            replica_run(db, stub, &http, &replica, clients, claims).await?;
                        http_cpu.push(cpu);
                        rate
                    }
                    _ => {
                        let warmup = warmup(clients);
                        fill_minimal(db, stub, warmup + claims).await?;
                        let (rate, cpu) =
                            http_run(&http, &bare.base, bare.pid(), clients, warmup, claims)
                                .await?;
                        ceiling_cpu.push(cpu);
                        rate
                    }
                };
            }
            eprintln!(
                "bench: limit, {clients:>2} clients, round {}: minimal {:.0}/s, claim SQL {:.0}/s, HTTP {:.0}/s, ceiling {:.0}/s",
                round + 1,
                run[0],
                run[1],
                run[2],
                run[3]
            );
            runs.push(run);
        }
        let median_of = |f: &dyn Fn(&[f64; 4]) -> f64| median(runs.iter().map(f).collect());
        cells.push(LimitCell {
            clients,
            rounds: runs.len(),
            minimal_per_second: round1(median_of(&|r| r[0])),
            claim_sql_per_second: round1(median_of(&|r| r[1])),
            http_per_second: round1(median_of(&|r| r[2])),
            claim_sql_share: round3(median_of(&|r| r[1] / r[0])),
            http_share: round3(median_of(&|r| r[2] / r[0])),
            ceiling_per_second: round1(median_of(&|r| r[3])),
            ceiling_share: round3(median_of(&|r| r[3] / r[0])),
            http_ceiling_share: round3(median_of(&|r| r[2] / r[3])),
            http_cpu_ms: round3(median(http_cpu)),
            ceiling_cpu_ms: round3(median(ceiling_cpu)),
            runs: runs.iter().map(|r| r.map(round1)).collect(),
        });
    }
    drop((replica, bare));
    lock.release().await?;
    sqlx::raw_sql("DROP SCHEMA minimal CASCADE")
        .execute(db)
        .await?;
    Ok(cells)
}

/// `count` idle rows of the minimal schema whose runtime is `stub` (the ceiling's server asks it).
async fn fill_minimal(db: &PgPool, stub: &SharedStub, count: usize) -> anyhow::Result<()> {
    sqlx::raw_sql("TRUNCATE minimal.instances, minimal.events")
        .execute(db)
        .await?;
    sqlx::query(
        "INSERT INTO minimal.instances (id, url, status, gateway_token, created_at)
         SELECT 'b' || lpad(g::text, 11, '0'), $1, 'idle', $2,
                timestamptz '2026-01-01' + g * interval '1 millisecond'
           FROM generate_series(1, $3) g",
    )
    .bind(&stub.url)
    .bind(&stub.token)
    .bind(count as i64)
    .execute(db)
    .await?;
    sqlx::raw_sql("ANALYZE minimal.instances")
        .execute(db)
        .await?;
    Ok(())
}

/// Runs `script` on `clients` connections for `scale.limit_seconds`, prepared statements (as
/// sqlx runs them); claims a second, connection set-up excluded.
async fn pgbench_run(
    pgbench: &Path,
    database_url: &str,
    script: &Path,
    clients: usize,
    scale: Scale,
) -> anyhow::Result<f64> {
    let output = tokio::process::Command::new(pgbench)
        .args(["--no-vacuum", "--protocol=prepared", "--file"])
        .arg(script)
        .args([
            "--client",
            &clients.to_string(),
            "--jobs",
            &clients.min(2).to_string(),
            "--time",
            &scale.limit_seconds.to_string(),
        ])
        .arg(database_url)
        .output()
        .await
        .context("running pgbench")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success() && stdout.contains("number of failed transactions: 0"),
        "pgbench failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no tps in pgbench's output: {stdout}"))
}

/// Claims before the measured ones: every connection opened and every path warm.
fn warmup(clients: usize) -> usize {
    (clients * 4).max(50)
}

/// `claims` HTTP claims through `replica`, on as many idle rows of the project's schema (and the
/// warm-up's); claims a second, and the replica's CPU ms per claim.
pub async fn replica_run(
    db: &PgPool,
    stub: &SharedStub,
    http: &reqwest::Client,
    replica: &Replica,
    clients: usize,
    claims: usize,
) -> anyhow::Result<(f64, f64)> {
    let warmup = warmup(clients);
    fill(db, stub, warmup + claims).await?;
    http_run(
        http,
        &replica.base,
        replica.process.0.id(),
        clients,
        warmup,
        claims,
    )
    .await
}

/// `claims` HTTP claims through `base` (served by process `pid`) on `clients` connections after a
/// warm-up; claims a second, and the server's CPU ms per claim.
async fn http_run(
    http: &reqwest::Client,
    base: &str,
    pid: u32,
    clients: usize,
    warmup: usize,
    claims: usize,
) -> anyhow::Result<(f64, f64)> {
    let claim = {
        let (http, base) = (http.clone(), Arc::new(base.to_owned()));
        move |_| {
            let (http, base) = (http.clone(), base.clone());
            async move { claim_over_http(&http, &base).await }
        }
    };
    load(clients, warmup, None, claim.clone()).await;
    let before = cpu_seconds(pid, false);
    let load = load(clients, claims, None, claim).await;
    let cpu_ms = (cpu_seconds(pid, false) - before) * 1000.0 / claims as f64;
    let errors = load.samples.iter().filter(|(_, o)| o.is_err()).count();
    anyhow::ensure!(errors == 0, "{errors} HTTP claims through {base} failed");
    Ok((claims as f64 / load.elapsed.as_secs_f64(), cpu_ms))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The same rounds with Postgres on a core of its own and everything else (pgbench's client, the
/// replica, a stub agent started for it, the load generator) on the others: the shape of
/// production, where Postgres has a machine of its own, as far as one machine can show it. On
/// the shared machine the processes around a claim take CPU from Postgres, which caps the HTTP
/// share however lean the handler is. Empty with fewer than two cores.
pub async fn measure_postgres_apart(
    db: &PgPool,
    database_url: &str,
    postgres_pid: u32,
    scale: Scale,
) -> anyhow::Result<Vec<LimitCell>> {
    let Some(_pinned) = Pinned::apply(postgres_pid)? else {
        eprintln!("bench: one core only; no run with Postgres apart");
        return Ok(Vec::new());
    };
    // Started after the pinning, so that its runtime sizes itself for the cores it has.
    let stub = SharedStub::start().await?;
    measure(db, database_url, &stub, scale).await
}

/// Cores given to Postgres and to the rest while alive; every core again when dropped.
struct Pinned {
    everything: String,
    postgres_pid: u32,
}

impl Pinned {
    fn apply(postgres_pid: u32) -> anyhow::Result<Option<Self>> {
        let cores = std::thread::available_parallelism()?.get();
        if cores < 2 {
            return Ok(None);
        }
        let everything = format!("0-{}", cores - 1);
        let rest = format!("1-{}", cores - 1);
        let pinned = Self {
            everything,
            postgres_pid,
        };
        // The postmaster and its backends; backends forked later inherit the postmaster's cores.
        for pid in family(postgres_pid) {
            taskset("0", pid)?;
        }
        // This process (every thread), and so whatever it starts from now on.
        taskset(&rest, std::process::id())?;
        Ok(Some(pinned))
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        for pid in family(self.postgres_pid)
            .into_iter()
            .chain([std::process::id()])
        {
            if let Err(e) = taskset(&self.everything, pid) {
                eprintln!("bench: giving process {pid} every core again: {e}");
            }
        }
    }
}

/// `pid` and its children.
fn family(pid: u32) -> Vec<u32> {
    let children = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| {
            agentpool_tests::proc_stat(p)
                .and_then(|f| f.get(1)?.parse::<u32>().ok())
                .is_some_and(|parent| parent == pid)
        });
    std::iter::once(pid).chain(children).collect()
}

/// `taskset -a -p -c CORES PID`: every thread of `pid` on `cores`. A process that ended in the
/// meantime (a backend closing) is no error.
fn taskset(cores: &str, pid: u32) -> anyhow::Result<()> {
    let output = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cores, &pid.to_string()])
        .output()
        .context("running taskset")?;
    anyhow::ensure!(
        output.status.success() || !Path::new(&format!("/proc/{pid}")).exists(),
        "taskset -c {cores} {pid}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
