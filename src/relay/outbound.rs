//! The outbound worker: outbox → WhatsApp → status back to GHL. One task sends (the oldest
//! message of each chat, for locations whose WhatsApp is connected), applies WhatsApp's
//! receipts, reports statuses to GHL, and fails messages that waited too long for WhatsApp.
//!
//! Exactly once: every part's WhatsApp id is committed before it is sent and sent with that
//! id, so a crash mid-send resends the same id — the same message to WhatsApp — never a copy.
//! A send returning means only that the frame was written (`handed`); a part is `sent` when
//! WhatsApp's server acks it. Until then its message stays its chat's head, so nothing later
//! in the chat overtakes it; one not acked within [`ACK_TIMEOUT`] or across a reconnect is
//! sent again with its id (the recipient keeps one copy, and a late ack of either is harmless).

mod statuses;

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Postbox;
use super::acks::{ACK_TIMEOUT, Heard};
use super::fetch::Fetcher;
use super::outbox_writer::{self, OutboxWriter};
use super::recipients::{Recipient, Recipients};
use super::workers::{Joined, Renewal, Workers};
use super::{RelaySettings, retry_at};
use crate::crypto::random_fraction;
use crate::domain::phone::{Phone, Region};
use crate::domain::{
    Incarnation, LocationId, MessageContext, OutboundRequest, OutboxState, PartStatus, Quote, QuoteAuthor, plan_parts,
};
use crate::ghl::GhlClient;
use crate::metrics::Metrics;
use crate::sessions::Supervisor;
use crate::store::{OutboxRow, OutboxWrite, Queue, Store, StoreError};
use crate::time::now_ms;
use crate::wa::{WaError, WaEvent, WaSession};

/// Most receipts and acks applied in one round of the relay's loop before it claims again.
const EVENTS_PER_ROUND: usize = 256;
/// A part acked within this long after its send goes from `sending` to `sent` in one write;
/// one acked later is recorded `handed` meanwhile, so a stuck send shows it was written.
const HANDED_AFTER: Duration = Duration::from_millis(500);

pub struct OutboundRelay {
    pub store: Store,
    pub ghl: GhlClient,
    pub sessions: Supervisor,
    pub metrics: Arc<Metrics>,
    pub settings: RelaySettings,
    pub fetcher: Fetcher,
    pub default_country: Region,
    /// Least gap between two sends of one WhatsApp session (jittered); zero: no pacing.
    pub send_gap: Duration,
    /// How long a message waits for WhatsApp to connect.
    pub ttl: Duration,
    /// This process's life, named in the claims it takes.
    pub holder: Incarnation,
    /// When each location may send next; the lock is held across a send, so one session
    /// sends one message at a time.
    pacing: DashMap<String, Arc<tokio::sync::Mutex<Instant>>>,
    /// GHL refused the `sent` status once: report `delivered` instead from then on.
    sent_unsupported: std::sync::atomic::AtomicBool,
    /// Where acks arrive, for the sends waiting for them.
    postbox: Postbox,
    /// Who is on WhatsApp, so a burst of replies is not a burst of lookups.
    recipients: Recipients,
    /// Cancelled at shutdown: a send stops waiting for its ack (the next life resends it).
    stopping: CancellationToken,
    /// Commits the sends' and reports' writes, many in one transaction.
    writer: OutboxWriter,
}

/// What became of one send attempt.
enum Outcome {
    /// Every part went out; the last one's id when its ack was heard just now (the message is
    /// settled with it).
    Done(Option<String>),
    /// WhatsApp is not connected: wait without counting an attempt.
    Wait(String),
    Retry(String),
    Failed(String),
}

impl From<WaError> for Outcome {
    fn from(e: WaError) -> Self {
        match e {
            // A client that cannot start is not connected either.
            WaError::NotConnected | WaError::Unstartable(_) => Self::Wait(e.to_string()),
            WaError::NotOnWhatsApp => Self::Failed("the number is not on WhatsApp".into()),
            WaError::Rejected(_) => Self::Failed(e.to_string()),
            WaError::Failed(_) => Self::Retry(e.to_string()),
        }
    }
}

