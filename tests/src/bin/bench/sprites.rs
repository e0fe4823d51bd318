//! Seed 002's figures: a recycle (restore the golden checkpoint) against a fresh creation (build
//! from source), and the time an emptied pool needs to refill after a burst of claims, with and
//! without recycling. The Sprites provider against the Sprites fake at seed 002's latencies
//! (build about 5 minutes, restore about 15 s, scaled by [`FACTOR`]), each sprite running a real
//! stub agent.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use agentpool_core::calls::Tally;
use agentpool_core::creation;
use agentpool_core::db;
use agentpool_core::db::embedded::create_database;
use agentpool_core::domain::Actor;
use agentpool_core::gate::Gate;
use agentpool_core::instances;
use agentpool_core::providers::sprites::SpritesProvider;
use agentpool_core::providers::Provider;
use agentpool_core::tick::{self, Mode};
use agentpool_core::{operator, recycle, Pool, Settings};
use agentpool_tests::fakes::{SpritesConfig, SpritesFake};
use agentpool_tests::latency::LatencyProfile;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::stats::ms;

/// Real time × this = the bench's time: a 5-minute build takes 3 s.
pub const FACTOR: f64 = 1.0 / 100.0;
/// The pool emptied by the burst.
const POOL: usize = 4;
const RUNS: usize = 3;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpritesFigures {
    pub factor: f64,
    /// One fresh creation (sprite, setup, service, ready, golden checkpoint), each run, ms.
    pub fresh_ms: Vec<f64>,
    /// One recycle (restore, new token, ready and clean), each run, ms.
    pub recycle_ms: Vec<f64>,
    pub pool: usize,
    /// From the burst's users letting go to the pool full again: destroyed and rebuilt by ticks.
    pub refill_without_recycling_ms: f64,
    /// The same, recycled.
    pub refill_with_recycling_ms: f64,
}

impl SpritesFigures {
    /// Both at real scale (÷ the factor), seconds.
    pub fn real_seconds(ms: f64) -> f64 {
        ms / FACTOR / 1000.0
    }
}

pub async fn measure(admin_url: &str) -> anyhow::Result<SpritesFigures> {
    let profile = LatencyProfile::realistic().scaled(FACTOR).seeded(2);
    let fake = SpritesFake::start(SpritesConfig::default()).await;
    fake.set_latency(&profile);
    let mut fresh_ms = Vec::new();
    let mut recycle_ms = Vec::new();
    let (refill_without, refill_with);
    {
        let pool = pool(admin_url, "bench_sprites", &fake, &profile).await?;
        for _ in 0..RUNS {
            let started = Instant::now();
            let id = create(&pool, 1).await?.remove(0);
            fresh_ms.push(ms(started.elapsed()));
            let claimed = claim(&pool, &id).await?;
            let started = Instant::now();
            let since = instances::start_recycle(&pool.db, &claimed).await?;
            anyhow::ensure!(recycle::run(&pool, &claimed, since).await, "recycle failed");
            recycle_ms.push(ms(started.elapsed()));
        }
        refill_without = refill(&pool, false).await?;
        refill_with = refill(&pool, true).await?;
        pool.db.close().await;
    }
    Ok(SpritesFigures {
        factor: FACTOR,
        fresh_ms,
        recycle_ms,
        pool: POOL,
        refill_without_recycling_ms: refill_without,
        refill_with_recycling_ms: refill_with,
    })
}

