//! Pure conversion between WhatsApp's protobuf messages and waghl's model, both directions,
//! one file per family of message kinds (as mautrix-whatsapp's `msgconv`). No IO: the real
//! transport and the simulated WhatsApp both go through it, so every end-to-end test runs the
//! code that an upgrade of the pinned whatsapp-rust would break.

mod contact;
mod duration;
mod media;
mod outbound;
mod place;
pub(super) mod recovered;
mod special;
mod status;
mod text;
mod timer;
mod unavailable;

use whatsapp_rust::Jid;
use whatsapp_rust::proto_helpers::MessageExt;
use whatsapp_rust::types::message::{MessageInfo, MessageSource};
use whatsapp_rust::wacore_binary::JidExt;
use whatsapp_rust::waproto::whatsapp as wa;

use crate::domain::{Content, InboundMessage};

pub use duration::media_seconds;
pub use media::{downloadable, media_type};
pub use outbound::{Framing, OutgoingMedia, Uploaded, media_message, outgoing_text};
pub use recovered::{map_recovered, recovered_id, recovered_messages};
pub use status::{Ending, ending, receipt_status};
pub use timer::chat_timer;
pub use unavailable::map_undecryptable;

/// Maps a decrypted WhatsApp message to waghl's model. The second value is `media_ref`: the
/// encoded `wa::Message` that holds only the media sub-message, so that the media can be
/// downloaded later, after a restart too. `None` for what waghl does not keep: protocol
/// traffic (key shares, history notices, pins), newsletters, and add-ons the crate could not
/// decrypt.
pub fn map_message(message: &wa::Message, info: &MessageInfo) -> Option<(InboundMessage, Option<Vec<u8>>)> {
    if info.source.chat.is_newsletter() {
        return None;
    }
    let mapped = map_content(base_message(message), info)?;
    let reply_to = mapped
        .context
        .and_then(|context| context.stanza_id.clone())
        .filter(|id| !id.is_empty());
    Some((envelope(info, mapped.content, reply_to), mapped.media_ref))
}

/// The message `info` describes, saying `content`.
fn envelope(info: &MessageInfo, content: Content, reply_to: Option<String>) -> InboundMessage {
    let source = &info.source;
    InboundMessage {
        id: info.id.clone(),
        chat: source.chat.to_non_ad().to_string(),
        sender: source.sender.to_non_ad().to_string(),
        sender_phone: sender_phone(source),
        chat_phone: chat_phone(info),
        push_name: Some(info.push_name.trim())
            .filter(|name| !name.is_empty())
            .map(str::to_owned),
        timestamp: info.timestamp.timestamp_millis(),
        from_me: source.is_from_me,
        // The parser also sets `is_group` for status broadcasts; the chat's server decides.
        is_group: source.chat.is_group(),
        is_status: source.chat.is_status_broadcast(),
        reply_to,
        content,
    }
}

/// What a message says, its media reference, and the context (for replies) of its body.
pub struct Mapped<'m> {
    pub content: Content,
    pub media_ref: Option<Vec<u8>>,
    pub context: Option<&'m wa::ContextInfo>,
}

impl Mapped<'_> {
    fn plain(content: Content) -> Self {
        Self {
            content,
            media_ref: None,
            context: None,
        }
    }
}

/// The message inside its wrappers: the crate's `get_base_message` (device-sent, ephemeral,
/// view-once, document-with-caption, edited), then the two future-proof wrappers it leaves on:
/// an album child (`associated_child_message`) and an animated sticker
/// (`lottie_sticker_message`), each holding a plain media message. Wrappers nest (an album
/// child in an ephemeral chat), hence the loop; WhatsApp nests a handful at most.
pub fn base_message(message: &wa::Message) -> &wa::Message {
    let mut current = message.get_base_message();
    for _ in 0..4 {
        let inner = current
            .associated_child_message
            .as_option()
            .or_else(|| current.lottie_sticker_message.as_option())
            .and_then(|wrapper| wrapper.message.as_option());
        match inner {
            Some(inner) => current = inner.get_base_message(),
            None => break,
        }
    }
    current
}

/// A family's answer for a message: `None` — not of this family, ask the next one;
/// `Some(None)` — of this family, and not a message waghl keeps; `Some(Some(_))` — mapped.
type Answer<'m> = Option<Option<Mapped<'m>>>;

/// The content of a message's base (wrappers such as ephemeral or view-once removed), tried
/// family by family in the order WhatsApp's own clients give precedence.
pub fn map_content<'m>(base: &'m wa::Message, info: &MessageInfo) -> Option<Mapped<'m>> {
    if let Some(answer) = special::protocol(base).or_else(|| special::reaction(base)) {
        return answer;
    }
    if base.secret_encrypted_message.is_set() {
        // An edit or reaction whose parent secret the crate lacks: unreadable.
        return None;
    }
    if let Some(answer) = special::edit_attribute(info) {
        return answer;
    }
    text::text(base)
        .or_else(|| media::media(base))
        .or_else(|| place::location(base))
        .or_else(|| contact::contact(base))
        .or_else(|| special::other(base))
}

