//! `GET /conversations/{conversationId}/messages`: a conversation's messages, newest first,
//! paged by `lastMessageId`, with only the fields of GHL's `GetMessageResponseDto` — no
//! `altId`, which GHL's spec does not promise, so waghl's tests cannot lean on it. The page
//! comes wrapped in `messages`, the shape real answers are reported to have.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Resource, Shared, admit, error};

/// GHL's documented default page size.
const DEFAULT_LIMIT: usize = 20;

pub(super) async fn list(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(conversation_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let location = match admit(&shared, &headers) {
        Ok(Resource::Location(id)) => id,
        Ok(_) => return error(401, "Location token required"),
        Err(response) => return response,
    };
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => DEFAULT_LIMIT,
        Some(Ok(limit)) if limit > 0 => limit,
        Some(_) => return error(422, "limit must be a positive number"),
    };
    let world = shared.world();
    let contact = world
        .conversations
        .iter()
        .find(|((loc, _), id)| *loc == location && **id == conversation_id)
        .map(|((_, contact), _)| contact.clone());
    let Some(contact) = contact else {
        return error(400, "Conversation not found");
    };
    let mut messages: Vec<&super::AddedMessage> = world
        .messages
        .iter()
        .filter(|m| m.location_id == location && m.body["conversationId"] == conversation_id.as_str())
        .collect();
    // Newest first; among equal dates, the later added first.
    messages.reverse();
    messages.sort_by_key(|m| std::cmp::Reverse(m.date_added_ms));
    let start = match query.get("lastMessageId") {
        Some(last) => match messages.iter().position(|m| &m.message_id == last) {
            Some(i) => i + 1,
            None => return error(400, "lastMessageId not found in this conversation"),
        },
        None => 0,
    };
    let page: Vec<Value> = messages
        .iter()
        .skip(start)
        .take(limit)
        .map(|m| message_json(m, &location, &contact, &conversation_id))
        .collect();
    let next_page = messages.len() > start + page.len();
    let last_message_id = page.last().map(|m| m["id"].clone()).unwrap_or(Value::Null);
    axum::Json(json!({
        "messages": { "lastMessageId": last_message_id, "nextPage": next_page, "messages": page }
    }))
    .into_response()
}

fn message_json(message: &super::AddedMessage, location: &str, contact: &str, conversation: &str) -> Value {
    let body = &message.body;
    json!({
        "id": message.message_id,
        "type": 22,
        "messageType": "TYPE_CUSTOM_PROVIDER_SMS",
        "locationId": location,
        "contactId": contact,
        "conversationId": conversation,
        "dateAdded": format_date(message.date_added_ms),
        "body": body["message"].as_str().unwrap_or_default(),
        "direction": body["direction"].as_str().unwrap_or("inbound"),
        "status": "delivered",
        "contentType": "text/plain",
        "attachments": body["attachments"].as_array().cloned().unwrap_or_default(),
        "source": "api",
        "conversationProviderId": body["conversationProviderId"],
    })
}

/// Unix ms of an ISO 8601 / RFC 3339 date, as GHL accepts `date`.
pub(super) fn parse_date(text: &str) -> Option<i64> {
    let at = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    Some((at.unix_timestamp_nanos() / 1_000_000) as i64)
}

pub(super) fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// `2024-03-27T18:13:49.000Z`, the way GHL writes dates.
fn format_date(ms: i64) -> String {
    let at =
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
}
