//! The GHL Custom Page over plain HTTP: user contexts encrypted by OpenSSL (independently of
//! waghl's code) open a token for their own location only; wrong, agency-level and foreign
//! contexts are refused; only GHL's origins may frame the page.

use std::io::Write as _;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::browser::{in_ci, tool};
use crate::sessions::{SimBench, sim_bench};

pub const SHARED_SECRET: &str = "test-shared-secret-0123";

/// `plaintext` encrypted as GHL does (CryptoJS AES with a passphrase), by the `openssl`
/// command; `None` (skip) when it is not installed outside CI.
pub fn encrypt_context(plaintext: &Value, secret: &str) -> Option<String> {
    let Some(openssl) = tool("openssl") else {
        assert!(!in_ci(), "CI=true but the openssl command is missing");
        eprintln!("skipped: openssl not installed");
        return None;
    };
    let mut child = Command::new(openssl)
        .args([
            "enc",
            "-aes-256-cbc",
            "-md",
            "md5",
            "-a",
            "-A",
            "-pass",
            "env:WAGHL_TEST_PASS",
        ])
        .env("WAGHL_TEST_PASS", secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(plaintext.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    Some(String::from_utf8(output.stdout).unwrap().trim().to_owned())
}

/// A location user's context, as GHL's docs describe it.
pub fn location_context(location: &str, company: Option<&str>) -> Value {
    json!({ "userId": "user1", "companyId": company, "role": "user", "type": "location",
            "activeLocation": location, "userName": "Ana Test", "email": "ana@example.com", "isAgencyOwner": false })
}

impl SimBench {
    async fn open_page_session(&self, encrypted: &str) -> reqwest::Response {
        self.app
            .client
            .post(self.app.url("/ghl/page/session"))
            .json(&json!({ "encryptedData": encrypted }))
            .send()
            .await
            .unwrap()
    }

    async fn page_call(&self, method: reqwest::Method, path: &str, token: &str) -> reqwest::Response {
        self.app
            .client
            .request(method, self.app.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn company_of(&self, location: &str) -> Option<String> {
        self.app
            .state
            .store
            .location(location)
            .await
            .unwrap()
            .and_then(|l| l.company_id)
    }
}

#[tokio::test]
async fn a_context_opens_a_token_for_its_own_location_and_nothing_else() {
    let b = sim_bench(&[("GHL_APP_SHARED_SECRET", SHARED_SECRET)]).await;
    b.app.install(&b.fake, "locMine").await;
    b.app.install(&b.fake, "locTheirs").await;
    let company = b.company_of("locMine").await;
    let Some(mine) = encrypt_context(&location_context("locMine", company.as_deref()), SHARED_SECRET) else {
        return;
    };

    let response = b.open_page_session(&mine).await;
    assert_eq!(response.status(), 200);
    let session: Value = response.json().await.unwrap();
    assert_eq!(session["location_id"], "locMine");
    assert_eq!(session["view"]["state"], "unpaired");
    let token = session["token"].as_str().unwrap().to_owned();

    let restarted = b.page_call(reqwest::Method::POST, "/ghl/page/restart", &token).await;
    assert_eq!(restarted.status(), 202);
    b.app.wait_for_session("locMine", "pairing", None).await;
    b.wait_for_qr("locMine").await;
    let state: Value = b
        .page_call(reqwest::Method::GET, "/ghl/page/state", &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(state["state"], "pairing");
    assert_eq!(
        b.app.session("locTheirs").await["state"],
        "unpaired",
        "the other location is untouched"
    );

    // The token names its location and is signed: pointing it at another one breaks it.
    let forged = token.replacen("locMine", "locTheirs", 1);
    let response = b.page_call(reqwest::Method::GET, "/ghl/page/state", &forged).await;
    assert_eq!(response.status(), 401);
    let response = b.page_call(reqwest::Method::POST, "/ghl/page/restart", &forged).await;
    assert_eq!(response.status(), 401);
    let response = b.page_call(reqwest::Method::GET, "/ghl/page/state", "nonsense").await;
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn wrong_agency_level_and_foreign_contexts_are_refused() {
    let b = sim_bench(&[("GHL_APP_SHARED_SECRET", SHARED_SECRET)]).await;
    b.app.install(&b.fake, "locHere").await;
    let company = b.company_of("locHere").await;
    let Some(wrong_secret) = encrypt_context(&location_context("locHere", company.as_deref()), "another-secret") else {
        return;
    };
    let response = b.open_page_session(&wrong_secret).await;
    assert_eq!(response.status(), 401);
    assert_eq!(crate::helpers::error_code(response).await, "unauthorized");

    let agency = json!({ "userId": "u", "companyId": company, "type": "agency", "role": "admin" });
    let agency = encrypt_context(&agency, SHARED_SECRET).unwrap();
    let response = b.open_page_session(&agency).await;
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("sub-account"));

    let foreign = encrypt_context(&location_context("locElsewhere", company.as_deref()), SHARED_SECRET).unwrap();
    assert_eq!(b.open_page_session(&foreign).await.status(), 403);
    let other_agency = encrypt_context(&location_context("locHere", Some("companyOther")), SHARED_SECRET).unwrap();
    assert_eq!(b.open_page_session(&other_agency).await.status(), 403);
    assert_eq!(b.open_page_session("not even base64 %%%").await.status(), 401);
}

#[tokio::test]
async fn only_ghl_may_frame_the_page_and_without_the_secret_it_is_off() {
    let b = sim_bench(&[("GHL_APP_SHARED_SECRET", SHARED_SECRET)]).await;
    let page = b.app.get("/ghl/page").await;
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(
        policy.contains(
            "frame-ancestors https://app.gohighlevel.com https://*.gohighlevel.com https://*.leadconnectorhq.com"
        ),
        "{policy}"
    );
    assert!(page.headers().get("set-cookie").is_none(), "the page needs no cookie");
    let html = page.text().await.unwrap();
    assert!(html.contains("REQUEST_USER_DATA") && !html.contains(" src="));

    let off = sim_bench(&[]).await;
    let page = off.app.get("/ghl/page").await;
    assert_eq!(page.status(), 503);
    assert!(page.text().await.unwrap().contains("GHL_APP_SHARED_SECRET"));
    let response = off.open_page_session("x").await;
    assert_eq!(crate::helpers::error_code(response).await, "ghl_page_disabled");
}
