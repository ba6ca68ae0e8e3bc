//! WhatsApp sessions end to end with the simulated transport: pairing, reconnection, logout,
//! restore after a restart, QR codes running out, zombies, bans, crash loops.

use std::time::Duration;

use fake_ghl::FakeGhl;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, error_code, spawn_app_with_ghl};

/// Timings scaled for tests: QR codes of 600 ms then 200 ms, a health check every 150 ms.
pub const FAST_SESSIONS: &[(&str, &str)] = &[
    ("WAGHL_WA_BACKEND", "sim"),
    ("WAGHL_SIM_TIME_SCALE", "0.01"),
    ("WAGHL_HEALTH_INTERVAL_MS", "150"),
    ("WAGHL_RESTART_BASE_MS", "50"),
    ("WAGHL_RESTART_MAX_MS", "400"),
    ("WAGHL_LEASE_TTL_MS", "3000"),
    ("WAGHL_RESTORE_SPREAD_MS", "100"),
];

pub struct SimBench {
    pub app: TestApp,
    pub fake: FakeGhl,
}

pub async fn sim_bench(extra: &[(&str, &str)]) -> SimBench {
    sim_bench_on(Backend::Sqlite, extra).await.unwrap()
}

pub async fn sim_bench_on(backend: Backend, extra: &[(&str, &str)]) -> Option<SimBench> {
    let fake = FakeGhl::start().await;
    let mut settings = FAST_SESSIONS.to_vec();
    settings.extend_from_slice(extra);
    let app = spawn_app_with_ghl(backend, &fake, &settings).await?;
    Some(SimBench { app, fake })
}

impl SimBench {
    /// Installs the location and pairs its WhatsApp as `phone`.
    pub async fn paired(&self, location: &str, phone: &str) {
        self.app.install(&self.fake, location).await;
        self.start_pairing(location).await;
        self.app.wait_for_session(location, "pairing", None).await;
        self.wait_for_qr(location).await;
        let response = self
            .app
            .admin_post(&format!("/sim/{location}/scan"), &json!({ "phone": phone }))
            .await;
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
        let session = self.app.wait_for_session(location, "connected", None).await;
        assert_eq!(session["phone"], phone);
    }

