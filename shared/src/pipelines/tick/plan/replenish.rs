//! How many instances to create so that idle + starting reaches the target, within
//! `maxTotal`, and which idle instances are surplus above what the target keeps. Both count the
//! moves this plan makes.

use std::collections::HashMap;
use std::time::Duration;

use crate::domain::InstanceStatus;
use crate::tick::snapshot::Snapshot;

use super::{older_than, Transition};

/// Each row's status once this plan's moves are made, in the snapshot's order (oldest first).
fn after<'a>(
    snapshot: &'a Snapshot,
    transitions: &'a [Transition],
) -> impl Iterator<Item = (&'a crate::tick::snapshot::Row, InstanceStatus)> {
    let moved: HashMap<&str, InstanceStatus> =
        transitions.iter().map(|t| (t.id.as_str(), t.to)).collect();
    snapshot.rows.iter().map(move |row| {
        let status = moved
            .get(row.instance.id.as_str())
            .copied()
            .unwrap_or(row.instance.status);
        (row, status)
    })
}

fn ready_or_coming(status: InstanceStatus) -> bool {
    matches!(
        status,
        InstanceStatus::Idle | InstanceStatus::Starting | InstanceStatus::Recycling
    )
}

pub fn count(
    snapshot: &Snapshot,
    transitions: &[Transition],
    min_idle: u32,
    max_total: u32,
) -> u32 {
    let (mut coming, mut live) = (0i64, 0i64);
    for (_, status) in after(snapshot, transitions) {
        coming += i64::from(ready_or_coming(status));
        live += i64::from(status != InstanceStatus::Destroying);
    }
    let deficit = i64::from(min_idle) - coming;
    let room = i64::from(max_total) - live;
    deficit.min(room).max(0) as u32
}

