//! Events about the session and about sent messages: why WhatsApp stopped a session, and
//! which receipts move a sent message forward.

use whatsapp_rust::types::events::{ConnectFailureReason, Event};
use whatsapp_rust::types::presence::ReceiptType;

use crate::wa::{ParkReason, ReceiptStatus};

/// How WhatsApp ended a session, when an event says it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Parked(ParkReason),
    /// The server no longer knows this device (415, 418 at login): its keys are dead, as after
    /// the phone removed it.
    LoggedOut,
}

/// Whether an event ends the session, and how. A refused connection stops the crate's client
/// (only 500 and 503 are retried by the crate itself); each refusal is named here, so that
/// it shows as a reason instead of five silent restarts and a crash loop.
pub fn ending(event: &Event) -> Option<Ending> {
    let parked = match event {
        Event::StreamReplaced(_) => ParkReason::StreamReplaced,
        Event::TemporaryBan(ban) => ParkReason::TemporaryBan {
            ends_in: ban.expire.to_std().ok(),
        },
        Event::ClientOutdated(_) => ParkReason::ClientOutdated,
        Event::ConnectFailure(failure) => match failure.reason {
            // The crate reconnects by itself.
            reason if reason.should_reconnect() => return None,
            ConnectFailureReason::NotFound | ConnectFailureReason::ClientUnknown => return Some(Ending::LoggedOut),
            // A ban stanza without a usable expiry.
            ConnectFailureReason::TempBanned => ParkReason::TemporaryBan { ends_in: None },
            ConnectFailureReason::ClientOutdated | ConnectFailureReason::BadUserAgent => ParkReason::ClientOutdated,
            other => ParkReason::ConnectRefused(other.code()),
        },
        _ => return None,
    };
    Some(Ending::Parked(parked))
}

/// What a receipt says about a message waghl sent. A device that is not in active use (a
/// companion such as WhatsApp Web in the background) acknowledges delivery as `inactive`: the
/// message was delivered all the same.
pub fn receipt_status(kind: &ReceiptType) -> Option<ReceiptStatus> {
    match kind {
        ReceiptType::Delivered | ReceiptType::Inactive => Some(ReceiptStatus::Delivered),
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
    fn receipts_map_delivered_inactive_and_read_and_ignore_the_rest() {
        assert_eq!(receipt_status(&ReceiptType::Delivered), Some(ReceiptStatus::Delivered));
        assert_eq!(receipt_status(&ReceiptType::Inactive), Some(ReceiptStatus::Delivered));
        assert_eq!(receipt_status(&ReceiptType::Read), Some(ReceiptStatus::Read));
        assert_eq!(receipt_status(&ReceiptType::Played), Some(ReceiptStatus::Read));
        assert_eq!(receipt_status(&ReceiptType::ReadSelf), None);
        assert_eq!(receipt_status(&ReceiptType::Sender), None);
    }

    #[test]
    fn sessions_are_parked_for_bans_replacement_outdated_clients_and_refusals() {
        let parked = |event: &Event| match ending(event) {
            Some(Ending::Parked(reason)) => Some(reason),
            _ => None,
        };
        let replaced = Event::StreamReplaced(StreamReplaced::builder().build());
        assert_eq!(parked(&replaced), Some(ParkReason::StreamReplaced));
        let ban = Event::TemporaryBan(
            TemporaryBan::builder()
                .code(TempBanReason::BlockedByUsers)
                .expire(chrono::Duration::seconds(3600))
                .build(),
        );
        assert_eq!(
            parked(&ban),
            Some(ParkReason::TemporaryBan {
                ends_in: Some(std::time::Duration::from_secs(3600))
            })
        );
        let outdated = Event::ClientOutdated(ClientOutdated::builder().build());
        assert_eq!(parked(&outdated), Some(ParkReason::ClientOutdated));
        let failure =
            |reason: ConnectFailureReason| Event::ConnectFailure(ConnectFailure::builder().reason(reason).build());
        assert_eq!(
            parked(&failure(ConnectFailureReason::TempBanned)),
            Some(ParkReason::TemporaryBan { ends_in: None })
        );
        assert_eq!(
            parked(&failure(ConnectFailureReason::BadUserAgent)),
            Some(ParkReason::ClientOutdated)
        );
        for (reason, code) in [
            (ConnectFailureReason::Generic, 400),
            (ConnectFailureReason::CatExpired, 413),
            (ConnectFailureReason::CatInvalid, 414),
            (ConnectFailureReason::Experimental, 501),
            (ConnectFailureReason::Unknown(0), 0),
        ] {
            assert_eq!(
                parked(&failure(reason)),
                Some(ParkReason::ConnectRefused(code)),
                "{reason:?}"
            );
        }
        for reason in [ConnectFailureReason::NotFound, ConnectFailureReason::ClientUnknown] {
            assert_eq!(ending(&failure(reason)), Some(Ending::LoggedOut), "{reason:?}");
        }
        assert_eq!(ending(&failure(ConnectFailureReason::ServiceUnavailable)), None);
        assert_eq!(ending(&failure(ConnectFailureReason::InternalServerError)), None);
        assert_eq!(ending(&Event::Connected(Connected::builder().build())), None);
    }
}
