//! The simulated WhatsApp speaks WhatsApp's own types at the seam: what a contact sends becomes
//! a `waproto` message with its `MessageInfo`, and what the bridge sends is recorded as the
//! proto it built. Both pass through the real transport's `convert`, so every end-to-end test
//! on the simulated WhatsApp exercises the conversion the real one uses.

use whatsapp_rust::Jid;
use whatsapp_rust::buffa::MessageField;
use whatsapp_rust::chrono;
use whatsapp_rust::proto_helpers::MessageBuilderExt;
use whatsapp_rust::types::message::{MessageInfo, MessageSource};
use whatsapp_rust::waproto::whatsapp as wa;

use super::SentMessage;
use crate::domain::{Content, InboundMessage, MessageContext, OutgoingContent, Quote, QuoteAuthor};
use crate::wa::whatsapp::convert::{self, Framing, OutgoingMedia, Uploaded};

/// A message a contact (or the account's own phone) sends, as the simulated phone composes it.
#[derive(Clone, Debug)]
pub struct Incoming {
    /// The other party of the chat (E.164).
    pub from: String,
    pub push_name: Option<String>,
    pub id: String,
    /// Typed on the account's own phone.
    pub from_me: bool,
    /// Unix seconds; now when absent.
    pub timestamp: Option<i64>,
    /// The sender is known to the device only by this LID (digits).
    pub lid: Option<String>,
    pub chat: Chat,
    pub reply_to: Option<String>,
    pub body: Body,
}

#[derive(Clone, Debug)]
pub enum Chat {
    Direct,
    Group(String),
    Status,
}

#[derive(Clone, Debug)]
pub enum Body {
    /// A text or a file: composed as any WhatsApp client composes it (the same builders as
    /// waghl's own sends).
    Content(OutgoingContent),
    Reaction {
        target: String,
        emoji: String,
    },
    Edit {
        target: String,
        text: String,
    },
    Delete {
        target: String,
    },
    Location {
        lat: f64,
        lng: f64,
        name: Option<String>,
    },
    Contact {
        name: String,
        phones: Vec<String>,
    },
}

/// The proto WhatsApp delivers for `incoming` (media stored under `media_path`), read through
/// `convert` as the real transport reads it: the message and its `media_ref`, or `None` when
/// WhatsApp's own clients would not deliver it as a message.
pub fn deliver(incoming: &Incoming, media_path: Option<&str>) -> Option<(InboundMessage, Option<Vec<u8>>)> {
    let info = info(incoming);
    let chat = info.source.chat.clone();
    let message = compose(&incoming.body, incoming.reply_to.as_deref(), &chat, media_path);
    convert::map_message(&message, &info)
}

