//! Media messages (image, video and round video, audio and voice notes, documents, stickers):
//! their content, and the `media_ref` — the media sub-message alone, encoded — from which the
//! file is downloaded later, after a restart too.

use whatsapp_rust::buffa::MessageField;
use whatsapp_rust::download::{Downloadable, MediaType};
use whatsapp_rust::waproto::whatsapp as wa;

use super::Mapped;
use crate::domain::{Content, Media, MediaKind};

pub(super) fn media(base: &wa::Message) -> Option<Mapped<'_>> {
    if let Some(image) = base.image_message.as_option() {
        let mut kept = image.clone();
        kept.jpeg_thumbnail = None;
        kept.context_info = MessageField::none();
        return Some(Mapped {
            content: media_content(
                MediaKind::Image,
                image.mimetype.as_deref(),
                "image/jpeg",
                image.caption.clone(),
                None,
                image.file_length,
            ),
            media_ref: Some(encode(wa::Message {
                image_message: MessageField::some(kept),
                ..Default::default()
            })),
            context: image.context_info.as_option(),
        });
    }
    for (video, round) in [
        (base.video_message.as_option(), false),
        (base.ptv_message.as_option(), true),
    ] {
        let Some(video) = video else { continue };
        let mut kept = video.clone();
        kept.jpeg_thumbnail = None;
        kept.streaming_sidecar = None;
        kept.context_info = MessageField::none();
        let stored = if round {
            wa::Message {
                ptv_message: MessageField::some(kept),
                ..Default::default()
            }
        } else {
            wa::Message {
                video_message: MessageField::some(kept),
                ..Default::default()
            }
        };
        return Some(Mapped {
            content: media_content(
                MediaKind::Video,
                video.mimetype.as_deref(),
                "video/mp4",
                video.caption.clone(),
                None,
                video.file_length,
            ),
            media_ref: Some(encode(stored)),
            context: video.context_info.as_option(),
        });
    }
    if let Some(audio) = base.audio_message.as_option() {
        let voice = audio.ptt == Some(true);
        let mut kept = audio.clone();
        kept.streaming_sidecar = None;
        kept.context_info = MessageField::none();
        let (kind, default_mime) = if voice {
            (MediaKind::Voice, "audio/ogg; codecs=opus")
        } else {
            (MediaKind::Audio, "audio/mpeg")
        };
        return Some(Mapped {
            content: media_content(
                kind,
                audio.mimetype.as_deref(),
                default_mime,
                None,
                None,
                audio.file_length,
            ),
            media_ref: Some(encode(wa::Message {
                audio_message: MessageField::some(kept),
                ..Default::default()
            })),
            context: audio.context_info.as_option(),
        });
    }
    if let Some(document) = base.document_message.as_option() {
        let mut kept = document.clone();
        kept.jpeg_thumbnail = None;
        kept.context_info = MessageField::none();
        let file_name = document
            .file_name
            .clone()
            .or_else(|| document.title.clone())
            .filter(|name| !name.is_empty());
        return Some(Mapped {
            content: media_content(
                MediaKind::Document,
                document.mimetype.as_deref(),
                "application/octet-stream",
                document.caption.clone(),
                file_name,
                document.file_length,
            ),
            media_ref: Some(encode(wa::Message {
                document_message: MessageField::some(kept),
                ..Default::default()
            })),
            context: document.context_info.as_option(),
        });
    }
    if let Some(sticker) = base.sticker_message.as_option() {
        let mut kept = sticker.clone();
        kept.png_thumbnail = None;
        kept.context_info = MessageField::none();
        return Some(Mapped {
            content: media_content(
                MediaKind::Sticker,
                sticker.mimetype.as_deref(),
                "image/webp",
                None,
                None,
                sticker.file_length,
            ),
            media_ref: Some(encode(wa::Message {
                sticker_message: MessageField::some(kept),
                ..Default::default()
            })),
            context: sticker.context_info.as_option(),
        });
    }
    None
}

