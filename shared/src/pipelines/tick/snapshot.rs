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

use crate::config::{RecentClaims, Secret, DEMAND_WINDOWS};
use crate::domain::{
    Health, Instance, InstanceStatus, ObservedResource, RecordedTool, ResourceStatus, ToolResource,
    INSTANCE_COLUMNS,
};
use crate::error::{Error, Result};
use crate::gate::{CutShort, Gate};
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
    /// The last heartbeat of the creator still at work on this row, if it has one.
    pub creator_alive_at: Option<DateTime<Utc>>,
    /// The instance's gateway token, which its runtime asks for on readiness too.
    #[sqlx(try_from = "String")]
    pub gateway_token: Secret,
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
    /// Claims started in each of the demand windows up to `now`, for the sizing policy.
    pub recent_claims: RecentClaims,
    /// Creation paused while the provider is at capacity (until its `Retry-After`).
    pub creation_paused: Option<crate::capacity::Pause>,
}

pub async fn take(
    pool: &Pool,
    mode: Mode,
    gate: &Gate<'_>,
    report: &mut TickReport,
) -> Result<Snapshot> {
    // Listings count against the budget: one is started only within it, and one still unread
    // one call's timeout past it is given up. Unread is unknown, never empty.
    let overrun = pool.settings.tick_overrun();
    let prefix = &pool.settings.pool.pool_name_prefix;
    let resources = match mode {
        Mode::Kick => None,
        Mode::Full | Mode::Reconcile => {
            let listing = async {
                crate::failpoint!(
                    "tick.provider_list.before",
                    return Err(crate::Error::provider("tick", "failpoint: listing failed"))
                );
                let listed = pool.provider.list(prefix).await;
                crate::failpoint!(
                    "tick.provider_list.after",
                    return Err(crate::Error::provider("tick", "listing timed out"))
                );
                listed
            };
            match within(gate, overrun, listing).await {
                Ok(Ok(resources)) => Some(resources),
                Ok(Err(e)) => {
                    report.error("listing resources", None, &e);
                    None
                }
                Err(why) => {
                    report.cut(why);
                    None
                }
            }
        }
    };
    let mut tool_resources = Vec::new();
    let mut tools_listed = HashSet::new();
    if mode != Mode::Kick {
        for tool in &pool.tools.tools {
            let listing = async {
                crate::failpoint!(
                    "tick.tool_list.before",
                    return Err(crate::Error::outbound(
                        tool.step(),
                        "list",
                        crate::calls::Failure::Connection
                    ))
                );
                let listed = tool.list(prefix).await;
                crate::failpoint!(
                    "tick.tool_list.after",
                    return Err(crate::Error::outbound(
                        tool.step(),
                        "list",
                        crate::calls::Failure::Connection
                    ))
                );
                listed
            };
            let listed = match within(gate, overrun, listing).await {
                Ok(listed) => listed,
                Err(why) => {
                    report.cut(why);
                    continue;
                }
            };
            match listed {
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
    let resources = resources.filter(|listed| {
        // By id: a claimed agent's resource is renamed after it.
        let listed: HashSet<&str> = listed.iter().map(|r| r.resource_id.as_str()).collect();
        let expected = rows
            .iter()
            .filter(|r| r.instance.status != InstanceStatus::Destroying)
            .filter_map(|r| r.resource_id.as_deref());
        believed(pool.provider.kind().as_str(), expected, &listed, report)
    });
    let recent_claims = recent_claims(pool).await?;
    let creation_paused = crate::capacity::current(&pool.db, pool.provider.kind().as_str()).await?;
    let recorded: Vec<RecordedTool> = if tools_listed.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(
            "SELECT id, instance_id, tool_id, resource_id, absent_since FROM instance_services",
        )
        .fetch_all(&pool.db)
        .await?
    };
    confirm_absences(
        pool,
        &rows,
        &recorded,
        &mut tool_resources,
        &mut tools_listed,
        gate,
        report,
    )
    .await;
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
        recent_claims,
        creation_paused,
    })
}