/// `+digits` for a phone-number JID (`@s.whatsapp.net`, `@hosted`).
pub fn phone_of_jid(jid: &Jid) -> Option<String> {
    let user = jid.user_base();
    if !jid.server.is_pn_family() {
        return None;
    }
    crate::domain::phone::Phone::from_whatsapp_user(user).map(crate::domain::phone::Phone::into_string)
}

/// The sender's phone: the sender itself when it is a phone JID, else the phone WhatsApp sent
/// along with a LID sender (`sender_alt`).
fn sender_phone(source: &MessageSource) -> Option<String> {
    phone_of_jid(&source.sender).or_else(|| source.sender_alt.as_ref().and_then(phone_of_jid))
}

/// The phone of a direct chat that is a LID, for a message typed on the phone: WhatsApp's
/// server names it in `peer_recipient_pn` (the chat itself, and the sender, are LIDs or ours).
fn chat_phone(info: &MessageInfo) -> Option<String> {
    let source = &info.source;
    if !source.is_from_me || !source.chat.is_lid() {
        return None;
    }
    info.peer_recipient_pn.as_ref().and_then(phone_of_jid)
}

/// `(LID digits, phone)` of a chat that `chat_phone` resolved. The crate does not learn this
/// pair by itself (it learns those of senders), so waghl records it.
pub fn chat_lid_mapping(info: &MessageInfo) -> Option<(String, String)> {
    let phone = chat_phone(info)?;
    lid_digits(&info.source.chat).map(|lid| (lid, phone))
}

fn lid_digits(lid: &Jid) -> Option<String> {
    let user = lid.user_base();
    (!user.is_empty() && user.bytes().all(|b| b.is_ascii_digit())).then(|| user.to_owned())
}

/// `(LID digits, phone)` when the message pairs a LID with a phone number.
pub fn lid_mapping(source: &MessageSource) -> Option<(String, String)> {
    let alt = source.sender_alt.as_ref()?;
    let (lid, phone) = if source.sender.is_lid() {
        (&source.sender, phone_of_jid(alt)?)
    } else if alt.is_lid() {
        (alt, phone_of_jid(&source.sender)?)
    } else {
        return None;
    };
    lid_digits(lid).map(|lid| (lid, phone))
}

#[cfg(test)]
pub(super) mod fixtures {
    pub use whatsapp_rust::buffa::MessageField;
    pub use whatsapp_rust::chrono;
    pub use whatsapp_rust::types::message::{MessageInfo, MessageSource};
    pub use whatsapp_rust::waproto::whatsapp as wa;

    pub use super::map_message;
    pub use whatsapp_rust::proto_helpers::MessageBuilderExt;

    pub use crate::domain::InboundMessage;

    pub const PHONE_JID: &str = "15551234567@s.whatsapp.net";

