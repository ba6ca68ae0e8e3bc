//! The crate's events, translated into waghl's and queued in order (see the module docs of
//! `whatsapp/` for why an unbounded queue and one forwarding task), the durability hook that
//! holds WhatsApp's acknowledgement until waghl stored a message, and the watcher that owns the
//! client's run loop.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use whatsapp_rust::bot::BotHandle;
use whatsapp_rust::lid_pn_cache::LearningSource;
use whatsapp_rust::types::events::{Event, EventHandler, EventInterest, EventKind, InboundMessage as WaInbound};
use whatsapp_rust::types::message::MessageInfo;
use whatsapp_rust::{Client, InboundDurabilityHook};

use super::SHUTDOWN_TIMEOUT;
use super::client::Shared;
use super::convert::{
    Ending, chat_lid_mapping, chat_timer, ending, lid_mapping, map_message, map_recovered, map_undecryptable,
    phone_of_jid, receipt_status, recovered_id, recovered_messages,
};
use super::pairing::PairSignal;
use crate::domain::InboundMessage;
use crate::wa::{Link, ParkReason, Stored, WaEvent};

/// How long the hook waits for waghl to store a batch before it gives up. WhatsApp then
/// delivers the batch again on the next connection. waghl dedupes, so one that was stored
/// late does no harm.
const STORE_TIMEOUT: Duration = Duration::from_secs(120);

/// How long after a push-name change the presence is set again: the crate's own `available`
/// goes out from a task it starts at that moment.
const PUSH_NAME_PRESENCE_DELAY: Duration = Duration::from_secs(2);

/// An entry of the ordered queue between the client and waghl's channel.
pub(super) enum Queued {
    Event(WaEvent),
    /// The client has ended; the stream ends after what was queued before.
    End,
}

/// The queue has no reader any more: the session has ended.
pub(super) struct Ended;

/// The write end of the queue, shared by the handler, the hook, the watcher and the
/// pairing task.
#[derive(Clone)]
pub(super) struct Sink {
    pub shared: Arc<Shared>,
    pub queue: mpsc::UnboundedSender<Queued>,
}

impl Sink {
    pub fn emit(&self, event: WaEvent) -> Result<(), Ended> {
        self.queue.send(Queued::Event(event)).map_err(|_| Ended)
    }

    /// Queues one inbound message, preceded by the LID mapping it reveals, if any. The
    /// receiver resolves once waghl has stored the message. `None` for what waghl does not
    /// keep (protocol traffic, newsletters).
    fn message(&self, item: &WaInbound) -> Result<Option<oneshot::Receiver<()>>, Ended> {
        if let Some((chat, expiration)) = chat_timer(&item.message, &item.info) {
            self.emit(WaEvent::ChatTimer { chat, expiration })?;
        }
        let Some((message, media_ref)) = map_message(&item.message, &item.info) else {
            tracing::trace!(location.id = %self.shared.location, message.id = %item.info.id, "not a message waghl keeps");
            return Ok(None);
        };
        self.queue_message(message, media_ref, &item.info).map(Some)
    }

    /// Queues a message the phone sent again, from its answer (see `convert/recovered.rs`),
    /// unless the crate already dispatched it: then its confirmation already on the way.
    /// `None` when there is nothing to wait for (not a message waghl keeps).
    fn recovered(
        &self,
        web: &whatsapp_rust::waproto::whatsapp::WebMessageInfo,
    ) -> Result<Option<oneshot::Receiver<()>>, Ended> {
        if let Some(stored) = recovered_id(web).and_then(|id| self.shared.take_recovered(id)) {
            return Ok(Some(stored));
        }
        match map_recovered(web, self.shared.own_jid().as_ref()) {
            Some((message, media_ref)) => self.deliver(message, media_ref).map(Some),
            None => Ok(None),
        }
    }

