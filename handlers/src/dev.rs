//! `agentpool dev`: the whole service on one machine, from nothing but the installed Postgres
//! server binaries. Ctrl-C stops the API, the tick loop, every stub agent and Postgres, in that
//! order, leaving no process behind.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use agentpool_core::calls::Tally;
use agentpool_core::config::{ProviderKind, Secret};
use agentpool_core::db::embedded::{create_database, EmbeddedPostgres};
use agentpool_core::domain::new_gateway_token;
use agentpool_core::providers::local::LocalProvider;
use agentpool_core::providers::{self, Provider};
use agentpool_core::{db, Pool, Settings};

use crate::state::AppState;

/// Dev ticks every second (unless `TICK_INTERVAL_MS` says otherwise) so the pool fills at once.
const DEV_TICK_INTERVAL_MS: u64 = 1_000;

pub async fn run(mut settings: Settings) -> anyhow::Result<()> {
    let workdir = tempfile::Builder::new()
        .prefix("agentpool-dev-")
        .tempdir()
        .context("creating the dev work directory")?;
    let generated_key = settings.server.pool_api_key.is_none();
    let api_key = settings
        .server
        .pool_api_key
        .get_or_insert_with(|| Secret::new(new_gateway_token()))
        .clone();
    if std::env::var_os("TICK_INTERVAL_MS").is_none() {
        settings.tick.tick_interval_ms = DEV_TICK_INTERVAL_MS;
    }
    if settings.providers.local.local_state_dir.is_none() {
        settings.providers.local.local_state_dir = Some(workdir.path().join("agents"));
    }

    let postgres = match &settings.db.database_url {
        Some(_) => None,
        None => {
            let root = workdir.path().join("postgres");
            std::fs::create_dir_all(&root)?;
            let server = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&root))
                .await?
                .context("starting the throwaway Postgres")?;
            create_database(&server.url("postgres"), "agentpool").await?;
            settings.db.database_url = Some(Secret::new(server.url("agentpool")));
            Some(server)
        }
    };
    // Local stub agents are this run's own and stop with it. Remote instances (Railway, or the
    // fakes of `agentpool-fakes`) stay; the next run's tick finds them as orphans and deletes them.
    let local = match settings.providers.pool_provider {
        ProviderKind::Local => Some(Arc::new(LocalProvider::from_settings(
            &settings.providers.local,
        )?)),
        _ => None,
    };
    let tally = Tally::default();
    let (provider, agents): (Arc<dyn Provider>, String) = match &local {
        Some(local) => (local.clone(), local.state_dir().display().to_string()),
        None => (
            providers::from_settings(&settings, &tally)?,
            format!("{} provider", settings.providers.pool_provider.as_str()),
        ),
    };
    let outcome = serve(
        settings,
        api_key,
        generated_key,
        (provider, tally),
        agents,
        postgres.as_ref(),
    )
    .await;

    if let Some(local) = local {
        match local.destroy_all().await {
            Ok(n) => tracing::info!(agents = n, "stub agents stopped"),
            Err(e) => tracing::error!(error = %e, "stopping stub agents"),
        }
    }
    if let Some(server) = postgres {
        tokio::task::spawn_blocking(move || server.stop()).await??;
        tracing::info!("postgres stopped");
    }
    outcome
}

async fn serve(
    settings: Settings,
    api_key: Secret,
    generated_key: bool,
    (provider, tally): (Arc<dyn Provider>, Tally),
    agents: String,
    postgres: Option<&EmbeddedPostgres>,
) -> anyhow::Result<()> {
    let url = settings
        .db
        .database_url
        .clone()
        .context("DATABASE_URL is set above")?;
    let db = db::open(url.expose(), settings.db.database_max_connections).await?;
    let port = settings.server.port;
    // `TICK_INTERVAL_MS=0` in dev would leave the pool to fill on kicks alone.
    let interval = settings
        .tick
        .tick_interval()
        .unwrap_or(Duration::from_millis(DEV_TICK_INTERVAL_MS));
    let pool = Pool::new(db, settings, provider, tally);
    let state = AppState::new(pool.clone(), api_key.clone());

    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{port}"))?;
    let base = format!("http://{}", listener.local_addr()?);
    let key_note = if generated_key {
        "generated for this run"
    } else {
        "from POOL_API_KEY"
    };
    let database = match postgres {
        Some(server) => format!(
            "{} (throwaway, pid {})",
            server.url("agentpool"),
            server.pid()
        ),
        None => "DATABASE_URL".to_string(),
    };
    // The banner is for a person at a terminal; dev prints the API key by design. A closed
    // stdout is no reason to stop serving, so write errors are ignored.
    let key = api_key.expose();
    let banner = format!(
        "agentpool dev\n  listening on {base}\n  dashboard:   {base}/admin (log in with the api key)\n  api key:     {key} ({key_note})\n  database:    {database}\n  agents:      {agents}\n\n  curl -s {base}/api/pool/counts\n  curl -s -X POST {base}/api/pool/claim -H 'Authorization: Bearer {key}' \\\n    -d '{{\"agentName\":\"demo\",\"instructions\":\"Say hello.\"}}'\n\nCtrl-C stops everything.\n"
    );
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(banner.as_bytes()).and_then(|_| out.flush());
    }

    state.kicker.kick();
    crate::serve::until_signal(listener, state, Some(interval)).await
}
