//! Carries out a plan. Transitions are compare-and-set, so a claim that raced the snapshot wins
//! over a decision made on stale state. Database work is batched: the number of queries depends
//! on how much changes, not on how many instances there are.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::future::OptionFuture;
use futures::StreamExt;
use rand::Rng;
use tracing::Instrument;

use crate::domain::{Actor, InstanceStatus};
use crate::instances;
use crate::providers::{CreateSpec, ResourceRef};
use crate::Pool;

use super::plan::{Plan, Transition};
use super::snapshot::Snapshot;
use super::TickReport;

/// Provider calls in flight at once during a tick.
const PROVIDER_CONCURRENCY: usize = 8;
const MAX_BACKOFF: Duration = Duration::from_secs(600);

pub async fn run(
    pool: &Pool,
    snapshot: &Snapshot,
    plan: Plan,
    deadline: Instant,
    report: &mut TickReport,
) {
    if let Err(e) = set_health_failures(pool, &plan.health_failures).await {
        report.error(format!("recording health failures: {e}"));
    }
    let applied = apply_transitions(pool, &plan.transitions, report).await;

    let already_destroying: HashSet<&str> = snapshot
        .rows
        .iter()
        .filter(|r| r.instance.status == InstanceStatus::Destroying)
        .map(|r| r.instance.id.as_str())
        .collect();
    let by_id: HashMap<&str, &super::snapshot::Row> = snapshot
        .rows
        .iter()
        .map(|r| (r.instance.id.as_str(), r))
        .collect();
    let targets: Vec<ResourceTarget> = plan
        .destroy
        .iter()
        .filter(|id| already_destroying.contains(id.as_str()) || applied.contains(id.as_str()))
        .filter_map(|id| by_id.get(id.as_str()))
        .map(|row| ResourceTarget {
            id: row.instance.id.clone(),
            attempts: row.instance.destroy_attempts,
            resource: ResourceRef {
                name: row.instance.name.clone(),
                resource_id: row.resource_id.clone(),
            },
        })
        .collect();
    destroy_instances(pool, targets, deadline, report).await;
    delete_orphans(pool, &plan, deadline, report).await;
    create_instances(pool, plan.create, deadline, report).await;
}

async fn set_health_failures(pool: &Pool, failures: &[(String, i32)]) -> crate::Result<()> {
    if failures.is_empty() {
        return Ok(());
    }
    let (ids, counts): (Vec<&str>, Vec<i32>) =
        failures.iter().map(|(id, n)| (id.as_str(), *n)).unzip();
    sqlx::query(
        "UPDATE instances i SET health_failures = v.n
           FROM unnest($1::text[], $2::int4[]) AS v(id, n)
          WHERE i.id = v.id AND i.status IN ('idle', 'claimed')",
    )
    .bind(&ids)
    .bind(&counts)
    .execute(&pool.db)
    .await?;
    Ok(())
}

/// Applies transitions grouped by (from, to); returns the ids that actually moved.
async fn apply_transitions(
    pool: &Pool,
    transitions: &[Transition],
    report: &mut TickReport,
) -> HashSet<String> {
    let mut groups: BTreeMap<(InstanceStatus, InstanceStatus), Vec<(String, String)>> =
        BTreeMap::new();
    for t in transitions {
        groups
            .entry((t.from, t.to))
            .or_default()
            .push((t.id.clone(), t.reason.clone()));
    }
    let mut applied = HashSet::new();
    for ((from, to), moves) in groups {
        match instances::transition(&pool.db, from, to, &moves, Actor::Tick).await {
            Ok(moved) => {
                let moved: HashSet<String> = moved.into_iter().collect();
                for (id, reason) in &moves {
                    if moved.contains(id) {
                        tracing::info!(instance_id = %id, %from, %to, %reason, "transition");
                        report.transitions.push(super::Moved {
                            id: id.clone(),
                            from,
                            to,
                            reason: reason.clone(),
                        });
                    }
                }
                applied.extend(moved);
            }
            Err(e) => report.error(format!("{from} → {to}: {e}")),
        }
    }
    applied
}

struct ResourceTarget {
    id: String,
    attempts: i32,
    resource: ResourceRef,
}

