//! The real WhatsApp transport, on `whatsapp-rust` 0.7 (pinned `=0.7.0`: the crate changes
//! its API between minor versions). It implements the seam of `wa/mod.rs`; no type of the
//! crate leaves this file.
//!
//! # Who owns what
//!
//! - **One client per location, one SQLite file per client.** `start` builds a `Bot` on
//!   `{sessions_dir}/{location}.db` (directory 0700, files 0600). The file holds the device
//!   keys, the Signal sessions, the LID↔phone mappings, and the crate's buffer of inbound
//!   messages that are not acknowledged yet. The crate has no "delete this device" call, so
//!   `wipe` deletes the file and its `-wal`/`-shm` companions. It runs only after the client
//!   has stopped, because the supervisor never runs two clients for one location.
//! - **The `BotHandle` belongs to one watcher task** (`watch`). Only that task awaits the run
//!   loop. On `stop` it calls the graceful `BotHandle::shutdown` (flush receipts, commits and
//!   device state) under a timeout. When the timeout fires, the unfinished shutdown future is
//!   dropped, and the handle inside it aborts the task (the crate's `BotHandle` aborts on
//!   drop). However the run loop ends (stop, logout, ban, QR codes exhausted, a refused
//!   connection), the watcher marks the link dead and queues the end of the event stream.
//! - **Events pass through an unbounded queue, then a bounded send.** The crate dispatches
//!   events inline on its receive path. A raw `EventHandler` (`BusHandler`) translates each
//!   event into a `WaEvent` and pushes it into an unbounded queue. One forwarding task moves
//!   the queue into waghl's bounded channel with `send().await`. The alternatives each fail:
//!   - A bounded send on the dispatch path would block the socket (keepalives, acks). It
//!     would also deadlock against the durability hook, which waits for waghl on that same
//!     path.
//!   - A `try_send` drops events when the channel is full. The crate's own
//!     `EventDelivery::Ordered` does exactly that.
//!   - `EventDelivery::Concurrent` gives up the order.
//!
//!   With the queue, the order is the dispatch order and nothing is ever dropped. Backpressure
//!   lives in our forwarding task, where waiting harms nobody.
//! - **Messages are acknowledged only after waghl has stored them.** The durability hook
//!   (`StoreHook`) puts each message on the same queue, so it stays in order with the other
//!   events. The message carries a `Stored` answer. The hook returns only once waghl has
//!   confirmed every message of the batch. Only then does the crate send the receipts and let
//!   WhatsApp drop its copy. If waghl fails, or the session ends first, the hook returns an
//!   error. Then nothing is acknowledged, and the crate replays the message from its buffer
//!   (or the server redelivers it) on the next connection.
//!
//!   A slow waghl therefore holds back the message lane itself; WhatsApp keeps the rest. The
//!   crate dispatches a duplicate `Event::Messages` for each committed batch; that event is
//!   skipped. Only batches the hook never saw are taken from the event: newsletters (dropped)
//!   and messages recovered from the phone (forwarded; their acknowledgement is not ours to
//!   gate).
//! - **The handler and the hook hold no `Arc<Client>`.** The event bus lives inside the client,
//!   so a strong reference from it would be a cycle that keeps a stopped client alive. The
//!   shared state keeps a `Weak` to read the device's own number.
//! - **The pairing code comes from our own task** (`pair_by_code`), after the socket is up and
//!   only when the store holds no device yet. We do not use `BotBuilder::with_pair_code`: it
//!   can race an already-paired device into a new pairing. While pairing by code, the QR codes
//!   that the crate keeps generating are not shown.
//!
//! Logs carry ids, states and error texts. They never carry message bodies, QR or pairing
//! codes, or keys. The crate itself logs the pairing code at `info` under the `Client/PairCode`
//! target, so waghl's log filter must raise `Client` to `warn`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use whatsapp_rust::bot::{Bot, BotHandle};
use whatsapp_rust::buffa::MessageField;
use whatsapp_rust::download::{Downloadable, MediaType};
use whatsapp_rust::media::{self, AudioOptions, DocumentOptions, ImageOptions, VideoOptions};
use whatsapp_rust::pair_code::PairCodeOptions;
use whatsapp_rust::proto_helpers::{MessageBuilderExt, MessageExt};
use whatsapp_rust::store::SqliteStore;
use whatsapp_rust::types::events::{
    ConnectFailureReason, Event, EventHandler, EventInterest, EventKind, InboundMessage as WaInbound,
};
use whatsapp_rust::types::message::{EditAttribute, MessageInfo, MessageSource};
use whatsapp_rust::types::presence::ReceiptType;
use whatsapp_rust::upload::UploadResponse;
use whatsapp_rust::wacore_binary::JidExt;
use whatsapp_rust::waproto::whatsapp as wa;
use whatsapp_rust::{
    Client, ClientError, ContactError, InboundDurabilityHook, IqError, IsOnWhatsAppResult, Jid, SendError, SendOptions,
    UploadOptions,
};

use super::{BoxFuture, Link, Pairing, ParkReason, ReceiptStatus, Stored, Transport, WaError, WaEvent, WaSession};
use crate::domain::{Content, InboundMessage, LocationId, Media, MediaKind, OutgoingContent};

/// How long a graceful shutdown may take: the crate's disconnect waits up to 5 s for pending
/// inbound commits and 5 s for outbound receipts, then flushes the device state.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the hook waits for waghl to store a batch before it gives up. WhatsApp then
/// delivers the batch again on the next connection. waghl dedupes, so one that was stored
/// late does no harm.
const STORE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the pairing-code task waits for the socket before each request.
const SOCKET_WAIT: Duration = Duration::from_secs(60);
/// How long a pairing code stays valid (the crate reports about 180 s).
const PAIR_CODE_WAIT: Duration = Duration::from_secs(180);
/// The first code plus the refreshes WhatsApp may ask for, before pairing gives up.
const PAIR_CODE_REQUESTS: usize = 3;
/// How long `logout` waits for a dropped connection to come back, to unlink the device.
const LOGOUT_CONNECT_WAIT: Duration = Duration::from_secs(5);
/// Bound on the set of LIDs already announced as `LidMapping` (a cache, not a record).
const MAX_ANNOUNCED_LIDS: usize = 10_000;

/// Starts whatsapp-rust clients, one per location, each on its own SQLite store.
pub struct WhatsAppTransport {
    sessions_dir: PathBuf,
}

impl WhatsAppTransport {
    pub fn new(sessions_dir: &Path) -> Self {
        Self {
            sessions_dir: sessions_dir.to_path_buf(),
        }
    }

    fn db_path(&self, location: &LocationId) -> PathBuf {
        self.sessions_dir.join(format!("{}.db", location.as_str()))
    }
}

