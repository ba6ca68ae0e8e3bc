//! The admin JSON API (bearer `WAGHL_ADMIN_TOKEN`): locations and their health.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::sessions::session_json;
use super::{AdminAuth, ApiError, LocationPath};
use crate::domain::LocationId;
use crate::ghl::GhlError;
use crate::state::AppState;
use crate::store::{LocationRecord, LocationStatus, TokenOwner};
use crate::time::rfc3339;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/locations", get(list_locations))
        .route("/api/v1/locations/{id}", get(get_location))
        .route("/api/v1/locations/{id}/test", post(test_location))
}

async fn list_locations(_: AdminAuth, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut locations = Vec::new();
    for record in state.store.locations().await? {
        locations.push(location_json(&state, &record).await?);
    }
    Ok(Json(json!({ "locations": locations })))
}

async fn get_location(
    _: AdminAuth,
    State(state): State<AppState>,
    LocationPath(id): LocationPath,
) -> Result<Json<Value>, ApiError> {
    let record = find(&state, id.as_str()).await?;
    Ok(Json(location_json(&state, &record).await?))
}

/// A connection test: one cheap authenticated GHL call. The answer says whether it worked; the
/// location's status and last error are updated either way.
async fn test_location(
    _: AdminAuth,
    State(state): State<AppState>,
    LocationPath(id): LocationPath,
) -> Result<Json<Value>, ApiError> {
    let before = find(&state, id.as_str()).await?;
    state.ghl.ensure_configured()?;
    let outcome = state.ghl.test_connection(id.as_str()).await;
    // A refused refresh has already marked the location; anything else is recorded here.
    if !matches!(outcome, Err(GhlError::ReauthRequired(_))) {
        let last_error = outcome.as_ref().err().map(ToString::to_string);
        state
            .store
            .set_status(TokenOwner::Location(id.as_str()), before.status, last_error.as_deref())
            .await?;
    }
    let error = outcome
        .as_ref()
        .err()
        .map(|e| json!({ "code": e.code(), "message": e.to_string() }));
    let record = find(&state, id.as_str()).await?;
    Ok(Json(json!({
        "ok": outcome.is_ok(),
        "error": error,
        "location": location_json(&state, &record).await?,
    })))
}

async fn find(state: &AppState, id: &str) -> Result<LocationRecord, ApiError> {
    state
        .store
        .location(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no location {id}")))
}

/// The `LOCATION` shape of ARCHITECTURE.md ("Interfaces"), plus a few extra fields.
async fn location_json(state: &AppState, record: &LocationRecord) -> Result<Value, ApiError> {
    let id = record.location_id.as_str();
    let queues = state.store.queue_counts(id).await?;
    let location = LocationId::parse(id).map_err(|e| anyhow::anyhow!("stored location id: {e}"))?;
    let view = state.sessions.view_or_unpaired(&location, record.installed_at);
    let session = session_json(state, &location, &view);
    Ok(json!({
        "id": id,
        "name": record.name,
        "company_id": record.company_id,
        "status": record.status.as_str(),
        "needs_reinstall": record.status == LocationStatus::ReauthRequired,
        "token_source": record.token_source,
        "token_expires_at": record.token_expires_at.map(rfc3339),
        "installed_at": rfc3339(record.installed_at),
        "session": session,
        "queues": {
            "inbound_pending": queues.inbound_pending,
            "outbound_pending": queues.outbound_pending,
            "dead": queues.dead,
        },
        "last_error": record.last_error,
    }))
}
