//! The inbound worker: inbox → GHL. For each claimed row: resolve the sender to a phone,
//! find or create the GHL contact and conversation (cached per location and phone), upload
//! the media, add the message through the custom provider, record the GHL message id.
//! Failures that heal are retried with backoff within the budget; the rest become `dead`
//! with their reason, to be replayed from the admin API.

use std::sync::Arc;

use axum::body::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::convert::for_ghl;
use super::inbound_writer::{self, InboundWriter};
use super::reconcile::{Posted, find_post};
use super::workers::{Joined, Renewal, Workers};
use super::{RelaySettings, retry_at};
use crate::domain::jid::{Party, party_of};
use crate::domain::render::{excerpt_of, file_name, ghl_text};
use crate::domain::{Content, InboundMessage, Incarnation, LocationId};
use crate::ghl::types::{AddMessage, Direction, UpsertContact};
use crate::ghl::{Action, Attachment, GhlClient, GhlError};
use crate::metrics::Metrics;
use crate::sessions::Supervisor;
use crate::store::{CachedContact, InboxOutcome, InboxRelayWrite, InboxRow, Queue, Store, StoreError};
use crate::time::{now_ms, rfc3339};

/// What the inbound worker needs; cheap to clone (each field is shared).
#[derive(Clone)]
pub struct InboundRelay {
    pub store: Store,
    pub ghl: GhlClient,
    pub sessions: Supervisor,
    pub metrics: Arc<Metrics>,
    pub settings: RelaySettings,
    /// This process's life, named in the claims it takes.
    pub holder: Incarnation,
    /// Commits the chats' marks and outcomes, many in one transaction.
    pub(super) writer: InboundWriter,
}

