//! Resources with our name prefix that no row owns. Only a listing taken (before the rows were
//! read, see `snapshot`) can show one; without a listing there are none.

use std::collections::HashSet;

use crate::domain::ObservedResource;
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
    fn without_a_listing_nothing_is_an_orphan() {
        let plan = Fixture::new()
            .resource("ap-ghost", Running)
            .unlisted()
            .plan();
        assert!(plan.orphans.is_empty());
    }
}
