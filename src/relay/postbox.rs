//! Where messages enter the relays. Sessions hand each inbound message here (it is stored
//! durably before WhatsApp is told it arrived) and pass on the receipts and acks of what was
//! sent; HTTP handlers wake the relays here when they queue or replay work. The relays own the
//! messages; `sessions/` owns only the sessions' lifecycle.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use tokio_util::task::TaskTracker;

use super::acks::{AwaitedAcks, Heard};
use super::crowd::Crowd;
use super::inbox_writer::{self, Inbound, InboxWriter};
use crate::backoff::Backoff;
use crate::crypto::random_fraction;
use crate::domain::{InboundMessage, LocationId};
use crate::metrics::Metrics;
use crate::store::{InboxStart, InboxWrite, Store, StoreError};
use crate::wa::WaEvent;

/// The first delay between attempts at an inbox write, and the longest.
const STORE_RETRY: Duration = Duration::from_millis(100);
const STORE_RETRY_MAX: Duration = Duration::from_secs(2);

/// Cheap to clone; one per application.
#[derive(Clone)]
pub struct Postbox {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// Stores the inbound messages of every session, a batch per transaction.
    writer: InboxWriter,
    /// The sends waiting for WhatsApp's server to ack them.
    acks: AwaitedAcks,
    metrics: Arc<Metrics>,
    /// Woken when an inbound message is stored, a LID is revealed or work is replayed.
    inbound_ready: Arc<Notify>,
    /// Woken when an outbound message is queued, a session connects or work is replayed.
    outbound_ready: Arc<Notify>,
    /// Whether webhooks crowd in, for the outbound relay to yield to them.
    crowd: Crowd,
    /// Receipts, and the acks and refusals no send waited for, of every session, in arrival
    /// order, for the outbound relay.
    receipts: mpsc::UnboundedSender<(LocationId, WaEvent)>,
    /// The receiving end, until the outbound relay takes it.
    receipts_rx: Mutex<Option<mpsc::UnboundedReceiver<(LocationId, WaEvent)>>>,
}

impl Postbox {
    pub fn new(store: Store, metrics: Arc<Metrics>) -> Self {
        let (receipts, receipts_rx) = mpsc::unbounded_channel();
        Self {
            inner: Arc::new(Inner {
                store,
                writer: InboxWriter::default(),
                acks: AwaitedAcks::default(),
                metrics,
                inbound_ready: Arc::new(Notify::new()),
                outbound_ready: Arc::new(Notify::new()),
                crowd: Crowd::default(),
                receipts,
                receipts_rx: Mutex::new(Some(receipts_rx)),
            }),
        }
    }

