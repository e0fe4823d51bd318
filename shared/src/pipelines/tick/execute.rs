//! Carries out a plan. Every write waits for the gate: the tick stops starting work when its lease
//! is lost, its budget spent or the process shuts down. Transitions are compare-and-set on the
//! state the decision was made on, so a claim that raced the snapshot wins over a decision made
//! on stale state. Database work is batched: the number of queries depends on how much changes,
//! not on how many instances there are.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use rand::Rng;
use tracing::Instrument;

use crate::creation;
use crate::domain::{Actor, InstanceStatus};
use crate::error::Error;
use crate::gate::{CutShort, Gate};
use crate::instances::{self, Move};
use crate::outbound::Failure;
use crate::providers::ResourceRef;
use crate::services;
use crate::Pool;

use super::plan::{Mode, Plan, Rename, Transition};
use super::snapshot::{Row, Snapshot};
use super::TickReport;

/// Provider calls in flight at once during a tick.
const PROVIDER_CONCURRENCY: usize = 8;
const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// How long an `Idempotency-Key` keeps its reply.
const IDEMPOTENCY_RETENTION: &str = "24 hours";

/// Carries out `plan`; stops at the first step the gate refuses, and says why. Past the budget
/// it still writes what the snapshot decided and reserves the rows to create, only into `batch`:
/// the caller creates them once it has released the tick lock.
pub async fn run(
    pool: &Pool,
    snapshot: &Snapshot,
    plan: Plan,
    mode: Mode,
    gate: &Gate<'_>,
    report: &mut TickReport,
    batch: &mut Option<creation::Batch>,
) -> Result<(), CutShort> {
    // What the snapshot showed and decided is written even past the budget: a few statements and
    // no outside call, where a tick whose listings took its budget would otherwise judge the
    // fleet and change nothing, tick after tick while they stay slow. A lost lock or a shutdown
    // still stops it.
    gate.admit().await.or_else(allow_budget)?;
    if let Err(e) = record_observations(pool, snapshot, &plan).await {
        report.error("recording health observations", None, &e);
    }
    let applied = apply_transitions(pool, &plan.transitions, gate, report).await?;

    let by_id: HashMap<&str, &Row> = snapshot
        .rows
        .iter()
        .map(|r| (r.instance.id.as_str(), r))
        .collect();
    let targets: Vec<Target> = plan
        .destroy
        .iter()
        .filter_map(|id| by_id.get(id.as_str()).copied())
        .filter(|row| {
            row.instance.status == InstanceStatus::Destroying
                || applied.contains(row.instance.id.as_str())
        })
        .map(|row| Target {
            id: row.instance.id.clone(),
            attempts: row.instance.destroy_attempts,
            resource: ResourceRef {
                name: row.instance.name.clone(),
                resource_id: row.resource_id.clone(),
                details: row.details.clone().unwrap_or_default(),
            },
            services: Vec::new(),
        })
        .collect();
    let outside = async {
        destroy_instances(pool, targets, gate, report).await?;
        delete_orphans(pool, &plan, gate, report).await?;
        delete_tool_orphans(pool, &plan, gate, report).await?;
        rename_claimed(pool, &by_id, &plan, gate, report).await
    };
    let cut = match outside.await {
        Ok(()) => None,
        Err(CutShort::Budget) => Some(CutShort::Budget),
        Err(why) => return Err(why),
    };
    // Reserved even past the budget, after the destroys that make room: one statement, and the
    // creations go on after the tick (`tick::run_until`), so that a tick whose checks took its
    // budget still refills the pool.
    *batch = reserve_instances(pool, plan.create, gate, report).await?;
    if let Some(why) = cut {
        return Err(why);
    }
    if mode != Mode::Kick {
        destroy_abandoned(pool, gate, report).await?;
    }
    if mode == Mode::Full {
        gate.admit().await?;
        if let Err(e) = forget_old_claim_requests(pool).await {
            report.error("forgetting old idempotency keys", None, &e);
        }
        if let Err(e) = forget_silent_creators(pool).await {
            report.error("forgetting silent creators", None, &e);
        }
    }
    Ok(())
}

