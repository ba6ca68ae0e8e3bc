//! waghl's outbound parts as WhatsApp messages: a text (quoting a message or not), or a media
//! message built from the upload's result.

use whatsapp_rust::Jid;
use whatsapp_rust::buffa::MessageField;
use whatsapp_rust::proto_helpers::MessageBuilderExt;
use whatsapp_rust::upload::UploadResponse;
use whatsapp_rust::waproto::whatsapp as wa;

use crate::domain::{MediaKind, MessageContext, QuoteAuthor};

/// What surrounds a send's content: the chat it goes to, the business's own phone JID (the
/// author of its own messages when one is quoted), and the quote and timer it carries.
pub struct Framing<'a> {
    pub chat: &'a Jid,
    pub own: &'a Jid,
    pub context: &'a MessageContext,
}

impl Framing<'_> {
    /// The `context_info` the message carries, if it needs one.
    fn context(&self) -> Option<wa::ContextInfo> {
        let quote = self.context.quote.as_ref().filter(|q| !q.id.is_empty());
        let expiration = self.context.expiration.filter(|s| *s > 0);
        if quote.is_none() && expiration.is_none() {
            return None;
        }
        Some(wa::ContextInfo {
            stanza_id: quote.map(|q| q.id.clone()),
            participant: quote.map(|q| self.author(&q.author)),
            expiration,
            ..Default::default()
        })
    }

    /// The quoted author's JID, without a device: the phone shows the quote under this name
    /// and finds the quoted message by (id, author). waghl does not keep quoted bodies, so no
    /// `quoted_message` goes along.
    fn author(&self, author: &QuoteAuthor) -> String {
        let jid = match author {
            QuoteAuthor::Business => self.own.clone(),
            // A sender recorded in a shape WhatsApp does not read: the other party of the chat.
            QuoteAuthor::Contact(sender) => sender.parse().unwrap_or_else(|_| self.chat.clone()),
        };
        jid.to_non_ad().to_string()
    }
}

/// A text, framed as `framing` says.
pub fn outgoing_text(text: &str, framing: &Framing<'_>) -> wa::Message {
    match framing.context() {
        Some(context) => wa::Message::text_with_context(text.to_owned(), context),
        None => wa::Message::text(text.to_owned()),
    }
}

/// What WhatsApp's media servers answered to an upload: where the encrypted file is and how to
/// open it. (The crate's own `UploadResponse` cannot be built outside it, and the simulated
/// WhatsApp must build the same messages.)
#[derive(Clone, Debug)]
pub struct Uploaded {
    pub url: String,
    pub direct_path: String,
    pub media_key: Vec<u8>,
    pub file_sha256: Vec<u8>,
    pub file_enc_sha256: Vec<u8>,
    pub file_length: u64,
    pub media_key_timestamp: i64,
    pub streaming_sidecar: Option<Vec<u8>>,
}

impl From<UploadResponse> for Uploaded {
    fn from(upload: UploadResponse) -> Self {
        Self {
            url: upload.url,
            direct_path: upload.direct_path,
            media_key: upload.media_key.to_vec(),
            file_sha256: upload.file_sha256.to_vec(),
            file_enc_sha256: upload.file_enc_sha256.to_vec(),
            file_length: upload.file_length,
            media_key_timestamp: upload.media_key_timestamp,
            streaming_sidecar: upload.streaming_sidecar,
        }
    }
}

/// One outbound media part as the WhatsApp message that carries it, with the fields the
/// crate's media builders set.
pub struct OutgoingMedia<'a> {
    pub kind: MediaKind,
    pub mime: &'a str,
    pub caption: Option<String>,
    pub file_name: Option<String>,
    /// How long an audio or video plays ([`super::media_seconds`]).
    pub seconds: Option<u32>,
}

