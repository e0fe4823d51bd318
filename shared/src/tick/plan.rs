//! The tick's decisions: a pure function from a snapshot to a plan. No I/O, no clock.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::InstanceStatus;
use crate::providers::{ObservedResource, ResourceStatus};
use crate::runtime::Health;

use super::snapshot::{Row, Snapshot};

#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub min_idle: u32,
    pub max_total: u32,
    pub stuck_timeout: Duration,
    pub claim_timeout: Duration,
    pub health_failure_threshold: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Reconcile and replenish.
    Full,
    /// Reconcile only: health, reaping, orphans; no new instances.
    Reconcile,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub id: String,
    pub from: InstanceStatus,
    pub to: InstanceStatus,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub transitions: Vec<Transition>,
    /// New consecutive-failure counts, only for rows whose count changes.
    pub health_failures: Vec<(String, i32)>,
    /// Rows whose resources are to be destroyed now: already `destroying` and due, or sent there
    /// by `transitions`.
    pub destroy: Vec<String>,
    pub orphans: Vec<ObservedResource>,
    pub create: u32,
}

/// What the tick knows of one instance's resource and runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Observed {
    /// The provider lists no resource for it.
    Absent,
    Failed,
    Deploying,
    Running(Option<Health>),
}

fn observe(
    row: &Row,
    resources: &HashMap<&str, &ObservedResource>,
    health: &HashMap<String, Health>,
) -> Observed {
    match resources.get(row.instance.name.as_str()).map(|r| r.status) {
        None => Observed::Absent,
        Some(ResourceStatus::Failed) => Observed::Failed,
        Some(ResourceStatus::Deploying) => Observed::Deploying,
        Some(ResourceStatus::Running) => Observed::Running(health.get(&row.instance.id).copied()),
    }
}

fn older_than(since: DateTime<Utc>, now: DateTime<Utc>, limit: Duration) -> bool {
    (now - since).to_std().is_ok_and(|age| age > limit)
}

pub fn decide(snapshot: &Snapshot, rules: &Rules, mode: Mode) -> Plan {
    use InstanceStatus::*;

    let now = snapshot.now;
    let resources: HashMap<&str, &ObservedResource> = snapshot
        .resources
        .iter()
        .map(|r| (r.name.as_str(), r))
        .collect();
    let mut plan = Plan::default();
    let to = |plan: &mut Plan, row: &Row, status: InstanceStatus, reason: String| {
        plan.transitions.push(Transition {
            id: row.instance.id.clone(),
            from: row.instance.status,
            to: status,
            reason,
        });
        if status == Destroying {
            plan.destroy.push(row.instance.id.clone());
        }
    };

    for row in &snapshot.rows {
        let instance = &row.instance;
        let observed = observe(row, &resources, &snapshot.health);
        let healthy = matches!(observed, Observed::Running(Some(Health::Ready)));
        // Consecutive failures, counted only where the runtime is expected to answer.
        let failures = match (instance.status, observed) {
            (Idle | Claimed, Observed::Running(_)) if healthy => 0,
            (Idle | Claimed, Observed::Running(Some(_))) => instance.health_failures + 1,
            _ => instance.health_failures,
        };
        let dead = failures >= rules.health_failure_threshold as i32;
        if failures != instance.health_failures {
            plan.health_failures.push((instance.id.clone(), failures));
        }

        match instance.status {
            Starting => match observed {
                Observed::Running(Some(Health::Ready)) => {
                    to(&mut plan, row, Idle, "runtime ready".into())
                }
                Observed::Failed => to(&mut plan, row, Destroying, "deploy failed".into()),
                _ if older_than(instance.status_since, now, rules.stuck_timeout) => to(
                    &mut plan,
                    row,
                    Destroying,
                    format!("not ready within {} ms", rules.stuck_timeout.as_millis()),
                ),
                _ => {}
            },
            Idle => match observed {
                Observed::Absent => to(&mut plan, row, Destroying, "resource gone".into()),
                Observed::Failed => to(&mut plan, row, Destroying, "deploy failed".into()),
                _ if dead => to(
                    &mut plan,
                    row,
                    Destroying,
                    format!("failed {failures} health checks"),
                ),
                _ => {}
            },
            Claiming => {
                if older_than(instance.status_since, now, rules.claim_timeout) {
                    to(&mut plan, row, Destroying, "claim timed out".into());
                }
            }
            Claimed => match observed {
                Observed::Absent => to(&mut plan, row, Crashed, "resource gone".into()),
                Observed::Failed => to(&mut plan, row, Crashed, "deploy failed".into()),
                _ if dead => to(
                    &mut plan,
                    row,
                    Crashed,
                    format!("failed {failures} health checks"),
                ),
                _ => {}
            },
            Destroying => {
                if instance.next_attempt_at.is_none_or(|at| at <= now) {
                    plan.destroy.push(instance.id.clone());
                }
            }
            // Crashed waits for an operator; recycling is driven by providers that checkpoint.
            Crashed | Recycling => {}
        }
    }

    let known: HashSet<&str> = snapshot
        .rows
        .iter()
        .map(|r| r.instance.name.as_str())
        .collect();
    plan.orphans = snapshot
        .resources
        .iter()
        .filter(|r| !known.contains(r.name.as_str()))
        .cloned()
        .collect();

    if mode == Mode::Full {
        plan.create = replenish(snapshot, &plan, rules);
    }
    plan
}

