//! Control endpoints of the simulated WhatsApp (`WAGHL_WA_BACKEND=sim` only, admin token):
//! they act as the phone and WhatsApp's servers would (ARCHITECTURE.md "Simulated transport").

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::IdPath;
use super::{AdminAuth, ApiError, AppJson, ErrorBody, LocationPath, MaybeJson};
use crate::domain::LocationId;
use crate::domain::phone::Phone as E164;
use crate::domain::{MediaKind, OutgoingContent};
use crate::state::AppState;
use crate::wa::ReceiptStatus;
use crate::wa::sim::proto::{Body, Chat, Incoming};
use crate::wa::sim::{Delivery, PanicAt, SimError, SimWorld, message_id};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(scan))
        .routes(routes!(qr))
        .routes(routes!(inbound))
        .routes(routes!(receipt))
        .routes(routes!(disconnect))
        .routes(routes!(logout))
        .routes(routes!(ban))
        .routes(routes!(zombie))
        .routes(routes!(break_store))
        .routes(routes!(arm_panic))
        .routes(routes!(lid))
        .routes(routes!(sent))
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

#[utoipa::path(post, operation_id = "sim_scan", path = "/sim/{id}/scan", tag = "sim", params(IdPath), security(("admin" = [])), request_body(content = Object),
    responses((status = 200, body = Object, description = "Done"), (status = "default", body = ErrorBody, description = "An error")))]
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

#[utoipa::path(get, operation_id = "sim_qr", path = "/sim/{id}/qr", tag = "sim", params(IdPath), security(("admin" = [])),
    responses((status = 200, body = Object, description = "Done"), (status = "default", body = ErrorBody, description = "An error")))]
async fn qr(_: AdminAuth, State(state): State<AppState>, LocationPath(id): LocationPath) -> Reply {
    let code = world(&state, &id).await?.qr(id.as_str()).map_err(sim_error)?;
    Ok(Json(json!({ "code": code })))
}

#[utoipa::path(post, operation_id = "sim_inbound", path = "/sim/{id}/inbound", tag = "sim", params(IdPath), security(("admin" = [])), request_body(content = Object),
    responses((status = 200, body = Object, description = "Done"), (status = 202, body = Object, description = "Accepted: under way"), (status = "default", body = ErrorBody, description = "An error")))]
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

#[utoipa::path(post, operation_id = "sim_receipt", path = "/sim/{id}/receipt", tag = "sim", params(IdPath), security(("admin" = [])), request_body(content = Object),
    responses((status = 200, body = Object, description = "Done"), (status = "default", body = ErrorBody, description = "An error")))]
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

#[utoipa::path(post, operation_id = "sim_disconnect", path = "/sim/{id}/disconnect", tag = "sim", params(IdPath), security(("admin" = [])), request_body(content = Object),
    responses((status = 200, body = Object, description = "Done"), (status = "default", body = ErrorBody, description = "An error")))]
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

#[utoipa::path(post, operation_id = "sim_logout", path = "/sim/{id}/logout", tag = "sim", params(IdPath), security(("admin" = [])),
    responses((status = 200, body = Object, description = "Done"), (status = "default", body = ErrorBody, description = "An error")))]
async fn logout(_: AdminAuth, State(state): State<AppState>, LocationPath(id): LocationPath) -> Reply {
    world(&state, &id).await?.logout(id.as_str()).map_err(sim_error)?;
    ok()
}

#[utoipa::path(post, operation_id = "sim_ban", path = "/sim/{id}/ban", tag = "sim", params(IdPath), security(("admin" = [])),
    responses((status = 200, body = Object, description = "Done"), (status = "default", body = ErrorBody, description = "An error")))]
async fn ban(_: AdminAuth, State(state): State<AppState>, LocationPath(id): LocationPath) -> Reply {
    world(&state, &id).await?.ban(id.as_str()).map_err(sim_error)?;
    ok()
}

/// Kills the socket without any event: the health check has to notice.
#[utoipa::path(post, operation_id = "sim_zombie", path = "/sim/{id}/zombie", tag = "sim", params(IdPath), security(("admin" = [])),
    responses((status = 200, body = Object, description = "Done"), (status = "default", body = ErrorBody, description = "An error")))]
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
#[utoipa::path(post, operation_id = "sim_arm_panic", path = "/sim/{id}/panic", tag = "sim", params(IdPath), security(("admin" = [])), request_body(content = Object),
    responses((status = 200, body = Object, description = "Done"), (status = "default", body = ErrorBody, description = "An error")))]
async fn arm_panic(
    _: AdminAuth,
    State(state): State<AppState>,
    LocationPath(id): LocationPath,
    AppJson(body): AppJson<ArmPanic>,
) -> Reply {
    world(&state, &id).await?.arm_panic(id.as_str(), body.at);
    ok()
}

#[utoipa::path(post, operation_id = "sim_break_store", path = "/sim/{id}/break", tag = "sim", params(IdPath), security(("admin" = [])),
    responses((status = 200, body = Object, description = "Done"), (status = "default", body = ErrorBody, description = "An error")))]
async fn break_store(_: AdminAuth, State(state): State<AppState>, LocationPath(id): LocationPath) -> Reply {
    world(&state, &id).await?.break_store(id.as_str());
    ok()
}

#[derive(Deserialize)]
struct Lid {
    lid: String,
    phone: String,
}

#[utoipa::path(post, operation_id = "sim_lid", path = "/sim/{id}/lid", tag = "sim", params(IdPath), security(("admin" = [])), request_body(content = Object),
    responses((status = 200, body = Object, description = "Done"), (status = "default", body = ErrorBody, description = "An error")))]
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

#[utoipa::path(get, operation_id = "sim_sent", path = "/sim/{id}/sent", tag = "sim", params(IdPath), security(("admin" = [])),
    responses((status = 200, body = Object, description = "Done"), (status = "default", body = ErrorBody, description = "An error")))]
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
            Body::Content(OutgoingContent::Media {
                kind,
                mime: media.mime,
                bytes,
                caption: media.caption,
                file_name: media.file_name,
            })
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
            Body::Content(OutgoingContent::Text(text))
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
