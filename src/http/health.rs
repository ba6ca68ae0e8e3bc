//! Liveness, readiness and metrics.

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{AdminAuth, ApiError, ErrorBody};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

#[derive(Serialize, ToSchema)]
pub struct Alive {
    /// Always `ok`.
    status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Ready {
    /// Always `ready`.
    status: &'static str,
    /// `sqlite` or `postgres`.
    database: &'static str,
}

/// The process is alive and serving HTTP.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Alive, description = "Done")))]
async fn healthz() -> Json<Alive> {
    Json(Alive { status: "ok" })
}

/// The database answers, every migration is applied and start-up finished (sessions restored).
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, body = Ready, description = "Done"),
    (status = 503, body = ErrorBody, description = "`not_ready` or `database_unavailable`")))]
async fn readyz(State(state): State<AppState>) -> Result<Json<Ready>, ApiError> {
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
    Ok(Json(Ready {
        status: "ready",
        database: state.store.dialect(),
    }))
}

/// Prometheus text; metric names start with `waghl_`, no per-location labels.
#[utoipa::path(get, path = "/metrics", tag = "health", security(("admin" = [])), responses(
    (status = 200, description = "Prometheus text exposition", content_type = "text/plain"),
    (status = "default", body = ErrorBody, description = "An error")))]
async fn metrics(_: AdminAuth, State(state): State<AppState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
}
