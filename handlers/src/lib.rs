//! The `agentpool` binary's library half: the HTTP API over `agentpool-core`, and the glue that
//! runs it (`serve`, `dev`, Lambda), and the browser dashboard (`web`).

pub mod auth;
pub mod chart;
pub mod dev;
pub mod error;
pub mod extract;
pub mod healthcheck;
pub mod lambda;
pub mod openapi;
pub mod request_id;
pub mod routes;
pub mod serve;
pub mod simulate;
pub mod state;
pub mod web;

pub use routes::router;
pub use state::AppState;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Structured logs on stderr; `LOG_FORMAT=json` for machines, `RUST_LOG` to filter.
pub fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if std::env::var("LOG_FORMAT").is_ok_and(|v| v == "json") {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}
