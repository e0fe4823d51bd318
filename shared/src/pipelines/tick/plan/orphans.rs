//! Resources with our name prefix that no row owns. Only a listing taken (before the rows were
//! read, see `snapshot`) can show one; without a listing there are none.

use std::collections::{HashMap, HashSet};

use crate::domain::{InstanceStatus, ObservedResource, ToolResource};
use crate::tick::snapshot::Snapshot;

pub fn find(snapshot: &Snapshot) -> Vec<ObservedResource> {
    let Some(resources) = &snapshot.resources else {
        return Vec::new();
    };
    let known: HashSet<&str> = snapshot
        .rows
        .iter()
        .map(|r| r.instance.name.as_str())
        .collect();
    resources
        .iter()
        .filter(|r| !known.contains(r.name.as_str()))
        .cloned()
        .collect()
}

/// Tool resources no row records. One named for a `starting` or `claiming` instance is left alone:
/// its creator (or its claim, adding the template's tools) may be between making it and recording
/// it. A duplicate made by a retried creation, or one whose
/// instance is gone, is an orphan.
pub fn tools(snapshot: &Snapshot) -> Vec<ToolResource> {
    let status: HashMap<&str, InstanceStatus> = snapshot
        .rows
        .iter()
        .map(|r| (r.instance.name.as_str(), r.instance.status))
        .collect();
    let recorded: HashSet<(&str, &str)> = snapshot
        .recorded
        .iter()
        .map(|r| (r.tool_id.as_str(), r.resource_id.as_str()))
        .collect();
    snapshot
        .tool_resources
        .iter()
        .filter(|r| !recorded.contains(&(r.tool_id.as_str(), r.resource_id.as_str())))
        .filter(|r| {
            !matches!(
                status.get(r.name.as_str()),
                Some(InstanceStatus::Starting | InstanceStatus::Claiming)
            )
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::fixture::*;
    use crate::domain::InstanceStatus::Idle;
    use crate::domain::ResourceStatus::Running;

    #[test]
    fn resources_without_rows_are_orphans() {
        let plan = Fixture::new()
            .row("a", Idle, MIN, Some(Running), Some(ready()))
            .resource("ap-ghost", Running)
            .plan();
        let names: Vec<&str> = plan.orphans.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["ap-ghost"]);
    }

    #[test]
    fn unrecorded_tool_resources_are_orphans_unless_their_instance_is_starting_or_claiming() {
        use crate::domain::InstanceStatus::{Claiming, Starting};
        let mut fixture = Fixture::new()
            .row("a", Idle, MIN, Some(Running), None)
            .row("b", Starting, MIN, Some(Running), None)
            .row("c", Claiming, MIN, Some(Running), None);
        let key = |hash: &str, name: &str| crate::domain::ToolResource {
            tool_id: "openrouter".into(),
            resource_id: hash.into(),
            name: name.into(),
        };
        fixture.snapshot.tool_resources = vec![
            key("recorded", "ap-a"),
            key("duplicate", "ap-a"),
            key("being-made", "ap-b"),
            key("added-at-claim", "ap-c"),
            key("left-behind", "ap-gone"),
        ];
        fixture
            .snapshot
            .recorded
            .push(recorded("a", "openrouter", "recorded", None));
        let orphans: Vec<String> = super::tools(&fixture.snapshot)
            .into_iter()
            .map(|r| r.resource_id)
            .collect();
        assert_eq!(orphans, vec!["duplicate", "left-behind"]);
    }

    #[test]
    fn without_a_listing_nothing_is_an_orphan() {
        let plan = Fixture::new()
            .resource("ap-ghost", Running)
            .unlisted()
            .plan();
        assert!(plan.orphans.is_empty());
    }
}
