//! Recovery after kill -9 with both queues busy: the restarted daemon resumes at once (its
//! earlier life's claims are released, not waited out), and every message reaches its side
//! exactly once — inbound posts whose outcome the dead process never learnt are found in GHL
//! instead of posted again.
//!
//! `WAGHL_CRASH_RUNS` (default 2) sets how many kill moments each backend is tried with.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fake_ghl::{FakeGhl, Options};
use serde_json::{Value, json};

use crate::crash::Daemon;
use crate::helpers::{Backend, TestDb};

const CHATS: usize = 10;
const PER_DIRECTION: usize = 200;

#[tokio::test]
async fn kill_9_at_random_moments_on_sqlite_relays_everything_exactly_once_and_resumes_at_once() {
    for run in 0..runs() {
        kill_9_mid_flight(Backend::Sqlite, run).await;
    }
}

#[tokio::test]
async fn kill_9_at_random_moments_on_postgres_relays_everything_exactly_once_and_resumes_at_once() {
    for run in 0..runs() {
        kill_9_mid_flight(Backend::Postgres, run).await;
    }
}

#[tokio::test]
async fn a_post_ghl_carried_out_but_answered_with_an_error_is_found_not_posted_again() {
    let b = crate::sessions::sim_bench(&[
        ("WAGHL_RETRY_BASE_MS", "20"),
        ("WAGHL_RETRY_MAX_MS", "200"),
        ("WAGHL_RELAY_POLL_MS", "20"),
    ])
    .await;
    b.paired("locLost", "+15550910002").await;
    // GHL adds the message, then answers 502: waghl cannot know it was added.
    b.fake.fail_after_doing_next("/conversations/messages/inbound", 502, 1);
    b.inbound(
        "locLost",
        json!({ "from": "+14152090101", "id": "LOST1", "text": "once" }),
    )
    .await;
    b.inbound(
        "locLost",
        json!({ "from": "+14152090101", "id": "LOST2", "text": "twice?" }),
    )
    .await;
    let messages = b.wait_for_ghl_messages(2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let alt_ids: Vec<_> = b.fake.messages().iter().map(|m| m.body["altId"].clone()).collect();
    assert_eq!(alt_ids, ["LOST1", "LOST2"], "{messages:?}");
    let metrics = b.app.admin_get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("waghl_inbound_reconciled_total{outcome=\"found\"} 1"),
        "{metrics}"
    );
    // One lookup of the conversation's messages, for the one uncertain post.
    let lookups: Vec<_> = b
        .fake
        .calls_to("/conversations/")
        .into_iter()
        .filter(|c| c.method == "GET" && c.path.ends_with("/messages"))
        .collect();
    assert_eq!(lookups.len(), 1);
    assert_eq!(lookups[0].status, 200);
}

#[tokio::test]
async fn a_post_ghl_refused_with_503_is_not_looked_up_before_it_is_posted_again() {
    let b = crate::sessions::sim_bench(&[
        ("WAGHL_RETRY_BASE_MS", "20"),
        ("WAGHL_RETRY_MAX_MS", "200"),
        ("WAGHL_RELAY_POLL_MS", "20"),
    ])
    .await;
    b.paired("locBusy", "+15550910003").await;
    // More 503s than the client retries in place: the relay retries the row later.
    b.fake.fail_next("/conversations/messages/inbound", 503, 10);
    b.inbound(
        "locBusy",
        json!({ "from": "+14152090102", "id": "BUSY1", "text": "later" }),
    )
    .await;
    b.wait_for_ghl_messages(1).await;
    let lookups = b
        .fake
        .calls_to("/conversations/")
        .into_iter()
        .filter(|c| c.method == "GET" && c.path.ends_with("/messages"))
        .count();
    assert_eq!(lookups, 0, "a 503 did nothing: nothing to look up");
    assert_eq!(b.fake.messages().len(), 1);
}

