//! What the snapshot says of each instance, believed slowly.
//!
//! - Health is judged over time: a failed check condemns a runtime only once
//!   `HEALTH_FAILURE_THRESHOLD` checks in a row have failed *and* its last good answer is older than
//!   `HEALTH_GRACE_MS`. Ticks come as fast as claims kick them; time does not.
//! - Presence: a resource is gone only when a listing lacks it and an earlier listing, at least
//!   the grace period before, lacked it too. A listing that failed says nothing. The same holds
//!   for the tool resources (keys, inboxes, numbers) of settled instances: idle, claimed or
//!   crashed. A starting instance's tools are still being made, a claiming one is about to
//!   change, a destroying one is going anyway.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use crate::domain::{Health, InstanceStatus, ObservedResource, RecordedTool, ResourceStatus};
use crate::tick::snapshot::{Row, Snapshot};

use super::Rules;

/// A health answer to record: counts are updated relative to the row as it is then, and only if
/// it is still in the state the check was made in. Only answers that change something are
/// recorded (a failure, a recovery), and every answer of a tick cut short (to keep the order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub id: String,
    pub status: InstanceStatus,
    pub since: DateTime<Utc>,
    pub healthy: bool,
}

/// `absent`: the listing lacks the row's resource (start the clock if it is not running);
/// otherwise the resource is listed again (stop it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceMark {
    pub id: String,
    pub absent: bool,
}

/// `absent`: its tool's listing lacks a recorded tool resource (start the clock if it is not
/// running); otherwise it is listed again (stop it). `id` is `instance_services.id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolPresenceMark {
    pub id: i64,
    pub absent: bool,
}

/// What the listing says of a row's resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// The listing failed or was not taken.
    Unknown,
    /// No resource recorded yet: its creation is running or was cut off.
    NotCreated,
    Listed(ResourceStatus),
    /// Missing from this listing, but not yet for long enough to be believed.
    Missing,
    /// Missing from two listings at least the grace period apart.
    Gone,
}

/// The provider's listing by resource id, built once per plan: a fleet of 10,000 is looked up
/// 10,000 times. By id, not by name: a claimed agent's resource is renamed after it.
pub struct Listing<'a>(Option<HashMap<&'a str, &'a ObservedResource>>);

impl<'a> Listing<'a> {
    pub fn of(snapshot: &'a Snapshot) -> Self {
        Self(snapshot.resources.as_ref().map(|resources| {
            resources
                .iter()
                .map(|r| (r.resource_id.as_str(), r))
                .collect()
        }))
    }

    /// The listed resource a row records, if the listing was taken and shows it.
    pub fn of_row(&self, row: &'a Row) -> Option<&'a ObservedResource> {
        self.0.as_ref()?.get(row.resource_id.as_deref()?).copied()
    }
}

pub fn presence(row: &Row, listing: &Listing<'_>, snapshot: &Snapshot, rules: &Rules) -> Presence {
    let Some(resources) = &listing.0 else {
        return Presence::Unknown;
    };
    let Some(resource_id) = row.resource_id.as_deref() else {
        return Presence::NotCreated;
    };
    match resources.get(resource_id) {
        Some(resource) => Presence::Listed(resource.status),
        None => match row.instance.absent_since {
            Some(since) if !younger_than(since, snapshot.now, rules) => Presence::Gone,
            _ => Presence::Missing,
        },
    }
}

fn younger_than(since: DateTime<Utc>, now: DateTime<Utc>, rules: &Rules) -> bool {
    (now - since)
        .to_std()
        .map_or(true, |age| age < rules.health_grace)
}

/// The recorded tool resources this tick can judge, each with whether its tool's listing lacks it.
fn judged_tools(snapshot: &Snapshot) -> impl Iterator<Item = (&RecordedTool, bool)> {
    let settled: HashSet<&str> = snapshot
        .rows
        .iter()
        .filter(|r| {
            matches!(
                r.instance.status,
                InstanceStatus::Idle | InstanceStatus::Claimed | InstanceStatus::Crashed
            )
        })
        .map(|r| r.instance.id.as_str())
        .collect();
    let listed: HashSet<(&str, &str)> = snapshot
        .tool_resources
        .iter()
        .map(|r| (r.tool_id.as_str(), r.resource_id.as_str()))
        .collect();
    snapshot
        .recorded
        .iter()
        .filter(move |t| {
            snapshot.tools_listed.contains(&t.tool_id) && settled.contains(t.instance_id.as_str())
        })
        .map(move |t| {
            let absent = !listed.contains(&(t.tool_id.as_str(), t.resource_id.as_str()));
            (t, absent)
        })
}

pub fn tool_presence_marks(snapshot: &Snapshot) -> Vec<ToolPresenceMark> {
    judged_tools(snapshot)
        .filter(|(t, absent)| *absent != t.absent_since.is_some())
        .map(|(t, absent)| ToolPresenceMark { id: t.id, absent })
        .collect()
}

/// Instances a tool resource of which is gone (missing from two listings at least the grace
/// period apart), with that tool: instance id → tool id.
pub fn tools_gone<'a>(snapshot: &'a Snapshot, rules: &Rules) -> HashMap<&'a str, &'a str> {
    judged_tools(snapshot)
        .filter(|(t, absent)| {
            *absent
                && t.absent_since
                    .is_some_and(|since| !younger_than(since, snapshot.now, rules))
        })
        .map(|(t, _)| (t.instance_id.as_str(), t.tool_id.as_str()))
        .collect()
}

