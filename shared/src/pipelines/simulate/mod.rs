//! `agentpool simulate`: replays a claim trace through the tick's own plan on a virtual clock.
//!
//! Every tick builds a [`Snapshot`] of the simulated fleet and calls [`plan::decide`] — the same
//! function the real tick calls — then carries the plan out instantly: creations start and become
//! ready `boot` later (seen by the next tick, as a health check would), destructions are done at
//! once. Full ticks come every `tick_interval`; each claim kicks a tick, as `POST /api/pool/claim`
//! does. A claim takes the oldest idle agent or is a **miss**; a claimed agent leaves the pool (its
//! life is its user's). Idle instance-hours count agents idle and unclaimed, not those booting.

pub mod recommend;
pub mod trace;

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{SizingPolicy, DEMAND_WINDOWS};
use crate::domain::{Health, Instance, InstanceStatus};
use crate::error::{Error, Result};
use crate::tick::plan::{self, Mode, Rules};
use crate::tick::snapshot::{Row, Snapshot};

/// The deployment being simulated.
#[derive(Debug, Clone, Copy)]
pub struct Model {
    /// From creation to idle.
    pub boot: Duration,
    pub tick_interval: Duration,
    /// `maxTotal` when the policy does not say.
    pub max_total: u32,
}

impl Default for Model {
    fn default() -> Self {
        Self {
            boot: Duration::from_secs(90),
            tick_interval: Duration::from_secs(30),
            max_total: 200,
        }
    }
}

/// A policy to replay: the body `PUT /api/pool/settings` takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    pub min_idle: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_total: Option<u32>,
    #[serde(default)]
    pub sizing: SizingPolicy,
}

impl Policy {
    pub fn fixed(min_idle: u32) -> Self {
        Self {
            min_idle,
            max_total: None,
            sizing: SizingPolicy::default(),
        }
    }
}

/// What a replay counted.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub claims: u32,
    pub misses: u32,
    pub idle_hours: f64,
    pub creations: u32,
    pub destructions: u32,
    /// One per full tick, for a chart.
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