/// Destroys each instance's resources, then its row. Failures are retried by later ticks with
/// jittered exponential backoff; the row goes only when everything it owns is gone.
async fn destroy_instances(
    pool: &Pool,
    targets: Vec<ResourceTarget>,
    deadline: Instant,
    report: &mut TickReport,
) {
    let (results, left) = while_time_lasts(targets, before(deadline), |target| {
        let span = tracing::info_span!("destroy", instance_id = %target.id);
        async move {
            let result = pool.provider.destroy(&target.resource).await;
            (target, result)
        }
        .instrument(span)
    })
    .await;
    if left > 0 {
        report.budget_exhausted = true;
    }

    let mut gone = Vec::new();
    let (mut failed_ids, mut failed_errors, mut failed_delays) =
        (Vec::new(), Vec::new(), Vec::new());
    for (target, result) in results {
        match result {
            Ok(()) => gone.push(target.id),
            Err(e) => {
                tracing::warn!(instance_id = %target.id, error = %e, "destroy failed; will retry");
                report.error(format!("destroying {}: {e}", target.id));
                failed_delays.push(backoff(target.attempts + 1).as_millis() as i64);
                failed_ids.push(target.id);
                failed_errors.push(e.to_string());
            }
        }
    }
    if !gone.is_empty() {
        let deleted: crate::Result<Vec<String>> = sqlx::query_scalar(
            "WITH d AS (
               DELETE FROM instances WHERE id = ANY($1::text[]) AND status = 'destroying' RETURNING id
             ),
             e AS (
               INSERT INTO instance_events (instance_id, from_status, to_status, reason, actor)
               SELECT id, 'destroying', 'deleted', 'resources destroyed', 'tick' FROM d
             )
             SELECT id FROM d",
        )
        .bind(&gone)
        .fetch_all(&pool.db)
        .await
        .map_err(Into::into);
        match deleted {
            Ok(ids) => report.destroyed.extend(ids),
            Err(e) => report.error(format!("deleting destroyed rows: {e}")),
        }
    }
    if !failed_ids.is_empty() {
        let result = sqlx::query(
            "UPDATE instances i
                SET destroy_attempts = destroy_attempts + 1, last_error = v.error,
                    next_attempt_at = now() + v.delay_ms * interval '1 millisecond'
               FROM unnest($1::text[], $2::text[], $3::int8[]) AS v(id, error, delay_ms)
              WHERE i.id = v.id AND i.status = 'destroying'",
        )
        .bind(&failed_ids)
        .bind(&failed_errors)
        .bind(&failed_delays)
        .execute(&pool.db)
        .await;
        if let Err(e) = result {
            report.error(format!("recording destroy failures: {e}"));
        }
    }
}

/// 2^attempts seconds, capped, with ±25 % jitter so that a fleet of failures does not retry in step.
fn backoff(attempts: i32) -> Duration {
    let base = Duration::from_secs(1u64 << attempts.clamp(0, 10)).min(MAX_BACKOFF);
    base.mul_f64(rand::thread_rng().gen_range(0.75..1.25))
}

async fn delete_orphans(pool: &Pool, plan: &Plan, deadline: Instant, report: &mut TickReport) {
    let (results, left) = while_time_lasts(
        plan.orphans.clone(),
        before(deadline),
        |orphan| async move {
            let resource = ResourceRef {
                name: orphan.name.clone(),
                resource_id: Some(orphan.resource_id.clone()),
            };
            tracing::info!(resource = %orphan.name, "deleting orphan");
            (orphan.name, pool.provider.destroy(&resource).await)
        },
    )
    .await;
    if left > 0 {
        report.budget_exhausted = true;
    }
    for (name, result) in results {
        match result {
            Ok(()) => report.orphans_deleted.push(name),
            Err(e) => report.error(format!("deleting orphan {name}: {e}")),
        }
    }
}

/// Inserts rows first, then creates each resource and records it as soon as it exists.
async fn create_instances(pool: &Pool, wanted: u32, deadline: Instant, report: &mut TickReport) {
    if wanted == 0 {
        return;
    }
    if Instant::now() >= deadline {
        report.budget_exhausted = true;
        return;
    }
    let settings = &pool.settings;
    let reserved = match instances::reserve(
        &pool.db,
        wanted,
        settings.pool_max_total,
        &settings.pool_name_prefix,
        Actor::Tick,
        "replenish",
    )
    .await
    {
        Ok(reserved) => reserved,
        Err(e) => {
            report.error(format!("reserving instances: {e}"));
            return;
        }
    };
    let outcomes = create_reserved(pool, reserved).await;
    for (id, result) in outcomes {
        match result {
            Ok(()) => report.created.push(id),
            Err(e) => report.error(format!("creating {id}: {e}")),
        }
    }
}

