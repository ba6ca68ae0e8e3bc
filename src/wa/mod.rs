//! The seam between waghl and WhatsApp. A [`Transport`] starts one [`WaSession`] per location;
//! the session reports what happens through an ordered, bounded stream of [`WaEvent`]s (waghl's
//! own types: no WhatsApp library type crosses this module) and sends on request.
//!
//! Contract every implementation keeps (whatsapp-rust's and the simulated one):
//! - The transport owns the socket's reconnect loop: a dropped connection is reported as
//!   `Disconnected`, then `Connected` again, without waghl's help.
//! - An inbound message is acknowledged to WhatsApp only after waghl answered its `stored`
//!   channel: a crash in between means WhatsApp delivers it again.
//! - A send carries a caller-chosen id, so a resend after a crash is the same message.
//! - `send` returns once the message is written, not once WhatsApp has it: the server's verdict
//!   comes as `ServerAck` or `ServerRefused` (possibly before `send` returns). A send never
//!   acked (a frame lost with a dropped connection) is sent again with the same id, which the
//!   recipient keeps once.
//! - The event stream ends (the sender is dropped) when the client ends: after a terminal
//!   event (`LoggedOut`, `Parked`, `QrExhausted`), after `stop`, or when it fails for good.

pub mod sim;
pub mod whatsapp;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::domain::{InboundMessage, LocationId, MessageContext, OutgoingContent};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a location that has no WhatsApp keys yet gets paired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pairing {
    /// QR codes, shown on the pairing page and scanned with the phone.
    Qr,
    /// An 8-character code typed on the phone with this number (E.164).
    Code { phone: String },
}

/// The transport's own view of its connection, compared with waghl's by the health check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Showing QR codes or a pairing code.
    Pairing,
    Connecting,
    Connected,
    /// Dropped; the transport is reconnecting by itself.
    Reconnecting,
    /// The client is gone: it will not reconnect.
    Dead,
}

/// Why WhatsApp stopped a session that must not simply be restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParkReason {
    /// Banned for a while; `ends_in` when WhatsApp said how long.
    TemporaryBan { ends_in: Option<Duration> },
    /// Another client took the stream over.
    StreamReplaced,
    /// WhatsApp refused the client's version.
    ClientOutdated,
    /// WhatsApp refused the connection with this code (400, 413, 414, 501, …).
    ConnectRefused(i32),
    /// The location's device keys are in a device file of an earlier version that could not
    /// be imported: starting would pair a new device over them.
    KeysNotImported,
}

/// When a parked session tries again by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Only when an operator pairs or restarts it.
    Never,
    /// Once this has passed (a ban's end).
    After(Duration),
    /// With the restart backoff, without counting toward a crash loop.
    Backoff,
}

impl ParkReason {
    /// The stable reason code of ARCHITECTURE.md.
    pub fn code(self) -> &'static str {
        match self {
            Self::TemporaryBan { .. } => "wa_temporary_ban",
            Self::StreamReplaced => "wa_stream_replaced",
            Self::ClientOutdated => "wa_client_outdated",
            Self::ConnectRefused(_) => "wa_connect_refused",
            Self::KeysNotImported => "wa_keys_not_imported",
        }
    }

    pub fn resume(self) -> Resume {
        match self {
            Self::TemporaryBan { ends_in: Some(left) } => Resume::After(left),
            // Another client holds the number: two clients retrying would take turns forever.
            Self::StreamReplaced => Resume::Never,
            // Nothing changes by itself: an operator fixes the file, or logs the session out.
            Self::KeysNotImported => Resume::Never,
            // An outdated client retries with the version fetched again (the transport refetches
            // it after a refusal); a refusal or a ban without an end may be lifted any time.
            Self::TemporaryBan { ends_in: None } | Self::ClientOutdated | Self::ConnectRefused(_) => Resume::Backoff,
        }
    }
}

/// What the business's presence shows while waghl is connected. WhatsApp clients announce
/// `available` when they connect; a linked device that stays available shows the business
/// "online" around the clock and may keep the owner's phone from getting notifications.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    Available,
    Unavailable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiptStatus {
    Delivered,
    Read,
}

/// Acknowledges an inbound message once waghl has stored it durably.
pub struct Stored(oneshot::Sender<()>);

impl Stored {
    pub fn new() -> (Self, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (Self(tx), rx)
    }

    pub fn confirm(self) {
        let _ = self.0.send(());
    }
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stored")
    }
}

