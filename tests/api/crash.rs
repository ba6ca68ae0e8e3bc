//! kill -9 of the real binary with messages in flight: after a restart nothing is lost and
//! nothing is duplicated.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fake_ghl::FakeGhl;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, SECRET_KEY, ghl_settings};

const BIN: &str = env!("CARGO_BIN_EXE_waghl");

/// The daemon as a child process, on a fixed directory, database and port.
pub struct Daemon {
    /// Holds the database and session files for the daemon's whole life (across restarts).
    _dir: tempfile::TempDir,
    pub port: u16,
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    client: reqwest::Client,
}

impl Daemon {
    pub async fn start(fake: &FakeGhl, extra: &[(&str, &str)]) -> Self {
        waghl::startup::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut env: Vec<(String, String)> = ghl_settings(fake).into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        for (k, v) in [
            ("WAGHL_LISTEN", format!("127.0.0.1:{port}")),
            ("DATABASE_URL", format!("sqlite://{}/waghl.db", dir.path().display())),
            ("WAGHL_DATA_DIR", dir.path().join("data").display().to_string()),
            ("WAGHL_SESSIONS_DIR", dir.path().join("sessions").display().to_string()),
            ("WAGHL_SECRET_KEY", SECRET_KEY.to_owned()),
            ("WAGHL_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
            ("WAGHL_WA_BACKEND", "sim".to_owned()),
            ("WAGHL_INSTANCE_ID", "crash-test-host".to_owned()),
            ("WAGHL_RESTORE_SPREAD_MS", "50".to_owned()),
            ("WAGHL_RETRY_BASE_MS", "20".to_owned()),
            ("WAGHL_RETRY_MAX_MS", "200".to_owned()),
            ("WAGHL_RELAY_POLL_MS", "20".to_owned()),
            ("WAGHL_RELAY_CLAIM_MS", "500".to_owned()),
            ("WAGHL_SEND_GAP_MS", "0".to_owned()),
            ("WAGHL_GHL_TIMEOUT_MS", "30000".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
        ] {
            env.push((k.to_owned(), v));
        }
        for (k, v) in extra {
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        let mut daemon = Self {
            _dir: dir,
            port,
            env,
            child: None,
            client: reqwest::Client::new(),
        };
        daemon.spawn().await;
        daemon
    }

    async fn spawn(&mut self) {
        let child = Command::new(BIN)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let started = Instant::now();
        while self
            .client
            .get(self.url("/readyz"))
            .send()
            .await
            .map(|r| r.status() != 200)
            .unwrap_or(true)
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the daemon did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub async fn restart(&mut self) {
        self.spawn().await;
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// The samples of a metric, e.g. `waghl_x_total{outcome="found"} 3`, one per line.
    pub async fn metric(&self, name: &str) -> String {
        let text = self.get("/metrics").await.text().await.unwrap();
        text.lines()
            .filter(|l| l.starts_with(name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub async fn wait_for_state(&self, location: &str, state: &str) {
        let started = Instant::now();
        loop {
            let location: Value = self
                .get(&format!("/api/v1/locations/{location}"))
                .await
                .json()
                .await
                .unwrap();
            if location["session"]["state"] == state {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(15), "never {state}: {location}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Installs the location through the fake GHL and pairs its WhatsApp.
    pub async fn install_and_pair(&self, fake: &FakeGhl, location: &str, phone: &str) {
        let code = fake.location_code(location);
        assert_eq!(
            self.client
                .get(self.url(&format!("/oauth/callback?code={code}")))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(
            self.post(&format!("/api/v1/locations/{location}/session"), json!({}))
                .await
                .status(),
            202
        );
        let started = Instant::now();
        while self.get(&format!("/sim/{location}/qr")).await.status() != 200 {
            assert!(started.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            self.post(&format!("/sim/{location}/scan"), json!({ "phone": phone }))
                .await
                .status(),
            200
        );
        self.wait_for_state(location, "connected").await;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn wait_for(fake: &FakeGhl, count: usize) {
    let started = Instant::now();
    while fake.messages().len() < count {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "GHL has {} of {count}",
            fake.messages().len()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn kill_9_with_inbound_messages_in_flight_loses_and_duplicates_nothing() {
    let fake = FakeGhl::start().await;
    let mut daemon = Daemon::start(&fake, &[]).await;
    daemon.install_and_pair(&fake, "locCrash", "+15550900001").await;
    for i in 0..10 {
        let body =
            json!({ "from": format!("+1555091000{}", i % 3), "id": format!("C{i}"), "text": format!("before {i}") });
        assert_eq!(daemon.post("/sim/locCrash/inbound", body).await.status(), 200);
    }
    wait_for(&fake, 10).await;

    // GHL stalls: the next messages are stored (each answered only once durable), handed to
    // GHL, and the daemon dies while GHL has not answered.
    fake.set_latency(Duration::from_secs(5));
    for i in 10..20 {
        let body =
            json!({ "from": format!("+1555091000{}", i % 3), "id": format!("C{i}"), "text": format!("during {i}") });
        assert_eq!(daemon.post("/sim/locCrash/inbound", body).await.status(), 200);
    }
    let started = Instant::now();
    while fake.in_flight() < 3 {
        assert!(started.elapsed() < Duration::from_secs(10), "nothing reached GHL");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let delivered_before = fake.messages().len();
    daemon.kill9();
    assert_eq!(delivered_before, 10);
    fake.set_latency(Duration::ZERO);

    daemon.restart().await;
    wait_for(&fake, 20).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut ids: Vec<String> = fake
        .messages()
        .iter()
        .map(|m| m.body["altId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 20, "a message reached GHL twice: {ids:?}");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20);
    // Per chat, still in order.
    for chat in 0..3 {
        let texts: Vec<u32> = fake
            .messages()
            .iter()
            .filter(|m| m.body["altId"].as_str().unwrap()[1..].parse::<u32>().unwrap() % 3 == chat)
            .map(|m| m.body["altId"].as_str().unwrap()[1..].parse().unwrap())
            .collect();
        let mut sorted = texts.clone();
        sorted.sort();
        assert_eq!(texts, sorted);
    }
}

#[tokio::test]
async fn kill_9_with_outbound_messages_queued_sends_each_exactly_once_after_restart() {
    let fake = FakeGhl::start().await;
    // Paced sends, so the kill lands while some messages are sent and others are not.
    let mut daemon = Daemon::start(
        &fake,
        &[("WAGHL_WEBHOOK_KEY", "crash-key"), ("WAGHL_SEND_GAP_MS", "250")],
    )
    .await;
    daemon.install_and_pair(&fake, "locCrashOut", "+15550900002").await;
    for i in 0..6 {
        let body = json!({
            "locationId": "locCrashOut", "messageId": format!("gc-{i}"), "contactId": "c", "type": "SMS",
            "phone": format!("+1415292{}111", i % 2), "message": format!("reply {i}"),
        });
        let response = daemon
            .client
            .post(daemon.url("/webhooks/ghl/provider?key=crash-key"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let started = Instant::now();
    while sent_by(&daemon).await.len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(10), "nothing was sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    daemon.kill9();
    daemon.restart().await;
    let started = Instant::now();
    while sent_by(&daemon).await.len() < 6 {
        if started.elapsed() > Duration::from_secs(45) {
            let list: Value = daemon
                .get("/api/v1/locations/locCrashOut/messages")
                .await
                .json()
                .await
                .unwrap();
            let location: Value = daemon.get("/api/v1/locations/locCrashOut").await.json().await.unwrap();
            panic!("not everything was sent after the restart: {list} {location}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let sent = sent_by(&daemon).await;
    let mut texts: Vec<&str> = sent.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts.len(), 6, "a message went out twice: {texts:?}");
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), 6);
}

/// What the daemon's simulated WhatsApp sent for `locCrashOut`.
async fn sent_by(daemon: &Daemon) -> Vec<Value> {
    let sent: Value = daemon.get("/sim/locCrashOut/sent").await.json().await.unwrap();
    sent["sent"].as_array().unwrap().clone()
}
