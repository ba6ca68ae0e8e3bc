//! The message admin API: both queues of a location, and replaying dead messages.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AdminAuth, ApiError, AppPath, AppQuery, LocationPath};
use crate::domain::{InboxState, OutboxState};
use crate::state::AppState;
use crate::store::{MessageRef, MessageRow};
use crate::time::{parse_rfc3339, rfc3339};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/locations/{id}/messages", get(list))
        .route("/api/v1/locations/{id}/retry-dead", post(retry_location))
        .route("/api/v1/messages/{id}/retry", post(retry_one))
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

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
    /// Unix ms or RFC 3339: only messages received before it (the next page).
    before: Option<String>,
    /// Text, so that `limit=abc` is `invalid_limit` like `limit=0`.
    limit: Option<String>,
}

async fn list(
    _: AdminAuth,
    State(state): State<AppState>,
    LocationPath(id): LocationPath,
    AppQuery(query): AppQuery<ListQuery>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({
        "messages": rows.iter().map(message_json).collect::<Vec<_>>(),
        "next_before": next_before,
    })))
}

fn message_json(row: &MessageRow) -> Value {
    json!({
        "id": row.public_id(),
        "direction": row.direction,
        "wa_message_id": row.wa_message_id,
        "ghl_message_id": row.ghl_message_id,
        "kind": row.kind,
        "state": row.state,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "received_at": rfc3339(row.received_at),
        "done_at": row.done_at.map(rfc3339),
    })
}

/// Replays one dead message; anything else that is not dead is a conflict.
async fn retry_one(_: AdminAuth, State(state): State<AppState>, AppPath(id): AppPath) -> Result<Json<Value>, ApiError> {
    let message = MessageRef::parse(&id)
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
    wake(&state);
    Ok(Json(json!({ "replayed": replayed })))
}

async fn retry_location(
    _: AdminAuth,
    State(state): State<AppState>,
    LocationPath(id): LocationPath,
) -> Result<Json<Value>, ApiError> {
    if state.store.location(id.as_str()).await?.is_none() {
        return Err(ApiError::not_found(format!("no location {id}")));
    }
    let inbound = state.store.retry_dead_inbound(id.as_str(), None).await?;
    let outbound = state.store.retry_dead_outbound(id.as_str(), None).await?;
    wake(&state);
    Ok(Json(json!({ "replayed": inbound + outbound })))
}

fn wake(state: &AppState) {
    state.postbox.wake_inbound();
    state.postbox.wake_outbound();
}