impl Transport for WhatsAppTransport {
    fn start<'a>(
        &'a self,
        location: &'a LocationId,
        pairing: Pairing,
        events: mpsc::Sender<WaEvent>,
    ) -> BoxFuture<'a, Result<Arc<dyn WaSession>, WaError>> {
        Box::pin(async move {
            let db = self.db_path(location);
            prepare_store_file(&self.sessions_dir, &db)
                .map_err(|e| WaError::Failed(format!("could not prepare the session store {}: {e}", db.display())))?;
            let url = db
                .to_str()
                .ok_or_else(|| WaError::Failed(format!("the session store path {} is not UTF-8", db.display())))?
                .to_owned();
            let store = SqliteStore::new(&url)
                .await
                .map_err(|e| WaError::Failed(format!("could not open the session store: {e}")))?;
            restrict_store_files(&db);

            let (queue, queued) = mpsc::unbounded_channel();
            let (pair_signals, pair_signals_rx) = mpsc::unbounded_channel();
            let shared = Arc::new(Shared::new(location.as_str(), pair_signals));
            let sink = Sink {
                shared: shared.clone(),
                queue,
            };
            let bot = Bot::builder()
                .with_backend(store)
                .with_event_handler(BusHandler { sink: sink.clone() })
                .with_inbound_durability_hook(StoreHook { sink: sink.clone() })
                // waghl relays what arrives from now on; history would only cost memory and CPU.
                // LID↔phone mappings still come from `sender_alt` and usync.
                .skip_history_sync()
                .build()
                .await
                .map_err(|e| WaError::Failed(format!("could not build the WhatsApp client: {e}")))?;
            let client = bot.client();
            let _ = shared.client.set(Arc::downgrade(&client));
            track(&client);
            let paired = client.pn().is_some();
            let code_phone = match (&pairing, paired) {
                (Pairing::Code { phone }, false) => Some(phone.clone()),
                _ => None,
            };
            shared.paired.store(paired, Ordering::Relaxed);
            shared.by_code.store(code_phone.is_some(), Ordering::Relaxed);
            shared.set_link(if paired { Link::Connecting } else { Link::Pairing });

            forward_in_order(queued, events);
            let handle = bot.spawn();
            let stop = CancellationToken::new();
            let ended = CancellationToken::new();
            tokio::spawn(watch(handle, sink.clone(), stop.clone(), ended.clone()));
            if let Some(phone) = code_phone {
                tokio::spawn(pair_by_code(
                    client.clone(),
                    phone,
                    sink.clone(),
                    pair_signals_rx,
                    ended.clone(),
                ));
            }
            tracing::info!(location.id = %location, paired, "WhatsApp client started");
            Ok(Arc::new(WhatsAppSession {
                shared,
                client,
                stop,
                ended,
            }) as Arc<dyn WaSession>)
        })
    }

    fn wipe<'a>(&'a self, location: &'a LocationId) -> BoxFuture<'a, Result<(), WaError>> {
        Box::pin(async move {
            let db = self.db_path(location);
            // The WAL goes first. A stale `-wal` next to a new database would be replayed into
            // it and bring the old keys back.
            for path in [
                with_suffix(&db, "-wal"),
                with_suffix(&db, "-shm"),
                with_suffix(&db, "-journal"),
                db.clone(),
            ] {
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(WaError::Failed(format!("could not delete {}: {e}", path.display())));
                    }
                }
            }
            tracing::info!(location.id = %location, "WhatsApp device keys wiped");
            Ok(())
        })
    }
}

/// Every client this process built, weakly: a client that outlives its stop (a leak, as the
/// `wa-rs` fork has) shows up in [`live_clients`].
static CLIENTS: std::sync::Mutex<Vec<std::sync::Weak<Client>>> = std::sync::Mutex::new(Vec::new());

fn track(client: &Arc<Client>) {
    let mut clients = CLIENTS.lock().unwrap_or_else(|p| p.into_inner());
    clients.retain(|c| c.strong_count() > 0);
    clients.push(Arc::downgrade(client));
}

/// How many whatsapp-rust clients are still alive in this process.
pub fn live_clients() -> usize {
    let clients = CLIENTS.lock().unwrap_or_else(|p| p.into_inner());
    clients.iter().filter(|c| c.strong_count() > 0).count()
}

/// One location's running client, as waghl sees it.
struct WhatsAppSession {
    shared: Arc<Shared>,
    client: Arc<Client>,
    /// Asks the watcher for a graceful shutdown.
    stop: CancellationToken,
    /// Cancelled by the watcher once the run loop has ended.
    ended: CancellationToken,
}

impl Drop for WhatsAppSession {
    /// A session waghl lets go of must not keep a client connected; two clients on one device
    /// replace each other. The watcher does the graceful shutdown.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl WaSession for WhatsAppSession {
    fn link(&self) -> Link {
        if self.ended.is_cancelled() {
            return Link::Dead;
        }
        match self.shared.link() {
            // The socket went down and the `Disconnected` event has not caught up yet.
            Link::Connected if !self.client.is_connected() => Link::Reconnecting,
            link => link,
        }
    }

    fn new_message_id(&self) -> String {
        self.client.generate_message_id()
    }

    fn send<'a>(
        &'a self,
        to: &'a str,
        id: &'a str,
        content: &'a OutgoingContent,
        reply_to: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), WaError>> {
        Box::pin(async move {
            if id.is_empty() {
                return Err(WaError::Rejected("a message needs an id".into()));
            }
            let jid: Jid = to
                .parse()
                .map_err(|_| WaError::Rejected(format!("{to} is not a WhatsApp address")))?;
            if self.ended.is_cancelled() || !self.client.is_connected() {
                return Err(WaError::NotConnected);
            }
            let context = reply_to.filter(|r| !r.is_empty()).map(|r| quote_context(r, &jid));
            let message = match content {
                OutgoingContent::Text(text) => match context {
                    Some(context) => wa::Message::text_with_context(text.clone(), context),
                    None => wa::Message::text(text.clone()),
                },
                OutgoingContent::Media {
                    kind,
                    mime,
                    bytes,
                    caption,
                    file_name,
                } => {
                    let upload = self
                        .client
                        .upload(bytes.clone(), media_type(*kind), UploadOptions::new())
                        .await
                        .map_err(|e| WaError::Failed(format!("media upload failed: {e}")))?;
                    media_message(*kind, upload, mime, caption.clone(), file_name.clone(), context)
                }
            };
            // The caller's id: a resend after a crash is the same message, not a second one.
            self.client
                .send_message_with_options(jid, message, SendOptions::default().with_message_id(id))
                .await
                .map_err(send_error)?;
            tracing::debug!(location.id = %self.shared.location, message.id = %id, "message handed to WhatsApp");
            Ok(())
        })
    }

    fn on_whatsapp<'a>(&'a self, phone: &'a str) -> BoxFuture<'a, Result<Option<String>, WaError>> {
        Box::pin(async move {
            let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
            if !(7..=15).contains(&digits.len()) {
                return Err(WaError::Rejected(format!("{phone} is not a phone number")));
            }
            if self.ended.is_cancelled() || !self.client.is_connected() {
                return Err(WaError::NotConnected);
            }
            let results = self
                .client
                .contacts()
                .is_on_whatsapp(&[Jid::pn(digits)])
                .await
                .map_err(contact_error)?;
            // The server's own form of the number: it may differ from what was typed
            // (Brazil's ninth digit, Mexico's `1`).
            Ok(results
                .iter()
                .find(|r| r.is_registered)
                .map(|r| send_jid(r).to_string()))
        })
    }

    fn download<'a>(&'a self, media_ref: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, WaError>> {
        Box::pin(async move {
            let message = whatsapp_rust::waproto::codec::message_decode(media_ref)
                .map_err(|_| WaError::Rejected("the media reference is unreadable".into()))?;
            let target =
                downloadable(&message).ok_or_else(|| WaError::Rejected("the media reference names no media".into()))?;
            self.client.download(target).await.map_err(|e| {
                let chain: &(dyn std::error::Error + Send + Sync + 'static) = e.as_ref();
                match whatsapp_rust::ErrorChainExt::http_status(chain) {
                    // Expired on WhatsApp's servers: waiting will not bring it back.
                    Some(status @ (404 | 410)) => {
                        WaError::Rejected(format!("the media expired on WhatsApp's servers ({status})"))
                    }
                    _ => WaError::Failed(format!("media download failed: {e}")),
                }
            })
        })
    }

    fn phone_for_lid<'a>(&'a self, lid: &'a str) -> BoxFuture<'a, Result<Option<String>, WaError>> {
        Box::pin(async move {
            let user = lid.split('@').next().unwrap_or(lid);
            let user = user.split(':').next().unwrap_or(user);
            if user.is_empty() || !user.bytes().all(|b| b.is_ascii_digit()) {
                return Ok(None);
            }
            match self.client.get_lid_pn_entry(&Jid::lid(user)).await {
                Ok(Some(entry)) => Ok(Some(format!("+{}", entry.phone_number))),
                Ok(None) => Ok(None),
                Err(e) => Err(WaError::Failed(format!("LID lookup failed: {e}"))),
            }
        })
    }

    fn logout(&self) -> BoxFuture<'_, Result<(), WaError>> {
        Box::pin(async move {
            if self.ended.is_cancelled() {
                return Err(WaError::NotConnected);
            }
            // The unlink request is an IQ, so it needs a live, logged-in connection. Right
            // after pairing, the socket is being replaced (the 515 reconnect).
            if !(self.client.is_connected() && self.client.is_logged_in()) {
                let _ = self.client.wait_for_connected(LOGOUT_CONNECT_WAIT).await;
                if !(self.client.is_connected() && self.client.is_logged_in()) {
                    return Err(WaError::NotConnected);
                }
            }
            // Sends the unlink request (the crate only logs a failed one), dispatches
            // `LoggedOut` and disconnects. The run loop then ends.
            self.client.logout().await;
            if tokio::time::timeout(SHUTDOWN_TIMEOUT, self.ended.cancelled())
                .await
                .is_err()
            {
                tracing::warn!(location.id = %self.shared.location, "the client did not end after logging out; stopping it");
                self.stop.cancel();
                let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, self.ended.cancelled()).await;
            }
            tracing::info!(location.id = %self.shared.location, "WhatsApp device unlinked");
            Ok(())
        })
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.stop.cancel();
            // The watcher bounds the shutdown itself; the margin covers its scheduling.
            let bound = SHUTDOWN_TIMEOUT + Duration::from_secs(5);
            if tokio::time::timeout(bound, self.ended.cancelled()).await.is_err() {
                tracing::error!(location.id = %self.shared.location, "the WhatsApp client did not stop");
            }
        })
    }
}

