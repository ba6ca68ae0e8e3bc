//! waghl's own model of a WhatsApp message, independent of any WhatsApp library: what the
//! transport reports, what the inbox stores (as JSON) and what the relay turns into a GHL
//! message.

use serde::{Deserialize, Serialize};

/// The kinds of media WhatsApp carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    Image,
    Video,
    Audio,
    /// A push-to-talk voice note (OGG/Opus).
    Voice,
    Document,
    Sticker,
}

impl MediaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Video => "video",
            Self::Audio => "audio",
            Self::Voice => "voice",
            Self::Document => "document",
            Self::Sticker => "sticker",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "image" => Self::Image,
            "video" => Self::Video,
            "audio" => Self::Audio,
            "voice" => Self::Voice,
            "document" => Self::Document,
            "sticker" => Self::Sticker,
            _ => return None,
        })
    }
}

/// Media described by the message; the bytes are fetched through the transport with
/// `media_ref` when they are needed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Media {
    pub kind: MediaKind,
    pub mime: String,
    pub caption: Option<String>,
    pub file_name: Option<String>,
    /// Size in bytes, when WhatsApp says.
    pub size: Option<u64>,
}

/// What a message says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Content {
    Text {
        text: String,
    },
    Media(Media),
    Location {
        lat: f64,
        lng: f64,
        name: Option<String>,
    },
    Contact {
        name: String,
        phones: Vec<String>,
    },
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
    /// Anything else, named by its WhatsApp type.
    Unsupported {
        kind: String,
    },
    /// A message arrived that this linked device cannot read: a placeholder that tells the
    /// agent so. A later copy WhatsApp delivers under the same id replaces it.
    Unavailable {
        reason: Unavailable,
    },
}

/// Why a message that arrived cannot be shown (yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unavailable {
    /// A view-once photo, video or voice note: WhatsApp opens it only on the phone.
    ViewOnce,
    /// Content WhatsApp keeps off linked devices (from a hosted business or a bot).
    PhoneOnly,
    /// It could not be decrypted yet; WhatsApp was asked to send it again (by the sender, or
    /// by the phone), and it replaces this placeholder when it comes.
    Waiting,
}

/// The `kind` of a placeholder: the inbox lets a real message with the same id replace a row
/// of this kind.
pub const UNAVAILABLE_KIND: &str = "unavailable";

impl Content {
    /// A short kind name for the inbox's `kind` column and metrics.
    pub fn kind(&self) -> &str {
        match self {
            Self::Text { .. } => "text",
            Self::Media(media) => media.kind.as_str(),
            Self::Location { .. } => "location",
            Self::Contact { .. } => "contact",
            Self::Reaction { .. } => "reaction",
            Self::Edit { .. } => "edit",
            Self::Delete { .. } => "delete",
            Self::Unsupported { .. } => "unsupported",
            Self::Unavailable { .. } => UNAVAILABLE_KIND,
        }
    }
}

/// A message as WhatsApp delivered it to the linked device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InboundMessage {
    /// WhatsApp's message id: unique only within (chat, sender).
    pub id: String,
    /// The chat: the other party's JID for a direct chat, the group's JID for a group.
    pub chat: String,
    /// Who wrote it: a phone JID (`…@s.whatsapp.net`) or, for LID-addressed senders, a
    /// `…@lid` JID.
    pub sender: String,
    /// The sender's phone (E.164) when known.
    pub sender_phone: Option<String>,
    /// A direct chat's phone (E.164) when the chat is a LID and WhatsApp named the number
    /// along: a message typed on the phone into such a chat carries it (`peer_recipient_pn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_phone: Option<String>,
    pub push_name: Option<String>,
    /// Unix milliseconds.
    pub timestamp: i64,
    /// Typed on the linked phone itself (then `chat` is the other party).
    pub from_me: bool,
    pub is_group: bool,
    /// A status broadcast (stories), not a conversation.
    pub is_status: bool,
    /// The quoted message, when this one is a reply.
    pub reply_to: Option<String>,
    pub content: Content,
}

/// What a send says around its content, as WhatsApp's `context_info` carries it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageContext {
    /// The message it quotes.
    pub quote: Option<Quote>,
    /// The chat's disappearing-messages timer (seconds): WhatsApp's clients put it on every
    /// message into such a chat, and the recipient's phone deletes the message after it.
    pub expiration: Option<u32>,
}

/// The message a send quotes: its WhatsApp id and who wrote it (WhatsApp shows the quote under
/// that author's name, and the author's phone finds its own message by it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    pub id: String,
    pub author: QuoteAuthor,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuoteAuthor {
    /// The contact, by the JID it wrote from: a phone JID, or the LID it is known by.
    Contact(String),
    /// The business: a message waghl sent or one typed on the business's phone.
    Business,
}

/// What to send on WhatsApp.
#[derive(Clone, Debug, PartialEq)]
pub enum OutgoingContent {
    Text(String),
    Media {
        kind: MediaKind,
        mime: String,
        bytes: Vec<u8>,
        caption: Option<String>,
        file_name: Option<String>,
    },
}
