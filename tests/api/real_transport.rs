//! The real whatsapp-rust transport end to end, against the WhatsApp test server on loopback
//! (`crates/wa-testserver`, whose phones and contacts are themselves whatsapp-rust clients):
//! waghl pairs by QR as a linked device, relays a contact's message into GHL, sends GHL's reply
//! on WhatsApp (decrypted by the contact's client exactly as sent), and reports the contact's
//! receipts back to GHL. Built only with the `wa-test-server` feature (as `.ci/run` does).

use std::time::{Duration, Instant};

use fake_ghl::FakeGhl;
use serde_json::{Value, json};
use wa_testserver::TestServer;

use crate::helpers::{Backend, TestApp, spawn_app_with_ghl};

const KEY: &str = "real-transport-key";
const BUSINESS: &str = "+14155550180";
const CONTACT: &str = "+14155550181";

#[tokio::test]
async fn the_real_transport_pairs_relays_both_ways_and_reports_receipts_on_sqlite() {
    both_ways(Backend::Sqlite).await;
}

#[tokio::test]
async fn the_real_transport_pairs_relays_both_ways_and_reports_receipts_on_postgres() {
    both_ways(Backend::Postgres).await;
}

async fn both_ways(backend: Backend) {
    let server = TestServer::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let fake = FakeGhl::start().await;
    let ws = server.ws_url();
    let media = server.http_url();
    let Some(app) = spawn_app_with_ghl(
        backend,
        &fake,
        &[
            ("WAGHL_WA_BACKEND", "whatsapp"),
            ("WAGHL_WA_SERVER_URL", ws.as_str()),
            ("WAGHL_WA_MEDIA_URL", media.as_str()),
            ("WAGHL_WEBHOOK_KEY", KEY),
            ("WAGHL_SEND_GAP_MS", "0"),
            ("WAGHL_RELAY_POLL_MS", "50"),
        ],
    )
    .await
    else {
        return;
    };
    let ctl = reqwest::Client::new();
    let at = |path: &str| format!("{}{path}", server.http_url());

    // Pairing: the QR string waghl shows, scanned by the account's phone.
    app.install(&fake, "locReal").await;
    let started = app.admin_post("/api/v1/locations/locReal/session", &json!({})).await;
    assert_eq!(started.status(), 202);
    let session = app.wait_for_session("locReal", "pairing", None).await;
    let qr = wait_for_qr(&app, session).await;
    let scanned = ctl
        .post(at("/_ctl/scan"))
        .json(&json!({ "phone": BUSINESS, "qr": qr }))
        .send()
        .await
        .unwrap();
    assert_eq!(scanned.status(), 200, "{}", scanned.text().await.unwrap());
    let session = app.wait_for_session("locReal", "connected", None).await;
    assert_eq!(session["phone"], BUSINESS);

    // Inbound: a contact's message, decrypted by waghl's client, lands in GHL.
    let sent: Value = ctl
        .post(at("/_ctl/send"))
        .json(&json!({ "from": CONTACT, "to": BUSINESS, "text": "hello from a real client" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let inbound = wait(Duration::from_secs(60), || {
        fake.messages().into_iter().find(|m| m.body["altId"] == sent["id"])
    })
    .await;
    assert_eq!(inbound.body["message"], "hello from a real client");
    assert_eq!(fake.contacts()[0].phone, CONTACT);
    // Acknowledged to WhatsApp once stored.
    let acked: Value = ctl
        .get(at(&format!("/_ctl/acked/{}", sent["id"].as_str().unwrap())))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(acked["acked_by_devices"].as_u64().unwrap() >= 1, "{acked}");

    // Outbound: GHL's reply, decrypted by the contact's client exactly as sent.
    let webhook = json!({
        "locationId": "locReal", "messageId": "ghl-real-1", "contactId": "c", "type": "SMS",
        "phone": CONTACT, "message": "a reply through whatsapp-rust",
    });
    let response = app
        .client
        .post(app.url(&format!("/webhooks/ghl/provider?key={KEY}")))
        .json(&webhook)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let started = Instant::now();
    let received = loop {
        let list: Value = ctl
            .get(at(&format!("/_ctl/received/{CONTACT}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let found = list["messages"].as_array().and_then(|messages| {
            messages
                .iter()
                .find(|m| m["text"] == "a reply through whatsapp-rust")
                .cloned()
        });
        if let Some(message) = found {
            break message;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the contact never got the reply: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The contact reads it: GHL hears `read` (after `sent`/`delivered`).
    let read = ctl
        .post(at("/_ctl/receipt"))
        .json(&json!({ "phone": CONTACT, "id": received["id"], "status": "read" }))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    wait(Duration::from_secs(60), || {
        fake.statuses("ghl-real-1").into_iter().find(|s| s["status"] == "read")
    })
    .await;

    server.shutdown().await;
}

/// The QR string of a pairing session (it may take a moment to show).
async fn wait_for_qr(app: &TestApp, mut session: Value) -> String {
    let started = Instant::now();
    loop {
        if let Some(qr) = session["qr"].as_str() {
            return qr.to_owned();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no QR code: {session}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        session = app.session("locReal").await;
    }
}

/// Polls `found` until it yields, at most `limit`.
async fn wait<T>(limit: Duration, mut found: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = found() {
            return value;
        }
        assert!(started.elapsed() < limit, "timed out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