/// State that the event handler, the hook, the watcher, the pairing task and the session
/// share.
struct Shared {
    location: String,
    /// `Link` encoded by `link_code`.
    link: AtomicU8,
    /// The store holds a linked device (known at start, or paired since).
    paired: AtomicBool,
    /// Pairing by phone number: QR codes are not shown, and QR exhaustion is not terminal.
    by_code: AtomicBool,
    /// A `Weak`, set once after the build (see the module docs on cycles).
    client: OnceLock<Weak<Client>>,
    pair_signals: mpsc::UnboundedSender<PairSignal>,
    /// LIDs already announced as `WaEvent::LidMapping` during this client's life.
    announced_lids: Mutex<HashSet<String>>,
}

impl Shared {
    fn new(location: &str, pair_signals: mpsc::UnboundedSender<PairSignal>) -> Self {
        Self {
            location: location.to_owned(),
            link: AtomicU8::new(link_code(Link::Connecting)),
            paired: AtomicBool::new(false),
            by_code: AtomicBool::new(false),
            client: OnceLock::new(),
            pair_signals,
            announced_lids: Mutex::new(HashSet::new()),
        }
    }

    fn link(&self) -> Link {
        link_of(self.link.load(Ordering::Acquire))
    }

    /// `Dead` is final: a late `Disconnected` does not revive a client that has ended.
    fn set_link(&self, link: Link) {
        let code = link_code(link);
        let _ = self.link.fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
            (current != link_code(Link::Dead)).then_some(code)
        });
    }

    fn signal(&self, signal: PairSignal) {
        let _ = self.pair_signals.send(signal);
    }

    /// The device's own number (E.164), or `""` before pairing.
    fn own_phone(&self) -> String {
        self.client
            .get()
            .and_then(Weak::upgrade)
            .and_then(|client| client.pn())
            .and_then(|jid| phone_of_jid(&jid))
            .unwrap_or_default()
    }

    /// Whether this LID is new to this client (so worth a `LidMapping` event).
    fn announce_lid(&self, lid: &str) -> bool {
        let mut announced = self.announced_lids.lock().unwrap_or_else(|p| p.into_inner());
        if announced.contains(lid) {
            return false;
        }
        if announced.len() >= MAX_ANNOUNCED_LIDS {
            announced.clear();
        }
        announced.insert(lid.to_owned());
        true
    }
}

fn link_code(link: Link) -> u8 {
    match link {
        Link::Pairing => 0,
        Link::Connecting => 1,
        Link::Connected => 2,
        Link::Reconnecting => 3,
        Link::Dead => 4,
    }
}

fn link_of(code: u8) -> Link {
    match code {
        0 => Link::Pairing,
        1 => Link::Connecting,
        2 => Link::Connected,
        3 => Link::Reconnecting,
        _ => Link::Dead,
    }
}

/// What the bus handler tells the pairing-code task.
#[derive(Debug)]
enum PairSignal {
    /// WhatsApp asked for a new code (the old one is void).
    Refresh,
    /// The code was refused; none is coming.
    Failed,
    /// The phone linked this device.
    Paired,
}

/// An entry of the ordered queue between the client and waghl's channel.
enum Queued {
    Event(WaEvent),
    /// The client has ended; the stream ends after what was queued before.
    End,
}

/// The queue has no reader any more: the session has ended.
struct Ended;

/// The write end of the queue, shared by the handler, the hook, the watcher and the
/// pairing task.
#[derive(Clone)]
struct Sink {
    shared: Arc<Shared>,
    queue: mpsc::UnboundedSender<Queued>,
}

impl Sink {
    fn emit(&self, event: WaEvent) -> Result<(), Ended> {
        self.queue.send(Queued::Event(event)).map_err(|_| Ended)
    }

