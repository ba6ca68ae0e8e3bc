//! Supervision: `pairing` can be acted on the moment it shows, and a panic in a session's
//! client or in a relay task is caught, counted and recovered from — never a silent, permanent
//! loss of the session or the chat. Panics are set off with the simulated WhatsApp's
//! `POST /sim/{id}/panic` (sim only).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use crate::helpers::error_code;
use crate::sessions::{SimBench, sim_bench};

const KEY: &str = "outbound-test-key";

async fn bench() -> SimBench {
    sim_bench(&[
        ("WAGHL_WEBHOOK_KEY", KEY),
        ("WAGHL_SEND_GAP_MS", "0"),
        ("WAGHL_RETRY_BASE_MS", "20"),
        ("WAGHL_RETRY_MAX_MS", "200"),
        ("WAGHL_RELAY_POLL_MS", "20"),
    ])
    .await
}

impl SimBench {
    async fn panic_count(&self, task: &str) -> f64 {
        let series = format!("waghl_task_panics_total{{task=\"{task}\"}} ");
        self.app.metric(&series).await
    }

    async fn arm_panic(&self, location: &str, at: &str) {
        let response = self.sim(location, "panic", json!({ "at": at })).await;
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
}

#[tokio::test]
async fn fifty_pairings_in_a_row_can_be_scanned_the_moment_they_show_pairing() {
    let b = bench().await;
    b.app.install(&b.fake, "locLoop").await;
    for run in 0..50 {
        assert_eq!(b.start_pairing("locLoop").await.status(), 202);
        // `pairing` without a reason: a code is there, so a scan right now must work.
        let session = b.app.wait_for_session("locLoop", "pairing", None).await;
        assert!(
            session["reason"].is_null() && session["qr"].is_string(),
            "run {run}: {session}"
        );
        let response = b.sim("locLoop", "scan", json!({ "phone": "+15550770001" })).await;
        assert_eq!(response.status(), 200, "run {run}: {}", response.text().await.unwrap());
        b.app.wait_for_session("locLoop", "connected", None).await;
        assert_eq!(
            b.app.admin_delete("/api/v1/locations/locLoop/session").await.status(),
            200
        );
    }
}

#[tokio::test]
async fn a_session_whose_client_panics_is_restarted_and_works_again() {
    let b = bench().await;
    b.paired("locPanic", "+15550770002").await;
    let connected_since = b.app.session("locPanic").await["since"].clone();
    // The actor's next health check calls the client and panics.
    b.arm_panic("locPanic", "link").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let session = b.app.session("locPanic").await;
        // Connected again by a new client (a new `since`), after the panic was counted.
        if session["state"] == "connected" && session["since"] != connected_since {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not reconnected: {session}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.panic_count("session").await, 1.0);
    b.inbound("locPanic", json!({ "from": "+15550770003", "text": "after the panic" }))
        .await;
    let messages = b.wait_for_ghl_messages(1).await;
    assert_eq!(messages[0].body["message"], "after the panic");
}

#[tokio::test]
async fn an_outbound_send_that_panics_is_retried_and_its_chat_goes_on() {
    let b = bench().await;
    b.paired("locPanicOut", "+15550770004").await;
    b.arm_panic("locPanicOut", "on_whatsapp").await;
    for (i, text) in ["first", "second"].into_iter().enumerate() {
        let body = json!({
            "locationId": "locPanicOut", "messageId": format!("gp-{i}"), "contactId": "c", "type": "SMS",
            "phone": "+14152090005", "message": text,
        });
        assert_eq!(b.provider_webhook(body).await.status(), 200);
    }
    let sent = b.wait_for_sent("locPanicOut", 2).await;
    let texts: Vec<&Value> = sent.iter().map(|m| &m["text"]).collect();
    assert_eq!(texts, ["first", "second"], "the chat kept its order");
    assert_eq!(b.panic_count("outbound_send").await, 1.0);
}

#[tokio::test]
async fn an_inbound_relay_that_panics_is_retried_and_its_chat_goes_on() {
    let b = bench().await;
    b.paired("locPanicIn", "+15550770006").await;
    b.arm_panic("locPanicIn", "download").await;
    let image = json!({ "kind": "image", "mime": "image/png", "data_base64": BASE64.encode(b"not really a png") });
    b.inbound("locPanicIn", json!({ "from": "+15550770007", "media": image }))
        .await;
    b.inbound(
        "locPanicIn",
        json!({ "from": "+15550770007", "text": "after the image" }),
    )
    .await;
    let messages = b.wait_for_ghl_messages(2).await;
    assert_eq!(messages[0].body["attachments"].as_array().map(Vec::len), Some(1));
    assert_eq!(messages[1].body["message"], "after the image");
    assert_eq!(b.panic_count("inbound_relay").await, 1.0);
}

#[tokio::test]
async fn a_simulated_message_for_an_unknown_location_is_404() {
    let b = bench().await;
    let response = b
        .sim("locNowhere", "inbound", json!({ "from": "+15550770008", "text": "hi" }))
        .await;
    assert_eq!(response.status(), 404);
    assert_eq!(error_code(response).await, "not_found");
}
