use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::state::AppState;

pub async fn healthz() -> Json<Value> {
    Json(json!({"ok": true}))
}

pub async fn version(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "version": crate::VERSION,
        "environment": state.pool.settings.pool_environment,
    }))
}
