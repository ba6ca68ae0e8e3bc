//! What both benchmarks share: a fake GHL with its rate limit raised, waghl running in this
//! process with the simulated WhatsApp, one installed and paired location, and percentiles.

// Each example compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use fake_ghl::FakeGhl;
use serde_json::{Value, json};
use waghl::config::Config;
use waghl::startup::Application;

pub const ADMIN: &str = "bench-admin-token-0123456789";
pub const KEY: &str = "bench-webhook-key";
pub const SECRET_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

pub struct Bench {
    pub base: String,
    pub client: reqwest::Client,
    pub fake: FakeGhl,
    /// waghl's store, to check what the run left in the database (bench_intake reads it;
    /// each example compiles this module on its own).
    pub store: waghl::store::Store,
    _dir: tempfile::TempDir,
}

/// Starts everything; `database_url` is SQLite in a temporary directory unless given.
pub async fn start(database_url: Option<String>) -> Bench {
    waghl::startup::install_crypto_provider();
    let fake = FakeGhl::start().await;
    fake.set_rate_limit(usize::MAX);
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(&fake, dir.path(), database_url);
    let config = Config::from_lookup(|name| settings.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())).unwrap();
    let app = Application::build(config).await.unwrap();
    let base = format!("http://{}", app.local_addr());
    let store = app.state().store.clone();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    Bench {
        base,
        client: reqwest::Client::new(),
        fake,
        store,
        _dir: dir,
    }
}

/// waghl's settings for a benchmark: the simulated WhatsApp with send pacing off, the fake GHL,
/// files under `dir`, and SQLite there unless `database_url` is given.
pub fn settings(fake: &FakeGhl, dir: &std::path::Path, database_url: Option<String>) -> Vec<(&'static str, String)> {
    let sqlite = format!("sqlite://{}/waghl.db", dir.display());
    vec![
        ("WAGHL_LISTEN", "127.0.0.1:0".into()),
        ("DATABASE_URL", database_url.unwrap_or(sqlite)),
        ("WAGHL_DATA_DIR", dir.join("data").display().to_string()),
        ("WAGHL_SESSIONS_DIR", dir.join("sessions").display().to_string()),
        ("WAGHL_SECRET_KEY", SECRET_KEY.into()),
        ("WAGHL_ADMIN_TOKEN", ADMIN.into()),
        ("WAGHL_WA_BACKEND", "sim".into()),
        ("WAGHL_SIM_TIME_SCALE", "0.1".into()),
        ("WAGHL_WEBHOOK_KEY", KEY.into()),
        ("WAGHL_SEND_GAP_MS", "0".into()),
        ("WAGHL_GHL_RATE_LIMIT", "1000000".into()),
        ("WAGHL_RELAY_POLL_MS", "50".into()),
        ("GHL_CLIENT_ID", fake.client_id().into()),
        ("GHL_CLIENT_SECRET", fake.client_secret().into()),
        ("GHL_CONVERSATION_PROVIDER_ID", "bench-provider".into()),
        ("GHL_API_BASE_URL", fake.base_url.clone()),
        ("GHL_MARKETPLACE_URL", fake.base_url.clone()),
        ("RUST_LOG", "error".into()),
    ]
}

impl Bench {
    /// A benchmark against waghl running at `base` (another process) on the database `store`
    /// also opens, with its files in `dir`.
    pub fn remote(base: String, fake: FakeGhl, store: waghl::store::Store, dir: tempfile::TempDir) -> Self {
        Self {
            base,
            client: reqwest::Client::new(),
            fake,
            store,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> reqwest::Response {
        self.client
            .request(method, self.url(path))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Installs `location` through the OAuth callback and pairs its simulated WhatsApp.
    pub async fn install_and_pair(&self, location: &str, phone: &str) {
        let code = self.fake.location_code(location);
        let page = self
            .client
            .get(self.url(&format!("/oauth/callback?code={code}")))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200, "{}", page.text().await.unwrap_or_default());
        self.admin(
            reqwest::Method::POST,
            &format!("/api/v1/locations/{location}/session"),
            json!({}),
        )
        .await;
        let started = Instant::now();
        while self
            .admin(reqwest::Method::GET, &format!("/sim/{location}/qr"), json!({}))
            .await
            .status()
            != 200
        {
            assert!(started.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.admin(
            reqwest::Method::POST,
            &format!("/sim/{location}/scan"),
            json!({ "phone": phone }),
        )
        .await;
        loop {
            let location: Value = self
                .admin(
                    reqwest::Method::GET,
                    &format!("/api/v1/locations/{location}"),
                    json!({}),
                )
                .await
                .json()
                .await
                .unwrap();
            if location["session"]["state"] == "connected" {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{location} did not connect"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The `p`-th percentile (0–100) of `values`, in the values' unit.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let index = ((values.len() as f64 - 1.0) * p / 100.0).round() as usize;
    values[index]
}

/// Peak resident memory of this process (the benchmark, the fake GHL and waghl together).
pub fn peak_memory_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
