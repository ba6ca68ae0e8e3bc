//! GHL's webhooks: authentication (both signature schemes, the URL key), replay rules, the
//! provider webhook's validation, and the app lifecycle (INSTALL / UNINSTALL, agency installs).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use fake_ghl::FakeGhl;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use serde_json::{Value, json};
use waghl::store::TokenOwner;

use crate::helpers::{Backend, TestApp, error_code, spawn_app_with_ghl};

const WEBHOOK_KEY: &str = "url-key-0123456789";
const RSA_KEY: &[u8] = include_bytes!("../fixtures/rsa_test_key.der");

/// GHL's side of the signatures, with the test's own keys.
struct Signer {
    ed25519: Ed25519KeyPair,
    rsa: RsaKeyPair,
}

impl Signer {
    fn new() -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Self {
            ed25519: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
            rsa: RsaKeyPair::from_der(RSA_KEY).unwrap(),
        }
    }

    /// The Ed25519 public key as an SPKI PEM, as GHL publishes its own.
    fn ed25519_pem(&self) -> String {
        let mut der = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
        der.extend_from_slice(self.ed25519.public_key().as_ref());
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            BASE64.encode(der)
        )
    }

    fn ed25519(&self, body: &[u8]) -> String {
        BASE64.encode(self.ed25519.sign(body).as_ref())
    }

    fn rsa(&self, body: &[u8]) -> String {
        let mut signature = vec![0u8; self.rsa.public().modulus_len()];
        self.rsa
            .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), body, &mut signature)
            .unwrap();
        BASE64.encode(signature)
    }
}

struct Bench {
    app: TestApp,
    fake: FakeGhl,
    signer: Signer,
}

async fn bench() -> Bench {
    bench_on(Backend::Sqlite).await.unwrap()
}

async fn bench_on(backend: Backend) -> Option<Bench> {
    let fake = FakeGhl::start().await;
    let signer = Signer::new();
    let ed25519 = signer.ed25519_pem();
    let rsa_path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rsa_test_pub.pem");
    let app = spawn_app_with_ghl(
        backend,
        &fake,
        &[
            ("GHL_WEBHOOK_PUBLIC_KEY", &ed25519),
            ("GHL_WEBHOOK_LEGACY_PUBLIC_KEY", rsa_path),
            ("WAGHL_WEBHOOK_KEY", WEBHOOK_KEY),
            ("WAGHL_BODY_LIMIT_BYTES", "65536"),
        ],
    )
    .await?;
    Some(Bench { app, fake, signer })
}

enum Auth<'a> {
    Ed25519,
    Rsa,
    Key(&'a str),
    /// A signature header with this value.
    Header(&'a str, &'a str),
    None,
}

impl Bench {
    async fn post(&self, path: &str, body: &Value, auth: Auth<'_>) -> reqwest::Response {
        self.post_raw(path, serde_json::to_vec(body).unwrap(), auth).await
    }

    async fn post_raw(&self, path: &str, body: Vec<u8>, auth: Auth<'_>) -> reqwest::Response {
        let mut url = self.app.url(path);
        let mut request = self.app.client.post(&url);
        match auth {
            Auth::Ed25519 => request = request.header("x-ghl-signature", self.signer.ed25519(&body)),
            Auth::Rsa => request = request.header("x-wh-signature", self.signer.rsa(&body)),
            Auth::Key(key) => {
                url = format!("{url}?key={key}");
                request = self.app.client.post(&url);
            }
            Auth::Header(name, value) => request = request.header(name, value),
            Auth::None => {}
        }
        request
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    fn app_id(&self) -> String {
        self.fake.client_id().split('-').next().unwrap().to_owned()
    }

    async fn outbound_rows(&self, location: &str) -> i64 {
        self.app.state.store.outbound_count(location).await.unwrap()
    }
}

fn provider_message(location: &str, message_id: &str) -> Value {
    json!({
        "contactId": "ct1", "locationId": location, "messageId": message_id, "type": "SMS",
        "phone": "+15551234567", "message": "hello from GHL", "attachments": [],
    })
}

fn now_iso() -> String {
    waghl::time::rfc3339(waghl::time::now_ms())
}

#[tokio::test]
async fn a_provider_webhook_signed_with_ed25519_is_queued_once_however_often_it_comes() {
    let b = bench().await;
    b.app.install(&b.fake, "locP").await;
    let message = provider_message("locP", "msg-1");
    for expected in ["queued", "duplicate", "duplicate"] {
        let response = b.post("/webhooks/ghl/provider", &message, Auth::Ed25519).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], expected);
    }
    assert_eq!(b.outbound_rows("locP").await, 1);
}

#[tokio::test]
async fn the_legacy_rsa_signature_is_accepted_when_valid() {
    let b = bench().await;
    b.app.install(&b.fake, "locR").await;
    let response = b
        .post("/webhooks/ghl/provider", &provider_message("locR", "m1"), Auth::Rsa)
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(b.outbound_rows("locR").await, 1);
}

