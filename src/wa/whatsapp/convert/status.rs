//! Events about the session and about sent messages: why WhatsApp stopped a session, and
//! which receipts move a sent message forward.

use whatsapp_rust::types::events::{ConnectFailureReason, Event};
use whatsapp_rust::types::presence::ReceiptType;

use crate::wa::{ParkReason, ReceiptStatus};

/// Why WhatsApp stopped a session for good, when it did.
pub fn park_reason(event: &Event) -> Option<ParkReason> {
    match event {
        Event::StreamReplaced(_) => Some(ParkReason::StreamReplaced),
        Event::TemporaryBan(_) => Some(ParkReason::TemporaryBan),
        Event::ClientOutdated(_) => Some(ParkReason::ClientOutdated),
        // A ban stanza without a usable expiry, and a rejected user agent, arrive as
        // connect failures.
        Event::ConnectFailure(failure) => match failure.reason {
            ConnectFailureReason::TempBanned => Some(ParkReason::TemporaryBan),
            ConnectFailureReason::ClientOutdated | ConnectFailureReason::BadUserAgent => {
                Some(ParkReason::ClientOutdated)
            }
            _ => None,
        },
        _ => None,
    }
}

pub fn receipt_status(kind: &ReceiptType) -> Option<ReceiptStatus> {
    match kind {
        ReceiptType::Delivered => Some(ReceiptStatus::Delivered),
        ReceiptType::Read | ReceiptType::Played => Some(ReceiptStatus::Read),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use whatsapp_rust::chrono;
    use whatsapp_rust::types::events::{
        ClientOutdated, ConnectFailure, Connected, StreamReplaced, TempBanReason, TemporaryBan,
    };

    #[test]
    fn receipts_map_delivered_and_read_and_ignore_the_rest() {
        assert_eq!(receipt_status(&ReceiptType::Delivered), Some(ReceiptStatus::Delivered));
        assert_eq!(receipt_status(&ReceiptType::Read), Some(ReceiptStatus::Read));
        assert_eq!(receipt_status(&ReceiptType::Played), Some(ReceiptStatus::Read));
        assert_eq!(receipt_status(&ReceiptType::ReadSelf), None);
        assert_eq!(receipt_status(&ReceiptType::Sender), None);
    }

    #[test]
    fn sessions_are_parked_for_bans_replacement_and_outdated_clients() {
        let replaced = Event::StreamReplaced(StreamReplaced::builder().build());
        assert_eq!(park_reason(&replaced), Some(ParkReason::StreamReplaced));
        let ban = Event::TemporaryBan(
            TemporaryBan::builder()
                .code(TempBanReason::BlockedByUsers)
                .expire(chrono::Duration::seconds(3600))
                .build(),
        );
        assert_eq!(park_reason(&ban), Some(ParkReason::TemporaryBan));
        let outdated = Event::ClientOutdated(ClientOutdated::builder().build());
        assert_eq!(park_reason(&outdated), Some(ParkReason::ClientOutdated));
        let failure =
            |reason: ConnectFailureReason| Event::ConnectFailure(ConnectFailure::builder().reason(reason).build());
        assert_eq!(
            park_reason(&failure(ConnectFailureReason::TempBanned)),
            Some(ParkReason::TemporaryBan)
        );
        assert_eq!(
            park_reason(&failure(ConnectFailureReason::BadUserAgent)),
            Some(ParkReason::ClientOutdated)
        );
        assert_eq!(park_reason(&failure(ConnectFailureReason::ServiceUnavailable)), None);
        assert_eq!(park_reason(&Event::Connected(Connected::builder().build())), None);
    }
}
