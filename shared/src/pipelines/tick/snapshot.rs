//! Reads the state the tick decides on: the provider's resources, then the rows, then runtime
//! health.
//!
//! Resources are listed before rows are read, on purpose: a row is committed before its resource
//! is created, so every resource in the listing has its row committed before the rows are read,
//! and a listed resource without a row really is an orphan, however slow the listing and however
//! many creations run meanwhile.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

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
                    // A listing paged by offset that shifts while read (a resource made before
                    // the page being read) shows one resource on two pages: it is one resource,
                    // judged and deleted once.
                    let mut seen = HashSet::new();
                    let listed = listed
                        .into_iter()
                        .filter(|l| seen.insert(l.resource_id.clone()));
                    tool_resources.extend(listed.map(|l| ToolResource {
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
    let targets = health_targets(
        &rows,
        resources.as_deref(),
        mode,
        now,
        Cadence::of(&pool.settings),
    );
    let due = targets.len();
    // A check is started only if it can end within the budget: it may take HEALTH_TIMEOUT_MS.
    let window = gate.closing_early(pool.settings.health.health_timeout());
    let health = check_health(pool, targets, &window).await;
    if health.len() < due {
        if let Err(why) = window.peek() {
            report.cut(why);
        }
    }
    Ok(Snapshot {
        now,
        rows,
        resources,
        health,
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

/// When a runtime is due to be asked.
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    /// `HEALTH_INTERVAL_MS`: the longest a running runtime goes without a good sign of life or a
    /// check.
    pub interval: Duration,
    /// How far ahead this tick looks: the next full tick's distance (`TICK_INTERVAL_MS`, zero
    /// when ticks come from elsewhere). A runtime that would pass its interval before then is
    /// asked now, so that none goes longer than the interval between two ticks.
    pub lookahead: Duration,
}

impl Cadence {
    pub fn of(settings: &crate::config::Settings) -> Self {
        Self {
            interval: settings.health.health_interval(),
            lookahead: settings.tick.tick_interval().unwrap_or_default(),
        }
    }
}

/// Which runtimes to ask: starting ones first, then the least recently heard from, so that a
/// tick cut short by its budget leaves the others for the next one to ask first. A kicked tick asks only `starting` runtimes
/// (so new instances become idle quickly). On the interval, a running runtime is asked only when
/// due: never heard from, failing (asked every tick until it recovers or is judged), or last
/// heard from (a check, or a pushed heartbeat) so long ago that it would pass
/// `HEALTH_INTERVAL_MS` before the next tick. A runtime not asked is not judged (see
/// `plan::evidence`): not asked is not dead.
/// A starting or idle runtime whose resource the listing shows not running is not asked (it is
/// replaced anyway); a user's agent always is, since it may serve whatever its last deployment
/// says.
pub fn health_targets(
    rows: &[Row],
    resources: Option<&[ObservedResource]>,
    mode: Mode,
    now: DateTime<Utc>,
    cadence: Cadence,
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
        .filter(|row| row.instance.status == Starting || due(&row.instance, now, cadence))
        .filter(|row| {
            matches!(row.instance.status, Claimed | Crashed)
                || not_running
                    .as_ref()
                    .is_none_or(|skip| !skip.contains(row.instance.id.as_str()))
        })
        .filter(|row| row.instance.url.is_some())
        .collect();
    // Starting runtimes first (few, and one not asked in time is reaped as stuck), then the
    // least recently heard from: `None` (never) sorts first.
    targets.sort_by_key(|row| {
        (
            row.instance.status != Starting,
            heard_from(&row.instance),
            row.instance.created_at,
        )
    });
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

/// The last time the pool heard from a runtime: its last check, or its last good sign of life
/// (a pushed heartbeat is one), whichever is later.
fn heard_from(instance: &Instance) -> Option<DateTime<Utc>> {
    instance.last_checked_at.max(instance.last_ok_at)
}

/// Whether a running runtime is to be asked this tick (see [`health_targets`]).
fn due(instance: &Instance, now: DateTime<Utc>, cadence: Cadence) -> bool {
    if instance.health_failures > 0 {
        return true;
    }
    let Some(heard) = heard_from(instance) else {
        return true;
    };
    let age = (now - heard).to_std().unwrap_or_default();
    age + cadence.lookahead >= cadence.interval
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ResourceStatus::Running;
    use crate::pipelines::tick::plan::fixture::{ago, now, Fixture, MIN};

    const CADENCE: Cadence = Cadence {
        interval: Duration::from_secs(120),
        lookahead: Duration::from_secs(30),
    };

    fn asked(fixture: &Fixture, mode: Mode) -> Vec<String> {
        health_targets(
            &fixture.snapshot.rows,
            fixture.snapshot.resources.as_deref(),
            mode,
            now(),
            CADENCE,
        )
        .into_iter()
        .map(|target| target.id)
        .collect()
    }

    fn heard(
        fixture: Fixture,
        id: &str,
        checked: Option<Duration>,
        ok: Option<Duration>,
    ) -> Fixture {
        fixture.edit(id, |r| {
            r.instance.last_checked_at = checked.map(ago);
            r.instance.last_ok_at = ok.map(ago);
        })
    }

    #[test]
    fn only_the_due_runtimes_are_asked_least_recently_heard_from_first() {
        let mut fixture = Fixture::new();
        for id in ["fresh", "pushed", "stale", "never", "almost"] {
            fixture = fixture.row(id, InstanceStatus::Idle, MIN * 60, Some(Running), None);
        }
        let fixture = heard(fixture, "fresh", Some(MIN / 2), Some(MIN / 2));
        // Checked long ago, but it pushed a heartbeat a minute ago: spared.
        let fixture = heard(fixture, "pushed", Some(MIN * 30), Some(MIN));
        let fixture = heard(fixture, "stale", Some(MIN * 3), Some(MIN * 3));
        // 100 s old: past the interval (120 s) before the next tick, 30 s away.
        let fixture = heard(
            fixture,
            "almost",
            Some(Duration::from_secs(100)),
            Some(Duration::from_secs(100)),
        );
        assert_eq!(asked(&fixture, Mode::Full), ["never", "stale", "almost"]);
    }

    #[test]
    fn a_failing_runtime_is_asked_every_tick() {
        let fixture = Fixture::new()
            .row("a", InstanceStatus::Claimed, MIN * 60, Some(Running), None)
            .failures("a", 1);
        let fixture = heard(fixture, "a", Some(Duration::from_secs(1)), Some(MIN * 5));
        assert_eq!(asked(&fixture, Mode::Full), ["a"]);
    }

    #[test]
    fn a_starting_runtime_is_asked_whenever_it_was_last_asked() {
        let fixture = Fixture::new()
            .row("s", InstanceStatus::Starting, MIN, Some(Running), None)
            .row("i", InstanceStatus::Idle, MIN, Some(Running), None);
        let fixture = heard(fixture, "s", Some(Duration::from_secs(1)), None);
        let fixture = heard(fixture, "i", Some(MIN * 10), None);
        assert_eq!(asked(&fixture, Mode::Full), ["s", "i"]);
        assert_eq!(
            asked(&fixture, Mode::Kick),
            ["s"],
            "a kick asks only starting ones"
        );
    }

    #[test]
    fn without_an_interval_every_runtime_is_asked_every_tick() {
        let fixture = Fixture::new().row("a", InstanceStatus::Idle, MIN, Some(Running), None);
        let fixture = heard(fixture, "a", Some(Duration::ZERO), Some(Duration::ZERO));
        let every = Cadence {
            interval: Duration::ZERO,
            lookahead: Duration::ZERO,
        };
        let targets = health_targets(
            &fixture.snapshot.rows,
            fixture.snapshot.resources.as_deref(),
            Mode::Full,
            now(),
            every,
        );
        assert_eq!(targets.len(), 1);
    }
}
