//! `agentpool simulate` as a user runs it: a hand-counted trace through the binary, its table,
//! its `--json` shape, its chart and its sample week.

use std::path::Path;

use agentpool_tests::{agentpool_bin, clean};
use serde_json::Value;

fn simulate(dir: &Path, args: &[&str]) -> String {
    let output = clean(agentpool_bin())
        .current_dir(dir)
        .arg("simulate")
        .args(args)
        .output()
        .expect("run agentpool simulate");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// Three claims ten seconds apart at 09:10 (the unit test `a_hand_counted_hour` counts the same
/// hour by hand): `minIdle` 2 misses the third; 3 is the cheapest fixed size with no miss, idle
/// 3 agents for the hour but for the 90 s (plus up to one tick) each claimed one takes to be
/// replaced.
#[test]
fn a_hand_counted_trace_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("trace.txt"),
        "# three claims\n2026-11-23T09:10:00Z,tpl\n2026-11-23T09:10:10Z\n2026-11-23T09:10:20Z,tpl\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("two.json"), r#"{"minIdle": 2}"#).unwrap();

    let table = simulate(
        dir.path(),
        &["--trace", "trace.txt", "--policy", "two.json"],
    );
    let row = |name: &str| -> Vec<String> {
        let line = table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row {name}: {table}"));
        line[name.len()..]
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    // claims, misses, miss rate, idle hours, creations, destructions.
    assert_eq!(
        row("fixed minIdle 3"),
        ["3", "0", "0.00%", "2.9", "3", "0"],
        "{table}"
    );
    // 7000 agent-seconds idle (see the unit test): 1.94 hours.
    assert_eq!(
        row("policy two.json"),
        ["3", "1", "33.33%", "1.9", "2", "0"],
        "{table}"
    );
    assert!(table.contains("recommended: fixed minIdle 3"), "{table}");
    assert!(table.contains("/api/pool/settings"), "{table}");

    let json: Value = serde_json::from_str(&simulate(
        dir.path(),
        &["--trace", "trace.txt", "--json", "--chart", "out.svg"],
    ))
    .unwrap();
    let keys = |v: &Value| -> Vec<String> {
        let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(keys(&json), ["claims", "policies", "recommended"]);
    assert_eq!(json["claims"], 3);
    assert_eq!(
        keys(&json["policies"][0]),
        ["creations", "idleHours", "missRate", "name"]
    );
    assert_eq!(json["policies"][0]["name"], "fixed minIdle 3");
    assert_eq!(json["policies"][0]["missRate"], 0.0);
    assert_eq!(
        keys(&json["recommended"]),
        ["idleHours", "missRate", "name", "policy"]
    );
    assert_eq!(json["recommended"]["policy"]["minIdle"], 3);
    let svg = std::fs::read_to_string(dir.path().join("out.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("claims per hour"));
}

#[test]
fn the_sample_week_is_written_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    simulate(dir.path(), &["--generate-sample", "week.txt"]);
    let week = std::fs::read_to_string(dir.path().join("week.txt")).unwrap();
    assert_eq!(week.lines().filter(|l| !l.starts_with('#')).count(), 2646);
    assert_eq!(
        week,
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/simulate/sample-week.txt")
        )
        .unwrap(),
        "the committed sample is the generator's"
    );
}