/// Records health answers relative to the row as it is now (never a count carried over from the
/// snapshot), and only on the incarnation that was asked: same status, same `status_since`.
async fn record_observations(pool: &Pool, snapshot: &Snapshot, plan: &Plan) -> crate::Result<()> {
    let (observations, presence) = (&plan.observations, &plan.presence);
    crate::failpoint!(
        "tick.observations.before",
        return Err(crate::failpoint::db_error().into())
    );
    if !observations.is_empty() {
        let ids: Vec<&str> = observations.iter().map(|o| o.id.as_str()).collect();
        let statuses: Vec<&str> = observations.iter().map(|o| o.status.as_str()).collect();
        let since: Vec<_> = observations.iter().map(|o| o.since).collect();
        let healthy: Vec<bool> = observations.iter().map(|o| o.healthy).collect();
        sqlx::query(
            "UPDATE instances i
                SET last_checked_at = $5,
                    last_ok_at = CASE WHEN v.healthy THEN greatest(i.last_ok_at, $5)
                                      ELSE i.last_ok_at END,
                    health_failures = CASE WHEN v.healthy THEN 0 ELSE i.health_failures + 1 END,
                    failing_since = CASE WHEN v.healthy THEN NULL
                                         ELSE coalesce(i.failing_since, $5) END
               FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bool[])
                    AS v(id, status, since, healthy)
              WHERE i.id = v.id AND i.status = v.status AND i.status_since = v.since",
        )
        .bind(&ids)
        .bind(&statuses)
        .bind(&since)
        .bind(&healthy)
        .bind(snapshot.now)
        .execute(&pool.db)
        .await?;
    }
    // Rare: only when a resource goes missing or comes back.
    if !presence.is_empty() {
        let (ids, absent): (Vec<&str>, Vec<bool>) =
            presence.iter().map(|p| (p.id.as_str(), p.absent)).unzip();
        sqlx::query(
            "UPDATE instances i
                SET absent_since = CASE WHEN p.absent THEN coalesce(i.absent_since, $3) END
               FROM unnest($1::text[], $2::bool[]) AS p(id, absent)
              WHERE i.id = p.id",
        )
        .bind(&ids)
        .bind(&absent)
        .bind(snapshot.now)
        .execute(&pool.db)
        .await?;
    }
    if !plan.tool_presence.is_empty() {
        let (ids, absent): (Vec<i64>, Vec<bool>) =
            plan.tool_presence.iter().map(|p| (p.id, p.absent)).unzip();
        sqlx::query(
            "UPDATE instance_services s
                SET absent_since = CASE WHEN p.absent THEN coalesce(s.absent_since, $3) END
               FROM unnest($1::bigint[], $2::bool[]) AS p(id, absent)
              WHERE s.id = p.id",
        )
        .bind(&ids)
        .bind(&absent)
        .bind(snapshot.now)
        .execute(&pool.db)
        .await?;
    }
    crate::failpoint!(
        "tick.observations.after",
        return Err(crate::failpoint::db_error().into())
    );
    Ok(())
}

/// Applies transitions grouped by (from, to); returns the ids that actually moved.
async fn apply_transitions(
    pool: &Pool,
    transitions: &[Transition],
    gate: &Gate<'_>,
    report: &mut TickReport,
) -> Result<HashSet<String>, CutShort> {
    let mut groups: BTreeMap<(InstanceStatus, InstanceStatus), Vec<Move>> = BTreeMap::new();
    for t in transitions {
        groups.entry((t.from, t.to)).or_default().push(Move {
            id: t.id.clone(),
            since: t.since,
            reason: t.reason.clone(),
        });
    }
    let mut applied = HashSet::new();
    for ((from, to), moves) in groups {
        gate.admit().await.or_else(allow_budget)?;
        let moved = async {
            crate::failpoint!(
                "tick.transition.before",
                return Err(crate::failpoint::db_error().into())
            );
            let moved = instances::transition(&pool.db, from, to, &moves, Actor::Tick).await;
            crate::failpoint!(
                "tick.transition.after",
                return Err(crate::failpoint::db_error().into())
            );
            moved
        };
        match moved.await {
            Ok(moved) => {
                let moved: HashSet<String> = moved.into_iter().collect();
                for m in moves.into_iter().filter(|m| moved.contains(&m.id)) {
                    tracing::info!(instance_id = %m.id, %from, %to, reason = %m.reason, "transition");
                    report.transitions.push(super::Moved {
                        id: m.id,
                        from,
                        to,
                        reason: m.reason,
                    });
                }
                applied.extend(moved);
            }
            Err(e) => report.error(&format!("{from} → {to}"), None, &e),
        }
    }
    Ok(applied)
}

