//! The README's settings table and the settings the code reads cannot drift apart: every variable
//! a component reads has a row, every row names a variable something reads, and a default the
//! table gives is the default the code has.

use std::collections::BTreeSet;
use std::path::Path;

use agentpool_core::Settings;

/// Rows of the table that are not settings of the library: read by the binary itself.
const READ_ELSEWHERE: [&str; 1] = ["LOG_FORMAT"];

/// Defaults the table describes rather than states (worked out at run time).
const COMPUTED_DEFAULTS: [&str; 2] = ["POOL_MAX_TOTAL_CAP", "LOCAL_STATE_DIR"];

struct Row {
    variables: Vec<String>,
    default: String,
}

/// The rows of the table under `## Settings`.
fn table() -> Vec<Row> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let section = readme
        .split("\n## Settings\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a ## Settings section");
    section
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.split(" | ").collect();
            let variables = cells[0]
                .trim_start_matches("| ")
                .split(", ")
                .map(|v| v.trim_matches('`').to_string())
                .collect();
            Row {
                variables,
                default: cells.get(1).unwrap_or(&"").trim().to_string(),
            }
        })
        .collect()
}

#[test]
fn the_readme_lists_exactly_the_settings_read() {
    let read: BTreeSet<String> = Settings::variables().into_iter().collect();
    let listed: BTreeSet<String> = table()
        .into_iter()
        .flat_map(|row| row.variables)
        .filter(|v| !READ_ELSEWHERE.contains(&v.as_str()))
        .collect();
    let missing: Vec<&String> = read.difference(&listed).collect();
    let unknown: Vec<&String> = listed.difference(&read).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "README.md's settings table lacks {missing:?}; lists {unknown:?}, which no component reads"
    );
}

/// A default written as one value (`` `3001` ``, perhaps followed by a remark in parentheses) is
/// the code's: setting the variable to it changes nothing.
#[test]
fn the_readme_gives_the_defaults_of_the_code() {
    let defaults = format!("{:?}", Settings::from_vars([]).expect("defaults"));
    let mut checked = 0;
    for row in table() {
        let [variable] = row.variables.as_slice() else {
            continue;
        };
        if COMPUTED_DEFAULTS.contains(&variable.as_str()) {
            continue;
        }
        let Some(rest) = row.default.strip_prefix('`') else {
            continue;
        };
        let Some((value, remark)) = rest.split_once('`') else {
            continue;
        };
        if !(remark.is_empty() || remark.trim_start().starts_with('(')) {
            continue;
        }
        let set = Settings::from_vars([(variable.clone(), value.to_string())])
            .unwrap_or_else(|e| panic!("{variable}={value} as README.md gives it: {e}"));
        assert_eq!(
            format!("{set:?}"),
            defaults,
            "README.md says {variable} defaults to {value}; the code's default differs"
        );
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} defaults found in the table");
}
