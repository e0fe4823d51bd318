//! What the pages, the listings and `/metrics` show: reads only, none of which changes the pool.
//! The faces read through here, so that they hold a `Pool` and never a database handle.

use std::collections::BTreeMap;

use crate::domain::{Instance, InstanceStatus};
use crate::error::Result;
use crate::{instances, listing, metrics, pool_size, Pool};

pub use crate::listing::{Cursor, Page, PublicAgent, DEFAULT_LIMIT, LIVE, MAX_LIMIT};
pub use crate::metrics::CONTENT_TYPE;
pub use crate::pool_size::{PoolSize, SizeSetting};

/// How many instances are in each state.
pub async fn counts(pool: &Pool) -> Result<BTreeMap<InstanceStatus, i64>> {
    instances::counts(&pool.db).await
}

/// One instance's row; `NotFound` if there is none.
pub async fn instance(pool: &Pool, id: &str) -> Result<Instance> {
    instances::get(&pool.db, id).await
}

/// A page of what anyone may see of the agents, of every status or of `only` these.
pub async fn public_page(
    pool: &Pool,
    after: Option<&Cursor>,
    limit: u32,
    only: Option<&[InstanceStatus]>,
) -> Result<Page<PublicAgent>> {
    listing::public_page(&pool.db, after, limit, only).await
}

/// A page of whole rows, for the operator.
pub async fn operator_page(
    pool: &Pool,
    after: Option<&Cursor>,
    limit: u32,
    only: Option<&[InstanceStatus]>,
) -> Result<Page<Instance>> {
    listing::operator_page(&pool.db, after, limit, only).await
}

/// The size as an operator set it (or the settings' defaults), with its sizing policy.
pub async fn size(pool: &Pool) -> Result<SizeSetting> {
    pool_size::get(&pool.db, &pool.settings.size).await
}

/// The size in force now, the sizing policy's window applied.
pub async fn size_in_force(pool: &Pool) -> Result<PoolSize> {
    pool_size::current(&pool.db, &pool.settings.size).await
}

/// The `/metrics` text. What this replica's outside calls failed is written first, so that the
/// scrape includes it.
pub async fn metrics(pool: &Pool) -> Result<String> {
    metrics::render(&pool.db, &pool.tally).await
}
