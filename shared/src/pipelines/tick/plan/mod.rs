//! The tick's decisions: pure functions from a snapshot to a plan. No I/O, no clock.
//!
//! Split by concern, each with its own tests:
//! - [`evidence`]: what the snapshot says of each instance (health over time, presence of its
//!   resource and of its tools' resources), and the observations to record;
//! - [`lifecycle`]: the state machine's moves for each instance;
//! - [`orphans`]: resources that no row owns;
//! - [`sizing`]: the pool's target, from the sizing policy, the clock and recent claims;
//! - [`replenish`]: how many instances to create, and which idle ones are surplus.

mod evidence;
mod lifecycle;
mod orphans;
mod replenish;
pub mod sizing;

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::Sizing;
use crate::domain::{InstanceStatus, ObservedResource, ToolResource};

pub use super::mode::Mode;
use super::snapshot::Snapshot;

pub use evidence::{Observation, PresenceMark, ToolPresenceMark};
pub use orphans::Rename;
pub use sizing::Target;

#[derive(Debug, Clone)]
pub struct Rules {
    /// The base `minIdle`, in force outside the sizing policy's windows.
    pub min_idle: u32,
    pub max_total: u32,
    pub stuck_timeout: Duration,
    pub claim_timeout: Duration,
    pub create_timeout: Duration,
    /// A `recycling` row older than this lost its recycler (or its restore hangs).
    pub recycle_timeout: Duration,
    pub health_failure_threshold: u32,
    pub health_grace: Duration,
    pub sizing: Sizing,
    /// `POOL_NAME_PREFIX`, which a claimed agent's renamed resource keeps, when the provider
    /// renames resources; `None` when its names are fixed.
    pub rename_with_prefix: Option<String>,
}

/// A move of one instance, fenced by the `status_since` the decision was made on: if the row
/// changed since (claimed, recycled, moved by an operator), the move does not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub id: String,
    pub from: InstanceStatus,
    pub since: DateTime<Utc>,
    pub to: InstanceStatus,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Plan {
    /// Health answers to record on the rows they were about.
    pub observations: Vec<Observation>,
    /// Rows whose resource the listing lacks, or shows again.
    pub presence: Vec<PresenceMark>,
    /// Recorded tool resources their tool's listing lacks, or shows again.
    pub tool_presence: Vec<ToolPresenceMark>,
    pub transitions: Vec<Transition>,
    /// Rows whose resources are to be destroyed now: already `destroying` and due, or sent there
    /// by `transitions`.
    pub destroy: Vec<String>,
    pub orphans: Vec<ObservedResource>,
    pub tool_orphans: Vec<ToolResource>,
    /// Claimed agents' resources to call after them.
    pub renames: Vec<Rename>,
    pub create: u32,
    pub target: Target,
}

pub fn decide(snapshot: &Snapshot, rules: &Rules, mode: Mode) -> Plan {
    let (mut transitions, mut destroy) = lifecycle::moves(snapshot, rules);
    let target = sizing::target(
        &rules.sizing,
        rules.min_idle,
        rules.max_total,
        snapshot.now,
        &snapshot.recent_claims,
    );
    let create = match mode {
        // At capacity: asking again before the Retry-After would only be refused again.
        _ if snapshot.creation_paused.is_some() => 0,
        Mode::Full | Mode::Kick => {
            replenish::count(snapshot, &transitions, target.min_idle, rules.max_total)
        }
        Mode::Reconcile => 0,
    };
    // Shrinking is a fleet decision, taken on the interval; kicks come after claims, which only
    // ever make the pool smaller.
    if mode == Mode::Full {
        let surplus =
            replenish::surplus(snapshot, &transitions, target.keep, rules.sizing.cooldown);
        destroy.extend(surplus.iter().map(|t| t.id.clone()));
        transitions.extend(surplus);
    }
    Plan {
        observations: evidence::observations(snapshot),
        presence: evidence::presence_marks(snapshot),
        tool_presence: evidence::tool_presence_marks(snapshot),
        orphans: orphans::find(snapshot),
        tool_orphans: orphans::tools(snapshot),
        renames: rules
            .rename_with_prefix
            .as_deref()
            .map(|prefix| orphans::renames(snapshot, prefix))
            .unwrap_or_default(),
        transitions,
        destroy,
        create,
        target,
    }
}

fn older_than(since: DateTime<Utc>, now: DateTime<Utc>, limit: Duration) -> bool {
    (now - since).to_std().is_ok_and(|age| age > limit)
}

#[cfg(test)]
pub(crate) mod fixture {
    //! Snapshots for the plan's tests, built a row at a time.

    use std::collections::HashMap;

    use super::*;
    use crate::domain::{Health, Instance, RecordedTool, ResourceStatus};
    use crate::tick::snapshot::Row;

