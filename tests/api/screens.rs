//! The console and the GHL Custom Page in a real browser (Chromium through chromedriver), as
//! an operator and a sub-account user would use them. Screenshots are saved under
//! `target/screenshots` (or `$WAGHL_SCREENSHOTS`) for a person to look at.

use std::time::{Duration, Instant};

use axum::response::Html;
use serde_json::{Value, json};

use crate::browser::{Browser, decode_qr};
use crate::ghl_page::{SHARED_SECRET, encrypt_context, location_context};
use crate::helpers::ADMIN_TOKEN;
use crate::inbound::FAST_RETRIES;
use crate::sessions::{SimBench, sim_bench};

impl Browser {
    /// Signs in at the console's root, typing the token as a person would.
    async fn sign_in_at(&self, base_url: &str) {
        self.open(&format!("{base_url}/")).await;
        self.wait_for_text("Sign in", 10).await;
        self.fill("#token", ADMIN_TOKEN).await;
        self.click("form[action='/login'] button").await;
        self.wait_for_text("Locations", 10).await;
    }
}

#[tokio::test]
async fn in_a_browser_an_operator_signs_in_and_sees_a_location_go_from_pairing_to_connected_live() {
    let Some(browser) = Browser::start().await else { return };
    // WhatsApp's real QR schedule: the code stays up while the test looks at it.
    let b = sim_bench(&[("WAGHL_SIM_TIME_SCALE", "1")]).await;
    b.app.install(&b.fake, "locLive").await;
    b.app.install(&b.fake, "locQuiet").await;

    browser.open(&format!("{}/", b.app.base_url)).await;
    browser.wait_for_text("Admin token", 10).await;
    browser.save_screenshot("console-sign-in").await;
    browser.sign_in_at(&b.app.base_url).await;

    browser.open(&b.app.url("/locations/locLive")).await;
    browser.click("form[action='/locations/locLive/pair'] button").await;
    browser.wait_for_text("Pairing started", 10).await;
    let current = b.wait_for_qr("locLive").await;
    browser.wait_for_text("Linked devices → Link a device", 10).await;
    let started = Instant::now();
    let decoded = loop {
        if let Some(decoded) = decode_qr(&browser.screenshot().await) {
            break Some(decoded);
        }
        if crate::browser::tool("zbarimg").is_none() || started.elapsed() > Duration::from_secs(15) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    if crate::browser::tool("zbarimg").is_some() {
        assert_eq!(
            decoded.as_deref(),
            Some(current.as_str()),
            "the console shows the current QR code"
        );
    }
    browser.save_screenshot("console-location-pairing").await;

    browser.open(&b.app.base_url).await;
    let text = browser.wait_for_text("pairing", 10).await;
    assert!(text.contains("locQuiet") && text.contains("unpaired"), "{text}");
    browser.run("window.notReloaded = true").await;
    browser.save_screenshot("console-locations-pairing").await;

    b.sim("locLive", "scan", json!({ "phone": "+15551900001" })).await;
    browser.wait_for_text("+15551900001", 15).await;
    let text = browser.wait_for_text("connected", 15).await;
    assert!(text.contains("Connected 1"), "the filter counts follow too: {text}");
    assert_eq!(
        browser.run("return window.notReloaded === true").await,
        true,
        "the page updated live, without a reload"
    );
    browser.save_screenshot("console-locations-connected").await;

    browser.resize(390, 844).await;
    browser.open(&b.app.url("/locations/locLive")).await;
    browser.wait_for_text("State history", 10).await;
    browser.save_screenshot("console-location-phone").await;
    browser.open(&b.app.base_url).await;
    browser.wait_for_text("locQuiet", 10).await;
    browser.save_screenshot("console-locations-phone").await;
    browser.open(&b.app.url("/health")).await;
    browser.wait_for_text("This instance", 10).await;
    browser.save_screenshot("console-health-phone").await;
}

#[tokio::test]
async fn in_a_browser_a_dead_message_is_retried_from_its_location_page() {
    let Some(browser) = Browser::start().await else { return };
    let b = sim_bench(FAST_RETRIES).await;
    b.paired("locDeadUi", "+15551900002").await;
    b.fake.fail_next("/conversations/messages/inbound", 422, 2);
    b.inbound(
        "locDeadUi",
        json!({ "from": "+15550600009", "id": "DUI1", "text": "refused once" }),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.app.session("locDeadUi").await.is_null()
        || b.app
            .admin_get("/api/v1/locations/locDeadUi")
            .await
            .json::<Value>()
            .await
            .unwrap()["queues"]["dead"]
            != 1
    {
        assert!(Instant::now() < deadline, "the message never went dead");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    browser.sign_in_at(&b.app.base_url).await;
    browser.open(&b.app.url("/locations/locDeadUi")).await;
    let text = browser.wait_for_text("Retry", 10).await;
    assert!(text.contains("422"), "the dead message says why: {text}");
    browser.save_screenshot("console-location-dead").await;
    browser.click("#dead form button").await;
    browser.wait_for_text("went back to its queue", 10).await;
    let delivered = b.wait_for_ghl_messages(1).await;
    assert_eq!(delivered[0].body["altId"], "DUI1");
    browser.wait_for_text("relayed", 10).await;
    browser.save_screenshot("console-location-retried").await;
}

/// Pages on another site that play GHL's parent frame: each frames `/ghl/page` and answers
/// its `REQUEST_USER_DATA` with its case's payload.
fn ghl_harness(
    listener: tokio::net::TcpListener,
    app_url: &str,
    cases: Vec<(&'static str, String)>,
) -> tokio::task::JoinHandle<()> {
    let mut router = axum::Router::new();
    for (case, payload) in cases {
        let html = format!(
            "<!doctype html><meta charset=utf-8><title>GHL harness</title>\
             <h1>GoHighLevel sub-account (test harness)</h1>\
             <iframe src=\"{app_url}/ghl/page\" width=\"720\" height=\"860\"></iframe>\
             <script>window.addEventListener('message', (event) => {{\
               if (event.data && event.data.message === 'REQUEST_USER_DATA')\
                 event.source.postMessage({{ message: 'REQUEST_USER_DATA_RESPONSE', payload: {payload} }}, event.origin);\
             }});</script>",
            payload = Value::String(payload),
        );
        router = router.route(
            &format!("/{case}"),
            axum::routing::get(move || async move { Html(html) }),
        );
    }
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    })
}

async fn framed_bench(ancestors: &str) -> SimBench {
    sim_bench(&[
        ("WAGHL_SIM_TIME_SCALE", "1"),
        ("GHL_APP_SHARED_SECRET", SHARED_SECRET),
        ("GHL_PAGE_FRAME_ANCESTORS", ancestors),
    ])
    .await
}

#[tokio::test]
async fn in_a_browser_the_ghl_page_shows_its_own_location_and_refuses_wrong_or_foreign_contexts() {
    let Some(browser) = Browser::start().await else { return };
    // The harness listens first: its origin goes into the app's CSP. `localhost` while the app
    // is `127.0.0.1`: another site, as GHL is for waghl.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let harness = format!("http://localhost:{}", listener.local_addr().unwrap().port());
    let b = framed_bench(&harness).await;
    b.app.install(&b.fake, "locFramed").await;
    let company = b.company_of("locFramed").await;
    let Some(own) = encrypt_context(&location_context("locFramed", company.as_deref()), SHARED_SECRET) else {
        return;
    };
    let wrong = encrypt_context(&location_context("locFramed", company.as_deref()), "not-the-secret").unwrap();
    let foreign = encrypt_context(&location_context("locNotHere", company.as_deref()), SHARED_SECRET).unwrap();
    let cases = vec![("own", own), ("wrong", wrong), ("foreign", foreign)];
    let _serving = ghl_harness(listener, &b.app.base_url, cases);

    browser.open(&format!("{harness}/own")).await;
    browser.enter_frame().await;
    browser.wait_for_text("Not linked yet", 15).await;
    browser.click("#restart").await;
    browser.wait_for_text("Scan this code", 15).await;
    let title = browser.run("return document.getElementById('title').textContent").await;
    assert!(title.as_str().unwrap().contains("locFramed"), "{title}");
    browser.leave_frame().await;
    let current = b.wait_for_qr("locFramed").await;
    let started = Instant::now();
    while crate::browser::tool("zbarimg").is_some() {
        if decode_qr(&browser.screenshot().await).as_deref() == Some(current.as_str()) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no readable QR code in the GHL page"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    browser.save_screenshot("ghl-page-qr").await;

    b.sim("locFramed", "scan", json!({ "phone": "+15551900003" })).await;
    browser.enter_frame().await;
    browser.wait_for_text("Connected as +15551900003", 15).await;
    browser.leave_frame().await;
    browser.save_screenshot("ghl-page-connected").await;

    browser.open(&format!("{harness}/wrong")).await;
    browser.enter_frame().await;
    let text = browser.wait_for_text("does not decrypt", 15).await;
    assert!(!text.contains("Scan") && !text.contains("+15551900003"), "{text}");
    browser.leave_frame().await;
    browser.save_screenshot("ghl-page-wrong-context").await;

    browser.open(&format!("{harness}/foreign")).await;
    browser.enter_frame().await;
    let text = browser.wait_for_text("not set up for this sub-account", 15).await;
    assert!(!text.contains("+15551900003"), "{text}");
    browser.leave_frame().await;
    browser.save_screenshot("ghl-page-foreign-context").await;
}
