//! Control endpoints of the simulated WhatsApp (`WAGHL_WA_BACKEND=sim` only, admin token):
//! they act as the phone and WhatsApp's servers would (ARCHITECTURE.md "Simulated transport").

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AdminAuth, ApiError, AppJson, LocationPath, MaybeJson};
use crate::domain::LocationId;
use crate::state::AppState;
use crate::wa::ReceiptStatus;
use crate::wa::sim::{Delivery, PanicAt, SimError, SimInbound, SimWorld};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sim/{id}/scan", post(scan))
        .route("/sim/{id}/qr", get(qr))
        .route("/sim/{id}/inbound", post(inbound))
        .route("/sim/{id}/receipt", post(receipt))
        .route("/sim/{id}/disconnect", post(disconnect))
        .route("/sim/{id}/logout", post(logout))
        .route("/sim/{id}/ban", post(ban))
        .route("/sim/{id}/zombie", post(zombie))
        .route("/sim/{id}/break", post(break_store))
        .route("/sim/{id}/panic", post(arm_panic))
        .route("/sim/{id}/lid", post(lid))
        .route("/sim/{id}/sent", get(sent))
}

/// The simulated world, for a location that is installed (404 otherwise, as on the admin API).
async fn world(state: &AppState, location: &LocationId) -> Result<Arc<SimWorld>, ApiError> {
    let world = state
        .sim
        .clone()
        .ok_or_else(|| ApiError::not_found("the simulated transport is not in use (WAGHL_WA_BACKEND=sim)"))?;
    match state.store.location(location.as_str()).await? {
        Some(_) => Ok(world),
        None => Err(ApiError::not_found(format!("no location {location}"))),
    }
}

fn sim_error(e: SimError) -> ApiError {
    match e {
        SimError::NoSession => ApiError::Conflict {
            code: "no_session",
            message: "no simulated session runs for this location; start one with POST /api/v1/locations/{id}/session"
                .into(),
        },
        SimError::Invalid(message) => ApiError::bad_request("invalid_request", message),
        SimError::Conflict(message) => ApiError::Conflict {
            code: "sim_conflict",
            message,
        },
        SimError::NotStored => ApiError::Unavailable {
            code: "not_stored",
            message: e.to_string(),
        },
    }
}

type Reply = Result<Json<Value>, ApiError>;

fn ok() -> Reply {
    Ok(Json(json!({ "status": "ok" })))
}

#[derive(Deserialize)]
struct Phone {
    phone: String,
}

async fn scan(
    _: AdminAuth,
    State(state): State<AppState>,
    LocationPath(id): LocationPath,
    AppJson(body): AppJson<Phone>,
) -> Reply {
    world(&state, &id)
        .await?
        .scan(id.as_str(), &body.phone)
        .map_err(sim_error)?;
    ok()
}

async fn qr(_: AdminAuth, State(state): State<AppState>, LocationPath(id): LocationPath) -> Reply {
    let code = world(&state, &id).await?.qr(id.as_str()).map_err(sim_error)?;
    Ok(Json(json!({ "code": code })))
}

async fn inbound(
    _: AdminAuth,
    State(state): State<AppState>,
    LocationPath(id): LocationPath,
    AppJson(body): AppJson<SimInbound>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    match world(&state, &id)
        .await?
        .inbound(id.as_str(), body)
        .await
        .map_err(sim_error)?
    {
        Delivery::Stored(id) => Ok((StatusCode::OK, Json(json!({ "id": id })))),
        Delivery::Queued(id) => Ok((StatusCode::ACCEPTED, Json(json!({ "id": id, "queued": true })))),
    }
}

#[derive(Deserialize)]
struct Receipt {
    id: String,
    status: String,
}

async fn receipt(
    _: AdminAuth,
    State(state): State<AppState>,
    LocationPath(id): LocationPath,
    AppJson(body): AppJson<Receipt>,
) -> Reply {
    let status = match body.status.as_str() {
        "delivered" => ReceiptStatus::Delivered,
        "read" => ReceiptStatus::Read,
        other => {
            return Err(ApiError::bad_request(
                "invalid_status",
                format!("status {other:?}: expected delivered or read"),
            ));
        }
    };
    world(&state, &id)
        .await?
        .receipt(id.as_str(), &body.id, status)
        .map_err(sim_error)?;
    ok()
}

#[derive(Deserialize)]
struct Disconnect {
    #[serde(default = "three")]
    seconds: f64,
}

fn three() -> f64 {
    3.0
}

async fn disconnect(
    _: AdminAuth,
    State(state): State<AppState>,
    LocationPath(id): LocationPath,
    MaybeJson(body): MaybeJson<Disconnect>,
) -> Reply {
    let seconds = body.map_or(3.0, |b| b.seconds);
    world(&state, &id)
        .await?
        .disconnect(id.as_str(), seconds)
        .map_err(sim_error)?;
    ok()
}

async fn logout(_: AdminAuth, State(state): State<AppState>, LocationPath(id): LocationPath) -> Reply {
    world(&state, &id).await?.logout(id.as_str()).map_err(sim_error)?;
    ok()
}

async fn ban(_: AdminAuth, State(state): State<AppState>, LocationPath(id): LocationPath) -> Reply {
    world(&state, &id).await?.ban(id.as_str()).map_err(sim_error)?;
    ok()
}

/// Kills the socket without any event: the health check has to notice.
async fn zombie(_: AdminAuth, State(state): State<AppState>, LocationPath(id): LocationPath) -> Reply {
    world(&state, &id)
        .await?
        .kill_silently(id.as_str())
        .map_err(sim_error)?;
    ok()
}

/// The device's key store becomes unreadable: every later start fails (a crash loop).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ArmPanic {
    at: PanicAt,
}

/// Test hook: the next call of a client method panics inside waghl's task that makes it.
async fn arm_panic(
    _: AdminAuth,
    State(state): State<AppState>,
    LocationPath(id): LocationPath,
    AppJson(body): AppJson<ArmPanic>,
) -> Reply {
    world(&state, &id).await?.arm_panic(id.as_str(), body.at);
    ok()
}

async fn break_store(_: AdminAuth, State(state): State<AppState>, LocationPath(id): LocationPath) -> Reply {
    world(&state, &id).await?.break_store(id.as_str());
    ok()
}

#[derive(Deserialize)]
struct Lid {
    lid: String,
    phone: String,
}

async fn lid(
    _: AdminAuth,
    State(state): State<AppState>,
    LocationPath(id): LocationPath,
    AppJson(body): AppJson<Lid>,
) -> Reply {
    world(&state, &id)
        .await?
        .reveal_lid(id.as_str(), &body.lid, &body.phone)
        .map_err(sim_error)?;
    ok()
}

async fn sent(_: AdminAuth, State(state): State<AppState>, LocationPath(id): LocationPath) -> Reply {
    Ok(Json(json!({ "sent": world(&state, &id).await?.sent(id.as_str()) })))
}
