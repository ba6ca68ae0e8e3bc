//! waghl's outbound parts as WhatsApp messages: a text (quoting a message or not), or a media
//! message built from the upload's result.

use whatsapp_rust::Jid;
use whatsapp_rust::buffa::MessageField;
use whatsapp_rust::media::{self, AudioOptions, DocumentOptions, ImageOptions, VideoOptions};
use whatsapp_rust::proto_helpers::MessageBuilderExt;
use whatsapp_rust::upload::UploadResponse;
use whatsapp_rust::waproto::whatsapp as wa;

use crate::domain::MediaKind;

/// A text to `chat`, quoting `reply_to` when given.
pub fn outgoing_text(text: &str, reply_to: Option<&str>, chat: &Jid) -> wa::Message {
    match reply_to.filter(|r| !r.is_empty()) {
        Some(quoted) => wa::Message::text_with_context(text.to_owned(), quote_context(quoted, chat)),
        None => wa::Message::text(text.to_owned()),
    }
}

/// Quotes `stanza_id` in a direct chat with `chat`. waghl knows only the id of the quoted
/// message, not its author or its body. So the quoted author is taken to be the other party
/// (agents reply to what the contact wrote), and no `quoted_message` is sent.
fn quote_context(stanza_id: &str, chat: &Jid) -> wa::ContextInfo {
    wa::ContextInfo {
        stanza_id: Some(stanza_id.to_owned()),
        participant: Some(chat.to_non_ad().to_string()),
        ..Default::default()
    }
}

#[allow(clippy::too_many_arguments)]
pub fn media_message(
    kind: MediaKind,
    upload: UploadResponse,
    mime: &str,
    caption: Option<String>,
    file_name: Option<String>,
    reply_to: Option<&str>,
    chat: &Jid,
) -> wa::Message {
    let context = reply_to.filter(|r| !r.is_empty()).map(|r| quote_context(r, chat));
    let mimetype = Some(mime.trim().to_owned()).filter(|m| !m.is_empty());
    match kind {
        MediaKind::Image => media::image_message(
            upload,
            ImageOptions {
                caption,
                mimetype,
                context_info: context.map(Box::new),
                ..Default::default()
            },
        ),
        MediaKind::Video => media::video_message(
            upload,
            VideoOptions {
                caption,
                mimetype,
                context_info: context.map(Box::new),
                ..Default::default()
            },
        ),
        MediaKind::Audio => media::audio_message(
            upload,
            AudioOptions {
                mimetype,
                ptt: Some(false),
                context_info: context.map(Box::new),
                ..Default::default()
            },
        ),
        MediaKind::Voice => media::audio_message(
            upload,
            AudioOptions {
                // Phones play voice notes as OGG/Opus, under exactly this type.
                mimetype: Some(match mimetype {
                    Some(m) if !m.starts_with("audio/ogg") => m,
                    _ => "audio/ogg; codecs=opus".to_owned(),
                }),
                ptt: Some(true),
                context_info: context.map(Box::new),
                ..Default::default()
            },
        ),
        MediaKind::Document => {
            let name = file_name
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| "file".to_owned());
            media::document_message(
                upload,
                DocumentOptions {
                    mimetype,
                    file_name: Some(name.clone()),
                    title: Some(name),
                    caption,
                    context_info: context.map(Box::new),
                    ..Default::default()
                },
            )
        }
        // The crate has no sticker builder; the fields are those of the other builders.
        MediaKind::Sticker => wa::Message {
            sticker_message: MessageField::some(wa::message::StickerMessage {
                url: Some(upload.url),
                direct_path: Some(upload.direct_path),
                media_key: Some(upload.media_key.to_vec()),
                file_sha256: Some(upload.file_sha256.to_vec()),
                file_enc_sha256: Some(upload.file_enc_sha256.to_vec()),
                file_length: Some(upload.file_length),
                media_key_timestamp: Some(upload.media_key_timestamp),
                mimetype: Some(mimetype.unwrap_or_else(|| "image/webp".to_owned())),
                context_info: context.map(MessageField::some).unwrap_or_default(),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}
