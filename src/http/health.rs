//! Liveness, readiness and metrics.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};

use super::{AdminAuth, ApiError};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// The process is alive and serving HTTP.
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The database answers, every migration is applied and start-up finished (sessions restored).
async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if !state.is_started() {
        return Err(ApiError::Unavailable {
            code: "not_ready",
            message: "waghl is still starting".into(),
        });
    }
    if !state.store.is_ready().await {
        return Err(ApiError::Unavailable {
            code: "database_unavailable",
            message: "the database does not answer or is not migrated".into(),
        });
    }
    Ok(Json(json!({ "status": "ready", "database": state.store.dialect() })))
}

async fn metrics(_: AdminAuth, State(state): State<AppState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
}