/// Creates the provider resources of reserved rows. A failure sends the row to `destroying`, so
/// whatever part of it exists is cleaned up by the tick.
pub async fn create_reserved(
    pool: &Pool,
    reserved: Vec<instances::Reserved>,
) -> Vec<(String, crate::Result<()>)> {
    futures::stream::iter(reserved)
        .map(|row| {
            let span = tracing::info_span!("create", instance_id = %row.id);
            async move {
                let result = create_one(pool, &row).await;
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "create failed");
                    let moves = [(row.id.clone(), format!("create failed: {e}"))];
                    if let Err(e) = instances::transition(
                        &pool.db,
                        InstanceStatus::Starting,
                        InstanceStatus::Destroying,
                        &moves,
                        Actor::Tick,
                    )
                    .await
                    {
                        tracing::error!(error = %e, "could not mark failed create for destruction");
                    }
                }
                (row.id, result)
            }
            .instrument(span)
        })
        .buffer_unordered(PROVIDER_CONCURRENCY)
        .collect()
        .await
}

async fn create_one(pool: &Pool, row: &instances::Reserved) -> crate::Result<()> {
    let spec = CreateSpec {
        name: row.name.clone(),
        env: vec![
            ("OPENCLAW_GATEWAY_TOKEN".into(), row.gateway_token.clone()),
            ("INSTANCE_ID".into(), row.id.clone()),
            (
                "POOL_ENVIRONMENT".into(),
                pool.settings.pool_environment.clone(),
            ),
        ],
    };
    let created = pool.provider.create(&spec).await?;
    let recorded = instances::record_infra(
        &pool.db,
        &row.id,
        pool.provider.kind().as_str(),
        &created.resource_id,
        &created.url,
        &created.details,
    )
    .await;
    if let Err(e) = recorded {
        // Without a record the resource would be found only as an orphan; remove it now.
        let _ = pool
            .provider
            .destroy(&ResourceRef {
                name: row.name.clone(),
                resource_id: Some(created.resource_id),
            })
            .await;
        return Err(e);
    }
    tracing::info!(url = %created.url, "created");
    Ok(())
}

fn before(deadline: Instant) -> impl Fn() -> bool {
    move || Instant::now() < deadline
}

/// Runs `work` on each item, `PROVIDER_CONCURRENCY` at a time. Each item is checked against the
/// budget when its turn comes, not before the batch: an item whose turn comes too late is not
/// started and waits for the next tick. Returns what finished and how many were left.
async fn while_time_lasts<T, R, F, Fut>(
    items: Vec<T>,
    time_left: impl Fn() -> bool,
    work: F,
) -> (Vec<R>, usize)
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = R>,
{
    let outcomes: Vec<Option<R>> = futures::stream::iter(items)
        // `buffer_unordered` pulls the next item only when a slot is free, so this check runs
        // when the item would start.
        .map(|item| OptionFuture::from(time_left().then(|| work(item))))
        .buffer_unordered(PROVIDER_CONCURRENCY)
        .collect()
        .await;
    let left = outcomes.iter().filter(|o| o.is_none()).count();
    (outcomes.into_iter().flatten().collect(), left)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn items_whose_turn_comes_after_the_budget_are_left_for_the_next_tick() {
        // The budget lasts for exactly 11 starts, more than one batch of PROVIDER_CONCURRENCY.
        let checks = AtomicUsize::new(0);
        let time_left = || checks.fetch_add(1, Ordering::SeqCst) < 11;
        let (done, left) = while_time_lasts((0..30).collect(), time_left, |i: u32| async move {
            tokio::task::yield_now().await;
            i
        })
        .await;
        assert_eq!((done.len(), left), (11, 19));
        let mut done = done;
        done.sort_unstable();
        assert_eq!(done, (0..11).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn with_time_to_spare_everything_runs() {
        let (done, left) =
            while_time_lasts(vec![1, 2, 3], || true, |i: u32| async move { i * 2 }).await;
        assert_eq!(left, 0);
        assert_eq!(done.iter().sum::<u32>(), 12);
    }
}
