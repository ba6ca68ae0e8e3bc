//! A simulated WhatsApp (`WAGHL_WA_BACKEND=sim`): waghl's test bench, and a demo mode for
//! people without a phone. It behaves like WhatsApp where waghl depends on it, not like a
//! happy path: QR codes rotate on WhatsApp's schedule and run out; a scan pairs and the
//! pairing survives restarts (the "keys" are a file under `sessions/sim/`); a network drop
//! heals by itself and messages sent meanwhile arrive afterwards; a logout or a ban is
//! terminal; sends get server acks and later receipts, and a resend of the same id is not a
//! second message; numbers ending in `0000` are not on WhatsApp and sends to numbers ending
//! in `9999` are refused by the server after they returned; a socket can die silently
//! (a zombie) for the health check to find.
//!
//! The control surface (`/sim/{id}/…`, see `http/sim.rs`) drives it as a phone and the
//! WhatsApp servers would.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{BoxFuture, Link, Pairing, ParkReason, ReceiptStatus, Stored, Transport, WaError, WaEvent, WaSession};
use crate::crypto::random_hex;
use crate::domain::jid::phone_of;
use crate::domain::phone::Phone;
use crate::domain::{Content, InboundMessage, LocationId, Media, MediaKind, OutgoingContent};

/// WhatsApp's QR schedule: the first code lives 60 s, then five more live 20 s each.
const FIRST_QR: Duration = Duration::from_secs(60);
const NEXT_QR: Duration = Duration::from_secs(20);
const MORE_QRS: usize = 5;
/// How long an inbound request waits for waghl to store the message.
const STORE_TIMEOUT: Duration = Duration::from_secs(30);

/// The simulated WhatsApp servers: every simulated session, and what they persisted.
pub struct SimWorld {
    dir: PathBuf,
    /// Scales the QR schedule (1.0 = WhatsApp's real timings; tests use ~0.01).
    time_scale: f64,
    sessions: Mutex<HashMap<String, Arc<SimSession>>>,
    /// Messages WhatsApp holds for each location while its device is offline; they outlive a
    /// client (a restarted client receives them).
    held: Mutex<HashMap<String, Arc<Mutex<Vec<Held>>>>>,
    /// Locations whose device store became unreadable: every start fails.
    broken: Mutex<std::collections::HashSet<String>>,
    /// Armed by `POST /sim/{id}/panic`: the next call of that method of that location's client
    /// panics, so tests can prove a panic in waghl's tasks is caught (sim only).
    panics: Arc<Mutex<std::collections::HashSet<(String, PanicAt)>>>,
}

/// The client method that panics when called next (`POST /sim/{id}/panic`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PanicAt {
    /// The session actor's health check asks for the link state.
    Link,
    /// The outbound relay resolves a recipient.
    OnWhatsapp,
    /// The inbound relay downloads media.
    Download,
}

type Held = (Box<InboundMessage>, Option<Vec<u8>>);

/// What a simulated device keeps on disk, as whatsapp-rust keeps its keys. What it sent is
/// kept apart, one JSON line per message appended (see [`SimSession::record_sent`]).
#[derive(Default, Serialize, Deserialize)]
struct Persisted {
    phone: Option<String>,
    logged_out: bool,
    /// LID (digits) → phone, as revealed by WhatsApp.
    lids: HashMap<String, String>,
}

/// A message the bridge sent, as the recipient's phone would show it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SentMessage {
    pub id: String,
    pub to: String,
    pub kind: String,
    pub text: Option<String>,
    pub caption: Option<String>,
    pub mime: Option<String>,
    pub bytes: Option<usize>,
    pub file_name: Option<String>,
    pub reply_to: Option<String>,
    /// When WhatsApp accepted it (unix ms).
    #[serde(default)]
    pub at: i64,
}

