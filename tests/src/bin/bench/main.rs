//! `agentpool-bench`: what the pool itself costs. Starts its own Postgres, stub agent and
//! replicas, measures, and writes `benchmarks.json` and `benchmarks.md` (default: `docs/`).
//!
//! ```text
//! cargo run --release -p agentpool-tests --bin agentpool-bench [-- --out DIR] [--quick] [--profile]
//! cargo run --release -p agentpool-tests --bin agentpool-bench -- --templates   # that section only
//! cargo run --release -p agentpool-tests --bin agentpool-bench -- --fleet-tick [--out DIR]
//! cargo run --release -p agentpool-tests --bin agentpool-bench -- --cadence-only
//! cargo run --release -p agentpool-tests --bin agentpool-bench -- --sprites   # seed 002's figures only
//! cargo run --release -p agentpool-tests --bin agentpool-bench -- --limit-only [--rounds N] [--profile]
//! cargo run --release -p agentpool-tests --bin agentpool-bench -- --limit-only --ab [--rounds N]
//! ```
//!
//! `--limit-only` measures only the claim against its limit (shared cores, then Postgres on a
//! core of its own), with the profile if asked, and prints it: nothing is written. For trying a
//! setting on the replicas or the stub agent without a rebuild, `BENCH_REPLICA_ENV` and
//! `BENCH_STUB_ENV` (`NAME=VALUE,...`) add to their environment.
//!
//! `--cadence-only` measures only the full tick's cadence under continuous claims (about two
//! minutes) and writes `benchmarks-cadence.md` and `.json`.
//!
//! Figures are measured and reported, never asserted: the targets are in the report.

mod ab;
mod cadence;
mod ceiling;
mod claims;
mod compare;
mod fleet;
mod fleet_tick;
mod limit;
mod profile;
mod railway;
mod report;
mod sprites;
mod stats;
mod templates;
mod tick;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use agentpool_core::db;
use agentpool_core::db::embedded::{create_database, EmbeddedPostgres};

/// How much work each measurement does; `--quick` is for checking the tool itself.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Scale {
    /// Claims measured per (replicas, clients) cell; one client makes fewer.
    pub claims: usize,
    pub single_client_claims: usize,
    pub tick_sizes: &'static [usize],
    pub tick_runs: usize,
    pub cold_starts: usize,
    /// Interleaved rounds of minimal claim, claim SQL and HTTP claims per client count.
    pub limit_rounds: usize,
    /// Seconds of each pgbench run in those rounds.
    pub limit_seconds: usize,
}

const FULL: Scale = Scale {
    claims: 4_000,
    single_client_claims: 1_000,
    tick_sizes: &[100, 1_000, 10_000],
    tick_runs: 5,
    cold_starts: 10,
    limit_rounds: 5,
    limit_seconds: 3,
};

const QUICK: Scale = Scale {
    claims: 300,
    single_client_claims: 100,
    tick_sizes: &[100, 1_000],
    tick_runs: 2,
    cold_starts: 3,
    limit_rounds: 2,
    limit_seconds: 1,
};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub machine: report::Machine,
    pub command: String,
    pub scale: Scale,
    pub limit: Vec<limit::LimitCell>,
    /// The same with Postgres on a core of its own and the rest on the others.
    #[serde(default)]
    pub limit_postgres_apart: Vec<limit::LimitCell>,
    /// Where an HTTP claim's time goes (`--profile`).
    pub profile: Option<profile::Profile>,
    pub claims_http: Vec<claims::HttpCell>,
    pub claim_strategies: Vec<claims::StrategyCell>,
    pub ticks: Vec<tick::TickCell>,
    pub railway: Vec<railway::RailwayCell>,
    /// Issue 17: claims by template, idle resources before and after.
    pub templates: Option<templates::TemplateFigures>,
    /// Seed 002: recycle vs fresh creation, refill after a burst.
    pub sprites: Option<sprites::SpritesFigures>,
    pub process: fleet::ProcessFigures,
    /// The full tick's cadence under continuous claims.
    pub cadence: cadence::Cadence,
    pub total_seconds: f64,
    /// Ratios that fell by more than `compare::TOLERANCE` since the last committed report.
    pub regressions: Vec<compare::Regression>,
    /// The commit of the report compared with; `None` when there was none to compare.
    pub compared_with: Option<String>,
    /// How many of this run's ratios the last report also had.
    pub compared_ratios: usize,
}