fn media_content(
    kind: MediaKind,
    mime: Option<&str>,
    default_mime: &str,
    caption: Option<String>,
    file_name: Option<String>,
    size: Option<u64>,
) -> Content {
    Content::Media(Media {
        kind,
        mime: mime
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .unwrap_or(default_mime)
            .to_owned(),
        caption: caption.filter(|c| !c.trim().is_empty()),
        file_name,
        size,
    })
}

fn encode(message: wa::Message) -> Vec<u8> {
    whatsapp_rust::waproto::codec::message_to_vec(&message)
}

/// The media sub-message a `media_ref` holds.
pub fn downloadable(message: &wa::Message) -> Option<&dyn Downloadable> {
    if let Some(m) = message.image_message.as_option() {
        return Some(m as &dyn Downloadable);
    }
    if let Some(m) = message.video_message.as_option() {
        return Some(m as &dyn Downloadable);
    }
    if let Some(m) = message.ptv_message.as_option() {
        return Some(m as &dyn Downloadable);
    }
    if let Some(m) = message.audio_message.as_option() {
        return Some(m as &dyn Downloadable);
    }
    if let Some(m) = message.document_message.as_option() {
        return Some(m as &dyn Downloadable);
    }
    if let Some(m) = message.sticker_message.as_option() {
        return Some(m as &dyn Downloadable);
    }
    None
}