/// `POST /sim/{id}/inbound`: a message as WhatsApp would deliver it (ARCHITECTURE.md).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimInbound {
    pub from: String,
    pub push_name: Option<String>,
    pub id: Option<String>,
    pub text: Option<String>,
    pub media: Option<SimMedia>,
    #[serde(default)]
    pub from_me: bool,
    pub timestamp: Option<i64>,
    pub lid: Option<String>,
    pub group: Option<String>,
    pub reply_to: Option<String>,
    pub reaction: Option<SimTarget>,
    pub edit: Option<SimTarget>,
    pub delete: Option<SimTarget>,
    pub location: Option<SimLocation>,
    pub contact: Option<SimContact>,
    #[serde(default)]
    pub status: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimMedia {
    pub kind: String,
    pub mime: String,
    pub data_base64: String,
    pub caption: Option<String>,
    pub file_name: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct SimTarget {
    pub id: String,
    pub emoji: Option<String>,
    pub text: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct SimLocation {
    pub lat: f64,
    pub lng: f64,
    pub name: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct SimContact {
    pub name: String,
    pub phones: Vec<String>,
}

/// Why a control request could not be carried out; the HTTP layer maps these to statuses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SimError {
    #[error("no simulated session runs for this location")]
    NoSession,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("waghl did not store the message in time")]
    NotStored,
}

/// What `inbound` did with a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// waghl stored it (and WhatsApp was acknowledged).
    Stored(String),
    /// The device is offline: WhatsApp holds it and delivers it on reconnect.
    Queued(String),
}

struct SimSession {
    location: String,
    file: PathBuf,
    sent_file: PathBuf,
    media_dir: PathBuf,
    time_scale: f64,
    /// Events in order, forwarded into waghl's bounded channel by one task; dropping the
    /// sender ends the stream once everything queued was delivered (the client ended).
    events: Mutex<Option<mpsc::UnboundedSender<WaEvent>>>,
    state: Mutex<SimState>,
    held: Arc<Mutex<Vec<Held>>>,
    /// Stops the session's background tasks (QR rotation, reconnects).
    cancel: CancellationToken,
    panics: Arc<Mutex<std::collections::HashSet<(String, PanicAt)>>>,
}

struct SimState {
    link: Link,
    /// Ids of every message the bridge sent from this device (loaded from the sent log).
    sent_ids: std::collections::HashSet<String>,
    qr: Option<String>,
    pair_code: Option<String>,
    persisted: Persisted,
}

impl SimWorld {
    pub fn new(sessions_dir: &Path, time_scale: f64) -> Arc<Self> {
        Arc::new(Self {
            dir: sessions_dir.join("sim"),
            time_scale,
            sessions: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            broken: Mutex::default(),
            panics: Arc::default(),
        })
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<String, Arc<SimSession>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn session(&self, location: &str) -> Result<Arc<SimSession>, SimError> {
        self.sessions().get(location).cloned().ok_or(SimError::NoSession)
    }

    fn held_for(&self, location: &str) -> Arc<Mutex<Vec<Held>>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.entry(location.to_owned()).or_default().clone()
    }

    fn file(&self, location: &str) -> PathBuf {
        self.dir.join(format!("{location}.json"))
    }

    /// The phone scans the QR code (or enters the pairing code): the device is linked.
    pub fn scan(&self, location: &str, phone: &str) -> Result<(), SimError> {
        let phone = e164(phone)?;
        if phone.ends_with("0000") {
            return Err(SimError::Invalid(format!("{phone} is not on WhatsApp")));
        }
        let session = self.session(location)?;
        {
            let mut state = session.state();
            if state.link != Link::Pairing {
                return Err(SimError::Conflict("the session is not pairing".into()));
            }
            state.link = Link::Connected;
            state.qr = None;
            state.pair_code = None;
            // New keys; the sent log stays (it is the phones' history).
            state.persisted.phone = Some(phone.clone());
            state.persisted.logged_out = false;
            state.persisted.lids.clear();
            session.save(&state.persisted);
        }
        session.emit(WaEvent::Paired { phone: phone.clone() });
        session.emit(WaEvent::Connected { phone });
        Ok(())
    }