    /// Queues a mapped message (see [`Sink::message`]).
    fn queue_message(
        &self,
        message: InboundMessage,
        media_ref: Option<Vec<u8>>,
        info: &MessageInfo,
    ) -> Result<oneshot::Receiver<()>, Ended> {
        if let Some((lid, phone)) = lid_mapping(&info.source)
            && self.shared.announce_lid(&lid)
        {
            self.emit(WaEvent::LidMapping { lid, phone })?;
        }
        if let Some((lid, phone)) = chat_lid_mapping(info)
            && self.shared.announce_lid(&lid)
        {
            self.record_lid(lid, phone);
        }
        self.deliver(message, media_ref)
    }

    /// Queues `message`; the receiver resolves once waghl has stored it.
    fn deliver(&self, message: InboundMessage, media_ref: Option<Vec<u8>>) -> Result<oneshot::Receiver<()>, Ended> {
        let (stored, confirmed) = Stored::new();
        self.emit(WaEvent::Message {
            message: Box::new(message),
            media_ref,
            stored,
        })?;
        Ok(confirmed)
    }

    /// Records a LID's phone in the crate's store, where `phone_for_lid` looks, then tells
    /// waghl (messages of that LID may be waiting for it). In a task: this runs on the
    /// dispatch path, and the message that revealed it carries the phone itself.
    fn record_lid(&self, lid: String, phone: String) {
        let Some(client) = self.shared.client.get().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        let sink = self.clone();
        tokio::spawn(async move {
            let digits = phone.trim_start_matches('+');
            if let Err(e) = client
                .add_lid_pn_mapping(&lid, digits, LearningSource::PeerPnMessage)
                .await
            {
                tracing::warn!(location.id = %sink.shared.location, error = %e, "could not record a LID's phone number");
                return;
            }
            let _ = sink.emit(WaEvent::LidMapping { lid, phone });
        });
    }

