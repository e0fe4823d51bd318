//! The library's layers, checked from its source: every `crate::…` and `super::…` path in
//! `shared/src` is resolved to the module it names, and
//!
//! - a module never names one of a higher layer (vocabulary ← queries ← outside ← pipelines), and
//!   the outside clients name the vocabulary only, never the queries;
//! - no two modules name each other, directly or around a circle (a parent and its own children
//!   may: that is how a module is put together);
//! - the faces (`handlers/`, `scheduler/`) name the pipelines and the vocabulary, and below that
//!   only what `FACE_DEBT` lists.
//!
//! A layer is a directory (`shared/src/<layer>/`), its modules the `pub mod` lines of its
//! `mod.rs`; `lib.rs` re-exports them at the crate's root, so paths stay `crate::claim`, ....
//! See ARCHITECTURE.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lowest first. A module may name modules of its own layer or of an earlier one, except that
/// the outside clients do not name the queries: they report what happened, and the pipeline that
/// called them records or counts it.
const LAYERS: [&str; 4] = ["vocabulary", "queries", "outside", "pipelines"];

fn may_name(from: usize, to: usize) -> bool {
    to <= from && !(LAYERS[from] == "outside" && LAYERS[to] == "queries")
}

/// What `lib.rs` itself defines or re-exports, and the layer it counts in. `stub_agent` is a
/// program of its own (the reference runtime) and sits on top, with the pipelines.
const ROOT: [(&str, &str); 6] = [
    ("Pool", "pipelines"),
    ("shutdown_signal", "pipelines"),
    ("stub_agent", "pipelines"),
    ("Settings", "vocabulary"),
    ("Error", "vocabulary"),
    ("Result", "vocabulary"),
];

/// What the faces still name below the pipelines (file, module), and why: `dev` starts its own
/// Postgres and keeps its own local provider to stop every stub agent at the end; `migrate` opens
/// the database for nothing but its migrations. A new entry is a decision to write down, not a
/// way to silence this test.
const FACE_DEBT: &[(&str, &str)] = &[
    ("handlers/src/dev.rs", "db"),
    ("handlers/src/dev.rs", "providers"),
    ("handlers/src/main.rs", "db"),
];

type ModPath = Vec<String>;

#[derive(Clone)]
struct Source {
    /// Relative to the workspace, for messages.
    file: String,
    module: ModPath,
    layer: usize,
    text: String,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The code of a file without its comments (doc links name paths too, but are not imports).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            // A `//` inside a string (a URL) cuts the rest of that line: it holds no path we need.
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn layer_of(name: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| *l == name)
        .unwrap_or_else(|| panic!("no layer {name}"))
}

/// Every library file but `lib.rs` (the root composes everything; it is no one's dependency but
/// through the names in `ROOT`), with its crate-level module path and its layer.
fn library() -> Vec<Source> {
    let src = workspace().join("shared/src");
    let mut sources = Vec::new();
    for file in rust_files(&src) {
        let rel = file.strip_prefix(&src).expect("under src");
        let mut parts: Vec<String> = rel
            .iter()
            .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        if parts == ["lib"] {
            continue;
        }
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        let (layer, module) = match LAYERS.iter().position(|l| *l == parts[0]) {
            Some(layer) => (layer, parts[1..].to_vec()),
            None => {
                let name = parts[0].as_str();
                let layer = ROOT
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, l)| layer_of(l))
                    .unwrap_or_else(|| {
                        panic!(
                            "shared/src/{}: not in a layer; move it to shared/src/<layer>/ \
                             (one of {LAYERS:?}) and re-export it in lib.rs",
                            rel.display()
                        )
                    });
                (layer, parts)
            }
        };
        let text = code(&std::fs::read_to_string(&file).expect("read"));
        sources.push(Source {
            file: format!("shared/src/{}", rel.display()),
            module,
            layer,
            text,
        });
    }
    sources
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths a piece of code names after `prefix` (`crate::`, `super::`, `agentpool_core::`),
/// as segments, with `{a, b::c}` groups expanded one level (enough to know which module).
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + prefix.len()..];
        // Part of a longer name or path (`super::super::`: the first one reads the chain).
        if before.is_some_and(|c| is_ident(c) || c == ':') {
            continue;
        }
        found.extend(expand(rest));
    }
    found
}