    /// The current QR code of a pairing session.
    pub fn qr(&self, location: &str) -> Result<String, SimError> {
        self.session(location)?
            .state()
            .qr
            .clone()
            .ok_or_else(|| SimError::Conflict("no QR code is showing".into()))
    }

    /// A message arrives from WhatsApp. Answers once waghl stored it, or at once when the
    /// device is offline (WhatsApp holds it and delivers it on reconnect).
    pub async fn inbound(&self, location: &str, request: SimInbound) -> Result<Delivery, SimError> {
        let session = self.session(location)?;
        let (message, media) = build_message(request)?;
        let id = message.id.clone();
        let media_ref = match media {
            Some(bytes) => Some(session.store_media(&id, &bytes)?),
            None => None,
        };
        {
            // Under the state lock, so a reconnect cannot drain the queue in between.
            let state = session.state();
            if state.persisted.phone.is_none() || state.persisted.logged_out {
                return Err(SimError::Conflict("the session is not paired".into()));
            }
            if state.link != Link::Connected {
                session.held().push((message, media_ref));
                return Ok(Delivery::Queued(id));
            }
        }
        let (stored, confirmed) = Stored::new();
        session.emit(WaEvent::Message {
            message,
            media_ref,
            stored,
        });
        match tokio::time::timeout(STORE_TIMEOUT, confirmed).await {
            Ok(Ok(())) => Ok(Delivery::Stored(id)),
            _ => Err(SimError::NotStored),
        }
    }

    /// WhatsApp reports that the recipient's phone received or read a message.
    pub fn receipt(&self, location: &str, id: &str, status: ReceiptStatus) -> Result<(), SimError> {
        let session = self.session(location)?;
        if !session.state().sent_ids.contains(id) {
            return Err(SimError::Invalid(format!("no message {id} was sent")));
        }
        session.emit(WaEvent::Receipt {
            ids: vec![id.to_owned()],
            status,
        });
        Ok(())
    }

    /// The network drops for `seconds`; the transport reconnects by itself afterwards.
    pub fn disconnect(&self, location: &str, seconds: f64) -> Result<(), SimError> {
        let session = self.session(location)?;
        {
            let mut state = session.state();
            if state.link != Link::Connected {
                return Err(SimError::Conflict("the session is not connected".into()));
            }
            state.link = Link::Reconnecting;
        }
        session.emit(WaEvent::Disconnected);
        let down = Duration::from_secs_f64(seconds.max(0.0));
        let reconnecting = session.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = reconnecting.cancel.cancelled() => {}
                () = tokio::time::sleep(down) => reconnecting.come_online(),
            }
        });
        Ok(())
    }

    /// The phone removes the linked device: terminal.
    pub fn logout(&self, location: &str) -> Result<(), SimError> {
        let session = self.session(location)?;
        session.mark_logged_out();
        session.emit(WaEvent::LoggedOut);
        session.end();
        Ok(())
    }

    /// WhatsApp bans the number for a while.
    pub fn ban(&self, location: &str) -> Result<(), SimError> {
        let session = self.session(location)?;
        session.emit(WaEvent::Parked(ParkReason::TemporaryBan));
        session.end();
        Ok(())
    }

    /// The socket dies without any event: the client still claims to run (a zombie).
    pub fn kill_silently(&self, location: &str) -> Result<(), SimError> {
        let session = self.session(location)?;
        session.state().link = Link::Dead;
        Ok(())
    }

    /// The device's key store becomes unreadable: from now on every start of this location's
    /// client fails, as a corrupted store would make it.
    pub fn break_store(&self, location: &str) {
        self.broken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(location.to_owned());
    }

    /// The next call of `at` on this location's client panics.
    pub fn arm_panic(&self, location: &str, at: PanicAt) {
        self.panics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((location.to_owned(), at));
    }

    /// WhatsApp reveals the phone behind a LID.
    pub fn reveal_lid(&self, location: &str, lid: &str, phone: &str) -> Result<(), SimError> {
        let phone = e164(phone)?;
        let lid = lid.trim_end_matches("@lid").to_owned();
        let session = self.session(location)?;
        {
            let mut state = session.state();
            state.persisted.lids.insert(lid.clone(), phone.clone());
            session.save(&state.persisted);
        }
        session.emit(WaEvent::LidMapping { lid, phone });
        Ok(())
    }

    /// What the bridge sent, oldest first; read from disk, so it survives restarts.
    pub fn sent(&self, location: &str) -> Vec<SentMessage> {
        load_sent(&self.sent_file(location))
    }

    fn sent_file(&self, location: &str) -> PathBuf {
        self.dir.join(format!("{location}.sent.jsonl"))
    }
}

