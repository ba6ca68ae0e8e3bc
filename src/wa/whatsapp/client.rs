//! The session waghl drives: one running client (send, look up, download, log out, stop), the
//! state its event handler, hook, watcher and pairing task share, and a process-wide list of
//! the clients built, weakly, to prove that none outlives its stop.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use whatsapp_rust::wacore::iq::devices::RemoveCompanionDeviceSpec;
use whatsapp_rust::{
    Client, ClientError, ContactError, IqError, IsOnWhatsAppResult, Jid, SendError, SendOptions, UploadOptions,
};

use super::SHUTDOWN_TIMEOUT;
use super::convert::{
    Framing, OutgoingMedia, downloadable, media_message, media_seconds, media_type, outgoing_text, phone_of_jid,
};
use super::pairing::PairSignal;
use super::version::WebVersion;
use crate::domain::{MessageContext, OutgoingContent};
use crate::wa::{BoxFuture, Link, Presence, WaError, WaSession};

/// How long `logout` waits for a dropped connection to come back, to unlink the device.
const LOGOUT_CONNECT_WAIT: Duration = Duration::from_secs(5);
/// How long a failed unlink request waits for the server's word that the device was removed.
const REMOVAL_WAIT: Duration = Duration::from_secs(2);
/// Bound on the set of LIDs already announced as `LidMapping` and on the recovered messages
/// waiting for their answer (caches, not records).
const CACHE_BOUND: usize = 10_000;

/// Every client this process built, weakly: a client that outlives its stop (a leak, as the
/// `wa-rs` fork has) shows up in [`live_clients`].
static CLIENTS: std::sync::Mutex<Vec<std::sync::Weak<Client>>> = std::sync::Mutex::new(Vec::new());

