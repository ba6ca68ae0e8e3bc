//! Messages about other messages — deletes, edits, reactions — and the kinds waghl shows only
//! as "open WhatsApp to see it" or does not keep at all.

use whatsapp_rust::buffa::MessageField;
use whatsapp_rust::proto_helpers::MessageExt;
use whatsapp_rust::types::message::{EditAttribute, MessageInfo};
use whatsapp_rust::waproto::whatsapp as wa;

use super::{Answer, Mapped};
use crate::domain::Content;

/// Revokes (deletes) and edits; other protocol messages (key shares, history notices, ephemeral
/// settings, LID sync…) are not messages.
pub(super) fn protocol(base: &wa::Message) -> Answer<'static> {
    let protocol = base.protocol_message.as_option()?;
    Some(protocol_content(protocol))
}

fn protocol_content(protocol: &wa::message::ProtocolMessage) -> Option<Mapped<'static>> {
    use wa::message::protocol_message::Type as ProtocolType;

    let target = protocol
        .key
        .as_option()
        .and_then(|key| key.id.clone())
        .filter(|id| !id.is_empty());
    let is_edit = protocol.r#type == Some(ProtocolType::MESSAGE_EDIT) || protocol.edited_message.is_set();
    if protocol.r#type == Some(ProtocolType::REVOKE) {
        Some(Mapped::plain(Content::Delete { target: target? }))
    } else if is_edit {
        let edited = protocol.edited_message.as_option()?;
        Some(Mapped::plain(Content::Edit {
            target: target?,
            text: body_text(edited),
        }))
    } else {
        // Key shares, history notices, ephemeral settings, LID sync...: not messages.
        None
    }
}

/// A reaction names its target; `""` removes the reaction.
pub(super) fn reaction(base: &wa::Message) -> Answer<'static> {
    let reaction = base.reaction_message.as_option()?;
    Some(reaction_content(reaction))
}

fn reaction_content(reaction: &wa::message::ReactionMessage) -> Option<Mapped<'static>> {
    let target = reaction
        .key
        .as_option()
        .and_then(|key| key.id.clone())
        .filter(|id| !id.is_empty())?;
    Some(Mapped::plain(Content::Reaction {
        target,
        // `""` removes the reaction.
        emoji: reaction.text.clone().unwrap_or_default(),
    }))
}

/// An edit the crate decrypted surfaces as its new body. The target is not in the body, so it
/// cannot become an `Edit`, and it must not pass as a new message either. Pins are not kept.
pub(super) fn edit_attribute(info: &MessageInfo) -> Answer<'static> {
    match info.edit {
        EditAttribute::MessageEdit | EditAttribute::AdminEdit => {
            Some(Some(Mapped::plain(Content::Unsupported { kind: "edit".into() })))
        }
        EditAttribute::PinInChat => Some(None),
        _ => None,
    }
}

/// What is left: kinds GHL cannot show (kept as "unsupported", named), and add-ons that carry
/// nothing to relay.
pub(super) fn other(base: &wa::Message) -> Option<Mapped<'static>> {
    let kind = if base.poll_creation_message.is_set()
        || base.poll_creation_message_v2.is_set()
        || base.poll_creation_message_v3.is_set()
    {
        "poll"
    } else if base.poll_update_message.is_set() {
        "poll vote"
    } else if base.event_message.is_set() {
        "event"
    } else if base.group_invite_message.is_set() {
        "group invite"
    } else if base.buttons_response_message.is_set()
        || base.list_response_message.is_set()
        || base.template_button_reply_message.is_set()
        || base.interactive_response_message.is_set()
    {
        "button reply"
    } else if base.pin_in_chat_message.is_set()
        || base.keep_in_chat_message.is_set()
        // An album's parent only announces how many items follow; each item is its own
        // message (an `associated_child_message`) and reaches GHL by itself.
        || base.album_message.is_set()
        || is_bare(base)
    {
        return None;
    } else {
        "unknown"
    };
    Some(Mapped::plain(Content::Unsupported { kind: kind.into() }))
}

/// A message that carries nothing but key material and per-message metadata.
fn is_bare(base: &wa::Message) -> bool {
    let mut rest = base.clone();
    rest.sender_key_distribution_message = MessageField::none();
    rest.fast_ratchet_key_sender_key_distribution_message = MessageField::none();
    rest.message_context_info = MessageField::none();
    rest.conversation = rest.conversation.take().filter(|text| !text.is_empty());
    rest == wa::Message::default()
}

/// The text of an edited body: its text, else its caption.
fn body_text(message: &wa::Message) -> String {
    message
        .text_content()
        .or_else(|| message.get_caption())
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn a_reaction_names_its_target() {
        let reaction = wa::Message {
            reaction_message: MessageField::some(wa::message::ReactionMessage {
                key: key("3EB0TARGET"),
                text: Some("👍".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (message, _) = mapped(reaction, &direct());
        assert_eq!(
            message.content,
            Content::Reaction {
                target: "3EB0TARGET".into(),
                emoji: "👍".into(),
            }
        );
    }

    #[test]
    fn an_edit_carries_the_new_text_and_its_target() {
        let edit = wa::Message {
            protocol_message: MessageField::some(wa::message::ProtocolMessage {
                key: key("3EB0TARGET"),
                r#type: Some(wa::message::protocol_message::Type::MESSAGE_EDIT),
                edited_message: MessageField::some(wa::Message::text("fixed")),
                ..Default::default()
            }),
            ..Default::default()
        };
        let wrapped = wa::Message {
            edited_message: MessageField::some(wa::message::FutureProofMessage {
                message: MessageField::some(edit),
            }),
            ..Default::default()
        };
        let (message, _) = mapped(wrapped, &direct());
        assert_eq!(
            message.content,
            Content::Edit {
                target: "3EB0TARGET".into(),
                text: "fixed".into(),
            }
        );
    }

    #[test]
    fn a_revoke_is_a_delete() {
        let revoke = wa::Message {
            protocol_message: MessageField::some(wa::message::ProtocolMessage {
                key: key("3EB0TARGET"),
                r#type: Some(wa::message::protocol_message::Type::REVOKE),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (message, _) = mapped(revoke, &direct());
        assert_eq!(
            message.content,
            Content::Delete {
                target: "3EB0TARGET".into()
            }
        );
    }

    #[test]
    fn a_poll_is_unsupported_but_kept() {
        let poll = wa::Message {
            poll_creation_message: MessageField::some(wa::message::PollCreationMessage {
                name: Some("Lunch?".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (message, _) = mapped(poll, &direct());
        assert_eq!(message.content, Content::Unsupported { kind: "poll".into() });
    }
}
