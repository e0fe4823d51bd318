//! What each full tick found and aimed at (`pool_samples`): written under the tick's lock, read by
//! the dashboard's chart (with the claims per hour from `instance_events` and `claim_misses`) and
//! by `/metrics`.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::error::Result;

/// What one full tick found and aimed at.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Sample {
    pub at: DateTime<Utc>,
    pub idle: i32,
    pub starting: i32,
    pub target: i32,
    pub reason: String,
}

/// Records one sample and forgets samples and claim misses older than eight days.
pub async fn record(db: &PgPool, sample: &Sample) -> Result<()> {
    sqlx::query(
        "WITH old AS (DELETE FROM pool_samples WHERE at < $1 - interval '8 days'),
              old_misses AS (DELETE FROM claim_misses WHERE at < $1 - interval '8 days')
         INSERT INTO pool_samples (at, idle, starting, target, reason) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (at) DO NOTHING",
    )
    .bind(sample.at)
    .bind(sample.idle)
    .bind(sample.starting)
    .bind(sample.target)
    .bind(&sample.reason)
    .execute(db)
    .await?;
    Ok(())
}

/// The last 24 hours: claims per hour, served or missed (from the partial index on claims and
/// `claim_misses`), and the ticks' samples, oldest first.
#[derive(Debug, Clone)]
pub struct Day {
    pub now: DateTime<Utc>,
    pub claims_per_hour: Vec<(DateTime<Utc>, i64)>,
    pub samples: Vec<Sample>,
}

pub async fn last_day(db: &PgPool) -> Result<Day> {
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(db).await?;
    let claims_per_hour = sqlx::query_as(
        "SELECT date_trunc('hour', at), count(*)
           FROM (SELECT at FROM instance_events
                  WHERE to_status = 'claiming' AND at > $1 - interval '24 hours'
                 UNION ALL
                 SELECT at FROM claim_misses WHERE at > $1 - interval '24 hours') c
          GROUP BY 1 ORDER BY 1",
    )
    .bind(now)
    .fetch_all(db)
    .await?;
    let samples = sqlx::query_as(
        "SELECT at, idle, starting, target, reason FROM pool_samples
          WHERE at > $1 - interval '24 hours' ORDER BY at",
    )
    .bind(now)
    .fetch_all(db)
    .await?;
    Ok(Day {
        now,
        claims_per_hour,
        samples,
    })
}

/// The last full tick's sample, if any tick has run.
pub async fn latest(db: &PgPool) -> Result<Option<Sample>> {
    Ok(sqlx::query_as(
        "SELECT at, idle, starting, target, reason FROM pool_samples ORDER BY at DESC LIMIT 1",
    )
    .fetch_optional(db)
    .await?)
}