    pub const MIN: Duration = Duration::from_secs(60);

    pub fn rules() -> Rules {
        Rules {
            min_idle: 3,
            max_total: 10,
            stuck_timeout: Duration::from_secs(900),
            claim_timeout: Duration::from_secs(120),
            create_timeout: Duration::from_secs(120),
            recycle_timeout: Duration::from_secs(120),
            health_failure_threshold: 2,
            health_grace: Duration::from_secs(60),
            sizing: Sizing::default(),
            rename_with_prefix: Some("ap-".into()),
        }
    }

    pub fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    pub fn ago(age: Duration) -> DateTime<Utc> {
        now() - chrono::Duration::from_std(age).unwrap()
    }

    pub fn ready() -> Health {
        Health::Ready {
            conversation_id: None,
        }
    }

    pub struct Fixture {
        pub snapshot: Snapshot,
    }

    impl Fixture {
        pub fn new() -> Self {
            Self {
                snapshot: Snapshot {
                    now: now(),
                    rows: Vec::new(),
                    resources: Some(Vec::new()),
                    health: HashMap::new(),
                    tool_resources: Vec::new(),
                    tools_listed: Default::default(),
                    recorded: Vec::new(),
                    recent_claims: [0; 3],
                    creation_paused: None,
                },
            }
        }

        /// A row `id` in `status` for `age`, with a resource in `resource` state (and a recorded
        /// resource id) and a health answer. The runtime last answered well when it got there.
        pub fn row(
            mut self,
            id: &str,
            status: InstanceStatus,
            age: Duration,
            resource: Option<ResourceStatus>,
            health: Option<Health>,
        ) -> Self {
            let since = ago(age);
            self.snapshot.rows.push(Row {
                instance: Instance::new(
                    id,
                    format!("ap-{id}"),
                    Some(format!("http://127.0.0.1/{id}")),
                    status,
                    since,
                ),
                resource_id: Some(format!("ap-{id}")),
                details: None,
                creator_alive_at: None,
                gateway_token: crate::config::Secret::new("token"),
            });
            if let Some(status) = resource {
                self = self.resource(&format!("ap-{id}"), status);
            }
            if let Some(health) = health {
                self.snapshot.health.insert(id.into(), health);
            }
            self
        }

        pub fn edit(mut self, id: &str, change: impl FnOnce(&mut Row)) -> Self {
            let row = self
                .snapshot
                .rows
                .iter_mut()
                .find(|r| r.instance.id == id)
                .unwrap();
            change(row);
            self
        }

        pub fn failures(self, id: &str, n: i32) -> Self {
            self.edit(id, |row| row.instance.health_failures = n)
        }

        pub fn resource(self, name: &str, status: ResourceStatus) -> Self {
            self.renamed(name, name, status)
        }

        /// The resource with id `id`, listed under the name `name`.
        pub fn renamed(mut self, id: &str, name: &str, status: ResourceStatus) -> Self {
            if let Some(listed) = self.snapshot.resources.as_mut() {
                listed.push(ObservedResource {
                    name: name.into(),
                    resource_id: id.into(),
                    status,
                });
            }
            self
        }

        /// A tool resource row `id` records, and whether this tick's listing of its tool (taken)
        /// shows it.
        pub fn tool(
            mut self,
            id: &str,
            tool_id: &str,
            listed: bool,
            absent_since: Option<DateTime<Utc>>,
        ) -> Self {
            let resource_id = format!("{tool_id}-of-{id}");
            self.snapshot.tools_listed.insert(tool_id.into());
            if listed {
                self.snapshot.tool_resources.push(ToolResource {
                    tool_id: tool_id.into(),
                    resource_id: resource_id.clone(),
                    name: format!("ap-{id}"),
                });
            }
            let mut row = recorded(id, tool_id, &resource_id, absent_since);
            row.id = self.snapshot.recorded.len() as i64 + 1;
            self.snapshot.recorded.push(row);
            self
        }

        /// The provider's listing failed.
        pub fn unlisted(mut self) -> Self {
            self.snapshot.resources = None;
            self
        }

        pub fn plan(&self) -> Plan {
            decide(&self.snapshot, &rules(), Mode::Full)
        }
    }

    pub fn recorded(
        instance_id: &str,
        tool_id: &str,
        resource_id: &str,
        absent_since: Option<DateTime<Utc>>,
    ) -> RecordedTool {
        RecordedTool {
            id: 1,
            instance_id: instance_id.into(),
            tool_id: tool_id.into(),
            resource_id: resource_id.into(),
            absent_since,
        }
    }

    pub fn moved(plan: &Plan) -> Vec<(&str, InstanceStatus)> {
        plan.transitions
            .iter()
            .map(|t| (t.id.as_str(), t.to))
            .collect()
    }
}
