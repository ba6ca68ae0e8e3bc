//! The linked device waghl runs on the simulated WhatsApp: the `Transport` and `WaSession`
//! seam, with a device store on disk ("keys", what it sent, revealed LIDs, received media).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use whatsapp_rust::Jid;
use whatsapp_rust::waproto::codec::{message_decode, message_to_vec};
use whatsapp_rust::waproto::whatsapp as wa;

use super::proto;
use super::servers::SimWorld;
use super::{
    FIRST_QR, Held, MORE_QRS, NEXT_QR, PanicAt, Persisted, SentMessage, SimError, load, message_id, sanitize,
    write_private,
};
use crate::crypto::random_hex;
use crate::domain::jid::phone_of;
use crate::domain::{LocationId, MessageContext, OutgoingContent};
use crate::wa::whatsapp::convert::{Framing, downloadable};
use crate::wa::{BoxFuture, Link, Pairing, Stored, Transport, WaError, WaEvent, WaSession};

pub(super) struct SimSession {
    pub(super) location: String,
    pub(super) file: PathBuf,
    pub(super) sent_file: PathBuf,
    pub(super) media_dir: PathBuf,
    pub(super) time_scale: f64,
    /// Events in order, forwarded into waghl's bounded channel by one task; dropping the
    /// sender ends the stream once everything queued was delivered (the client ended).
    pub(super) events: Mutex<Option<mpsc::UnboundedSender<WaEvent>>>,
    pub(super) state: Mutex<SimState>,
    pub(super) held: Arc<Mutex<Vec<Held>>>,
    /// Stops the session's background tasks (QR rotation, reconnects).
    pub(super) cancel: CancellationToken,
    pub(super) panics: Arc<Mutex<std::collections::HashSet<(String, PanicAt)>>>,
}

pub(super) struct SimState {
    pub(super) link: Link,
    /// Ids of the messages the bridge sent lately from this device (the sent log's last ones
    /// at start).
    pub(super) sent_ids: super::recent::RecentIds,
    pub(super) qr: Option<String>,
    pub(super) pair_code: Option<String>,
    pub(super) persisted: Persisted,
}

impl SimSession {
    pub(super) fn state(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn held(&self) -> MutexGuard<'_, Vec<Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a sent message to the device's log, as the proto the bridge built.
    pub(super) fn record_sent(&self, line: &SentLine) {
        use std::io::Write as _;
        let line = serde_json::to_string(line).expect("serialisable");
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.sent_file)
            .and_then(|mut file| writeln!(file, "{line}"));
        if let Err(e) = appended {
            tracing::error!(location.id = %self.location, error = %e, "the simulated device could not log a sent message");
        }
    }

    pub(super) fn save(&self, persisted: &Persisted) {
        let text = serde_json::to_vec_pretty(persisted).expect("serialisable");
        if let Err(e) = write_private(&self.file, &text) {
            tracing::error!(location.id = %self.location, error = %e, "the simulated device could not save its state");
        }
    }