/// An instance whose resources to destroy: its tools' resources, then its compute resource.
struct Target {
    id: String,
    attempts: i32,
    resource: ResourceRef,
    services: Vec<services::Owned>,
}

/// Destroys what an instance owns, tools first, forgetting each tool resource as it goes (so a
/// retry does not repeat what is done). A resource whose tool is no longer configured cannot be
/// destroyed here: it is abandoned (recorded for an operator) rather than holding the teardown,
/// and the compute, which bills, goes anyway. The compute resource goes last: while it exists,
/// the instance is found and retried. Returns the resources abandoned, as `<tool>:<resource id>`.
async fn destroy_target(pool: &Pool, target: &Target) -> crate::Result<Vec<String>> {
    let mut abandoned = Vec::new();
    for owned in &target.services {
        let Some(tool) = pool.tools.get(&owned.tool_id) else {
            tracing::warn!(instance_id = %target.id, tool = %owned.tool_id, resource_id = %owned.resource_id,
                "tool not configured: its resource is abandoned for an operator to clean");
            crate::failpoint!(
                "teardown.services_abandon.before",
                return Err(crate::failpoint::db_error().into())
            );
            services::abandon(&pool.db, &target.id, &owned.tool_id, &owned.resource_id).await?;
            crate::failpoint!(
                "teardown.services_abandon.after",
                return Err(crate::failpoint::db_error().into())
            );
            abandoned.push(format!("{}:{}", owned.tool_id, owned.resource_id));
            continue;
        };
        crate::failpoint!(
            "teardown.tool_destroy.before",
            return Err(Error::outbound(tool.step(), "delete", Failure::Connection))
        );
        tool.destroy(&owned.resource_id).await?;
        crate::failpoint!(
            "teardown.tool_destroy.after",
            return Err(Error::outbound(tool.step(), "delete", Failure::Connection))
        );
        services::forget(
            &pool.db,
            &target.id,
            &owned.tool_id,
            &owned.resource_id,
            "destroyed",
        )
        .await?;
        crate::failpoint!(
            "teardown.services_forget.after",
            return Err(crate::failpoint::db_error().into())
        );
    }
    crate::failpoint!(
        "teardown.provider_destroy.before",
        return Err(Error::provider(
            pool.provider.kind().as_str(),
            "failpoint: delete failed"
        ))
    );
    pool.provider.destroy(&target.resource).await?;
    crate::failpoint!(
        "teardown.provider_destroy.after",
        return Err(Error::provider(
            pool.provider.kind().as_str(),
            "delete timed out"
        ))
    );
    Ok(abandoned)
}

/// Destroys each instance's resources, then its row. Failures are retried by later ticks with
/// jittered exponential backoff; the row goes only when everything it owns is gone.
async fn destroy_instances(
    pool: &Pool,
    mut targets: Vec<Target>,
    gate: &Gate<'_>,
    report: &mut TickReport,
) -> Result<(), CutShort> {
    if targets.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = targets.iter().map(|t| t.id.as_str()).collect();
    match services::owned_by(&pool.db, &ids).await {
        Ok(owned) => {
            let at: HashMap<String, usize> = targets
                .iter()
                .enumerate()
                .map(|(i, t)| (t.id.clone(), i))
                .collect();
            for service in owned {
                if let Some(&i) = at.get(&service.instance_id) {
                    targets[i].services.push(service);
                }
            }
        }
        Err(e) => {
            // Without knowing its tools, no instance may go: try again next tick.
            report.error("reading tool resources", None, &e);
            return Ok(());
        }
    }
    let (results, cut) = each_while_open(targets, gate, |target| {
        let span = tracing::info_span!("destroy", instance_id = %target.id);
        async move {
            // A destroy cut past the budget is retried by the next tick: each step is idempotent.
            let result = gate
                .bounded(pool.settings.tick_overrun(), destroy_target(pool, &target))
                .await
                .unwrap_or_else(|| Err(Error::outbound("tick", "destroy", Failure::TimedOut)));
            (target, result)
        }
        .instrument(span)
    })
    .await;

    let mut gone = Vec::new();
    let (mut failed_ids, mut failed_errors, mut failed_delays) =
        (Vec::new(), Vec::new(), Vec::new());
    for (target, result) in results {
        match result {
            Ok(abandoned) => {
                report.tool_resources_abandoned.extend(abandoned);
                gone.push(target.id);
            }
            Err(e) => {
                report.error("destroying", Some(&target.id), &e);
                failed_delays.push(backoff(target.attempts + 1).as_millis() as i64);
                failed_ids.push(target.id);
                failed_errors.push(e.public_message());
            }
        }
    }
    // What was destroyed is recorded even past the budget: the resources are gone either way.
    // A lost lease stops it: the next tick destroys again (idempotent), then deletes.
    if !gone.is_empty() {
        gate.admit().await.or_else(allow_budget)?;
        crate::failpoint!("teardown.row_delete.before", return Ok(()));
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
        crate::failpoint!("teardown.row_delete.after", return Ok(()));
        match deleted {
            Ok(ids) => report.destroyed.extend(ids),
            Err(e) => report.error("deleting destroyed rows", None, &e),
        }
    }
    if !failed_ids.is_empty() {
        gate.admit().await.or_else(allow_budget)?;
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
        crate::failpoint!("teardown.record_failures.after");
        if let Err(e) = result {
            report.error("recording destroy failures", None, &e.into());
        }
    }
    cut.map_or(Ok(()), Err)
}