fn info(incoming: &Incoming) -> MessageInfo {
    let other: Jid = Jid::pn(incoming.from.trim_start_matches('+'));
    let lid = incoming
        .lid
        .as_deref()
        .filter(|_| !incoming.from_me)
        .map(|l| Jid::lid(l.trim_end_matches("@lid")));
    let sender = lid.clone().unwrap_or_else(|| other.clone());
    let chat = match &incoming.chat {
        Chat::Group(group) if group.contains('@') => group.parse().unwrap_or_else(|_| Jid::group(group)),
        Chat::Group(group) => Jid::group(group),
        Chat::Status => Jid::status_broadcast(),
        Chat::Direct => lid.unwrap_or(other),
    };
    let timestamp = incoming
        .timestamp
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .unwrap_or_else(chrono::Utc::now);
    MessageInfo {
        id: incoming.id.clone(),
        push_name: incoming.push_name.clone().unwrap_or_default(),
        timestamp,
        source: MessageSource {
            chat,
            sender,
            is_from_me: incoming.from_me,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn compose(body: &Body, reply_to: Option<&str>, chat: &Jid, media_path: Option<&str>) -> wa::Message {
    let context = || {
        reply_to.map(|id| wa::ContextInfo {
            stanza_id: Some(id.to_owned()),
            ..Default::default()
        })
    };
    let key = |target: &str| {
        MessageField::some(wa::MessageKey {
            id: Some(target.to_owned()),
            remote_jid: Some(chat.to_string()),
            ..Default::default()
        })
    };
    match body {
        Body::Content(content) => {
            // The contact's client names the quoted author; waghl reads only the quoted id.
            let context = MessageContext {
                quote: reply_to.map(|id| Quote {
                    id: id.to_owned(),
                    author: QuoteAuthor::Contact(chat.to_string()),
                }),
                expiration: None,
            };
            let framing = Framing {
                chat,
                own: chat,
                context: &context,
            };
            outgoing(content, &framing, media_path.unwrap_or_default())
        }
        Body::Reaction { target, emoji } => wa::Message {
            reaction_message: MessageField::some(wa::message::ReactionMessage {
                key: key(target),
                text: Some(emoji.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
        Body::Edit { target, text } => protocol(
            wa::message::protocol_message::Type::MESSAGE_EDIT,
            key(target),
            Some(wa::Message::text(text.clone())),
        ),
        Body::Delete { target } => protocol(wa::message::protocol_message::Type::REVOKE, key(target), None),
        Body::Location { lat, lng, name } => wa::Message {
            location_message: MessageField::some(wa::message::LocationMessage {
                degrees_latitude: Some(*lat),
                degrees_longitude: Some(*lng),
                name: name.clone(),
                context_info: context().map(MessageField::some).unwrap_or_default(),
                ..Default::default()
            }),
            ..Default::default()
        },
        Body::Contact { name, phones } => wa::Message {
            contact_message: MessageField::some(wa::message::ContactMessage {
                display_name: Some(name.clone()),
                vcard: Some(vcard(name, phones)),
                context_info: context().map(MessageField::some).unwrap_or_default(),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

fn protocol(
    kind: wa::message::protocol_message::Type,
    key: MessageField<wa::MessageKey>,
    edited: Option<wa::Message>,
) -> wa::Message {
    wa::Message {
        protocol_message: MessageField::some(wa::message::ProtocolMessage {
            r#type: Some(kind),
            key,
            edited_message: edited.map(MessageField::some).unwrap_or_default(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A vCard as WhatsApp's clients write it: each number with its `waid`.
fn vcard(name: &str, phones: &[String]) -> String {
    let mut card = format!("BEGIN:VCARD\nVERSION:3.0\nFN:{name}\n");
    for phone in phones {
        let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
        card.push_str(&format!("TEL;type=CELL;waid={digits}:{phone}\n"));
    }
    card.push_str("END:VCARD");
    card
}

/// What WhatsApp's media servers answer to an upload; the simulated ones keep the file under
/// `path` (the direct path) unencrypted.
fn simulated_upload(path: &str, size: usize) -> Uploaded {
    Uploaded {
        url: format!("https://mmg.whatsapp.net{path}"),
        direct_path: path.to_owned(),
        media_key: vec![0; 32],
        file_enc_sha256: vec![0; 32],
        file_sha256: vec![0; 32],
        file_length: size as u64,
        media_key_timestamp: 0,
        streaming_sidecar: None,
    }
}

/// The proto the bridge's send builds for `content`, as the real transport builds it (the
/// simulated upload keeps the file under `media_path`).
pub fn outgoing(content: &OutgoingContent, framing: &Framing<'_>, media_path: &str) -> wa::Message {
    match content {
        OutgoingContent::Text(text) => convert::outgoing_text(text, framing),
        OutgoingContent::Media {
            kind,
            mime,
            bytes,
            caption,
            file_name,
        } => {
            let media = OutgoingMedia {
                kind: *kind,
                mime,
                caption: caption.clone(),
                file_name: file_name.clone(),
                seconds: convert::media_seconds(*kind, bytes),
            };
            convert::media_message(media, simulated_upload(media_path, bytes.len()), framing)
        }
    }
}

/// What the recipient's phone shows for a sent proto, read back through `convert`.
pub fn shown(id: &str, to: &str, message: &wa::Message, at: i64) -> SentMessage {
    let mut shown = SentMessage {
        id: id.to_owned(),
        to: to.to_owned(),
        kind: "unknown".into(),
        text: None,
        caption: None,
        mime: None,
        bytes: None,
        file_name: None,
        reply_to: None,
        at,
    };
    let Some(mapped) = convert::map_content(message, &MessageInfo::default()) else {
        return shown;
    };
    shown.reply_to = mapped.context.and_then(|c| c.stanza_id.clone());
    match mapped.content {
        Content::Text { text } => {
            shown.kind = "text".into();
            shown.text = Some(text);
        }
        Content::Media(media) => {
            shown.kind = media.kind.as_str().into();
            shown.caption = media.caption;
            shown.mime = Some(media.mime);
            shown.bytes = media.size.map(|s| s as usize);
            shown.file_name = media.file_name;
        }
        other => shown.kind = other.kind().into(),
    }
    shown
}
