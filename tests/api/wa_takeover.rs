//! A session moves to another instance on the real transport: its instance is killed with
//! SIGKILL and another instance of the same PostgreSQL database, with no file of its own, takes
//! its lease and logs in from the device keys in the database — no new scan, no new device —
//! and messages flow both ways through it (issue #19's "done when").

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use waghl::time::now_ms;

use crate::crash::Daemon;
use crate::helpers::{Backend, TestDb};
use crate::wa_rig::{BUSINESS, CONTACT, DaemonRig, LOCATION, WAIT, linked_devices};

const KEY: &str = "wa-takeover-key";
const TTL_MS: i64 = 3_000;

/// The settings both instances share, with instance `instance`'s own id.
fn settings(instance: &'static str) -> Vec<(&'static str, String)> {
    vec![
        ("WAGHL_INSTANCE_ID", instance.to_owned()),
        ("WAGHL_LEASE_TTL_MS", TTL_MS.to_string()),
        ("WAGHL_WEBHOOK_KEY", KEY.to_owned()),
        ("WAGHL_HEALTH_INTERVAL_MS", "500".to_owned()),
        ("WAGHL_RESTART_BASE_MS", "100".to_owned()),
    ]
}

fn refs<'a>(settings: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    settings.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The instance incarnation that holds the session's lease.
async fn session_owner(pool: &sqlx::PgPool) -> String {
    sqlx::query_scalar("SELECT owner FROM wa_sessions WHERE location_id = $1")
        .bind(LOCATION)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// When instance `prefix` first recorded the session `connected` at or after `since` (ms).
async fn connected_by(pool: &sqlx::PgPool, prefix: &str, since: i64) -> Option<i64> {
    sqlx::query_scalar(
        "SELECT MIN(at) FROM events WHERE location_id = $1 AND to_state = 'connected' \
           AND instance_id LIKE $2 AND at >= $3",
    )
    .bind(LOCATION)
    .bind(format!("{prefix}#%"))
    .bind(since)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_session_whose_instance_is_killed_reconnects_on_another_instance_with_its_stored_keys() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        eprintln!("skipped: WAGHL_TEST_DATABASE_URL is not set");
        return;
    };
    let a_settings = settings("wa-take-a");
    let mut rig = DaemonRig::start(&db.url, &refs(&a_settings)).await;
    let paired = linked_devices(&rig.server).await;
    assert_eq!(paired.len(), 1, "one device linked by the scan");
    let stats_before = rig.ctl_get("/_ctl/stats").await;

    // B: the same database, test server and GHL; its own, empty sessions directory.
    let (ws, media) = (rig.server.ws_url(), rig.server.http_url());
    let mut b_settings = settings("wa-take-b");
    b_settings.extend([
        ("DATABASE_URL", db.url.clone()),
        ("WAGHL_WA_BACKEND", "whatsapp".to_owned()),
        ("WAGHL_WA_SERVER_URL", ws),
        ("WAGHL_WA_MEDIA_URL", media),
    ]);
    let b = Daemon::start(&rig.fake, &refs(&b_settings)).await;
    // One session, two instances: A holds its fair share and keeps it.
    tokio::time::sleep(Duration::from_millis(TTL_MS as u64)).await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let owner = session_owner(&pool).await;
    assert!(owner.starts_with("wa-take-a#"), "A does not run the session: {owner}");
    assert_eq!(b.metric("waghl_sessions_owned").await, "waghl_sessions_owned 0");

    let killed_at = now_ms();
    rig.daemon.kill9();
    let deadline = Instant::now() + Duration::from_millis(TTL_MS as u64 + 5_000);
    let connected_at = loop {
        if let Some(at) = connected_by(&pool, "wa-take-b", killed_at).await {
            break at;
        }
        assert!(
            Instant::now() < deadline,
            "not connected on B within the lease TTL + 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = connected_at - killed_at;
    eprintln!("MEASURE takeover (SIGKILL of A to connected on B): {took} ms (lease TTL {TTL_MS} ms)");
    assert!(took <= TTL_MS + 5_000, "{took} ms");

    b.wait_for_state(LOCATION, "connected").await;
    assert_eq!(b.metric("waghl_sessions_owned").await, "waghl_sessions_owned 1");
    let owner = session_owner(&pool).await;
    assert!(owner.starts_with("wa-take-b#"), "B does not run the session: {owner}");
    // No new scan: the session never showed a code again and no other device was linked.
    let since_kill: Vec<String> =
        sqlx::query_scalar("SELECT to_state FROM events WHERE location_id = $1 AND at >= $2 ORDER BY event_id")
            .bind(LOCATION)
            .bind(killed_at)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        !since_kill.iter().any(|s| s == "pairing" || s == "unpaired"),
        "paired anew: {since_kill:?}"
    );
    assert_eq!(linked_devices(&rig.server).await, paired, "a new device was linked");
    let stats_after = rig.ctl_get("/_ctl/stats").await;
    assert!(
        stats_after["connects"].as_u64() > stats_before["connects"].as_u64(),
        "B never connected to the server: {stats_after}"
    );

    // A message each way, through B.
    let sent = rig
        .ctl_post(
            "/_ctl/send",
            json!({ "from": CONTACT, "to": BUSINESS, "text": "after the takeover" }),
        )
        .await;
    let id = sent["id"].as_str().unwrap().to_owned();
    crate::wa_rig::wait(|| rig.fake.messages().into_iter().find(|m| m.body["altId"] == id)).await;
    let webhook = json!({
        "locationId": LOCATION, "messageId": "ghl-takeover-1", "contactId": "c", "type": "SMS",
        "phone": CONTACT, "message": "reply through B",
    });
    let answer = b.post(&format!("/webhooks/ghl/provider?key={KEY}"), webhook).await;
    assert_eq!(answer.status(), 200);
    let started = Instant::now();
    loop {
        let list = rig.ctl_get(&format!("/_ctl/received/{CONTACT}")).await;
        if received(&list).any(|t| t == "reply through B") {
            break;
        }
        assert!(started.elapsed() < WAIT, "the contact never got the reply: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pool.close().await;
    drop(b);
    rig.server.shutdown().await;
}

fn received(list: &Value) -> impl Iterator<Item = &str> {
    list["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["text"].as_str())
}
