//! How a WhatsApp message reads in GHL's conversation: the text GHL shows, and the file name
//! its media is uploaded under. Nothing is dropped silently: a kind GHL cannot show becomes a
//! line naming it.

use super::{Content, InboundMessage, MediaKind, Unavailable};

/// The message text for GHL; `quoted` is an excerpt of the message this one replies to.
pub fn ghl_text(message: &InboundMessage, quoted: Option<&str>) -> String {
    let body = match &message.content {
        Content::Text { text } => text.clone(),
        Content::Media(media) => media.caption.clone().unwrap_or_default(),
        Content::Location { lat, lng, name } => {
            let place = name.as_deref().map(|n| format!(" {n}")).unwrap_or_default();
            format!("📍 Location{place}: https://maps.google.com/?q={lat},{lng}")
        }
        Content::Contact { name, phones } => format!("👤 Contact card: {name} {}", phones.join(", "))
            .trim_end()
            .to_owned(),
        Content::Reaction { target, emoji } if emoji.is_empty() => format!("Removed a reaction from message {target}"),
        Content::Reaction { target, emoji } => format!("Reacted {emoji} to message {target}"),
        Content::Edit { target, text } => format!("✏️ Edited message {target}: {text}"),
        Content::Delete { target } => format!("🗑️ Deleted message {target}"),
        Content::Unsupported { kind } => format!("[WhatsApp {kind} message: open WhatsApp to see it]"),
        Content::Unavailable { reason } => unavailable_notice(*reason).to_owned(),
    };
    match (&message.reply_to, quoted) {
        (Some(_), Some(excerpt)) => format!("↩️ \"{}\"\n{body}", excerpt_of(excerpt)),
        (Some(id), None) => format!("↩️ (reply to message {id})\n{body}"),
        (None, _) => body,
    }
}

/// What the agent reads in place of a message this device cannot show.
fn unavailable_notice(reason: Unavailable) -> &'static str {
    match reason {
        Unavailable::ViewOnce => "🔒 A view-once message arrived: open it on the phone to see it.",
        Unavailable::PhoneOnly => "📱 A message arrived that WhatsApp shows only on the phone: open it there.",
        Unavailable::Waiting => "⏳ Waiting for this message: it will appear here once WhatsApp delivers it.",
    }
}

/// At most 80 characters of `text`, on one line.
pub fn excerpt_of(text: &str) -> String {
    let line = text.replace('\n', " ");
    let mut excerpt: String = line.chars().take(80).collect();
    if line.chars().count() > 80 {
        excerpt.push('…');
    }
    excerpt
}

/// The name an attachment is uploaded under: WhatsApp's file name when it has one.
pub fn file_name(kind: MediaKind, mime: &str, given: Option<&str>, message_id: &str) -> String {
    if let Some(name) = given.filter(|n| !n.trim().is_empty()) {
        return name.replace(['/', '\\'], "_");
    }
    format!("{}-{message_id}.{}", kind.as_str(), extension(mime))
}

fn extension(mime: &str) -> &'static str {
    match mime.split(';').next().unwrap_or_default().trim() {
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/webp" => "webp",
        "image/gif" => "gif",
        "video/mp4" => "mp4",
        "video/3gpp" => "3gp",
        "audio/ogg" => "ogg",
        "audio/mpeg" => "mp3",
        "audio/mp4" | "audio/aac" => "m4a",
        "audio/wav" | "audio/x-wav" => "wav",
        "application/pdf" => "pdf",
        "text/plain" => "txt",
        _ => "bin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Media;

    fn message(content: Content) -> InboundMessage {
        InboundMessage {
            id: "ABC".into(),
            chat: "1@s.whatsapp.net".into(),
            sender: "1@s.whatsapp.net".into(),
            sender_phone: Some("+1".into()),
            chat_phone: None,
            push_name: None,
            timestamp: 0,
            from_me: false,
            is_group: false,
            is_status: false,
            reply_to: None,
            content,
        }
    }

    #[test]
    fn every_kind_reads_as_something() {
        let text = |c| ghl_text(&message(c), None);
        assert_eq!(text(Content::Text { text: "hi".into() }), "hi");
        assert!(
            text(Content::Location {
                lat: 1.5,
                lng: -2.0,
                name: Some("Cafe".into())
            })
            .contains("q=1.5,-2")
        );
        assert!(
            text(Content::Contact {
                name: "Ana".into(),
                phones: vec!["+1555".into()]
            })
            .contains("Ana +1555")
        );
        assert!(
            text(Content::Reaction {
                target: "X1".into(),
                emoji: "👍".into()
            })
            .contains("👍 to message X1")
        );
        assert!(
            text(Content::Edit {
                target: "X1".into(),
                text: "new".into()
            })
            .contains("X1: new")
        );
        assert!(text(Content::Delete { target: "X1".into() }).contains("X1"));
        assert!(text(Content::Unsupported { kind: "poll".into() }).contains("poll"));
        let unavailable = |reason| text(Content::Unavailable { reason });
        assert!(unavailable(Unavailable::ViewOnce).contains("view-once"));
        assert!(unavailable(Unavailable::PhoneOnly).contains("on the phone"));
        assert!(unavailable(Unavailable::Waiting).contains("Waiting for this message"));
        let media = Content::Media(Media {
            kind: MediaKind::Image,
            mime: "image/jpeg".into(),
            caption: Some("look".into()),
            file_name: None,
            size: None,
        });
        assert_eq!(text(media), "look");
    }

    #[test]
    fn replies_start_with_a_quoted_excerpt() {
        let mut reply = message(Content::Text { text: "yes".into() });
        reply.reply_to = Some("Q1".into());
        assert_eq!(
            ghl_text(&reply, Some("do you open at 9?")),
            "↩️ \"do you open at 9?\"\nyes"
        );
        assert!(ghl_text(&reply, None).contains("Q1"));
        assert_eq!(excerpt_of(&"x".repeat(100)).chars().count(), 81);
    }

    #[test]
    fn file_names_come_from_whatsapp_or_the_kind_and_type() {
        assert_eq!(
            file_name(MediaKind::Document, "application/pdf", Some("a/b.pdf"), "ID"),
            "a_b.pdf"
        );
        assert_eq!(file_name(MediaKind::Image, "image/jpeg", None, "ID"), "image-ID.jpg");
    }
}