/// Bookkeeping for work already done may run past the budget; not past a lost lease or shutdown.
fn allow_budget(why: CutShort) -> Result<(), CutShort> {
    match why {
        CutShort::Budget => Ok(()),
        other => Err(other),
    }
}

/// 2^attempts seconds, capped, with ±25 % jitter so that a fleet of failures does not retry in step.
fn backoff(attempts: i32) -> Duration {
    let base = Duration::from_secs(1u64 << attempts.clamp(0, 10)).min(MAX_BACKOFF);
    base.mul_f64(rand::thread_rng().gen_range(0.75..1.25))
}

async fn delete_orphans(
    pool: &Pool,
    plan: &Plan,
    gate: &Gate<'_>,
    report: &mut TickReport,
) -> Result<(), CutShort> {
    let (results, cut) = each_while_open(plan.orphans.clone(), gate, |orphan| async move {
        let resource = ResourceRef {
            name: orphan.name.clone(),
            resource_id: Some(orphan.resource_id.clone()),
            details: serde_json::Value::Null,
        };
        tracing::info!(resource = %orphan.name, "deleting orphan");
        let deleting = async {
            crate::failpoint!(
                "tick.orphan_delete.before",
                return Err(Error::provider("tick", "failpoint: delete failed"))
            );
            let deleted = pool.provider.destroy(&resource).await;
            crate::failpoint!(
                "tick.orphan_delete.after",
                return Err(Error::provider("tick", "delete timed out"))
            );
            deleted
        };
        let result = gate
            .bounded(pool.settings.tick_overrun(), deleting)
            .await
            .unwrap_or_else(|| Err(Error::outbound("tick", "delete orphan", Failure::TimedOut)));
        (orphan, result)
    })
    .await;
    for (orphan, result) in results {
        match result {
            Ok(()) => report.orphans_deleted.push(orphan.name),
            Err(e) => report.error(&format!("deleting orphan {}", orphan.name), None, &e),
        }
    }
    cut.map_or(Ok(()), Err)
}

/// Calls claimed agents' resources after them, best effort: a rename that fails is reported and
/// made by a later tick, since the plan asks again as long as the listing shows the old name. The
/// claim never waits for it.
async fn rename_claimed(
    pool: &Pool,
    rows: &HashMap<&str, &Row>,
    plan: &Plan,
    gate: &Gate<'_>,
    report: &mut TickReport,
) -> Result<(), CutShort> {
    let renames: Vec<(Rename, ResourceRef)> = plan
        .renames
        .iter()
        .filter_map(|rename| {
            let row = rows.get(rename.id.as_str())?;
            Some((
                rename.clone(),
                ResourceRef {
                    name: row.instance.name.clone(),
                    resource_id: row.resource_id.clone(),
                    details: row.details.clone().unwrap_or_default(),
                },
            ))
        })
        .collect();
    let (results, cut) = each_while_open(renames, gate, |(rename, resource)| async move {
        let span = tracing::info_span!("rename", instance_id = %rename.id);
        let renaming = pool.provider.rename(&resource, &rename.name);
        let result = gate
            .bounded(pool.settings.tick_overrun(), renaming)
            .instrument(span)
            .await
            .unwrap_or_else(|| Some(Err(Error::outbound("tick", "rename", Failure::TimedOut))));
        (rename, result)
    })
    .await;
    for (rename, result) in results {
        match result {
            // This provider's names are fixed.
            None => {}
            Some(Ok(())) => {
                tracing::info!(instance_id = %rename.id, name = %rename.name, "renamed after its agent");
                report.renamed.push(rename.id);
            }
            // Gone meanwhile (destroyed by an operator): nothing left to name.
            Some(Err(Error::Outbound {
                failure: Failure::NotFound,
                ..
            })) => {}
            Some(Err(e)) => report.error("renaming after the agent", Some(&rename.id), &e),
        }
    }
    cut.map_or(Ok(()), Err)
}

