//! Several waghl instances on one PostgreSQL database (#19): sessions spread over them and move
//! when one stops or dies, any instance answers any request, and no session ever has two
//! clients at once. PostgreSQL only: each test says so and passes when
//! `WAGHL_TEST_DATABASE_URL` is not set (outside CI).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use fake_ghl::FakeGhl;
use serde_json::{Value, json};
use sqlx::Row as _;
use tokio::sync::oneshot;
use waghl::startup::Application;
use waghl::state::AppState;

use crate::helpers::{ADMIN_TOKEN, Backend, TestDb, ghl_settings, test_config};
use crate::sessions::FAST_SESSIONS;

/// Three instances of the real binary, one killed and one stopped, with messages flowing.
mod failover;

/// A client for one instance's HTTP API.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    client: reqwest::Client,
}

impl Api {
    pub fn new(base: String) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(45))
            .build()
            .unwrap();
        Self { base, client }
    }

    /// An admin call: its status and JSON body; `None` when the instance cannot be reached.
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Option<(u16, Value)> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.unwrap_or(Value::Null)))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None).await.expect("the instance answers")
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.call("POST", path, Some(body)).await.expect("the instance answers")
    }

    pub async fn install(&self, fake: &FakeGhl, location: &str) {
        let code = fake.location_code(location);
        let response = self
            .client
            .get(format!("{}/oauth/callback?code={code}", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    pub async fn wait_for_state(&self, location: &str, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, body) = self.get(&format!("/api/v1/locations/{location}")).await;
            if body["session"]["state"] == state {
                return body["session"].clone();
            }
            assert!(Instant::now() < deadline, "{location} never {state}: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Pairs `location` as `phone`: pairing is started on `start` (which then runs the session),
/// the QR code is read and scanned through `other` (which passes both to `start`).
pub async fn pair(start: &Api, other: &Api, location: &str, phone: &str) {
    let (status, body) = start
        .post(&format!("/api/v1/locations/{location}/session"), &json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while other.get(&format!("/sim/{location}/qr")).await.0 != 200 {
        assert!(Instant::now() < deadline, "no QR code for {location}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (status, body) = other
        .post(&format!("/sim/{location}/scan"), &json!({ "phone": phone }))
        .await;
    assert_eq!(status, 200, "{body}");
    other.wait_for_state(location, "connected").await;
}

/// An instance running in this test process.
struct Member {
    api: Api,
    state: AppState,
    stop: Option<oneshot::Sender<()>>,
    running: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Builds an instance on `db` (its sessions directory, the simulated WhatsApp's shared state,
/// included); [`Member::run`] starts it.
async fn build(db: &TestDb, fake: &FakeGhl, extra: &[(&str, &str)]) -> Application {
    crate::logs::capture();
    let mut settings: Vec<(&str, String)> = ghl_settings(fake);
    settings.extend(FAST_SESSIONS.iter().map(|(k, v)| (*k, v.to_string())));
    settings.push(("WAGHL_SIM_TIME_SCALE", "0.1".into()));
    settings.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let refs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Application::build(test_config(db.dir.path(), &db.url, &refs))
        .await
        .unwrap()
}

impl Member {
    fn run(app: Application) -> Self {
        let api = Api::new(format!("http://{}", app.local_addr()));
        let state = app.state().clone();
        let (stop, stopped) = oneshot::channel();
        let running = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Self {
            api,
            state,
            stop: Some(stop),
            running: Some(running),
        }
    }

    /// A clean stop, as on SIGTERM.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.running.take().unwrap().await.unwrap().unwrap();
    }

    fn runs(&self, location: &str) -> bool {
        let location = waghl::domain::LocationId::parse(location).unwrap();
        self.state.sessions.session(&location).is_some()
    }

    fn me(&self) -> String {
        self.state.incarnation.as_str().to_owned()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Reads the events of every session and returns each moment a location had two live clients:
/// an instance's client lives from its first event after a start until it hands the session
/// over or loses its lease (or its process was killed, at the time given in `killed`, by
/// incarnation prefix); an event of another instance in between is a second client.
pub async fn two_clients_at_once(url: &str, killed: &HashMap<String, i64>) -> Vec<String> {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let rows = sqlx::query(
        "SELECT location_id, to_state, reason, instance_id, at FROM events WHERE instance_id IS NOT NULL \
         ORDER BY event_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    let mut live: HashMap<String, HashSet<String>> = HashMap::new();
    let mut found = Vec::new();
    for row in rows {
        let (location, state, reason, by, at): (String, String, Option<String>, String, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let clients = live.entry(location.clone()).or_default();
        clients.retain(|i| {
            !killed
                .iter()
                .any(|(prefix, t)| i.starts_with(prefix.as_str()) && *t <= at)
        });
        let ends = matches!(reason.as_deref(), Some("handed_over" | "lease_lost"))
            || matches!(state.as_str(), "logged_out" | "parked")
            || (state == "unpaired" && reason.as_deref() != Some("pairing_starting"))
            || reason.as_deref() == Some("qr_exhausted");
        if ends {
            clients.remove(&by);
            continue;
        }
        if let Some(other) = clients.iter().find(|i| **i != by) {
            found.push(format!("{location}: {by} {state} {reason:?} while {other} ran it"));
        }
        clients.insert(by);
    }
    found
}

/// Two instances start at the same moment over 24 paired sessions whose leases are free: each
/// sees only itself alive and reaches for all of them, so every lease is raced for. Then they
/// share the sessions out, one stops cleanly and the other takes them all, and a third one
/// joins and is handed half. At no moment has a location two clients.
#[tokio::test]
async fn racing_instances_never_run_one_session_twice_and_share_the_sessions_out() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let fake = FakeGhl::start().await;
    let fast = [("WAGHL_LEASE_TTL_MS", "1500"), ("WAGHL_RESTORE_SPREAD_MS", "30")];
    let first = Member::run(build(&db, &fake, &fast).await);
    let locations: Vec<String> = (0..24).map(|i| format!("locRace{i:02}")).collect();
    for (i, location) in locations.iter().enumerate() {
        first.api.install(&fake, location).await;
        pair(&first.api, &first.api, location, &format!("+15553{i:03}1234")).await;
    }
    first.stop().await;

    let (a, b) = (build(&db, &fake, &fast).await, build(&db, &fake, &fast).await);
    let (a, b) = (Member::run(a), Member::run(b));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let on_a = locations.iter().filter(|l| a.runs(l)).count();
        let on_b = locations.iter().filter(|l| b.runs(l)).count();
        let both: Vec<&String> = locations.iter().filter(|l| a.runs(l) && b.runs(l)).collect();
        assert!(both.is_empty(), "two live clients for {both:?}");
        if on_a + on_b == 24 && on_a.abs_diff(on_b) <= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "not shared out: {on_a} on a, {on_b} on b");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for location in &locations {
        a.api.wait_for_state(location, "connected").await;
    }
    let a_id = a.me();
    a.stop().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while locations.iter().any(|l| !b.runs(l)) {
        assert!(
            Instant::now() < deadline,
            "the sessions of the stopped instance were not taken"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for location in &locations {
        b.api.wait_for_state(location, "connected").await;
    }
    // A new instance gets its share without a restart: the busy one hands over idle sessions.
    let c = Member::run(build(&db, &fake, &fast).await);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (on_b, on_c) = (
            locations.iter().filter(|l| b.runs(l)).count(),
            locations.iter().filter(|l| c.runs(l)).count(),
        );
        let both: Vec<&String> = locations.iter().filter(|l| b.runs(l) && c.runs(l)).collect();
        assert!(both.is_empty(), "two live clients for {both:?}");
        if on_b + on_c == 24 && on_c == 12 {
            break;
        }
        assert!(Instant::now() < deadline, "not rebalanced: {on_b} on b, {on_c} on c");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for location in &locations {
        c.api.wait_for_state(location, "connected").await;
    }
    let doubled = two_clients_at_once(&db.url, &HashMap::new()).await;
    assert!(doubled.is_empty(), "{doubled:#?}");
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let owners: Vec<String> = sqlx::query_scalar("SELECT owner FROM wa_sessions WHERE lease_until > 0")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        owners.iter().filter(|o| **o == b.me()).count(),
        12,
        "the first survivor kept half: {owners:?}"
    );
    let recorders: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT instance_id FROM events WHERE instance_id IS NOT NULL")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        [a_id, b.me(), c.me()].iter().all(|i| recorders.contains(i)),
        "{recorders:?}"
    );
    pool.close().await;
    c.stop().await;
    b.stop().await;
}

/// The session runs on one instance; the other answers every request for it as if it ran it:
/// the admin API and the pairing page show its state and live code, the simulated phone's
/// calls and a logout reach the client, and a webhook queued on the other instance is sent at
/// once (the owner's relay is woken by a notification: it polls only every 10 s here). When the
/// session's owner does not answer, the caller gets a clear 503.
#[tokio::test]
async fn any_instance_answers_for_a_session_another_instance_runs() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let fake = FakeGhl::start().await;
    let settings = [("WAGHL_RELAY_POLL_MS", "10000"), ("WAGHL_WEBHOOK_KEY", "hook-key")];
    let owner = Member::run(build(&db, &fake, &settings).await);
    let other = Member::run(build(&db, &fake, &settings).await);
    let (o, a) = (&owner.api, &other.api);
    a.install(&fake, "locAny").await;
    let (status, _) = o.post("/api/v1/locations/locAny/session", &json!({})).await;
    assert_eq!(status, 202);
    let shown = a.wait_for_state("locAny", "pairing").await;
    let (status, qr) = a.get("/sim/locAny/qr").await;
    assert_eq!(status, 200, "{qr}");
    assert_eq!(
        shown["qr"], qr["code"],
        "the other instance shows the owner's current code"
    );
    let (_, link) = a.post("/api/v1/locations/locAny/pairing-link", &json!({})).await;
    let link = link["url"].as_str().unwrap();
    let query = &link[link.find("?").unwrap()..];
    let page: Value = reqwest::get(format!("{}/pair/locAny/state{query}", a.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        page["qr_svg"].as_str().is_some_and(|svg| svg.contains("<svg")),
        "{page}"
    );
    let (status, body) = a.post("/sim/locAny/scan", &json!({ "phone": "+15553331234" })).await;
    assert_eq!(status, 200, "{body}");
    a.wait_for_state("locAny", "connected").await;
    assert!(owner.runs("locAny") && !other.runs("locAny"));

    let webhook = json!({
        "locationId": "locAny", "messageId": "any-1", "contactId": "c", "type": "SMS",
        "phone": "+14155550123", "message": "sent by the owner",
    });
    let queued = Instant::now();
    let response = reqwest::Client::new()
        .post(format!("{}/webhooks/ghl/provider?key=hook-key", a.base))
        .json(&webhook)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    loop {
        let (_, sent) = a.get("/sim/locAny/sent").await;
        if sent["sent"].as_array().is_some_and(|s| s.len() == 1) {
            assert_eq!(sent["sent"][0]["text"], "sent by the owner");
            break;
        }
        assert!(
            queued.elapsed() < Duration::from_secs(3),
            "the owner was not woken: {sent}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let inbound = json!({ "from": "+14155550123", "id": "ANY1", "text": "hello" });
    let (status, body) = a.post("/sim/locAny/inbound", &inbound).await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = a.post("/api/v1/locations/locAny/session", &json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("session_connected"))
    );
    let (status, body) = a
        .call("DELETE", "/api/v1/locations/locAny/session", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "unpaired");
    assert!(!owner.runs("locAny"), "the owner's client was not logged out");

    // An owner that died a moment ago still holds its lease: nobody answers for it.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::query("UPDATE wa_sessions SET owner = 'gone#0', lease_until = $1 WHERE location_id = 'locAny'")
        .bind(waghl::time::now_ms() + 60_000)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let asked = Instant::now();
    let (status, body) = a.post("/api/v1/locations/locAny/session", &json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("owner_unavailable")),
        "{body}"
    );
    assert!(asked.elapsed() < Duration::from_secs(6));
    let (status, body) = a.get("/sim/locAny/qr").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("owner_unavailable")),
        "{body}"
    );
    other.stop().await;
    owner.stop().await;
}