/// Why a runtime that was asked this tick counts as dead, if it does.
pub fn dead(row: &Row, snapshot: &Snapshot, rules: &Rules) -> Option<String> {
    let instance = &row.instance;
    let answer = snapshot.health.get(&instance.id)?;
    if answer.is_ready() {
        return None;
    }
    let failures = instance.health_failures + 1;
    // The run of failures began with the first of them (this one, if it is the first), and no
    // earlier than the instance's arrival in this state (a claim is a fresh start).
    let began = instance
        .failing_since
        .unwrap_or(snapshot.now)
        .max(instance.status_since);
    let lasting = failures >= rules.health_failure_threshold as i32
        && !younger_than(began, snapshot.now, rules);
    lasting.then(|| {
        let quiet = (snapshot.now - began).num_seconds();
        format!("failing health checks for {quiet} s ({failures} in a row)")
    })
}

/// The runtime of a crashed instance answers again, about the conversation it was given (or
/// about none: older runtimes do not say).
pub fn recovered(row: &Row, snapshot: &Snapshot) -> bool {
    match snapshot.health.get(&row.instance.id) {
        Some(Health::Ready { conversation_id }) => conversation_id
            .as_ref()
            .is_none_or(|said| Some(said) == row.instance.conversation_id.as_ref()),
        _ => false,
    }
}

pub fn observations(snapshot: &Snapshot) -> Vec<Observation> {
    snapshot
        .rows
        .iter()
        .filter_map(|row| {
            let health = snapshot.health.get(&row.instance.id)?;
            let changes = !health.is_ready() || row.instance.health_failures > 0;
            if !changes && !snapshot.health_cut_short {
                return None;
            }
            Some(Observation {
                id: row.instance.id.clone(),
                status: row.instance.status,
                since: row.instance.status_since,
                healthy: health.is_ready(),
            })
        })
        .collect()
}