async fn delete_tool_orphans(
    pool: &Pool,
    plan: &Plan,
    gate: &Gate<'_>,
    report: &mut TickReport,
) -> Result<(), CutShort> {
    let (results, cut) = each_while_open(plan.tool_orphans.clone(), gate, |orphan| async move {
        tracing::info!(tool = %orphan.tool_id, resource = %orphan.name, "deleting a tool orphan");
        let result = match pool.tools.get(&orphan.tool_id) {
            Some(tool) => {
                let deleting = async {
                    crate::failpoint!(
                        "tick.tool_orphan_delete.before",
                        return Err(Error::outbound(tool.step(), "delete", Failure::Connection))
                    );
                    let deleted = tool.destroy(&orphan.resource_id).await;
                    crate::failpoint!(
                        "tick.tool_orphan_delete.after",
                        return Err(Error::outbound(tool.step(), "delete", Failure::Connection))
                    );
                    deleted
                };
                gate.bounded(pool.settings.tick_overrun(), deleting)
                    .await
                    .unwrap_or_else(|| {
                        Err(Error::outbound("tick", "delete orphan", Failure::TimedOut))
                    })
            }
            None => Ok(()),
        };
        (orphan, result)
    })
    .await;
    for (orphan, result) in results {
        let label = format!("{}:{}", orphan.tool_id, orphan.resource_id);
        match result {
            Ok(()) => report.tool_orphans_deleted.push(label),
            Err(e) => report.error(&format!("deleting orphan {label}"), None, &e),
        }
    }
    cut.map_or(Ok(()), Err)
}

async fn reserve_instances(
    pool: &Pool,
    wanted: u32,
    gate: &Gate<'_>,
    report: &mut TickReport,
) -> Result<Option<creation::Batch>, CutShort> {
    if wanted == 0 {
        return Ok(None);
    }
    gate.admit().await.or_else(allow_budget)?;
    match creation::reserve(pool, wanted, Actor::Tick, "replenish").await {
        Ok(batch) => Ok(Some(batch)),
        Err(e) => {
            report.error("reserving instances", None, &e);
            Ok(None)
        }
    }
}

/// Abandoned resources whose tool is configured again are destroyed and forgotten; the others
/// wait for an operator.
async fn destroy_abandoned(
    pool: &Pool,
    gate: &Gate<'_>,
    report: &mut TickReport,
) -> Result<(), CutShort> {
    let abandoned = match services::abandoned(&pool.db).await {
        Ok(abandoned) => abandoned,
        Err(e) => {
            report.error("reading abandoned tool resources", None, &e);
            return Ok(());
        }
    };
    let (back, waiting): (Vec<_>, Vec<_>) = abandoned
        .into_iter()
        .partition(|a| pool.tools.get(&a.tool_id).is_some());
    report.abandoned = Some(waiting.len());
    // The orphan pass may have deleted one already this tick (it carries our name): then only
    // its record is left to forget.
    let deleted: HashSet<String> = report.tool_orphans_deleted.iter().cloned().collect();
    let deleted = &deleted;
    let (results, cut) = each_while_open(back, gate, |a| async move {
        let label = format!("{}:{}", a.tool_id, a.resource_id);
        let fresh = !deleted.contains(&label);
        let result = match pool.tools.get(&a.tool_id) {
            Some(tool) if fresh => gate
                .bounded(pool.settings.tick_overrun(), async {
                    crate::failpoint!(
                        "teardown.abandoned_destroy.before",
                        return Err(Error::outbound(tool.step(), "delete", Failure::Connection))
                    );
                    let deleted = tool.destroy(&a.resource_id).await;
                    crate::failpoint!(
                        "teardown.abandoned_destroy.after",
                        return Err(Error::outbound(tool.step(), "delete", Failure::Connection))
                    );
                    deleted
                })
                .await
                .unwrap_or_else(|| Err(Error::outbound("tick", "destroy", Failure::TimedOut))),
            _ => Ok(()),
        };
        let result = match result {
            Ok(()) => services::forget_abandoned(&pool.db, &a.tool_id, &a.resource_id).await,
            Err(e) => Err(e),
        };
        (label, fresh, result)
    })
    .await;
    for (label, fresh, result) in results {
        match result {
            Ok(()) if fresh => report.tool_orphans_deleted.push(label),
            Ok(()) => {}
            Err(e) => {
                report.error(&format!("destroying abandoned {label}"), None, &e);
                report.abandoned = report.abandoned.map(|n| n + 1);
            }
        }
    }
    cut.map_or(Ok(()), Err)
}