    pub fn info(chat: &str, sender: &str) -> MessageInfo {
        MessageInfo {
            id: "3EB0C0FFEE".into(),
            push_name: "Ana".into(),
            timestamp: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            source: MessageSource {
                chat: chat.parse().unwrap(),
                sender: sender.parse().unwrap(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    pub fn direct() -> MessageInfo {
        info(PHONE_JID, PHONE_JID)
    }

    pub fn mapped(message: wa::Message, info: &MessageInfo) -> (InboundMessage, Option<Vec<u8>>) {
        map_message(&message, info).expect("a message waghl keeps")
    }

    pub fn key(id: &str) -> MessageField<wa::MessageKey> {
        MessageField::some(wa::MessageKey {
            id: Some(id.into()),
            remote_jid: Some(PHONE_JID.into()),
            from_me: Some(true),
            ..Default::default()
        })
    }

    pub fn decode(media_ref: &[u8]) -> wa::Message {
        whatsapp_rust::waproto::codec::message_decode(media_ref).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn a_text_in_a_direct_chat() {
        let (message, media_ref) = mapped(wa::Message::text("hello"), &direct());
        assert_eq!(message.content, Content::Text { text: "hello".into() });
        assert_eq!(message.id, "3EB0C0FFEE");
        assert_eq!(message.chat, PHONE_JID);
        assert_eq!(message.sender, PHONE_JID);
        assert_eq!(message.sender_phone.as_deref(), Some("+15551234567"));
        assert_eq!(message.push_name.as_deref(), Some("Ana"));
        assert_eq!(message.timestamp, 1_700_000_000_000);
        assert!(!message.from_me && !message.is_group && !message.is_status);
        assert_eq!(message.reply_to, None);
        assert_eq!(media_ref, None);
    }

    #[test]
    fn an_extended_text_reply_names_the_quoted_message() {
        let reply = wa::Message::text_with_context(
            "yes",
            wa::ContextInfo {
                stanza_id: Some("3EB0QUOTED".into()),
                participant: Some(PHONE_JID.into()),
                ..Default::default()
            },
        );
        let (message, _) = mapped(reply, &direct());
        assert_eq!(message.content, Content::Text { text: "yes".into() });
        assert_eq!(message.reply_to.as_deref(), Some("3EB0QUOTED"));
    }

    #[test]
    fn a_group_message_is_flagged_and_its_sender_loses_the_device() {
        let mut group = info("120363025246125244@g.us", "15551234567:12@s.whatsapp.net");
        group.source.is_group = true;
        let (message, _) = mapped(wa::Message::text("hi all"), &group);
        assert!(message.is_group);
        assert!(!message.is_status);
        assert_eq!(message.chat, "120363025246125244@g.us");
        assert_eq!(message.sender, PHONE_JID);
        assert_eq!(message.sender_phone.as_deref(), Some("+15551234567"));
    }

    #[test]
    fn a_status_broadcast_is_a_status_not_a_group() {
        let mut status = info("status@broadcast", PHONE_JID);
        // The crate's parser marks broadcasts as groups.
        status.source.is_group = true;
        let (message, _) = mapped(wa::Message::text("my story"), &status);
        assert!(message.is_status);
        assert!(!message.is_group);
        assert_eq!(message.chat, "status@broadcast");
    }

    #[test]
    fn a_lid_sender_gets_its_phone_from_sender_alt() {
        let mut lid = info("123456789012345@lid", "123456789012345:5@lid");
        lid.source.sender_alt = Some(PHONE_JID.parse().unwrap());
        let (message, _) = mapped(wa::Message::text("hello"), &lid);
        assert_eq!(message.chat, "123456789012345@lid");
        assert_eq!(message.sender, "123456789012345@lid");
        assert_eq!(message.sender_phone.as_deref(), Some("+15551234567"));
        assert_eq!(
            lid_mapping(&lid.source),
            Some(("123456789012345".to_owned(), "+15551234567".to_owned()))
        );

        let hidden = info("123456789012345@lid", "123456789012345@lid");
        let (message, _) = mapped(wa::Message::text("hello"), &hidden);
        assert_eq!(message.sender_phone, None);
        assert_eq!(lid_mapping(&hidden.source), None);
    }

    #[test]
    fn a_message_typed_on_the_phone_into_a_lid_chat_names_the_chats_phone() {
        let mut own = info("123456789012345@lid", "15550001111:0@s.whatsapp.net");
        own.source.is_from_me = true;
        own.peer_recipient_pn = Some(PHONE_JID.parse().unwrap());
        let (message, _) = mapped(wa::Message::text("typed"), &own);
        assert_eq!(message.chat, "123456789012345@lid");
        assert_eq!(message.chat_phone.as_deref(), Some("+15551234567"));
        assert_eq!(
            chat_lid_mapping(&own),
            Some(("123456789012345".to_owned(), "+15551234567".to_owned()))
        );

        // Only for the phone's own messages, and only in a LID chat.
        let mut contact = own.clone();
        contact.source.is_from_me = false;
        assert_eq!(mapped(wa::Message::text("hi"), &contact).0.chat_phone, None);
        let mut pn_chat = own.clone();
        pn_chat.source.chat = PHONE_JID.parse().unwrap();
        assert_eq!(mapped(wa::Message::text("hi"), &pn_chat).0.chat_phone, None);
        assert_eq!(chat_lid_mapping(&pn_chat), None);
    }

    #[test]
    fn a_message_typed_on_the_phone_is_from_me() {
        let mut own = info(PHONE_JID, "15550001111:0@s.whatsapp.net");
        own.source.is_from_me = true;
        let (message, _) = mapped(wa::Message::text("on my way"), &own);
        assert!(message.from_me);
        assert_eq!(message.chat, PHONE_JID);
        assert_eq!(message.sender, "15550001111@s.whatsapp.net");
    }

    #[test]
    fn protocol_traffic_newsletters_and_bare_key_messages_are_not_kept() {
        let key_share = wa::Message {
            protocol_message: MessageField::some(wa::message::ProtocolMessage {
                r#type: Some(wa::message::protocol_message::Type::APP_STATE_SYNC_KEY_SHARE),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(map_message(&key_share, &direct()).is_none());
        assert!(map_message(&wa::Message::default(), &direct()).is_none());
        let newsletter = info("120363144038483540@newsletter", "120363144038483540@newsletter");
        assert!(map_message(&wa::Message::text("news"), &newsletter).is_none());
    }
}
