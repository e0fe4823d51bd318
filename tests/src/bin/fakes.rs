//! `agentpool-fakes`: the stateful fakes of the outside APIs, for trying agentpool on a laptop.
//!
//! ```sh
//! cargo run -p agentpool-tests --bin agentpool-fakes
//! ```
//!
//! starts the Railway, OpenRouter, AgentMail, Telnyx and Sprites fakes (ports from
//! `FAKES_RAILWAY_PORT`, `FAKES_OPENROUTER_PORT`, `FAKES_AGENTMAIL_PORT`, `FAKES_TELNYX_PORT`,
//! `FAKES_SPRITES_PORT`; 4001 to 4005 by default) and prints the settings that point `agentpool dev` at them. Services the Railway
//! fake "deploys" are stub agents on loopback; Ctrl-C stops them all. Faults can be injected
//! into any fake while it runs:
//! `curl -X POST <base>/_fake/faults -d '{"fault":{"kind":"ServerError"},"scope":{"kind":"Rate","perMille":200,"seed":1}}'`.

use agentpool_tests::fakes::{
    AgentMailConfig, AgentMailFake, Controls, FakeConfig, OpenRouterConfig, OpenRouterFake,
    RailwayFake, SpritesConfig, SpritesFake, TelnyxConfig, TelnyxFake,
};

const TOKEN: &str = "fake-railway-token";

fn port(var: &str, default: u16) -> u16 {
    std::env::var(var)
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let railway = RailwayFake::start(FakeConfig {
        tokens: vec![TOKEN.into()],
        port: port("FAKES_RAILWAY_PORT", 4001),
        ..FakeConfig::default()
    })
    .await;
    let openrouter = OpenRouterFake::start(OpenRouterConfig {
        port: port("FAKES_OPENROUTER_PORT", 4002),
        ..OpenRouterConfig::default()
    })
    .await;
    let agentmail = AgentMailFake::start(AgentMailConfig {
        port: port("FAKES_AGENTMAIL_PORT", 4003),
        ..AgentMailConfig::default()
    })
    .await;
    let telnyx = TelnyxFake::start(TelnyxConfig {
        port: port("FAKES_TELNYX_PORT", 4004),
        ..TelnyxConfig::default()
    })
    .await;
    let sprites = SpritesFake::start(SpritesConfig {
        port: port("FAKES_SPRITES_PORT", 4005),
        ..SpritesConfig::default()
    })
    .await;
    let ids = railway.shared_ids();
    println!(
        "Railway fake at {url}  (state: {base}/_fake/state, faults: POST {base}/_fake/faults)\n\n\
         Shared-project layout:\n\n  \
         POOL_PROVIDER=railway RAILWAY_API_URL={url} RAILWAY_API_TOKEN={TOKEN} \\\n  \
         RAILWAY_PROJECT_ID={project} RAILWAY_ENVIRONMENT_ID={environment} RAILWAY_PUBLIC_SCHEME=http \\\n  \
         cargo run -p agentpool -- dev\n\n\
         Project-per-agent layout: RAILWAY_LAYOUT=project RAILWAY_TEAM_ID={workspace} instead of the two ids.\n",
        url = railway.url(),
        base = railway.base_url(),
        project = ids.project_id,
        environment = ids.environment_id,
        workspace = ids.workspace_id,
    );
    println!(
        "Per-agent tools (each fake has /_fake/state, /_fake/stats and /_fake/faults at its base):\n\n  \
         OPENROUTER_API_URL={openrouter_url} OPENROUTER_MANAGEMENT_KEY={openrouter_key} \\\n  \
         AGENTMAIL_API_URL={agentmail_url} AGENTMAIL_API_KEY={agentmail_key} AGENTMAIL_DOMAIN={domain} \\\n  \
         TELNYX_API_URL={telnyx_url} TELNYX_API_KEY={telnyx_key} TELNYX_MESSAGING_PROFILE_ID={profile}\n\n\
         Ctrl-C stops the fakes and every agent the Railway fake deployed.",
        openrouter_url = openrouter.url(),
        openrouter_key = openrouter.management_key(),
        agentmail_url = agentmail.url(),
        agentmail_key = agentmail.api_key(),
        domain = agentmail.domain(),
        telnyx_url = telnyx.url(),
        telnyx_key = telnyx.api_key(),
        profile = telnyx.messaging_profile_id(),
    );
    println!(
        "\nSprites mode (seed 002: golden checkpoints, recycling; its sprites run stub agents):\n\n  \
         POOL_PROVIDER=sprites SPRITES_API_URL={url} SPRITE_TOKEN={token} \\\n  \
         SPRITES_SETUP_COMMANDS='[\"build\"]' cargo run -p agentpool -- dev\n",
        url = sprites.url(),
        token = sprites.token(),
    );
    agentpool_core::shutdown_signal().await;
    drop((railway, openrouter, agentmail, telnyx, sprites));
}
