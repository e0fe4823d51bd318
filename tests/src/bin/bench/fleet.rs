//! Processes the benchmark starts: one shared stub agent, `agentpool serve` replicas, and cold
//! starts of a replica for start-up time and idle memory.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use agentpool_tests::lambda_api::{http_event, Outcome, RuntimeApi};
use agentpool_tests::{agentpool_bin, free_port, proc_stat, Guarded};

use crate::stats::ms;

pub const API_KEY: &str = "bench-key-0123456789abcdef0123456789";

/// Resident memory of a process now, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmRSS")
}

pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    proc_status_kib_in(&format!("/proc/{pid}/status"), field)
}

/// A `Field:   1234 kB` line of a /proc file.
pub fn proc_status_kib_in(path: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(path).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `NAME=VALUE` pairs, comma-separated, from the benchmark's variable `var` (`BENCH_REPLICA_ENV`,
/// `BENCH_STUB_ENV`): settings to try on the replicas or the stub agent (`TOKIO_WORKER_THREADS=1`)
/// without a rebuild. Unset in the committed report's runs.
pub fn extra_env(var: &str) -> Vec<(String, String)> {
    std::env::var(var)
        .unwrap_or_default()
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// One stub agent answering for every instance of the benchmark at once.
pub struct SharedStub {
    pub url: String,
    pub token: String,
    pub process: Guarded,
}

impl SharedStub {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// As [`SharedStub::start`], with `env` added (`STUB_HEALTH_DELAY_MS`).
    pub async fn start_with(env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let token = "b".repeat(64);
        let mut child = Command::new(agentpool_bin())
            .args(["stub-agent", "--port", "0"])
            .env_clear()
            .envs(env.iter().copied())
            .env("OPENCLAW_GATEWAY_TOKEN", &token)
            .env("STUB_SHARED", "true")
            .env("RUST_LOG", "warn")
            .envs(extra_env("BENCH_STUB_ENV"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the stub agent")?;
        let addr = listening(&mut child, "stub agent").await?;
        Ok(Self {
            url: format!("http://{addr}"),
            token,
            process: Guarded(child),
        })
    }
}

/// The address a child started with piped stdout says it listens on (its first line,
/// `LISTENING <addr>`).
pub async fn listening(child: &mut std::process::Child, what: &str) -> anyhow::Result<String> {
    let stdout = child
        .stdout
        .take()
        .with_context(|| format!("{what} stdout"))?;
    let (line, stdout) = tokio::task::spawn_blocking(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map(|_| (line, reader.into_inner()))
    })
    .await??;
    // Kept open: the child may still write, and a closed pipe would fail its writes.
    child.stdout = Some(stdout);
    line.trim()
        .strip_prefix("LISTENING ")
        .map(str::to_owned)
        .with_context(|| format!("{what} said {line:?}"))
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`; with `family`, also
/// its reaped children and the live ones (a Postgres server and its backends).
pub fn cpu_seconds(pid: u32, family: bool) -> f64 {
    // /proc reports in USER_HZ, which Linux fixes at 100 for user space.
    const TICKS: f64 = 100.0;
    let fields = |pid: u32| -> Option<Vec<u64>> {
        Some(
            proc_stat(pid)?
                .iter()
                .map(|f| f.parse().unwrap_or(0))
                .collect(),
        )
    };
    // Counted from the state field: ppid 1, utime 11, stime 12, cutime 13, cstime 14.
    let Some(own) = fields(pid) else {
        return 0.0;
    };
    let mut ticks = own.get(11).copied().unwrap_or(0) + own.get(12).copied().unwrap_or(0);
    if family {
        ticks += own.get(13).copied().unwrap_or(0) + own.get(14).copied().unwrap_or(0);
        let children = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(fields)
            .filter(|f| f.get(1).copied() == Some(u64::from(pid)));
        for child in children {
            ticks += child.get(11).copied().unwrap_or(0) + child.get(12).copied().unwrap_or(0);
        }
    }
    ticks as f64 / TICKS
}

/// `agentpool serve` on a free port, with production defaults except where the benchmark needs
/// otherwise: no minimum pool (the benchmark fills it) and no cap.
pub struct Replica {
    pub base: String,
    pub process: Guarded,
}

impl Replica {
    pub fn spawn(database_url: &str) -> anyhow::Result<(Self, Instant)> {
        Self::spawn_with(database_url, &[], &[], Stdio::null())
    }

    /// As [`Replica::spawn`], run through `wrapper` (a profiler) with `env` added and stderr
    /// (its log) going to `log`.
    pub fn spawn_with(
        database_url: &str,
        wrapper: &[&str],
        env: &[(&str, &str)],
        log: Stdio,
    ) -> anyhow::Result<(Self, Instant)> {
        Self::spawn_bin(agentpool_bin(), database_url, wrapper, env, log)
    }

    /// As [`Replica::spawn_with`], of another build of `agentpool` (`--ab`).
    pub fn spawn_bin(
        bin: &std::path::Path,
        database_url: &str,
        wrapper: &[&str],
        env: &[(&str, &str)],
        log: Stdio,
    ) -> anyhow::Result<(Self, Instant)> {
        let port = free_port();
        let started = Instant::now();
        let mut command = match wrapper.split_first() {
            None => Command::new(bin),
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(bin);
                command
            }
        };
        // Started from the benchmark's runtime, which lives as long as the run: a benchmark
        // killed outright takes its replicas with it.
        agentpool_tests::dies_with_spawning_thread(&mut command);
        let child = command
            .arg("serve")
            .env_clear()
            .envs(env.iter().copied())
            .env("DATABASE_URL", database_url)
            .env("POOL_API_KEY", API_KEY)
            .env("PORT", port.to_string())
            .env("POOL_MIN_IDLE", "0")
            .env("POOL_MAX_TOTAL", "1000000")
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(extra_env("BENCH_REPLICA_ENV"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting agentpool serve")?;
        Ok((
            Self {
                base: format!("http://127.0.0.1:{port}"),
                process: Guarded(child),
            },
            started,
        ))
    }

    /// Starts a replica and returns once it answers.
    pub async fn start(database_url: &str, http: &reqwest::Client) -> anyhow::Result<Self> {
        let (replica, _) = Self::spawn(database_url)?;
        replica.first_answer(http).await?;
        Ok(replica)
    }

    /// Polls `/healthz` until it answers 200; returns when it did.
    pub async fn first_answer(&self, http: &reqwest::Client) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("{}/healthz", self.base);
        loop {
            if let Ok(response) = http.get(&url).send().await {
                if response.status().is_success() {
                    return Ok(Instant::now());
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "replica {} did not answer",
                self.base
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessFigures {
    /// Spawn to first answered `/healthz`, each run: connect, migrate check, bind, serve.
    pub start_to_first_response_ms: Vec<f64>,
    pub start_to_first_response_median_ms: f64,
    /// Resident memory of an idle replica two seconds after its first answer.
    pub idle_rss_kib: Vec<u64>,
    pub idle_rss_median_kib: u64,
    /// The same binary as a Lambda function: spawn (with `AWS_LAMBDA_RUNTIME_API` pointing at a
    /// local stand-in of the Runtime API) to the answer of its first invocation, an API Gateway
    /// `GET /healthz`, each run.
    pub lambda_cold_start_ms: Vec<f64>,
    pub lambda_cold_start_median_ms: f64,
    pub binary_bytes: u64,
}

pub async fn process_figures(
    database_url: &str,
    scale: crate::Scale,
) -> anyhow::Result<ProcessFigures> {
    // A fresh connection per poll, as a load balancer's first request would make.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(2))
        .build()?;
    let mut starts = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..scale.cold_starts {
        let (replica, spawned) = Replica::spawn(database_url)?;
        let answered = replica.first_answer(&http).await?;
        starts.push(ms(answered - spawned));
        tokio::time::sleep(Duration::from_secs(2)).await;
        rss.extend(rss_kib(replica.process.0.id()));
    }
    let mut lambda = Vec::new();
    for _ in 0..scale.cold_starts {
        lambda.push(lambda_cold_start(database_url).await?);
    }
    let binary_bytes = std::fs::metadata(agentpool_bin())?.len();
    Ok(ProcessFigures {
        start_to_first_response_median_ms: median_f64(&starts),
        start_to_first_response_ms: starts,
        idle_rss_median_kib: median_u64(&rss),
        idle_rss_kib: rss,
        lambda_cold_start_median_ms: median_f64(&lambda),
        lambda_cold_start_ms: lambda,
        binary_bytes,
    })
}

/// One Lambda cold start, in ms: the event is queued before the process exists, so the time is
/// the runtime's init (connect to Postgres, check migrations, build the router) plus its first
/// poll and invocation.
async fn lambda_cold_start(database_url: &str) -> anyhow::Result<f64> {
    let api = RuntimeApi::start().await;
    let healthz = http_event("GET", "/healthz", &[], None);
    let started = Instant::now();
    let _function = Guarded(
        Command::new(agentpool_bin())
            .env_clear()
            .envs(api.function_env())
            .env("DATABASE_URL", database_url)
            .env("POOL_API_KEY", API_KEY)
            .env("POOL_MIN_IDLE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting agentpool as a Lambda function")?,
    );
    let outcome = api.invoke(healthz, Duration::from_secs(30)).await?;
    let answered = Instant::now();
    match outcome {
        Outcome::Response(reply) if reply["statusCode"] == 200 => Ok(ms(answered - started)),
        other => anyhow::bail!("the first invocation answered {other:?}"),
    }
}

fn median_f64(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

fn median_u64(values: &[u64]) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied().unwrap_or(0)
}