    /// Queues an event; the forwarding task delivers them in this order.
    pub(super) fn emit(&self, event: WaEvent) {
        if let Some(events) = &*self.events.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = events.send(event);
        }
    }

    /// The client ends: no more events, link dead, background tasks stopped.
    pub(super) fn end(&self) {
        self.cancel.cancel();
        let mut state = self.state();
        state.link = Link::Dead;
        state.qr = None;
        state.pair_code = None;
        drop(state);
        self.events.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    pub(super) fn mark_logged_out(&self) {
        let mut state = self.state();
        state.persisted.logged_out = true;
        self.save(&state.persisted);
    }

    /// The network drops: `Disconnected`, until [`SimSession::come_online`].
    pub(super) fn go_offline(&self) -> Result<(), SimError> {
        {
            let mut state = self.state();
            if state.link != Link::Connected {
                return Err(SimError::Conflict("the session is not connected".into()));
            }
            state.link = Link::Reconnecting;
        }
        self.emit(WaEvent::Disconnected);
        Ok(())
    }

    /// Reconnected after a drop: connected again, and WhatsApp delivers what it held, in
    /// order. A held message waghl does not confirm goes back to be delivered on the next
    /// connection, as WhatsApp redelivers unacknowledged messages.
    pub(super) fn come_online(&self) {
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

    pub(super) fn scaled(&self, duration: Duration) -> Duration {
        duration.mul_f64(self.time_scale)
    }

    /// Shows QR codes on WhatsApp's schedule until one is scanned or they run out.
    pub(super) async fn rotate_qr_codes(self: Arc<Self>) {
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
    pub(super) async fn await_pair_code(self: Arc<Self>) {
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

    /// Keeps a received file on the simulated media servers; returns its direct path.
    pub(super) fn store_media(&self, id: &str, bytes: &[u8]) -> Result<String, SimError> {
        let key = format!("{}-{}", sanitize(id), random_hex(4));
        write_private(&self.media_dir.join(&key), bytes).map_err(|e| SimError::Invalid(e.to_string()))?;
        Ok(format!("{MEDIA_PREFIX}{key}"))
    }
}

impl SimSession {
    /// Panics when a test armed a panic at `at` for this location (and disarms it).
    pub(super) fn panic_if_armed(&self, at: PanicAt) {
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
        context: &'a MessageContext,
    ) -> BoxFuture<'a, Result<(), WaError>> {
        Box::pin(async move {
            let phone = phone_of(to).unwrap_or_else(|| to.to_owned());
            let jid: Jid = to
                .parse()
                .map_err(|_| WaError::Rejected(format!("{to} is not a WhatsApp address")))?;
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
                if state.sent_ids.insert(id) {
                    let own = Jid::pn(
                        state
                            .persisted
                            .phone
                            .as_deref()
                            .unwrap_or_default()
                            .trim_start_matches('+'),
                    );
                    let framing = Framing {
                        chat: &jid,
                        own: &own,
                        context,
                    };
                    let message = proto::outgoing(content, &framing, &format!("{MEDIA_PREFIX}sent-{}", sanitize(id)));
                    self.record_sent(&SentLine::new(id, &phone, &message));
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
            // What the real transport keeps, too: the media sub-message, encoded.
            let message =
                message_decode(media_ref).map_err(|_| WaError::Rejected("the media reference is unreadable".into()))?;
            let key = downloadable(&message)
                .and_then(|media| media.direct_path())
                .and_then(|path| path.strip_prefix(MEDIA_PREFIX))
                .ok_or_else(|| WaError::Rejected("the media reference names no media".into()))?;
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

    fn reconnect(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.go_offline().is_ok() {
                self.come_online();
            }
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
            repair_sent_log(&sent_file);
            let sent_ids = load_sent(&sent_file).into_iter().map(|line| line.id).collect();
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

/// Where the simulated media servers keep files (the direct path's prefix).
const MEDIA_PREFIX: &str = "/sim/";

/// One line of a device's sent log: the proto the bridge built, base64.
#[derive(Serialize, Deserialize)]
pub(super) struct SentLine {
    pub id: String,
    to: String,
    at: i64,
    proto: String,
}

impl SentLine {
    fn new(id: &str, to: &str, message: &wa::Message) -> Self {
        Self {
            id: id.to_owned(),
            to: to.to_owned(),
            at: crate::time::now_ms(),
            proto: BASE64.encode(message_to_vec(message)),
        }
    }

    /// What the recipient's phone shows for it, read back through `convert`.
    pub fn shown(&self) -> SentMessage {
        let message = BASE64
            .decode(&self.proto)
            .ok()
            .and_then(|bytes| message_decode(&bytes).ok())
            .unwrap_or_default();
        proto::shown(&self.id, &self.to, &message, self.at)
    }
}

/// Drops a line torn by a crash in the middle of its append (the file does not end with a
/// newline); otherwise the next append would run on from it and spoil both. The send it
/// recorded never got its server ack, so the bridge sends that id again and it is logged then.
fn repair_sent_log(file: &Path) {
    let Ok(bytes) = std::fs::read(file) else { return };
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        return;
    }
    let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if let Err(e) = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .and_then(|f| f.set_len(keep as u64))
    {
        tracing::error!(error = %e, "could not repair the simulated device's sent log");
    }
}

/// The sent log; lines that do not read (an older format) are skipped.
pub(super) fn load_sent(file: &Path) -> Vec<SentLine> {
    std::fs::read_to_string(file)
        .map(|text| text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_torn_by_a_crash_is_dropped_and_the_next_append_starts_clean() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("loc.sent.jsonl");
        std::fs::write(&file, "{\"whole\":1}\n{\"torn\":").unwrap();
        repair_sent_log(&file);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "{\"whole\":1}\n");
        repair_sent_log(&file);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "{\"whole\":1}\n");
    }
}
