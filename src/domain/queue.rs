//! The states of the two queues, as types with the order they move in. The store keeps them as
//! their snake_case names; nothing else handles the strings.

use std::fmt;

/// An outbound message (a row of the outbox). It moves only forward, in this order; `Failed`
/// (reported to GHL as failed) and `Dead` (gave up, replayable) end it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OutboxState {
    Pending,
    /// A part's WhatsApp id is committed; sending is under way.
    Sending,
    Sent,
    Delivered,
    Read,
    Failed,
    Dead,
}

/// One part of an outbound message: one WhatsApp message, created when its id is committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PartStatus {
    /// Its id is committed; the send may or may not have been written.
    Sending,
    /// The client wrote it to the socket; WhatsApp's server has not acknowledged it yet. A
    /// frame written just before a drop is lost, so a handed part is sent again (same id).
    Handed,
    /// WhatsApp's server acknowledged it.
    Sent,
    Delivered,
    Read,
    Failed,
}

/// An inbound message (a row of the inbox).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InboxState {
    Pending,
    /// In GHL.
    Relayed,
    /// Not relayed on purpose (a group, a status, an echo of waghl's own send).
    Skipped,
    Dead,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown queue state {0:?}")]
pub struct UnknownState(pub String);

macro_rules! named {
    ($type:ident { $($variant:ident => $name:literal),* $(,)? }) => {
        impl $type {
            pub const ALL: &'static [Self] = &[$(Self::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }
        }

        impl TryFrom<String> for $type {
            type Error = UnknownState;

            fn try_from(text: String) -> Result<Self, UnknownState> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|s| s.as_str() == text)
                    .ok_or(UnknownState(text))
            }
        }

        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named!(OutboxState {
    Pending => "pending",
    Sending => "sending",
    Sent => "sent",
    Delivered => "delivered",
    Read => "read",
    Failed => "failed",
    Dead => "dead",
});

named!(PartStatus {
    Sending => "sending",
    Handed => "handed",
    Sent => "sent",
    Delivered => "delivered",
    Read => "read",
    Failed => "failed",
});

named!(InboxState {
    Pending => "pending",
    Relayed => "relayed",
    Skipped => "skipped",
    Dead => "dead",
});

impl OutboxState {
    /// Ended in failure: GHL is told `failed`.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::Dead)
    }
}

impl From<PartStatus> for OutboxState {
    fn from(part: PartStatus) -> Self {
        match part {
            // Not sent until WhatsApp's server says so.
            PartStatus::Sending | PartStatus::Handed => Self::Sending,
            PartStatus::Sent => Self::Sent,
            PartStatus::Delivered => Self::Delivered,
            PartStatus::Read => Self::Read,
            PartStatus::Failed => Self::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_back_from_their_names_and_unknown_names_are_refused() {
        for state in OutboxState::ALL {
            assert_eq!(OutboxState::try_from(state.as_str().to_owned()), Ok(*state));
        }
        for status in PartStatus::ALL {
            assert_eq!(PartStatus::try_from(status.to_string()), Ok(*status));
        }
        for state in InboxState::ALL {
            assert_eq!(InboxState::try_from(state.to_string()), Ok(*state));
        }
        assert!(OutboxState::try_from("queued".to_owned()).is_err());
    }

    #[test]
    fn a_message_moves_forward_in_the_order_receipts_arrive() {
        assert!(OutboxState::Pending < OutboxState::Sending);
        assert!(OutboxState::Sent < OutboxState::Delivered && OutboxState::Delivered < OutboxState::Read);
        assert!(OutboxState::Read < OutboxState::Failed);
        assert!(PartStatus::Sent < PartStatus::Read && PartStatus::Read < PartStatus::Failed);
        assert!(PartStatus::Sending < PartStatus::Handed && PartStatus::Handed < PartStatus::Sent);
        // A part's status and its message's state are ordered alike.
        for pair in PartStatus::ALL.windows(2) {
            assert!(OutboxState::from(pair[0]) <= OutboxState::from(pair[1]));
        }
        assert_eq!(OutboxState::from(PartStatus::Handed), OutboxState::Sending);
    }
}
