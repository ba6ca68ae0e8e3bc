//! The pairing page: signed links, live state, restarting pairing, and a real browser.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::browser::{Browser, decode_qr, in_ci, tool};
use crate::sessions::{SimBench, sim_bench};

impl SimBench {
    async fn pairing_link(&self, location: &str) -> String {
        let response = self
            .app
            .admin_post(&format!("/api/v1/locations/{location}/pairing-link"), &json!({}))
            .await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert!(body["expires_at"].is_string());
        body["url"].as_str().unwrap().to_owned()
    }
}

/// The link's path and query, on the test server.
fn local(app_url: &str, link: &str) -> String {
    let parsed = reqwest::Url::parse(link).unwrap();
    format!("{app_url}{}?{}", parsed.path(), parsed.query().unwrap())
}

#[tokio::test]
async fn a_signed_link_shows_the_qr_code_and_a_tampered_or_expired_one_is_refused() {
    let b = sim_bench(&[]).await;
    b.app.install(&b.fake, "locPage").await;
    b.start_pairing("locPage").await;
    b.wait_for_qr("locPage").await;
    let link = local(&b.app.base_url, &b.pairing_link("locPage").await);

    let page = b.app.client.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    let html = page.text().await.unwrap();
    assert!(html.contains("<svg") && html.contains("Linked devices"), "{html}");
    // Self-contained: nothing is loaded from anywhere.
    assert!(
        !html.contains(" src=") && !html.contains("<link") && !html.contains("@import"),
        "the page loads something external"
    );

    let tampered = link.replace("sig=", "sig=00");
    assert_eq!(b.app.client.get(&tampered).send().await.unwrap().status(), 403);
    let other_location = link.replace("/pair/locPage", "/pair/locOther");
    assert_eq!(b.app.client.get(&other_location).send().await.unwrap().status(), 403);
    let unsigned = format!("{}/pair/locPage", b.app.base_url);
    assert_eq!(b.app.client.get(&unsigned).send().await.unwrap().status(), 403);

    let expired_at = waghl::time::now_ms() / 1000 - 1;
    let signature = b.app.state.store.key().sign_link(&format!("pair:locPage:{expired_at}"));
    let expired = format!("{}/pair/locPage?exp={expired_at}&sig={signature}", b.app.base_url);
    let response = b.app.client.get(&expired).send().await.unwrap();
    assert_eq!(response.status(), 403);
    assert!(response.text().await.unwrap().contains("expired"));
    let state = b
        .app
        .client
        .get(expired.replace("/pair/locPage", "/pair/locPage/state"))
        .send()
        .await
        .unwrap();
    assert_eq!(state.status(), 403);
}

#[tokio::test]
async fn the_page_restarts_pairing_only_when_the_session_is_not_linked() {
    let b = sim_bench(&[]).await;
    b.app.install(&b.fake, "locRestart").await;
    let link = local(&b.app.base_url, &b.pairing_link("locRestart").await);
    let state_url = link.replacen("?", "/state?", 1);
    let restart_url = link.replacen("?", "/restart?", 1);

    let state: Value = b.app.client.get(&state_url).send().await.unwrap().json().await.unwrap();
    assert_eq!(state["state"], "unpaired");
    assert_eq!(state["can_restart"], true);
    let response = b.app.client.post(&restart_url).send().await.unwrap();
    assert_eq!(response.status(), 202);
    b.wait_for_qr("locRestart").await;
    b.sim("locRestart", "scan", json!({ "phone": "+15551200001" })).await;
    b.app.wait_for_session("locRestart", "connected", None).await;

    let state: Value = b.app.client.get(&state_url).send().await.unwrap().json().await.unwrap();
    assert_eq!(state["state"], "connected");
    assert_eq!(state["can_restart"], false);
    assert_eq!(state["qr_svg"], Value::Null);
    let response = b.app.client.post(&restart_url).send().await.unwrap();
    assert_eq!(
        response.status(),
        409,
        "a connected session cannot be reset from the page"
    );
    b.app.wait_for_session("locRestart", "connected", None).await;
}

#[tokio::test]
async fn the_install_page_links_to_pairing() {
    let b = sim_bench(&[]).await;
    let code = b.fake.location_code("locLinked");
    let html = b
        .app
        .get(&format!("/oauth/callback?code={code}"))
        .await
        .text()
        .await
        .unwrap();
    let start = html.find("/pair/locLinked?exp=").expect("a pairing link");
    let link = &html[start..html[start..].find('"').map_or(html.len(), |end| start + end)];
    assert!(link.contains("&amp;sig=") || link.contains("&sig="), "{link}");
}

#[tokio::test]
async fn in_a_real_browser_the_qr_decodes_to_the_current_code_and_the_page_turns_connected() {
    let Some(browser) = Browser::start().await else { return };
    if tool("zbarimg").is_none() {
        assert!(!in_ci(), "CI=true but zbarimg is missing (apt: zbar-tools)");
        eprintln!("skipped: zbarimg not installed");
        return;
    }
    // WhatsApp's real QR schedule (60 s for the first code): the code is stable for the test.
    let b = sim_bench(&[("WAGHL_SIM_TIME_SCALE", "1")]).await;
    b.app.install(&b.fake, "locBrowser").await;
    b.start_pairing("locBrowser").await;
    let current = b.wait_for_qr("locBrowser").await;
    let link = local(&b.app.base_url, &b.pairing_link("locBrowser").await);
    browser.open(&link).await;

    let started = Instant::now();
    let decoded = loop {
        let screenshot = browser.screenshot().await;
        // For a person to look at the page: WAGHL_TEST_SCREENSHOT=/tmp/pairing.png
        if let Ok(path) = std::env::var("WAGHL_TEST_SCREENSHOT") {
            std::fs::write(path, &screenshot).unwrap();
        }
        if let Some(decoded) = decode_qr(&screenshot) {
            break decoded;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no QR code could be read from the page"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(decoded, current, "the QR shown is the code WhatsApp issued");

    b.sim("locBrowser", "scan", json!({ "phone": "+15551300001" })).await;
    browser.wait_for_text("Connected as +15551300001", 15).await;
}