fn main() -> anyhow::Result<()> {
    let mut out = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs"));
    let mut scale = FULL;
    let mut with_profile = false;
    let mut only_templates = false;
    let mut only_fleet_tick = false;
    let mut cadence_only = false;
    let mut only_sprites = false;
    let mut only_limit = false;
    let mut ab = false;
    let mut args = std::env::args().skip(1);
    if let Some(database_url) = args.next().filter(|a| a == ceiling::ARG).and(args.next()) {
        return ceiling::serve(&database_url);
    }
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = PathBuf::from(args.next().context("--out needs a directory")?),
            "--quick" => scale = QUICK,
            "--profile" => with_profile = true,
            "--templates" => only_templates = true,
            "--fleet-tick" => only_fleet_tick = true,
            "--cadence-only" => cadence_only = true,
            "--sprites" => only_sprites = true,
            "--limit-only" => only_limit = true,
            "--ab" => ab = true,
            "--rounds" => {
                scale.limit_rounds = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .context("--rounds needs a number")?
            }
            other => {
                anyhow::bail!(
                    "unknown argument {other:?}; use --out DIR, --quick, --profile, --templates, \
                     --fleet-tick, --cadence-only, --sprites, --limit-only and/or --rounds N"
                )
            }
        }
    }
    tick::install_query_counter();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if only_templates {
        return runtime.block_on(run_templates(out, scale));
    }
    if cadence_only {
        return runtime.block_on(run_cadence(out));
    }
    if only_sprites {
        return runtime.block_on(run_sprites());
    }
    if only_limit {
        return runtime.block_on(run_limit(scale, with_profile, ab));
    }
    runtime.block_on(run(out, scale, with_profile, only_fleet_tick))
}

/// A throwaway Postgres for one run, and the directory it lives in (removed when dropped, after
/// [`stop_postgres`]).
async fn start_postgres() -> anyhow::Result<(EmbeddedPostgres, tempfile::TempDir)> {
    let root = tempfile::Builder::new()
        .prefix("agentpool-bench-pg-")
        .tempdir()?;
    let dir = root.path().to_path_buf();
    let postgres = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&dir))
        .await?
        .context("starting postgres")?;
    Ok((postgres, root))
}

async fn stop_postgres(postgres: EmbeddedPostgres) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || postgres.stop()).await??;
    Ok(())
}

/// Template claims per kind.
fn template_claims(scale: Scale) -> usize {
    (scale.cold_starts * 2).max(6)
}

/// `--templates`: only issue 17's figures, written to `benchmarks-templates.md` (the full run puts
/// them in `benchmarks.md`).
async fn run_templates(out: PathBuf, scale: Scale) -> anyhow::Result<()> {
    let (postgres, _pg_root) = start_postgres().await?;
    create_database(&postgres.url("postgres"), "bench").await?;
    let url = postgres.url("bench");
    db::open(&url, 4).await?.close().await;
    let figures = templates::measure(&url, template_claims(scale)).await?;
    let markdown = templates::markdown(&figures);
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("benchmarks-templates.md"), &markdown)?;
    println!("{markdown}");
    stop_postgres(postgres).await?;
    Ok(())
}

/// `--sprites`: only seed 002's figures, printed (the report is not rewritten).
async fn run_sprites() -> anyhow::Result<()> {
    let (postgres, _pg_root) = start_postgres().await?;
    let figures = sprites::measure(&postgres.url("postgres")).await;
    stop_postgres(postgres).await?;
    let mut md = String::new();
    report::sprites_section(&mut md, &figures?);
    println!("{md}");
    Ok(())
}

/// `--limit-only`: the claim against its limit, both placements, printed.
///
/// With `--ab`, only two replicas side by side ([`ab`]).
async fn run_limit(scale: Scale, with_profile: bool, ab: bool) -> anyhow::Result<()> {
    let (postgres, _pg_root) = start_postgres().await?;
    create_database(&postgres.url("postgres"), "bench").await?;
    let url = postgres.url("bench");
    let pool = db::open(&url, 80).await?;
    let stub = fleet::SharedStub::start().await?;
    if ab {
        ab::run(&pool, &url, &stub, scale.limit_rounds, scale.claims).await?;
        pool.close().await;
        drop(stub);
        stop_postgres(postgres).await?;
        return Ok(());
    }
    let limit = limit::measure(&pool, &url, &stub, scale).await?;
    let profile = if with_profile {
        Some(profile::measure(&pool, &url, &stub).await?)
    } else {
        None
    };
    drop(stub);
    let apart = limit::measure_postgres_apart(&pool, &url, postgres.pid() as u32, scale).await?;
    let mut md = String::new();
    report::limit_section(&mut md, scale, &limit, &apart, profile.as_ref());
    println!("{md}");
    pool.close().await;
    stop_postgres(postgres).await?;
    Ok(())
}

