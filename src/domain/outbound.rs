//! GHL's provider webhook (a message an agent sent in GHL) turned into what waghl will send
//! on WhatsApp (GHL_API.md §4). Read tolerantly: unknown fields are ignored, `type` may be
//! `SMS` or `Custom`; what waghl needs is checked with a precise message.

use serde::{Deserialize, Serialize};

use super::{LocationId, MediaKind, OutgoingContent, clip, is_id};

/// GHL's ids are 20 characters today; WhatsApp's message ids up to about 32.
const GHL_ID_MAX: usize = 64;
const WA_ID_MAX: usize = 128;

/// The longest `phone` a webhook may give, formatting included.
const PHONE_MAX: usize = 64;

/// `value` when it is absent or has the shape of an id; else why not, naming `field`.
fn checked_id(field: &str, value: Option<String>, max: usize) -> Result<Option<String>, String> {
    match value {
        Some(id) if !is_id(&id, max) => Err(format!(
            "{field} {} is not an id (1–{max} letters, digits, `-` or `_`)",
            clip(&id)
        )),
        other => Ok(other),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProviderWebhook {
    location_id: Option<String>,
    message_id: Option<String>,
    contact_id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    phone: Option<String>,
    message: Option<String>,
    #[serde(default)]
    attachments: Vec<String>,
    reply_to_alt_id: Option<String>,
    conversation_provider_id: Option<String>,
    user_id: Option<String>,
    /// When GHL created the message, if it says (ISO-8601).
    date: Option<String>,
    date_added: Option<String>,
}

/// A validated outbound message, as stored in the outbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundRequest {
    #[serde(skip)]
    pub location_id: Option<LocationId>,
    #[serde(skip)]
    pub ghl_message_id: String,
    #[serde(skip)]
    pub ghl_contact_id: Option<String>,
    /// As GHL wrote it; normalised to E.164 when sent.
    #[serde(skip)]
    pub phone: String,
    pub text: String,
    pub attachments: Vec<String>,
    pub reply_to: Option<String>,
    pub user_id: Option<String>,
    /// Unix ms of GHL's message date, when the webhook carries one.
    pub created_at: Option<i64>,
}

impl OutboundRequest {
    /// `provider_id` is waghl's conversation provider: a webhook naming another is refused.
    pub fn from_webhook(body: &serde_json::Value, provider_id: Option<&str>) -> Result<Self, String> {
        let webhook: ProviderWebhook =
            serde_json::from_value(body.clone()).map_err(|e| format!("unexpected field type: {e}"))?;
        let location_id = webhook.location_id.ok_or("locationId is required")?;
        let location_id = LocationId::parse(&location_id).map_err(|e| format!("locationId: {e}"))?;
        let ghl_message_id = checked_id("messageId", webhook.message_id.filter(|m| !m.is_empty()), GHL_ID_MAX)?
            .ok_or("messageId is required")?;
        let contact_id = checked_id("contactId", webhook.contact_id, GHL_ID_MAX)?;
        let user_id = checked_id("userId", webhook.user_id, GHL_ID_MAX)?;
        let reply_to = checked_id(
            "replyToAltId",
            webhook.reply_to_alt_id.filter(|r| !r.is_empty()),
            WA_ID_MAX,
        )?;
        match webhook.kind.as_deref() {
            None | Some("SMS") | Some("Custom") => {}
            Some(other) => {
                return Err(format!(
                    "type {other:?} is not sent on WhatsApp (expected SMS or Custom)"
                ));
            }
        }
        if let (Some(ours), Some(theirs)) = (provider_id, webhook.conversation_provider_id.as_deref())
            && ours != theirs
        {
            return Err(format!(
                "conversationProviderId {theirs:?} is not this bridge's provider"
            ));
        }
        let phone = webhook
            .phone
            .filter(|p| !p.trim().is_empty())
            .ok_or("phone is required")?;
        // Checked here, not at the send: a NUL cannot even be stored in PostgreSQL, and would
        // fail the whole intake batch the webhook was committed with.
        if phone.chars().count() > PHONE_MAX || phone.chars().any(char::is_control) {
            return Err(format!(
                "phone {} is not a phone number (control characters, or over {PHONE_MAX} characters)",
                clip(&phone)
            ));
        }
        let text = webhook.message.unwrap_or_default();
        if text.trim().is_empty() && webhook.attachments.is_empty() {
            return Err("message or attachments must be given".into());
        }
        let created_at = webhook
            .date
            .or(webhook.date_added)
            .as_deref()
            .and_then(crate::time::parse_rfc3339);
        Ok(Self {
            location_id: Some(location_id),
            ghl_message_id,
            ghl_contact_id: contact_id,
            phone: phone.trim().to_owned(),
            text,
            attachments: webhook.attachments,
            reply_to,
            user_id,
            created_at,
        })
    }
}

/// An attachment fetched from GHL.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub content_type: String,
    pub bytes: Vec<u8>,
    pub file_name: String,
}

fn kind_for(content_type: &str) -> MediaKind {
    match content_type.split('/').next().unwrap_or_default() {
        "image" => MediaKind::Image,
        "video" => MediaKind::Video,
        "audio" => MediaKind::Audio,
        _ => MediaKind::Document,
    }
}

