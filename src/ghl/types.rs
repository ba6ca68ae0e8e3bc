//! GHL request and response bodies (GHL_API.md). Responses are read tolerantly: unknown fields
//! are ignored and fields GHL documents loosely are optional.

use serde::{Deserialize, Serialize};

/// `POST /oauth/token` and `/oauth/locationToken` responses (§1.2, §1.4).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenResponse {
    #[serde(rename = "access_token")]
    pub access_token: String,
    #[serde(rename = "refresh_token", default)]
    pub refresh_token: Option<String>,
    #[serde(rename = "expires_in", default = "default_expires_in")]
    pub expires_in: i64,
    #[serde(default)]
    pub user_type: Option<String>,
    #[serde(default)]
    pub location_id: Option<String>,
    #[serde(default)]
    pub company_id: Option<String>,
    #[serde(default)]
    pub is_bulk_installation: Option<bool>,
}

/// GHL documents a day (86 399 s) when the field is missing.
fn default_expires_in() -> i64 {
    86_399
}

impl TokenResponse {
    /// An agency token (for several locations) rather than one location's token.
    pub fn is_company(&self) -> bool {
        self.user_type.as_deref() == Some("Company") || (self.location_id.is_none() && self.company_id.is_some())
    }
}

/// `GET /oauth/installedLocations` (§1.4).
#[derive(Clone, Debug, Deserialize)]
pub struct InstalledLocations {
    #[serde(default)]
    pub locations: Vec<InstalledLocation>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstalledLocation {
    #[serde(rename = "_id", alias = "id")]
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "yes")]
    pub is_installed: bool,
}

fn yes() -> bool {
    true
}

/// `POST /contacts/upsert` body (§3.1). Only the fields waghl sets.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpsertContact<'a> {
    pub location_id: &'a str,
    pub phone: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'a str>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct UpsertContactResponse {
    #[serde(default)]
    pub new: bool,
    pub contact: ContactRef,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ContactRef {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
}

/// `GET /contacts/search/duplicate` (§3.2): `{"contact": {...}}` or `{"contact": null}`.
#[derive(Clone, Debug, Deserialize)]
pub struct DuplicateSearch {
    #[serde(default)]
    pub contact: Option<ContactRef>,
}

/// `GET /conversations/search`.
#[derive(Clone, Debug, Deserialize)]
pub struct ConversationSearch {
    #[serde(default)]
    pub conversations: Vec<ConversationRef>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ConversationRef {
    pub id: String,
}

/// `POST /conversations/`: `{"success":true,"conversation":{"id":…}}`; some answers put the id
/// at the top level, so both are read.
#[derive(Clone, Debug, Deserialize)]
pub struct CreatedConversation {
    #[serde(default)]
    pub conversation: Option<ConversationRef>,
    #[serde(default)]
    pub id: Option<String>,
}

impl CreatedConversation {
    pub fn id(self) -> Option<String> {
        self.conversation.map(|c| c.id).or(self.id)
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    /// A message typed on the phone itself, logged into GHL as outbound (§5.2).
    Outbound,
}

/// `POST /conversations/messages/inbound` body (§5.1).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AddMessage<'a> {
    /// `Custom`: what a custom WhatsApp provider uses.
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub conversation_id: &'a str,
    pub contact_id: &'a str,
    pub conversation_provider_id: &'a str,
    pub message: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub attachments: &'a [String],
    /// The WhatsApp message id: GHL echoes it back as `replyToAltId`, and it lets a duplicate
    /// be recognised.
    pub alt_id: &'a str,
    pub direction: Direction,
    /// RFC 3339 time of the WhatsApp message.
    pub date: &'a str,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddedMessage {
    pub message_id: String,
    #[serde(default)]
    pub conversation_id: Option<String>,
}

/// `GET /conversations/{conversationId}/messages`: one page, newest first. The spec's shape
/// has the page at the top level; real answers have been reported wrapped in `messages`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum ConversationMessages {
    Wrapped { messages: MessagePage },
    Page(MessagePage),
}

impl ConversationMessages {
    pub fn into_page(self) -> MessagePage {
        match self {
            Self::Wrapped { messages } | Self::Page(messages) => messages,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessagePage {
    #[serde(default)]
    pub last_message_id: Option<String>,
    #[serde(default)]
    pub next_page: bool,
    pub messages: Vec<ConversationMessage>,
}

/// A message of a conversation, with the fields reconciliation reads (`GetMessageResponseDto`).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationMessage {
    pub id: String,
    #[serde(default)]
    pub direction: Option<Direction>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub date_added: Option<String>,
    #[serde(default)]
    pub attachments: Vec<String>,
    /// Not in GHL's spec; used when an answer carries it.
    #[serde(default)]
    pub alt_id: Option<String>,
}

/// `PUT /conversations/messages/{id}/status` body (§6).
#[derive(Clone, Debug, Serialize)]
pub struct StatusUpdate<'a> {
    pub status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<StatusError<'a>>,
}

/// GHL requires all three fields as strings.
#[derive(Clone, Debug, Serialize)]
pub struct StatusError<'a> {
    pub code: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub message: &'a str,
}

/// `POST /conversations/messages/upload` and `/upload/complete`: `{"uploadedFiles": {name: url}}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadedFiles {
    #[serde(default)]
    pub uploaded_files: serde_json::Map<String, serde_json::Value>,
}

impl UploadedFiles {
    pub fn first_url(&self) -> Option<String> {
        self.uploaded_files.values().find_map(|v| v.as_str().map(str::to_owned))
    }
}

/// `POST /conversations/messages/upload/initiate` (§7.2).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadTicket {
    pub upload_url: String,
    pub upload_id: String,
    pub file_path: String,
}

/// GHL's error bodies: `message` is a string or a list of strings (§10).
#[derive(Debug, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub message: Option<serde_json::Value>,
    #[serde(default)]
    pub error: Option<String>,
}

impl ErrorBody {
    pub fn text(&self) -> Option<String> {
        match &self.message {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(items)) => {
                Some(items.iter().filter_map(|i| i.as_str()).collect::<Vec<_>>().join(", "))
            }
            _ => self.error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conversation_page_reads_in_the_spec_shape_and_wrapped_in_messages() {
        let message = r#"{"id":"m1","type":22,"messageType":"TYPE_CUSTOM_PROVIDER_SMS","direction":"inbound",
            "body":"hi","dateAdded":"2024-03-27T18:13:49.000Z","contentType":"text/plain"}"#;
        let spec = format!(r#"{{"lastMessageId":"m1","nextPage":false,"messages":[{message}]}}"#);
        let wrapped = format!(r#"{{"messages":{spec}}}"#);
        for text in [spec, wrapped] {
            let page = serde_json::from_str::<ConversationMessages>(&text).unwrap().into_page();
            assert_eq!(page.messages.len(), 1, "{text}");
            assert_eq!(page.messages[0].direction, Some(Direction::Inbound));
            assert_eq!(page.messages[0].body.as_deref(), Some("hi"));
            assert!(page.messages[0].attachments.is_empty());
        }
    }
}