impl SimSession {
    fn state(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn held(&self) -> MutexGuard<'_, Vec<Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a sent message to the device's log.
    fn record_sent(&self, message: &SentMessage) {
        use std::io::Write as _;
        let line = serde_json::to_string(message).expect("serialisable");
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.sent_file)
            .and_then(|mut file| writeln!(file, "{line}"));
        if let Err(e) = appended {
            tracing::error!(location.id = %self.location, error = %e, "the simulated device could not log a sent message");
        }
    }

    fn save(&self, persisted: &Persisted) {
        let text = serde_json::to_vec_pretty(persisted).expect("serialisable");
        if let Err(e) = write_private(&self.file, &text) {
            tracing::error!(location.id = %self.location, error = %e, "the simulated device could not save its state");
        }
    }

    /// Queues an event; the forwarding task delivers them in this order.
    fn emit(&self, event: WaEvent) {
        if let Some(events) = &*self.events.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = events.send(event);
        }
    }

    /// The client ends: no more events, link dead, background tasks stopped.
    fn end(&self) {
        self.cancel.cancel();
        let mut state = self.state();
        state.link = Link::Dead;
        state.qr = None;
        state.pair_code = None;
        drop(state);
        self.events.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    fn mark_logged_out(&self) {
        let mut state = self.state();
        state.persisted.logged_out = true;
        self.save(&state.persisted);
    }

    /// Reconnected after a drop: connected again, and WhatsApp delivers what it held, in
    /// order. A held message waghl does not confirm goes back to be delivered on the next
    /// connection, as WhatsApp redelivers unacknowledged messages.
    fn come_online(&self) {
        let mut state = self.state();
        if !matches!(state.link, Link::Reconnecting | Link::Connecting) {
            return;
        }
        state.link = Link::Connected;
        let phone = state.persisted.phone.clone().unwrap_or_default();
        // Under the state lock: a message arriving now is queued after these.
        self.emit(WaEvent::Connected { phone });
        let held = std::mem::take(&mut *self.held());
        for (message, media_ref) in held {
            let (stored, confirmed) = Stored::new();
            self.emit(WaEvent::Message {
                message: message.clone(),
                media_ref: media_ref.clone(),
                stored,
            });
            let requeue = self.held.clone();
            tokio::spawn(async move {
                if confirmed.await.is_err() {
                    requeue
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((message, media_ref));
                }
            });
        }
        drop(state);
    }

    fn scaled(&self, duration: Duration) -> Duration {
        duration.mul_f64(self.time_scale)
    }

    /// Shows QR codes on WhatsApp's schedule until one is scanned or they run out.
    async fn rotate_qr_codes(self: Arc<Self>) {
        let schedule = std::iter::once(FIRST_QR).chain(std::iter::repeat_n(NEXT_QR, MORE_QRS));
        for valid_for in schedule {
            let code = format!("2@{},{},{}", random_hex(16), random_hex(16), random_hex(8));
            {
                let mut state = self.state();
                if state.link != Link::Pairing {
                    return;
                }
                state.qr = Some(code.clone());
            }
            self.emit(WaEvent::Qr { code, valid_for });
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep(self.scaled(valid_for)) => {}
            }
        }
        if self.state().link == Link::Pairing {
            self.emit(WaEvent::QrExhausted);
            self.end();
        }
    }

    /// Pairing by phone number: one code, valid as long as the QR codes would have been.
    async fn await_pair_code(self: Arc<Self>) {
        let code = random_hex(4).to_uppercase();
        self.state().pair_code = Some(code.clone());
        self.emit(WaEvent::PairCode { code });
        let lifetime = FIRST_QR + NEXT_QR * MORE_QRS as u32;
        tokio::select! {
            () = self.cancel.cancelled() => {}
            () = tokio::time::sleep(self.scaled(lifetime)) => {
                if self.state().link == Link::Pairing {
                    self.emit(WaEvent::QrExhausted);
                    self.end();
                }
            }
        }
    }

    fn store_media(&self, id: &str, bytes: &[u8]) -> Result<Vec<u8>, SimError> {
        let key = format!("{}-{}", sanitize(id), random_hex(4));
        write_private(&self.media_dir.join(&key), bytes).map_err(|e| SimError::Invalid(e.to_string()))?;
        Ok(key.into_bytes())
    }
}

