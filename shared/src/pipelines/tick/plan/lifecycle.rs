//! The state machine's moves, one instance at a time.
//!
//! `starting` → `idle` when ready; → `destroying` when its creation was cut off
//! (`CREATE_TIMEOUT_MS` without a resource), its deploy failed, its resource is gone, or it is not
//! ready by `POOL_STUCK_TIMEOUT_MS`. `idle` → `destroying` when gone, failed, dead or one of its
//! tool resources is gone. `claiming` older than `CLAIM_TIMEOUT_MS` → `destroying` (its claimer
//! died). `claimed` → `crashed` when gone, failed, dead or short of a tool resource; `crashed` → `claimed` when its runtime answers again. `destroying` rows
//! are destroyed when due.

use crate::domain::{InstanceStatus, ResourceStatus};
use crate::tick::snapshot::{Row, Snapshot};

use super::evidence::{dead, presence, recovered, tools_gone, Listing, Presence};
use super::{older_than, Rules, Transition};

/// The transitions, and the rows whose resources to destroy now.
pub fn moves(snapshot: &Snapshot, rules: &Rules) -> (Vec<Transition>, Vec<String>) {
    let mut transitions = Vec::new();
    let mut destroy = Vec::new();
    let listing = Listing::of(snapshot);
    let tools_gone = tools_gone(snapshot, rules);
    for row in &snapshot.rows {
        let instance = &row.instance;
        if instance.status == InstanceStatus::Destroying {
            if instance.next_attempt_at.is_none_or(|at| at <= snapshot.now) {
                destroy.push(instance.id.clone());
            }
            continue;
        }
        let tool_gone = tools_gone.get(instance.id.as_str()).copied();
        if let Some((to, reason)) = next(row, &listing, tool_gone, snapshot, rules) {
            if to == InstanceStatus::Destroying {
                destroy.push(instance.id.clone());
            }
            transitions.push(Transition {
                id: instance.id.clone(),
                from: instance.status,
                since: instance.status_since,
                to,
                reason,
            });
        }
    }
    (transitions, destroy)
}