    /// Translates one event of the crate's bus. This runs inline on the crate's dispatch
    /// path, so it only computes and queues: no awaiting, no blocking.
    fn on_event(&self, event: &Event) {
        let shared = &self.shared;
        let location = shared.location.as_str();
        let out = match event {
            Event::PairingQrCode(qr) => {
                if shared.by_code.load(Ordering::Relaxed) {
                    return;
                }
                shared.set_link(Link::Pairing);
                WaEvent::Qr {
                    code: qr.code.clone(),
                    valid_for: qr.timeout,
                }
            }
            Event::PairingCode(code) => {
                shared.set_link(Link::Pairing);
                WaEvent::PairCode {
                    code: code.code.clone(),
                }
            }
            Event::PairingCodeRefresh(_) => {
                shared.signal(PairSignal::Refresh);
                return;
            }
            Event::PairingCodeError(failure) => {
                tracing::warn!(location.id = %location, error = %failure.error, "WhatsApp refused the pairing code");
                shared.signal(PairSignal::Failed);
                return;
            }
            Event::PairingQrCodesExhausted(exhausted) => {
                // Not terminal while a pairing-code flow keeps the socket up; that flow's
                // task decides when pairing has failed.
                if !exhausted.disconnected && shared.by_code.load(Ordering::Relaxed) {
                    return;
                }
                shared.set_link(Link::Dead);
                WaEvent::QrExhausted
            }
            Event::PairSuccess(success) => {
                shared.paired.store(true, Ordering::Relaxed);
                shared.signal(PairSignal::Paired);
                shared.set_link(Link::Connecting);
                WaEvent::Paired {
                    phone: phone_of_jid(&success.id).unwrap_or_default(),
                }
            }
            Event::PairError(failure) => {
                tracing::warn!(location.id = %location, error = %failure.error, "pairing with the phone failed");
                return;
            }
            Event::Connected(_) => {
                shared.paired.store(true, Ordering::Relaxed);
                shared.set_link(Link::Connected);
                shared.keep_presence(Duration::ZERO);
                WaEvent::Connected {
                    phone: shared.own_phone(),
                }
            }
            Event::SelfPushNameUpdated(_) => {
                // The crate announces `available` right after this event, from its own task.
                shared.keep_presence(PUSH_NAME_PRESENCE_DELAY);
                return;
            }
            Event::Disconnected(_) => {
                shared.set_link(Link::Reconnecting);
                WaEvent::Disconnected
            }
            Event::LoggedOut(logged_out) => {
                tracing::warn!(location.id = %location, reason = ?logged_out.reason, "WhatsApp logged this device out");
                shared.removed.store(true, Ordering::Release);
                shared.set_link(Link::Dead);
                WaEvent::LoggedOut
            }
            Event::Receipt(receipt) => match receipt_status(&receipt.r#type) {
                Some(status) => WaEvent::Receipt {
                    ids: receipt.message_ids.clone(),
                    status,
                },
                None => return,
            },
            Event::ServerAck(ack) => {
                if ack.class.as_deref() != Some("message") {
                    return;
                }
                if let Some(code) = &ack.error {
                    tracing::warn!(location.id = %location, message.id = %ack.id, code = %code, "WhatsApp's server refused a message");
                    WaEvent::ServerRefused {
                        id: ack.id.clone(),
                        code: code.to_string(),
                    }
                } else {
                    WaEvent::ServerAck { id: ack.id.clone() }
                }
            }
            Event::Messages(batch) => {
                // Committed batches already reached waghl through the hook.
                if batch.hook_committed {
                    return;
                }
                // Newsletters (dropped by `map_message`) and messages recovered from the
                // phone. The crate acknowledges neither, but the phone's answer that carried a
                // recovered message reaches the hook next, which waits for it to be stored.
                for item in batch.iter() {
                    match self.message(item) {
                        Ok(Some(stored)) if item.info.unavailable_request_id.is_some() => {
                            shared.keep_recovered(&item.info.id, stored);
                        }
                        Ok(_) => {}
                        Err(Ended) => return,
                    }
                }
                return;
            }
            Event::UndecryptableMessage(undecryptable) => {
                // The crate acknowledges these itself, right after this dispatch (with a
                // retry receipt or a request to the phone first), so nothing here can hold the
                // acknowledgement: the placeholder is queued at once and stored as early as
                // waghl can. Its loss in a crash costs the notice, never the message: the
                // real one, when it comes, is stored like any other.
                if let Some(placeholder) = map_undecryptable(undecryptable) {
                    let _ = self.queue_message(placeholder, None, &undecryptable.info);
                }
                return;
            }
            other => match ending(other) {
                Some(Ending::Parked(reason)) => {
                    match other {
                        Event::TemporaryBan(ban) => {
                            tracing::warn!(location.id = %location, code = %ban.code, seconds = ban.expire.num_seconds(), "WhatsApp banned this number for a while")
                        }
                        Event::ConnectFailure(failure) => {
                            tracing::warn!(location.id = %location, reason = ?failure.reason, "WhatsApp refused the connection; the client stops")
                        }
                        _ => {
                            tracing::warn!(location.id = %location, reason = reason.code(), "WhatsApp stopped this session")
                        }
                    }
                    if reason == ParkReason::ClientOutdated {
                        shared.version.refused();
                    }
                    shared.set_link(Link::Dead);
                    WaEvent::Parked(reason)
                }
                Some(Ending::LoggedOut) => {
                    tracing::warn!(location.id = %location, "WhatsApp no longer knows this device; it must be paired again");
                    shared.set_link(Link::Dead);
                    WaEvent::LoggedOut
                }
                None => {
                    if let Event::ConnectFailure(failure) = other {
                        tracing::info!(location.id = %location, reason = ?failure.reason, "WhatsApp refused the connection for now; retrying");
                    }
                    return;
                }
            },
        };
        let _ = self.emit(out);
    }
}

/// The raw bus handler: it keeps the dispatch order and is never dropped by the crate.
pub(super) struct BusHandler {
    pub sink: Sink,
}

