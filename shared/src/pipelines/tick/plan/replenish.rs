//! How many instances to create so that idle + starting reaches `POOL_MIN_IDLE`, within
//! `POOL_MAX_TOTAL`, counting the moves this plan makes.

use std::collections::HashMap;

use crate::domain::InstanceStatus;
use crate::tick::snapshot::Snapshot;

use super::{Rules, Transition};

pub fn count(snapshot: &Snapshot, transitions: &[Transition], rules: &Rules) -> u32 {
    let moved: HashMap<&str, InstanceStatus> =
        transitions.iter().map(|t| (t.id.as_str(), t.to)).collect();
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
    fn reconcile_mode_never_creates_and_a_kick_does() {
        let snapshot = &Fixture::new().snapshot;
        assert_eq!(decide(snapshot, &rules(), Mode::Reconcile).create, 0);
        assert_eq!(decide(snapshot, &rules(), Mode::Kick).create, 3);
    }
}
