//! The pool's size (`minIdle`, `maxTotal`), changed at run time without a restart.
//!
//! The environment's `POOL_MIN_IDLE` and `POOL_MAX_TOTAL` are the defaults; an operator's choice is
//! one row of `pool_settings`, so every replica and every tick use it as soon as it is written.
//! `POOL_MAX_TOTAL_CAP` bounds what may be set, and also what is read: a cap lowered by a
//! redeploy applies to a size stored before it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::config::SizeSettings;
use crate::domain::Actor;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolSize {
    pub min_idle: u32,
    pub max_total: u32,
}

impl PoolSize {
    pub fn defaults(settings: &SizeSettings) -> Self {
        Self {
            min_idle: settings.pool_min_idle,
            max_total: settings.pool_max_total,
        }
    }

    /// A stored size as it applies under the current cap.
    fn capped(stored: (i32, i32), cap: u32) -> Self {
        let non_negative = |n: i32| u32::try_from(n).unwrap_or(0);
        let max_total = non_negative(stored.1).min(cap);
        Self {
            min_idle: non_negative(stored.0).min(max_total),
            max_total,
        }
    }

    fn validate(self, cap: u32) -> Result<Self> {
        if self.max_total > cap {
            return Err(Error::Invalid(format!(
                "maxTotal must be at most {cap} (POOL_MAX_TOTAL_CAP)"
            )));
        }
        if self.min_idle > self.max_total {
            return Err(Error::Invalid(format!(
                "minIdle ({}) must not be larger than maxTotal ({})",
                self.min_idle, self.max_total
            )));
        }
        Ok(self)
    }
}

/// The size in force and where it comes from.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SizeSetting {
    #[serde(flatten)]
    pub size: PoolSize,
    pub max_total_cap: u32,
    /// The environment's values, in force while no operator has set any.
    pub defaults: PoolSize,
    /// `environment` or `operator`.
    pub source: &'static str,
    pub updated_at: Option<DateTime<Utc>>,
    pub updated_by: Option<String>,
}

#[derive(sqlx::FromRow)]
struct Stored {
    min_idle: i32,
    max_total: i32,
    updated_at: DateTime<Utc>,
    updated_by: String,
}

fn setting(settings: &SizeSettings, stored: Option<Stored>) -> SizeSetting {
    let defaults = PoolSize::defaults(settings);
    let cap = settings.max_total_cap();
    match stored {
        None => SizeSetting {
            size: defaults,
            max_total_cap: cap,
            defaults,
            source: "environment",
            updated_at: None,
            updated_by: None,
        },
        Some(row) => SizeSetting {
            size: PoolSize::capped((row.min_idle, row.max_total), cap),
            max_total_cap: cap,
            defaults,
            source: "operator",
            updated_at: Some(row.updated_at),
            updated_by: Some(row.updated_by),
        },
    }
}

pub async fn get(db: &PgPool, settings: &SizeSettings) -> Result<SizeSetting> {
    let stored: Option<Stored> =
        sqlx::query_as("SELECT min_idle, max_total, updated_at, updated_by FROM pool_settings")
            .fetch_optional(db)
            .await?;
    Ok(setting(settings, stored))
}

/// The size in force: what the tick plans with and what creation stays within.
pub async fn current(db: &PgPool, settings: &SizeSettings) -> Result<PoolSize> {
    let stored: Option<(i32, i32)> =
        sqlx::query_as("SELECT min_idle, max_total FROM pool_settings")
            .fetch_optional(db)
            .await?;
    Ok(stored.map_or_else(
        || PoolSize::defaults(settings),
        |stored| PoolSize::capped(stored, settings.max_total_cap()),
    ))
}

/// A change asked for; a field left out keeps its value.
#[derive(Debug, Clone, Copy, Default)]
pub struct SizeChange {
    pub min_idle: Option<u32>,
    pub max_total: Option<u32>,
}

/// Validates and stores a new size, and records the change in `pool_events`, in one transaction
/// (serialised with other changes by the row lock, so each event's `from` is what it replaced).
pub async fn set(
    db: &PgPool,
    settings: &SizeSettings,
    change: SizeChange,
    actor: Actor,
    via: &str,
) -> Result<SizeSetting> {
    let cap = settings.max_total_cap();
    let mut tx = db.begin().await?;
    // Lock the row if there is one; the first change inserts it, and a concurrent first change
    // waits on the primary key.
    let before: Option<(i32, i32)> =
        sqlx::query_as("SELECT min_idle, max_total FROM pool_settings FOR UPDATE")
            .fetch_optional(&mut *tx)
            .await?;
    let before = before.map_or_else(
        || PoolSize::defaults(settings),
        |stored| PoolSize::capped(stored, cap),
    );
    let after = PoolSize {
        min_idle: change.min_idle.unwrap_or(before.min_idle),
        max_total: change.max_total.unwrap_or(before.max_total),
    }
    .validate(cap)?;
    let to_db = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    let updated_by = format!("{} ({via})", actor.as_str());
    let stored: Stored = sqlx::query_as(
        "WITH e AS (
           INSERT INTO pool_events (kind, detail, actor)
           VALUES ('size_changed', $3, $4)
         )
         INSERT INTO pool_settings (singleton, min_idle, max_total, updated_by)
         VALUES (true, $1, $2, $5)
         ON CONFLICT (singleton) DO UPDATE
            SET min_idle = EXCLUDED.min_idle, max_total = EXCLUDED.max_total,
                updated_at = now(), updated_by = EXCLUDED.updated_by
         RETURNING min_idle, max_total, updated_at, updated_by",
    )
    .bind(to_db(after.min_idle))
    .bind(to_db(after.max_total))
    .bind(serde_json::json!({"from": before, "to": after, "via": via}))
    .bind(actor.as_str())
    .bind(&updated_by)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(setting(settings, Some(stored)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_size_is_read_under_the_current_cap() {
        assert_eq!(
            PoolSize::capped((5, 50), 20),
            PoolSize {
                min_idle: 5,
                max_total: 20
            }
        );
        assert_eq!(
            PoolSize::capped((30, 50), 20),
            PoolSize {
                min_idle: 20,
                max_total: 20
            }
        );
    }

    #[test]
    fn sizes_out_of_bounds_are_refused() {
        let size = |min_idle, max_total| PoolSize {
            min_idle,
            max_total,
        };
        assert!(size(0, 0).validate(10).is_ok());
        assert!(size(10, 10).validate(10).is_ok());
        assert!(matches!(size(3, 11).validate(10), Err(Error::Invalid(_))));
        assert!(matches!(size(4, 3).validate(10), Err(Error::Invalid(_))));
    }
}