pub fn presence_marks(snapshot: &Snapshot) -> Vec<PresenceMark> {
    let Some(resources) = &snapshot.resources else {
        return Vec::new();
    };
    let listed: std::collections::HashSet<&str> =
        resources.iter().map(|r| r.resource_id.as_str()).collect();
    snapshot
        .rows
        .iter()
        .filter(|row| {
            row.resource_id.is_some() && row.instance.status != InstanceStatus::Destroying
        })
        .filter_map(|row| {
            let absent = !listed.contains(row.resource_id.as_deref()?);
            let marked = row.instance.absent_since.is_some();
            (absent != marked).then(|| PresenceMark {
                id: row.instance.id.clone(),
                absent,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::fixture::*;
    use super::*;
    use crate::domain::InstanceStatus::*;
    use crate::domain::ResourceStatus::Running;
    use std::time::Duration;

    fn facts(fixture: &Fixture, id: &str) -> (Presence, Option<String>) {
        let row = fixture
            .snapshot
            .rows
            .iter()
            .find(|r| r.instance.id == id)
            .unwrap();
        (
            presence(
                row,
                &Listing::of(&fixture.snapshot),
                &fixture.snapshot,
                &rules(),
            ),
            dead(row, &fixture.snapshot, &rules()),
        )
    }

    #[test]
    fn failures_in_quick_succession_are_not_a_death() {
        // Six failed checks in a row, but the first was 10 s ago: kicked ticks, not time.
        let fixture = Fixture::new()
            .row(
                "a",
                Claimed,
                MIN * 5,
                Some(Running),
                Some(Health::Unreachable),
            )
            .failures("a", 5)
            .edit("a", |r| {
                r.instance.failing_since = Some(ago(Duration::from_secs(10)))
            });
        assert_eq!(facts(&fixture, "a").1, None);
    }

    #[test]
    fn failures_over_the_grace_period_are_a_death() {
        let fixture = Fixture::new()
            .row("a", Idle, MIN * 5, Some(Running), Some(Health::NotReady))
            .failures("a", 1)
            .edit("a", |r| r.instance.failing_since = Some(ago(MIN * 2)));
        assert!(facts(&fixture, "a").1.is_some());
        // One failure is below the threshold (2), however long ago the last good answer was.
        let fixture = fixture.failures("a", 0);
        assert_eq!(facts(&fixture, "a").1, None);
    }

    #[test]
    fn a_fresh_claim_restarts_the_clock() {
        let fixture = Fixture::new()
            .row(
                "a",
                Claimed,
                Duration::from_secs(5),
                Some(Running),
                Some(Health::Unreachable),
            )
            .failures("a", 4)
            .edit("a", |r| r.instance.failing_since = Some(ago(MIN * 10)));
        assert_eq!(facts(&fixture, "a").1, None);
    }

    #[test]
    fn a_runtime_not_asked_is_not_judged() {
        let fixture = Fixture::new()
            .row("a", Idle, MIN * 5, Some(Running), None)
            .failures("a", 9);
        assert_eq!(facts(&fixture, "a").1, None);
        assert!(observations(&fixture.snapshot).is_empty());
    }

    #[test]
    fn absence_is_believed_only_twice_a_grace_period_apart() {
        let fixture = Fixture::new().row("a", Idle, MIN * 5, None, None);
        assert_eq!(facts(&fixture, "a").0, Presence::Missing);
        assert_eq!(
            presence_marks(&fixture.snapshot),
            vec![PresenceMark {
                id: "a".into(),
                absent: true
            }]
        );
        let seen_recently = fixture.edit("a", |r| r.instance.absent_since = Some(ago(MIN / 2)));
        assert_eq!(facts(&seen_recently, "a").0, Presence::Missing);
        assert!(
            presence_marks(&seen_recently.snapshot).is_empty(),
            "the clock runs on"
        );
        let seen_long_ago =
            seen_recently.edit("a", |r| r.instance.absent_since = Some(ago(MIN * 2)));
        assert_eq!(facts(&seen_long_ago, "a").0, Presence::Gone);
    }

    #[test]
    fn a_failed_listing_says_nothing() {
        let fixture = Fixture::new()
            .row("a", Idle, MIN * 5, None, None)
            .edit("a", |r| r.instance.absent_since = Some(ago(MIN * 9)))
            .unlisted();
        assert_eq!(facts(&fixture, "a").0, Presence::Unknown);
        assert!(presence_marks(&fixture.snapshot).is_empty());
    }

    #[test]
    fn a_resource_listed_again_stops_the_clock() {
        let fixture = Fixture::new()
            .row("a", Claimed, MIN, Some(Running), None)
            .edit("a", |r| r.instance.absent_since = Some(ago(MIN * 9)));
        assert_eq!(facts(&fixture, "a").0, Presence::Listed(Running));
        assert_eq!(
            presence_marks(&fixture.snapshot),
            vec![PresenceMark {
                id: "a".into(),
                absent: false
            }]
        );
    }

    #[test]
    fn observations_carry_the_state_they_were_made_in() {
        let fixture = Fixture::new()
            .row("a", Idle, MIN, Some(Running), Some(ready()))
            .failures("a", 2)
            .row("b", Claimed, MIN, Some(Running), Some(Health::Unreachable));
        let seen = observations(&fixture.snapshot);
        assert_eq!(seen.len(), 2);
        assert!(seen[0].healthy && seen[0].status == Idle && seen[0].since == ago(MIN));
        assert!(!seen[1].healthy && seen[1].status == Claimed);
    }

    #[test]
    fn a_healthy_fleet_writes_nothing_unless_the_tick_was_cut_short() {
        let mut fixture = Fixture::new()
            .row("a", Idle, MIN, Some(Running), Some(ready()))
            .row("b", Claimed, MIN, Some(Running), Some(ready()));
        assert!(observations(&fixture.snapshot).is_empty());
        // Cut short, every answer is kept, so that the next tick asks the others first.
        fixture.snapshot.health_cut_short = true;
        assert_eq!(observations(&fixture.snapshot).len(), 2);
    }

    #[test]
    fn a_crashed_runtime_recovers_only_into_its_own_conversation() {
        let answer = |conversation: Option<&str>| Health::Ready {
            conversation_id: conversation.map(str::to_string),
        };
        let fixture = |health| {
            Fixture::new()
                .row("a", Crashed, MIN, Some(Running), Some(health))
                .edit("a", |r| r.instance.conversation_id = Some("conv-1".into()))
        };
        let recovers = |health| {
            let f = fixture(health);
            recovered(&f.snapshot.rows[0], &f.snapshot)
        };
        assert!(recovers(answer(Some("conv-1"))));
        assert!(recovers(answer(None)), "an older runtime does not say");
        assert!(
            !recovers(answer(Some("conv-2"))),
            "another conversation: not ours"
        );
        assert!(!recovers(Health::NotReady));
    }

    #[test]
    fn a_tool_resource_is_gone_after_two_listings_a_grace_period_apart() {
        let fixture = |absent_since| {
            Fixture::new()
                .row("a", Idle, MIN, Some(Running), Some(ready()))
                .tool("a", "openrouter", false, absent_since)
        };
        let first = fixture(None);
        assert_eq!(
            tool_presence_marks(&first.snapshot),
            vec![ToolPresenceMark {
                id: 1,
                absent: true
            }]
        );
        assert!(tools_gone(&first.snapshot, &rules()).is_empty());
        let soon = fixture(Some(ago(MIN / 2)));
        assert!(
            tool_presence_marks(&soon.snapshot).is_empty(),
            "the clock runs on"
        );
        assert!(tools_gone(&soon.snapshot, &rules()).is_empty());
        let later = fixture(Some(ago(MIN * 2)));
        assert_eq!(
            tools_gone(&later.snapshot, &rules()),
            HashMap::from([("a", "openrouter")])
        );
    }

    #[test]
    fn a_tool_resource_listed_again_stops_the_clock() {
        let fixture = Fixture::new()
            .row("a", Claimed, MIN, Some(Running), Some(ready()))
            .tool("a", "email", true, Some(ago(MIN * 2)));
        assert_eq!(
            tool_presence_marks(&fixture.snapshot),
            vec![ToolPresenceMark {
                id: 1,
                absent: false
            }]
        );
        assert!(tools_gone(&fixture.snapshot, &rules()).is_empty());
    }

    #[test]
    fn only_settled_instances_and_listed_tools_are_judged() {
        let mut fixture = Fixture::new()
            .row("a", Starting, MIN, Some(Running), None)
            .row("b", Destroying, MIN, Some(Running), None)
            .row("c", Idle, MIN, Some(Running), Some(ready()))
            .tool("a", "openrouter", false, Some(ago(MIN * 2)))
            .tool("b", "openrouter", false, Some(ago(MIN * 2)))
            .tool("c", "sms", false, Some(ago(MIN * 2)));
        // The Telnyx listing failed this tick: its numbers are not judged.
        fixture.snapshot.tools_listed.remove("sms");
        assert!(tool_presence_marks(&fixture.snapshot).is_empty());
        assert!(tools_gone(&fixture.snapshot, &rules()).is_empty());
    }
}
