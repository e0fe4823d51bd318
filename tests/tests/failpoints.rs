//! The failpoint sweep (see `agentpool_tests::sweep`): a fast subset here, the whole sweep with
//!
//! ```sh
//! nice -n 5 cargo test -p agentpool-tests --test failpoints -- --ignored --nocapture
//! ```
//!
//! which writes `docs/failpoints.md` (`SWEEP_JOBS`, default 3: cases at once; `SWEEP_FILTER`: only
//! the failpoints whose name contains it, or one of its comma-separated parts, and then no report
//! is written; `SWEEP_VERBOSE`: each case's phases; `SWEEP_RUST_LOG`: the replicas' `RUST_LOG`,
//! `warn` unless set, and then their logs are kept in `$TMPDIR/agentpool-sweep-<case>`). It fails
//! when a case broke an invariant, and when a case never reached its failpoint on replica A (then
//! it tested nothing).

use std::collections::BTreeSet;
use std::time::Instant;

use agentpool_tests::sweep::{self, Action, FAILPOINTS};

/// Every `failpoint!("name"…)` in the library's source.
fn failpoints_in_the_code() -> BTreeSet<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/src");
    let mut names = BTreeSet::new();
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (_, rest) in text
                    .match_indices("failpoint!(")
                    .map(|(i, _)| text.split_at(i + 11))
                {
                    let rest = rest.trim_start();
                    // Names have a dot (`claim.take.before`); the macro's own doc has none.
                    let name = rest.strip_prefix('"').and_then(|r| r.split('"').next());
                    if let Some(name) = name.filter(|n| n.contains('.')) {
                        names.insert(name.to_string());
                    }
                }
            }
        }
    }
    names
}

#[test]
fn every_failpoint_in_the_code_is_swept() {
    let in_code = failpoints_in_the_code();
    let swept: BTreeSet<String> = FAILPOINTS.iter().map(|s| s.to_string()).collect();
    assert_eq!(FAILPOINTS.len(), swept.len(), "a failpoint listed twice");
    assert_eq!(
        in_code.difference(&swept).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "failpoints in the code the sweep does not know"
    );
    assert_eq!(
        swept.difference(&in_code).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "failpoints the sweep lists that the code lacks"
    );
}

#[test]
fn every_focused_failpoint_is_swept() {
    let unknown: Vec<&str> = sweep::focused_failpoints()
        .into_iter()
        .filter(|f| !FAILPOINTS.contains(f))
        .collect();
    assert!(
        unknown.is_empty(),
        "focus targets no failpoint: {unknown:?}"
    );
}

fn check(verdicts: &[sweep::Verdict]) {
    let failed: Vec<String> = verdicts
        .iter()
        .filter(|v| !v.passed())
        .map(|v| {
            format!(
                "{} × {}: {}",
                v.failpoint,
                v.action.name(),
                v.violations.join("; ")
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "invariants broken:\n{}",
        failed.join("\n")
    );
}

/// One failpoint of each part of the lifecycle, each action once: about a minute on two cores.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fast_subset_of_the_sweep_holds() {
    let cases = vec![
        ("claim.provision.after", Action::Kill),
        // Before the claim's deadline cut every step: "claim 2 got no answer: no reply within
        // 3.6s" (the reply came after the 4.8 s stall).
        ("claim.provision.after", Action::Delay),
        ("creation.provider_create.after", Action::Kill),
        ("creation.tool_create.after", Action::Error),
        // The operator's delete goes to A first, so A surely reaches it.
        ("teardown.request_destroy.before", Action::Error),
        // Before the tick's bound cut what hangs under its lock: "… starting for 3.7 s, past its
        // timeout plus two ticks" (no replica could tick while the stalled one held the lock).
        ("tick.lease.after", Action::Delay),
    ];
    let verdicts = sweep::run_all(cases, 2).await;
    check(&verdicts);
    let unreached: Vec<&str> = verdicts
        .iter()
        .filter(|v| !v.fired)
        .map(|v| v.failpoint)
        .collect();
    assert!(unreached.is_empty(), "never reached: {unreached:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the whole sweep: minutes; run it with --ignored (see the module's doc)"]
async fn the_whole_sweep() {
    let filter = std::env::var("SWEEP_FILTER").ok();
    let jobs = std::env::var("SWEEP_JOBS")
        .ok()
        .and_then(|j| j.parse().ok())
        .unwrap_or(3);
    let cases: Vec<(&'static str, Action)> = FAILPOINTS
        .iter()
        .filter(|f| {
            filter
                .as_deref()
                .is_none_or(|parts| parts.split(',').any(|part| f.contains(part.trim())))
        })
        .flat_map(|f| Action::ALL.map(|a| (*f, a)))
        .collect();
    let started = Instant::now();
    let verdicts = sweep::run_all(cases, jobs).await;
    if filter.is_none() {
        let report = sweep::report(&verdicts, started.elapsed());
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/failpoints.md");
        std::fs::write(&path, report).unwrap();
        eprintln!("report written to {}", path.display());
    }
    check(&verdicts);
    // A case whose failpoint A never reached tested nothing: the scenario (or its focus on A,
    // `sweep::focus`) must be made to reach it.
    let unreached = sweep::unreached(&verdicts);
    assert!(
        unreached.is_empty(),
        "{} cases never reached their failpoint: {}",
        unreached.len(),
        unreached.join(", ")
    );
}