/// The WhatsApp messages ("parts") one GHL message becomes, in order: the text rides as the
/// caption of the first image, video or document; without one it is a message of its own,
/// sent first. The plan depends only on the request and its files, so a retry after a crash
/// rebuilds the same parts and reuses their committed ids.
pub fn plan_parts(request: &OutboundRequest, files: Vec<Fetched>) -> Vec<OutgoingContent> {
    let text = request.text.trim();
    let caption_part = files.iter().position(|f| {
        matches!(
            kind_for(&f.content_type),
            MediaKind::Image | MediaKind::Video | MediaKind::Document
        )
    });
    let mut parts = Vec::with_capacity(files.len() + 1);
    if !text.is_empty() && caption_part.is_none() {
        parts.push(OutgoingContent::Text(text.to_owned()));
    }
    for (index, file) in files.into_iter().enumerate() {
        let kind = kind_for(&file.content_type);
        parts.push(OutgoingContent::Media {
            kind,
            caption: (Some(index) == caption_part && !text.is_empty()).then(|| text.to_owned()),
            file_name: (kind == MediaKind::Document).then_some(file.file_name),
            mime: file.content_type,
            bytes: file.bytes,
        });
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fetched(content_type: &str, name: &str) -> Fetched {
        Fetched {
            content_type: content_type.into(),
            bytes: vec![1, 2, 3],
            file_name: name.into(),
        }
    }

    fn request(text: &str) -> OutboundRequest {
        let mut body = sample();
        body["message"] = json!(text);
        OutboundRequest::from_webhook(&body, None).unwrap()
    }

    #[test]
    fn text_alone_is_one_text_message() {
        assert_eq!(
            plan_parts(&request("hi"), vec![]),
            vec![OutgoingContent::Text("hi".into())]
        );
    }

    #[test]
    fn the_text_is_the_caption_of_the_first_image_video_or_document() {
        let parts = plan_parts(
            &request("see"),
            vec![fetched("audio/mpeg", "a.mp3"), fetched("application/pdf", "q.pdf")],
        );
        assert_eq!(parts.len(), 2);
        assert!(matches!(
            &parts[0],
            OutgoingContent::Media {
                kind: MediaKind::Audio,
                caption: None,
                ..
            }
        ));
        match &parts[1] {
            OutgoingContent::Media {
                kind,
                caption,
                file_name,
                ..
            } => {
                assert_eq!(*kind, MediaKind::Document);
                assert_eq!(caption.as_deref(), Some("see"));
                assert_eq!(file_name.as_deref(), Some("q.pdf"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn without_a_captionable_file_the_text_goes_first_on_its_own() {
        let parts = plan_parts(&request("listen"), vec![fetched("audio/ogg", "v.ogg")]);
        assert_eq!(parts[0], OutgoingContent::Text("listen".into()));
        assert!(matches!(
            &parts[1],
            OutgoingContent::Media {
                kind: MediaKind::Audio,
                ..
            }
        ));
    }

    fn sample() -> serde_json::Value {
        json!({
            "contactId": "GKBhT6BfwY9mjzXAU3sq", "locationId": "GKAWb4yu7A4LSc0skQ6g",
            "messageId": "GKJxs4P5L8dWc5CFUITM", "type": "SMS", "phone": "+15864603685",
            "message": "The text message", "attachments": ["https://example.com/a.png"],
            "userId": "GK56r6wdJDrkUPd0xsmx", "somethingNew": {"ignored": true}
        })
    }

    #[test]
    fn ghl_documented_example_parses_and_unknown_fields_are_ignored() {
        let request = OutboundRequest::from_webhook(&sample(), None).unwrap();
        assert_eq!(request.location_id.unwrap().as_str(), "GKAWb4yu7A4LSc0skQ6g");
        assert_eq!(request.ghl_message_id, "GKJxs4P5L8dWc5CFUITM");
        assert_eq!(request.phone, "+15864603685");
        assert_eq!(request.attachments.len(), 1);
    }

    #[test]
    fn custom_type_and_reply_to_are_read() {
        let mut body = sample();
        body["type"] = json!("Custom");
        body["replyToAltId"] = json!("3EB0ABC");
        let request = OutboundRequest::from_webhook(&body, None).unwrap();
        assert_eq!(request.reply_to.as_deref(), Some("3EB0ABC"));
    }

    #[test]
    fn missing_or_wrong_fields_are_named() {
        for (field, value, expected) in [
            ("messageId", json!(null), "messageId"),
            ("locationId", json!(null), "locationId"),
            ("phone", json!(""), "phone"),
            ("type", json!("Email"), "Email"),
            ("attachments", json!("not a list"), "unexpected field type"),
            (
                "messageId",
                json!("x\n2026-01-01T00:00:00Z ERROR forged"),
                "messageId \"x\\n",
            ),
            ("contactId", json!("a/../b"), "contactId"),
            ("phone", json!("+1415\u{0}5550100"), "phone \"+1415\\0"),
            ("phone", json!("1".repeat(65)), "over 64 characters"),
            ("userId", json!("u".repeat(65)), "userId"),
            ("replyToAltId", json!("3EB0 x"), "replyToAltId"),
        ] {
            let mut body = sample();
            body[field] = value;
            let err = OutboundRequest::from_webhook(&body, None).unwrap_err();
            assert!(err.contains(expected), "{field}: {err}");
        }
        let mut body = sample();
        body["message"] = json!(" ");
        body["attachments"] = json!([]);
        assert!(
            OutboundRequest::from_webhook(&body, None)
                .unwrap_err()
                .contains("message or attachments")
        );
    }

    #[test]
    fn another_provider_is_refused() {
        let mut body = sample();
        body["conversationProviderId"] = json!("someone-else");
        assert!(OutboundRequest::from_webhook(&body, Some("ours")).is_err());
        body["conversationProviderId"] = json!("ours");
        assert!(OutboundRequest::from_webhook(&body, Some("ours")).is_ok());
    }
}
