//! Hostile input on every surface: ids that would forge log lines, query and path values axum
//! would answer in plain text, signatures and timestamps of the wrong shape, bodies of the
//! wrong type or size. Every answer is the documented JSON error (or the pairing page's 403).

use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, error_code};
use crate::outbound::{KEY, bench};
use crate::sessions::SimBench;

const FORGED: &str = "2026-01-01T00:00:00.000000Z ERROR waghl::forged: admin token leaked";

fn provider_message(message_id: &str) -> Value {
    json!({
        "contactId": "ct1", "locationId": "locHostile", "messageId": message_id, "type": "SMS",
        "phone": "+14155552671", "message": "hello", "attachments": [],
    })
}

impl SimBench {
    /// A provider webhook with the right `?key=`, this body and these headers.
    async fn provider_raw(&self, body: impl Into<reqwest::Body>, headers: &[(&str, &[u8])]) -> reqwest::Response {
        let mut request = self
            .app
            .client
            .post(self.app.url(&format!("/webhooks/ghl/provider?key={KEY}")))
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, reqwest::header::HeaderValue::from_bytes(value).unwrap());
        }
        request.send().await.unwrap()
    }

    async fn admin_raw(&self, path: &str, content_type: &str, body: &str) -> reqwest::Response {
        self.app
            .client
            .post(self.app.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .header(CONTENT_TYPE, content_type)
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }
}

const JSON: (&str, &[u8]) = ("content-type", b"application/json");

#[tokio::test]
async fn ids_that_would_forge_a_log_line_or_flood_it_are_refused_with_400() {
    let b = bench(&[]).await;
    b.app.install(&b.fake, "locHostile").await;
    let forged = format!("x\n{FORGED}");
    let huge = "a".repeat(900_000);
    for (field, value) in [
        ("messageId", &forged),
        ("contactId", &huge),
        ("userId", &"u\0\u{202e}".to_owned()),
    ] {
        let mut body = provider_message("g-ok");
        body[field] = json!(value);
        let response = b.provider_raw(body.to_string(), &[JSON]).await;
        assert_eq!(response.status(), 400, "{field}");
        let text = response.text().await.unwrap();
        assert!(
            text.len() < 1_000,
            "{field}: the answer echoes the value ({} bytes)",
            text.len()
        );
    }
    let mut app_event = json!({ "type": "UNINSTALL", "appId": "app", "locationId": forged });
    app_event["companyId"] = json!("c1");
    let response = b
        .app
        .client
        .post(b.app.url(&format!("/webhooks/ghl/app?key={KEY}")))
        .json(&app_event)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(
        !crate::logs::captured().contains(&format!("\n{FORGED}")),
        "a forged line reached the log"
    );
    assert_eq!(b.app.state.store.outbound_count("locHostile").await.unwrap(), 0);
}

#[tokio::test]
async fn query_and_path_rejections_answer_the_documented_json_error() {
    let b = bench(&[]).await;
    b.app.install(&b.fake, "locHostile").await;
    let messages = "/api/v1/locations/locHostile/messages";
    for (path, code) in [
        (format!("{messages}?limit=abc"), "invalid_limit"),
        (format!("{messages}?limit=0"), "invalid_limit"),
        (format!("{messages}?state=dead&state=failed"), "invalid_query"),
        ("/api/v1/locations/%ff%fe/messages".to_owned(), "invalid_path"),
        ("/api/v1/locations/%ff%fe".to_owned(), "invalid_path"),
        ("/oauth/callback?code=a&code=b".to_owned(), "invalid_query"),
    ] {
        let response = b.app.admin_get(&path).await;
        assert_eq!(response.status(), 400, "{path}");
        assert_eq!(error_code(response).await, code, "{path}");
    }
    let response = b
        .admin_raw("/api/v1/messages/%ff%fe/retry", "application/json", "")
        .await;
    assert_eq!(error_code(response).await, "invalid_path");
    // A mistyped value is named, not sent back whole.
    let huge = json!({ "ttl_seconds": "9".repeat(200_000) }).to_string();
    let response = b
        .admin_raw("/api/v1/locations/locHostile/pairing-link", "application/json", &huge)
        .await;
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().len() < 1_000);
}

#[tokio::test]
async fn a_pairing_link_whose_path_or_query_does_not_parse_gets_the_403_page() {
    let b = bench(&[]).await;
    b.app.install(&b.fake, "locHostile").await;
    for path in [
        "/pair/locHostile?exp=abc&sig=x",
        "/pair/locHostile?exp=1&exp=2&sig=x",
        "/pair/%ff%fe?exp=1&sig=x",
    ] {
        let response = b.app.get(path).await;
        assert_eq!(response.status(), 403, "{path}");
        assert!(
            response.text().await.unwrap().contains("This link does not work"),
            "{path}"
        );
    }
    let response = b.app.get("/pair/locHostile/state?exp=abc").await;
    assert_eq!(response.status(), 403);
    assert_eq!(error_code(response).await, "forbidden");
}

