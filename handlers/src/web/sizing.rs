//! `GET /admin/sizing.svg` (operators): claims per hour, idle agents and the tick's target over
//! the last 24 hours, drawn on the server (the dashboard's pages run no inline script).

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use chrono::Duration;

use agentpool_core::tick::{self, Sample};

use crate::chart::{Chart, Line};
use crate::error::ApiResult;
use crate::state::AppState;

pub async fn chart(State(state): State<AppState>) -> ApiResult<Response> {
    let day = tick::last_day(&state.pool.db).await?;
    let bars: Vec<_> = day
        .claims_per_hour
        .iter()
        .map(|(hour, n)| (*hour, u32::try_from(*n).unwrap_or(u32::MAX)))
        .collect();
    let steps = |value: fn(&Sample) -> i32| {
        let mut points: Vec<(chrono::DateTime<chrono::Utc>, u32)> = Vec::new();
        for s in &day.samples {
            let v = u32::try_from(value(s)).unwrap_or(0);
            if points.last().is_none_or(|p| p.1 != v) {
                points.push((s.at, v));
            }
        }
        points
    };
    let svg = Chart {
        title: "Last 24 hours: claims per hour, idle agents, target",
        start: day.now - Duration::hours(24),
        end: day.now,
        bars: &bars,
        bar_width: Duration::hours(1),
        bar_label: "claims per hour",
        lines: vec![
            Line {
                label: "idle",
                colour: "#2a7f3f",
                dashed: false,
                points: steps(|s| s.idle),
            },
            Line {
                label: "target",
                colour: "#d2691e",
                dashed: true,
                points: steps(|s| s.target),
            },
        ],
    }
    .svg();
    Ok((
        [(CONTENT_TYPE, "image/svg+xml"), (CACHE_CONTROL, "no-store")],
        svg,
    )
        .into_response())
}