    /// Queues one inbound message, preceded by the LID mapping it reveals, if any. The
    /// receiver resolves once waghl has stored the message. `None` for what waghl does not
    /// keep (protocol traffic, newsletters).
    fn message(&self, item: &WaInbound) -> Result<Option<oneshot::Receiver<()>>, Ended> {
        let Some((message, media_ref)) = map_message(&item.message, &item.info) else {
            tracing::trace!(location.id = %self.shared.location, message.id = %item.info.id, "not a message waghl keeps");
            return Ok(None);
        };
        if let Some((lid, phone)) = lid_mapping(&item.info.source)
            && self.shared.announce_lid(&lid)
        {
            self.emit(WaEvent::LidMapping { lid, phone })?;
        }
        let (stored, confirmed) = Stored::new();
        self.emit(WaEvent::Message {
            message: Box::new(message),
            media_ref,
            stored,
        })?;
        Ok(Some(confirmed))
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
                WaEvent::Connected {
                    phone: shared.own_phone(),
                }
            }
            Event::Disconnected(_) => {
                shared.set_link(Link::Reconnecting);
                WaEvent::Disconnected
            }
            Event::LoggedOut(logged_out) => {
                tracing::warn!(location.id = %location, reason = ?logged_out.reason, "WhatsApp logged this device out");
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
                // phone: the crate acknowledges these on its own, so waghl's answer changes
                // nothing.
                for item in batch.iter() {
                    if self.message(item).is_err() {
                        return;
                    }
                }
                return;
            }
            other => match park_reason(other) {
                Some(reason) => {
                    if let Event::TemporaryBan(ban) = other {
                        tracing::warn!(location.id = %location, code = %ban.code, seconds = ban.expire.num_seconds(), "WhatsApp banned this number for a while");
                    } else {
                        tracing::warn!(location.id = %location, reason = reason.code(), "WhatsApp stopped this session");
                    }
                    shared.set_link(Link::Dead);
                    WaEvent::Parked(reason)
                }
                None => {
                    if let Event::ConnectFailure(failure) = other {
                        if failure.reason.should_reconnect() {
                            tracing::info!(location.id = %location, reason = ?failure.reason, "WhatsApp refused the connection for now; retrying");
                        } else {
                            // The crate stops reconnecting; the watcher ends the stream.
                            tracing::warn!(location.id = %location, reason = ?failure.reason, "WhatsApp refused the connection; the client stops");
                        }
                    }
                    return;
                }
            },
        };
        let _ = self.emit(out);
    }
}

/// The raw bus handler: it keeps the dispatch order and is never dropped by the crate.
struct BusHandler {
    sink: Sink,
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
            EventKind::Receipt,
            // The crate builds server acks only when some handler asks for them.
            EventKind::ServerAck,
            EventKind::StreamReplaced,
            EventKind::TemporaryBan,
            EventKind::ConnectFailure,
        ])
    }
}

/// Delays WhatsApp's acknowledgement until waghl has stored the batch.
struct StoreHook {
    sink: Sink,
}

