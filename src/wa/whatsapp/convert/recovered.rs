//! Messages the phone sends again on the device's request (a peer data operation, "PDO"): when
//! the device could not decrypt a message, the crate asks the phone, and the phone answers with
//! a protocol message holding each message as a `WebMessageInfo`. The crate dispatches the
//! messages it reads there as events, outside its durability hook, and on a redelivery of the
//! phone's answer it replays only the answer; so waghl reads the messages from the answer
//! itself, and the answer is acknowledged only once they are stored.

use whatsapp_rust::Jid;
use whatsapp_rust::types::message::{MessageInfo, MessageSource};
use whatsapp_rust::wacore_binary::JidExt;
use whatsapp_rust::waproto::whatsapp as wa;

use super::map_message;
use crate::domain::InboundMessage;

/// The messages in the phone's answer to a resend request, when `message` is one: it comes
/// from the account's own primary device (device 0), as the crate requires too.
pub fn recovered_messages(message: &wa::Message, info: &MessageInfo) -> Vec<wa::WebMessageInfo> {
    let source = &info.source;
    if !source.is_from_me || source.sender.device != 0 {
        return Vec::new();
    }
    let Some(response) = message
        .protocol_message
        .as_option()
        .and_then(|protocol| protocol.peer_data_operation_request_response_message.as_option())
    else {
        return Vec::new();
    };
    response
        .peer_data_operation_result
        .iter()
        .filter_map(|result| result.placeholder_message_resend_response.as_option())
        .filter_map(|resend| resend.web_message_info_bytes.as_deref())
        .filter_map(|bytes| whatsapp_rust::waproto::codec::web_message_info_decode(bytes).ok())
        .collect()
}

/// The WhatsApp id of a recovered message.
pub fn recovered_id(web: &wa::WebMessageInfo) -> Option<&str> {
    web.key.as_option()?.id.as_deref().filter(|id| !id.is_empty())
}

/// A recovered message in waghl's model, addressed as the crate addresses it (the author is
/// `participant` where there is one, the device's own number for its own messages, else the
/// chat). `own` is the device's phone-number JID.
pub fn map_recovered(web: &wa::WebMessageInfo, own: Option<&Jid>) -> Option<(InboundMessage, Option<Vec<u8>>)> {
    let key = web.key.as_option()?;
    let chat: Jid = key.remote_jid.as_deref()?.parse().ok()?;
    let is_from_me = key.from_me.unwrap_or(false);
    let participant = key
        .participant
        .as_deref()
        .or(web.participant.as_deref())
        .and_then(|p| p.parse::<Jid>().ok());
    let sender = match (participant, is_from_me) {
        (Some(participant), _) => participant,
        (None, true) => own.cloned().unwrap_or_else(|| chat.clone()),
        (None, false) => chat.clone(),
    };
    let info = MessageInfo {
        id: recovered_id(web)?.to_owned(),
        push_name: web.push_name.clone().unwrap_or_default(),
        timestamp: web
            .message_timestamp
            .and_then(|secs| whatsapp_rust::chrono::DateTime::from_timestamp(i64::try_from(secs).ok()?, 0))
            .unwrap_or_else(whatsapp_rust::chrono::Utc::now),
        source: MessageSource {
            is_group: chat.is_group(),
            chat,
            sender,
            is_from_me,
            ..Default::default()
        },
        ..Default::default()
    };
    map_message(web.message.as_option()?, &info)
}

#[cfg(test)]
pub(in crate::wa::whatsapp) mod tests {
    use whatsapp_rust::buffa::Message as _;

    use super::super::fixtures::*;
    use super::*;
    use crate::domain::Content;

    type Response = wa::message::PeerDataOperationRequestResponseMessage;
    type OperationResult = wa::message::peer_data_operation_request_response_message::PeerDataOperationResult;
    type Resend = wa::message::peer_data_operation_request_response_message::peer_data_operation_result::PlaceholderMessageResendResponse;

    pub fn web(id: &str, from_me: bool, text: &str) -> wa::WebMessageInfo {
        wa::WebMessageInfo {
            key: MessageField::some(wa::MessageKey {
                remote_jid: Some(PHONE_JID.into()),
                from_me: Some(from_me),
                id: Some(id.into()),
                ..Default::default()
            }),
            message: MessageField::some(wa::Message::text(text)),
            message_timestamp: Some(1_700_000_000),
            push_name: Some("Ana".into()),
            ..Default::default()
        }
    }

    /// The phone's answer to a resend request, carrying `messages`.
    pub fn answer(messages: &[wa::WebMessageInfo]) -> wa::Message {
        let results = messages
            .iter()
            .map(|m| OperationResult {
                placeholder_message_resend_response: MessageField::some(Resend {
                    web_message_info_bytes: Some(m.encode_to_vec()),
                }),
                ..Default::default()
            })
            .collect();
        wa::Message {
            protocol_message: MessageField::some(wa::message::ProtocolMessage {
                r#type: Some(wa::message::protocol_message::Type::PEER_DATA_OPERATION_REQUEST_RESPONSE_MESSAGE),
                peer_data_operation_request_response_message: MessageField::some(Response {
                    peer_data_operation_result: results,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn from_own_phone(device: u16) -> MessageInfo {
        let mut own = info(
            "15550001111@s.whatsapp.net",
            &format!("15550001111:{device}@s.whatsapp.net"),
        );
        own.source.is_from_me = true;
        own
    }

    #[test]
    fn the_phones_answer_yields_the_messages_it_carries() {
        let answer = answer(&[web("3EB0AAA", false, "hello"), web("3EB0BBB", true, "on my way")]);
        let recovered = recovered_messages(&answer, &from_own_phone(0));
        assert_eq!(recovered.len(), 2);
        let own: Jid = "15550001111@s.whatsapp.net".parse().unwrap();

        let (contact, _) = map_recovered(&recovered[0], Some(&own)).unwrap();
        assert_eq!(contact.id, "3EB0AAA");
        assert_eq!(contact.content, Content::Text { text: "hello".into() });
        assert_eq!((contact.chat.as_str(), contact.sender.as_str()), (PHONE_JID, PHONE_JID));
        assert_eq!(contact.sender_phone.as_deref(), Some("+15551234567"));
        assert_eq!(contact.timestamp, 1_700_000_000_000);
        assert!(!contact.from_me);

        let (mine, _) = map_recovered(&recovered[1], Some(&own)).unwrap();
        assert!(mine.from_me);
        assert_eq!(mine.chat, PHONE_JID);
        assert_eq!(mine.sender, "15550001111@s.whatsapp.net");
    }

    #[test]
    fn only_the_own_primary_phone_answers() {
        let answer = answer(&[web("3EB0AAA", false, "hello")]);
        assert!(
            recovered_messages(&answer, &from_own_phone(3)).is_empty(),
            "a linked device"
        );
        assert!(recovered_messages(&answer, &direct()).is_empty(), "a contact");
        assert!(recovered_messages(&wa::Message::text("hi"), &from_own_phone(0)).is_empty());
    }
}
