//! Resources with our name prefix that no row owns. Only a listing taken (before the rows were
//! read, see `snapshot`) can show one; without a listing there are none.
//!
//! A row owns the resource whose id it records, whatever that resource is called now (a claimed
//! agent's is renamed after it), and, until it records one, the resource named after it (its
//! creator may be between making it and recording it).

use std::collections::{HashMap, HashSet};

use crate::domain::{InstanceStatus, ObservedResource, ToolResource};
use crate::tick::snapshot::Snapshot;

pub fn find(snapshot: &Snapshot) -> Vec<ObservedResource> {
    let Some(resources) = &snapshot.resources else {
        return Vec::new();
    };
    let names: HashSet<&str> = snapshot
        .rows
        .iter()
        .map(|r| r.instance.name.as_str())
        .collect();
    let ids: HashSet<&str> = snapshot
        .rows
        .iter()
        .filter_map(|r| r.resource_id.as_deref())
        .collect();
    resources
        .iter()
        .filter(|r| !ids.contains(r.resource_id.as_str()) && !names.contains(r.name.as_str()))
        .cloned()
        .collect()
}

/// Claimed (or crashed) agents whose resource is not yet called after them, with the name to
/// give it. Renamed from the listing's word, so a rename that failed or was never made (a replica
/// died after the claim) is made by a later tick, and one already made is not made again.
pub fn renames(snapshot: &Snapshot, prefix: &str) -> Vec<Rename> {
    let listing = super::evidence::Listing::of(snapshot);
    snapshot
        .rows
        .iter()
        .filter(|r| {
            matches!(
                r.instance.status,
                InstanceStatus::Claimed | InstanceStatus::Crashed
            )
        })
        .filter_map(|row| {
            let listed = listing.of_row(row)?;
            let agent = row.instance.agent_name.as_deref()?;
            let name = crate::domain::claimed_name(prefix, agent, &row.instance.id)?;
            (listed.name != name).then(|| Rename {
                id: row.instance.id.clone(),
                name,
            })
        })
        .collect()
}

/// A resource to call after its agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rename {
    pub id: String,
    pub name: String,
}

/// Tool resources no row records. One named for a `starting` or `claiming` instance (or for its
/// claim) is left alone:
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
            !crate::domain::instance_name_of(&r.name).iter().any(|name| {
                matches!(
                    status.get(name),
                    Some(InstanceStatus::Starting | InstanceStatus::Claiming)
                )
            })
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
            key(
                "added-at-claim",
                &crate::domain::claim_resource_name("ap-c", uuid::Uuid::new_v4()),
            ),
            key(
                "a-past-claim-s",
                &crate::domain::claim_resource_name("ap-a", uuid::Uuid::new_v4()),
            ),
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
        assert_eq!(orphans, vec!["duplicate", "a-past-claim-s", "left-behind"]);
    }

    /// A claimed agent's resource renamed after it is still its row's: known by its id.
    #[test]
    fn a_renamed_resource_is_known_by_its_id_and_a_real_orphan_is_not() {
        use crate::domain::InstanceStatus::Claimed;
        let fixture = Fixture::new()
            .row("a", Claimed, MIN, None, Some(ready()))
            .edit("a", |row| {
                row.instance.agent_name = Some("Trip Planner".into())
            })
            .renamed("ap-a", "ap-trip-planner-a", Running)
            .resource("ap-ghost", Running);
        let plan = fixture.plan();
        let names: Vec<&str> = plan.orphans.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["ap-ghost"]);
        assert!(plan.transitions.is_empty(), "{:?}", plan.transitions);
        assert!(plan.renames.is_empty(), "{:?}", plan.renames);
    }

    #[test]
    fn a_claimed_agent_not_yet_called_after_it_is_renamed() {
        use crate::domain::InstanceStatus::{Claimed, Crashed};
        let plan = Fixture::new()
            .row("a", Claimed, MIN, Some(Running), Some(ready()))
            .edit("a", |row| {
                row.instance.agent_name = Some("Trip Planner".into())
            })
            .row("b", Idle, MIN, Some(Running), Some(ready()))
            .row("c", Crashed, MIN, Some(Running), None)
            .edit("c", |row| row.instance.agent_name = Some("c".into()))
            .plan();
        assert_eq!(
            plan.renames,
            vec![
                super::Rename {
                    id: "a".into(),
                    name: "ap-trip-planner-a".into()
                },
                super::Rename {
                    id: "c".into(),
                    name: "ap-c-c".into()
                }
            ]
        );
        let unlisted = Fixture::new()
            .row("a", Claimed, MIN, Some(Running), Some(ready()))
            .edit("a", |row| row.instance.agent_name = Some("x".into()))
            .unlisted()
            .plan();
        assert!(unlisted.renames.is_empty());
    }

    #[test]
    fn nothing_is_renamed_where_names_are_fixed() {
        use crate::domain::InstanceStatus::Claimed;
        let fixture = Fixture::new()
            .row("a", Claimed, MIN, Some(Running), Some(ready()))
            .edit("a", |row| row.instance.agent_name = Some("x".into()));
        let fixed = super::super::Rules {
            rename_with_prefix: None,
            ..rules()
        };
        let plan = super::super::decide(&fixture.snapshot, &fixed, super::super::Mode::Full);
        assert!(plan.renames.is_empty(), "{:?}", plan.renames);
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