#[whatsapp_rust::async_trait]
impl InboundDurabilityHook for StoreHook {
    async fn on_messages(&self, _client: Arc<Client>, batch: &[WaInbound]) -> anyhow::Result<()> {
        let mut confirmations = Vec::with_capacity(batch.len());
        for item in batch {
            match self.sink.message(item) {
                Ok(Some(confirmed)) => confirmations.push(confirmed),
                Ok(None) => {}
                Err(Ended) => {
                    return Err(anyhow::anyhow!(
                        "the session has ended; WhatsApp delivers the batch again"
                    ));
                }
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
fn forward_in_order(mut queued: mpsc::UnboundedReceiver<Queued>, events: mpsc::Sender<WaEvent>) {
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
async fn watch(mut handle: BotHandle, sink: Sink, stop: CancellationToken, ended: CancellationToken) {
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

/// Pairing by phone number: requests a code once the socket is up, then again on each refresh
/// WhatsApp asks for. If no phone links in time, it reports `QrExhausted` (pairing over,
/// nothing linked), as the QR flow does.
async fn pair_by_code(
    client: Arc<Client>,
    phone: String,
    sink: Sink,
    mut signals: mpsc::UnboundedReceiver<PairSignal>,
    ended: CancellationToken,
) {
    let location = sink.shared.location.clone();
    let options = PairCodeOptions {
        phone_number: phone.chars().filter(char::is_ascii_digit).collect(),
        ..Default::default()
    };
    for _ in 0..PAIR_CODE_REQUESTS {
        let socket = tokio::select! {
            () = ended.cancelled() => return,
            ready = client.wait_for_socket(SOCKET_WAIT) => ready,
        };
        if let Err(e) = socket {
            tracing::warn!(location.id = %location, error = %e, "no connection to WhatsApp to request a pairing code");
            break;
        }
        // Signals about an earlier code are stale; only a link still counts.
        while let Ok(signal) = signals.try_recv() {
            if matches!(signal, PairSignal::Paired) {
                return;
            }
        }
        if sink.shared.paired.load(Ordering::Relaxed) || client.is_logged_in() {
            return;
        }
        let requested = tokio::select! {
            () = ended.cancelled() => return,
            requested = client.pair_with_code(options.clone()) => requested,
        };
        if let Err(e) = requested {
            tracing::warn!(location.id = %location, error = %e, "WhatsApp issued no pairing code");
            break;
        }
        // The code itself reaches waghl as `Event::PairingCode`, through the bus handler.
        let next = tokio::select! {
            () = ended.cancelled() => return,
            () = tokio::time::sleep(PAIR_CODE_WAIT) => None,
            signal = signals.recv() => match signal {
                Some(signal) => Some(signal),
                None => return,
            },
        };
        match next {
            Some(PairSignal::Refresh) => continue,
            Some(PairSignal::Paired) => return,
            Some(PairSignal::Failed) | None => break,
        }
    }
    if !sink.shared.paired.load(Ordering::Relaxed) && !ended.is_cancelled() {
        tracing::info!(location.id = %location, "pairing by code ended without a link");
        sink.shared.set_link(Link::Dead);
        let _ = sink.emit(WaEvent::QrExhausted);
    }
}

/// Maps a decrypted WhatsApp message to waghl's model. The second value is `media_ref`: the
/// encoded `wa::Message` that holds only the media sub-message, so that the media can be
/// downloaded later, after a restart too. `None` for what waghl does not keep: protocol
/// traffic (key shares, history notices, pins), newsletters, and add-ons the crate could not
/// decrypt.
fn map_message(message: &wa::Message, info: &MessageInfo) -> Option<(InboundMessage, Option<Vec<u8>>)> {
    let source = &info.source;
    if source.chat.is_newsletter() {
        return None;
    }
    let mapped = map_content(message.get_base_message(), info)?;
    let inbound = InboundMessage {
        id: info.id.clone(),
        chat: source.chat.to_non_ad().to_string(),
        sender: source.sender.to_non_ad().to_string(),
        sender_phone: sender_phone(source),
        push_name: Some(info.push_name.trim())
            .filter(|name| !name.is_empty())
            .map(str::to_owned),
        timestamp: info.timestamp.timestamp_millis(),
        from_me: source.is_from_me,
        // The parser also sets `is_group` for status broadcasts; the chat's server decides.
        is_group: source.chat.is_group(),
        is_status: source.chat.is_status_broadcast(),
        reply_to: mapped
            .context
            .and_then(|context| context.stanza_id.clone())
            .filter(|id| !id.is_empty()),
        content: mapped.content,
    };
    Some((inbound, mapped.media_ref))
}

/// What a message says, its media reference, and the context (for replies) of its body.
struct Mapped<'m> {
    content: Content,
    media_ref: Option<Vec<u8>>,
    context: Option<&'m wa::ContextInfo>,
}

impl Mapped<'_> {
    fn plain(content: Content) -> Self {
        Self {
            content,
            media_ref: None,
            context: None,
        }
    }
}

fn map_content<'m>(base: &'m wa::Message, info: &MessageInfo) -> Option<Mapped<'m>> {
    use wa::message::protocol_message::Type as ProtocolType;

    if let Some(protocol) = base.protocol_message.as_option() {
        let target = protocol
            .key
            .as_option()
            .and_then(|key| key.id.clone())
            .filter(|id| !id.is_empty());
        let is_edit = protocol.r#type == Some(ProtocolType::MESSAGE_EDIT) || protocol.edited_message.is_set();
        return if protocol.r#type == Some(ProtocolType::REVOKE) {
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
        };
    }
    if let Some(reaction) = base.reaction_message.as_option() {
        let target = reaction
            .key
            .as_option()
            .and_then(|key| key.id.clone())
            .filter(|id| !id.is_empty())?;
        return Some(Mapped::plain(Content::Reaction {
            target,
            // `""` removes the reaction.
            emoji: reaction.text.clone().unwrap_or_default(),
        }));
    }
    if base.secret_encrypted_message.is_set() {
        // An edit or reaction whose parent secret the crate lacks: unreadable.
        return None;
    }
    match info.edit {
        // An edit the crate decrypted surfaces as its new body. The target is not in the body,
        // so it cannot become an `Edit`, and it must not pass as a new message either.
        EditAttribute::MessageEdit | EditAttribute::AdminEdit => {
            return Some(Mapped::plain(Content::Unsupported { kind: "edit".into() }));
        }
        EditAttribute::PinInChat => return None,
        _ => {}
    }
    if let Some(text) = base.conversation.as_deref().filter(|t| !t.is_empty()) {
        return Some(Mapped::plain(Content::Text { text: text.to_owned() }));
    }
    if let Some(extended) = base.extended_text_message.as_option()
        && let Some(text) = extended.text.as_deref().filter(|t| !t.is_empty())
    {
        return Some(Mapped {
            content: Content::Text { text: text.to_owned() },
            media_ref: None,
            context: extended.context_info.as_option(),
        });
    }
    if let Some(image) = base.image_message.as_option() {
        let mut kept = image.clone();
        kept.jpeg_thumbnail = None;
        kept.context_info = MessageField::none();
        return Some(Mapped {
            content: media_content(
                MediaKind::Image,
                image.mimetype.as_deref(),
                "image/jpeg",
                image.caption.clone(),
                None,
                image.file_length,
            ),
            media_ref: Some(encode(wa::Message {
                image_message: MessageField::some(kept),
                ..Default::default()
            })),
            context: image.context_info.as_option(),
        });
    }
    for (video, round) in [
        (base.video_message.as_option(), false),
        (base.ptv_message.as_option(), true),
    ] {
        let Some(video) = video else { continue };
        let mut kept = video.clone();
        kept.jpeg_thumbnail = None;
        kept.streaming_sidecar = None;
        kept.context_info = MessageField::none();
        let stored = if round {
            wa::Message {
                ptv_message: MessageField::some(kept),
                ..Default::default()
            }
        } else {
            wa::Message {
                video_message: MessageField::some(kept),
                ..Default::default()
            }
        };
        return Some(Mapped {
            content: media_content(
                MediaKind::Video,
                video.mimetype.as_deref(),
                "video/mp4",
                video.caption.clone(),
                None,
                video.file_length,
            ),
            media_ref: Some(encode(stored)),
            context: video.context_info.as_option(),
        });
    }
    if let Some(audio) = base.audio_message.as_option() {
        let voice = audio.ptt == Some(true);
        let mut kept = audio.clone();
        kept.streaming_sidecar = None;
        kept.context_info = MessageField::none();
        let (kind, default_mime) = if voice {
            (MediaKind::Voice, "audio/ogg; codecs=opus")
        } else {
            (MediaKind::Audio, "audio/mpeg")
        };
        return Some(Mapped {
            content: media_content(
                kind,
                audio.mimetype.as_deref(),
                default_mime,
                None,
                None,
                audio.file_length,
            ),
            media_ref: Some(encode(wa::Message {
                audio_message: MessageField::some(kept),
                ..Default::default()
            })),
            context: audio.context_info.as_option(),
        });
    }
    if let Some(document) = base.document_message.as_option() {
        let mut kept = document.clone();
        kept.jpeg_thumbnail = None;
        kept.context_info = MessageField::none();
        let file_name = document
            .file_name
            .clone()
            .or_else(|| document.title.clone())
            .filter(|name| !name.is_empty());
        return Some(Mapped {
            content: media_content(
                MediaKind::Document,
                document.mimetype.as_deref(),
                "application/octet-stream",
                document.caption.clone(),
                file_name,
                document.file_length,
            ),
            media_ref: Some(encode(wa::Message {
                document_message: MessageField::some(kept),
                ..Default::default()
            })),
            context: document.context_info.as_option(),
        });
    }
    if let Some(sticker) = base.sticker_message.as_option() {
        let mut kept = sticker.clone();
        kept.png_thumbnail = None;
        kept.context_info = MessageField::none();
        return Some(Mapped {
            content: media_content(
                MediaKind::Sticker,
                sticker.mimetype.as_deref(),
                "image/webp",
                None,
                None,
                sticker.file_length,
            ),
            media_ref: Some(encode(wa::Message {
                sticker_message: MessageField::some(kept),
                ..Default::default()
            })),
            context: sticker.context_info.as_option(),
        });
    }
    if let Some(location) = base.location_message.as_option() {
        let name = [&location.name, &location.address]
            .into_iter()
            .flatten()
            .map(|text| text.trim())
            .find(|text| !text.is_empty())
            .map(str::to_owned);
        return Some(Mapped {
            content: Content::Location {
                lat: location.degrees_latitude.unwrap_or_default(),
                lng: location.degrees_longitude.unwrap_or_default(),
                name,
            },
            media_ref: None,
            context: location.context_info.as_option(),
        });
    }
    if let Some(live) = base.live_location_message.as_option() {
        return Some(Mapped {
            content: Content::Location {
                lat: live.degrees_latitude.unwrap_or_default(),
                lng: live.degrees_longitude.unwrap_or_default(),
                name: live.caption.clone().filter(|c| !c.trim().is_empty()),
            },
            media_ref: None,
            context: live.context_info.as_option(),
        });
    }
    if let Some(contact) = base.contact_message.as_option() {
        return Some(Mapped {
            content: contact_content(
                contact.display_name.as_deref(),
                [contact.vcard.as_deref().unwrap_or_default()],
            ),
            media_ref: None,
            context: contact.context_info.as_option(),
        });
    }
    if let Some(contacts) = base.contacts_array_message.as_option() {
        let names: Vec<&str> = contacts
            .contacts
            .iter()
            .filter_map(|c| c.display_name.as_deref())
            .filter(|n| !n.trim().is_empty())
            .collect();
        let joined = names.join(", ");
        let name = contacts
            .display_name
            .as_deref()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or(joined.as_str());
        return Some(Mapped {
            content: contact_content(
                Some(name),
                contacts.contacts.iter().map(|c| c.vcard.as_deref().unwrap_or_default()),
            ),
            media_ref: None,
            context: contacts.context_info.as_option(),
        });
    }
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
    } else if base.pin_in_chat_message.is_set() || base.keep_in_chat_message.is_set() || is_bare(base) {
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

fn media_content(
    kind: MediaKind,
    mime: Option<&str>,
    default_mime: &str,
    caption: Option<String>,
    file_name: Option<String>,
    size: Option<u64>,
) -> Content {
    Content::Media(Media {
        kind,
        mime: mime
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .unwrap_or(default_mime)
            .to_owned(),
        caption: caption.filter(|c| !c.trim().is_empty()),
        file_name,
        size,
    })
}

fn encode(message: wa::Message) -> Vec<u8> {
    whatsapp_rust::waproto::codec::message_to_vec(&message)
}

fn contact_content<'v>(name: Option<&str>, vcards: impl IntoIterator<Item = &'v str>) -> Content {
    let mut phones: Vec<String> = Vec::new();
    let mut card_name = None;
    for vcard in vcards {
        for phone in vcard_phones(vcard) {
            if !phones.contains(&phone) {
                phones.push(phone);
            }
        }
        card_name = card_name.or_else(|| vcard_name(vcard));
    }
    let name = name
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .or(card_name)
        .unwrap_or_default();
    Content::Contact { name, phones }
}

/// The phones of a vCard. The `waid` parameter gives the WhatsApp number in E.164; without it,
/// the number is kept as written.
fn vcard_phones(vcard: &str) -> Vec<String> {
    vcard
        .lines()
        .filter_map(|line| {
            let (head, value) = line.trim().split_once(':')?;
            let mut params = head.split(';');
            let property = params.next()?.trim();
            // `TEL`, or a grouped `item1.TEL`.
            let property = property.rsplit('.').next().unwrap_or(property);
            if !property.eq_ignore_ascii_case("TEL") {
                return None;
            }
            let waid = params.find_map(|param| {
                let (key, value) = param.split_once('=')?;
                key.trim().eq_ignore_ascii_case("waid").then_some(value)
            });
            if let Some(waid) = waid {
                let digits: String = waid.chars().filter(char::is_ascii_digit).collect();
                if !digits.is_empty() {
                    return Some(format!("+{digits}"));
                }
            }
            let value = value.trim();
            (!value.is_empty()).then(|| value.to_owned())
        })
        .collect()
}

fn vcard_name(vcard: &str) -> Option<String> {
    vcard.lines().find_map(|line| {
        let (head, value) = line.trim().split_once(':')?;
        let property = head.split(';').next()?.trim();
        (property.eq_ignore_ascii_case("FN") && !value.trim().is_empty()).then(|| value.trim().to_owned())
    })
}

/// `+digits` for a phone-number JID (`@s.whatsapp.net`, `@hosted`).
fn phone_of_jid(jid: &Jid) -> Option<String> {
    let user = jid.user_base();
    if !jid.server.is_pn_family() {
        return None;
    }
    crate::domain::phone::Phone::from_whatsapp_user(user).map(crate::domain::phone::Phone::into_string)
}

/// The sender's phone: the sender itself when it is a phone JID, else the phone WhatsApp sent
/// along with a LID sender (`sender_alt`).
fn sender_phone(source: &MessageSource) -> Option<String> {
    phone_of_jid(&source.sender).or_else(|| source.sender_alt.as_ref().and_then(phone_of_jid))
}

/// `(LID digits, phone)` when the message pairs a LID with a phone number.
fn lid_mapping(source: &MessageSource) -> Option<(String, String)> {
    let alt = source.sender_alt.as_ref()?;
    let (lid, phone) = if source.sender.is_lid() {
        (&source.sender, phone_of_jid(alt)?)
    } else if alt.is_lid() {
        (alt, phone_of_jid(&source.sender)?)
    } else {
        return None;
    };
    let user = lid.user_base();
    (!user.is_empty() && user.bytes().all(|b| b.is_ascii_digit())).then(|| (user.to_owned(), phone))
}

/// Why WhatsApp stopped a session for good, when it did.
fn park_reason(event: &Event) -> Option<ParkReason> {
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

fn receipt_status(kind: &ReceiptType) -> Option<ReceiptStatus> {
    match kind {
        ReceiptType::Delivered => Some(ReceiptStatus::Delivered),
        ReceiptType::Read | ReceiptType::Played => Some(ReceiptStatus::Read),
        _ => None,
    }
}

/// Quotes `stanza_id` in a direct chat with `chat`. waghl knows only the id of the quoted
/// message, not its author or its body. So the quoted author is taken to be the other party
/// (agents reply to what the contact wrote), and no `quoted_message` is sent.
fn quote_context(stanza_id: &str, chat: &Jid) -> wa::ContextInfo {
    wa::ContextInfo {
        stanza_id: Some(stanza_id.to_owned()),
        participant: Some(chat.to_non_ad().to_string()),
        ..Default::default()
    }
}

fn media_type(kind: MediaKind) -> MediaType {
    match kind {
        MediaKind::Image => MediaType::Image,
        MediaKind::Video => MediaType::Video,
        MediaKind::Audio | MediaKind::Voice => MediaType::Audio,
        MediaKind::Document => MediaType::Document,
        MediaKind::Sticker => MediaType::Sticker,
    }
}

fn media_message(
    kind: MediaKind,
    upload: UploadResponse,
    mime: &str,
    caption: Option<String>,
    file_name: Option<String>,
    context: Option<wa::ContextInfo>,
) -> wa::Message {
    let mimetype = Some(mime.trim().to_owned()).filter(|m| !m.is_empty());
    match kind {
        MediaKind::Image => media::image_message(
            upload,
            ImageOptions {
                caption,
                mimetype,
                context_info: context.map(Box::new),
                ..Default::default()
            },
        ),
        MediaKind::Video => media::video_message(
            upload,
            VideoOptions {
                caption,
                mimetype,
                context_info: context.map(Box::new),
                ..Default::default()
            },
        ),
        MediaKind::Audio => media::audio_message(
            upload,
            AudioOptions {
                mimetype,
                ptt: Some(false),
                context_info: context.map(Box::new),
                ..Default::default()
            },
        ),
        MediaKind::Voice => media::audio_message(
            upload,
            AudioOptions {
                // Phones play voice notes as OGG/Opus, under exactly this type.
                mimetype: Some(match mimetype {
                    Some(m) if !m.starts_with("audio/ogg") => m,
                    _ => "audio/ogg; codecs=opus".to_owned(),
                }),
                ptt: Some(true),
                context_info: context.map(Box::new),
                ..Default::default()
            },
        ),
        MediaKind::Document => {
            let name = file_name
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| "file".to_owned());
            media::document_message(
                upload,
                DocumentOptions {
                    mimetype,
                    file_name: Some(name.clone()),
                    title: Some(name),
                    caption,
                    context_info: context.map(Box::new),
                    ..Default::default()
                },
            )
        }
        // The crate has no sticker builder; the fields are those of the other builders.
        MediaKind::Sticker => wa::Message {
            sticker_message: MessageField::some(wa::message::StickerMessage {
                url: Some(upload.url),
                direct_path: Some(upload.direct_path),
                media_key: Some(upload.media_key.to_vec()),
                file_sha256: Some(upload.file_sha256.to_vec()),
                file_enc_sha256: Some(upload.file_enc_sha256.to_vec()),
                file_length: Some(upload.file_length),
                media_key_timestamp: Some(upload.media_key_timestamp),
                mimetype: Some(mimetype.unwrap_or_else(|| "image/webp".to_owned())),
                context_info: context.map(MessageField::some).unwrap_or_default(),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

/// The media sub-message a `media_ref` holds.
fn downloadable(message: &wa::Message) -> Option<&dyn Downloadable> {
    if let Some(m) = message.image_message.as_option() {
        return Some(m as &dyn Downloadable);
    }
    if let Some(m) = message.video_message.as_option() {
        return Some(m as &dyn Downloadable);
    }
    if let Some(m) = message.ptv_message.as_option() {
        return Some(m as &dyn Downloadable);
    }
    if let Some(m) = message.audio_message.as_option() {
        return Some(m as &dyn Downloadable);
    }
    if let Some(m) = message.document_message.as_option() {
        return Some(m as &dyn Downloadable);
    }
    if let Some(m) = message.sticker_message.as_option() {
        return Some(m as &dyn Downloadable);
    }
    None
}

/// The JID to send to: the phone-number form the server answered with.
fn send_jid(result: &IsOnWhatsAppResult) -> Jid {
    if result.jid.is_pn() {
        result.jid.to_non_ad()
    } else {
        result.pn_jid.as_ref().unwrap_or(&result.jid).to_non_ad()
    }
}

fn iq_error(error: IqError) -> WaError {
    match error {
        IqError::NotConnected | IqError::Disconnected(_) | IqError::InternalChannelClosed => WaError::NotConnected,
        other => WaError::Failed(format!("WhatsApp did not answer: {other}")),
    }
}

fn contact_error(error: ContactError) -> WaError {
    match error {
        ContactError::Iq(iq) => iq_error(iq),
        ContactError::InvalidJid(reason) => WaError::Rejected(reason),
        other => WaError::Failed(format!("number lookup failed: {other}")),
    }
}

fn send_error(error: SendError) -> WaError {
    match error {
        SendError::NotLoggedIn => WaError::NotConnected,
        SendError::Client(ClientError::NotConnected | ClientError::NotLoggedIn | ClientError::Socket(_)) => {
            WaError::NotConnected
        }
        SendError::Iq(iq) => iq_error(iq),
        SendError::InvalidRequest(reason) => WaError::Rejected(reason),
        other => WaError::Failed(format!("send failed: {other}")),
    }
}

/// Creates the sessions directory (0700) and the store file (0600) before SQLite opens it.
/// The store does not create directories, and it would create the file with the umask's mode.
fn prepare_store_file(dir: &Path, db: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        // An empty file is a valid empty SQLite database.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(db)?;
        std::fs::set_permissions(db, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = db;
    Ok(())
}

/// SQLite gives the `-wal`/`-shm` files the database's mode; this only makes sure.
fn restrict_store_files(db: &Path) {
    #[cfg(unix)]
    for path in [db.to_path_buf(), with_suffix(db, "-wal"), with_suffix(db, "-shm")] {
        use std::os::unix::fs::PermissionsExt;
        if path.exists() {
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
    }
    #[cfg(not(unix))]
    let _ = db;
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use whatsapp_rust::chrono;
    use whatsapp_rust::types::events::{
        ClientOutdated, ConnectFailure, Connected, StreamReplaced, TempBanReason, TemporaryBan,
    };

    const PHONE_JID: &str = "15551234567@s.whatsapp.net";

    fn info(chat: &str, sender: &str) -> MessageInfo {
        MessageInfo {
            id: "3EB0C0FFEE".into(),
            push_name: "Ana".into(),
            timestamp: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            source: MessageSource {
                chat: chat.parse().unwrap(),
                sender: sender.parse().unwrap(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn direct() -> MessageInfo {
        info(PHONE_JID, PHONE_JID)
    }

    fn mapped(message: wa::Message, info: &MessageInfo) -> (InboundMessage, Option<Vec<u8>>) {
        map_message(&message, info).expect("a message waghl keeps")
    }

    fn key(id: &str) -> MessageField<wa::MessageKey> {
        MessageField::some(wa::MessageKey {
            id: Some(id.into()),
            remote_jid: Some(PHONE_JID.into()),
            from_me: Some(true),
            ..Default::default()
        })
    }

    fn decode(media_ref: &[u8]) -> wa::Message {
        whatsapp_rust::waproto::codec::message_decode(media_ref).unwrap()
    }

    #[test]
    fn a_text_in_a_direct_chat() {
        let (message, media_ref) = mapped(wa::Message::text("hello"), &direct());
        assert_eq!(message.content, Content::Text { text: "hello".into() });
        assert_eq!(message.id, "3EB0C0FFEE");
        assert_eq!(message.chat, PHONE_JID);
        assert_eq!(message.sender, PHONE_JID);
        assert_eq!(message.sender_phone.as_deref(), Some("+15551234567"));
        assert_eq!(message.push_name.as_deref(), Some("Ana"));
        assert_eq!(message.timestamp, 1_700_000_000_000);
        assert!(!message.from_me && !message.is_group && !message.is_status);
        assert_eq!(message.reply_to, None);
        assert_eq!(media_ref, None);
    }

    #[test]
    fn an_extended_text_reply_names_the_quoted_message() {
        let reply = wa::Message::text_with_context(
            "yes",
            wa::ContextInfo {
                stanza_id: Some("3EB0QUOTED".into()),
                participant: Some(PHONE_JID.into()),
                ..Default::default()
            },
        );
        let (message, _) = mapped(reply, &direct());
        assert_eq!(message.content, Content::Text { text: "yes".into() });
        assert_eq!(message.reply_to.as_deref(), Some("3EB0QUOTED"));
    }

    #[test]
    fn an_image_with_a_caption_keeps_a_small_media_ref() {
        let image = wa::Message {
            image_message: MessageField::some(wa::message::ImageMessage {
                mimetype: Some("image/jpeg".into()),
                caption: Some("look".into()),
                file_length: Some(2048),
                direct_path: Some("/v/t62.7118-24/abc".into()),
                media_key: Some(vec![7; 32]),
                file_enc_sha256: Some(vec![8; 32]),
                jpeg_thumbnail: Some(vec![1, 2, 3]),
                context_info: MessageField::some(wa::ContextInfo {
                    stanza_id: Some("3EB0QUOTED".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (message, media_ref) = mapped(image, &direct());
        assert_eq!(
            message.content,
            Content::Media(Media {
                kind: MediaKind::Image,
                mime: "image/jpeg".into(),
                caption: Some("look".into()),
                file_name: None,
                size: Some(2048),
            })
        );
        assert_eq!(message.reply_to.as_deref(), Some("3EB0QUOTED"));
        let stored = decode(&media_ref.expect("a media ref"));
        let kept = stored.image_message.as_option().expect("the image");
        assert_eq!(kept.direct_path.as_deref(), Some("/v/t62.7118-24/abc"));
        assert_eq!(kept.media_key.as_deref(), Some(&[7u8; 32][..]));
        assert_eq!(kept.file_enc_sha256.as_deref(), Some(&[8u8; 32][..]));
        assert_eq!(kept.jpeg_thumbnail, None);
        assert!(kept.context_info.is_unset());
        assert!(downloadable(&stored).is_some());
    }

    #[test]
    fn a_document_with_a_caption_wrapper_keeps_its_file_name() {
        let document = wa::Message {
            document_message: MessageField::some(wa::message::DocumentMessage {
                mimetype: Some("application/pdf".into()),
                file_name: Some("invoice.pdf".into()),
                caption: Some("your invoice".into()),
                file_length: Some(1000),
                direct_path: Some("/v/doc".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let wrapped = wa::Message {
            document_with_caption_message: MessageField::some(wa::message::FutureProofMessage {
                message: MessageField::some(document),
            }),
            ..Default::default()
        };
        let (message, media_ref) = mapped(wrapped, &direct());
        assert_eq!(
            message.content,
            Content::Media(Media {
                kind: MediaKind::Document,
                mime: "application/pdf".into(),
                caption: Some("your invoice".into()),
                file_name: Some("invoice.pdf".into()),
                size: Some(1000),
            })
        );
        let stored = decode(&media_ref.unwrap());
        assert!(stored.document_message.is_set());
    }

    #[test]
    fn a_push_to_talk_audio_is_a_voice_note_and_plain_audio_is_audio() {
        let audio = |ptt: Option<bool>| wa::Message {
            audio_message: MessageField::some(wa::message::AudioMessage {
                mimetype: Some("audio/ogg; codecs=opus".into()),
                ptt,
                seconds: Some(4),
                file_length: Some(5000),
                direct_path: Some("/v/voice".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (voice, media_ref) = mapped(audio(Some(true)), &direct());
        let Content::Media(media) = voice.content else {
            panic!("media expected")
        };
        assert_eq!(media.kind, MediaKind::Voice);
        assert_eq!(media.mime, "audio/ogg; codecs=opus");
        assert_eq!(media.size, Some(5000));
        assert!(decode(&media_ref.unwrap()).audio_message.is_set());

        let (plain, _) = mapped(audio(None), &direct());
        assert!(matches!(
            plain.content,
            Content::Media(Media {
                kind: MediaKind::Audio,
                ..
            })
        ));
    }

    #[test]
    fn a_location() {
        let location = wa::Message {
            location_message: MessageField::some(wa::message::LocationMessage {
                degrees_latitude: Some(-23.5505),
                degrees_longitude: Some(-46.6333),
                name: Some("Office".into()),
                address: Some("Av. Paulista 1000".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (message, media_ref) = mapped(location, &direct());
        assert_eq!(
            message.content,
            Content::Location {
                lat: -23.5505,
                lng: -46.6333,
                name: Some("Office".into()),
            }
        );
        assert_eq!(media_ref, None);
    }

    #[test]
    fn a_contact_card_gives_its_whatsapp_numbers() {
        let vcard = "BEGIN:VCARD\nVERSION:3.0\nN:;Bruno;;;\nFN:Bruno\n\
                     TEL;type=CELL;type=VOICE;waid=5511987654321:+55 11 98765-4321\nEND:VCARD";
        let contact = wa::Message {
            contact_message: MessageField::some(wa::message::ContactMessage {
                display_name: Some("Bruno".into()),
                vcard: Some(vcard.into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (message, _) = mapped(contact, &direct());
        assert_eq!(
            message.content,
            Content::Contact {
                name: "Bruno".into(),
                phones: vec!["+5511987654321".into()],
            }
        );
    }

    #[test]
    fn vcard_phones_without_waid_are_kept_as_written() {
        let vcard = "BEGIN:VCARD\r\nFN:Carla\r\nitem1.TEL:+44 20 7946 0958\r\nitem1.X-ABLabel:work\r\nEND:VCARD";
        assert_eq!(vcard_phones(vcard), vec!["+44 20 7946 0958".to_owned()]);
        assert_eq!(vcard_name(vcard).as_deref(), Some("Carla"));
    }

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
    fn a_group_message_is_flagged_and_its_sender_loses_the_device() {
        let mut group = info("120363025246125244@g.us", "15551234567:12@s.whatsapp.net");
        group.source.is_group = true;
        let (message, _) = mapped(wa::Message::text("hi all"), &group);
        assert!(message.is_group);
        assert!(!message.is_status);
        assert_eq!(message.chat, "120363025246125244@g.us");
        assert_eq!(message.sender, PHONE_JID);
        assert_eq!(message.sender_phone.as_deref(), Some("+15551234567"));
    }

    #[test]
    fn a_status_broadcast_is_a_status_not_a_group() {
        let mut status = info("status@broadcast", PHONE_JID);
        // The crate's parser marks broadcasts as groups.
        status.source.is_group = true;
        let (message, _) = mapped(wa::Message::text("my story"), &status);
        assert!(message.is_status);
        assert!(!message.is_group);
        assert_eq!(message.chat, "status@broadcast");
    }

    #[test]
    fn a_lid_sender_gets_its_phone_from_sender_alt() {
        let mut lid = info("123456789012345@lid", "123456789012345:5@lid");
        lid.source.sender_alt = Some(PHONE_JID.parse().unwrap());
        let (message, _) = mapped(wa::Message::text("hello"), &lid);
        assert_eq!(message.chat, "123456789012345@lid");
        assert_eq!(message.sender, "123456789012345@lid");
        assert_eq!(message.sender_phone.as_deref(), Some("+15551234567"));
        assert_eq!(
            lid_mapping(&lid.source),
            Some(("123456789012345".to_owned(), "+15551234567".to_owned()))
        );

        let hidden = info("123456789012345@lid", "123456789012345@lid");
        let (message, _) = mapped(wa::Message::text("hello"), &hidden);
        assert_eq!(message.sender_phone, None);
        assert_eq!(lid_mapping(&hidden.source), None);
    }

    #[test]
    fn a_message_typed_on_the_phone_is_from_me() {
        let mut own = info(PHONE_JID, "15550001111:0@s.whatsapp.net");
        own.source.is_from_me = true;
        let (message, _) = mapped(wa::Message::text("on my way"), &own);
        assert!(message.from_me);
        assert_eq!(message.chat, PHONE_JID);
        assert_eq!(message.sender, "15550001111@s.whatsapp.net");
    }

    #[test]
    fn protocol_traffic_newsletters_and_bare_key_messages_are_not_kept() {
        let key_share = wa::Message {
            protocol_message: MessageField::some(wa::message::ProtocolMessage {
                r#type: Some(wa::message::protocol_message::Type::APP_STATE_SYNC_KEY_SHARE),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(map_message(&key_share, &direct()).is_none());
        assert!(map_message(&wa::Message::default(), &direct()).is_none());
        let newsletter = info("120363144038483540@newsletter", "120363144038483540@newsletter");
        assert!(map_message(&wa::Message::text("news"), &newsletter).is_none());
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

    #[test]
    fn the_link_never_comes_back_from_dead() {
        let (signals, _) = mpsc::unbounded_channel();
        let shared = Shared::new("loc", signals);
        shared.set_link(Link::Connected);
        assert_eq!(shared.link(), Link::Connected);
        shared.set_link(Link::Dead);
        shared.set_link(Link::Reconnecting);
        assert_eq!(shared.link(), Link::Dead);
    }

    #[test]
    fn each_lid_is_announced_once() {
        let (signals, _) = mpsc::unbounded_channel();
        let shared = Shared::new("loc", signals);
        assert!(shared.announce_lid("123"));
        assert!(!shared.announce_lid("123"));
        assert!(shared.announce_lid("456"));
    }

    #[cfg(unix)]
    #[test]
    fn the_store_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("sessions");
        let db = dir.join("loc.db");
        prepare_store_file(&dir, &db).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&db), 0o600);
        assert_eq!(std::fs::metadata(&db).unwrap().len(), 0);
    }

    #[tokio::test]
    async fn wipe_deletes_the_database_and_its_companions_only() {
        let temp = tempfile::tempdir().unwrap();
        let transport = WhatsAppTransport::new(temp.path());
        let location = LocationId::parse("loc1").unwrap();
        let names = ["loc1.db", "loc1.db-wal", "loc1.db-shm", "loc2.db"];
        for name in names {
            std::fs::write(temp.path().join(name), b"x").unwrap();
        }
        transport.wipe(&location).await.unwrap();
        for name in &names[..3] {
            assert!(!temp.path().join(name).exists(), "{name} survived");
        }
        assert!(temp.path().join("loc2.db").exists());
        // Wiping what is already gone is fine.
        transport.wipe(&location).await.unwrap();
    }
}