/// Whether a listing is believed: one that lacks most of the resources the rows say exist (an
/// empty page, a project answered as null, a listing of another account) is not evidence of
/// their absence, and the tick goes on as if it had failed. What really is gone is still found by
/// its health checks.
fn believed<'a>(
    service: &'static str,
    expected: impl Iterator<Item = &'a str>,
    listed: &HashSet<&str>,
    report: &mut TickReport,
) -> bool {
    let (mut total, mut missing) = (0, 0);
    for name in expected {
        total += 1;
        if !listed.contains(name) {
            missing += 1;
        }
    }
    if missing * 2 <= total || missing == 0 {
        return true;
    }
    let error = Error::ImplausibleListing {
        service,
        missing,
        expected: total,
    };
    report.error(&format!("listing {service} resources"), None, &error);
    false
}

/// The tool resources this tick may judge absent are those their tool's listing lacks *and* a
/// lookup by id says are gone: a listing paged by offset skips a resource whenever one before it
/// goes away while the pages are read. A tool whose listing is implausible, or whose lookups fail
/// or are cut off by the budget, has nothing judged this tick.
async fn confirm_absences(
    pool: &Pool,
    rows: &[Row],
    recorded: &[RecordedTool],
    tool_resources: &mut Vec<ToolResource>,
    tools_listed: &mut HashSet<String>,
    gate: &Gate<'_>,
    report: &mut TickReport,
) {
    use InstanceStatus::*;
    // The instances whose tool resources are judged (see `plan::evidence`), by id: their names.
    let settled: HashMap<&str, &str> = rows
        .iter()
        .filter(|r| matches!(r.instance.status, Idle | Claimed | Crashed))
        .map(|r| (r.instance.id.as_str(), r.instance.name.as_str()))
        .collect();
    for tool in &pool.tools.tools {
        let tool_id = tool.id();
        if !tools_listed.contains(tool_id) {
            continue;
        }
        let listed: HashSet<&str> = tool_resources
            .iter()
            .filter(|r| r.tool_id == tool_id)
            .map(|r| r.resource_id.as_str())
            .collect();
        let expected: Vec<&RecordedTool> = recorded
            .iter()
            .filter(|t| t.tool_id == tool_id && settled.contains_key(t.instance_id.as_str()))
            .collect();
        let ids = expected.iter().map(|t| t.resource_id.as_str());
        let plausible = believed(tool.step(), ids, &listed, report);
        let missing: Vec<(String, String)> = expected
            .iter()
            .filter(|t| !listed.contains(t.resource_id.as_str()))
            .map(|t| {
                (
                    t.resource_id.clone(),
                    settled[t.instance_id.as_str()].to_string(),
                )
            })
            .collect();
        let mut judged = plausible;
        for (resource_id, name) in missing {
            if !judged {
                break;
            }
            if let Err(why) = gate.peek() {
                report.cut(why);
                judged = false;
                break;
            }
            let exists = async {
                crate::failpoint!(
                    "tick.tool_exists.before",
                    return Some(Err(crate::Error::outbound(
                        tool.step(),
                        "lookup",
                        crate::calls::Failure::Connection
                    )))
                );
                tool.exists(&resource_id).await
            };
            match exists.await {
                None | Some(Ok(false)) => {}
                Some(Ok(true)) => tool_resources.push(ToolResource {
                    tool_id: tool_id.to_string(),
                    resource_id,
                    name,
                }),
                Some(Err(e)) => {
                    report.error(&format!("looking up a {} resource", tool.step()), None, &e);
                    judged = false;
                }
            }
        }
        if !judged {
            tools_listed.remove(tool_id);
            tool_resources.retain(|r| r.tool_id != tool_id);
        }
    }
}

/// Claims in each demand window: started (`idle` → `claiming`) or missed (nothing idle), each
/// a range scan of the last hour through an index on time.
async fn recent_claims(pool: &Pool) -> Result<RecentClaims> {
    let [short, mid, long] = DEMAND_WINDOWS.map(|w| w.as_secs_f64());
    let counts: (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE at > now() - make_interval(secs => $1)),
                count(*) FILTER (WHERE at > now() - make_interval(secs => $2)),
                count(*)
           FROM (SELECT at FROM instance_events
                  WHERE to_status = 'claiming' AND at > now() - make_interval(secs => $3)
                 UNION ALL
                 SELECT at FROM claim_misses WHERE at > now() - make_interval(secs => $3)) c",
    )
    .bind(short)
    .bind(mid)
    .bind(long)
    .fetch_one(&pool.db)
    .await?;
    let n = |c: i64| u32::try_from(c).unwrap_or(u32::MAX);
    Ok([n(counts.0), n(counts.1), n(counts.2)])
}