/// A media message for an uploaded file, framed as `framing` says.
pub fn media_message(media: OutgoingMedia<'_>, upload: Uploaded, framing: &Framing<'_>) -> wa::Message {
    let context = framing.context().map(MessageField::some).unwrap_or_default();
    let mimetype = |default: &str| {
        Some(media.mime.trim())
            .filter(|m| !m.is_empty())
            .unwrap_or(default)
            .to_owned()
    };
    let Uploaded {
        url,
        direct_path,
        media_key,
        file_sha256,
        file_enc_sha256,
        file_length,
        media_key_timestamp,
        streaming_sidecar,
    } = upload;
    macro_rules! file {
        ($kind:ident { $($field:ident: $value:expr),* $(,)? }) => {
            wa::message::$kind {
                url: Some(url),
                direct_path: Some(direct_path),
                media_key: Some(media_key),
                file_sha256: Some(file_sha256),
                file_enc_sha256: Some(file_enc_sha256),
                file_length: Some(file_length),
                media_key_timestamp: Some(media_key_timestamp),
                context_info: context,
                $($field: $value,)*
                ..Default::default()
            }
        };
    }
    let caption = media.caption.filter(|c| !c.trim().is_empty());
    match media.kind {
        MediaKind::Image => wa::Message {
            image_message: MessageField::some(file!(ImageMessage {
                mimetype: Some(mimetype("image/jpeg")),
                caption: caption,
            })),
            ..Default::default()
        },
        MediaKind::Video => wa::Message {
            video_message: MessageField::some(file!(VideoMessage {
                mimetype: Some(mimetype("video/mp4")),
                caption: caption,
                streaming_sidecar: streaming_sidecar,
                seconds: media.seconds,
            })),
            ..Default::default()
        },
        MediaKind::Audio | MediaKind::Voice => {
            let voice = media.kind == MediaKind::Voice;
            // Phones play voice notes as OGG/Opus, under exactly this type.
            let mime = match mimetype("audio/ogg; codecs=opus") {
                m if voice && !m.starts_with("audio/ogg") => m,
                _ if voice => "audio/ogg; codecs=opus".to_owned(),
                m => m,
            };
            wa::Message {
                audio_message: MessageField::some(file!(AudioMessage {
                    mimetype: Some(mime),
                    ptt: Some(voice),
                    streaming_sidecar: streaming_sidecar,
                    seconds: media.seconds,
                })),
                ..Default::default()
            }
        }
        MediaKind::Document => {
            let name = media
                .file_name
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| "file".to_owned());
            wa::Message {
                document_message: MessageField::some(file!(DocumentMessage {
                    mimetype: Some(mimetype("application/octet-stream")),
                    file_name: Some(name.clone()),
                    title: Some(name),
                    caption: caption,
                })),
                ..Default::default()
            }
        }
        MediaKind::Sticker => wa::Message {
            sticker_message: MessageField::some(file!(StickerMessage {
                mimetype: Some(mimetype("image/webp")),
            })),
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Quote;

    fn upload() -> Uploaded {
        Uploaded {
            url: "https://mmg.example/f".into(),
            direct_path: "/v/f".into(),
            media_key: vec![1; 32],
            file_sha256: vec![2; 32],
            file_enc_sha256: vec![3; 32],
            file_length: 100,
            media_key_timestamp: 1_700_000_000,
            streaming_sidecar: None,
        }
    }

    fn media(kind: MediaKind, seconds: Option<u32>) -> wa::Message {
        let media = OutgoingMedia {
            kind,
            mime: "",
            caption: None,
            file_name: None,
            seconds,
        };
        let chat = Jid::pn("15551234567");
        let context = MessageContext::default();
        let framing = Framing {
            chat: &chat,
            own: &chat,
            context: &context,
        };
        media_message(media, upload(), &framing)
    }

    /// The `participant` a text quoting a message by `author` names, sent by the business
    /// `14155550180` (linked device 7) to `15551234567`.
    fn quoted_participant(author: QuoteAuthor) -> Option<String> {
        let chat = Jid::pn("15551234567");
        let own: Jid = "14155550180:7@s.whatsapp.net".parse().unwrap();
        let context = MessageContext {
            quote: Some(Quote {
                id: "3EB0Q".into(),
                author,
            }),
            expiration: None,
        };
        let framing = Framing {
            chat: &chat,
            own: &own,
            context: &context,
        };
        let message = outgoing_text("ok", &framing);
        let context = message.extended_text_message.as_option()?.context_info.as_option()?;
        assert_eq!(context.stanza_id.as_deref(), Some("3EB0Q"));
        context.participant.clone()
    }

    #[test]
    fn a_quote_names_the_contact_by_the_lid_it_wrote_from() {
        let lid = QuoteAuthor::Contact("987654321012345@lid".into());
        assert_eq!(quoted_participant(lid).as_deref(), Some("987654321012345@lid"));
    }

    #[test]
    fn a_quote_of_the_business_names_its_own_phone_jid_without_the_device() {
        assert_eq!(
            quoted_participant(QuoteAuthor::Business).as_deref(),
            Some("14155550180@s.whatsapp.net")
        );
    }

    #[test]
    fn a_quote_of_an_unknown_message_names_the_chat() {
        // The relay names the chat's contact when it does not know the quoted message; a
        // sender it cannot read falls back to the chat too.
        let chat = QuoteAuthor::Contact("15551234567@s.whatsapp.net".into());
        assert_eq!(quoted_participant(chat).as_deref(), Some("15551234567@s.whatsapp.net"));
        let unreadable = QuoteAuthor::Contact("not a jid".into());
        assert_eq!(
            quoted_participant(unreadable).as_deref(),
            Some("15551234567@s.whatsapp.net")
        );
    }

    #[test]
    fn no_quote_no_timer_no_context() {
        let chat = Jid::pn("15551234567");
        let context = MessageContext::default();
        let framing = Framing {
            chat: &chat,
            own: &chat,
            context: &context,
        };
        assert_eq!(outgoing_text("hi", &framing), wa::Message::text("hi".to_owned()));
    }

    #[test]
    fn texts_and_media_into_a_disappearing_chat_carry_its_timer() {
        let chat = Jid::pn("15551234567");
        let context = MessageContext {
            quote: None,
            expiration: Some(86_400),
        };
        let framing = Framing {
            chat: &chat,
            own: &chat,
            context: &context,
        };
        let text = outgoing_text("hi", &framing);
        let text = text.extended_text_message.as_option().unwrap();
        let info = text.context_info.as_option().unwrap();
        assert_eq!((info.expiration, info.stanza_id.as_ref()), (Some(86_400), None));
        let media = OutgoingMedia {
            kind: MediaKind::Image,
            mime: "",
            caption: None,
            file_name: None,
            seconds: None,
        };
        let image = media_message(media, upload(), &framing);
        let image = image.image_message.as_option().unwrap();
        assert_eq!(image.context_info.as_option().unwrap().expiration, Some(86_400));
    }

    #[test]
    fn audio_voice_and_video_carry_their_duration() {
        let voice = media(MediaKind::Voice, Some(2));
        let audio = voice.audio_message.as_option().unwrap();
        assert_eq!((audio.seconds, audio.ptt), (Some(2), Some(true)));
        let audio = media(MediaKind::Audio, Some(7));
        assert_eq!(audio.audio_message.as_option().unwrap().seconds, Some(7));
        let video = media(MediaKind::Video, Some(16));
        assert_eq!(video.video_message.as_option().unwrap().seconds, Some(16));
        let unknown = media(MediaKind::Video, None);
        assert_eq!(unknown.video_message.as_option().unwrap().seconds, None);
    }
}