/// Idle instances beyond `keep` (idle, starting and recycling ones counted), oldest first, sent to
/// destruction once idle longer than `cooldown`: one added by hand or for a burst is kept that
/// long. Only `idle` rows go, fenced by their `status_since`: one a claim takes meanwhile is
/// `claiming` by then, and the move does not apply to it.
pub fn surplus(
    snapshot: &Snapshot,
    transitions: &[Transition],
    keep: u32,
    cooldown: Duration,
) -> Vec<Transition> {
    let coming = after(snapshot, transitions)
        .filter(|(_, status)| ready_or_coming(*status))
        .count();
    let extra = coming.saturating_sub(keep as usize);
    after(snapshot, transitions)
        .filter(|(row, status)| {
            *status == InstanceStatus::Idle
                && older_than(row.instance.status_since, snapshot.now, cooldown)
        })
        .take(extra)
        .map(|(row, _)| Transition {
            id: row.instance.id.clone(),
            from: InstanceStatus::Idle,
            since: row.instance.status_since,
            to: InstanceStatus::Destroying,
            reason: format!("surplus: {coming} idle or starting, target keeps {keep}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::fixture::*;
    use super::super::{decide, Mode};
    use crate::domain::Health;
    use crate::domain::InstanceStatus::*;
    use crate::domain::ResourceStatus::Running;

    #[test]
    fn empty_pool_is_filled_to_the_minimum() {
        assert_eq!(Fixture::new().plan().create, 3);
    }

    /// A provider at capacity (Sprites' `concurrent_sprite_limit_exceeded`) is not asked again
    /// before its Retry-After: no creation is planned, whatever the pool lacks.
    #[test]
    fn nothing_is_created_while_the_provider_is_at_capacity() {
        let mut fixture = Fixture::new();
        fixture.snapshot.creation_paused = Some(crate::capacity::Pause {
            until: now() + chrono::Duration::seconds(30),
            code: "concurrent_sprite_limit_exceeded".into(),
            refusals: 1,
        });
        assert_eq!(fixture.plan().create, 0);
    }

    #[test]
    fn starting_instances_count_toward_the_minimum() {
        let plan = Fixture::new()
            .row("a", Starting, MIN, Some(Running), Some(ready()))
            .row("b", Starting, MIN, Some(Running), Some(Health::NotReady))
            .plan();
        assert_eq!(plan.create, 1);
    }

    #[test]
    fn instances_sent_to_destruction_are_replaced() {
        let plan = Fixture::new()
            .row("a", Starting, Duration::from_secs(901), Some(Running), None)
            .row("c", Starting, MIN, Some(Running), None)
            .plan();
        assert_eq!(moved(&plan), vec![("a", Destroying)]);
        assert_eq!(plan.create, 2);
    }

    #[test]
    fn replenish_respects_the_maximum() {
        let mut fixture = Fixture::new();
        for i in 0..9 {
            fixture = fixture.row(&format!("c{i}"), Claimed, MIN, Some(Running), Some(ready()));
        }
        // 9 live, max 10: only one more even though 3 are wanted.
        assert_eq!(fixture.plan().create, 1);
        // Destroying rows do not count toward the maximum.
        let fixture = fixture.row("d", Destroying, MIN, None, None);
        assert_eq!(fixture.plan().create, 1);
    }

    #[test]
    fn the_target_comes_from_the_sizing_policy() {
        use crate::config::{ScheduleWindow, SizingPolicy};
        let mut rules = rules();
        rules.sizing = SizingPolicy {
            schedules: vec![ScheduleWindow {
                cron: "* 12 * * *".into(),
                min_idle: 7,
            }],
            ..SizingPolicy::default()
        }
        .compile(10)
        .unwrap();
        let plan = decide(&Fixture::new().snapshot, &rules, Mode::Full);
        assert_eq!(plan.create, 7);
        assert_eq!(plan.target.min_idle, 7);
    }

    #[test]
    fn idle_instances_above_the_target_are_destroyed_oldest_first() {
        // Target 3 (the fixture's base, no window): 5 idle and 1 starting, so 3 too many; the
        // three oldest have been idle longer than the cool-down (15 minutes).
        let plan = Fixture::new()
            .row("old", Idle, MIN * 50, Some(Running), Some(ready()))
            .row("c", Claiming, MIN, Some(Running), None)
            .row("mid", Idle, MIN * 30, Some(Running), Some(ready()))
            .row("new1", Idle, MIN * 16, Some(Running), Some(ready()))
            .row("new2", Idle, MIN * 14, Some(Running), Some(ready()))
            .row("new3", Idle, MIN, Some(Running), Some(ready()))
            .row("s", Starting, MIN, Some(Running), None)
            .plan();
        assert_eq!(
            moved(&plan),
            vec![
                ("old", Destroying),
                ("mid", Destroying),
                ("new1", Destroying)
            ]
        );
        assert_eq!(plan.destroy, vec!["old", "mid", "new1"]);
        assert_eq!(plan.create, 0);
        let first = &plan.transitions[0];
        assert_eq!(first.since, ago(MIN * 50));
        assert_eq!(first.reason, "surplus: 6 idle or starting, target keeps 3");
    }

    #[test]
    fn a_surplus_is_kept_through_the_cool_down_and_never_shrunk_by_a_kick() {
        use crate::config::{ScheduleWindow, SizingPolicy};
        // A window of 5 ended at 12:00; the fixture's clock says 12:00, cool-down 15 minutes.
        let mut rules = rules();
        rules.sizing = SizingPolicy {
            schedules: vec![ScheduleWindow {
                cron: "* 11 * * *".into(),
                min_idle: 5,
            }],
            ..SizingPolicy::default()
        }
        .compile(10)
        .unwrap();
        let mut fixture = Fixture::new();
        for i in 0..5 {
            fixture = fixture.row(&format!("i{i}"), Idle, MIN, Some(Running), Some(ready()));
        }
        let plan = decide(&fixture.snapshot, &rules, Mode::Full);
        assert_eq!((plan.target.min_idle, plan.target.keep), (3, 5));
        assert!(plan.transitions.is_empty());
        // A quarter of an hour on, the surplus goes.
        fixture.snapshot.now += chrono::Duration::minutes(15);
        let plan = decide(&fixture.snapshot, &rules, Mode::Full);
        assert_eq!(moved(&plan), vec![("i0", Destroying), ("i1", Destroying)]);
        assert!(decide(&fixture.snapshot, &rules, Mode::Kick)
            .transitions
            .is_empty());
    }

    #[test]
    fn instances_idle_for_less_than_the_cool_down_are_kept() {
        // 5 idle for a target of 3, but only one idle for longer than the cool-down.
        let plan = Fixture::new()
            .row("a", Idle, MIN * 20, Some(Running), Some(ready()))
            .row("b", Idle, MIN * 14, Some(Running), Some(ready()))
            .row("c", Idle, MIN * 10, Some(Running), Some(ready()))
            .row("d", Idle, MIN * 5, Some(Running), Some(ready()))
            .row("e", Idle, MIN, Some(Running), Some(ready()))
            .plan();
        assert_eq!(moved(&plan), vec![("a", Destroying)]);
    }

    #[test]
    fn instances_the_lifecycle_destroys_count_toward_the_surplus() {
        // 4 idle, one of them gone from the listing: 3 remain for a target of 3, nothing more goes.
        let old = MIN * 20;
        let plan = Fixture::new()
            .row("a", Idle, old, Some(Running), Some(ready()))
            .row("b", Idle, old, None, Some(ready()))
            .row("c", Idle, old, Some(Running), Some(ready()))
            .row("d", Idle, old, Some(Running), Some(ready()))
            .edit("b", |row| row.instance.absent_since = Some(ago(MIN * 10)))
            .plan();
        assert_eq!(moved(&plan), vec![("b", Destroying)]);
    }

    #[test]
    fn reconcile_mode_never_creates_and_a_kick_does() {
        let snapshot = &Fixture::new().snapshot;
        assert_eq!(decide(snapshot, &rules(), Mode::Reconcile).create, 0);
        assert_eq!(decide(snapshot, &rules(), Mode::Kick).create, 3);
    }
}