#[tokio::test]
async fn bad_or_missing_signatures_and_stale_timestamps_get_401_and_store_nothing() {
    let b = bench().await;
    b.app.install(&b.fake, "locX").await;
    let message = provider_message("locX", "m1");
    let forged = BASE64.encode([1u8; 64]);
    // Signed over another body: right key, wrong bytes.
    let other_body = b.signer.ed25519(b"{}");
    let legacy_forged = b.signer.rsa(b"{}");
    let cases = [
        ("no signature", Auth::None, "unauthenticated"),
        (
            "forged ed25519",
            Auth::Header("x-ghl-signature", &forged),
            "bad_signature",
        ),
        (
            "ed25519 of another body",
            Auth::Header("x-ghl-signature", &other_body),
            "bad_signature",
        ),
        ("not base64", Auth::Header("x-ghl-signature", "%%%"), "bad_signature"),
        (
            "rsa of another body",
            Auth::Header("x-wh-signature", &legacy_forged),
            "bad_legacy_signature",
        ),
        ("wrong url key", Auth::Key("wrong-key"), "unauthenticated"),
    ];
    for (case, auth, reason) in cases {
        let response = b.post("/webhooks/ghl/provider", &message, auth).await;
        assert_eq!(response.status(), 401, "{case}");
        assert_eq!(error_code(response).await, "unauthorized", "{case}");
        let metrics = b.app.admin_get("/metrics").await.text().await.unwrap();
        assert!(
            metrics.contains(&format!("waghl_webhook_rejections_total{{reason=\"{reason}\"}}")),
            "{case}"
        );
    }
    let mut stale = message.clone();
    stale["timestamp"] = json!(waghl::time::rfc3339(waghl::time::now_ms() - 6 * 60 * 1000));
    let response = b.post("/webhooks/ghl/provider", &stale, Auth::Ed25519).await;
    assert_eq!(response.status(), 401, "stale timestamp");
    assert_eq!(b.outbound_rows("locX").await, 0, "nothing refused may be stored");

    let mut fresh = message.clone();
    fresh["timestamp"] = json!(now_iso());
    assert_eq!(
        b.post("/webhooks/ghl/provider", &fresh, Auth::Ed25519).await.status(),
        200
    );
}

#[tokio::test]
async fn the_url_key_authenticates_unsigned_deliveries_but_not_a_bad_signature() {
    let b = bench().await;
    b.app.install(&b.fake, "locK").await;
    let response = b
        .post(
            "/webhooks/ghl/provider",
            &provider_message("locK", "m1"),
            Auth::Key(WEBHOOK_KEY),
        )
        .await;
    assert_eq!(response.status(), 200);
    // A signature that is present but invalid is refused even with the right key.
    let forged = BASE64.encode([1u8; 64]);
    let body = serde_json::to_vec(&provider_message("locK", "m2")).unwrap();
    let url = b.app.url(&format!("/webhooks/ghl/provider?key={WEBHOOK_KEY}"));
    let response = b
        .app
        .client
        .post(url)
        .header("x-ghl-signature", forged)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(b.outbound_rows("locK").await, 1);
}

#[tokio::test]
async fn invalid_provider_payloads_get_precise_errors() {
    let b = bench().await;
    b.app.install(&b.fake, "locV").await;
    let mut no_phone = provider_message("locV", "m1");
    no_phone["phone"] = Value::Null;
    let response = b.post("/webhooks/ghl/provider", &no_phone, Auth::Ed25519).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_webhook");
    assert!(body["error"]["message"].as_str().unwrap().contains("phone"));

    let response = b
        .post(
            "/webhooks/ghl/provider",
            &provider_message("locUnknown", "m1"),
            Auth::Ed25519,
        )
        .await;
    assert_eq!(response.status(), 404);

    let response = b
        .post_raw("/webhooks/ghl/provider", b"{not json".to_vec(), Auth::Ed25519)
        .await;
    assert_eq!(response.status(), 400);
    assert_eq!(error_code(response).await, "malformed_json");

    let huge = vec![b' '; 100_000];
    let response = b.post_raw("/webhooks/ghl/provider", huge, Auth::Ed25519).await;
    assert_eq!(response.status(), 413);
    assert_eq!(error_code(response).await, "payload_too_large");
    assert_eq!(b.outbound_rows("locV").await, 0);
}