impl SimSession {
    /// Panics when a test armed a panic at `at` for this location (and disarms it).
    fn panic_if_armed(&self, at: PanicAt) {
        let armed = self
            .panics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(self.location.clone(), at));
        if armed {
            panic!("simulated panic in {at:?} (POST /sim/{{id}}/panic)");
        }
    }
}

impl WaSession for SimSession {
    fn link(&self) -> Link {
        self.panic_if_armed(PanicAt::Link);
        self.state().link
    }

    fn new_message_id(&self) -> String {
        message_id()
    }

    fn send<'a>(
        &'a self,
        to: &'a str,
        id: &'a str,
        content: &'a OutgoingContent,
        reply_to: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), WaError>> {
        Box::pin(async move {
            let phone = phone_of(to).unwrap_or_else(|| to.to_owned());
            {
                let mut state = self.state();
                if state.link != Link::Connected {
                    return Err(WaError::NotConnected);
                }
                if phone.ends_with("0000") {
                    return Err(WaError::NotOnWhatsApp);
                }
                // WhatsApp's server refuses after the send returned (a recipient that blocked
                // this number): numbers ending in 9999 here.
                if phone.ends_with("9999") {
                    drop(state);
                    self.emit(WaEvent::ServerRefused {
                        id: id.to_owned(),
                        code: "463".into(),
                    });
                    return Ok(());
                }
                // A resend of the same id is the same message, as on a real phone.
                if state.sent_ids.insert(id.to_owned()) {
                    self.record_sent(&sent_record(id, &phone, content, reply_to));
                }
            }
            self.emit(WaEvent::ServerAck { id: id.to_owned() });
            Ok(())
        })
    }

    fn on_whatsapp<'a>(&'a self, phone: &'a str) -> BoxFuture<'a, Result<Option<String>, WaError>> {
        Box::pin(async move {
            self.panic_if_armed(PanicAt::OnWhatsapp);
            if self.state().link != Link::Connected {
                return Err(WaError::NotConnected);
            }
            let digits = phone.trim_start_matches('+');
            Ok((!digits.ends_with("0000")).then(|| format!("{digits}@s.whatsapp.net")))
        })
    }

    fn download<'a>(&'a self, media_ref: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, WaError>> {
        Box::pin(async move {
            self.panic_if_armed(PanicAt::Download);
            let key = std::str::from_utf8(media_ref).map_err(|_| WaError::Failed("bad media reference".into()))?;
            tokio::fs::read(self.media_dir.join(sanitize(key)))
                .await
                .map_err(|e| match e.kind() {
                    // Deleted media is what expired media looks like on WhatsApp's servers.
                    std::io::ErrorKind::NotFound => {
                        WaError::Rejected("the media expired on WhatsApp's servers (404)".into())
                    }
                    _ => WaError::Failed(format!("media download failed: {e}")),
                })
        })
    }

    fn phone_for_lid<'a>(&'a self, lid: &'a str) -> BoxFuture<'a, Result<Option<String>, WaError>> {
        Box::pin(async move {
            let lid = lid.trim_end_matches("@lid");
            Ok(self.state().persisted.lids.get(lid).cloned())
        })
    }

    fn logout(&self) -> BoxFuture<'_, Result<(), WaError>> {
        Box::pin(async move {
            self.mark_logged_out();
            self.end();
            Ok(())
        })
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.end() })
    }
}

