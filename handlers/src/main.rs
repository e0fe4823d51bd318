use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use agentpool::{dev, lambda, AppState};
use agentpool_core::config::ConfigError;
use agentpool_core::tick::{self, Mode};
use agentpool_core::{db, stub_agent, Pool, Settings};

/// Keeps AI agent instances pre-warmed and hands one out in a single API call.
#[derive(Parser)]
#[command(name = "agentpool", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (the default; on AWS Lambda, serve through lambda_http).
    Serve,
    /// Everything on one laptop: a throwaway Postgres, the API, the tick loop, local stub agents.
    Dev,
    /// Apply database migrations and exit.
    Migrate,
    /// Run one tick, print what it did as JSON, exit.
    Tick {
        /// Reconcile only: no new instances.
        #[arg(long)]
        reconcile: bool,
    },
    /// The reference agent runtime (what the local provider starts).
    StubAgent {
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Instance name; lets the local provider recognise its processes.
        #[arg(long)]
        name: Option<String>,
        /// Write the local provider's record of this agent here once listening (needs --name).
        #[arg(long, requires = "name")]
        record: Option<std::path::PathBuf>,
    },
    /// Replay a claim trace through the tick's plan on a virtual clock: misses and idle
    /// instance-hours per sizing policy, and (`--recommend`) the cheapest policy to apply.
    Simulate(agentpool::simulate::Args),
    /// Exit 0 if `GET /healthz` of the `serve` on this host's `PORT` answers 200 (for container
    /// health checks in images without an HTTP client).
    Healthcheck,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    agentpool::init_tracing();
    // Only a build with the `failpoints` feature acts on it (the failpoint sweep's replicas).
    agentpool_core::failpoint::from_env();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("agentpool: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command.unwrap_or(Command::Serve))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentpool: {}", agentpool_core::error::describe(e.as_ref()));
            ExitCode::from(2)
        }
    }
}

fn settings() -> anyhow::Result<Settings> {
    Ok(Settings::from_env()?)
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve => serve().await,
        Command::Dev => dev::run(settings()?).await,
        Command::Migrate => {
            let settings = settings()?;
            let url = settings
                .db
                .database_url
                .ok_or_else(|| missing("DATABASE_URL"))?;
            db::open(url.expose(), 2).await?;
            println!("{{\"migrated\":true}}");
            Ok(())
        }
        Command::Tick { reconcile } => {
            let pool = Pool::connect(settings()?).await?;
            let mode = if reconcile {
                Mode::Reconcile
            } else {
                Mode::Full
            };
            let report = tick::run(&pool, mode).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Simulate(args) => agentpool::simulate::run(args),
        Command::Healthcheck => {
            let port = settings()?.server.port;
            agentpool::healthcheck::probe(port)
                .await
                .map_err(anyhow::Error::msg)
        }
        Command::StubAgent { port, name, record } => {
            let mut settings = stub_agent::StubSettings::from_env().map_err(anyhow::Error::msg)?;
            if let Some(name) = &name {
                settings = settings.for_agent(name);
            }
            let announce = match (name, record) {
                (Some(name), Some(record)) => Some(stub_agent::Announce { name, record }),
                _ => None,
            };
            stub_agent::run(
                SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                settings,
                announce,
            )
            .await?;
            Ok(())
        }
    }
}

fn missing(setting: &str) -> ConfigError {
    ConfigError {
        setting: setting.into(),
        problem: "missing".into(),
    }
}

async fn serve() -> anyhow::Result<()> {
    let settings = settings()?;
    if lambda::is_lambda() {
        lambda::check_environment()?;
    }
    let api_key = settings
        .server
        .pool_api_key
        .clone()
        .ok_or_else(|| ConfigError {
            setting: "POOL_API_KEY".into(),
            problem: "missing; `serve` refuses to start without an API key".into(),
        })?;
    let port = settings.server.port;
    let every = settings.tick.tick_interval();
    let pool = Pool::connect(settings).await?;
    let state = AppState::new(pool.clone(), api_key);
    if lambda::is_lambda() {
        return lambda::serve(state).await.map_err(|e| anyhow::anyhow!(e));
    }
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).await?;
    tracing::info!(addr = %listener.local_addr()?, tick_interval_ms = every.map(|d| d.as_millis() as u64), "serving");
    agentpool::serve::until_signal(listener, state, every).await
}
