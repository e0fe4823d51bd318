//! `agentpool-fakes`: the stateful fakes of the outside APIs, for trying railway mode on a laptop.
//!
//! ```sh
//! cargo run -p agentpool-tests --bin agentpool-fakes
//! ```
//!
//! prints the settings that point `agentpool dev` at them. Services the fake "deploys" are stub
//! agents on loopback; Ctrl-C stops them all. Faults can be injected while it runs:
//! `curl -X POST <base>/_fake/faults -d '{"fault":{"kind":"ServerError"},"scope":{"kind":"Rate","perMille":200,"seed":1}}'`.

use agentpool_tests::fakes::{FakeConfig, RailwayFake};

const TOKEN: &str = "fake-railway-token";

#[tokio::main]
async fn main() {
    let port = std::env::var("FAKES_RAILWAY_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(4001);
    let railway = RailwayFake::start(FakeConfig {
        tokens: vec![TOKEN.into()],
        port,
        ..FakeConfig::default()
    })
    .await;
    let ids = railway.shared_ids();
    println!(
        "Railway fake at {url}  (state: {base}/_fake/state, faults: POST {base}/_fake/faults)\n\n\
         Shared-project layout:\n\n  \
         POOL_PROVIDER=railway RAILWAY_API_URL={url} RAILWAY_API_TOKEN={TOKEN} \\\n  \
         RAILWAY_PROJECT_ID={project} RAILWAY_ENVIRONMENT_ID={environment} RAILWAY_PUBLIC_SCHEME=http \\\n  \
         cargo run -p agentpool -- dev\n\n\
         Project-per-agent layout: RAILWAY_LAYOUT=project RAILWAY_TEAM_ID={workspace} instead of the two ids.\n\n\
         Ctrl-C stops the fake and every agent it deployed.",
        url = railway.url(),
        base = railway.base_url(),
        project = ids.project_id,
        environment = ids.environment_id,
        workspace = ids.workspace_id,
    );
    agentpool_core::shutdown_signal().await;
    drop(railway);
}
