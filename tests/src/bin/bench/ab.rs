//! `--ab`: HTTP claims through two replicas side by side, in alternating runs on the same Postgres
//! and stub agent, for trying a change of the claim's path on a machine too busy for absolute
//! figures. Replica A is this build's `agentpool` with `BENCH_REPLICA_ENV`; replica B is
//! `BENCH_B_BIN` (default: the same binary) with `BENCH_B_ENV`. Printed, never written.

use std::process::Stdio;
use std::time::Duration;

use sqlx::PgPool;

use crate::claims::TickLock;
use crate::fleet::{extra_env, Replica, SharedStub};
use crate::limit::replica_run;

pub async fn run(
    db: &PgPool,
    database_url: &str,
    stub: &SharedStub,
    rounds: usize,
    claims: usize,
) -> anyhow::Result<()> {
    let lock = TickLock::take(db).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()?;
    let a = Replica::start(database_url, &http).await?;
    let b_bin = std::env::var_os("BENCH_B_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| agentpool_tests::agentpool_bin().to_path_buf());
    let b_env = extra_env("BENCH_B_ENV");
    let b_env: Vec<(&str, &str)> = b_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (b, _) = Replica::spawn_bin(&b_bin, database_url, &[], &b_env, Stdio::null())?;
    b.first_answer(&http).await?;
    for clients in [1usize, 16] {
        let mut rates = [Vec::new(), Vec::new()];
        let mut cpu = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            for i in 0..2 {
                let which = (i + round) % 2;
                let replica = if which == 0 { &a } else { &b };
                let (rate, cpu_ms) = replica_run(db, stub, &http, replica, clients, claims).await?;
                rates[which].push(rate);
                cpu[which].push(cpu_ms);
            }
        }
        let ratios: Vec<f64> = rates[0].iter().zip(&rates[1]).map(|(a, b)| b / a).collect();
        println!(
            "ab: {clients:>2} clients: A {:.0}/s ({:.3} ms CPU/claim), B {:.0}/s ({:.3} ms CPU/claim), B/A median {:.3}, rounds A {:?} B {:?}",
            median(rates[0].clone()),
            median(cpu[0].clone()),
            median(rates[1].clone()),
            median(cpu[1].clone()),
            median(ratios),
            rates[0].iter().map(|r| r.round()).collect::<Vec<_>>(),
            rates[1].iter().map(|r| r.round()).collect::<Vec<_>>(),
        );
    }
    drop((a, b));
    lock.release().await?;
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}