fn runs() -> usize {
    std::env::var("WAGHL_CRASH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2)
}

async fn kill_9_mid_flight(backend: Backend, run: usize) {
    let Some(db) = TestDb::new(backend).await else { return };
    // GHL's real limit, in a 1 s window instead of 10 s.
    let fake = FakeGhl::start_with(Options {
        rate_window: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    let location = format!("locKill{run}");
    let mut daemon = Daemon::start(
        &fake,
        &[
            ("DATABASE_URL", db.url.as_str()),
            ("WAGHL_WEBHOOK_KEY", "kill-key"),
            ("WAGHL_GHL_RATE_WINDOW_MS", "1000"),
            // Paced so that sends are still going when the kill lands.
            ("WAGHL_SEND_GAP_MS", "40"),
            // Claims as long as in production: a restart must not wait them out.
            ("WAGHL_RELAY_CLAIM_MS", "300000"),
        ],
    )
    .await;
    daemon.install_and_pair(&fake, &location, "+15550910001").await;

    // GHL answers late (after doing the work): a kill lands among posts GHL already holds.
    fake.set_reply_latency(Duration::from_millis(400));
    let client = reqwest::Client::new();
    let webhook_url = daemon.url("/webhooks/ghl/provider?key=kill-key");
    for i in 0..PER_DIRECTION {
        let body = json!({
            "locationId": location, "messageId": format!("out-{i}"), "contactId": "c", "type": "SMS",
            "phone": phone(i), "message": format!("reply {i}"),
        });
        let response = client.post(&webhook_url).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let body = json!({ "from": phone(i), "id": format!("IN{i:04}"), "text": format!("hello {i}") });
        assert_eq!(
            daemon.post(&format!("/sim/{location}/inbound"), body).await.status(),
            200
        );
    }
    // A random moment while both queues drain.
    let moment = Duration::from_millis(100 + random_below(2500));
    tokio::time::sleep(moment).await;
    let sent_at_kill = sent(&daemon, &location).await.len();
    daemon.kill9();
    let in_ghl_at_kill = fake.messages().len();
    fake.set_reply_latency(Duration::ZERO);

    daemon.restart().await;
    let ready = Instant::now();
    let first_after_restart = wait_until(Duration::from_secs(10), || fake.messages().len() > in_ghl_at_kill)
        .await
        .map(|_| ready.elapsed());
    let deadline = Instant::now() + Duration::from_secs(60);
    while fake.messages().len() < PER_DIRECTION || sent(&daemon, &location).await.len() < PER_DIRECTION {
        if Instant::now() >= deadline {
            let waiting: Value = daemon
                .get(&format!("/api/v1/locations/{location}/messages?limit=20"))
                .await
                .json()
                .await
                .unwrap();
            panic!(
                "run {run}: GHL holds {} inbound, WhatsApp sent {}; newest messages: {waiting}",
                fake.messages().len(),
                sent(&daemon, &location).await.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Anything still to come (a duplicate) has had time to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let inbound = count_by(
        fake.messages()
            .iter()
            .map(|m| m.body["altId"].as_str().unwrap().to_owned()),
    );
    let outbound = count_by(
        sent(&daemon, &location)
            .await
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_owned()),
    );
    let reconciled = daemon.metric("waghl_inbound_reconciled_total").await;
    println!(
        "{backend:?} run {run}: kill at {moment:?} ({in_ghl_at_kill} in GHL, {sent_at_kill} sent); first relay {:?} \
         after ready; inbound {} unique / {} duplicated; outbound {} unique / {} duplicated; reconciled {reconciled}",
        first_after_restart,
        inbound.len(),
        duplicates(&inbound),
        outbound.len(),
        duplicates(&outbound),
    );
    assert_eq!(
        (inbound.len(), duplicates(&inbound)),
        (PER_DIRECTION, 0),
        "inbound lost or duplicated"
    );
    assert_eq!(
        (outbound.len(), duplicates(&outbound)),
        (PER_DIRECTION, 0),
        "outbound lost or duplicated"
    );
    if in_ghl_at_kill < PER_DIRECTION {
        let waited = first_after_restart.expect("nothing was relayed after the restart");
        assert!(
            waited < Duration::from_secs(2),
            "the relay resumed {waited:?} after ready"
        );
    }
    assert_per_chat_order(&fake);
}

fn phone(i: usize) -> String {
    format!("+1415209{:04}", 1 + i % CHATS)
}

/// Per chat, GHL received the messages in the order WhatsApp delivered them.
fn assert_per_chat_order(fake: &FakeGhl) {
    let mut last: HashMap<usize, usize> = HashMap::new();
    for message in fake.messages() {
        let n: usize = message.body["altId"].as_str().unwrap()[2..].parse().unwrap();
        if let Some(previous) = last.insert(n % CHATS, n) {
            assert!(previous < n, "chat {}: {n} after {previous}", n % CHATS);
        }
    }
}

async fn sent(daemon: &Daemon, location: &str) -> Vec<Value> {
    let sent: Value = daemon.get(&format!("/sim/{location}/sent")).await.json().await.unwrap();
    sent["sent"].as_array().unwrap().clone()
}

fn count_by(keys: impl Iterator<Item = String>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for key in keys {
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

fn duplicates(counts: &HashMap<String, usize>) -> usize {
    counts.values().map(|n| n - 1).sum()
}

async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> Option<()> {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Some(())
}

fn random_below(bound: u64) -> u64 {
    (waghl::crypto::random_fraction() * bound as f64) as u64
}
