//! Attachments that cannot be fetched fail their message instead of holding its chat: a host
//! that resolves only to addresses waghl refuses fails at once, a download that keeps failing
//! fails after its attempts. Every URL here points at loopback.

use serde_json::{Value, json};

use crate::outbound::bench;

fn webhook(message_id: &str, text: &str, attachments: Value) -> Value {
    json!({
        "contactId": "ct-1", "locationId": "locFetch", "messageId": message_id, "type": "SMS",
        "phone": "+14155552671", "message": text, "attachments": attachments,
    })
}

#[tokio::test]
async fn a_host_resolving_only_to_loopback_fails_at_once_and_the_next_text_goes_out() {
    // Production settings: https only, no loopback.
    let b = bench(&[("WAGHL_ALLOW_HTTP_ATTACHMENTS", "false")]).await;
    b.paired("locFetch", "+15551000070").await;
    b.provider_webhook(webhook("g-f1", "see", json!(["https://localhost:9/x.png"])))
        .await;
    b.provider_webhook(webhook("g-f2", "after", json!([]))).await;
    let statuses = b.wait_for_status("g-f1", "failed").await;
    let reason = statuses[0]["error"]["message"].as_str().unwrap();
    assert!(reason.contains("localhost resolves only to"), "{reason}");
    let sent = b.wait_for_sent("locFetch", 1).await;
    assert_eq!(sent[0]["text"], "after");
}

#[tokio::test]
async fn an_attachment_that_keeps_failing_fails_its_message_after_its_attempts() {
    let b = bench(&[("WAGHL_ATTACHMENT_ATTEMPTS", "3")]).await;
    b.paired("locFetch", "+15551000071").await;
    // Port 9 on loopback: the connection is refused every time.
    b.provider_webhook(webhook("g-f3", "see", json!(["http://127.0.0.1:9/x.png"])))
        .await;
    b.provider_webhook(webhook("g-f4", "after", json!([]))).await;
    let statuses = b.wait_for_status("g-f3", "failed").await;
    let reason = statuses[0]["error"]["message"].as_str().unwrap();
    assert!(reason.ends_with("(gave up after 3 attempts)"), "{reason}");
    let sent = b.wait_for_sent("locFetch", 1).await;
    assert_eq!(sent[0]["text"], "after");
    let list: Value = b
        .app
        .admin_get("/api/v1/locations/locFetch/messages?state=failed")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["messages"][0]["attempts"], 3);
}
