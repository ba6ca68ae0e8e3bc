//! The message admin API: both queues of a location, and replaying dead messages. The console
//! replays through the same functions ([`retry_message`], [`retry_all_dead`]).

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{IdPath, one_of};
use super::{AdminAuth, ApiError, AppPath, AppQuery, ErrorBody, LocationPath};
use crate::domain::{InboxState, LocationId, OutboxState};
use crate::state::AppState;
use crate::store::{MessageRef, MessageRow};
use crate::time::{parse_rfc3339, rfc3339};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(retry_location))
        .routes(routes!(retry_one))
}

/// Every state a message of either direction can be in (the `state` filter's values).
fn states() -> Vec<&'static str> {
    let mut states: Vec<&str> = InboxState::ALL.iter().map(|s| s.as_str()).collect();
    for state in OutboxState::ALL {
        if !states.contains(&state.as_str()) {
            states.push(state.as_str());
        }
    }
    states
}

fn state_schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
    one_of(&states())
}

fn direction_schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
    one_of(&["inbound", "outbound"])
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only messages in this state.
    #[param(schema_with = state_schema)]
    state: Option<String>,
    /// Unix ms or RFC 3339: only messages received before it (the next page).
    before: Option<String>,
    /// 1–500, default 50. (Text, so that `limit=abc` is `invalid_limit` like `limit=0`.)
    limit: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct MessageList {
    pub messages: Vec<Message>,
    /// Pass as `before` for the next page; null on the last one.
    pub next_before: Option<i64>,
}

/// A message of either direction.
#[derive(Serialize, ToSchema)]
pub struct Message {
    /// `in_42` or `out_17`: unique across both directions.
    pub id: String,
    #[schema(schema_with = direction_schema)]
    pub direction: String,
    pub wa_message_id: Option<String>,
    pub ghl_message_id: Option<String>,
    /// Inbound: text, image, audio…
    pub kind: Option<String>,
    #[schema(schema_with = state_schema)]
    pub state: String,
    pub attempts: i64,
    /// Why it failed, or why it waits.
    pub last_error: Option<String>,
    pub received_at: String,
    pub done_at: Option<String>,
}

/// Newest first; `before` pages back.
#[utoipa::path(get, path = "/api/v1/locations/{id}/messages", tag = "messages", params(IdPath, ListQuery),
    security(("admin" = [])),
    responses((status = 200, body = MessageList, description = "Done"), (status = "default", body = ErrorBody, description = "An error")))]
async fn list(
    _: AdminAuth,
    State(state): State<AppState>,
    LocationPath(id): LocationPath,
    AppQuery(query): AppQuery<ListQuery>,
) -> Result<Json<MessageList>, ApiError> {
    if state.store.location(id.as_str()).await?.is_none() {
        return Err(ApiError::not_found(format!("no location {id}")));
    }
    let states = states();
    if let Some(wanted) = query.state.as_deref()
        && !states.contains(&wanted)
    {
        return Err(ApiError::bad_request(
            "invalid_state",
            format!("state must be one of {}", states.join(", ")),
        ));
    }
    let before = match query.before.as_deref() {
        None => i64::MAX,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .or_else(|| parse_rfc3339(text))
            .ok_or_else(|| {
                ApiError::bad_request("invalid_before", "before must be unix milliseconds or an RFC 3339 time")
            })?,
    };
    let limit = match query.limit.as_deref() {
        None => 50,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| ApiError::bad_request("invalid_limit", "limit must be 1–500"))?,
    };
    let rows = state
        .store
        .list_messages(id.as_str(), query.state.as_deref(), before, limit)
        .await?;
    let next_before = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.received_at))
        .flatten();
    Ok(Json(MessageList {
        messages: rows.iter().map(message_view).collect(),
        next_before,
    }))
}

pub fn message_view(row: &MessageRow) -> Message {
    Message {
        id: row.public_id(),
        direction: row.direction.clone(),
        wa_message_id: row.wa_message_id.clone(),
        ghl_message_id: row.ghl_message_id.clone(),
        kind: row.kind.clone(),
        state: row.state.clone(),
        attempts: row.attempts,
        last_error: row.last_error.clone(),
        received_at: rfc3339(row.received_at),
        done_at: row.done_at.map(rfc3339),
    }
}

#[derive(Serialize, ToSchema)]
pub struct Replayed {
    /// How many messages went back to their queue.
    pub replayed: u64,
}

/// Replays one dead message (an outbound message that already has a WhatsApp id is never
/// sent twice); anything else that is not dead is a conflict.
pub async fn retry_message(state: &AppState, id: &str) -> Result<Replayed, ApiError> {
    let message = MessageRef::parse(id)
        .ok_or_else(|| ApiError::bad_request("invalid_message_id", "expected an id like in_42 or out_17"))?;
    let (location, current) = state
        .store
        .message_location(message)
        .await
        .map_err(|_| ApiError::not_found(format!("no message {id}")))?;
    if current != InboxState::Dead.as_str() {
        return Err(ApiError::Conflict {
            code: "not_dead",
            message: format!("message {id} is {current}; only dead messages are replayed"),
        });
    }
    let replayed = match message {
        MessageRef::Inbound(row) => state.store.retry_dead_inbound(&location, Some(row)).await?,
        MessageRef::Outbound(row) => state.store.retry_dead_outbound(&location, Some(row)).await?,
    };
    wake(state);
    Ok(Replayed { replayed })
}

/// Replay one dead message.
#[utoipa::path(post, path = "/api/v1/messages/{id}/retry", tag = "messages", params(IdPath),
    security(("admin" = [])),
    responses((status = 200, body = Replayed, description = "Done"), (status = "default", body = ErrorBody, description = "An error")))]
async fn retry_one(
    _: AdminAuth,
    State(state): State<AppState>,
    AppPath(id): AppPath,
) -> Result<Json<Replayed>, ApiError> {
    Ok(Json(retry_message(&state, &id).await?))
}

/// Replays every dead message of a location.
pub async fn retry_all_dead(state: &AppState, id: &LocationId) -> Result<Replayed, ApiError> {
    if state.store.location(id.as_str()).await?.is_none() {
        return Err(ApiError::not_found(format!("no location {id}")));
    }
    let inbound = state.store.retry_dead_inbound(id.as_str(), None).await?;
    let outbound = state.store.retry_dead_outbound(id.as_str(), None).await?;
    wake(state);
    Ok(Replayed {
        replayed: inbound + outbound,
    })
}

/// Replay every dead message of the location.
#[utoipa::path(post, path = "/api/v1/locations/{id}/retry-dead", tag = "messages", params(IdPath),
    security(("admin" = [])),
    responses((status = 200, body = Replayed, description = "Done"), (status = "default", body = ErrorBody, description = "An error")))]
async fn retry_location(
    _: AdminAuth,
    State(state): State<AppState>,
    LocationPath(id): LocationPath,
) -> Result<Json<Replayed>, ApiError> {
    Ok(Json(retry_all_dead(&state, &id).await?))
}

fn wake(state: &AppState) {
    state.postbox.wake_inbound();
    state.postbox.wake_outbound();
}
