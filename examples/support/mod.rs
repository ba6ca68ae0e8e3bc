//! What the benchmarks share: a fake GHL with its rate limit raised, waghl running in this
//! process with the simulated WhatsApp or as a separate process (this program started again in
//! daemon mode, so that its memory is measured alone), installed and paired locations, waghl's
//! counters, and percentiles.

// Each example compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
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
    let fake = fake_ghl().await;
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

/// The fake GHL, with its rate limit out of the way (and the process's TLS provider installed).
pub async fn fake_ghl() -> FakeGhl {
    waghl::startup::install_crypto_provider();
    let fake = FakeGhl::start().await;
    fake.set_rate_limit(usize::MAX);
    fake
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

    /// Posts `webhook` to waghl's provider webhook, as GHL does.
    pub async fn provider_webhook(&self, webhook: &Value) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/webhooks/ghl/provider?key={KEY}")))
            .json(webhook)
            .send()
            .await
            .unwrap()
    }

    /// Installs `location` through the OAuth callback and starts its session (pairing).
    pub async fn install(&self, location: &str) {
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
    }

    /// Installs `location` and pairs its simulated WhatsApp.
    pub async fn install_and_pair(&self, location: &str, phone: &str) {
        self.install(location).await;
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
        self.wait_for_session(location, |session| session["state"] == "connected")
            .await;
    }

    /// `location`'s session once `ready` says it is (within a minute).
    pub async fn wait_for_session(&self, location: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let found: Value = self
                .admin(
                    reqwest::Method::GET,
                    &format!("/api/v1/locations/{location}"),
                    json!({}),
                )
                .await
                .json()
                .await
                .unwrap();
            if ready(&found["session"]) {
                return found["session"].clone();
            }
            assert!(started.elapsed() < Duration::from_secs(60), "{location}: {found}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Set in the daemon's environment: the benchmark then runs waghl instead of itself.
const DAEMON: &str = "WAGHL_BENCH_DAEMON";

/// Runs `bench` — or waghl itself when this process is the daemon a benchmark started.
pub fn bench_or_daemon(bench: impl Future<Output = ()>) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    if std::env::var_os(DAEMON).is_some() {
        runtime.block_on(daemon());
    } else {
        runtime.block_on(bench);
    }
}

/// waghl itself, configured by the environment the benchmark gave; prints its address.
async fn daemon() {
    waghl::startup::install_crypto_provider();
    let app = Application::build(Config::from_env().unwrap()).await.unwrap();
    println!("http://{}", app.local_addr());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    app.run_until_stopped(async move {
        terminate.recv().await;
    })
    .await
    .unwrap();
}

/// Starts waghl in daemon mode with `settings`; returns it and its base URL.
pub fn spawn_daemon(settings: &[(&'static str, String)]) -> (Child, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env_clear()
        .envs(settings.iter().map(|(k, v)| (*k, v.as_str())))
        .env(DAEMON, "1")
        // glibc's allocator settings, to compare their effect on waghl's memory.
        .envs(std::env::vars().filter(|(k, _)| k.starts_with("MALLOC_")))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().to_owned())
}

/// Starts waghl in daemon mode with `settings` (those of [`settings`], files under `dir`) and
/// opens its database here too; returns the daemon and a benchmark against it.
pub async fn start_daemon(
    settings: &[(&'static str, String)],
    fake: FakeGhl,
    dir: tempfile::TempDir,
) -> (Child, Bench) {
    let (daemon, base) = spawn_daemon(settings);
    let url = settings.iter().find(|(k, _)| *k == "DATABASE_URL").unwrap().1.as_str();
    let key = waghl::crypto::SecretKey::from_base64(SECRET_KEY).unwrap();
    let store = waghl::store::Store::connect(
        &waghl::store::DatabaseUrl::parse(url).unwrap(),
        std::sync::Arc::new(key),
    )
    .await
    .unwrap();
    (daemon, Bench::remote(base, fake, store, dir))
}

/// A run's progress and the daemon's resident memory each time another tenth of it was done.
pub struct Tenths {
    total: usize,
    started: Instant,
    /// (done, when, resident MiB)
    marks: Vec<(usize, Duration, f64)>,
}

impl Tenths {
    pub fn new(total: usize) -> Self {
        Self {
            total,
            started: Instant::now(),
            marks: Vec::with_capacity(10),
        }
    }

    /// Notes that `done` of the total are done, with `daemon`'s memory for each tenth this
    /// completed.
    pub fn record(&mut self, done: usize, daemon: &Child) {
        while self.marks.len() < 10 && done >= self.total * (self.marks.len() + 1) / 10 {
            self.marks
                .push((done, self.started.elapsed(), resident_mib(daemon, "VmRSS")));
        }
    }

    /// Prints the whole run's rate, each tenth's rate and memory, and how the memory changed
    /// from the first tenth to the end (`daemon` still running); `done` names what was counted.
    pub fn print(&self, daemon: &Child, done: &str) {
        let all = self.started.elapsed();
        let (rss_end, peak) = (resident_mib(daemon, "VmRSS"), resident_mib(daemon, "VmHWM"));
        let (first, first_at, rss_first) = self.marks[0];
        println!(
            "  all {done} {:.2} s after the start ({:.0}/s; the first {first} in {:.2} s)",
            all.as_secs_f64(),
            self.total as f64 / all.as_secs_f64(),
            first_at.as_secs_f64()
        );
        println!("  each tenth: the rate during it, waghl's resident memory after it");
        let mut before = (0, Duration::ZERO);
        for (count, at, rss) in &self.marks {
            let rate = (count - before.0) as f64 / (*at - before.1).as_secs_f64();
            println!(
                "    {count:>7} {done} at {:>7.2} s: {rate:>6.0}/s, {rss:.1} MiB",
                at.as_secs_f64()
            );
            before = (*count, *at);
        }
        println!(
            "  waghl's resident memory: {rss_first:.1} MiB after {first} {done}, {rss_end:.1} MiB after {} ({:+.1} %); peak {peak:.1} MiB",
            self.total,
            100.0 * (rss_end - rss_first) / rss_first
        );
    }
}

/// Stops waghl the way a deploy does (SIGTERM) and waits for it.
pub fn stop(child: &mut Child) {
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    child.wait().unwrap();
}

/// A `/proc/<pid>/status` memory line of `child`, in MiB.
pub fn resident_mib(child: &Child, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The messages the daemon at `base` finished sending, from its `/metrics`: cheap to read every
/// 100 ms, where counting the outbox reads every queued row (13 ms a count at 100,000 queued on
/// PostgreSQL, a tenth of the database's time in `bench_drain`).
pub async fn sent_by(client: &reqwest::Client, base: &str) -> usize {
    relayed(client, base, &[("outbound", "sent")]).await[0]
}

/// What the daemon at `base` counted in `waghl_messages_total` for each (direction, outcome) of
/// `series`, read from one `/metrics`.
pub async fn relayed(client: &reqwest::Client, base: &str, series: &[(&str, &str)]) -> Vec<usize> {
    let metrics = client
        .get(format!("{base}/metrics"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    series
        .iter()
        .map(|(direction, outcome)| {
            let name = format!(r#"waghl_messages_total{{direction="{direction}",outcome="{outcome}"}} "#);
            metrics
                .lines()
                .find_map(|line| line.strip_prefix(name.as_str()))
                .map_or(0, |count| count.trim().parse::<f64>().unwrap() as usize)
        })
        .collect()
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
