//! What an operator does to the pool by hand: kill or dismiss an agent, drain idle ones, resize.
//! Each is one fenced statement; the tick does the slow part (destroying, creating).

use crate::domain::{Actor, InstanceStatus};
use crate::error::Result;
use crate::pool_size::SizeSetting;
use crate::{instances, pool_size, Pool};

pub use crate::pool_size::SizeChange;

/// Sends a launched instance to `destroying`, whatever its state but that one; returns the state
/// it left.
pub async fn kill(pool: &Pool, id: &str) -> Result<InstanceStatus> {
    use InstanceStatus::*;
    instances::request_destroy(
        &pool.db,
        id,
        &[Starting, Idle, Claiming, Claimed, Crashed, Recycling],
        "not already destroying",
        "killed by operator",
    )
    .await
}

/// Sends a crashed agent to `destroying`.
pub async fn dismiss(pool: &Pool, id: &str) -> Result<InstanceStatus> {
    instances::request_destroy(
        &pool.db,
        id,
        &[InstanceStatus::Crashed],
        "crashed",
        "crashed agent dismissed",
    )
    .await
}

/// Sends up to `count` idle instances to `destroying`; returns their ids.
pub async fn drain(pool: &Pool, count: u32) -> Result<Vec<String>> {
    instances::drain(&pool.db, count).await
}

/// Stores a new size (validated against `POOL_MAX_TOTAL_CAP`), recording who changed it and
/// through what (`via`: the API or the dashboard).
pub async fn resize(pool: &Pool, change: SizeChange, via: &str) -> Result<SizeSetting> {
    pool_size::set(&pool.db, &pool.settings.size, change, Actor::Operator, via).await
}