/// Starts `work` only while the gate is open, and gives it up `overrun` past the deadline.
async fn within<T>(
    gate: &Gate<'_>,
    overrun: std::time::Duration,
    work: impl std::future::Future<Output = T>,
) -> Result<T, CutShort> {
    gate.peek()?;
    gate.bounded(overrun, work).await.ok_or(CutShort::Budget)
}

async fn read_rows(pool: &Pool) -> Result<(DateTime<Utc>, Vec<Row>)> {
    let columns = INSTANCE_COLUMNS
        .split(", ")
        .map(|c| format!("i.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {columns}, f.resource_id, f.details, c.alive_at AS creator_alive_at, i.gateway_token
           FROM instances i LEFT JOIN instance_infra f ON f.instance_id = i.id
                LEFT JOIN creators c ON c.id = i.creator_id
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
/// A starting or idle runtime whose resource the listing shows not running is not asked (it is
/// replaced anyway); a user's agent always is, since it may serve whatever its last deployment
/// says.
pub fn health_targets(
    rows: &[Row],
    resources: Option<&[ObservedResource]>,
    mode: Mode,
) -> Vec<HealthTarget> {
    use InstanceStatus::*;
    let not_running: Option<HashSet<&str>> = resources.map(|listed| {
        let running: HashSet<&str> = listed
            .iter()
            .filter(|r| r.status == ResourceStatus::Running)
            .map(|r| r.resource_id.as_str())
            .collect();
        rows.iter()
            .filter(|row| {
                row.resource_id
                    .as_deref()
                    .is_none_or(|id| !running.contains(id))
            })
            .map(|row| row.instance.id.as_str())
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
            matches!(row.instance.status, Claimed | Crashed)
                || not_running
                    .as_ref()
                    .is_none_or(|skip| !skip.contains(row.instance.id.as_str()))
        })
        .filter(|row| row.instance.url.is_some())
        .collect();
    // `None` (never asked) sorts first.
    targets.sort_by_key(|row| (row.instance.last_checked_at, row.instance.created_at));
    targets
        .into_iter()
        .filter_map(|row| {
            Some(HealthTarget {
                id: row.instance.id.clone(),
                url: row.instance.url.clone()?,
                gateway_token: row.gateway_token.clone(),
            })
        })
        .collect()
}

/// A runtime to ask, and the token it asks for.
#[derive(Debug)]
pub struct HealthTarget {
    pub id: String,
    pub url: String,
    pub gateway_token: Secret,
}

/// Asks each runtime, `HEALTH_CONCURRENCY` at a time, each within `HEALTH_TIMEOUT_MS`, starting no
/// check once the gate closes.
async fn check_health(
    pool: &Pool,
    targets: Vec<HealthTarget>,
    gate: &Gate<'_>,
) -> HashMap<String, Health> {
    futures::stream::iter(targets)
        .map(
            |HealthTarget {
                 id,
                 url,
                 gateway_token,
             }| {
                // `buffer_unordered` pulls the next target only when a slot is free, so the gate is
                // asked when the check would start.
                OptionFuture::from(gate.peek().is_ok().then(|| {
                    let span = tracing::debug_span!("health", instance_id = %id);
                    async move {
                        crate::failpoint!("tick.health.before", return (id, Health::Unreachable));
                        let health = pool.runtime.health(&url, gateway_token.expose()).await;
                        crate::failpoint!("tick.health.after", return (id, Health::Unreachable));
                        tracing::debug!(?health);
                        (id, health)
                    }
                    .instrument(span)
                }))
            },
        )
        .buffer_unordered(pool.settings.health.health_concurrency)
        .filter_map(|checked| async move { checked })
        .collect()
        .await
}
