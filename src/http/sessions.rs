//! The session admin API: start or restart pairing, log out, list sessions. The console calls
//! the same functions ([`start_pairing_for`], [`logout_location`]).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{IdPath, one_of};
use super::{AdminAuth, ApiError, AppQuery, ErrorBody, LocationPath, MaybeJson};
use crate::domain::LocationId;
use crate::domain::phone::Phone;
use crate::sessions::{SessionError, SessionState, StateView, Unlink};
use crate::state::AppState;
use crate::time::rfc3339;
use crate::wa::Pairing;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start_pairing, logout))
        .routes(routes!(list_sessions))
}

fn state_schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
    one_of(&SessionState::ALL.map(SessionState::as_str))
}

/// The `session` block of a location (ARCHITECTURE.md), with the code to scan while pairing
/// (and only then: a logged-out session's last code is gone).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Session {
    #[schema(schema_with = state_schema)]
    pub state: SessionState,
    /// Stable reason code of a non-connected state (`wa_logged_out`, `qr_exhausted`…).
    pub reason: Option<String>,
    /// The paired phone, E.164.
    pub phone: Option<String>,
    /// RFC 3339: when the state (or its reason) last changed.
    pub since: String,
    /// The QR code's text, while pairing by QR.
    pub qr: Option<String>,
    /// The code to type on the phone, while pairing by phone number.
    pub pairing_code: Option<String>,
    pub code_valid_until: Option<String>,
}

pub async fn session_view(state: &AppState, location: &LocationId, view: &StateView) -> Session {
    let code = if view.state == SessionState::Pairing {
        state.sessions.pairing_code(location).await
    } else {
        Default::default()
    };
    Session {
        state: view.state,
        reason: view.reason.clone(),
        phone: view.phone.clone(),
        since: rfc3339(view.since),
        qr: code.qr,
        pairing_code: code.code,
        code_valid_until: code.valid_until.map(rfc3339),
    }
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct StartPairing {
    /// Pair by code for this number (E.164) instead of a QR code.
    phone: Option<String>,
}

/// Starts (or restarts) pairing; with a phone number, by pairing code instead of QR.
pub async fn start_pairing_for(state: &AppState, id: &LocationId, phone: Option<&str>) -> Result<Session, ApiError> {
    known_location(state, id).await?;
    let pairing = match phone {
        Some(phone) => Pairing::Code {
            phone: Phone::parse_international(phone)
                .map_err(|e| ApiError::bad_request("invalid_phone", e.to_string()))?
                .into_string(),
        },
        None => Pairing::Qr,
    };
    let view = state.sessions.start_pairing(id, pairing).await.map_err(session_error)?;
    Ok(session_view(state, id, &view).await)
}

/// Logs the session out and wipes its keys.
pub async fn logout_location(state: &AppState, id: &LocationId, mode: Unlink) -> Result<Session, ApiError> {
    known_location(state, id).await?;
    let view = state.sessions.logout(id, mode).await.map_err(session_error)?;
    Ok(session_view(state, id, &view).await)
}

/// Start or restart pairing (body `{"phone":"+…"}` asks for a pairing code instead of a QR).
#[utoipa::path(post, path = "/api/v1/locations/{id}/session", tag = "sessions", params(IdPath),
    security(("admin" = [])), request_body(content = Option<StartPairing>),
    responses((status = 202, body = Session, description = "Accepted: under way"), (status = "default", body = ErrorBody, description = "An error")))]
async fn start_pairing(
    _: AdminAuth,
    State(state): State<AppState>,
    LocationPath(id): LocationPath,
    MaybeJson(body): MaybeJson<StartPairing>,
) -> Result<(StatusCode, Json<Session>), ApiError> {
    let phone = body.and_then(|b| b.phone);
    let session = start_pairing_for(&state, &id, phone.as_deref()).await?;
    Ok((StatusCode::ACCEPTED, Json(session)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct LogoutQuery {
    /// Wipe the keys even when WhatsApp does not confirm the unlinking (the phone may then
    /// still list the device).
    force: Option<bool>,
}

/// Unlink the device from the phone and wipe its keys. Without `force`, a device WhatsApp
/// did not confirm unlinking keeps its keys (503 `not_unlinked`), so it can be retried.
#[utoipa::path(delete, path = "/api/v1/locations/{id}/session", tag = "sessions", params(IdPath, LogoutQuery),
    security(("admin" = [])),
    responses((status = 200, body = Session, description = "Done"), (status = "default", body = ErrorBody, description = "An error")))]
async fn logout(
    _: AdminAuth,
    State(state): State<AppState>,
    LocationPath(id): LocationPath,
    AppQuery(query): AppQuery<LogoutQuery>,
) -> Result<Json<Session>, ApiError> {
    let mode = if query.force.unwrap_or(false) {
        Unlink::BestEffort
    } else {
        Unlink::Required
    };
    Ok(Json(logout_location(&state, &id, mode).await?))
}

#[derive(Serialize, ToSchema)]
struct SessionList {
    sessions: Vec<SessionEntry>,
}

#[derive(Serialize, ToSchema)]
struct SessionEntry {
    location_id: String,
    #[serde(flatten)]
    session: Session,
}

/// Every session, whichever instance runs it.
#[utoipa::path(get, path = "/api/v1/sessions", tag = "sessions", security(("admin" = [])),
    responses((status = 200, body = SessionList, description = "Done"), (status = "default", body = ErrorBody, description = "An error")))]
async fn list_sessions(_: AdminAuth, State(state): State<AppState>) -> Result<Json<SessionList>, ApiError> {
    let mut sessions = Vec::new();
    for (id, view) in state.sessions.views().await? {
        sessions.push(SessionEntry {
            location_id: id.as_str().to_owned(),
            session: session_view(&state, &id, &view).await,
        });
    }
    Ok(Json(SessionList { sessions }))
}

pub async fn known_location(state: &AppState, id: &LocationId) -> Result<(), ApiError> {
    match state.store.location(id.as_str()).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found(format!("no location {id}"))),
    }
}

pub fn session_error(e: SessionError) -> ApiError {
    match e {
        SessionError::Connected => ApiError::Conflict {
            code: "session_connected",
            message: e.to_string(),
        },
        SessionError::WhatsApp(_) => ApiError::Unavailable {
            code: "whatsapp_unavailable",
            message: e.to_string(),
        },
        SessionError::NotUnlinked(_) => ApiError::Unavailable {
            code: "not_unlinked",
            message: e.to_string(),
        },
        SessionError::Store(e) => e.into(),
        SessionError::OwnerUnavailable(message) => ApiError::Unavailable {
            code: "owner_unavailable",
            message,
        },
    }
}