    /// Stores an inbound message durably and wakes the inbound relay. `Ok` means WhatsApp may
    /// be told it arrived (a redelivery of a stored message is `Ok` too); on `Err` it must not
    /// be, so that WhatsApp delivers it again. A database error is retried, with backoff, for up
    /// to `budget`: an unconfirmed message comes again only on a later connection.
    pub async fn deliver(
        &self,
        location: &LocationId,
        message: &InboundMessage,
        media_ref: Option<&[u8]>,
        budget: Duration,
    ) -> Result<(), StoreError> {
        let inbound = Inbound {
            location: location.clone(),
            message: message.clone(),
            media_ref: media_ref.map(<[u8]>::to_vec),
            start: inbox_start(message),
        };
        let backoff = Backoff::new(STORE_RETRY, STORE_RETRY_MAX);
        let deadline = Instant::now() + budget;
        let mut attempt = 0;
        loop {
            let written = self
                .inner
                .writer
                .submit(inbound.clone())
                // The writer stops after the sessions: the message stays unconfirmed, and
                // WhatsApp delivers it again to the next life.
                .await?;
            let failure = match written {
                Ok(InboxWrite::New | InboxWrite::Replaced) => {
                    self.inner.metrics.count_inbound(message.content.kind(), inbound.start);
                    self.wake_inbound();
                    return Ok(());
                }
                Ok(InboxWrite::Duplicate) => return Ok(()),
                // The placeholder this message replaces is being posted; it is its turn next.
                Ok(InboxWrite::Busy) => StoreError::Conflict("a worker is relaying the placeholder".into()),
                Err(e) => {
                    tracing::warn!(error = %e, "storing an inbound message failed; retrying");
                    e
                }
            };
            let delay = backoff.delay(attempt, random_fraction());
            if Instant::now() + delay > deadline {
                return Err(failure);
            }
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// Starts the inbox writer on `tasks`; before the sessions start.
    pub fn spawn_writer(&self, tasks: &TaskTracker) {
        inbox_writer::spawn(&self.inner.writer, self.inner.store.clone(), tasks);
    }

    /// Lets the inbox writer store what is queued, then stop; once the sessions stopped.
    pub fn close_writer(&self) {
        self.inner.writer.close();
    }

    /// Records a chat's disappearing timer, for the sends into it. One try, not held against
    /// the session: a lost timer is learned again from the contact's next message in the chat.
    pub async fn chat_timer(&self, location: &LocationId, chat: &str, expiration: u32) {
        if let Err(e) = self
            .inner
            .store
            .set_chat_expiration(location.as_str(), chat, expiration)
            .await
        {
            tracing::warn!(error = %e, "could not record a chat's disappearing-messages timer");
        }
    }

    /// A receipt or server ack (or refusal) of a sent message. The send waiting for it hears
    /// it at once, here, not behind the outbound relay's other work (a send kept waiting holds
    /// its chat); what needs the database (receipts, late acks and refusals) goes to the relay.
    pub fn receipt(&self, location: &LocationId, event: WaEvent) {
        let acks = &self.inner.acks;
        let settled = match &event {
            WaEvent::ServerAck { id } => acks.heard(location, id, Heard::Acked),
            WaEvent::ServerRefused { id, code } => acks.heard(location, id, Heard::Refused(code.clone())),
            WaEvent::Receipt { ids, .. } => {
                // A receipt from the recipient implies the server took the message.
                for id in ids {
                    acks.heard(location, id, Heard::Acked);
                }
                false
            }
            _ => false,
        };
        if !settled {
            let _ = self.inner.receipts.send((location.clone(), event));
        }
    }

    /// The session connected (again): sends still waiting for the server's ack of a frame
    /// written on the old connection are sent again.
    pub fn connected(&self, location: &LocationId) {
        self.inner.acks.reconnected(location);
    }

    /// The sends waiting for their server acks.
    pub(super) fn acks(&self) -> &AwaitedAcks {
        &self.inner.acks
    }

    pub fn wake_inbound(&self) {
        self.inner.inbound_ready.notify_one();
    }

    pub fn wake_outbound(&self) {
        self.inner.outbound_ready.notify_one();
    }

    /// The intake committed one transaction for `requests` provider webhooks (see `crowd`).
    pub fn intake_committed(&self, requests: usize) {
        self.inner.crowd.committed(requests);
    }

    pub(super) fn crowd(&self) -> &Crowd {
        &self.inner.crowd
    }

    pub(super) fn inbound_ready(&self) -> Arc<Notify> {
        self.inner.inbound_ready.clone()
    }

    pub(super) fn outbound_ready(&self) -> Arc<Notify> {
        self.inner.outbound_ready.clone()
    }

    /// The receipts, for the one outbound relay; `None` once taken.
    pub(super) fn take_receipts(&self) -> Option<mpsc::UnboundedReceiver<(LocationId, WaEvent)>> {
        self.inner.receipts_rx.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Groups and status broadcasts are not relayed (by default); they are kept as `skipped` so
/// that nothing disappears silently.
fn inbox_start(message: &InboundMessage) -> InboxStart {
    if message.is_status {
        InboxStart::Skipped("status broadcast")
    } else if message.is_group {
        InboxStart::Skipped("group chat")
    } else {
        InboxStart::Pending
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::crypto::SecretKey;
    use crate::store::DatabaseUrl;

    #[tokio::test]
    async fn a_waiting_send_hears_its_ack_at_once_and_only_the_rest_goes_to_the_relay() {
        let dir = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::parse(&format!("sqlite://{}/p.db", dir.path().display())).unwrap();
        let store = Store::connect(&url, Arc::new(SecretKey::from_bytes(&[1; 32]).unwrap()))
            .await
            .unwrap();
        let postbox = Postbox::new(store, Arc::new(Metrics::new()));
        let mut relay = postbox.take_receipts().unwrap();
        let location = LocationId::parse("loc").unwrap();
        let never = CancellationToken::new();

        // Nobody reads the relay's queue here: the send hears its ack from the postbox itself.
        let mut waiting = postbox.acks().expect(&location, "A");
        postbox.receipt(&location, WaEvent::ServerAck { id: "A".into() });
        assert_eq!(waiting.heard(Duration::from_secs(5), &never).await, Heard::Acked);
        assert!(relay.try_recv().is_err(), "an ack a send took is not queued");

        // A late ack, and a receipt, need the database: queued for the relay.
        postbox.receipt(&location, WaEvent::ServerAck { id: "late".into() });
        assert!(matches!(relay.try_recv(), Ok((_, WaEvent::ServerAck { .. }))));

        // A reconnection ends the waits at once.
        let mut waiting = postbox.acks().expect(&location, "B");
        postbox.connected(&location);
        assert_eq!(waiting.heard(Duration::from_secs(5), &never).await, Heard::Reconnected);
    }
}