impl EventHandler for BusHandler {
    fn handle_event(&self, event: Arc<Event>) {
        self.sink.on_event(&event);
    }

    fn interest(&self) -> EventInterest {
        EventInterest::of(&[
            EventKind::Connected,
            EventKind::Disconnected,
            EventKind::PairSuccess,
            EventKind::PairError,
            EventKind::LoggedOut,
            EventKind::PairingQrCode,
            EventKind::PairingCode,
            EventKind::PairingCodeRefresh,
            EventKind::PairingCodeError,
            EventKind::PairingQrCodesExhausted,
            EventKind::ClientOutdated,
            EventKind::Messages,
            EventKind::UndecryptableMessage,
            EventKind::Receipt,
            // The crate builds server acks only when some handler asks for them.
            EventKind::ServerAck,
            EventKind::StreamReplaced,
            EventKind::TemporaryBan,
            EventKind::ConnectFailure,
            EventKind::SelfPushNameUpdated,
        ])
    }
}

/// Delays WhatsApp's acknowledgement until waghl has stored the batch.
pub(super) struct StoreHook {
    pub sink: Sink,
}

#[whatsapp_rust::async_trait]
impl InboundDurabilityHook for StoreHook {
    async fn on_messages(&self, _client: Arc<Client>, batch: &[WaInbound]) -> anyhow::Result<()> {
        self.store_batch(batch).await
    }
}

impl StoreHook {
    /// Queues every message of the batch, and those the phone sent again inside it, and
    /// returns once waghl stored them all.
    async fn store_batch(&self, batch: &[WaInbound]) -> anyhow::Result<()> {
        let ended = || anyhow::anyhow!("the session has ended; WhatsApp delivers the batch again");
        let mut confirmations = Vec::with_capacity(batch.len());
        for item in batch {
            match self.sink.message(item) {
                Ok(Some(confirmed)) => confirmations.push(confirmed),
                Ok(None) => {}
                Err(Ended) => return Err(ended()),
            }
            for recovered in recovered_messages(&item.message, &item.info) {
                confirmations.extend(self.sink.recovered(&recovered).map_err(|Ended| ended())?);
            }
        }
        if confirmations.is_empty() {
            return Ok(());
        }
        let all_stored = async {
            for confirmed in confirmations {
                confirmed.await?;
            }
            Ok::<(), oneshot::error::RecvError>(())
        };
        match tokio::time::timeout(STORE_TIMEOUT, all_stored).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(anyhow::anyhow!(
                "waghl did not store the batch; WhatsApp delivers it again"
            )),
            Err(_) => Err(anyhow::anyhow!(
                "waghl did not store the batch within {} s; WhatsApp delivers it again",
                STORE_TIMEOUT.as_secs()
            )),
        }
    }
}

/// Moves the queue into waghl's bounded channel, in order, waiting while it is full. The
/// stream ends (the sender is dropped) at `Queued::End`, when every queue sender is gone, or
/// when waghl stops reading. Anything left is then dropped, and with it any `Stored`, so a
/// waiting hook fails and nothing is acknowledged.
pub(super) fn forward_in_order(mut queued: mpsc::UnboundedReceiver<Queued>, events: mpsc::Sender<WaEvent>) {
    tokio::spawn(async move {
        while let Some(item) = queued.recv().await {
            match item {
                Queued::Event(event) => {
                    if events.send(event).await.is_err() {
                        return;
                    }
                }
                Queued::End => return,
            }
        }
    });
}