    pub async fn start_pairing(&self, location: &str) -> reqwest::Response {
        self.app
            .client
            .post(self.app.url(&format!("/api/v1/locations/{location}/session")))
            .bearer_auth(crate::helpers::ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
    }

    pub async fn wait_for_qr(&self, location: &str) -> String {
        for _ in 0..500 {
            let response = self.app.admin_get(&format!("/sim/{location}/qr")).await;
            if response.status() == 200 {
                return response.json::<Value>().await.unwrap()["code"]
                    .as_str()
                    .unwrap()
                    .to_owned();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no QR code for {location}");
    }

    pub async fn sim(&self, location: &str, action: &str, body: Value) -> reqwest::Response {
        self.app.admin_post(&format!("/sim/{location}/{action}"), &body).await
    }
}

#[tokio::test]
async fn a_scan_pairs_the_session_and_the_admin_api_shows_it() {
    let b = sim_bench(&[]).await;
    b.paired("locPair", "+15550001111").await;
    let sessions: Value = b.app.admin_get("/api/v1/sessions").await.json().await.unwrap();
    let session = &sessions["sessions"][0];
    assert_eq!(session["location_id"], "locPair");
    assert_eq!(session["state"], "connected");
    assert_eq!(session["phone"], "+15550001111");
    assert_eq!(session["reason"], Value::Null);
    assert!(b.app.metric("waghl_pairings_total").await >= 1.0);
    assert_eq!(b.app.metric("waghl_sessions{state=\"connected\"}").await, 1.0);
}

#[tokio::test]
async fn a_network_drop_heals_by_itself() {
    let b = sim_bench(&[]).await;
    b.paired("locDrop", "+15550002222").await;
    assert_eq!(
        b.sim("locDrop", "disconnect", json!({ "seconds": 0.4 })).await.status(),
        200
    );
    let session = b
        .app
        .wait_for_session("locDrop", "reconnecting", Some("wa_disconnected"))
        .await;
    assert_eq!(session["phone"], "+15550002222");
    b.app.wait_for_session("locDrop", "connected", None).await;
    // The transport reconnected; the supervisor restarted nothing.
    assert_eq!(b.app.metric("waghl_session_restarts_total").await, 0.0);
}

#[tokio::test]
async fn a_logout_from_the_phone_is_terminal() {
    let b = sim_bench(&[]).await;
    b.paired("locOut", "+15550003333").await;
    b.sim("locOut", "logout", json!({})).await;
    b.app
        .wait_for_session("locOut", "logged_out", Some("wa_logged_out"))
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let session = b.app.session("locOut").await;
    assert_eq!(session["state"], "logged_out", "no attempt to reconnect: {session}");
    assert_eq!(b.app.metric("waghl_session_restarts_total").await, 0.0);
    // A restart does not bring it back either.
    let app = b.app.restart().await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(app.session("locOut").await["state"], "logged_out");
}

#[tokio::test]
async fn a_restarted_daemon_reconnects_paired_sessions_without_a_new_scan() {
    let b = sim_bench(&[]).await;
    b.paired("locKeep", "+15550004444").await;
    let SimBench { app, fake: _fake } = b;
    let app = app.restart().await;
    let session = app.wait_for_session("locKeep", "connected", None).await;
    assert_eq!(session["phone"], "+15550004444");
}

#[tokio::test]
async fn qr_codes_run_out_and_a_new_request_starts_pairing_again() {
    let b = sim_bench(&[]).await;
    b.app.install(&b.fake, "locQr").await;
    assert_eq!(b.start_pairing("locQr").await.status(), 202);
    let first = b.wait_for_qr("locQr").await;
    // The codes rotate: 600 ms, then 200 ms each.
    let mut rotated = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        match b.app.admin_get("/sim/locQr/qr").await.json::<Value>().await.unwrap()["code"].as_str() {
            Some(code) if code != first => {
                rotated = true;
                break;
            }
            _ => {}
        }
    }
    assert!(rotated, "the QR code never rotated");
    b.app.wait_for_session("locQr", "pairing", Some("qr_exhausted")).await;

    assert_eq!(b.start_pairing("locQr").await.status(), 202);
    let session = b.app.wait_for_session("locQr", "pairing", None).await;
    assert_eq!(session["reason"], Value::Null);
    let fresh = b.wait_for_qr("locQr").await;
    assert_ne!(fresh, first);
    let response = b.sim("locQr", "scan", json!({ "phone": "+15550005555" })).await;
    assert_eq!(response.status(), 200);
    b.app.wait_for_session("locQr", "connected", None).await;
}

#[tokio::test]
async fn the_health_check_restarts_a_zombie() {
    let b = sim_bench(&[]).await;
    b.paired("locZombie", "+15550006666").await;
    assert_eq!(b.sim("locZombie", "zombie", json!({})).await.status(), 200);
    // Found dead, restarted, and connected again with the stored keys.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while b.app.metric("waghl_session_restarts_total").await < 1.0 {
        assert!(std::time::Instant::now() < deadline, "never restarted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.app.wait_for_session("locZombie", "connected", None).await;
    assert!(b.app.metric("waghl_session_health_check_failures_total").await >= 2.0);
}

#[tokio::test]
async fn a_ban_parks_the_session() {
    let b = sim_bench(&[]).await;
    b.paired("locBan", "+15550007777").await;
    b.sim("locBan", "ban", json!({})).await;
    b.app
        .wait_for_session("locBan", "parked", Some("wa_temporary_ban"))
        .await;
}

#[tokio::test]
async fn a_client_that_keeps_failing_is_parked_as_a_crash_loop() {
    let b = sim_bench(&[("WAGHL_CRASH_LOOP_RESTARTS", "3")]).await;
    b.paired("locLoop", "+15550002233").await;
    // The key store becomes unreadable, then the socket dies: every restart fails.
    b.sim("locLoop", "break", json!({})).await;
    b.sim("locLoop", "zombie", json!({})).await;
    b.app.wait_for_session("locLoop", "parked", Some("crash_loop")).await;
    assert_eq!(b.app.metric("waghl_session_restarts_total").await, 4.0);
}

/// The real whatsapp-rust transport with no network: the session reports that it is not
/// connected, the daemon stays up, and it stops cleanly.
#[tokio::test]
async fn the_whatsapp_backend_without_network_stays_up_and_says_it_is_not_connected() {
    let b = sim_bench(&[("WAGHL_WA_BACKEND", "whatsapp")]).await;
    b.app.install(&b.fake, "locReal").await;
    assert_eq!(b.start_pairing("locReal").await.status(), 202);
    let session = b
        .app
        .wait_for_session("locReal", "pairing", Some("wa_unreachable"))
        .await;
    assert_eq!(session["qr"], Value::Null);
    assert_eq!(b.app.get("/healthz").await.status(), 200);
    // The client keeps trying by itself; waghl did not restart it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b.app.metric("waghl_session_restarts_total").await, 0.0);
    let started = std::time::Instant::now();
    b.app.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn one_number_cannot_be_paired_to_two_locations() {
    let b = sim_bench(&[]).await;
    b.paired("locFirst", "+15550008888").await;
    b.app.install(&b.fake, "locSecond").await;
    b.start_pairing("locSecond").await;
    b.wait_for_qr("locSecond").await;
    b.sim("locSecond", "scan", json!({ "phone": "+15550008888" })).await;
    b.app
        .wait_for_session("locSecond", "unpaired", Some("phone_already_paired"))
        .await;
    assert_eq!(b.app.session("locFirst").await["state"], "connected");
}

#[tokio::test]
async fn a_connected_session_is_reset_only_by_logging_it_out() {
    let b = sim_bench(&[]).await;
    b.paired("locReset", "+15550009999").await;
    let response = b.start_pairing("locReset").await;
    assert_eq!(response.status(), 409);
    assert_eq!(error_code(response).await, "session_connected");

    let response = b.app.admin_delete("/api/v1/locations/locReset/session").await;
    assert_eq!(response.status(), 200);
    let session = b.app.wait_for_session("locReset", "unpaired", None).await;
    assert_eq!(session["phone"], Value::Null);
    // The keys are gone: a restart does not reconnect, and pairing shows a QR code again.
    let app = b.app.restart().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.session("locReset").await["state"], "unpaired");
}

#[tokio::test]
async fn pairing_by_phone_number_shows_a_code() {
    let b = sim_bench(&[]).await;
    b.app.install(&b.fake, "locCode").await;
    let response = b
        .app
        .admin_post("/api/v1/locations/locCode/session", &json!({ "phone": "+15551110000" }))
        .await;
    assert_eq!(response.status(), 202);
    let mut code = Value::Null;
    for _ in 0..200 {
        code = b.app.session("locCode").await["pairing_code"].clone();
        if code.is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(code.as_str().map(str::len), Some(8));
    let response = b
        .app
        .admin_post("/api/v1/locations/locCode/session", &json!({ "phone": "12" }))
        .await;
    assert_eq!(error_code(response).await, "invalid_phone");
}

#[tokio::test]
async fn sessions_of_unknown_locations_and_bad_bodies_are_refused() {
    let b = sim_bench(&[]).await;
    assert_eq!(b.start_pairing("locNobody").await.status(), 404);
    b.app.install(&b.fake, "locBody").await;
    let response = b
        .app
        .client
        .post(b.app.url("/api/v1/locations/locBody/session"))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .body("{\"phone\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(error_code(response).await, "invalid_body");
    let response = b.sim("locBody", "scan", json!({ "phone": "+15550001234" })).await;
    assert_eq!(response.status(), 409, "no session runs yet");
}

#[tokio::test]
async fn an_uninstall_logs_the_whatsapp_session_out() {
    let b = sim_bench(&[("WAGHL_WEBHOOK_KEY", "key-for-uninstall-test")]).await;
    b.paired("locGone", "+15552221111").await;
    let app_id = b.fake.client_id().split('-').next().unwrap().to_owned();
    let response = b
        .app
        .client
        .post(b.app.url("/webhooks/ghl/app?key=key-for-uninstall-test"))
        .json(&json!({ "type": "UNINSTALL", "appId": app_id, "locationId": "locGone" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.json::<Value>().await.unwrap()["status"], "uninstalled");
    b.app.wait_for_session("locGone", "unpaired", None).await;
}

/// Two instances on one PostgreSQL database (an overlapping deploy): the second waits for the
/// first's lease instead of opening a second connection.
#[tokio::test]
async fn a_second_instance_waits_for_the_lease_instead_of_connecting_twice() {
    let Some(b) = sim_bench_on(Backend::Postgres, &[]).await else {
        return;
    };
    b.paired("locLease", "+15553331111").await;
    let settings: Vec<(&str, String)> = crate::helpers::ghl_settings(&b.fake)
        .into_iter()
        .chain(FAST_SESSIONS.iter().map(|(k, v)| (*k, v.to_string())))
        .collect();
    let refs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let config = crate::helpers::test_config(b.app.db.dir.path(), &b.app.db.url, &refs);
    let second = waghl::startup::Application::build(config).await.unwrap();
    let state = second.state().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(second.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let location = waghl::domain::LocationId::parse("locLease").unwrap();
    assert!(
        state.sessions.session(&location).is_none(),
        "the second instance connected too"
    );
    assert!(b.app.state.sessions.session(&location).is_some());
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}
