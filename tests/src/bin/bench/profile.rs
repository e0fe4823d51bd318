//! Where a claim over HTTP spends what the minimal claim does not (`--profile`): a CPU profile of
//! one replica under 16 clients (`perf record`, sampling on the CPU clock), the statements the
//! replica runs per claim (its own `sqlx::query` log lines), and its allocations per claim
//! (`heaptrack`). Each is skipped, and says so, when its tool is missing.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;

use crate::claims::{claim_over_http, fill, load, TickLock};
use crate::fleet::{Replica, SharedStub};

const CLIENTS: usize = 16;
const CLAIMS: usize = 4_000;

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// `perf report` lines: share of the replica's samples, shared object, symbol.
    pub cpu_top: Vec<String>,
    /// The same samples by shared object (kernel, libc, the binary).
    pub cpu_by_object: Vec<String>,
    /// The binary's samples by crate (the first path segment of each symbol), share of all.
    pub cpu_by_crate: Vec<(String, f64)>,
    pub cpu_samples: Option<u64>,
    pub statements_per_claim: Option<f64>,
    pub allocations_per_claim: Option<f64>,
    pub notes: Vec<String>,
}

pub async fn measure(
    db: &PgPool,
    database_url: &str,
    stub: &SharedStub,
) -> anyhow::Result<Profile> {
    let lock = TickLock::take(db).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut profile = Profile::default();
    let dir = tempfile::Builder::new()
        .prefix("agentpool-bench-profile-")
        .tempdir()?;

    // CPU: perf attached to a plain replica.
    let (replica, _) = Replica::spawn(database_url)?;
    replica.first_answer(&http).await?;
    let data = dir.path().join("perf.data");
    let perf = std::process::Command::new("perf")
        .args(["record", "-F", "1999", "-o"])
        .arg(&data)
        .args(["-p", &replica.process.0.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match perf {
        Err(e) => profile.notes.push(format!("no CPU profile: perf: {e}")),
        Ok(mut perf) => {
            // perf needs a moment to attach before the load starts.
            tokio::time::sleep(Duration::from_millis(500)).await;
            claims(db, stub, &http, &replica.base, CLAIMS).await?;
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(perf.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let _ = perf.wait();
            let report = |fields: &str, limit: &str| -> anyhow::Result<String> {
                let output = std::process::Command::new("perf")
                    .args(["report", "--stdio", "--no-children", "-F", fields])
                    .args(["--percent-limit", limit, "-i"])
                    .arg(&data)
                    .output()?;
                Ok(String::from_utf8_lossy(&output.stdout).into_owned())
            };
            let lines = |text: &str| -> Vec<String> {
                text.lines()
                    .filter(|l| !l.starts_with('#') && l.contains('%'))
                    .take(25)
                    .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                    .collect()
            };
            let text = report("overhead,dso,sym", "0.7")?;
            profile.cpu_samples = text
                .lines()
                .find_map(|l| l.strip_prefix("# Samples: "))
                .and_then(|s| s.split_whitespace().next())
                .and_then(parse_count);
            profile.cpu_top = lines(&text);
            profile.cpu_by_object = lines(&report("overhead,dso", "0.5")?);
            profile.cpu_by_crate = by_crate(&report("overhead,dso,sym", "0")?);
        }
    }
    drop(replica);

    // Statements: a replica logging each statement it runs.
    let log_path = dir.path().join("replica.log");
    let log = std::fs::File::create(&log_path)?;
    let (replica, _) = Replica::spawn_with(
        database_url,
        &[],
        &[
            ("RUST_LOG", "warn,sqlx::query=debug"),
            ("LOG_FORMAT", "json"),
        ],
        Stdio::from(log),
    )?;
    replica.first_answer(&http).await?;
    let before = count_statements(&log_path);
    let n = 500;
    claims(db, stub, &http, &replica.base, n).await?;
    // The fills of `claims` run in this process, not the replica: only the replica's count.
    profile.statements_per_claim =
        Some(((count_statements(&log_path) - before) as f64 / n as f64 * 100.0).round() / 100.0);
    drop(replica);

    // Allocations: a replica under heaptrack, stopped gracefully so that it writes its data.
    let out = dir.path().join("heap");
    let heap = Replica::spawn_with(
        database_url,
        &["heaptrack", "-o", &out.display().to_string()],
        &[],
        Stdio::null(),
    );
    match heap {
        Err(e) => profile
            .notes
            .push(format!("no allocation counts: heaptrack: {e}")),
        Ok((replica, _)) => {
            replica.first_answer(&http).await?;
            let n = 1_000;
            claims(db, stub, &http, &replica.base, n).await?;
            let pid = replica.process.0.id();
            // heaptrack runs the replica as its child; SIGTERM reaches the replica through the
            // wrapper's process, whose exit we await (Guarded kills only if still running).
            for child in descendants_of(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let mut replica = replica;
            let _ = tokio::task::spawn_blocking(move || replica.process.0.wait()).await;
            let file = std::fs::read_dir(dir.path())?
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("heap"))
                });
            if let Some(file) = file {
                let printed = std::process::Command::new("heaptrack_print")
                    .args(["--print-peaks", "0", "--print-allocators", "0"])
                    .args(["--print-temporary", "0", "--print-leaks", "0", "-f"])
                    .arg(&file)
                    .output()?;
                let text = String::from_utf8_lossy(&printed.stdout);
                let line = text
                    .lines()
                    .find(|l| l.starts_with("calls to allocation functions: "))
                    .unwrap_or("no allocation count in heaptrack_print's output");
                profile.notes.push(format!("heaptrack: {line}"));
                let total = text
                    .lines()
                    .find_map(|l| l.strip_prefix("calls to allocation functions: "))
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(parse_count);
                profile.allocations_per_claim =
                    total.map(|t| (t as f64 / n as f64 * 10.0).round() / 10.0);
                profile.notes.push(format!(
                    "allocations per claim count the replica's start-up too, spread over {n} claims"
                ));
            } else {
                profile.notes.push("heaptrack wrote no data".into());
            }
        }
    }
    lock.release().await?;
    Ok(profile)
}

async fn claims(
    db: &PgPool,
    stub: &SharedStub,
    http: &reqwest::Client,
    base: &str,
    n: usize,
) -> anyhow::Result<()> {
    fill(db, stub, n + 100).await?;
    let base = Arc::new(base.to_string());
    let http = http.clone();
    let done = load(CLIENTS, n, None, move |_| {
        let (http, base) = (http.clone(), base.clone());
        async move { claim_over_http(&http, &base).await }
    })
    .await;
    let errors = done.samples.iter().filter(|(_, o)| o.is_err()).count();
    anyhow::ensure!(errors == 0, "{errors} claims failed while profiling");
    Ok(())
}

fn count_statements(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"target\":\"sqlx::query\""))
        .count()
}