/// `tool_gone`: the tool one of whose resources is gone, if one is.
fn next(
    row: &Row,
    listing: &Listing<'_>,
    tool_gone: Option<&str>,
    snapshot: &Snapshot,
    rules: &Rules,
) -> Option<(InstanceStatus, String)> {
    use InstanceStatus::*;
    let instance = &row.instance;
    let now = snapshot.now;
    let presence = presence(row, listing, snapshot, rules);
    let failed = presence == Presence::Listed(ResourceStatus::Failed);
    let gone = presence == Presence::Gone;
    match instance.status {
        Starting => {
            if row.resource_id.is_none() {
                return older_than(instance.status_since, now, rules.create_timeout).then(|| {
                    (
                        Destroying,
                        format!(
                            "creation interrupted: no resource after {} ms",
                            rules.create_timeout.as_millis()
                        ),
                    )
                });
            }
            if snapshot
                .health
                .get(&instance.id)
                .is_some_and(|h| h.is_ready())
            {
                Some((Idle, "runtime ready".into()))
            } else if failed {
                Some((Destroying, "deploy failed".into()))
            } else if gone {
                Some((Destroying, "resource gone".into()))
            } else if older_than(instance.status_since, now, rules.stuck_timeout) {
                Some((
                    Destroying,
                    format!("not ready within {} ms", rules.stuck_timeout.as_millis()),
                ))
            } else {
                None
            }
        }
        Idle | Claimed => {
            let to = if instance.status == Idle {
                Destroying
            } else {
                Crashed
            };
            if gone {
                Some((to, "resource gone".into()))
            } else if failed {
                Some((to, "deploy failed".into()))
            } else if let Some(tool) = tool_gone {
                // Without its key, inbox or number the agent cannot do its work.
                Some((to, format!("{tool} resource gone")))
            } else {
                dead(row, snapshot, rules).map(|reason| (to, reason))
            }
        }
        Claiming => older_than(instance.status_since, now, rules.claim_timeout)
            .then(|| (Destroying, "claim timed out".into())),
        // The user keeps their agent: it goes back to them, never to the idle pool.
        // ... and only whole: an agent still short of a tool resource would crash again.
        Crashed => (recovered(row, snapshot) && tool_gone.is_none())
            .then(|| (Claimed, "runtime answers again".into())),
        // Driven by providers that restore a checkpoint.
        Recycling | Destroying => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::fixture::*;
    use crate::domain::Health;
    use crate::domain::InstanceStatus::*;
    use crate::domain::ResourceStatus::{self, Running};

    #[test]
    fn ready_starting_becomes_idle() {
        let plan = Fixture::new()
            .row("a", Starting, MIN, Some(Running), Some(ready()))
            .row("b", Starting, MIN, Some(Running), Some(Health::NotReady))
            .plan();
        assert_eq!(moved(&plan), vec![("a", Idle)]);
    }

    #[test]
    fn stuck_starting_is_destroyed() {
        let plan = Fixture::new()
            .row(
                "a",
                Starting,
                Duration::from_secs(901),
                Some(Running),
                Some(Health::NotReady),
            )
            .row(
                "b",
                Starting,
                Duration::from_secs(901),
                Some(ResourceStatus::Deploying),
                None,
            )
            .row("c", Starting, MIN, Some(Running), None)
            .plan();
        assert_eq!(moved(&plan), vec![("a", Destroying), ("b", Destroying)]);
        assert_eq!(plan.destroy, vec!["a", "b"]);
    }

    #[test]
    fn a_creation_cut_off_is_found_after_the_create_timeout_not_the_stuck_timeout() {
        let no_resource = |age| {
            Fixture::new()
                .row("a", Starting, age, None, None)
                .edit("a", |r| r.resource_id = None)
                .plan()
        };
        // Its creator may still be at work.
        assert!(no_resource(MIN).transitions.is_empty());
        let plan = no_resource(Duration::from_secs(121));
        assert_eq!(moved(&plan), vec![("a", Destroying)]);
        assert!(plan.transitions[0]
            .reason
            .starts_with("creation interrupted"));
    }

    #[test]
    fn failed_deploy_is_destroyed_at_once() {
        let plan = Fixture::new()
            .row("a", Starting, MIN, Some(ResourceStatus::Failed), None)
            .row("b", Idle, MIN, Some(ResourceStatus::Failed), None)
            .plan();
        assert_eq!(moved(&plan), vec![("a", Destroying), ("b", Destroying)]);
    }

    #[test]
    fn an_idle_instance_failing_over_time_is_destroyed() {
        let fixture = Fixture::new()
            .row("a", Idle, MIN * 2, Some(Running), Some(Health::Unreachable))
            .edit("a", |r| r.instance.failing_since = Some(ago(MIN * 2)));
        assert!(
            fixture.plan().transitions.is_empty(),
            "one failure is not a death"
        );
        let plan = fixture.failures("a", 1).plan();
        assert_eq!(moved(&plan), vec![("a", Destroying)]);
        assert_eq!(
            plan.transitions[0].since,
            ago(MIN * 2),
            "fenced by the state it saw"
        );
    }

    #[test]
    fn gone_is_believed_only_after_the_grace_period() {
        let missing = |since| {
            Fixture::new()
                .row("a", Idle, MIN * 5, None, None)
                .row("b", Claimed, MIN * 5, None, None)
                .edit("a", |r| r.instance.absent_since = since)
                .edit("b", |r| r.instance.absent_since = since)
                .plan()
        };
        assert!(missing(None).transitions.is_empty());
        assert!(missing(Some(ago(MIN / 2))).transitions.is_empty());
        let plan = missing(Some(ago(MIN * 2)));
        assert_eq!(moved(&plan), vec![("a", Destroying), ("b", Crashed)]);
        assert_eq!(plan.destroy, vec!["a"]);
    }

    #[test]
    fn a_failed_listing_destroys_nothing() {
        let plan = Fixture::new()
            .row("a", Idle, MIN * 5, None, None)
            .row("b", Claimed, MIN * 5, None, None)
            .row("c", Starting, MIN * 5, None, None)
            .edit("a", |r| r.instance.absent_since = Some(ago(MIN * 3)))
            .edit("b", |r| r.instance.absent_since = Some(ago(MIN * 3)))
            .unlisted()
            .plan();
        assert!(plan.transitions.is_empty(), "{:?}", plan.transitions);
        assert!(plan.orphans.is_empty());
    }

    #[test]
    fn a_dead_claimed_instance_crashes_and_comes_back() {
        let plan = Fixture::new()
            .row(
                "a",
                Claimed,
                MIN * 2,
                Some(Running),
                Some(Health::Unreachable),
            )
            .failures("a", 1)
            .edit("a", |r| r.instance.failing_since = Some(ago(MIN * 2)))
            .row("b", Claimed, MIN, Some(Running), Some(ready()))
            .row("c", Crashed, MIN, Some(Running), Some(ready()))
            .row("d", Crashed, MIN, Some(Running), Some(Health::Unreachable))
            .plan();
        assert_eq!(moved(&plan), vec![("a", Crashed), ("c", Claimed)]);
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
        let plan = Fixture::new()
            .row("due", Destroying, MIN, Some(Running), None)
            .row("later", Destroying, MIN, Some(Running), None)
            .edit("later", |r| {
                r.instance.next_attempt_at = Some(now() + chrono::Duration::seconds(30))
            })
            .plan();
        assert_eq!(plan.destroy, vec!["due"]);
        assert!(plan.transitions.is_empty());
    }

    #[test]
    fn crashed_rows_without_an_answer_wait_for_an_operator() {
        let plan = Fixture::new().row("a", Crashed, MIN, None, None).plan();
        assert!(plan.transitions.is_empty());
        assert!(plan.destroy.is_empty());
    }

    #[test]
    fn an_agent_whose_tool_resource_is_gone_is_replaced_or_crashed() {
        let plan = Fixture::new()
            .row("a", Idle, MIN, Some(Running), Some(ready()))
            .row("b", Claimed, MIN, Some(Running), Some(ready()))
            .row("c", Idle, MIN, Some(Running), Some(ready()))
            .tool("a", "openrouter", false, Some(ago(MIN * 2)))
            .tool("b", "email", false, Some(ago(MIN * 2)))
            .tool("c", "openrouter", true, None)
            .row("d", Crashed, MIN, Some(Running), Some(ready()))
            .tool("d", "sms", false, Some(ago(MIN * 2)))
            .plan();
        // `d` answers again, but without its number it stays crashed.
        assert_eq!(moved(&plan), vec![("a", Destroying), ("b", Crashed)]);
        assert_eq!(plan.transitions[0].reason, "openrouter resource gone");
        assert_eq!(plan.destroy, vec!["a".to_string()]);
    }
}