/// A creator silent past `CREATE_TIMEOUT_MS` died: its rows are judged by their own age, which is
/// older still, so its record says nothing more.
async fn forget_silent_creators(pool: &Pool) -> crate::Result<()> {
    crate::failpoint!(
        "tick.forget_creators.before",
        return Err(crate::failpoint::db_error().into())
    );
    let timeout_ms = i64::try_from(pool.settings.creation.create_timeout_ms).unwrap_or(i64::MAX);
    sqlx::query("DELETE FROM creators WHERE alive_at < now() - $1 * interval '1 millisecond'")
        .bind(timeout_ms)
        .execute(&pool.db)
        .await?;
    Ok(())
}

async fn forget_old_claim_requests(pool: &Pool) -> crate::Result<()> {
    crate::failpoint!(
        "tick.forget_claim_requests.before",
        return Err(crate::failpoint::db_error().into())
    );
    sqlx::query(&format!(
        "DELETE FROM claim_requests WHERE created_at < now() - interval '{IDEMPOTENCY_RETENTION}'"
    ))
    .execute(&pool.db)
    .await?;
    Ok(())
}

/// Runs `work` on each item, `PROVIDER_CONCURRENCY` at a time, asking the gate when each item's
/// turn comes (not once for the batch): an item whose turn comes after the gate closed is not
/// started and waits for the next tick. Returns what finished, and why the rest did not start.
async fn each_while_open<I, T, R, F, Fut>(
    items: I,
    gate: &Gate<'_>,
    work: F,
) -> (Vec<R>, Option<CutShort>)
where
    I: IntoIterator<Item = T>,
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = R>,
{
    let work = &work;
    let outcomes: Vec<Result<R, CutShort>> = futures::stream::iter(items)
        // `buffer_unordered` pulls the next item only when a slot is free, so the gate is asked
        // when the item would start.
        .map(|item| async move {
            gate.admit().await?;
            Ok(work(item).await)
        })
        .buffer_unordered(PROVIDER_CONCURRENCY)
        .collect()
        .await;
    let mut done = Vec::new();
    let mut cut = None;
    for outcome in outcomes {
        match outcome {
            Ok(r) => done.push(r),
            Err(why) => cut = Some(why),
        }
    }
    (done, cut)
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;

    #[tokio::test]
    async fn items_whose_turn_comes_after_the_gate_closed_are_left_for_the_next_tick() {
        // The gate closes after 11 starts, more than one batch of PROVIDER_CONCURRENCY.
        let stop = CancellationToken::new();
        let gate = Gate::until(stop.clone());
        let started = std::sync::atomic::AtomicUsize::new(0);
        let (done, cut) = each_while_open(0..30u32, &gate, |i| {
            let n = started.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if n == 11 {
                stop.cancel();
            }
            async move {
                tokio::task::yield_now().await;
                i
            }
        })
        .await;
        assert_eq!(done.len(), 11);
        assert_eq!(cut, Some(CutShort::Shutdown));
        let mut done = done;
        done.sort_unstable();
        assert_eq!(done, (0..11).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn with_the_gate_open_everything_runs() {
        let gate = Gate::until(CancellationToken::new());
        let (done, cut) = each_while_open(vec![1u32, 2, 3], &gate, |i| async move { i * 2 }).await;
        assert_eq!(cut, None);
        assert_eq!(done.iter().sum::<u32>(), 12);
    }
}
