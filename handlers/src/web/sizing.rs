//! `GET /admin/sizing.svg` (operators): claims per hour, idle agents and the tick's target over
//! the last 24 hours, drawn on the server (the dashboard's pages run no inline script).

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use chrono::Duration;

use agentpool_core::tick;

use crate::chart::{self, Chart};
use crate::error::ApiResult;
use crate::state::AppState;

pub async fn chart(State(state): State<AppState>) -> ApiResult<Response> {
    let day = tick::last_day(&state.pool).await?;
    let bars: Vec<_> = day
        .claims_per_hour
        .iter()
        .map(|(hour, n)| (*hour, u32::try_from(*n).unwrap_or(u32::MAX)))
        .collect();
    let non_negative = |n: i32| u32::try_from(n).unwrap_or(0);
    let samples: Vec<_> = day
        .samples
        .iter()
        .map(|s| (s.at, non_negative(s.idle), non_negative(s.target)))
        .collect();
    let svg = Chart {
        title: "Last 24 hours: claims per hour, idle agents, target",
        start: day.now - Duration::hours(24),
        end: day.now,
        bars: &bars,
        bar_width: Duration::hours(1),
        bar_label: "claims per hour",
        lines: chart::idle_and_target(&samples),
    }
    .svg();
    Ok((
        [(CONTENT_TYPE, "image/svg+xml"), (CACHE_CONTROL, "no-store")],
        svg,
    )
        .into_response())
}
