//! The real WhatsApp transport, on `whatsapp-rust` 0.7 (pinned `=0.7.0`: the crate changes
//! its API between minor versions). It implements the seam of `wa/mod.rs`; no type of the
//! crate leaves this folder. `client` is the session waghl drives, `events` the translation of
//! the crate's events and the durability hook, `pairing` the pairing-code task, `convert` the
//! pure message conversion (shared with the simulated WhatsApp), `device_store` the crate's
//! storage on waghl's database, `import` and `files` the device files of earlier versions.
//!
//! # Who owns what
//!
//! - **One client per location, its device keys in waghl's database.** `start` builds a `Bot`
//!   on a `DbBackend` (`device_store`): the device keys, the Signal sessions, the LID↔phone
//!   mappings and the crate's buffer of inbound messages that are not acknowledged yet live in
//!   `wa_devices`/`wa_device_keys`, sealed with the daemon's key, so the session can start on
//!   any instance of the database. Nothing is written under the sessions directory; device
//!   files that earlier versions kept there are imported once (`import`). `wipe` deletes the
//!   location's rows (and such a file). It runs only after the client has stopped, because the
//!   supervisor never runs two clients for one location.
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

mod client;
pub mod convert;
mod device_store;
mod events;
mod files;
mod import;
mod pairing;
mod version;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use whatsapp_rust::bot::Bot;
use whatsapp_rust::store::DeviceStore;

use super::{BoxFuture, Link, Pairing, ParkReason, Presence, Transport, WaError, WaEvent, WaSession};
use crate::domain::LocationId;
use crate::store::Store;
use client::{Shared, WhatsAppSession, track};
use device_store::DbBackend;
use events::{BusHandler, Sink, StoreHook, forward_in_order, watch};
use pairing::pair_by_code;
use version::WebVersion;

pub use client::live_clients;
pub use import::import_device_files;

/// How long a graceful shutdown may take: the crate's disconnect waits up to 5 s for pending
/// inbound commits and 5 s for outbound receipts, then flushes the device state.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// Starts whatsapp-rust clients, one per location, each on its device keys in the database.
pub struct WhatsAppTransport {
    store: Store,
    /// Where earlier versions kept device files: imported from, deleted from by `wipe`.
    sessions_dir: PathBuf,
    /// The WhatsApp test server to talk to instead of WhatsApp (test builds only).
    server: Option<TestServer>,
    /// WhatsApp Web's version, fetched once for every client of this process.
    version: Arc<WebVersion>,
    presence: Presence,
}

/// Where the WhatsApp test server (`crates/wa-testserver`) listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestServer {
    /// Its WebSocket, `ws://127.0.0.1:PORT/ws/chat`.
    pub ws_url: String,
    /// Its media (and version) endpoint, `http://127.0.0.1:PORT`: the `https://` URLs the
    /// crate builds for media go here.
    pub media_url: String,
}