pub(super) fn track(client: &Arc<Client>) {
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
pub(super) struct WhatsAppSession {
    pub(super) shared: Arc<Shared>,
    pub(super) client: Arc<Client>,
    /// Asks the watcher for a graceful shutdown.
    pub(super) stop: CancellationToken,
    /// Cancelled by the watcher once the run loop has ended.
    pub(super) ended: CancellationToken,
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
        context: &'a MessageContext,
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
            let own = self.client.pn().ok_or(WaError::NotConnected)?;
            let framing = Framing {
                chat: &jid,
                own: &own,
                context,
            };
            let message = match content {
                OutgoingContent::Text(text) => outgoing_text(text, &framing),
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
                    media_message(
                        OutgoingMedia {
                            kind: *kind,
                            mime,
                            caption: caption.clone(),
                            file_name: file_name.clone(),
                            seconds: media_seconds(*kind, bytes),
                        },
                        upload.into(),
                        &framing,
                    )
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
            let own = self.client.pn().ok_or(WaError::NotConnected)?;
            // Our own request rather than the crate's `logout`, which skips it when offline and
            // only logs a refusal: a device the phone still lists must not be reported gone.
            if let Err(e) = self.client.execute(RemoveCompanionDeviceSpec::new(&own)).await {
                // The server may end the stream (device removed) before its answer is read.
                let _ = tokio::time::timeout(REMOVAL_WAIT, self.ended.cancelled()).await;
                if !self.shared.removed.load(Ordering::Acquire) {
                    return Err(match iq_error(e) {
                        WaError::NotConnected => WaError::NotConnected,
                        other => WaError::Rejected(format!("WhatsApp did not unlink the device: {other}")),
                    });
                }
            }
            // Unlinked: the server ends the stream; the client stops with its keys, which the
            // caller wipes.
            self.stop.cancel();
            if tokio::time::timeout(SHUTDOWN_TIMEOUT, self.ended.cancelled())
                .await
                .is_err()
            {
                tracing::warn!(location.id = %self.shared.location, "the client did not stop after unlinking");
            }
            tracing::info!(location.id = %self.shared.location, "WhatsApp device unlinked");
            Ok(())
        })
    }

    fn reconnect(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if !self.ended.is_cancelled() {
                self.client.reconnect_immediately().await;
            }
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
pub(super) struct Shared {
    pub(super) location: String,
    /// `Link` encoded by `link_code`.
    pub(super) link: AtomicU8,
    /// The store holds a linked device (known at start, or paired since).
    pub(super) paired: AtomicBool,
    /// WhatsApp said this device was removed (logged out).
    pub(super) removed: AtomicBool,
    /// Pairing by phone number: QR codes are not shown, and QR exhaustion is not terminal.
    pub(super) by_code: AtomicBool,
    /// A `Weak`, set once after the build (see the module docs on cycles).
    pub(super) client: OnceLock<Weak<Client>>,
    pub(super) pair_signals: mpsc::UnboundedSender<PairSignal>,
    /// LIDs already announced as `WaEvent::LidMapping` during this client's life.
    pub(super) announced_lids: Mutex<HashSet<String>>,
    /// Messages the phone sent again that the crate dispatched as events, by id, until the
    /// hook sees the phone's answer that carried them (see `convert/recovered.rs`).
    recovered: Mutex<HashMap<String, oneshot::Receiver<()>>>,
    /// The process's WhatsApp Web version, told when WhatsApp refuses it.
    pub(super) version: Arc<WebVersion>,
    /// What the business's presence shows while connected.
    pub(super) presence: Presence,
}

impl Shared {
    pub(super) fn new(
        location: &str,
        pair_signals: mpsc::UnboundedSender<PairSignal>,
        version: Arc<WebVersion>,
        presence: Presence,
    ) -> Self {
        Self {
            location: location.to_owned(),
            link: AtomicU8::new(link_code(Link::Connecting)),
            paired: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            by_code: AtomicBool::new(false),
            client: OnceLock::new(),
            pair_signals,
            announced_lids: Mutex::new(HashSet::new()),
            recovered: Mutex::new(HashMap::new()),
            version,
            presence,
        }
    }

    pub(super) fn link(&self) -> Link {
        link_of(self.link.load(Ordering::Acquire))
    }

    /// `Dead` is final: a late `Disconnected` does not revive a client that has ended.
    pub(super) fn set_link(&self, link: Link) {
        let code = link_code(link);
        let _ = self.link.fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
            (current != link_code(Link::Dead)).then_some(code)
        });
    }

    pub(super) fn signal(&self, signal: PairSignal) {
        let _ = self.pair_signals.send(signal);
    }

    /// Sets the business's presence to `unavailable` (unless it is kept available), `after` a
    /// while: the crate announces `available` on every connection and after every push-name
    /// change, and ours must come after its own.
    pub(super) fn keep_presence(&self, after: Duration) {
        if self.presence == Presence::Available {
            return;
        }
        let Some(client) = self.client.get().cloned() else {
            return;
        };
        let location = self.location.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let Some(client) = client.upgrade() else {
                return;
            };
            if let Err(e) = client.presence().set_unavailable().await {
                tracing::debug!(location.id = %location, error = ?e, "could not set the presence to unavailable");
            }
        });
    }

    /// The device's own number (E.164), or `""` before pairing.
    pub(super) fn own_phone(&self) -> String {
        self.own_jid().and_then(|jid| phone_of_jid(&jid)).unwrap_or_default()
    }

    /// The device's own phone-number JID (without the device), once paired.
    pub(super) fn own_jid(&self) -> Option<Jid> {
        let client = self.client.get().and_then(Weak::upgrade)?;
        client.pn().map(|jid| jid.to_non_ad())
    }

    /// Keeps the confirmation of a recovered message the crate dispatched, for the hook.
    pub(super) fn keep_recovered(&self, id: &str, stored: oneshot::Receiver<()>) {
        let mut recovered = self.recovered.lock().unwrap_or_else(|p| p.into_inner());
        if recovered.len() >= CACHE_BOUND {
            // The answers these belonged to were never seen by the hook; they are stored anyway.
            recovered.clear();
        }
        recovered.insert(id.to_owned(), stored);
    }

    /// The confirmation of a recovered message already queued, if it was.
    pub(super) fn take_recovered(&self, id: &str) -> Option<oneshot::Receiver<()>> {
        self.recovered.lock().unwrap_or_else(|p| p.into_inner()).remove(id)
    }

    /// Whether this LID is new to this client (so worth a `LidMapping` event).
    pub(super) fn announce_lid(&self, lid: &str) -> bool {
        let mut announced = self.announced_lids.lock().unwrap_or_else(|p| p.into_inner());
        if announced.contains(lid) {
            return false;
        }
        if announced.len() >= CACHE_BOUND {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(signals: mpsc::UnboundedSender<PairSignal>) -> Shared {
        let version = WebVersion::new(Arc::new(whatsapp_rust::http::UreqHttpClient::new()));
        Shared::new("loc", signals, Arc::new(version), Presence::Unavailable)
    }

    #[test]
    fn the_link_never_comes_back_from_dead() {
        let (signals, _) = mpsc::unbounded_channel();
        let shared = shared(signals);
        shared.set_link(Link::Connected);
        assert_eq!(shared.link(), Link::Connected);
        shared.set_link(Link::Dead);
        shared.set_link(Link::Reconnecting);
        assert_eq!(shared.link(), Link::Dead);
    }

    #[test]
    fn each_lid_is_announced_once() {
        let (signals, _) = mpsc::unbounded_channel();
        let shared = shared(signals);
        assert!(shared.announce_lid("123"));
        assert!(!shared.announce_lid("123"));
        assert!(shared.announce_lid("456"));
    }
}