#[tokio::test]
async fn a_present_signature_that_does_not_verify_is_refused_even_with_the_key() {
    let b = bench(&[]).await;
    b.paired("locHostile", "+15551000080").await;
    let body = provider_message("g-sig").to_string();
    for (header, value) in [
        ("x-ghl-signature", "Ωsig".as_bytes()),
        ("x-ghl-signature", b"\xff\xfe"),
        ("x-ghl-signature", b""),
        ("x-wh-signature", "Ωsig".as_bytes()),
    ] {
        let response = b.provider_raw(body.clone(), &[JSON, (header, value)]).await;
        assert_eq!(response.status(), 401, "{header}: {value:?}");
    }
    assert_eq!(b.provider_raw(body, &[JSON]).await.status(), 200, "the key alone");
}

#[tokio::test]
async fn a_timestamp_that_is_not_an_rfc_3339_string_within_the_window_is_refused() {
    let b = bench(&[]).await;
    b.paired("locHostile", "+15551000081").await;
    for timestamp in [
        "0",
        "-1",
        "18446744073709551616",
        "1e18",
        "true",
        "[]",
        "{}",
        "\"soon\"",
    ] {
        let mut body = provider_message("g-ts").to_string();
        body.insert_str(1, &format!("\"timestamp\":{timestamp},"));
        let response = b.provider_raw(body, &[JSON]).await;
        assert_eq!(response.status(), 401, "timestamp {timestamp}");
    }
    let mut body = provider_message("g-ts");
    body["timestamp"] = json!(waghl::time::rfc3339(waghl::time::now_ms()));
    assert_eq!(b.provider_raw(body.to_string(), &[JSON]).await.status(), 200);
}

#[tokio::test]
async fn webhooks_and_admin_routes_refuse_bodies_that_are_not_json_with_415() {
    let b = bench(&[]).await;
    b.paired("locHostile", "+15551000082").await;
    let body = provider_message("g-type").to_string();
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let response = b
            .provider_raw(body.clone(), &[("content-type", content_type.as_bytes())])
            .await;
        assert_eq!(response.status(), 415, "webhook as {content_type}");
        for path in [
            "/api/v1/locations/locHostile/pairing-link",
            "/api/v1/locations/locHostile/session",
            "/sim/locHostile/disconnect",
        ] {
            let response = b.admin_raw(path, content_type, "{}").await;
            assert_eq!(response.status(), 415, "{path} as {content_type}");
            assert_eq!(error_code(response).await, "unsupported_media_type");
        }
    }
    assert_eq!(b.app.state.store.outbound_count("locHostile").await.unwrap(), 0);
}

#[tokio::test]
async fn the_sim_honours_the_body_limit_and_knows_only_installed_locations() {
    let b = bench(&[("WAGHL_BODY_LIMIT_BYTES", "65536")]).await;
    b.paired("locHostile", "+15551000083").await;
    let big = json!({ "from": "+15557654321", "text": "x".repeat(100_000) }).to_string();
    let response = b.admin_raw("/sim/locHostile/inbound", "application/json", &big).await;
    assert_eq!(response.status(), 413);
    let response = b.admin_raw("/sim/locUnknown/break", "application/json", "").await;
    assert_eq!(response.status(), 404);
    assert_eq!(error_code(response).await, "not_found");
}

#[tokio::test]
async fn after_a_logout_the_session_no_longer_shows_the_old_pairing_code() {
    let b = bench(&[]).await;
    b.app.install(&b.fake, "locHostile").await;
    let response = b
        .app
        .admin_post(
            "/api/v1/locations/locHostile/session",
            &json!({ "phone": "+15551110001" }),
        )
        .await;
    assert_eq!(response.status(), 202);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !b.app.session("locHostile").await["pairing_code"].is_string() {
        assert!(std::time::Instant::now() < deadline, "no pairing code shown");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let logged_out: Value = b
        .app
        .admin_delete("/api/v1/locations/locHostile/session")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(logged_out["pairing_code"], Value::Null, "{logged_out}");
    let session = b.app.session("locHostile").await;
    assert_eq!(session["pairing_code"], Value::Null, "{session}");
    assert_eq!(session["qr"], Value::Null, "{session}");
}