/// The path at the start of `text`: `a::b::C`, `super::super::x`, or a `{…}` group.
fn expand(text: &str) -> Vec<Vec<String>> {
    if let Some(group) = text.strip_prefix('{') {
        let mut depth = 0;
        let mut items = Vec::new();
        let mut start = 0;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    items.push(&group[start..i]);
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&group[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        return items
            .into_iter()
            .flat_map(|item| expand(item.trim()))
            .collect();
    }
    let mut segments = Vec::new();
    let mut rest = text;
    loop {
        let end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        segments.push(rest[..end].to_string());
        match rest[end..].strip_prefix("::") {
            Some(next) if next.starts_with('{') => {
                return expand(next)
                    .into_iter()
                    .map(|tail| [segments.clone(), tail].concat())
                    .collect();
            }
            Some(next) => rest = next,
            None => break,
        }
    }
    if segments.is_empty() {
        Vec::new()
    } else {
        vec![segments]
    }
}

/// The modules a file names, as crate-level module paths (`["tick", "snapshot"]`), or a root
/// item (`["Pool"]`).
fn references(source: &Source, modules: &BTreeSet<ModPath>) -> BTreeSet<ModPath> {
    let mut named = BTreeSet::new();
    let mut resolve = |path: Vec<String>| {
        let known = (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|prefix| modules.contains(prefix));
        match known {
            Some(module) => {
                named.insert(module);
            }
            None => {
                if let Some(first) = path.first() {
                    if ROOT.iter().any(|(n, _)| n == first) {
                        named.insert(vec![first.clone()]);
                    }
                }
            }
        }
    };
    for path in paths_after(&source.text, "crate::") {
        resolve(path);
    }
    // `super::` from a module file means its parent; from a `mod tests` inside it, a sibling path
    // is still under the same parent, so one rule serves both.
    for path in paths_after(&source.text, "super::") {
        let mut base = source.module.clone();
        base.pop();
        let mut rest = path.as_slice();
        while rest.first().is_some_and(|s| s == "super") {
            base.pop();
            rest = &rest[1..];
        }
        resolve([base, rest.to_vec()].concat());
    }
    named
}

fn layer_of_module(module: &ModPath, sources: &[Source]) -> usize {
    sources
        .iter()
        .find(|s| &s.module == module)
        .map(|s| s.layer)
        .or_else(|| {
            ROOT.iter()
                .find(|(n, _)| module.len() == 1 && *n == module[0])
                .map(|(_, l)| layer_of(l))
        })
        .unwrap_or(0)
}

fn is_prefix(a: &ModPath, b: &ModPath) -> bool {
    a.len() <= b.len() && b[..a.len()] == a[..]
}

/// Edges between siblings: an edge from `tick::plan::evidence` to `tick::snapshot` is one from
/// `plan` to `snapshot` under `tick`. Parents and their children are left out.
fn sibling_edges(edges: &BTreeSet<(ModPath, ModPath)>) -> BTreeSet<(ModPath, ModPath)> {
    edges
        .iter()
        .filter(|(a, b)| !is_prefix(a, b) && !is_prefix(b, a))
        .map(|(a, b)| {
            let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
            (a[..=common].to_vec(), b[..=common].to_vec())
        })
        .collect()
}

/// The circles in a graph: its strongly connected components of more than one module.
fn circles(edges: &BTreeSet<(ModPath, ModPath)>) -> Vec<Vec<ModPath>> {
    let mut graph: BTreeMap<&ModPath, Vec<&ModPath>> = BTreeMap::new();
    for (a, b) in edges {
        graph.entry(a).or_default().push(b);
        graph.entry(b).or_default();
    }
    let reach = |from: &ModPath| -> BTreeSet<ModPath> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from];
        while let Some(node) = todo.pop() {
            for next in &graph[node] {
                if seen.insert((*next).clone()) {
                    todo.push(next);
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&ModPath, BTreeSet<ModPath>> =
        graph.keys().map(|n| (*n, reach(n))).collect();
    let mut found: Vec<Vec<ModPath>> = Vec::new();
    for node in graph.keys() {
        let mut circle: Vec<ModPath> = graph
            .keys()
            .filter(|other| reachable[node].contains(**other) && reachable[*other].contains(*node))
            .map(|m| (*m).clone())
            .collect();
        circle.sort();
        if circle.len() > 1 && !found.contains(&circle) {
            found.push(circle);
        }
    }
    found
}

fn name(module: &ModPath) -> String {
    module.join("::")
}

/// What is wrong with the library's imports, one line per problem.
fn problems(sources: &[Source]) -> Vec<String> {
    let modules: BTreeSet<ModPath> = sources.iter().map(|s| s.module.clone()).collect();
    let mut problems = Vec::new();
    let mut edges = BTreeSet::new();
    for source in sources {
        for target in references(source, &modules) {
            let layer = layer_of_module(&target, sources);
            if !may_name(source.layer, layer) {
                problems.push(format!(
                    "{} ({}) names crate::{} ({}): see LAYERS for who may name whom",
                    source.file,
                    LAYERS[source.layer],
                    name(&target),
                    LAYERS[layer]
                ));
            }
            if target != source.module && modules.contains(&target) {
                edges.insert((source.module.clone(), target));
            }
        }
    }
    for circle in circles(&sibling_edges(&edges)) {
        let names: Vec<String> = circle.iter().map(name).collect();
        let through: Vec<String> = edges
            .iter()
            .filter(|(a, b)| {
                circle.iter().any(|c| is_prefix(c, a)) && circle.iter().any(|c| is_prefix(c, b))
            })
            .filter(|(a, b)| !is_prefix(a, b) && !is_prefix(b, a))
            .map(|(a, b)| format!("{} → {}", name(a), name(b)))
            .collect();
        problems.push(format!(
            "import circle between {}: {}",
            names.join(", "),
            through.join("; ")
        ));
    }
    problems
}

#[test]
fn each_layer_names_only_those_below_it_and_no_module_imports_in_a_circle() {
    let sources = library();
    assert!(
        sources.iter().any(|s| s.module == ["tick", "snapshot"]),
        "the library's files were not found"
    );
    let problems = problems(&sources);
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_faces_name_the_pipelines_and_the_vocabulary() {
    let sources = library();
    let modules: BTreeSet<ModPath> = sources.iter().map(|s| s.module.clone()).collect();
    let pipelines = layer_of("pipelines");
    let mut problems = Vec::new();
    let mut owed = BTreeSet::new();
    for face in ["handlers/src", "scheduler/src"] {
        for file in rust_files(&workspace().join(face)) {
            let rel = file
                .strip_prefix(workspace())
                .expect("in workspace")
                .display()
                .to_string();
            let text = code(&std::fs::read_to_string(&file).expect("read"));
            for path in paths_after(&text, "agentpool_core::") {
                let Some(first) = path.first() else { continue };
                let module = vec![first.clone()];
                if !modules.contains(&module) {
                    continue;
                }
                let layer = layer_of_module(&module, &sources);
                let debt = FACE_DEBT.contains(&(rel.as_str(), first.as_str()));
                if debt {
                    owed.insert((rel.clone(), first.clone()));
                }
                let allowed = layer == 0 || layer >= pipelines || debt;
                if !allowed {
                    problems.push(format!(
                        "{rel} names agentpool_core::{first} ({}): the faces call the pipelines",
                        LAYERS[layer]
                    ));
                }
            }
        }
    }
    for (file, module) in FACE_DEBT {
        if !owed.contains(&(file.to_string(), module.to_string())) {
            problems.push(format!(
                "{file} no longer names agentpool_core::{module}: remove it from FACE_DEBT"
            ));
        }
    }
    problems.sort();
    problems.dedup();
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The checks find what they are for: a lower layer naming a higher one, and a circle, on a
/// small made-up library.
#[test]
fn the_checks_catch_a_layer_broken_and_a_circle() {
    let source = |file: &str, module: &[&str], layer: &str, text: &str| Source {
        file: file.into(),
        module: module.iter().map(|s| s.to_string()).collect(),
        layer: layer_of(layer),
        text: code(text),
    };
    let clean = vec![
        source("domain.rs", &["domain"], "vocabulary", "pub struct Id;"),
        source("db.rs", &["db"], "queries", "use crate::domain::Id;"),
        source(
            "tick/mod.rs",
            &["tick"],
            "pipelines",
            "use crate::{db, domain::Id};\nmod plan;",
        ),
        source(
            "tick/plan.rs",
            &["tick", "plan"],
            "pipelines",
            "use super::snapshot::Snapshot;\nuse super::Report; // crate::Pool in a comment",
        ),
        source(
            "tick/snapshot.rs",
            &["tick", "snapshot"],
            "pipelines",
            "use crate::Pool;",
        ),
    ];
    assert_eq!(problems(&clean), Vec::<String>::new());

    let mut upward = clean;
    upward[1] = source(
        "db.rs",
        &["db"],
        "queries",
        "use crate::{domain::Id, tick::snapshot::Snapshot};",
    );
    let found = problems(&upward);
    assert!(
        found
            .iter()
            .any(|p| p.contains("db.rs (queries) names crate::tick::snapshot (pipelines)")),
        "{found:?}"
    );

    let mut counting = upward.clone();
    counting[1] = source("db.rs", &["db"], "queries", "use crate::domain::Id;");
    counting.push(source(
        "outbound.rs",
        &["outbound"],
        "outside",
        "fn failed() { crate::db::count(); }",
    ));
    let found = problems(&counting);
    assert!(
        found
            .iter()
            .any(|p| p.contains("outbound.rs (outside) names crate::db (queries)")),
        "{found:?}"
    );

    let mut circle = upward;
    circle[1] = source("db.rs", &["db"], "queries", "use crate::domain::Id;");
    circle[4] = source(
        "tick/snapshot.rs",
        &["tick", "snapshot"],
        "pipelines",
        "fn f(m: super::plan::Mode) {}",
    );
    let found = problems(&circle);
    assert!(
        found
            .iter()
            .any(|p| p.contains("import circle between tick::plan, tick::snapshot")),
        "{found:?}"
    );
}