async fn pool(
    admin_url: &str,
    name: &str,
    fake: &SpritesFake,
    profile: &LatencyProfile,
) -> anyhow::Result<Pool> {
    create_database(admin_url, name).await?;
    let url = admin_url
        .rsplit_once('/')
        .map_or(admin_url.to_string(), |(base, _)| format!("{base}/{name}"));
    let mut vars: Vec<(String, String)> = profile.pool_settings();
    vars.extend(
        [
            ("DATABASE_URL", url.as_str()),
            ("POOL_PROVIDER", "sprites"),
            ("POOL_NAME_PREFIX", "bench-"),
            ("POOL_MIN_IDLE", "0"),
            ("POOL_MAX_TOTAL", "20"),
            ("SPRITES_API_URL", &fake.url()),
            ("SPRITE_TOKEN", fake.token()),
            // One build step: one draw of seed 002's five minutes.
            ("SPRITES_SETUP_COMMANDS", r#"["build openclaw"]"#),
            ("SPRITES_EXEC_TIMEOUT_MS", "60000"),
            ("CREATE_TIMEOUT_MS", "60000"),
            ("RECYCLE_TIMEOUT_MS", "60000"),
            ("POOL_STUCK_TIMEOUT_MS", "600000"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let mut unique = std::collections::BTreeMap::new();
    unique.extend(vars);
    let settings = Settings::from_vars(unique)?;
    let db = db::open(&url, 20).await?;
    let tally = Tally::default();
    let provider: Arc<dyn Provider> = Arc::new(SpritesProvider::from_settings(
        &settings.providers.sprites,
        &settings.outbound,
        &settings.pool.pool_environment,
        settings.creation.recycle_timeout(),
        &tally,
    )?);
    Ok(Pool::new(db, settings, provider, tally))
}

/// Creates `count` instances at once, as a tick does, and waits until they are idle.
async fn create(pool: &Pool, count: u32) -> anyhow::Result<Vec<String>> {
    let batch = creation::reserve(pool, count, Actor::Operator, "bench").await?;
    let gate = Gate::until(CancellationToken::new());
    let mut ids = Vec::new();
    for (row, outcome) in creation::create_all(pool, batch, &gate).await {
        anyhow::ensure!(
            matches!(outcome, creation::Outcome::Created),
            "creation failed: {outcome:?}"
        );
        ids.push(row.id);
    }
    until_idle(pool, &ids).await?;
    Ok(ids)
}

/// Ticks (kicked: health, moves) until every one of `ids` is idle.
async fn until_idle(pool: &Pool, ids: &[String]) -> anyhow::Result<()> {
    loop {
        let idle: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM instances WHERE id = ANY($1) AND status = 'idle'",
        )
        .bind(ids)
        .fetch_one(&pool.db)
        .await?;
        if idle == ids.len() as i64 {
            return Ok(());
        }
        tick::run(pool, Mode::Kick).await?;
    }
}

/// Marks an idle instance claimed (the claim's own cost is measured elsewhere).
async fn claim(pool: &Pool, id: &str) -> anyhow::Result<String> {
    let moved: Option<String> = sqlx::query_scalar(
        "UPDATE instances SET status = 'claimed', status_since = now(), claimed_at = now()
          WHERE id = $1 AND status = 'idle' RETURNING id",
    )
    .bind(id)
    .fetch_optional(&pool.db)
    .await?;
    moved.context("the instance was not idle")
}

/// Fills the pool to [`POOL`] idle, claims them all (the burst), lets them all go, and measures
/// until [`POOL`] are idle again: recycled, or destroyed and built anew (all at once, as a tick
/// does).
async fn refill(pool: &Pool, recycling: bool) -> anyhow::Result<f64> {
    let ids = create(pool, POOL as u32).await?;
    for id in &ids {
        claim(pool, id).await?;
    }
    let started = Instant::now();
    if recycling {
        let runs = ids.iter().map(|id| async move {
            let since = instances::start_recycle(&pool.db, id).await?;
            anyhow::Ok(recycle::run(pool, id, since).await)
        });
        for done in futures::future::join_all(runs).await {
            anyhow::ensure!(done?, "a recycle failed");
        }
        until_idle(pool, &ids).await?;
    } else {
        for id in &ids {
            operator::kill(pool, id).await?;
        }
        create(pool, POOL as u32).await?;
    }
    let elapsed = ms(started.elapsed());
    // Leave nothing behind for the next measurement.
    let live: Vec<String> =
        sqlx::query_scalar("SELECT id FROM instances WHERE status <> 'destroying'")
            .fetch_all(&pool.db)
            .await?;
    for id in live {
        operator::kill(pool, &id).await?;
    }
    tick::run(pool, Mode::Full).await?;
    Ok(elapsed)
}