/// Owns the `BotHandle`: waits for the run loop to end, or shuts it down on request.
pub(super) async fn watch(mut handle: BotHandle, sink: Sink, stop: CancellationToken, ended: CancellationToken) {
    let location = sink.shared.location.clone();
    let stopping = tokio::select! {
        () = &mut handle => false,
        () = stop.cancelled() => true,
    };
    if stopping && tokio::time::timeout(SHUTDOWN_TIMEOUT, handle.shutdown()).await.is_err() {
        // The timed-out future held the handle; dropping it aborted the client's task.
        tracing::warn!(location.id = %location, "the WhatsApp client did not shut down in time; aborted");
    }
    sink.shared.set_link(Link::Dead);
    let _ = sink.queue.send(Queued::End);
    ended.cancel();
    tracing::info!(location.id = %location, "WhatsApp client ended");
}

#[cfg(test)]
mod tests {
    use whatsapp_rust::types::events::{BatchOrigin, MessageBatch};

    use super::super::convert::fixtures::direct;
    use super::super::convert::recovered::tests::{answer, from_own_phone, web};
    use super::super::version::WebVersion;
    use super::*;
    use crate::wa::Presence;

    fn sink() -> (Sink, mpsc::UnboundedReceiver<Queued>) {
        let (queue, queued) = mpsc::unbounded_channel();
        let (signals, _) = mpsc::unbounded_channel();
        let version = WebVersion::new(Arc::new(whatsapp_rust::http::UreqHttpClient::new()));
        let shared = Shared::new("loc", signals, Arc::new(version), Presence::Unavailable);
        let sink = Sink {
            shared: Arc::new(shared),
            queue,
        };
        (sink, queued)
    }

    fn item(message: whatsapp_rust::waproto::whatsapp::Message, info: MessageInfo) -> WaInbound {
        WaInbound::builder()
            .message(Arc::new(message))
            .info(Arc::new(info))
            .build()
    }

    async fn next_message(queued: &mut mpsc::UnboundedReceiver<Queued>) -> (String, Stored) {
        match queued.recv().await {
            Some(Queued::Event(WaEvent::Message { message, stored, .. })) => (message.id, stored),
            _ => panic!("no message queued"),
        }
    }

    /// The phone's answer to a resend request is acknowledged (the hook returns) only once the
    /// message it carries is stored: a crash before that gets the answer again.
    #[tokio::test]
    async fn the_phones_answer_waits_until_the_message_it_carries_is_stored() {
        let (sink, mut queued) = sink();
        let hook = StoreHook { sink };
        let batch = [item(answer(&[web("3EB0AAA", false, "hello")]), from_own_phone(0))];
        let hooked = tokio::spawn(async move { hook.store_batch(&batch).await });
        let (id, stored) = next_message(&mut queued).await;
        assert_eq!(id, "3EB0AAA");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!hooked.is_finished(), "acknowledged before the message was stored");
        stored.confirm();
        hooked.await.unwrap().unwrap();
    }

    /// The crate dispatches a recovered message as an event before the hook sees the answer:
    /// the hook then waits for that copy instead of queueing a second one.
    #[tokio::test]
    async fn a_recovered_message_the_crate_dispatched_is_waited_for_not_queued_twice() {
        let (sink, mut queued) = sink();
        let mut recovered = direct();
        recovered.id = "3EB0AAA".into();
        recovered.unavailable_request_id = Some("request".into());
        let dispatched = MessageBatch::builder()
            .messages(Arc::from([item(
                <whatsapp_rust::waproto::whatsapp::Message as whatsapp_rust::proto_helpers::MessageBuilderExt>::text(
                    "hello",
                ),
                recovered,
            )]))
            .origin(BatchOrigin::Live)
            .build();
        sink.on_event(&Event::Messages(dispatched));
        let (id, stored) = next_message(&mut queued).await;
        assert_eq!(id, "3EB0AAA");

        let hook = StoreHook { sink };
        let batch = [item(answer(&[web("3EB0AAA", false, "hello")]), from_own_phone(0))];
        let hooked = tokio::spawn(async move { hook.store_batch(&batch).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!hooked.is_finished(), "acknowledged before the message was stored");
        assert!(queued.try_recv().is_err(), "queued twice");
        stored.confirm();
        hooked.await.unwrap().unwrap();
    }
}