/// Sums the binary's symbols by crate: `<hyper::proto::h1::Conn<..>>::poll` → `hyper`.
fn by_crate(report: &str) -> Vec<(String, f64)> {
    let mut sums: std::collections::BTreeMap<String, f64> = Default::default();
    for line in report.lines().filter(|l| !l.starts_with('#')) {
        let mut words = line.split_whitespace();
        let (Some(share), Some(object)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(share) = share.trim_end_matches('%').parse::<f64>() else {
            continue;
        };
        let symbol = words.skip(1).collect::<Vec<_>>().join(" ");
        let name = if object != "agentpool" {
            object.to_string()
        } else {
            let trimmed = symbol.trim_start_matches(['<', '&', '*', ' ']);
            let trimmed = trimmed.strip_prefix("dyn ").unwrap_or(trimmed);
            let first = trimmed
                .split("::")
                .next()
                .unwrap_or("?")
                .trim_start_matches(['<', '&']);
            format!("agentpool: {first}")
        };
        *sums.entry(name).or_default() += share;
    }
    let mut sums: Vec<(String, f64)> = sums
        .into_iter()
        .map(|(k, v)| (k, (v * 100.0).round() / 100.0))
        .filter(|(_, v)| *v >= 0.5)
        .collect();
    sums.sort_by(|a, b| b.1.total_cmp(&a.1));
    sums
}

/// Every process below `pid`, children first.
fn descendants_of(pid: u32) -> Vec<u32> {
    let all: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| Some((p, agentpool_tests::proc_stat(p)?.get(1)?.parse().ok()?)))
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    found.remove(0);
    // Only the replica itself: heaptrack's helpers must live on to write the data.
    found
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("serve"))
        })
        .collect()
}

/// `1.5K`, `12345` (perf and heaptrack abbreviate large counts).
fn parse_count(s: &str) -> Option<u64> {
    let s = s.trim().trim_end_matches(',');
    let (number, scale) = match s.chars().last()? {
        'K' => (&s[..s.len() - 1], 1e3),
        'M' => (&s[..s.len() - 1], 1e6),
        _ => (s, 1.0),
    };
    number.parse::<f64>().ok().map(|n| (n * scale) as u64)
}
