//! A device under test built the way waghl builds its client (whatsapp-rust `Bot`, SQLite
//! store, skip history sync), pointed at the test server, plus a small client for `/_ctl`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;
use wa_testserver::{CLIENT_VERSION, LoopbackHttpClient, TestServer};
use whatsapp_rust::bot::{Bot, BotHandle};
use whatsapp_rust::http::{HttpClient, HttpRequest};
use whatsapp_rust::store::SqliteStore;
use whatsapp_rust::types::durability_hook::InboundMessage;
use whatsapp_rust::types::events::Event;
use whatsapp_rust::{Client, InboundDurabilityHook};
use whatsapp_rust_tokio_transport::TokioWebSocketTransportFactory;

pub const WAIT: Duration = Duration::from_secs(60);

pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "wa_testserver=info,whatsapp_rust=warn,wacore=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Every event the device's client emitted, in order.
#[derive(Default)]
pub struct Events {
    seen: Mutex<Vec<Arc<Event>>>,
    changed: Notify,
}

impl Events {
    /// Waits for an event that `pick` maps to a value, looking at past events first.
    pub async fn wait<T>(&self, what: &str, pick: impl Fn(&Event) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.changed.notified();
            if let Some(found) = self.seen.lock().unwrap().iter().find_map(|e| pick(e)) {
                return found;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timed out waiting for {what}");
            }
        }
    }

    /// Waits until `n` events match.
    pub async fn wait_count(&self, what: &str, n: usize, pick: impl Fn(&Event) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.changed.notified();
            if self.count(&pick) >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timed out waiting for {what}");
            }
        }
    }

    pub fn count(&self, pick: impl Fn(&Event) -> bool) -> usize {
        self.seen.lock().unwrap().iter().filter(|e| pick(e)).count()
    }
}

/// The device under test: an unmodified whatsapp-rust client with a SQLite store and an
/// inbound durability hook, as waghl builds it.
pub struct Device {
    pub client: Arc<Client>,
    pub events: Arc<Events>,
    handle: BotHandle,
}

impl Device {
    pub async fn start(server: &TestServer, store: &Path) -> Device {
        Device::build(server, store, false).await
    }

    /// A device whose durability hook fails every commit, like an app whose database is down
    /// (or that was killed before committing): it never acknowledges a message.
    pub async fn start_refusing(server: &TestServer, store: &Path) -> Device {
        Device::build(server, store, true).await
    }

    async fn build(server: &TestServer, store: &Path, refuse: bool) -> Device {
        let events = Arc::new(Events::default());
        let sink = events.clone();
        let store = SqliteStore::new(store.to_str().unwrap()).await.expect("open the store");
        let bot = Bot::builder()
            .with_backend(store)
            .with_transport_factory(TokioWebSocketTransportFactory::new().with_url(server.ws_url()))
            .with_http_client(LoopbackHttpClient::new(server.http_url()))
            .with_version(CLIENT_VERSION)
            .skip_history_sync();
        // Like waghl, every device commits inbound messages before they are acknowledged.
        let bot = bot.with_inbound_durability_hook(Commit { refuse });
        let bot = bot
            .on_event(move |event, _client| {
                let sink = sink.clone();
                async move {
                    sink.seen.lock().unwrap().push(event);
                    sink.changed.notify_waiters();
                }
            })
            .build()
            .await
            .expect("build the client");
        let client = bot.client();
        let handle = bot.spawn();
        Device { client, events, handle }
    }

    pub async fn qr(&self) -> String {
        self.events
            .wait("a QR code", |e| match e {
                Event::PairingQrCode(qr) => Some(qr.code.clone()),
                _ => None,
            })
            .await
    }

    pub async fn connected(&self) {
        self.events
            .wait("Connected", |e| matches!(e, Event::Connected(_)).then_some(()))
            .await;
    }

    pub async fn stop(self) {
        self.handle.shutdown().await;
    }
}

/// The device's durability hook: commits (there is nothing to store) or refuses every batch.
struct Commit {
    refuse: bool,
}

#[whatsapp_rust::async_trait]
impl InboundDurabilityHook for Commit {
    async fn on_messages(&self, _client: Arc<Client>, _batch: &[InboundMessage]) -> anyhow::Result<()> {
        anyhow::ensure!(!self.refuse, "the database is down");
        Ok(())
    }
}

/// The control API over plain http.
pub struct Ctl {
    base: String,
    http: LoopbackHttpClient,
}

impl Ctl {
    pub fn new(server: &TestServer) -> Ctl {
        Ctl {
            base: server.http_url(),
            http: LoopbackHttpClient::new(server.http_url()),
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let request = HttpRequest::post(format!("{}{path}", self.base))
            .with_header("content-type", "application/json")
            .with_body(body.to_string().into_bytes());
        self.call(request).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(HttpRequest::get(format!("{}{path}", self.base))).await
    }

    async fn call(&self, request: HttpRequest) -> (u16, Value) {
        let response = self.http.execute(request).await.expect("the control API answers");
        let body = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        (response.status_code, body)
    }
}

/// A started server, the device under test's store directory, and the control client.
pub async fn server() -> (TestServer, Ctl, tempfile::TempDir) {
    logs();
    let server = TestServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("start the server");
    let ctl = Ctl::new(&server);
    (server, ctl, tempfile::tempdir().unwrap())
}

/// A device under test linked to `phone`'s account by a QR scan, and connected.
pub async fn linked(server: &TestServer, ctl: &Ctl, store: &Path, phone: &str) -> Device {
    let device = Device::start(server, store).await;
    let qr = device.qr().await;
    let (status, body) = ctl
        .post("/_ctl/scan", serde_json::json!({"phone": phone, "qr": qr}))
        .await;
    assert_eq!(status, 200, "{body}");
    device.connected().await;
    device
}

/// `contact` says hi to `account`: the server makes a contact once it is named, and the device
/// can send to it from then on.
pub async fn greet(ctl: &Ctl, contact: &str, account: &str) {
    let (status, body) = ctl
        .post(
            "/_ctl/send",
            serde_json::json!({"from": contact, "to": account, "text": "hi"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Polls the control API until `check` accepts the answer.
pub async fn until(ctl: &Ctl, path: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, body) = ctl.get(path).await;
        if check(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out polling {path}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
