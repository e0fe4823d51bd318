//! Reads the state the tick decides on: the provider's resources, then the rows, then runtime
//! health.
//!
//! Resources are listed before rows are read, on purpose: a row is committed before its resource
//! is created, so every resource in the listing has its row committed before the rows are read,
//! and a listed resource without a row really is an orphan, however slow the listing and however
//! many creations run meanwhile.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use futures::future::OptionFuture;
use futures::StreamExt;
use tracing::Instrument;

use crate::domain::{
    Health, Instance, InstanceStatus, ObservedResource, RecordedTool, ResourceStatus, ToolResource,
    INSTANCE_COLUMNS,
};
use crate::error::Result;
use crate::gate::Gate;
use crate::Pool;

use super::mode::Mode;
use super::TickReport;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Row {
    #[sqlx(flatten)]
    pub instance: Instance,
    pub resource_id: Option<String>,
    /// What the provider recorded at creation (`instance_infra.details`).
    pub details: Option<serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The database's clock, so that ages compare like with like across replicas.
    pub now: DateTime<Utc>,
    pub rows: Vec<Row>,
    /// The provider's resources; `None` when the listing failed or was not taken (a kicked
    /// tick). Unknown is not empty: nothing is judged absent and nothing is an orphan then.
    pub resources: Option<Vec<ObservedResource>>,
    /// Answers of the runtimes asked this tick, by instance id. A runtime not asked (budget, or not
    /// due) is not in here, which is not a failure.
    pub health: HashMap<String, Health>,
    /// The budget ended the health checks before every runtime due was asked.
    pub health_cut_short: bool,
    /// Tool resources of ours, listed before the rows were read (tools whose listing failed are
    /// left out: nothing of theirs is an orphan or missing then).
    pub tool_resources: Vec<ToolResource>,
    /// The tools whose listing this tick took: only their resources can be judged.
    pub tools_listed: HashSet<String>,
    /// Every tool resource a row records; read only when some tool was listed.
    pub recorded: Vec<RecordedTool>,
}

pub async fn take(
    pool: &Pool,
    mode: Mode,
    gate: &Gate<'_>,
    report: &mut TickReport,
) -> Result<Snapshot> {
    let resources = match mode {
        Mode::Kick => None,
        Mode::Full | Mode::Reconcile => {
            match pool
                .provider
                .list(&pool.settings.pool.pool_name_prefix)
                .await
            {
                Ok(resources) => Some(resources),
                Err(e) => {
                    report.error("listing resources", None, &e);
                    None
                }
            }
        }
    };
    let mut tool_resources = Vec::new();
    let mut tools_listed = HashSet::new();
    if mode != Mode::Kick {
        for tool in &pool.tools.tools {
            match tool.list(&pool.settings.pool.pool_name_prefix).await {
                // A tool that holds nothing outside (a wallet made here) lists nothing to judge.
                Ok(None) => {}
                Ok(Some(listed)) => {
                    tools_listed.insert(tool.id().to_string());
                    tool_resources.extend(listed.into_iter().map(|l| ToolResource {
                        tool_id: tool.id().to_string(),
                        resource_id: l.resource_id,
                        name: l.name,
                    }))
                }
                Err(e) => report.error(&format!("listing {} resources", tool.step()), None, &e),
            }
        }
    }
    let (now, rows) = read_rows(pool).await?;
    let recorded: Vec<RecordedTool> = if tools_listed.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(
            "SELECT id, instance_id, tool_id, resource_id, absent_since FROM instance_services",
        )
        .fetch_all(&pool.db)
        .await?
    };
    let targets = health_targets(&rows, resources.as_deref(), mode);
    let due = targets.len();
    // A check is started only if it can end within the budget: it may take HEALTH_TIMEOUT_MS.
    let window = gate.closing_early(pool.settings.health.health_timeout());
    let health = check_health(pool, targets, &window).await;
    let mut health_cut_short = false;
    if health.len() < due {
        if let Err(why) = window.peek() {
            report.cut(why);
            health_cut_short = true;
        }
    }
    Ok(Snapshot {
        now,
        rows,
        resources,
        health,
        health_cut_short,
        tool_resources,
        tools_listed,
        recorded,
    })
}

async fn read_rows(pool: &Pool) -> Result<(DateTime<Utc>, Vec<Row>)> {
    let columns = INSTANCE_COLUMNS
        .split(", ")
        .map(|c| format!("i.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {columns}, f.resource_id, f.details
           FROM instances i LEFT JOIN instance_infra f ON f.instance_id = i.id
          ORDER BY i.created_at, i.id"
    ))
    .fetch_all(&pool.db)
    .await?;
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&pool.db)
        .await?;
    Ok((now, rows))
}

/// Which runtimes to ask, least recently asked first, so that a tick cut short by its budget
/// leaves the tail of the fleet for the next one to ask first. A kicked tick asks only `starting`
/// runtimes (so new instances become idle quickly); the whole fleet is asked on the interval.
/// A runtime whose resource the listing shows not running is not asked.
pub fn health_targets(
    rows: &[Row],
    resources: Option<&[ObservedResource]>,
    mode: Mode,
) -> Vec<(String, String)> {
    use InstanceStatus::*;
    let not_running: Option<HashSet<&str>> = resources.map(|listed| {
        let running: HashSet<&str> = listed
            .iter()
            .filter(|r| r.status == ResourceStatus::Running)
            .map(|r| r.name.as_str())
            .collect();
        rows.iter()
            .map(|row| row.instance.name.as_str())
            .filter(|name| !running.contains(name))
            .collect()
    });
    let mut targets: Vec<&Row> = rows
        .iter()
        .filter(|row| {
            matches!(
                (mode, row.instance.status),
                (_, Starting) | (Mode::Full | Mode::Reconcile, Idle | Claimed | Crashed)
            )
        })
        .filter(|row| {
            not_running
                .as_ref()
                .is_none_or(|skip| !skip.contains(row.instance.name.as_str()))
        })
        .filter(|row| row.instance.url.is_some())
        .collect();
    // `None` (never asked) sorts first.
    targets.sort_by_key(|row| (row.instance.last_checked_at, row.instance.created_at));
    targets
        .into_iter()
        .filter_map(|row| Some((row.instance.id.clone(), row.instance.url.clone()?)))
        .collect()
}

/// Asks each runtime, `HEALTH_CONCURRENCY` at a time, each within `HEALTH_TIMEOUT_MS`, starting no
/// check once the gate closes.
async fn check_health(
    pool: &Pool,
    targets: Vec<(String, String)>,
    gate: &Gate<'_>,
) -> HashMap<String, Health> {
    futures::stream::iter(targets)
        .map(|(id, url)| {
            // `buffer_unordered` pulls the next target only when a slot is free, so the gate is
            // asked when the check would start.
            OptionFuture::from(gate.peek().is_ok().then(|| {
                let span = tracing::debug_span!("health", instance_id = %id);
                async move {
                    let health = pool.runtime.health(&url).await;
                    tracing::debug!(?health);
                    (id, health)
                }
                .instrument(span)
            }))
        })
        .buffer_unordered(pool.settings.health.health_concurrency)
        .filter_map(|checked| async move { checked })
        .collect()
        .await
}
