//! The rig of the real-transport tests: the WhatsApp test server (`crates/wa-testserver`), the
//! fake GHL and waghl on the real transport, with the steps those tests share.

use std::time::{Duration, Instant};

use fake_ghl::FakeGhl;
use serde_json::{Value, json};
use wa_testserver::TestServer;

use crate::helpers::{Backend, TestApp, spawn_app_with_ghl};

pub const KEY: &str = "real-transport-key";
pub const BUSINESS: &str = "+14155550180";
pub const CONTACT: &str = "+14155550181";
/// The contact's LID (the test server fixes it when the contact's account is created).
pub const CONTACT_LID: &str = "123456789012345";
pub const LOCATION: &str = "locReal";
pub const WAIT: Duration = Duration::from_secs(60);

/// The test server, the fake GHL and waghl on the real transport.
pub struct Rig {
    pub server: TestServer,
    pub fake: FakeGhl,
    pub app: TestApp,
    pub ctl: reqwest::Client,
}

impl Rig {
    pub async fn start(backend: Backend) -> Option<Rig> {
        Self::start_with(backend, &[]).await
    }

    /// With more settings for waghl.
    pub async fn start_with(backend: Backend, settings: &[(&str, &str)]) -> Option<Rig> {
        let server = TestServer::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let fake = FakeGhl::start().await;
        let (ws, media) = (server.ws_url(), server.http_url());
        let app = spawn_app_with_ghl(
            backend,
            &fake,
            &[
                ("WAGHL_WA_BACKEND", "whatsapp"),
                ("WAGHL_WA_SERVER_URL", ws.as_str()),
                ("WAGHL_WA_MEDIA_URL", media.as_str()),
                ("WAGHL_WEBHOOK_KEY", KEY),
                ("WAGHL_SEND_GAP_MS", "0"),
                ("WAGHL_RELAY_POLL_MS", "50"),
                ("WAGHL_ALLOW_HTTP_ATTACHMENTS", "true"),
                ("WAGHL_HEALTH_INTERVAL_MS", "500"),
                ("WAGHL_RESTART_BASE_MS", "100"),
            ]
            .into_iter()
            .chain(settings.iter().copied())
            .collect::<Vec<_>>(),
        )
        .await?;
        app.install(&fake, LOCATION).await;
        Some(Rig {
            server,
            fake,
            app,
            ctl: reqwest::Client::new(),
        })
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.server.http_url())
    }

    pub async fn ctl_post(&self, path: &str, body: Value) -> Value {
        let response = self.ctl.post(self.at(path)).json(&body).send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    pub async fn ctl_get(&self, path: &str) -> Value {
        self.ctl.get(self.at(path)).send().await.unwrap().json().await.unwrap()
    }

    /// Pairs waghl's device by scanning the QR code it shows with the business's phone.
    pub async fn pair_by_qr(&self) {
        let started = self
            .app
            .admin_post(&format!("/api/v1/locations/{LOCATION}/session"), &json!({}))
            .await;
        assert_eq!(started.status(), 202);
        let qr = self.code("qr").await;
        self.ctl_post("/_ctl/scan", json!({ "phone": BUSINESS, "qr": qr }))
            .await;
        let session = self.app.wait_for_session(LOCATION, "connected", None).await;
        assert_eq!(session["phone"], BUSINESS);
    }

    /// The session's `qr` or `pairing_code` once it shows.
    pub async fn code(&self, field: &str) -> String {
        let started = Instant::now();
        loop {
            let session = self.app.session(LOCATION).await;
            if let Some(code) = session[field].as_str() {
                return code.to_owned();
            }
            assert!(started.elapsed() < WAIT, "no {field}: {session}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A contact's message to the business; its WhatsApp id.
    pub async fn contact_sends(&self, body: Value) -> String {
        let mut body = body;
        body["from"] = json!(CONTACT);
        body["to"] = json!(BUSINESS);
        let sent = self.ctl_post("/_ctl/send", body).await;
        sent["id"].as_str().unwrap().to_owned()
    }

    /// The GHL message relayed for WhatsApp message `id`.
    pub async fn in_ghl(&self, id: &str) -> fake_ghl::AddedMessage {
        wait(|| self.fake.messages().into_iter().find(|m| m.body["altId"] == id)).await
    }

    /// GHL's reply to the contact, through the provider webhook.
    pub async fn reply(&self, ghl_id: &str, text: &str, attachments: &[String]) {
        let webhook = json!({
            "locationId": LOCATION, "messageId": ghl_id, "contactId": "c", "type": "SMS",
            "phone": CONTACT, "message": text, "attachments": attachments,
        });
        self.provider_webhook(webhook).await;
    }

    /// Delivers `webhook` to waghl's provider webhook; it must be accepted.
    pub async fn provider_webhook(&self, webhook: Value) {
        let response = self
            .app
            .client
            .post(self.app.url(&format!("/webhooks/ghl/provider?key={KEY}")))
            .json(&webhook)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    /// The business's phone shares, in its history sync, that the contact is `CONTACT_LID`.
    pub async fn history_sync_names_the_contacts_lid(&self) {
        self.ctl_post(
            "/_ctl/history-sync",
            json!({ "phone": BUSINESS, "contacts": [{ "phone": CONTACT, "lid": CONTACT_LID }] }),
        )
        .await;
    }

    /// What the contact's phone received and decrypted, once `pick` finds it.
    pub async fn contact_received(&self, pick: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let list = self.ctl_get(&format!("/_ctl/received/{CONTACT}")).await;
            if let Some(found) = list["messages"]
                .as_array()
                .and_then(|m| m.iter().find(|m| pick(m)).cloned())
            {
                return found;
            }
            assert!(started.elapsed() < WAIT, "the contact never got it: {list}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The companion devices linked to the business's phone on `server`: (id, when linked).
pub async fn linked_devices(server: &TestServer) -> Vec<(u64, u64)> {
    let url = format!("{}/_ctl/devices/{BUSINESS}", server.http_url());
    let devices: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["id"] != 0)
        .map(|d| (d["id"].as_u64().unwrap(), d["linked_at"].as_u64().unwrap()))
        .collect()
}

pub async fn wait<T>(mut found: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = found() {
            return value;
        }
        assert!(started.elapsed() < WAIT, "timed out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Generates `sqlite::name` and `postgres::name` tests from `async fn name(backend: Backend)`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { super::$name(crate::helpers::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() { super::$name(crate::helpers::Backend::Postgres).await })*
        }
    };
}

/// The real binary (`crash::Daemon`) on the real transport against a new test server, its
/// location installed and paired by QR: the rig of the kill -9 tests.
pub struct DaemonRig {
    pub server: TestServer,
    pub fake: FakeGhl,
    pub daemon: crate::crash::Daemon,
    ctl: reqwest::Client,
}

impl DaemonRig {
    /// Starts it on the database at `database_url`, with `extra` settings.
    pub async fn start(database_url: &str, extra: &[(&str, &str)]) -> DaemonRig {
        let server = TestServer::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let fake = FakeGhl::start().await;
        let (ws, media) = (server.ws_url(), server.http_url());
        let mut settings = vec![
            ("DATABASE_URL", database_url),
            ("WAGHL_WA_BACKEND", "whatsapp"),
            ("WAGHL_WA_SERVER_URL", ws.as_str()),
            ("WAGHL_WA_MEDIA_URL", media.as_str()),
        ];
        settings.extend_from_slice(extra);
        let daemon = crate::crash::Daemon::start(&fake, &settings).await;
        let rig = DaemonRig {
            server,
            fake,
            daemon,
            ctl: reqwest::Client::new(),
        };
        rig.pair().await;
        rig
    }

    /// A control call to the test server; its JSON answer, after checking it is a 200.
    pub async fn ctl_post(&self, path: &str, body: Value) -> Value {
        let response = self
            .ctl
            .post(format!("{}{path}", self.server.http_url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.unwrap_or(Value::Null)
    }

    pub async fn ctl_get(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.server.http_url());
        self.ctl.get(url).send().await.unwrap().json().await.unwrap()
    }

    /// Installs the location and pairs it by QR with the business's phone.
    async fn pair(&self) {
        let daemon = &self.daemon;
        let code = self.fake.location_code(LOCATION);
        let installed = daemon.get(&format!("/oauth/callback?code={code}")).await;
        assert_eq!(installed.status(), 200);
        let started = daemon
            .post(&format!("/api/v1/locations/{LOCATION}/session"), json!({}))
            .await;
        assert_eq!(started.status(), 202);
        let started_at = Instant::now();
        let qr = loop {
            let location: Value = daemon
                .get(&format!("/api/v1/locations/{LOCATION}"))
                .await
                .json()
                .await
                .unwrap();
            if let Some(qr) = location["session"]["qr"].as_str() {
                break qr.to_owned();
            }
            assert!(started_at.elapsed() < WAIT, "no QR code: {location}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.ctl_post("/_ctl/scan", json!({ "phone": BUSINESS, "qr": qr }))
            .await;
        daemon.wait_for_state(LOCATION, "connected").await;
    }
}