/// The simulated transport: starts [`SimSession`]s in a [`SimWorld`].
pub struct SimTransport {
    world: Arc<SimWorld>,
}

impl SimTransport {
    pub fn new(world: Arc<SimWorld>) -> Self {
        Self { world }
    }
}

impl Transport for SimTransport {
    fn start<'a>(
        &'a self,
        location: &'a LocationId,
        pairing: Pairing,
        events: mpsc::Sender<WaEvent>,
    ) -> BoxFuture<'a, Result<Arc<dyn WaSession>, WaError>> {
        Box::pin(async move {
            let world = &self.world;
            if world
                .broken
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(location.as_str())
            {
                return Err(WaError::Failed("the simulated device store is unreadable".into()));
            }
            let file = world.file(location.as_str());
            let persisted = load(&file);
            let sent_file = world.sent_file(location.as_str());
            let sent_ids = load_sent(&sent_file).into_iter().map(|m| m.id).collect();
            if let Some(dir) = sent_file.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let paired = persisted.phone.clone().filter(|_| !persisted.logged_out);
            let link = if paired.is_some() {
                Link::Connecting
            } else {
                Link::Pairing
            };
            let session = Arc::new(SimSession {
                location: location.to_string(),
                media_dir: world.dir.join("media").join(location.as_str()),
                file,
                sent_file,
                time_scale: world.time_scale,
                events: Mutex::new(Some(forward_in_order(events))),
                state: Mutex::new(SimState {
                    link,
                    sent_ids,
                    qr: None,
                    pair_code: None,
                    persisted,
                }),
                held: world.held_for(location.as_str()),
                cancel: CancellationToken::new(),
                panics: world.panics.clone(),
            });
            if let Some(previous) = world.sessions().insert(location.to_string(), session.clone()) {
                previous.end();
            }
            match (paired, pairing) {
                (Some(_), _) => session.come_online(),
                (None, Pairing::Qr) => {
                    tokio::spawn(session.clone().rotate_qr_codes());
                }
                (None, Pairing::Code { .. }) => {
                    tokio::spawn(session.clone().await_pair_code());
                }
            }
            Ok(session as Arc<dyn WaSession>)
        })
    }

    fn wipe<'a>(&'a self, location: &'a LocationId) -> BoxFuture<'a, Result<(), WaError>> {
        Box::pin(async move {
            let file = self.world.file(location.as_str());
            let mut persisted = load(&file);
            // The keys go; the sent log stays (it is the phones' history, not ours).
            persisted.phone = None;
            persisted.logged_out = false;
            persisted.lids.clear();
            write_private(&file, &serde_json::to_vec_pretty(&persisted).expect("serialisable"))
                .map_err(|e| WaError::Failed(e.to_string()))
        })
    }
}

/// An unbounded, ordered queue whose events one task forwards into `events` (waiting when it
/// is full). Dropping the returned sender ends the stream after the last queued event.
fn forward_in_order(events: mpsc::Sender<WaEvent>) -> mpsc::UnboundedSender<WaEvent> {
    let (queue, mut queued) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(event) = queued.recv().await {
            if events.send(event).await.is_err() {
                return;
            }
        }
    });
    queue
}