#[derive(Debug)]
pub enum WaEvent {
    /// A QR code to show, valid for `valid_for` (60 s for the first, 20 s for the next five).
    Qr {
        code: String,
        valid_for: Duration,
    },
    /// The code to type on the phone, for pairing by phone number.
    PairCode {
        code: String,
    },
    /// WhatsApp issues no more QR codes; the client has ended.
    QrExhausted,
    /// The phone linked this device.
    Paired {
        phone: String,
    },
    Connected {
        phone: String,
    },
    /// The connection dropped; the transport reconnects by itself.
    Disconnected,
    /// The phone removed this linked device: terminal, the keys are dead.
    LoggedOut,
    /// WhatsApp stopped the session (ban, another client took over, outdated client).
    Parked(ParkReason),
    /// A message; answer `stored` once it is durable, and only then is WhatsApp told.
    Message {
        message: Box<InboundMessage>,
        /// What [`WaSession::download`] needs to fetch the media later.
        media_ref: Option<Vec<u8>>,
        stored: Stored,
    },
    Receipt {
        ids: Vec<String>,
        status: ReceiptStatus,
    },
    /// WhatsApp's server accepted a message waghl sent.
    ServerAck {
        id: String,
    },
    /// WhatsApp's server refused a message waghl sent (its send had already returned).
    ServerRefused {
        id: String,
        code: String,
    },
    /// A direct chat's disappearing-messages timer as the contact's client last showed it (a
    /// message carrying it, or a change of it; 0: off). `chat` is the chat's phone JID when
    /// WhatsApp named the phone, as waghl sends to that.
    ChatTimer {
        chat: String,
        expiration: u32,
    },
    /// WhatsApp revealed the phone behind a LID.
    LidMapping {
        lid: String,
        phone: String,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WaError {
    #[error("WhatsApp is not connected")]
    NotConnected,
    #[error("the number is not on WhatsApp")]
    NotOnWhatsApp,
    #[error("WhatsApp refused: {0}")]
    Rejected(String),
    #[error("{0}")]
    Failed(String),
    /// The client cannot start until an operator acts; the session parks for this reason.
    #[error("the client cannot start ({})", .0.code())]
    Unstartable(ParkReason),
}

/// One location's WhatsApp client.
pub trait WaSession: Send + Sync {
    fn link(&self) -> Link;
    /// A new message id in WhatsApp's format, for a send that must not be duplicated.
    fn new_message_id(&self) -> String;
    /// Sends to `to` (a JID from [`WaSession::on_whatsapp`]) with the given id, in `context`
    /// (the quoted message, the chat's disappearing timer).
    fn send<'a>(
        &'a self,
        to: &'a str,
        id: &'a str,
        content: &'a OutgoingContent,
        context: &'a MessageContext,
    ) -> BoxFuture<'a, Result<(), WaError>>;
    /// The JID to send to, or `None` when the number is not on WhatsApp.
    fn on_whatsapp<'a>(&'a self, phone: &'a str) -> BoxFuture<'a, Result<Option<String>, WaError>>;
    fn download<'a>(&'a self, media_ref: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, WaError>>;
    /// The phone (E.164) behind a LID, when WhatsApp has revealed it.
    fn phone_for_lid<'a>(&'a self, lid: &'a str) -> BoxFuture<'a, Result<Option<String>, WaError>>;
    /// Drops the connection and connects again at once, so that WhatsApp delivers again what
    /// waghl did not confirm.
    fn reconnect(&self) -> BoxFuture<'_, ()>;
    /// Unlinks this device from the phone.
    fn logout(&self) -> BoxFuture<'_, Result<(), WaError>>;
    /// Stops the client (keys kept); the event stream ends.
    fn stop(&self) -> BoxFuture<'_, ()>;
}

/// Starts WhatsApp clients; one per daemon.
pub trait Transport: Send + Sync {
    /// Starts (or resumes, when keys are stored) the client of a location. Its events go to
    /// `events`, in order; a full channel holds the client back, nothing is dropped.
    fn start<'a>(
        &'a self,
        location: &'a LocationId,
        pairing: Pairing,
        events: mpsc::Sender<WaEvent>,
    ) -> BoxFuture<'a, Result<Arc<dyn WaSession>, WaError>>;
    /// Deletes the location's device keys, so the next start pairs anew.
    fn wipe<'a>(&'a self, location: &'a LocationId) -> BoxFuture<'a, Result<(), WaError>>;
}
