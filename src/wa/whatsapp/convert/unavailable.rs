//! Messages the crate reports as `UndecryptableMessage`: ones WhatsApp keeps off linked devices
//! (view-once, hosted, bot) and ones that failed to decrypt. They become placeholders, so the
//! agent learns that something arrived; a copy WhatsApp delivers later under the same id (the
//! sender's resend after the crate's retry receipt, or the phone's answer to the crate's
//! placeholder-resend request) replaces the placeholder in the inbox.

use whatsapp_rust::types::events::{DecryptFailMode, UnavailableType, UndecryptableMessage};
use whatsapp_rust::wacore_binary::JidExt;

use super::envelope;
use crate::domain::{Content, InboundMessage, Unavailable};

/// The placeholder for an undecryptable message; `None` for what waghl does not keep
/// (newsletters) and for failures the sender asked to hide (WhatsApp shows nothing for them).
pub fn map_undecryptable(event: &UndecryptableMessage) -> Option<InboundMessage> {
    let info = &event.info;
    if info.source.chat.is_newsletter() {
        return None;
    }
    let reason = if event.is_unavailable {
        match event.unavailable_type {
            UnavailableType::ViewOnce => Unavailable::ViewOnce,
            UnavailableType::Hosted | UnavailableType::Bot => Unavailable::PhoneOnly,
            // A plain fanout: the crate asks the phone for it.
            UnavailableType::Unknown => Unavailable::Waiting,
        }
    } else {
        match event.decrypt_fail_mode {
            DecryptFailMode::Show => Unavailable::Waiting,
            DecryptFailMode::Hide => return None,
        }
    };
    Some(envelope(info, Content::Unavailable { reason }, None))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::wa::whatsapp::convert::fixtures::{PHONE_JID, direct, info};

    fn event(is_unavailable: bool, kind: UnavailableType, mode: DecryptFailMode) -> UndecryptableMessage {
        UndecryptableMessage::builder()
            .info(Arc::new(direct()))
            .is_unavailable(is_unavailable)
            .unavailable_type(kind)
            .decrypt_fail_mode(mode)
            .build()
    }

    fn reason(event: &UndecryptableMessage) -> Option<Unavailable> {
        map_undecryptable(event).map(|m| match m.content {
            Content::Unavailable { reason } => reason,
            other => panic!("not a placeholder: {other:?}"),
        })
    }

    #[test]
    fn view_once_hosted_and_bot_messages_are_read_on_the_phone() {
        let view_once = event(true, UnavailableType::ViewOnce, DecryptFailMode::Show);
        assert_eq!(reason(&view_once), Some(Unavailable::ViewOnce));
        let placeholder = map_undecryptable(&view_once).unwrap();
        assert_eq!(placeholder.id, "3EB0C0FFEE");
        assert_eq!(placeholder.sender, PHONE_JID);
        assert_eq!(placeholder.sender_phone.as_deref(), Some("+15551234567"));
        assert_eq!(placeholder.push_name.as_deref(), Some("Ana"));
        for kind in [UnavailableType::Hosted, UnavailableType::Bot] {
            assert_eq!(
                reason(&event(true, kind, DecryptFailMode::Show)),
                Some(Unavailable::PhoneOnly)
            );
        }
    }

    #[test]
    fn a_message_that_will_be_sent_again_is_awaited() {
        // A plain unavailable fanout: the crate asks the phone for it.
        let fanout = event(true, UnavailableType::Unknown, DecryptFailMode::Show);
        assert_eq!(reason(&fanout), Some(Unavailable::Waiting));
        // A decrypt failure: the crate sends a retry receipt, and the sender encrypts it again.
        let failed = event(false, UnavailableType::Unknown, DecryptFailMode::Show);
        assert_eq!(reason(&failed), Some(Unavailable::Waiting));
    }

    #[test]
    fn hidden_failures_and_newsletters_leave_no_placeholder() {
        assert_eq!(
            reason(&event(false, UnavailableType::Unknown, DecryptFailMode::Hide)),
            None
        );
        let newsletter = UndecryptableMessage::builder()
            .info(Arc::new(info(
                "120363000000000000@newsletter",
                "120363000000000000@newsletter",
            )))
            .is_unavailable(false)
            .unavailable_type(UnavailableType::Unknown)
            .decrypt_fail_mode(DecryptFailMode::Show)
            .build();
        assert_eq!(reason(&newsletter), None);
    }
}