impl WhatsAppTransport {
    pub fn new(store: Store, sessions_dir: &Path, server: Option<TestServer>, presence: Presence) -> Self {
        let http: Arc<dyn whatsapp_rust::http::HttpClient> = match &server {
            #[cfg(feature = "wa-test-server")]
            Some(server) => Arc::new(wa_testserver::LoopbackHttpClient::new(&server.media_url)),
            _ => Arc::new(whatsapp_rust::http::UreqHttpClient::new()),
        };
        Self {
            store,
            sessions_dir: sessions_dir.to_path_buf(),
            server,
            version: Arc::new(WebVersion::new(http)),
            presence,
        }
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
            // A device file of an earlier version holds this location's keys until imported;
            // starting without them would pair a new device over them.
            if let Err(e) = import::import_if_present(&self.store, &self.sessions_dir, location).await {
                import::report_failure(location, &files::legacy_file(&self.sessions_dir, location), &e);
                return Err(WaError::Unstartable(ParkReason::KeysNotImported));
            }
            let store = DbBackend::new(&self.store, location);
            // Without a version fetched in this process, the one the device stored (the crate
            // would fetch again itself and fail the connection if that fails); none for a new
            // device, which leaves the choice to the crate.
            let version = match self.version.current().await {
                Some(version) => Some(version),
                None => match store.load().await {
                    Ok(Some(device)) => Some((
                        device.app_version_primary,
                        device.app_version_secondary,
                        device.app_version_tertiary,
                    )),
                    _ => None,
                },
            };

            let (queue, queued) = mpsc::unbounded_channel();
            let (pair_signals, pair_signals_rx) = mpsc::unbounded_channel();
            let shared = Arc::new(Shared::new(
                location.as_str(),
                pair_signals,
                self.version.clone(),
                self.presence,
            ));
            let sink = Sink {
                shared: shared.clone(),
                queue,
            };
            // History sync stays on, for what the crate takes from it: the phone's
            // LID↔phone mappings (without them, chats the phone knows only by LID wait or
            // die), push names and privacy tokens. No history is imported: the crate hands
            // the conversations only to a handler that asks for `HistorySync`, and none
            // does. The default device props ask the phone for recent history only.
            let mut builder = Bot::builder()
                .with_backend(store)
                .with_event_handler(BusHandler { sink: sink.clone() })
                .with_inbound_durability_hook(StoreHook { sink: sink.clone() });
            if let Some(version) = version {
                builder = builder.with_version(version);
            }
            let bot = match &self.server {
                #[cfg(feature = "wa-test-server")]
                Some(server) => {
                    builder
                        .with_transport_factory(
                            whatsapp_rust::transport::TokioWebSocketTransportFactory::new().with_url(&server.ws_url),
                        )
                        .with_http_client(wa_testserver::LoopbackHttpClient::new(&server.media_url))
                        .build()
                        .await
                }
                _ => builder.build().await,
            }
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
            // The file first: left behind, it would be imported again at the next start.
            files::remove_legacy_files(&self.sessions_dir, location)
                .await
                .map_err(|e| WaError::Failed(format!("could not delete the device file of an earlier version: {e}")))?;
            self.store
                .device_keys(location.as_str())
                .wipe()
                .await
                .map_err(|e| WaError::Failed(format!("could not delete the device keys: {e}")))?;
            tracing::info!(location.id = %location, "WhatsApp device keys wiped");
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::crypto::SecretKey;
    use crate::store::DatabaseUrl;

    #[tokio::test]
    async fn wipe_deletes_the_locations_keys_and_device_file_only() {
        let temp = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::parse(&format!("sqlite://{}/w.db", temp.path().display())).unwrap();
        let store = Store::connect(&url, Arc::new(SecretKey::from_bytes(&[7; 32]).unwrap()))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let sessions = temp.path().join("sessions");
        std::fs::create_dir(&sessions).unwrap();
        for name in ["loc1.db", "loc1.db.imported", "loc2.db"] {
            std::fs::write(sessions.join(name), b"x").unwrap();
        }
        for location in ["loc1", "loc2"] {
            let backend = DbBackend::new(&store, &LocationId::parse(location).unwrap());
            backend.create().await.unwrap();
            whatsapp_rust::store::traits::SignalStore::put_session(&backend, "1555@s.whatsapp.net", b"record")
                .await
                .unwrap();
        }
        let transport = WhatsAppTransport::new(store.clone(), &sessions, None, Presence::Unavailable);
        let location = LocationId::parse("loc1").unwrap();
        transport.wipe(&location).await.unwrap();
        assert!(!store.device_keys("loc1").has_device().await.unwrap());
        assert!(
            store
                .device_keys("loc1")
                .keys(crate::store::DeviceKeyKind::Session)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(store.device_keys("loc2").has_device().await.unwrap());
        assert_eq!(
            store
                .device_keys("loc2")
                .keys(crate::store::DeviceKeyKind::Session)
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(!sessions.join("loc1.db").exists() && !sessions.join("loc1.db.imported").exists());
        assert!(sessions.join("loc2.db").exists());
        // Wiping what is already gone is fine.
        transport.wipe(&location).await.unwrap();
    }
}