/// Postgres of its own for the cadence figure alone.
async fn run_cadence(out: PathBuf) -> anyhow::Result<()> {
    let (postgres, _pg_root) = start_postgres().await?;
    create_database(&postgres.url("postgres"), "cadence").await?;
    eprintln!("bench: the full tick's cadence under continuous claims");
    let figures = cadence::measure(&postgres.url("cadence")).await?;
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("benchmarks-cadence.json"),
        serde_json::to_string_pretty(&figures)?,
    )?;
    let markdown = format!(
        "# agentpool benchmarks: the full tick's cadence\n\nGenerated by \
         `cargo run --release -p agentpool-tests --bin agentpool-bench -- --cadence-only` (the \
         same section ends `benchmarks.md` after a whole run); do not edit by hand. This run: a \
         {} build.\n\n{}",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        cadence::markdown(&figures)
    );
    std::fs::write(out.join("benchmarks-cadence.md"), &markdown)?;
    println!("{markdown}");
    stop_postgres(postgres).await?;
    Ok(())
}

async fn run(
    out: PathBuf,
    scale: Scale,
    with_profile: bool,
    only_fleet_tick: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let (postgres, _pg_root) = start_postgres().await?;
    create_database(&postgres.url("postgres"), "bench").await?;
    let url = postgres.url("bench");
    let pool = db::open(&url, 80).await?;
    if only_fleet_tick {
        let figures = fleet_tick::measure(&pool, &url).await?;
        fleet_tick::write(&out, &figures)?;
        pool.close().await;
        stop_postgres(postgres).await?;
        return Ok(());
    }

    let stub = fleet::SharedStub::start().await?;
    eprintln!("bench: postgres and stub agent up; the claim against its limit");
    let limit = limit::measure(&pool, &url, &stub, scale).await?;
    eprintln!("bench: the claim against its limit, Postgres on a core of its own");
    let limit_postgres_apart =
        limit::measure_postgres_apart(&pool, &url, postgres.pid() as u32, scale).await?;
    let profile = if with_profile {
        eprintln!("bench: profile of a replica under claims");
        Some(profile::measure(&pool, &url, &stub).await?)
    } else {
        None
    };
    eprintln!("bench: claims over HTTP");
    let claims_http = claims::http(&pool, &url, postgres.pid() as u32, &stub, scale).await?;
    eprintln!("bench: claim strategies in-process");
    let claim_strategies = claims::strategies(&pool, &url, &stub, scale).await?;
    eprintln!("bench: ticks");
    let ticks = tick::measure(&pool, &url, &stub, scale).await?;
    eprintln!("bench: Railway requests per tick");
    let railway = railway::measure(&pool, &url, &stub).await?;
    eprintln!("bench: claims by template");
    let templates = templates::measure(&url, template_claims(scale)).await?;
    eprintln!("bench: Sprites recycle vs fresh creation");
    let sprites = Some(sprites::measure(&postgres.url("postgres")).await?);
    eprintln!("bench: process start and memory");
    let process = fleet::process_figures(&url, scale).await?;
    eprintln!("bench: a tick for {} agents", fleet_tick::FLEET);
    let fleet = fleet_tick::measure(&pool, &url).await?;
    fleet_tick::write(&out, &fleet)?;
    eprintln!("bench: the full tick's cadence under continuous claims");
    create_database(&postgres.url("postgres"), "cadence").await?;
    let cadence = cadence::measure(&postgres.url("cadence")).await?;

    let last = compare::last_committed(&out);
    let mut report = Report {
        machine: report::Machine::detect(&pool).await,
        command: std::iter::once(
            "cargo run --release -p agentpool-tests --bin agentpool-bench".to_string(),
        )
        .chain(std::env::args().skip(1).map(|a| format!("-- {a}")).take(1))
        .chain(std::env::args().skip(2))
        .collect::<Vec<_>>()
        .join(" "),
        scale,
        limit,
        limit_postgres_apart,
        profile,
        claims_http,
        claim_strategies,
        ticks,
        railway,
        templates: Some(templates),
        sprites,
        process,
        cadence,
        total_seconds: started.elapsed().as_secs_f64(),
        regressions: Vec::new(),
        compared_with: None,
        compared_ratios: 0,
    };
    if let Some(last) = &last {
        report.compared_with = Some(last.commit.clone());
        let now = compare::ratios(&report);
        report.regressions = compare::regressions(&last.ratios, &now);
        let compared = last.ratios.keys().filter(|k| now.contains_key(*k)).count();
        compare::shout(&report.regressions, compared, &last.commit);
        report.compared_ratios = compared;
    }
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("benchmarks.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let markdown = report::markdown(&report);
    std::fs::write(out.join("benchmarks.md"), &markdown)?;
    println!("{markdown}");
    eprintln!("bench: wrote {}", out.join("benchmarks.md").display());

    drop(stub);
    pool.close().await;
    stop_postgres(postgres).await?;
    Ok(())
}
