//! Test fixtures: fresh databases (SQLite files, or one PostgreSQL database per test) and
//! `spawn_app`, which runs the real application on a loopback port.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use fake_ghl::FakeGhl;
use sqlx::Connection as _;
use tempfile::TempDir;
use tokio::sync::oneshot;
use waghl::config::Config;
use waghl::startup::Application;
use waghl::state::AppState;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// base64 of 32 bytes; fixed so a test can reopen a database it made.
pub const SECRET_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database that lives as long as this value.
pub struct TestDb {
    pub url: String,
    /// Holds the SQLite file (and anything else a test writes) until the test ends.
    pub dir: TempDir,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    /// `None` only outside CI when PostgreSQL is not configured: the caller skips.
    pub async fn new(backend: Backend) -> Option<Self> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = match backend {
            Backend::Sqlite => format!("sqlite://{}", dir.path().join("waghl.db").display()),
            Backend::Postgres => fresh_postgres_database().await?,
        };
        Some(Self { url, dir })
    }

    /// Stands in for a database that was moved elsewhere.
    fn placeholder() -> Self {
        Self {
            url: String::new(),
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    pub fn sqlite_file(&self) -> Option<std::path::PathBuf> {
        self.url.strip_prefix("sqlite://").map(std::path::PathBuf::from)
    }
}

/// The PostgreSQL server of `WAGHL_TEST_DATABASE_URL`, or `None` (skip) outside CI. In CI a
/// missing server fails the test instead of letting it pass silently.
fn postgres_admin_url() -> Option<String> {
    match std::env::var("WAGHL_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but WAGHL_TEST_DATABASE_URL is not set: the PostgreSQL tests cannot run")
        }
        _ => {
            eprintln!("skipped: WAGHL_TEST_DATABASE_URL is not set");
            None
        }
    }
}

async fn fresh_postgres_database() -> Option<String> {
    let admin = postgres_admin_url()?;
    let name = format!(
        "waghl_test_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        waghl::time::now_ms()
    );
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("WAGHL_TEST_DATABASE_URL does not answer");
    SWEEP
        .get_or_init(|| async { drop_left_over_databases(&mut conn).await })
        .await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("CREATE DATABASE");
    let mut url = reqwest::Url::parse(&admin).expect("WAGHL_TEST_DATABASE_URL is a URL");
    url.set_path(&format!("/{name}"));
    Some(url.to_string())
}

/// Done once a process: earlier runs' databases are gone before this run makes its own.
static SWEEP: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// Drops the test databases of earlier runs: each test leaves its database behind (a run of the
/// suite leaves ~1 GB), and a server holding thousands of them is slower for every test and
/// benchmark after (its autovacuum visits each). A database is an earlier run's when the process
/// named in it (`waghl_{test,unit}_<pid>_…_<ms>`) is not running on this machine and it is over
/// an hour old: a run on another machine sharing the server is left alone.
async fn drop_left_over_databases(conn: &mut sqlx::PgConnection) {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT datname FROM pg_database WHERE datname LIKE 'waghl\\_test\\_%' OR datname LIKE 'waghl\\_unit\\_%'",
    )
    .fetch_all(&mut *conn)
    .await
    .expect("the test databases are listed");
    let hour_ago = waghl::time::now_ms() - 3_600_000;
    for name in names {
        let parts: Vec<&str> = name.split('_').collect();
        let (Some(pid), Some(made)) = (parts.get(2), parts.last().and_then(|ms| ms.parse::<i64>().ok())) else {
            continue;
        };
        if made < hour_ago && !Path::new(&format!("/proc/{pid}")).exists() {
            let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(drop)).execute(&mut *conn).await {
                eprintln!("could not drop the left-over test database {name}: {e}");
            }
        }
    }
}

