//! `agentpool-fuzz-target`: a pool for an API fuzzer to hammer. Starts a throwaway Postgres, the
//! API on a free loopback port with the local provider and stub agents, fills the pool, and
//! prints one line, `<base URL> <API key>`, then serves until SIGTERM or Ctrl-C, when it stops
//! the stub agents (Postgres stops with this process).
//!
//! ```sh
//! cargo run -p agentpool-tests --bin agentpool-fuzz-target
//! ```
//!
//! `.ci/fuzz` runs schemathesis against it.

use std::io::Write;

use agentpool_tests::TestPool;
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Small, so that a fuzzer asking for 100 instances at a time cannot swamp the machine: the
    // cap bounds what `PUT /api/pool/settings` may set, and every creation is within it.
    let pool = TestPool::with(
        &[
            ("POOL_MIN_IDLE", "2"),
            ("POOL_MAX_TOTAL", "4"),
            ("POOL_MAX_TOTAL_CAP", "4"),
            // The fuzzer stands for many clients behind a proxy (`.ci/fuzz_hooks.py`).
            ("TRUSTED_PROXIES", "127.0.0.1/32"),
        ],
        &[],
    )
    .await;
    pool.fill(2).await;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{} {}", pool.base, pool.key)?;
    stdout.flush()?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(pool);
    Ok(())
}