fn load_sent(file: &Path) -> Vec<SentMessage> {
    std::fs::read_to_string(file)
        .map(|text| text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
        .unwrap_or_default()
}

fn load(file: &Path) -> Persisted {
    std::fs::read(file)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Writes a file readable only by waghl's user (mode 0600, directory 0700).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    #[cfg(unix)]
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    std::fs::rename(tmp, path)
}

fn sanitize(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

/// `+15551234567` from a phone as the control API receives it.
fn e164(phone: &str) -> Result<String, SimError> {
    Phone::parse_international(phone)
        .map(Phone::into_string)
        .map_err(|e| SimError::Invalid(e.to_string()))
}

/// A new message id in WhatsApp Web's format.
fn message_id() -> String {
    format!("3EB0{}", random_hex(8).to_uppercase())
}

fn sent_record(id: &str, phone: &str, content: &OutgoingContent, reply_to: Option<&str>) -> SentMessage {
    let mut record = SentMessage {
        id: id.to_owned(),
        to: phone.to_owned(),
        kind: "text".into(),
        text: None,
        caption: None,
        mime: None,
        bytes: None,
        file_name: None,
        reply_to: reply_to.map(str::to_owned),
        at: crate::time::now_ms(),
    };
    match content {
        OutgoingContent::Text(text) => record.text = Some(text.clone()),
        OutgoingContent::Media {
            kind,
            mime,
            bytes,
            caption,
            file_name,
        } => {
            record.kind = kind.as_str().into();
            record.mime = Some(mime.clone());
            record.bytes = Some(bytes.len());
            record.caption = caption.clone();
            record.file_name = file_name.clone();
        }
    }
    record
}

/// Turns a control request into the message WhatsApp would deliver (and its media bytes).
fn build_message(request: SimInbound) -> Result<(Box<InboundMessage>, Option<Vec<u8>>), SimError> {
    use base64::Engine as _;
    let other = e164(&request.from)?;
    let other_jid = format!("{}@s.whatsapp.net", other.trim_start_matches('+'));
    let (sender, sender_phone) = match (&request.lid, request.from_me) {
        (Some(lid), false) => (format!("{}@lid", lid.trim_end_matches("@lid")), None),
        _ => (other_jid.clone(), Some(other.clone())),
    };
    let chat = match &request.group {
        Some(group) if group.contains('@') => group.clone(),
        Some(group) => format!("{group}@g.us"),
        None if request.status => "status@broadcast".into(),
        None => match &request.lid {
            Some(lid) if !request.from_me => format!("{}@lid", lid.trim_end_matches("@lid")),
            _ => other_jid,
        },
    };
    let mut media_bytes = None;
    let content = if let Some(media) = request.media {
        let kind = MediaKind::parse(&media.kind)
            .ok_or_else(|| SimError::Invalid(format!("media.kind {:?} is not a WhatsApp media kind", media.kind)))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(media.data_base64.trim())
            .map_err(|_| SimError::Invalid("media.data_base64 is not base64".into()))?;
        let size = bytes.len() as u64;
        media_bytes = Some(bytes);
        Content::Media(Media {
            kind,
            mime: media.mime,
            caption: media.caption,
            file_name: media.file_name,
            size: Some(size),
        })
    } else if let Some(reaction) = request.reaction {
        Content::Reaction {
            target: reaction.id,
            emoji: reaction.emoji.unwrap_or_default(),
        }
    } else if let Some(edit) = request.edit {
        Content::Edit {
            target: edit.id,
            text: edit.text.unwrap_or_default(),
        }
    } else if let Some(delete) = request.delete {
        Content::Delete { target: delete.id }
    } else if let Some(location) = request.location {
        Content::Location {
            lat: location.lat,
            lng: location.lng,
            name: location.name,
        }
    } else if let Some(contact) = request.contact {
        Content::Contact {
            name: contact.name,
            phones: contact.phones,
        }
    } else if let Some(text) = request.text {
        Content::Text { text }
    } else {
        return Err(SimError::Invalid("give text, media, or another message kind".into()));
    };
    let message = InboundMessage {
        id: request.id.unwrap_or_else(message_id),
        is_group: request.group.is_some(),
        is_status: request.status,
        chat,
        sender,
        sender_phone,
        push_name: request.push_name,
        timestamp: request.timestamp.map_or_else(crate::time::now_ms, |s| s * 1000),
        from_me: request.from_me,
        reply_to: request.reply_to,
        content,
    };
    Ok((Box::new(message), media_bytes))
}