/// The settings a test daemon runs with; `overrides` replace or add environment values.
pub fn test_config(dir: &Path, database_url: &str, overrides: &[(&str, &str)]) -> Config {
    let mut vars: HashMap<String, String> = [
        ("WAGHL_LISTEN", "127.0.0.1:0".to_owned()),
        ("DATABASE_URL", database_url.to_owned()),
        ("WAGHL_DATA_DIR", dir.join("data").display().to_string()),
        ("WAGHL_SESSIONS_DIR", dir.join("sessions").display().to_string()),
        ("WAGHL_SECRET_KEY", SECRET_KEY.to_owned()),
        ("WAGHL_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
        ("WAGHL_WA_BACKEND", "sim".to_owned()),
        ("WAGHL_SHUTDOWN_TIMEOUT_MS", "3000".to_owned()),
        // Every test instance is another "host", as on a real deployment.
        (
            "WAGHL_INSTANCE_ID",
            format!("test-{}", COUNTER.fetch_add(1, Ordering::Relaxed)),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in overrides {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    Config::from_lookup(|name| vars.get(name).cloned()).expect("the test configuration is valid")
}

/// The application running on a loopback port; stopped when dropped.
pub struct TestApp {
    pub base_url: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub db: TestDb,
    /// The settings it was started with, for a restart.
    overrides: Vec<(String, String)>,
    /// Its OpenAPI document: every `admin_*` call's answer is checked against it.
    contract: std::sync::Arc<crate::openapi::Contract>,
    stop: Option<oneshot::Sender<()>>,
    running: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// The settings that point waghl at a fake GHL, with retries and delays scaled to tests.
pub fn ghl_settings(fake: &FakeGhl) -> Vec<(&'static str, String)> {
    vec![
        ("GHL_CLIENT_ID", fake.client_id().to_owned()),
        ("GHL_CLIENT_SECRET", fake.client_secret().to_owned()),
        ("GHL_CONVERSATION_PROVIDER_ID", PROVIDER_ID.to_owned()),
        ("GHL_API_BASE_URL", fake.base_url.clone()),
        ("GHL_MARKETPLACE_URL", fake.base_url.clone()),
        ("WAGHL_GHL_RETRY_BASE_MS", "10".to_owned()),
        ("WAGHL_GHL_RETRY_MAX_MS", "50".to_owned()),
        ("WAGHL_GHL_TIMEOUT_MS", "1000".to_owned()),
        ("WAGHL_GHL_STATUS_LAG_MS", "20".to_owned()),
    ]
}

pub const PROVIDER_ID: &str = "provider-test-1";

/// The application wired to `fake`, on `backend`; `None` when that backend is unavailable.
pub async fn spawn_app_with_ghl(backend: Backend, fake: &FakeGhl, extra: &[(&str, &str)]) -> Option<TestApp> {
    let settings = ghl_settings(fake);
    let mut overrides: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    overrides.extend_from_slice(extra);
    spawn_app_with(backend, &overrides).await
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Backend::Sqlite, &[])
        .await
        .expect("SQLite is always available")
}

/// `None` when the backend is PostgreSQL and none is configured (outside CI).
pub async fn spawn_app_with(backend: Backend, overrides: &[(&str, &str)]) -> Option<TestApp> {
    let db = TestDb::new(backend).await?;
    Some(spawn_app_on(db, overrides).await)
}

/// Runs the application on an existing database (and its directory: sessions, data).
pub async fn spawn_app_on(db: TestDb, overrides: &[(&str, &str)]) -> TestApp {
    crate::logs::capture();
    let overrides: Vec<(String, String)> = overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let refs: Vec<(&str, &str)> = overrides.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let config = test_config(db.dir.path(), &db.url, &refs);
    let app = Application::build(config).await.expect("the application builds");
    let base_url = format!("http://{}", app.local_addr());
    let state = app.state().clone();
    let contract = std::sync::Arc::new(crate::openapi::Contract::of(&state));
    let (stop, stopped) = oneshot::channel();
    let running = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TestApp {
        base_url,
        client: reqwest::Client::new(),
        state,
        db,
        overrides,
        contract,
        stop: Some(stop),
        running: Some(running),
    }
}

impl TestApp {
    /// Installs the app on `location_id` through the OAuth callback, as GHL's redirect would.
    pub async fn install(&self, fake: &FakeGhl, location_id: &str) {
        let code = fake.location_code(location_id);
        let response = self.get(&format!("/oauth/callback?code={code}")).await;
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap_or_default());
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        let response = self
            .client
            .get(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("GET");
        self.conforming("GET", path, response).await
    }

    /// Checks an answer against the OpenAPI document, and hands it on unread.
    async fn conforming(&self, method: &str, path: &str, response: reqwest::Response) -> reqwest::Response {
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("a response body");
        let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
        let bare = path.split('?').next().unwrap_or(path);
        self.contract.check(method, bare, status.as_u16(), content_type, &body);
        let mut rebuilt = axum::http::Response::new(body);
        *rebuilt.status_mut() = status;
        *rebuilt.headers_mut() = headers;
        reqwest::Response::from(rebuilt)
    }

    /// Stops the application and waits until it has closed the database.
    /// Stops the application and waits until it has closed the database.
    pub async fn stop(mut self) -> TestDb {
        self.stop_in_place().await;
        std::mem::replace(&mut self.db, TestDb::placeholder())
    }

    async fn stop_in_place(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(running) = self.running.take() {
            running.await.expect("the app task").expect("the app stopped cleanly");
        }
    }

    /// Stops the application and starts it again on the same database and directories, as a
    /// redeploy would.
    pub async fn restart(mut self) -> TestApp {
        self.stop_in_place().await;
        let overrides = std::mem::take(&mut self.overrides);
        let refs: Vec<(&str, &str)> = overrides.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let db = std::mem::replace(&mut self.db, TestDb::placeholder());
        spawn_app_on(db, &refs).await
    }

    pub async fn admin_post(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        let response = self
            .client
            .post(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .json(body)
            .send()
            .await
            .expect("POST");
        self.conforming("POST", path, response).await
    }

    pub async fn admin_delete(&self, path: &str) -> reqwest::Response {
        let response = self
            .client
            .delete(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("DELETE");
        self.conforming("DELETE", path, response).await
    }

    /// The location's `session` block.
    /// The value of the first `/metrics` line starting with `name` (0 when there is none).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.admin_get("/metrics").await.text().await.unwrap();
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    pub async fn session(&self, location: &str) -> serde_json::Value {
        let location: serde_json::Value = self
            .admin_get(&format!("/api/v1/locations/{location}"))
            .await
            .json()
            .await
            .expect("a location");
        location["session"].clone()
    }

    /// Polls until the session is in `state` (and has `reason`, when given); panics after 10 s.
    pub async fn wait_for_session(&self, location: &str, state: &str, reason: Option<&str>) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let session = self.session(location).await;
            if session["state"] == state && reason.is_none_or(|r| session["reason"] == r) {
                return session;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never reached {state} {reason:?}: {session}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Reads a JSON error body and returns its `code`.
pub async fn error_code(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.expect("a JSON error body");
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.code in {body}"))
        .to_owned()
}