impl Outcome {
    pub fn miss_rate(&self) -> f64 {
        if self.claims == 0 {
            0.0
        } else {
            f64::from(self.misses) / f64::from(self.claims)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at: DateTime<Utc>,
    pub idle: u32,
    pub starting: u32,
    pub target: u32,
}

/// The hour before the trace's first hour: the pool fills before anything is counted.
const WARM_UP: chrono::Duration = chrono::Duration::hours(1);

/// Replays `claims` (sorted) under `policy`. Counting runs from the first claim's hour to the end
/// of the last claim's hour.
pub fn run(
    claims: &[DateTime<Utc>],
    policy: &Policy,
    model: &Model,
    record: bool,
) -> Result<Outcome> {
    let (Some(&first), Some(&last)) = (claims.first(), claims.last()) else {
        return Ok(Outcome::default());
    };
    let hour = chrono::Duration::hours(1);
    let counted_from = first
        .duration_trunc(hour)
        .map_err(|e| Error::Invalid(format!("trace start: {e}")))?;
    let end = last
        .duration_trunc(hour)
        .map_err(|e| Error::Invalid(format!("trace end: {e}")))?
        + hour;
    let interval = chrono::Duration::from_std(model.tick_interval)
        .map_err(|e| Error::Invalid(format!("tick interval: {e}")))?;
    if interval <= chrono::Duration::zero() {
        return Err(Error::Invalid("the tick interval must be positive".into()));
    }
    let mut sim = Sim::new(policy, model, record)?;
    let mut next_tick = counted_from - WARM_UP;
    sim.clock = next_tick;
    sim.counted_from = counted_from;
    let mut pending = claims.iter().peekable();
    loop {
        match pending.peek() {
            Some(&&at) if at < next_tick => {
                pending.next();
                sim.advance(at);
                sim.claim(at);
                sim.tick(Mode::Kick);
            }
            _ if next_tick >= end => break,
            _ => {
                sim.advance(next_tick);
                sim.tick(Mode::Full);
                next_tick += interval;
            }
        }
    }
    sim.advance(end);
    Ok(sim.outcome)
}

struct Sim {
    rules: Rules,
    boot: chrono::Duration,
    record: bool,
    clock: DateTime<Utc>,
    counted_from: DateTime<Utc>,
    /// In creation order, as the claim's query and the snapshot sort; moved into each tick's
    /// snapshot and back, never copied.
    fleet: Vec<Row>,
    /// When each agent of `fleet` (same index) is ready.
    ready_at: Vec<DateTime<Utc>>,
    /// Claims in the last hour, served or missed (as the tick counts them), oldest first.
    demand: VecDeque<DateTime<Utc>>,
    next_id: u64,
    idle_seconds: f64,
    outcome: Outcome,
}

impl Sim {
    fn new(policy: &Policy, model: &Model, record: bool) -> Result<Self> {
        let max_total = policy.max_total.unwrap_or(model.max_total);
        if policy.min_idle > max_total {
            return Err(Error::Invalid(format!(
                "minIdle ({}) must not be larger than maxTotal ({max_total})",
                policy.min_idle
            )));
        }
        let sizing = policy.sizing.compile(max_total).map_err(Error::Invalid)?;
        let boot = chrono::Duration::from_std(model.boot)
            .map_err(|e| Error::Invalid(format!("boot time: {e}")))?;
        Ok(Self {
            rules: Rules {
                min_idle: policy.min_idle,
                max_total,
                // Generous, so that a slow boot is never taken for a stuck one.
                stuck_timeout: (model.boot * 2).max(Duration::from_secs(900)),
                claim_timeout: Duration::from_secs(120),
                create_timeout: (model.boot * 2).max(Duration::from_secs(120)),
                recycle_timeout: Duration::from_secs(120),
                health_failure_threshold: 3,
                health_grace: Duration::from_secs(60),
                sizing,
                // Simulated instances are never renamed (nothing is listed).
                rename_with_prefix: None,
            },
            boot,
            record,
            clock: DateTime::<Utc>::MIN_UTC,
            counted_from: DateTime::<Utc>::MIN_UTC,
            fleet: Vec::new(),
            ready_at: Vec::new(),
            demand: VecDeque::new(),
            next_id: 0,
            idle_seconds: 0.0,
            outcome: Outcome::default(),
        })
    }

    fn count(&self, status: InstanceStatus) -> u32 {
        self.fleet
            .iter()
            .filter(|a| a.instance.status == status)
            .count() as u32
    }

    /// Moves the clock to `to`, adding the idle time between (from `counted_from` on).
    fn advance(&mut self, to: DateTime<Utc>) {
        let from = self.clock.max(self.counted_from);
        if to > from {
            let idle = f64::from(self.count(InstanceStatus::Idle));
            self.idle_seconds += idle * (to - from).as_seconds_f64();
            self.outcome.idle_hours = self.idle_seconds / 3600.0;
        }
        self.clock = self.clock.max(to);
    }

    fn claim(&mut self, at: DateTime<Utc>) {
        if at >= self.counted_from {
            self.outcome.claims += 1;
        }
        // The oldest idle agent: the fleet is kept in creation order, as the claim's query sorts.
        match self
            .fleet
            .iter()
            .position(|a| a.instance.status == InstanceStatus::Idle)
        {
            Some(i) => {
                self.fleet.remove(i);
                self.ready_at.remove(i);
            }
            None if at >= self.counted_from => self.outcome.misses += 1,
            None => {}
        }
        self.demand.push_back(at);
    }

    fn tick(&mut self, mode: Mode) {
        let now = self.clock;
        let hour = now - chrono::Duration::from_std(DEMAND_WINDOWS[2]).unwrap_or(WARM_UP);
        while self.demand.front().is_some_and(|&t| t <= hour) {
            self.demand.pop_front();
        }
        let mut recent_claims = [0u32; 3];
        for (n, window) in recent_claims.iter_mut().zip(DEMAND_WINDOWS) {
            let since = now - chrono::Duration::from_std(window).unwrap_or(WARM_UP);
            *n = self.demand.iter().rev().take_while(|&&t| t > since).count() as u32;
        }
        let health = self
            .fleet
            .iter()
            .zip(&self.ready_at)
            .filter(|(a, ready)| a.instance.status == InstanceStatus::Starting && **ready <= now)
            .map(|(a, _)| {
                (
                    a.instance.id.clone(),
                    Health::Ready {
                        conversation_id: None,
                    },
                )
            })
            .collect();
        let snapshot = Snapshot {
            now,
            rows: std::mem::take(&mut self.fleet),
            // A listing is not simulated: nothing is judged absent, nothing is an orphan.
            resources: None,
            health,
            tool_resources: Vec::new(),
            tools_listed: Default::default(),
            recorded: Vec::new(),
            recent_claims,
            creation_paused: None,
        };
        let plan = plan::decide(&snapshot, &self.rules, mode);
        let moves: HashMap<&str, InstanceStatus> = plan
            .transitions
            .iter()
            .map(|t| (t.id.as_str(), t.to))
            .collect();
        let counted = now >= self.counted_from;
        let mut destroyed = 0;
        let mut fleet = Vec::with_capacity(snapshot.rows.len() + plan.create as usize);
        let mut ready_at = Vec::with_capacity(fleet.capacity());
        for (mut row, ready) in snapshot.rows.into_iter().zip(self.ready_at.drain(..)) {
            match moves.get(row.instance.id.as_str()) {
                Some(InstanceStatus::Destroying) => destroyed += 1,
                moved => {
                    if let Some(&to) = moved {
                        row.instance.status = to;
                        row.instance.status_since = now;
                    }
                    fleet.push(row);
                    ready_at.push(ready);
                }
            }
        }
        drop(moves);
        self.fleet = fleet;
        self.ready_at = ready_at;
        for _ in 0..plan.create {
            self.next_id += 1;
            let id = format!("sim{:07}", self.next_id);
            self.fleet.push(row(&id, now));
            self.ready_at.push(now + self.boot);
        }
        if counted {
            self.outcome.destructions += destroyed;
            self.outcome.creations += plan.create;
        }
        if self.record && mode == Mode::Full {
            self.outcome.samples.push(Sample {
                at: now,
                idle: self.count(InstanceStatus::Idle),
                starting: self.count(InstanceStatus::Starting),
                target: plan.target.min_idle,
            });
        }
    }
}

fn row(id: &str, now: DateTime<Utc>) -> Row {
    Row {
        instance: Instance::new(
            id,
            format!("ap-{id}"),
            Some(format!("sim://{id}")),
            InstanceStatus::Starting,
            now,
        ),
        resource_id: Some(format!("ap-{id}")),
        details: None,
        // The resource exists from the start, so the creator's liveness is never asked.
        creator_alive_at: None,
        // No runtime is asked.
        gateway_token: crate::config::Secret::new(String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn model() -> Model {
        Model {
            boot: Duration::from_secs(90),
            tick_interval: Duration::from_secs(30),
            max_total: 50,
        }
    }

    /// Counted by hand: the hour 09:00–10:00, ticks every 30 s, 90 s to boot.
    ///
    /// minIdle 2, warm at 09:00. Claims at 09:10:00, 09:10:10, 09:10:20: the first two take the two
    /// idle agents (each kicks a tick that creates a replacement, ready at 09:11:30 and 09:11:40),
    /// the third misses. The full tick at 09:11:30 sees the first ready, the one at 09:12:00 the
    /// second. Idle: 2 agents from 09:00 to 09:10:00, one to 09:10:10, none to 09:11:30, one to
    /// 09:12:00, two to 10:00 — 1200 + 10 + 30 + 2 × 2880 = 7000 agent-seconds.
    #[test]
    fn a_hand_counted_hour() {
        let claims = [
            at("2026-11-23T09:10:00Z"),
            at("2026-11-23T09:10:10Z"),
            at("2026-11-23T09:10:20Z"),
        ];
        let out = run(&claims, &Policy::fixed(2), &model(), true).unwrap();
        assert_eq!(
            (out.claims, out.misses, out.creations, out.destructions),
            (3, 1, 2, 0)
        );
        assert!(
            (out.idle_hours - 7000.0 / 3600.0).abs() < 1e-9,
            "{}",
            out.idle_hours
        );
        // The warm-up's two creations are not counted; its samples are.
        assert_eq!(out.samples.first().map(|s| s.starting), Some(2));
        assert_eq!(out.samples.len(), 2 * 60 * 2);
    }

    /// A window of 4 from 09:00 to 09:59 over a base of 1: the pool grows at 09:00, and after the
    /// window and a 10-minute cool-down the surplus (3) is destroyed by the 10:10 tick.
    #[test]
    fn a_window_grows_the_pool_and_the_cool_down_shrinks_it() {
        let policy = Policy {
            min_idle: 1,
            max_total: None,
            sizing: SizingPolicy {
                schedules: vec![crate::config::ScheduleWindow {
                    cron: "* 9 * * *".into(),
                    min_idle: 4,
                }],
                cooldown_seconds: 600,
                ..SizingPolicy::default()
            },
        };
        let claims = [at("2026-11-23T08:30:00Z"), at("2026-11-23T10:59:00Z")];
        let out = run(&claims, &policy, &model(), true).unwrap();
        // 08:30 one claim (a replacement), 09:00 three for the window, 10:59 one replacement.
        assert_eq!((out.claims, out.misses), (2, 0));
        assert_eq!((out.creations, out.destructions), (5, 3));
        let idle_at = |s: &str| {
            out.samples
                .iter()
                .find(|x| x.at == at(s))
                .map(|x| (x.idle, x.target))
        };
        assert_eq!(idle_at("2026-11-23T09:00:00Z"), Some((1, 4)));
        assert_eq!(idle_at("2026-11-23T09:02:00Z"), Some((4, 4)));
        assert_eq!(idle_at("2026-11-23T10:09:30Z"), Some((4, 1)));
        assert_eq!(idle_at("2026-11-23T10:10:00Z"), Some((1, 1)));
    }

    #[test]
    fn demand_refills_during_a_burst() {
        // 40 claims 10 s apart from 12:00: a fixed pool of 3 misses many of them; with the demand
        // reaction the target rises as the burst goes on.
        let start = at("2026-11-23T12:00:00Z");
        let claims: Vec<_> = (0..40)
            .map(|i| start + chrono::Duration::seconds(10 * i))
            .collect();
        let fixed = run(&claims, &Policy::fixed(3), &model(), false).unwrap();
        let mut reacting = Policy::fixed(3);
        reacting.sizing.demand = Some(crate::config::DemandReaction {
            boot_seconds: 90,
            factor: 3.0,
        });
        let reacting = run(&claims, &reacting, &model(), false).unwrap();
        assert!(
            reacting.misses < fixed.misses,
            "{} vs {}",
            reacting.misses,
            fixed.misses
        );
    }
}