pub fn media_type(kind: MediaKind) -> MediaType {
    match kind {
        MediaKind::Image => MediaType::Image,
        MediaKind::Video => MediaType::Video,
        MediaKind::Audio | MediaKind::Voice => MediaType::Audio,
        MediaKind::Document => MediaType::Document,
        MediaKind::Sticker => MediaType::Sticker,
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn an_image_with_a_caption_keeps_a_small_media_ref() {
        let image = wa::Message {
            image_message: MessageField::some(wa::message::ImageMessage {
                mimetype: Some("image/jpeg".into()),
                caption: Some("look".into()),
                file_length: Some(2048),
                direct_path: Some("/v/t62.7118-24/abc".into()),
                media_key: Some(vec![7; 32]),
                file_enc_sha256: Some(vec![8; 32]),
                jpeg_thumbnail: Some(vec![1, 2, 3]),
                context_info: MessageField::some(wa::ContextInfo {
                    stanza_id: Some("3EB0QUOTED".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (message, media_ref) = mapped(image, &direct());
        assert_eq!(
            message.content,
            Content::Media(Media {
                kind: MediaKind::Image,
                mime: "image/jpeg".into(),
                caption: Some("look".into()),
                file_name: None,
                size: Some(2048),
            })
        );
        assert_eq!(message.reply_to.as_deref(), Some("3EB0QUOTED"));
        let stored = decode(&media_ref.expect("a media ref"));
        let kept = stored.image_message.as_option().expect("the image");
        assert_eq!(kept.direct_path.as_deref(), Some("/v/t62.7118-24/abc"));
        assert_eq!(kept.media_key.as_deref(), Some(&[7u8; 32][..]));
        assert_eq!(kept.file_enc_sha256.as_deref(), Some(&[8u8; 32][..]));
        assert_eq!(kept.jpeg_thumbnail, None);
        assert!(kept.context_info.is_unset());
        assert!(downloadable(&stored).is_some());
    }

    #[test]
    fn a_document_with_a_caption_wrapper_keeps_its_file_name() {
        let document = wa::Message {
            document_message: MessageField::some(wa::message::DocumentMessage {
                mimetype: Some("application/pdf".into()),
                file_name: Some("invoice.pdf".into()),
                caption: Some("your invoice".into()),
                file_length: Some(1000),
                direct_path: Some("/v/doc".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let wrapped = wa::Message {
            document_with_caption_message: MessageField::some(wa::message::FutureProofMessage {
                message: MessageField::some(document),
            }),
            ..Default::default()
        };
        let (message, media_ref) = mapped(wrapped, &direct());
        assert_eq!(
            message.content,
            Content::Media(Media {
                kind: MediaKind::Document,
                mime: "application/pdf".into(),
                caption: Some("your invoice".into()),
                file_name: Some("invoice.pdf".into()),
                size: Some(1000),
            })
        );
        let stored = decode(&media_ref.unwrap());
        assert!(stored.document_message.is_set());
    }

    #[test]
    fn a_push_to_talk_audio_is_a_voice_note_and_plain_audio_is_audio() {
        let audio = |ptt: Option<bool>| wa::Message {
            audio_message: MessageField::some(wa::message::AudioMessage {
                mimetype: Some("audio/ogg; codecs=opus".into()),
                ptt,
                seconds: Some(4),
                file_length: Some(5000),
                direct_path: Some("/v/voice".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (voice, media_ref) = mapped(audio(Some(true)), &direct());
        let Content::Media(media) = voice.content else {
            panic!("media expected")
        };
        assert_eq!(media.kind, MediaKind::Voice);
        assert_eq!(media.mime, "audio/ogg; codecs=opus");
        assert_eq!(media.size, Some(5000));
        assert!(decode(&media_ref.unwrap()).audio_message.is_set());

        let (plain, _) = mapped(audio(None), &direct());
        assert!(matches!(
            plain.content,
            Content::Media(Media {
                kind: MediaKind::Audio,
                ..
            })
        ));
    }

    fn image(direct_path: &str) -> wa::Message {
        wa::Message {
            image_message: MessageField::some(wa::message::ImageMessage {
                mimetype: Some("image/jpeg".into()),
                direct_path: Some(direct_path.into()),
                file_length: Some(100),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn an_album_child_is_its_image_and_the_album_parent_is_not_kept() {
        let parent_key = wa::MessageKey {
            id: Some("3EB0PARENT".into()),
            remote_jid: Some(PHONE_JID.into()),
            ..Default::default()
        };
        let child = whatsapp_rust::proto_helpers::wrap_as_album_child(image("/v/album-1"), parent_key);
        // Sent into a chat with disappearing messages, the child is wrapped once more.
        let ephemeral = wa::Message {
            ephemeral_message: MessageField::some(wa::message::FutureProofMessage {
                message: MessageField::some(child.clone()),
            }),
            ..Default::default()
        };
        for message in [child, ephemeral] {
            let (mapped, media_ref) = mapped(message, &direct());
            assert!(
                matches!(
                    &mapped.content,
                    Content::Media(Media {
                        kind: MediaKind::Image,
                        ..
                    })
                ),
                "{:?}",
                mapped.content
            );
            let stored = decode(&media_ref.expect("a media ref"));
            assert_eq!(
                stored.image_message.as_option().unwrap().direct_path.as_deref(),
                Some("/v/album-1")
            );
        }

        let parent = wa::Message {
            album_message: MessageField::some(wa::message::AlbumMessage {
                expected_image_count: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(map_message(&parent, &direct()).is_none());
    }

    #[test]
    fn an_animated_sticker_is_a_sticker() {
        let lottie = wa::Message {
            lottie_sticker_message: MessageField::some(wa::message::FutureProofMessage {
                message: MessageField::some(wa::Message {
                    sticker_message: MessageField::some(wa::message::StickerMessage {
                        mimetype: Some("application/was".into()),
                        is_lottie: Some(true),
                        is_animated: Some(true),
                        direct_path: Some("/v/lottie".into()),
                        file_length: Some(900),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let (message, media_ref) = mapped(lottie, &direct());
        assert_eq!(
            message.content,
            Content::Media(Media {
                kind: MediaKind::Sticker,
                mime: "application/was".into(),
                caption: None,
                file_name: None,
                size: Some(900),
            })
        );
        let stored = decode(&media_ref.expect("a media ref"));
        assert!(downloadable(&stored).is_some());
    }
}