/// What became of one row, as the relay tells it (the store's outcome holds ids, not the contact).
#[derive(Debug)]
enum Outcome {
    Relayed {
        ghl_message_id: String,
        contact: CachedContact,
    },
    Retry(String),
    Skipped(&'static str),
    Dead(String),
}

/// A failure of one step, with what to do about it.
struct Failure {
    retry: bool,
    message: String,
}

impl From<GhlError> for Failure {
    fn from(e: GhlError) -> Self {
        Self {
            retry: e.action() != Action::GiveUp,
            message: e.to_string(),
        }
    }
}

impl From<crate::store::StoreError> for Failure {
    fn from(e: crate::store::StoreError) -> Self {
        Self {
            retry: true,
            message: format!("database: {e}"),
        }
    }
}

impl InboundRelay {
    /// Relays until shutdown: wakes when a message is stored, and polls for retries that fall
    /// due. Up to `batch` chats are relayed at once, each independently: a chat stuck on a slow
    /// GHL call never holds up the others, because new heads are claimed as soon as a slot is
    /// free. At shutdown the rows in flight are finished (within the shutdown deadline).
    pub async fn run(self, ready: Arc<Notify>, shutdown: CancellationToken) {
        let mut workers = Workers::new(Some(Renewal {
            store: self.store.clone(),
            queue: Queue::Inbox,
            holder: self.holder.clone(),
            claim_for: self.settings.claim_for,
        }));
        let writing = tokio_util::task::TaskTracker::new();
        inbound_writer::spawn(&self.writer, self.store.clone(), &writing);
        let capacity = self.settings.batch.max(1) as usize;
        let mut gauge_due = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= gauge_due {
                if let Ok(pending) = self.store.inbound_pending().await {
                    self.metrics.inbound_queue.set(pending);
                }
                gauge_due = tokio::time::Instant::now() + super::GAUGE_EVERY;
            }
            let free = capacity.saturating_sub(workers.len());
            if free > 0 {
                let claimed = self.claim(free as i64).await;
                let relay_one = |relay: Self, row: InboxRow| async move { relay.relay_one(row).await };
                workers
                    .start_found(claimed, "claim inbound messages", |row| row.inbox_id, &self, relay_one)
                    .await;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                // Every chat that ended meanwhile, so that one claim refills all their slots:
                // the chats whose ends were committed together end together.
                Some(ended) = workers.ended(), if !workers.is_empty() => {
                    for joined in ended {
                        if let Joined::Panicked(row) = joined {
                            super::after_panic(&self.store, &self.metrics, &self.settings, Queue::Inbox, &self.holder, row).await;
                        }
                    }
                }
                () = ready.notified() => {}
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
        workers.drain().await;
        self.writer.close();
        writing.close();
        writing.wait().await;
    }

    /// Claims up to `limit` chat heads for this incarnation.
    pub async fn claim(&self, limit: i64) -> Result<Vec<InboxRow>, crate::store::StoreError> {
        let claim_ms = self.settings.claim_for.as_millis() as i64;
        self.store.claim_inbox_batch(limit, claim_ms, &self.holder).await
    }

    /// Relays one claimed row and records the outcome through the relay's writer (started by `run`).
    #[tracing::instrument(name = "relay_inbound", skip_all, fields(location.id = %row.location_id, inbox.id = row.inbox_id))]
    pub async fn relay_one(&self, row: InboxRow) {
        let outcome = self.relay(&row).await;
        let now = now_ms();
        let recorded = match &outcome {
            Outcome::Relayed {
                ghl_message_id,
                contact,
            } => {
                self.metrics.count_relay("inbound", "relayed");
                self.metrics
                    .relay_latency
                    .observe((now - row.received_at).max(0) as f64 / 1000.0);
                InboxOutcome::Relayed {
                    ghl_message_id: ghl_message_id.clone(),
                    contact_id: contact.ghl_contact_id.clone(),
                    conversation_id: contact.ghl_conversation_id.clone().unwrap_or_default(),
                }
            }
            Outcome::Retry(error) if now - row.retry_from > self.settings.retry_budget.as_millis() as i64 => {
                self.metrics.count_relay("inbound", "dead");
                InboxOutcome::Dead {
                    error: format!("gave up after the retry budget: {error}"),
                }
            }
            Outcome::Retry(error) => InboxOutcome::Retry {
                at: retry_at(&self.settings, row.attempts),
                error: error.clone(),
            },
            Outcome::Skipped(reason) => {
                self.metrics.count_relay("inbound", "skipped");
                InboxOutcome::Skipped {
                    reason: (*reason).to_owned(),
                }
            }
            Outcome::Dead(error) => {
                self.metrics.count_relay("inbound", "dead");
                InboxOutcome::Dead { error: error.clone() }
            }
        };
        let stored = self.write(InboxRelayWrite::finished(&row, recorded)).await;
        match (&outcome, stored) {
            (_, Err(e)) => tracing::error!(error = %e, "could not record a relay outcome"),
            (Outcome::Relayed { .. }, Ok(_)) => {
                tracing::debug!("relayed to GHL")
            }
            (Outcome::Dead(error), Ok(_)) => {
                tracing::warn!(error = %error, "inbound message is dead")
            }
            _ => {}
        }
    }

    /// Commits `write` with whatever else the relay writes at this moment; whether it applied.
    async fn write(&self, write: InboxRelayWrite) -> Result<bool, StoreError> {
        self.writer.submit(write).await?
    }

    async fn relay(&self, row: &InboxRow) -> Outcome {
        let Some(message) = row
            .body
            .as_deref()
            .and_then(|b| serde_json::from_str::<InboundMessage>(b).ok())
        else {
            return Outcome::Dead("the message body is gone (purged or unreadable)".into());
        };
        // GHL accepted it before, but recording that failed: never add it twice.
        match self
            .store
            .inbound_ghl_id(&row.location_id, &row.chat, &message.id)
            .await
        {
            Ok(Some(ghl_message_id)) => {
                if let (Some(contact), Some(conversation)) = (&row.ghl_contact_id, &row.ghl_conversation_id) {
                    return Outcome::Relayed {
                        ghl_message_id,
                        contact: CachedContact {
                            ghl_contact_id: contact.clone(),
                            ghl_conversation_id: Some(conversation.clone()),
                        },
                    };
                }
            }
            Ok(None) => {}
            Err(e) => return Outcome::Retry(format!("database: {e}")),
        }
        if message.from_me {
            match self.store.is_own_send(&row.location_id, &message.id).await {
                Ok(true) => return Outcome::Skipped("echo of a message waghl sent"),
                Ok(false) => {}
                Err(e) => return Outcome::Retry(format!("database: {e}")),
            }
        }
        let Ok(location) = LocationId::parse(&row.location_id) else {
            return Outcome::Dead("invalid location id".into());
        };
        let phone = match self.phone_of(&location, &message, row).await {
            Ok(phone) => phone,
            Err(outcome) => return outcome,
        };
        match self.deliver(&location, row, &message, &phone).await {
            Ok(outcome) => outcome,
            Err(Failure { retry: true, message }) => Outcome::Retry(message),
            Err(Failure { retry: false, message }) => Outcome::Dead(message),
        }
    }

    /// The phone of the other party: for a message typed on the phone it is the chat, else the
    /// sender. A sender known only by a LID waits (with its chat) until WhatsApp reveals it.
    async fn phone_of(
        &self,
        location: &LocationId,
        message: &InboundMessage,
        row: &InboxRow,
    ) -> Result<String, Outcome> {
        let party = match (&message.sender_phone, message.from_me) {
            (Some(phone), false) => Party::Phone(phone.clone()),
            (_, false) => party_of(&message.sender),
            (_, true) => match &message.chat_phone {
                Some(phone) => Party::Phone(phone.clone()),
                None => party_of(&message.chat),
            },
        };
        match party {
            Party::Phone(phone) => Ok(phone),
            Party::Unknown(jid) => Err(Outcome::Dead(format!("no phone number for {jid}"))),
            Party::Lid(lid) => {
                let revealed = match self.sessions.session(location) {
                    Some(session) => session.phone_for_lid(&lid).await.ok().flatten(),
                    None => None,
                };
                match revealed {
                    Some(phone) => Ok(phone),
                    None if now_ms() - row.retry_from > self.settings.lid_wait.as_millis() as i64 => {
                        Err(Outcome::Dead(format!(
                            "the sender is known only by LID {lid}; WhatsApp never revealed the phone number"
                        )))
                    }
                    None => Err(Outcome::Retry(format!(
                        "waiting for WhatsApp to reveal the phone number behind LID {lid}"
                    ))),
                }
            }
        }
    }

    async fn deliver(
        &self,
        location: &LocationId,
        row: &InboxRow,
        message: &InboundMessage,
        phone: &str,
    ) -> Result<Outcome, Failure> {
        let mut contact = self.contact_for(location, row, message, phone).await?;
        let quoted = match &message.reply_to {
            Some(id) => self.quoted_text(location, id).await,
            None => None,
        };
        let mut text = ghl_text(message, quoted.as_deref());
        let direction = if message.from_me {
            Direction::Outbound
        } else {
            Direction::Inbound
        };
        if row.posting_at.is_some() {
            let posted = Posted {
                direction,
                date_ms: message.timestamp,
                text: &text,
                media: matches!(message.content, Content::Media(_)),
                alt_id: &message.id,
            };
            if let Some(ghl_message_id) = self.reconcile(location, &contact, &posted).await? {
                return Ok(Outcome::Relayed {
                    ghl_message_id,
                    contact,
                });
            }
        }
        let mut lost_media = None;
        let attachments = match &message.content {
            Content::Media(media) => match self.download(location, row).await {
                Ok(downloaded) => vec![self.upload(location, &contact, message, media, downloaded).await?],
                // Gone for good (expired on WhatsApp's servers): the message still goes, saying so.
                Err(Failure {
                    retry: false,
                    message: reason,
                }) => {
                    lost_media = Some(reason);
                    Vec::new()
                }
                Err(failure) => return Err(failure),
            },
            _ => Vec::new(),
        };
        if let Some(reason) = lost_media {
            text = format!("[WhatsApp {} not available: {reason}]\n{text}", message.content.kind())
                .trim_end()
                .to_owned();
        }
        let date = rfc3339(message.timestamp);
        let provider = self.ghl.config().conversation_provider_id.clone().unwrap_or_default();
        let mut refreshed = false;
        loop {
            let body = AddMessage {
                kind: "Custom",
                conversation_id: contact.ghl_conversation_id.as_deref().unwrap_or_default(),
                contact_id: &contact.ghl_contact_id,
                conversation_provider_id: &provider,
                message: &text,
                attachments: &attachments,
                alt_id: &message.id,
                direction,
                date: &date,
            };
            // Recorded first: if the outcome of the post is never learnt (a crash, a lost
            // answer), the next attempt looks for the message in GHL before posting again.
            let posting = InboxRelayWrite::Posting {
                inbox_id: row.inbox_id,
                holder: self.holder.clone(),
                contact_id: contact.ghl_contact_id.clone(),
                conversation_id: contact.ghl_conversation_id.clone().unwrap_or_default(),
            };
            if !self.write(posting).await? {
                return Err(Failure {
                    retry: true,
                    message: "another worker took this message over".into(),
                });
            }
            let added = self.ghl.add_message(location.as_str(), &body).await;
            if let Err(e) = &added
                && !may_have_added(e)
            {
                self.store.clear_inbox_posting(row.inbox_id).await?;
            }
            match added {
                Ok(added) => {
                    return Ok(Outcome::Relayed {
                        ghl_message_id: added.message_id,
                        contact,
                    });
                }
                // Cached ids GHL no longer knows (a contact deleted or merged): resolve them
                // again once before giving up.
                Err(e) if e.may_be_stale_reference() && !refreshed => {
                    refreshed = true;
                    tracing::info!(error = %e, "GHL refused cached ids; resolving them again");
                    self.store.forget_contact(location.as_str(), phone).await?;
                    contact = self.resolve_contact(location, message, phone).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Looks for an uncertain post in the conversation. A lookup GHL cannot answer now keeps
    /// the row waiting (it never posts blind); one GHL refuses outright (e.g. the install lacks
    /// the `conversations/message.readonly` scope) lets the post go ahead, logged: a possible
    /// duplicate is better than a lost message.
    async fn reconcile(
        &self,
        location: &LocationId,
        contact: &CachedContact,
        posted: &Posted<'_>,
    ) -> Result<Option<String>, Failure> {
        let conversation = contact.ghl_conversation_id.as_deref().unwrap_or_default();
        match find_post(&self.ghl, &self.store, location.as_str(), conversation, posted).await {
            Ok(Some(id)) => {
                self.metrics.count_reconciled("found");
                tracing::info!("an uncertain post was found in GHL; not posting it again");
                Ok(Some(id))
            }
            Ok(None) => {
                self.metrics.count_reconciled("not_found");
                Ok(None)
            }
            Err(e) if e.action() == Action::RetryLater => Err(Failure {
                retry: true,
                message: format!("looking for an earlier attempt in GHL before posting again: {e}"),
            }),
            Err(e) => {
                self.metrics.count_reconciled("unverifiable");
                tracing::warn!(error = %e, "GHL refused the lookup of an uncertain post; posting it");
                Ok(None)
            }
        }
    }

    /// Converts what GHL cannot show and uploads the file into the contact's conversation.
    async fn upload(
        &self,
        location: &LocationId,
        contact: &CachedContact,
        message: &InboundMessage,
        media: &crate::domain::Media,
        downloaded: Bytes,
    ) -> Result<String, Failure> {
        // Decoding audio and images is CPU work: off the async workers.
        let (kind, mime) = (media.kind, media.mime.clone());
        let (bytes, content_type, converted) =
            tokio::task::spawn_blocking(move || for_ghl(kind, &mime, downloaded.to_vec()))
                .await
                .map_err(|e| Failure {
                    retry: true,
                    message: format!("media conversion crashed: {e}"),
                })?;
        // A converted file gets the new type's extension; WhatsApp's name is for the original.
        let given = if converted { None } else { media.file_name.as_deref() };
        let name = file_name(media.kind, &content_type, given, &message.id);
        let file = Attachment {
            file_name: &name,
            content_type: &content_type,
            bytes: bytes.into(),
        };
        let conversation = contact.ghl_conversation_id.as_deref().unwrap_or_default();
        Ok(self
            .ghl
            .upload_attachment(location.as_str(), conversation, &contact.ghl_contact_id, file)
            .await?)
    }

    /// The row's contact and conversation: from the row (an earlier attempt marked it posting
    /// with them), the cache, or GHL.
    async fn contact_for(
        &self,
        location: &LocationId,
        row: &InboxRow,
        message: &InboundMessage,
        phone: &str,
    ) -> Result<CachedContact, Failure> {
        if let (Some(contact), Some(conversation)) = (&row.ghl_contact_id, &row.ghl_conversation_id) {
            return Ok(CachedContact {
                ghl_contact_id: contact.clone(),
                ghl_conversation_id: Some(conversation.clone()),
            });
        }
        Ok(match self.store.cached_contact(location.as_str(), phone).await? {
            Some(cached) if cached.ghl_conversation_id.is_some() => cached,
            _ => self.resolve_contact(location, message, phone).await?,
        })
    }

    /// Asks GHL: the contact with this phone (created with the WhatsApp name when new — an
    /// existing contact's name, maybe edited by the agency, is left alone) and its
    /// conversation (created when it has none). Cached for the next message.
    async fn resolve_contact(
        &self,
        location: &LocationId,
        message: &InboundMessage,
        phone: &str,
    ) -> Result<CachedContact, Failure> {
        let ghl = &self.ghl;
        let contact_id = match ghl.find_contact_by_phone(location.as_str(), phone).await? {
            Some(contact) => contact.id,
            None => {
                let name = if message.from_me {
                    None
                } else {
                    message.push_name.as_deref()
                };
                let upsert = UpsertContact {
                    location_id: location.as_str(),
                    phone,
                    name: name.filter(|n| !n.trim().is_empty()),
                    source: Some("WhatsApp"),
                };
                ghl.upsert_contact(location.as_str(), &upsert).await?.contact.id
            }
        };
        let conversation_id = match ghl.find_conversation(location.as_str(), &contact_id).await? {
            Some(id) => id,
            None => ghl.create_conversation(location.as_str(), &contact_id).await?,
        };
        let contact = CachedContact {
            ghl_contact_id: contact_id,
            ghl_conversation_id: Some(conversation_id),
        };
        self.store.cache_contact(location.as_str(), phone, &contact).await?;
        Ok(contact)
    }

    async fn download(&self, location: &LocationId, row: &InboxRow) -> Result<Bytes, Failure> {
        let media_ref = row.media_ref.as_deref().ok_or_else(|| Failure {
            retry: false,
            message: "the media reference is gone (purged)".into(),
        })?;
        let session = self.sessions.session(location).ok_or_else(|| Failure {
            retry: true,
            message: "waiting for the WhatsApp session to download the media".into(),
        })?;
        session.download(media_ref).await.map(Bytes::from).map_err(|e| Failure {
            retry: !matches!(e, crate::wa::WaError::Rejected(_)),
            message: format!("media download: {e}"),
        })
    }

    /// The text of the message a reply quotes, when waghl has seen it.
    async fn quoted_text(&self, location: &LocationId, wa_message_id: &str) -> Option<String> {
        let body = self.store.inbound_body(location.as_str(), wa_message_id).await.ok()??;
        let quoted: InboundMessage = serde_json::from_str(&body).ok()?;
        let text = ghl_text(&quoted, None);
        (!text.is_empty()).then(|| excerpt_of(&text))
    }
}

/// A failed post that may have added the message all the same: its answer was lost (a timeout,
/// a 500/502/504, a broken connection), or GHL answered success with a body waghl could not read.
/// A refused connection, a 503 or a 429 did nothing: the row stays certain.
fn may_have_added(e: &GhlError) -> bool {
    matches!(e, GhlError::Uncertain(_) | GhlError::Rejected { status: 200, .. })
}
