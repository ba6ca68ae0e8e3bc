//! The session admin API: start or restart pairing, log out, list sessions.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AdminAuth, ApiError, LocationPath, MaybeJson};
use crate::domain::LocationId;
use crate::domain::phone::Phone;
use crate::sessions::{SessionError, SessionState, StateView};
use crate::state::AppState;
use crate::time::rfc3339;
use crate::wa::Pairing;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/locations/{id}/session", post(start_pairing).delete(logout))
        .route("/api/v1/sessions", get(list_sessions))
}

/// The `session` block of a location (ARCHITECTURE.md), with the code to scan while pairing
/// (and only then: a logged-out session's last code is gone).
pub fn session_json(state: &AppState, location: &LocationId, view: &StateView) -> Value {
    let code = if view.state == SessionState::Pairing {
        state.sessions.pairing_code(location)
    } else {
        Default::default()
    };
    json!({
        "state": view.state,
        "reason": view.reason,
        "phone": view.phone,
        "since": rfc3339(view.since),
        "qr": code.qr,
        "pairing_code": code.code,
        "code_valid_until": code.valid_until.map(rfc3339),
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StartPairing {
    /// Pair by code for this number (E.164) instead of a QR code.
    phone: Option<String>,
}

async fn start_pairing(
    _: AdminAuth,
    State(state): State<AppState>,
    LocationPath(id): LocationPath,
    MaybeJson(body): MaybeJson<StartPairing>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    known_location(&state, &id).await?;
    let pairing = match body.and_then(|b| b.phone) {
        Some(phone) => Pairing::Code {
            phone: Phone::parse_international(&phone)
                .map_err(|e| ApiError::bad_request("invalid_phone", e.to_string()))?
                .into_string(),
        },
        None => Pairing::Qr,
    };
    let view = state
        .sessions
        .start_pairing(&id, pairing)
        .await
        .map_err(session_error)?;
    Ok((StatusCode::ACCEPTED, Json(session_json(&state, &id, &view))))
}

async fn logout(
    _: AdminAuth,
    State(state): State<AppState>,
    LocationPath(id): LocationPath,
) -> Result<Json<Value>, ApiError> {
    known_location(&state, &id).await?;
    let view = state.sessions.logout(&id).await.map_err(session_error)?;
    Ok(Json(session_json(&state, &id, &view)))
}

async fn list_sessions(_: AdminAuth, State(state): State<AppState>) -> Json<Value> {
    let sessions: Vec<Value> = state
        .sessions
        .views()
        .iter()
        .map(|(id, view)| {
            let mut session = session_json(&state, id, view);
            session["location_id"] = json!(id.as_str());
            session
        })
        .collect();
    Json(json!({ "sessions": sessions }))
}

async fn known_location(state: &AppState, id: &LocationId) -> Result<(), ApiError> {
    match state.store.location(id.as_str()).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found(format!("no location {id}"))),
    }
}

fn session_error(e: SessionError) -> ApiError {
    match e {
        SessionError::Connected => ApiError::Conflict {
            code: "session_connected",
            message: e.to_string(),
        },
        SessionError::WhatsApp(_) => ApiError::Unavailable {
            code: "whatsapp_unavailable",
            message: e.to_string(),
        },
        SessionError::Store(e) => e.into(),
    }
}
