//! Serving over HTTP with this process's own tick loop, and stopping cleanly.

use agentpool_core::access;

use crate::state::AppState;

/// Serves with this process's tick loop until SIGTERM or SIGINT; then stops accepting requests,
/// lets the running tick end without starting new work, and waits for the work requests started.
pub async fn until_signal(
    listener: tokio::net::TcpListener,
    state: AppState,
    every: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    let shutdown = state.shutdown.clone();
    let kicker = state.kicker.clone();
    let pool = state.pool.clone();
    let ticks = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { kicker.run_loop(pool, every, shutdown).await }
    });
    tokio::spawn({
        let (db, records, shutdown) = (
            state.pool.db.clone(),
            state.records.clone(),
            shutdown.clone(),
        );
        async move { access::follow_records(&db, &records, &shutdown).await }
    });
    if state.pool.provider.keeps_alive() {
        let pool = state.pool.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut timer = tokio::time::interval(pool.settings.tick.heartbeat_interval());
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = timer.tick() => {}
                }
                match agentpool_core::heartbeat::beat(&pool).await {
                    Ok(Some(round)) if round.failed > 0 => {
                        tracing::warn!(?round, "keep-alive round had failed pings")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "keep-alive round"),
                }
            }
        });
    }
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            agentpool_core::shutdown_signal().await;
            tracing::info!("shutting down");
            shutdown.cancel();
        }
    });
    // The peer address identifies a client for login throttling (unless a proxy header does).
    let app =
        crate::router(state.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    state.drain().await;
    let _ = ticks.await;
    Ok(served?)
}