/// How many instances to create so that idle + starting reaches the minimum, within the maximum,
/// counting the transitions this plan makes.
fn replenish(snapshot: &Snapshot, plan: &Plan, rules: &Rules) -> u32 {
    let moved: HashMap<&str, InstanceStatus> = plan
        .transitions
        .iter()
        .map(|t| (t.id.as_str(), t.to))
        .collect();
    let (mut ready_or_coming, mut live) = (0i64, 0i64);
    for row in &snapshot.rows {
        let status = moved
            .get(row.instance.id.as_str())
            .copied()
            .unwrap_or(row.instance.status);
        if matches!(
            status,
            InstanceStatus::Idle | InstanceStatus::Starting | InstanceStatus::Recycling
        ) {
            ready_or_coming += 1;
        }
        if status != InstanceStatus::Destroying {
            live += 1;
        }
    }
    let deficit = i64::from(rules.min_idle) - ready_or_coming;
    let room = i64::from(rules.max_total) - live;
    deficit.min(room).max(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Instance;

    const MIN: Duration = Duration::from_secs(60);

    fn rules() -> Rules {
        Rules {
            min_idle: 3,
            max_total: 10,
            stuck_timeout: Duration::from_secs(900),
            claim_timeout: Duration::from_secs(120),
            health_failure_threshold: 2,
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    struct Fixture {
        snapshot: Snapshot,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                snapshot: Snapshot {
                    now: now(),
                    rows: Vec::new(),
                    resources: Vec::new(),
                    health: HashMap::new(),
                },
            }
        }

        /// A row `id` in `status` for `age`, with a resource in `resource` state and a health answer.
        fn row(
            mut self,
            id: &str,
            status: InstanceStatus,
            age: Duration,
            resource: Option<ResourceStatus>,
            health: Option<Health>,
        ) -> Self {
            let since = now() - chrono::Duration::from_std(age).unwrap();
            self.snapshot.rows.push(Row {
                instance: Instance {
                    id: id.into(),
                    name: format!("ap-{id}"),
                    url: Some(format!("http://127.0.0.1/{id}")),
                    status,
                    status_since: since,
                    agent_name: None,
                    instructions: None,
                    join_url: None,
                    conversation_id: None,
                    invite_url: None,
                    template_id: None,
                    health_failures: 0,
                    destroy_attempts: 0,
                    next_attempt_at: None,
                    last_error: None,
                    created_at: since,
                    claimed_at: None,
                },
                resource_id: resource.map(|_| format!("ap-{id}")),
            });
            if let Some(status) = resource {
                self = self.resource(&format!("ap-{id}"), status);
            }
            if let Some(health) = health {
                self.snapshot.health.insert(id.into(), health);
            }
            self
        }

        fn failures(mut self, id: &str, n: i32) -> Self {
            let row = self
                .snapshot
                .rows
                .iter_mut()
                .find(|r| r.instance.id == id)
                .unwrap();
            row.instance.health_failures = n;
            self
        }

        fn resource(mut self, name: &str, status: ResourceStatus) -> Self {
            self.snapshot.resources.push(ObservedResource {
                name: name.into(),
                resource_id: name.into(),
                status,
            });
            self
        }

        fn plan(&self) -> Plan {
            decide(&self.snapshot, &rules(), Mode::Full)
        }
    }

    fn moved(plan: &Plan) -> Vec<(&str, InstanceStatus)> {
        plan.transitions
            .iter()
            .map(|t| (t.id.as_str(), t.to))
            .collect()
    }

    use InstanceStatus::*;
    use ResourceStatus::Running;

    #[test]
    fn empty_pool_is_filled_to_the_minimum() {
        let plan = Fixture::new().plan();
        assert_eq!(plan.create, 3);
        assert!(plan.transitions.is_empty());
    }

    #[test]
    fn ready_starting_becomes_idle_and_counts_toward_the_minimum() {
        let plan = Fixture::new()
            .row("a", Starting, MIN, Some(Running), Some(Health::Ready))
            .row("b", Starting, MIN, Some(Running), Some(Health::NotReady))
            .plan();
        assert_eq!(moved(&plan), vec![("a", Idle)]);
        assert_eq!(plan.create, 1);
    }

    #[test]
    fn stuck_starting_is_destroyed_and_replaced() {
        let plan = Fixture::new()
            .row(
                "a",
                Starting,
                Duration::from_secs(901),
                Some(Running),
                Some(Health::NotReady),
            )
            .row("b", Starting, Duration::from_secs(901), None, None)
            .row("c", Starting, MIN, None, None)
            .plan();
        assert_eq!(moved(&plan), vec![("a", Destroying), ("b", Destroying)]);
        assert_eq!(plan.destroy, vec!["a", "b"]);
        // c is still coming; two more are needed.
        assert_eq!(plan.create, 2);
    }

    #[test]
    fn a_young_starting_row_without_resource_is_left_alone() {
        // Its creator may be between inserting the row and creating the resource.
        let plan = Fixture::new().row("a", Starting, MIN, None, None).plan();
        assert!(plan.transitions.is_empty());
        assert!(plan.destroy.is_empty());
    }

    #[test]
    fn failed_deploy_is_destroyed_at_once() {
        let plan = Fixture::new()
            .row("a", Starting, MIN, Some(ResourceStatus::Failed), None)
            .plan();
        assert_eq!(moved(&plan), vec![("a", Destroying)]);
    }

    #[test]
    fn idle_failing_health_counts_up_then_is_replaced() {
        let fixture = Fixture::new().row("a", Idle, MIN, Some(Running), Some(Health::Unreachable));
        let plan = fixture.plan();
        assert!(plan.transitions.is_empty(), "one failure is not a death");
        assert_eq!(plan.health_failures, vec![("a".to_string(), 1)]);

        let plan = fixture.failures("a", 1).plan();
        assert_eq!(moved(&plan), vec![("a", Destroying)]);
        assert_eq!(plan.create, 3);
    }

    #[test]
    fn healthy_answer_resets_the_failure_count() {
        let plan = Fixture::new()
            .row("a", Idle, MIN, Some(Running), Some(Health::Ready))
            .failures("a", 1)
            .plan();
        assert_eq!(plan.health_failures, vec![("a".to_string(), 0)]);
        assert!(plan.transitions.is_empty());
    }

    #[test]
    fn idle_whose_resource_vanished_is_destroyed() {
        let plan = Fixture::new().row("a", Idle, MIN, None, None).plan();
        assert_eq!(moved(&plan), vec![("a", Destroying)]);
    }

    #[test]
    fn dead_claimed_becomes_crashed_not_destroyed() {
        let plan = Fixture::new()
            .row("a", Claimed, MIN, None, None)
            .row("b", Claimed, MIN, Some(Running), Some(Health::Unreachable))
            .failures("b", 1)
            .row("c", Claimed, MIN, Some(Running), Some(Health::Ready))
            .plan();
        assert_eq!(moved(&plan), vec![("a", Crashed), ("b", Crashed)]);
        assert!(plan.destroy.is_empty());
    }

    #[test]
    fn stale_claiming_is_reaped_fresh_claiming_is_not() {
        let plan = Fixture::new()
            .row(
                "old",
                Claiming,
                Duration::from_secs(121),
                Some(Running),
                None,
            )
            .row("new", Claiming, Duration::from_secs(5), Some(Running), None)
            .plan();
        assert_eq!(moved(&plan), vec![("old", Destroying)]);
    }

    #[test]
    fn destroying_rows_are_retried_when_due() {
        let mut fixture = Fixture::new()
            .row("due", Destroying, MIN, Some(Running), None)
            .row("later", Destroying, MIN, Some(Running), None);
        fixture.snapshot.rows[1].instance.next_attempt_at =
            Some(now() + chrono::Duration::seconds(30));
        let plan = fixture.plan();
        assert_eq!(plan.destroy, vec!["due"]);
        assert!(plan.transitions.is_empty());
    }

    #[test]
    fn resources_without_rows_are_orphans() {
        let plan = Fixture::new()
            .row("a", Idle, MIN, Some(Running), Some(Health::Ready))
            .resource("ap-ghost", Running)
            .plan();
        let names: Vec<&str> = plan.orphans.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["ap-ghost"]);
    }

    #[test]
    fn replenish_respects_the_maximum() {
        let mut fixture = Fixture::new();
        for i in 0..9 {
            fixture = fixture.row(
                &format!("c{i}"),
                Claimed,
                MIN,
                Some(Running),
                Some(Health::Ready),
            );
        }
        // 9 live, max 10: only one more even though 3 are wanted.
        assert_eq!(fixture.plan().create, 1);
        // Destroying rows do not count toward the maximum.
        let fixture = fixture.row("d", Destroying, MIN, None, None);
        assert_eq!(fixture.plan().create, 1);
    }

    #[test]
    fn reconcile_mode_never_creates() {
        assert_eq!(
            decide(&Fixture::new().snapshot, &rules(), Mode::Reconcile).create,
            0
        );
    }

    #[test]
    fn crashed_rows_wait_for_an_operator() {
        let plan = Fixture::new().row("a", Crashed, MIN, None, None).plan();
        assert!(plan.transitions.is_empty());
        assert!(plan.destroy.is_empty());
    }
}
