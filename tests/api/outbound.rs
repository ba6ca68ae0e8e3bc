//! The outbound relay end to end: GHL's provider webhook → outbox → simulated WhatsApp, and
//! statuses back to the fake GHL.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::sessions::{SimBench, sim_bench};

pub const KEY: &str = "outbound-test-key";

const SETTINGS: &[(&str, &str)] = &[
    ("WAGHL_WEBHOOK_KEY", KEY),
    ("WAGHL_SEND_GAP_MS", "0"),
    ("WAGHL_ALLOW_HTTP_ATTACHMENTS", "true"),
    ("WAGHL_RETRY_BASE_MS", "20"),
    ("WAGHL_RETRY_MAX_MS", "200"),
    ("WAGHL_RELAY_POLL_MS", "20"),
];

pub async fn bench(extra: &[(&str, &str)]) -> SimBench {
    let mut settings = SETTINGS.to_vec();
    settings.extend_from_slice(extra);
    sim_bench(&settings).await
}

impl SimBench {
    pub async fn provider_webhook(&self, body: Value) -> reqwest::Response {
        self.app
            .client
            .post(self.app.url(&format!("/webhooks/ghl/provider?key={KEY}")))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn sent(&self, location: &str) -> Vec<Value> {
        let sent: Value = self
            .app
            .admin_get(&format!("/sim/{location}/sent"))
            .await
            .json()
            .await
            .unwrap();
        sent["sent"].as_array().unwrap().clone()
    }

    pub async fn wait_for_sent(&self, location: &str, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let sent = self.sent(location).await;
            if sent.len() >= count {
                return sent;
            }
            assert!(
                Instant::now() < deadline,
                "WhatsApp got {} of {count} messages",
                sent.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until GHL holds a status `status` for its message `ghl_id`; returns every status.
    pub async fn wait_for_status(&self, ghl_id: &str, status: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let statuses = self.fake.statuses(ghl_id);
            if statuses.iter().any(|s| s["status"] == status) {
                return statuses;
            }
            assert!(
                Instant::now() < deadline,
                "GHL never got {status} for {ghl_id}: {statuses:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn webhook(location: &str, message_id: &str, phone: &str, text: &str) -> Value {
    json!({
        "contactId": "ct-1", "locationId": location, "messageId": message_id, "type": "SMS",
        "phone": phone, "message": text, "attachments": [], "userId": "u1",
    })
}

#[tokio::test]
async fn a_text_reply_is_sent_once_to_the_right_number_however_often_ghl_posts_it() {
    let b = bench(&[]).await;
    b.paired("locOut1", "+15551000001").await;
    for _ in 0..3 {
        let response = b
            .provider_webhook(webhook("locOut1", "g-1", "(415) 222-3333", "Hi from GHL"))
            .await;
        assert_eq!(response.status(), 200);
    }
    let sent = b.wait_for_sent("locOut1", 1).await;
    assert_eq!(
        sent[0]["to"], "+14152223333",
        "the national number read in the default country"
    );
    assert_eq!(sent[0]["kind"], "text");
    assert_eq!(sent[0]["text"], "Hi from GHL");
    b.wait_for_status("g-1", "sent").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.sent("locOut1").await.len(), 1);
}

#[tokio::test]
async fn attachments_go_out_as_media_with_the_text_as_caption() {
    let b = bench(&[]).await;
    b.paired("locOut2", "+15551000002").await;
    let image = b.fake.host_file("photo.jpg", "image/jpeg", vec![0xffu8; 2048]);
    let pdf = b
        .fake
        .host_file("price%20list.pdf", "application/pdf", b"%PDF-1.7 price list".to_vec());
    let mut body = webhook("locOut2", "g-2", "+14152223334", "Here you go");
    body["attachments"] = json!([image, pdf]);
    assert_eq!(b.provider_webhook(body).await.status(), 200);
    let sent = b.wait_for_sent("locOut2", 2).await;
    assert_eq!(sent[0]["kind"], "image");
    assert_eq!(sent[0]["caption"], "Here you go");
    assert_eq!(sent[0]["bytes"], 2048);
    assert_eq!(sent[0]["mime"], "image/jpeg");
    assert_eq!(sent[1]["kind"], "document");
    assert_eq!(sent[1]["file_name"], "price list.pdf");
    assert_eq!(sent[1]["caption"], Value::Null);
    b.wait_for_status("g-2", "sent").await;
}

#[tokio::test]
async fn a_reply_while_whatsapp_is_down_is_sent_after_it_reconnects() {
    let b = bench(&[]).await;
    b.paired("locOut3", "+15551000003").await;
    b.sim("locOut3", "disconnect", json!({ "seconds": 0.6 })).await;
    b.app.wait_for_session("locOut3", "reconnecting", None).await;
    b.provider_webhook(webhook("locOut3", "g-3", "+14152223335", "queued"))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        b.sent("locOut3").await.is_empty(),
        "nothing goes out while disconnected"
    );
    let sent = b.wait_for_sent("locOut3", 1).await;
    assert_eq!(sent[0]["text"], "queued");
}

#[tokio::test]
async fn a_number_not_on_whatsapp_fails_with_the_reason_in_ghl() {
    let b = bench(&[]).await;
    b.paired("locOut4", "+15551000004").await;
    b.provider_webhook(webhook("locOut4", "g-4", "+14152220000", "nobody"))
        .await;
    let statuses = b.wait_for_status("g-4", "failed").await;
    let failed = statuses.iter().find(|s| s["status"] == "failed").unwrap();
    assert!(
        failed["error"]["message"].as_str().unwrap().contains("not on WhatsApp"),
        "{failed}"
    );
    assert!(failed["error"]["code"].is_string() && failed["error"]["type"].is_string());
    let list: Value = b
        .app
        .admin_get("/api/v1/locations/locOut4/messages?state=failed")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["messages"][0]["direction"], "outbound");
    assert!(list["messages"][0]["id"].as_str().unwrap().starts_with("out_"));
}

#[tokio::test]
async fn receipts_move_the_status_to_delivered_then_read_and_ghl_lag_is_ridden_out() {
    let b = bench(&[]).await;
    b.paired("locOut5", "+15551000005").await;
    // GHL answers 403 to the first status updates of a message it has just sent us.
    b.fake.set_status_lag(2);
    b.provider_webhook(webhook("locOut5", "g-5", "+14152223336", "receipts"))
        .await;
    let sent = b.wait_for_sent("locOut5", 1).await;
    b.wait_for_status("g-5", "sent").await;
    let id = sent[0]["id"].as_str().unwrap();
    b.sim("locOut5", "receipt", json!({ "id": id, "status": "delivered" }))
        .await;
    b.wait_for_status("g-5", "delivered").await;
    b.sim("locOut5", "receipt", json!({ "id": id, "status": "read" })).await;
    let statuses = b.wait_for_status("g-5", "read").await;
    let order: Vec<&str> = statuses.iter().map(|s| s["status"].as_str().unwrap()).collect();
    assert_eq!(order, ["sent", "delivered", "read"], "never backwards, never twice");
    // A late delivery receipt after the read changes nothing.
    b.sim("locOut5", "receipt", json!({ "id": id, "status": "delivered" }))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.fake.statuses("g-5").len(), 3);
    assert!(
        b.fake
            .calls_to("/conversations/messages/g-5/status")
            .iter()
            .any(|c| c.status == 403)
    );
}

#[tokio::test]
async fn the_echo_of_waghls_own_send_never_comes_back_into_ghl() {
    let b = bench(&[]).await;
    b.paired("locOut6", "+15551000006").await;
    b.provider_webhook(webhook("locOut6", "g-6", "+14152223337", "from the agent"))
        .await;
    let sent = b.wait_for_sent("locOut6", 1).await;
    let id = sent[0]["id"].as_str().unwrap();
    // The phone reports the message it sent as a linked device, as WhatsApp does.
    let echo = json!({ "from": "+14152223337", "id": id, "text": "from the agent", "from_me": true });
    assert_eq!(b.sim("locOut6", "inbound", echo).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(b.fake.messages().is_empty(), "the echo reached GHL");
    let skipped: Value = b
        .app
        .admin_get("/api/v1/locations/locOut6/messages?state=skipped")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(skipped["messages"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_location_never_paired_fails_at_once_and_old_replays_are_not_sent() {
    let b = bench(&[]).await;
    b.app.install(&b.fake, "locNever").await;
    b.provider_webhook(webhook("locNever", "g-7", "+14152223338", "too early"))
        .await;
    let statuses = b.wait_for_status("g-7", "failed").await;
    assert!(statuses[0]["error"]["message"].as_str().unwrap().contains("not paired"));

    b.paired("locReplay", "+15551000008").await;
    let mut old = webhook("locReplay", "g-8", "+14152223339", "from last year");
    old["dateAdded"] = json!("2025-01-01T00:00:00Z");
    b.provider_webhook(old).await;
    let statuses = b.wait_for_status("g-8", "failed").await;
    assert!(
        statuses[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("before WhatsApp was paired")
    );
    assert!(b.sent("locReplay").await.is_empty());
}

#[tokio::test]
async fn a_message_waiting_past_the_ttl_fails_as_not_connected() {
    let b = bench(&[("WAGHL_OUTBOUND_TTL_MS", "300")]).await;
    b.paired("locTtl", "+15551000009").await;
    b.sim("locTtl", "disconnect", json!({ "seconds": 30 })).await;
    b.app.wait_for_session("locTtl", "reconnecting", None).await;
    b.provider_webhook(webhook("locTtl", "g-9", "+14152223340", "too late"))
        .await;
    let statuses = b.wait_for_status("g-9", "failed").await;
    assert_eq!(statuses[0]["error"]["message"], "WhatsApp not connected");
}

#[tokio::test]
async fn replies_quote_the_original_whatsapp_message_and_sends_are_paced() {
    let b = bench(&[("WAGHL_SEND_GAP_MS", "150")]).await;
    b.paired("locPace", "+15551000010").await;
    for i in 0..3 {
        let mut body = webhook("locPace", &format!("g-p{i}"), "+14152223341", &format!("p{i}"));
        body["replyToAltId"] = json!("3EB0QUOTED");
        b.provider_webhook(body).await;
    }
    let started = Instant::now();
    let sent = b.wait_for_sent("locPace", 3).await;
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "two gaps of at least 105 ms each"
    );
    assert_eq!(sent[0]["reply_to"], "3EB0QUOTED");
    let texts: Vec<&str> = sent.iter().map(|s| s["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["p0", "p1", "p2"]);
}

#[tokio::test]
async fn a_send_the_server_refuses_after_it_returned_fails_in_ghl() {
    let b = bench(&[]).await;
    b.paired("locRefused", "+15551000011").await;
    b.provider_webhook(webhook("locRefused", "g-r", "+14152229999", "blocked me"))
        .await;
    let statuses = b.wait_for_status("g-r", "failed").await;
    let failed = statuses.iter().find(|s| s["status"] == "failed").unwrap();
    assert!(failed["error"]["message"].as_str().unwrap().contains("463"), "{failed}");
    assert!(b.sent("locRefused").await.is_empty());
}
