//! The state machine's moves, one instance at a time.
//!
//! `starting` → `idle` when ready; → `destroying` when its runtime is not clean (it says it is in
//! a conversation already: handed out, it would carry someone else's), its creation was cut off
//! (no resource, and its creator silent for `CREATE_TIMEOUT_MS`), its deploy failed, its resource
//! is gone, or it is not ready by `POOL_STUCK_TIMEOUT_MS`. `idle` → `destroying` when not clean,
//! gone, failed, dead or one of its
//! tool resources is gone. `claiming` older than `CLAIM_TIMEOUT_MS` → `destroying` (its claimer
//! died). `claimed` → `crashed` when gone, dead, short of a tool resource, or failed without an
//! answer from its runtime this tick; `crashed` → `claimed` when its runtime answers again,
//! whatever its last deployment says (a failed redeploy leaves the old one serving).
//! `recycling` older than `RECYCLE_TIMEOUT_MS` → `destroying` (its recycler died or hangs).
//! `destroying` rows are destroyed when due.

use crate::domain::{Health, InstanceStatus, ResourceStatus};
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
    let bound = match snapshot.health.get(&instance.id) {
        Some(Health::Ready {
            conversation_id: Some(conversation),
        }) => Some(conversation),
        _ => None,
    };
    if let (Starting | Idle, Some(conversation)) = (instance.status, bound) {
        return Some((
            Destroying,
            format!("not clean: the runtime is already in conversation {conversation}"),
        ));
    }
    match instance.status {
        Starting => {
            if row.resource_id.is_none() {
                // Queued or slow is not stuck: only a creator silent this long is gone (a row
                // whose creator finished or was forgotten is judged by its own age).
                let last_sign = row.creator_alive_at.map_or(instance.status_since, |alive| {
                    alive.max(instance.status_since)
                });
                return older_than(last_sign, now, rules.create_timeout).then(|| {
                    (
                        Destroying,
                        format!(
                            "creation interrupted: no resource, creator silent for {} ms",
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
            // A user's agent that answers is serving, whatever its latest deployment says: a
            // redeploy that failed leaves the one before it running.
            let serving = instance.status == Claimed && recovered(row, snapshot);
            if gone {
                Some((to, "resource gone".into()))
            } else if failed && !serving {
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
        Crashed => (recovered(row, snapshot) && tool_gone.is_none() && !gone)
            .then(|| (Claimed, "runtime answers again".into())),
        // Its recycler finishes it (idle) or gives up (destroying); one silent this long died
        // or hangs, and a half-restored instance is never handed out: destroyed, the pool
        // refills.
        Recycling => older_than(instance.status_since, now, rules.recycle_timeout).then(|| {
            (
                Destroying,
                format!(
                    "recycle not finished within {} ms",
                    rules.recycle_timeout.as_millis()
                ),
            )
        }),
        Destroying => None,
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

    /// A runtime that says it is in a conversation already would hand a user someone else's.
    #[test]
    fn a_runtime_already_in_a_conversation_is_not_handed_out() {
        let bound = || Health::Ready {
            conversation_id: Some("conv-old".into()),
        };
        let plan = Fixture::new()
            .row("a", Starting, MIN, Some(Running), Some(bound()))
            .row("b", Idle, MIN, Some(Running), Some(bound()))
            .row("c", Claimed, MIN, Some(Running), Some(bound()))
            .plan();
        assert_eq!(moved(&plan), vec![("a", Destroying), ("b", Destroying)]);
        assert_eq!(plan.destroy, vec!["a", "b"]);
        assert!(plan.transitions[0].reason.starts_with("not clean"));
    }

    /// A recycler that died leaves its row `recycling`: once older than `RECYCLE_TIMEOUT_MS` it
    /// is destroyed (never handed out half-restored), and not before: its recycler may still
    /// be at work, whatever its runtime answers meanwhile.
    #[test]
    fn a_recycle_whose_recycler_died_is_destroyed_after_the_recycle_timeout() {
        let plan = Fixture::new()
            .row(
                "a",
                Recycling,
                Duration::from_secs(121),
                Some(Running),
                Some(ready()),
            )
            .row(
                "b",
                Recycling,
                MIN,
                Some(Running),
                Some(Health::Unreachable),
            )
            .row("c", Recycling, Duration::from_secs(121), None, None)
            .plan();
        assert_eq!(moved(&plan), vec![("a", Destroying), ("c", Destroying)]);
        assert_eq!(plan.destroy, vec!["a", "c"]);
        assert!(plan.transitions[0]
            .reason
            .starts_with("recycle not finished"));
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
    fn a_creation_whose_creator_still_beats_is_never_reaped() {
        let queued = |creator_age| {
            Fixture::new()
                .row("a", Starting, Duration::from_secs(3600), None, None)
                .edit("a", |r| {
                    r.resource_id = None;
                    r.creator_alive_at = Some(ago(creator_age));
                })
                .plan()
        };
        // Reserved an hour ago, still waiting its turn: its creator beat a second ago.
        assert!(queued(Duration::from_secs(1)).transitions.is_empty());
        let plan = queued(Duration::from_secs(121));
        assert_eq!(moved(&plan), vec![("a", Destroying)]);
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
    fn an_agent_that_answers_is_served_whatever_its_last_deployment_says() {
        use ResourceStatus::Failed;
        let plan = Fixture::new()
            // A redeploy failed; the deployment before it still serves.
            .row("a", Claimed, MIN, Some(Failed), Some(ready()))
            .row("b", Crashed, MIN, Some(Failed), Some(ready()))
            // Failed and silent: crashed, and staying so.
            .row("c", Claimed, MIN, Some(Failed), None)
            .row("d", Crashed, MIN, Some(Failed), Some(Health::Unreachable))
            .plan();
        assert_eq!(moved(&plan), vec![("b", Claimed), ("c", Crashed)]);
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
