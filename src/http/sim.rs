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
use crate::domain::MediaKind;
use crate::domain::phone::Phone as E164;
use crate::state::AppState;
use crate::wa::ReceiptStatus;
use crate::wa::sim::proto::{Body, Chat, Incoming};
use crate::wa::sim::{Delivery, PanicAt, SimError, SimWorld, message_id};

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
    let world = world(&state, &id).await?;
    let incoming = Incoming::try_from(body).map_err(sim_error)?;
    match world.inbound(id.as_str(), incoming).await.map_err(sim_error)? {
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

/// `POST /sim/{id}/inbound`: a message as WhatsApp would deliver it (ARCHITECTURE.md).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SimInbound {
    from: String,
    push_name: Option<String>,
    id: Option<String>,
    text: Option<String>,
    media: Option<SimMedia>,
    #[serde(default)]
    from_me: bool,
    timestamp: Option<i64>,
    lid: Option<String>,
    group: Option<String>,
    reply_to: Option<String>,
    reaction: Option<SimTarget>,
    edit: Option<SimTarget>,
    delete: Option<SimTarget>,
    location: Option<SimLocation>,
    contact: Option<SimContact>,
    #[serde(default)]
    status: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SimMedia {
    kind: String,
    mime: String,
    data_base64: String,
    caption: Option<String>,
    file_name: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
struct SimTarget {
    id: String,
    emoji: Option<String>,
    text: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
struct SimLocation {
    lat: f64,
    lng: f64,
    name: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
struct SimContact {
    name: String,
    phones: Vec<String>,
}

impl TryFrom<SimInbound> for Incoming {
    type Error = SimError;

    /// What the simulated phone composes from the request: exactly one kind of body.
    fn try_from(request: SimInbound) -> Result<Self, SimError> {
        use base64::Engine as _;
        let from = E164::parse_international(&request.from)
            .map(E164::into_string)
            .map_err(|e| SimError::Invalid(e.to_string()))?;
        let body = if let Some(media) = request.media {
            let kind = MediaKind::parse(&media.kind).ok_or_else(|| {
                SimError::Invalid(format!("media.kind {:?} is not a WhatsApp media kind", media.kind))
            })?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(media.data_base64.trim())
                .map_err(|_| SimError::Invalid("media.data_base64 is not base64".into()))?;
            Body::Media {
                kind,
                mime: media.mime,
                bytes,
                caption: media.caption,
                file_name: media.file_name,
            }
        } else if let Some(reaction) = request.reaction {
            Body::Reaction {
                target: reaction.id,
                emoji: reaction.emoji.unwrap_or_default(),
            }
        } else if let Some(edit) = request.edit {
            Body::Edit {
                target: edit.id,
                text: edit.text.unwrap_or_default(),
            }
        } else if let Some(delete) = request.delete {
            Body::Delete { target: delete.id }
        } else if let Some(location) = request.location {
            Body::Location {
                lat: location.lat,
                lng: location.lng,
                name: location.name,
            }
        } else if let Some(contact) = request.contact {
            Body::Contact {
                name: contact.name,
                phones: contact.phones,
            }
        } else if let Some(text) = request.text {
            Body::Text(text)
        } else {
            return Err(SimError::Invalid("give text, media, or another message kind".into()));
        };
        let chat = match (request.group, request.status) {
            (Some(group), _) => Chat::Group(group),
            (None, true) => Chat::Status,
            (None, false) => Chat::Direct,
        };
        Ok(Self {
            from,
            push_name: request.push_name,
            id: request.id.unwrap_or_else(message_id),
            from_me: request.from_me,
            timestamp: request.timestamp,
            lid: request.lid,
            chat,
            reply_to: request.reply_to,
            body,
        })
    }
}
