//! agentpool's library: everything but HTTP routing.
//!
//! - [`claim`]: hand an idle instance to a user.
//! - [`tick`]: reconcile the fleet and replenish the pool (snapshot → plan → execute).
//! - [`creation`]: the one pipeline that creates instances, for the tick and the API.
//! - [`gate`]: when long work may start another step (budget, lock, shutdown).
//! - [`recycle`]: a used instance back to the pool from its golden checkpoint.
//! - [`providers`]: where instances run (`local` stub agents, Railway, Fly.io Sprites).
//! - [`runtime`]: client of the agent runtime contract; [`stub_agent`]: its reference server.
//! - [`instances`]: the queries shared by the API and the tick; [`db`]: pool and migrations.
//! - [`pool_size`]: `minIdle` and `maxTotal` as set at run time; [`sessions`]: dashboard logins.

// One directory per layer; each layer imports only those before it (see ARCHITECTURE.md and
// `tests/layers.rs`). The modules keep their crate-level paths (`crate::claim`, ...).
mod vocabulary;
pub use vocabulary::{calls, config, domain, error, failpoint, progress, template};
mod queries;
pub use queries::{
    capacity, db, instances, lease, listing, metrics, pool_size, prompt_cache, samples, services,
    sessions, templates,
};
mod outside;
pub use outside::{notion, outbound, providers, runtime, tools};
mod pipelines;
pub use pipelines::{
    access, beats, catalog, claim, creation, debug, gate, heartbeat, operator, overview, prompts,
    recycle, simulate, tick,
};

pub mod stub_agent;

use std::sync::Arc;

pub use config::Settings;
pub use error::{Error, Result};

use calls::Tally;
use providers::Provider;
use runtime::RuntimeClient;
use sqlx::PgPool;

/// Everything a handler or a tick needs, cheap to clone. Holds no state that matters across
/// requests: that is all in Postgres.
#[derive(Clone)]
pub struct Pool {
    pub db: PgPool,
    pub settings: Arc<Settings>,
    pub provider: Arc<dyn Provider>,
    pub tools: tools::Toolbox,
    pub runtime: RuntimeClient,
    /// Failed outside calls not yet written to `/metrics`: the only thing held in memory, and
    /// only counts.
    pub tally: Tally,
    /// Notion, for instructions kept as pages; `None` without `NOTION_API_KEY`.
    pub notion: Option<Arc<notion::Notion>>,
}

impl Pool {
    /// `tally` is the one the provider's client reports to, if it has one; the tools get it too.
    pub fn new(db: PgPool, settings: Settings, provider: Arc<dyn Provider>, tally: Tally) -> Self {
        let runtime = RuntimeClient::new(
            settings.runtime.runtime_protocol,
            settings.health.health_timeout(),
            settings.claim.provision_timeout(),
            settings.runtime.retry_interval(),
        );
        let tools = tools::Toolbox::from_settings(&settings.tools, &settings.outbound, &tally);
        let notion = notion::Notion::from_settings(&settings.prompts, &tally).map(Arc::new);
        Self {
            notion,
            db,
            settings: Arc::new(settings),
            provider,
            tools,
            runtime,
            tally,
        }
    }

    /// Connects to `DATABASE_URL`, migrates, and builds the configured provider.
    pub async fn connect(settings: Settings) -> Result<Self> {
        let url = settings.db.database_url.clone().ok_or_else(|| {
            Error::Config(config::ConfigError {
                setting: "DATABASE_URL".into(),
                problem: "missing".into(),
            })
        })?;
        let db = db::open(url.expose(), settings.db.database_max_connections).await?;
        let tally = Tally::default();
        let provider = providers::from_settings(&settings, &tally)?;
        Ok(Self::new(db, settings, provider, tally))
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