impl OutboundRelay {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        ghl: GhlClient,
        sessions: Supervisor,
        metrics: Arc<Metrics>,
        settings: RelaySettings,
        fetcher: Fetcher,
        default_country: Region,
        send_gap: Duration,
        ttl: Duration,
        holder: Incarnation,
        postbox: Postbox,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            ghl,
            sessions,
            metrics,
            settings,
            fetcher,
            default_country,
            send_gap,
            ttl,
            holder,
            pacing: DashMap::new(),
            sent_unsupported: Default::default(),
            postbox,
            recipients: Recipients::default(),
            stopping: CancellationToken::new(),
            writer: OutboxWriter::default(),
        })
    }

    /// Runs until shutdown; rows in flight are finished first (within the shutdown deadline).
    pub async fn run(
        self: Arc<Self>,
        ready: Arc<Notify>,
        mut events: mpsc::UnboundedReceiver<(LocationId, WaEvent)>,
        shutdown: CancellationToken,
    ) {
        // A claim that expires while a row waits for its session's pacing must not start a
        // second send of it: `Workers` runs each row once at a time and renews its claim.
        let mut sending = Workers::new(Some(Renewal {
            store: self.store.clone(),
            queue: Queue::Outbox,
            holder: self.holder.clone(),
            claim_for: self.settings.claim_for,
        }));
        let mut reporting = Workers::new(None);
        let writing = tokio_util::task::TaskTracker::new();
        outbox_writer::spawn(&self.writer, self.store.clone(), &writing);
        let capacity = self.settings.batch.max(1) as usize;
        let mut housekeeping_due = Instant::now();
        let mut gauge_due = Instant::now();
        let mut refilled = Instant::now();
        loop {
            if Instant::now() >= housekeeping_due {
                self.expire_waiting().await;
                housekeeping_due = Instant::now() + self.settings.poll_interval;
            }
            if Instant::now() >= gauge_due {
                if let Ok(pending) = self.store.outbound_pending().await {
                    self.metrics.outbound_queue.set(pending);
                }
                gauge_due = Instant::now() + super::GAUGE_EVERY;
            }
            // Webhooks crowding in come first: refills are spaced out meanwhile (see `crowd`).
            let crowd = self.postbox.crowd();
            let refill_at = crowd.next_refill(refilled);
            let refill = refill_at <= Instant::now();
            if refill {
                refilled = Instant::now();
                let sends = crowd.to_start(capacity, sending.len());
                self.start_sends(&mut sending, sends).await;
                let reports = crowd.to_start(capacity, reporting.len());
                self.start_reports(&mut reporting, reports).await;
            }
            tokio::select! {
                () = shutdown.cancelled() => {
                    self.stopping.cancel();
                    break;
                }
                Some(ended) = sending.ended(), if !sending.is_empty() => {
                    for joined in ended {
                        if let Joined::Panicked(row) = joined {
                            super::after_panic(&self.store, &self.metrics, &self.settings, Queue::Outbox, &self.holder, row).await;
                        }
                    }
                }
                Some(ended) = reporting.ended(), if !reporting.is_empty() => {
                    for joined in ended {
                        if let Joined::Panicked(row) = joined {
                            // The report stays due and is tried again on a later round.
                            self.metrics.count_panic("outbound_report");
                            tracing::error!(outbox.id = row, "a status report panicked");
                        }
                    }
                }
                Some((location, event)) = events.recv() => {
                    // Everything already queued behind it as well, before the next round's
                    // queries: acks arrive as fast as sends go out.
                    self.apply_receipt(&location, event).await;
                    for _ in 0..EVENTS_PER_ROUND {
                        let Ok((location, event)) = events.try_recv() else { break };
                        self.apply_receipt(&location, event).await;
                    }
                }
                () = ready.notified() => {}
                () = tokio::time::sleep_until(refill_at), if !refill => {}
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
        sending.drain().await;
        reporting.drain().await;
        self.writer.close();
        writing.close();
        writing.wait().await;
    }

    /// Claims up to `most` chat heads and starts sending them.
    async fn start_sends(self: &Arc<Self>, sending: &mut Workers, most: usize) {
        if most == 0 {
            return;
        }
        let claimed = self.claim(most as i64).await;
        let send_one = |relay: Arc<Self>, row: OutboxRow| async move { relay.send_one(row).await };
        sending
            .start_found(claimed, "claim outbound messages", |row| row.outbox_id, self, send_one)
            .await;
    }

    /// Commits `write` with whatever else the relay writes at this moment.
    async fn write(&self, write: OutboxWrite) -> Result<(), StoreError> {
        self.writer.submit(write).await?
    }

    /// Claims up to `limit` chat heads for this incarnation.
    pub async fn claim(&self, limit: i64) -> Result<Vec<OutboxRow>, crate::store::StoreError> {
        let claim_ms = self.settings.claim_for.as_millis() as i64;
        self.store.claim_outbox_batch(limit, claim_ms, &self.holder).await
    }

    async fn expire_waiting(&self) {
        let before = now_ms() - self.ttl.as_millis() as i64;
        let budget = now_ms() - self.settings.retry_budget.as_millis() as i64;
        match self.store.expire_outbound(before, budget).await {
            Ok(0) => {}
            Ok(expired) => {
                tracing::warn!(expired, "outbound messages waited too long for WhatsApp to connect");
                self.metrics.count_relays("outbound", "failed", expired);
            }
            Err(e) => tracing::error!(error = %e, "could not expire outbound messages"),
        }
    }

    /// Sends one claimed row and records the outcome through the relay's writer (started by `run`).
    #[tracing::instrument(name = "send_outbound", skip_all, fields(location.id = %row.location_id, outbox.id = row.outbox_id))]
    pub async fn send_one(&self, row: OutboxRow) {
        let outcome = self.send(&row).await;
        let store = &self.store;
        let recorded = match outcome {
            Outcome::Done(acked) => {
                let finished = OutboxWrite::Finished {
                    outbox_id: row.outbox_id,
                    location_id: row.location_id.clone(),
                    to_phone: row.to_phone.clone(),
                    acked,
                };
                // Not recorded: the claim runs out and the message is sent again under its
                // parts' ids (WhatsApp keeps one copy).
                self.write(finished).await.inspect(|()| {
                    self.metrics.count_relay("outbound", "sent");
                    self.metrics
                        .send_latency
                        .observe((now_ms() - row.received_at).max(0) as f64 / 1000.0);
                })
            }
            Outcome::Wait(reason) => {
                store
                    .retry_outbound(
                        row.outbox_id,
                        now_ms() + self.settings.poll_interval.as_millis() as i64,
                        &reason,
                        false,
                    )
                    .await
            }
            Outcome::Retry(error) if now_ms() - row.retry_from > self.settings.retry_budget.as_millis() as i64 => {
                self.metrics.count_relay("outbound", "dead");
                store
                    .fail_outbound(
                        row.outbox_id,
                        OutboxState::Dead,
                        &format!("gave up after the retry budget: {error}"),
                    )
                    .await
            }
            Outcome::Retry(error) => {
                store
                    .retry_outbound(row.outbox_id, retry_at(&self.settings, row.attempts), &error, true)
                    .await
            }
            Outcome::Failed(error) => {
                self.metrics.count_relay("outbound", "failed");
                tracing::warn!(error = %error, "outbound message failed");
                store.fail_outbound(row.outbox_id, OutboxState::Failed, &error).await
            }
        };
        if let Err(e) = recorded {
            tracing::error!(error = %e, "could not record a send outcome");
        }
    }

    async fn send(&self, row: &OutboxRow) -> Outcome {
        let Some(request) = row
            .body
            .as_deref()
            .and_then(|b| serde_json::from_str::<OutboundRequest>(b).ok())
        else {
            return Outcome::Failed("the message body is gone (purged or unreadable)".into());
        };
        let Ok(location) = LocationId::parse(&row.location_id) else {
            return Outcome::Failed("invalid location id".into());
        };
        let Some(session) = self.sessions.session(&location) else {
            return Outcome::Wait("WhatsApp not connected".into());
        };
        let phone = match Phone::parse(&row.to_phone, self.default_country) {
            Ok(phone) => phone,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let jid = match self.recipient(&location, session.as_ref(), &phone).await {
            Ok(Recipient::On(jid)) => jid,
            Ok(Recipient::AskAgain) => {
                return Outcome::Retry(format!("WhatsApp said {phone} is not on WhatsApp; asking once more"));
            }
            Ok(Recipient::Absent) => return Outcome::Failed(format!("{phone} is not on WhatsApp")),
            Err(e) => return e.into(),
        };
        let mut files = Vec::with_capacity(request.attachments.len());
        for url in &request.attachments {
            match self.fetcher.fetch(url, row.attempts).await {
                Ok(file) => files.push(file),
                Err(e) if e.retry => return Outcome::Retry(e.message),
                Err(e) => return Outcome::Failed(e.message),
            }
        }
        let parts = plan_parts(&request, files);
        let committed = match self.store.outbound_parts(row.outbox_id).await {
            Ok(committed) => committed,
            Err(e) => return Outcome::Retry(format!("database: {e}")),
        };
        // Every part goes out under the chat's disappearing timer, as WhatsApp's clients send.
        let expiration = match self.store.chat_expiration(location.as_str(), &jid).await {
            Ok(expiration) => expiration,
            Err(e) => return Outcome::Retry(format!("database: {e}")),
        };
        for (index, content) in parts.iter().enumerate() {
            let id = match committed.get(index) {
                // Acked by WhatsApp's server before a crash or an earlier failure: never again.
                Some(part) if part.status >= PartStatus::Sent => continue,
                // Committed, maybe written, not acked: the same id again.
                Some(part) => part.wa_message_id.clone(),
                None => {
                    let id = session.new_message_id();
                    let part = OutboxWrite::Part {
                        outbox_id: row.outbox_id,
                        location_id: row.location_id.clone(),
                        ghl_message_id: row.ghl_message_id.clone(),
                        chat: jid.clone(),
                        part_index: index as i64,
                        wa_message_id: id.clone(),
                    };
                    if let Err(e) = self.write(part).await {
                        return Outcome::Retry(format!("database: {e}"));
                    }
                    id
                }
            };
            let quote = match request.reply_to.as_deref().filter(|_| index == 0) {
                Some(quoted) => match self.quote(&location, &jid, quoted).await {
                    Ok(quote) => Some(quote),
                    Err(e) => return e,
                },
                None => None,
            };
            let context = MessageContext { quote, expiration };
            // Waiting starts before the send: the ack may be handled before `send` returns.
            let mut awaited = self.postbox.acks().expect(&location, &id);
            if let Err(e) = self
                .paced_send(&location, session.as_ref(), &jid, &id, content, &context)
                .await
            {
                return e.into();
            }
            let mut heard = awaited.heard(HANDED_AFTER, &self.stopping).await;
            if heard == Heard::Silence {
                // Never below an ack that came first: statuses only move forward.
                if let Err(e) = self.store.advance_part(&row.location_id, &id, PartStatus::Handed).await {
                    return Outcome::Retry(format!("database: {e}"));
                }
                heard = awaited.heard(ACK_TIMEOUT - HANDED_AFTER, &self.stopping).await;
            }
            match heard {
                Heard::Acked if index + 1 == parts.len() => return Outcome::Done(Some(id)),
                Heard::Acked => {}
                Heard::Refused(code) => {
                    let reason = statuses::refusal(&code);
                    let _ = self.store.advance_part(&row.location_id, &id, PartStatus::Failed).await;
                    return Outcome::Failed(reason);
                }
                Heard::Reconnected => {
                    return Outcome::Wait("the connection dropped before WhatsApp's server acked the message".into());
                }
                Heard::Silence => {
                    return Outcome::Retry(format!(
                        "WhatsApp's server did not ack the message within {} s",
                        ACK_TIMEOUT.as_secs()
                    ));
                }
                Heard::Stopping => return Outcome::Wait("stopped before WhatsApp's server acked the message".into()),
            }
            if let Err(e) = self.store.advance_part(&row.location_id, &id, PartStatus::Sent).await {
                return Outcome::Retry(format!("database: {e}"));
            }
        }
        Outcome::Done(None)
    }

    /// The JID to send to: remembered, or the chat of a contact who wrote before, or else
    /// looked up.
    async fn recipient(
        &self,
        location: &LocationId,
        session: &dyn WaSession,
        phone: &Phone,
    ) -> Result<Recipient, WaError> {
        if let Some(known) = self.recipients.cached(location, phone.as_str()) {
            return Ok(known);
        }
        let chat = format!("{}@s.whatsapp.net", phone.as_str().trim_start_matches('+'));
        match self.store.chat_wrote_in(location.as_str(), &chat).await {
            Ok(true) => return Ok(self.recipients.learned(location, phone.as_str(), Some(chat))),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not look for the contact's chat; asking WhatsApp"),
        }
        let answer = session.on_whatsapp(phone.as_str()).await?;
        Ok(self.recipients.learned(location, phone.as_str(), answer))
    }

    /// The message `quoted` with its author as waghl recorded it; one waghl never saw is taken
    /// to be the contact's (agents reply to what the contact wrote).
    async fn quote(&self, location: &LocationId, chat: &str, quoted: &str) -> Result<Quote, Outcome> {
        let author = self
            .store
            .quote_author(location.as_str(), quoted)
            .await
            .map_err(|e| Outcome::Retry(format!("database: {e}")))?;
        Ok(Quote {
            id: quoted.to_owned(),
            author: author.unwrap_or_else(|| QuoteAuthor::Contact(chat.to_owned())),
        })
    }

    /// Sends once the location's pacing allows; sends of one session never overlap.
    async fn paced_send(
        &self,
        location: &LocationId,
        session: &dyn WaSession,
        jid: &str,
        id: &str,
        content: &crate::domain::OutgoingContent,
        context: &MessageContext,
    ) -> Result<(), WaError> {
        let gate = self
            .pacing
            .entry(location.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Instant::now())))
            .clone();
        let mut next = gate.lock().await;
        tokio::time::sleep_until(*next).await;
        let outcome = session.send(jid, id, content, context).await;
        if !self.send_gap.is_zero() {
            // 70–130 % of the gap: an even rhythm is what bots look like.
            *next = Instant::now() + self.send_gap.mul_f64(0.7 + 0.6 * random_fraction());
        }
        outcome
    }
}
