//! A direct chat's disappearing-messages timer, as the messages in it show it: WhatsApp's
//! clients put the timer on every message they send into such a chat (`context_info.expiration`,
//! also inside an `ephemeral_message` wrapper), and change it with an `EPHEMERAL_SETTING`
//! protocol message (0: off). A message without a timer says nothing: reactions, edits and
//! other add-ons carry none even in a disappearing chat.

use whatsapp_rust::Jid;
use whatsapp_rust::proto_helpers::MessageExt;
use whatsapp_rust::types::message::MessageInfo;
use whatsapp_rust::waproto::whatsapp as wa;
use whatsapp_rust::waproto::whatsapp::message::protocol_message::Type;

use super::{base_message, chat_phone, sender_phone};

/// `(chat, seconds)` when `message` shows its chat's timer. The chat is its phone JID when
/// WhatsApp named the phone of a LID chat: waghl sends to phone JIDs.
pub fn chat_timer(message: &wa::Message, info: &MessageInfo) -> Option<(String, u32)> {
    let source = &info.source;
    if !(source.chat.is_pn() || source.chat.is_lid()) {
        return None;
    }
    let base = base_message(message);
    let seconds = match base.protocol_message.as_option() {
        Some(protocol) if protocol.r#type == Some(Type::EphemeralSetting) => protocol.ephemeral_expiration.unwrap_or(0),
        Some(_) => return None,
        None => info
            .ephemeral_expiration
            .or_else(|| message.get_base_message().get_ephemeral_expiration())
            .filter(|s| *s > 0)?,
    };
    let phone = match source.chat.is_lid() {
        true if source.is_from_me => chat_phone(info),
        true => sender_phone(source),
        false => None,
    };
    let chat = match phone {
        Some(phone) => Jid::pn(phone.trim_start_matches('+')).to_string(),
        None => source.chat.to_non_ad().to_string(),
    };
    Some((chat, seconds))
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    fn in_chat(message: wa::Message) -> Option<(String, u32)> {
        chat_timer(&message, &direct())
    }

    #[test]
    fn a_message_in_a_disappearing_chat_shows_its_timer() {
        let mut text = wa::Message::text("hi".to_owned());
        assert!(text.set_ephemeral_expiration(604_800));
        assert_eq!(in_chat(text.clone()), Some((PHONE_JID.to_owned(), 604_800)));
        let wrapped = wa::Message {
            ephemeral_message: MessageField::some(wa::message::FutureProofMessage {
                message: MessageField::some(text),
            }),
            ..Default::default()
        };
        assert_eq!(in_chat(wrapped), Some((PHONE_JID.to_owned(), 604_800)));
        assert_eq!(in_chat(wa::Message::text("no timer".to_owned())), None);
    }

    #[test]
    fn an_ephemeral_setting_turns_the_timer_on_or_off() {
        let setting = |seconds| wa::Message {
            protocol_message: MessageField::some(wa::message::ProtocolMessage {
                r#type: Some(Type::EphemeralSetting),
                ephemeral_expiration: Some(seconds),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(in_chat(setting(86_400)), Some((PHONE_JID.to_owned(), 86_400)));
        assert_eq!(in_chat(setting(0)), Some((PHONE_JID.to_owned(), 0)));
    }

    #[test]
    fn a_lid_chat_is_keyed_by_its_phone_when_named() {
        let mut text = wa::Message::text("hi".to_owned());
        text.set_ephemeral_expiration(86_400);
        let mut info = info("123456789012345@lid", "123456789012345@lid");
        info.source.sender_alt = Some(PHONE_JID.parse().unwrap());
        assert_eq!(chat_timer(&text, &info), Some((PHONE_JID.to_owned(), 86_400)));
        info.source.sender_alt = None;
        assert_eq!(
            chat_timer(&text, &info),
            Some(("123456789012345@lid".to_owned(), 86_400))
        );
    }
}