#[tokio::test]
async fn uninstall_removes_the_tokens_marks_the_location_and_keeps_its_history() {
    let b = bench().await;
    b.app.install(&b.fake, "locU").await;
    b.post("/webhooks/ghl/provider", &provider_message("locU", "m1"), Auth::Ed25519)
        .await;
    let event = json!({ "type": "UNINSTALL", "appId": b.app_id(), "locationId": "locU", "webhookId": "wh-1", "timestamp": now_iso() });
    let response = b.post("/webhooks/ghl/app", &event, Auth::Ed25519).await;
    assert_eq!(response.status(), 200);
    let location: Value = b.app.admin_get("/api/v1/locations/locU").await.json().await.unwrap();
    assert_eq!(location["status"], "uninstalled");
    assert!(
        b.app
            .state
            .store
            .credentials(TokenOwner::Location("locU"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(b.outbound_rows("locU").await, 1, "history is kept");

    // Installed again, then GHL replays the old UNINSTALL: nothing changes.
    b.app.install(&b.fake, "locU").await;
    let response = b.post("/webhooks/ghl/app", &event, Auth::Ed25519).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "duplicate");
    let location: Value = b.app.admin_get("/api/v1/locations/locU").await.json().await.unwrap();
    assert_eq!(location["status"], "installed");
}

#[tokio::test]
async fn events_for_another_app_are_ignored() {
    let b = bench().await;
    b.app.install(&b.fake, "locO").await;
    let event = json!({ "type": "UNINSTALL", "appId": "someone-elses-app", "locationId": "locO" });
    let response = b.post("/webhooks/ghl/app", &event, Auth::Ed25519).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["status"], "ignored");
    let location: Value = b.app.admin_get("/api/v1/locations/locO").await.json().await.unwrap();
    assert_eq!(location["status"], "installed");
}

async fn an_agency_install_yields_working_tokens_for_every_location(backend: Backend) {
    let Some(b) = bench_on(backend).await else {
        return;
    };
    let code = b.fake.company_code("agency1", &["locA1", "locA2", "locA3"]);
    let page = b.app.get(&format!("/oauth/callback?code={code}")).await;
    assert_eq!(page.status(), 200);
    let text = page.text().await.unwrap();
    assert!(text.contains("locA1") && text.contains("locA3"), "{text}");

    for location in ["locA1", "locA2", "locA3"] {
        b.app.state.ghl.test_connection(location).await.unwrap();
        let json: Value = b
            .app
            .admin_get(&format!("/api/v1/locations/{location}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(json["token_source"], "company");
        assert_eq!(json["company_id"], "agency1");
    }
    // A minted token that expires is renewed by minting again.
    b.fake.expire_access_tokens("locA2");
    let mints_before = b.fake.calls_to("/oauth/locationToken").len();
    b.app.state.ghl.test_connection("locA2").await.unwrap();
    assert_eq!(b.fake.calls_to("/oauth/locationToken").len(), mints_before + 1);

    // GHL announces one more location of the agency.
    b.fake.add_company_location("agency1", "locA4");
    let install = json!({ "type": "INSTALL", "appId": b.app_id(), "companyId": "agency1", "locationId": "locA4" });
    let response = b.post("/webhooks/ghl/app", &install, Auth::Ed25519).await;
    assert_eq!(response.json::<Value>().await.unwrap()["status"], "installed");
    b.app.state.ghl.test_connection("locA4").await.unwrap();

    // The agency uninstalls: every location of it goes.
    let uninstall = json!({ "type": "UNINSTALL", "appId": b.app_id(), "companyId": "agency1" });
    assert_eq!(b.post("/webhooks/ghl/app", &uninstall, Auth::Rsa).await.status(), 200);
    let list: Value = b.app.admin_get("/api/v1/locations").await.json().await.unwrap();
    let statuses: Vec<&str> = list["locations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["uninstalled"; 4]);
}

#[tokio::test]
async fn an_agency_install_yields_working_tokens_for_every_location_on_sqlite() {
    an_agency_install_yields_working_tokens_for_every_location(Backend::Sqlite).await;
}

#[tokio::test]
async fn an_agency_install_yields_working_tokens_for_every_location_on_postgres() {
    an_agency_install_yields_working_tokens_for_every_location(Backend::Postgres).await;
}

#[tokio::test]
async fn an_install_event_while_ghl_is_down_asks_ghl_to_retry_with_429() {
    let b = bench().await;
    let code = b.fake.company_code("agency2", &["locB1"]);
    b.app.get(&format!("/oauth/callback?code={code}")).await;
    b.fake.add_company_location("agency2", "locB2");
    b.fake.fail_next("/oauth/locationToken", 503, 100);
    let install = json!({ "type": "INSTALL", "appId": b.app_id(), "companyId": "agency2", "locationId": "locB2", "webhookId": "wh-install" });
    let response = b.post("/webhooks/ghl/app", &install, Auth::Ed25519).await;
    assert_eq!(response.status(), 429);
    assert!(b.app.state.store.location("locB2").await.unwrap().is_none());
    // The id was not recorded, so GHL's retry is processed.
    assert!(!b.app.state.store.webhook_seen("wh-install").await.unwrap());
}
