//! The console over plain HTTP: signing in (and where the token is), the session cookie, CSRF
//! on every form, actions through the admin API's code, readable errors, and its speed with a
//! thousand locations.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{ADMIN_TOKEN, Backend, TestApp, spawn_app_with};
use crate::inbound::FAST_RETRIES;
use crate::sessions::{sim_bench, sim_bench_on};

/// A browser without a browser: keeps cookies, submits forms with their CSRF token.
pub struct ConsoleClient<'a> {
    app: &'a TestApp,
    client: reqwest::Client,
    pub cookies: HashMap<String, String>,
}

pub struct Page {
    pub status: u16,
    pub set_cookies: Vec<String>,
    pub html: String,
}

impl Page {
    /// The CSRF token of the page's forms.
    pub fn csrf(&self) -> String {
        let start = self
            .html
            .find("name=\"csrf\" value=\"")
            .expect("a form with a CSRF token")
            + 19;
        self.html[start..start + 64].to_owned()
    }
}

impl<'a> ConsoleClient<'a> {
    pub fn new(app: &'a TestApp) -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self {
            app,
            client,
            cookies: HashMap::new(),
        }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let response = request.header("cookie", cookie).send().await.unwrap();
        let set_cookies: Vec<String> = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        for set in &set_cookies {
            let (pair, _) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        Page {
            status: response.status().as_u16(),
            set_cookies,
            html: response.text().await.unwrap(),
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let request = self.client.get(self.app.url(path));
        self.send(request).await
    }

    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let request = self.client.post(self.app.url(path)).form(fields);
        self.send(request).await
    }

    /// Opens the sign-in page and signs in with `token`.
    pub async fn sign_in(&mut self, token: &str) -> Page {
        let csrf = self.get("/").await.csrf();
        self.post("/login", &[("csrf", &csrf), ("token", token)]).await
    }
}

#[tokio::test]
async fn a_newcomer_at_the_root_is_told_where_the_generated_admin_token_is_and_signs_in_with_it() {
    let app = spawn_app_with(Backend::Sqlite, &[("WAGHL_ADMIN_TOKEN", "")])
        .await
        .unwrap();
    let mut console = ConsoleClient::new(&app);
    let page = console.get("/").await;
    assert_eq!(page.status, 401);
    let file = app.db.dir.path().join("data/admin.token");
    let shown = std::fs::canonicalize(&file).unwrap();
    assert!(page.html.contains(&shown.display().to_string()), "{}", page.html);
    let token = std::fs::read_to_string(&file).unwrap();

    let page = console.sign_in(token.trim()).await;
    assert_eq!(page.status, 303);
    let page = console.get("/").await;
    assert_eq!(page.status, 200);
    assert!(page.html.contains("<h1>Locations</h1>") && page.html.contains("No location here yet"));
}

#[tokio::test]
async fn the_session_cookie_is_strict_http_only_and_signed_and_every_form_needs_its_csrf_token() {
    let b = sim_bench(&[]).await;
    b.app.install(&b.fake, "locCookie").await;
    let mut console = ConsoleClient::new(&b.app);

    let wrong = console.sign_in("not-the-admin-token").await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.html.contains("That is not the admin token."));
    let no_csrf = console.post("/login", &[("token", ADMIN_TOKEN)]).await;
    assert_eq!(no_csrf.status, 403);
    assert!(no_csrf.html.contains("reload the page"), "{}", no_csrf.html);

    let signed_in = console.sign_in(ADMIN_TOKEN).await;
    assert_eq!(signed_in.status, 303);
    let session = signed_in
        .set_cookies
        .iter()
        .find(|c| c.starts_with("waghl_console="))
        .expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(session.contains(attribute), "{session}");
    }
    assert!(!session.contains("Secure"), "plain http: no Secure flag");
    assert!(!session.contains(ADMIN_TOKEN));

    let page = console.get("/locations/locCookie").await;
    assert_eq!(page.status, 200);
    let csrf = page.csrf();
    let forged = console
        .post("/locations/locCookie/pair", &[("csrf", &"0".repeat(64))])
        .await;
    assert_eq!(forged.status, 403);
    let started = console.post("/locations/locCookie/pair", &[("csrf", &csrf)]).await;
    assert_eq!(started.status, 200, "{}", started.html);
    assert!(started.html.contains("Pairing started"));

    // An altered signature is no session.
    let real = console.cookies["waghl_console"].clone();
    console.cookies.insert("waghl_console".into(), real.replace('.', ".0"));
    assert_eq!(console.get("/").await.status, 401);
    console.cookies.insert("waghl_console".into(), real);

    let out = console.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, 303);
    assert!(
        out.set_cookies
            .iter()
            .any(|c| c.starts_with("waghl_console=;") && c.contains("Max-Age=0"))
    );
    assert_eq!(console.get("/").await.status, 401);
    let after = console.post("/locations/locCookie/test", &[("csrf", &csrf)]).await;
    assert_eq!(after.status, 401);
    assert!(after.html.contains("sign in again"));
}

#[tokio::test]
async fn over_https_the_session_cookie_is_secure() {
    let b = sim_bench(&[("WAGHL_PUBLIC_URL", "https://waghl.example")]).await;
    let mut console = ConsoleClient::new(&b.app);
    let page = console.sign_in(ADMIN_TOKEN).await;
    assert!(
        page.set_cookies.iter().all(|c| c.contains("; Secure")),
        "{:?}",
        page.set_cookies
    );
}

#[tokio::test]
async fn console_actions_run_the_admin_api_code_and_bad_input_reads_as_a_message() {
    let b = sim_bench(&[]).await;
    b.app.install(&b.fake, "locActs").await;
    let mut console = ConsoleClient::new(&b.app);
    console.sign_in(ADMIN_TOKEN).await;
    let csrf = console.get("/locations/locActs").await.csrf();

    let link = console
        .post("/locations/locActs/link", &[("csrf", &csrf), ("days", "2")])
        .await;
    assert_eq!(link.status, 200);
    let start = link.html.find("value=\"http").expect("the link") + 7;
    let url = &link.html[start..start + link.html[start..].find('"').unwrap()].replace("&amp;", "&");
    let parsed = reqwest::Url::parse(url).unwrap();
    let local = b.app.url(&format!("{}?{}", parsed.path(), parsed.query().unwrap()));
    assert_eq!(
        b.app.client.get(local).send().await.unwrap().status(),
        200,
        "the link works"
    );

    let bad = console
        .post("/locations/locActs/link", &[("csrf", &csrf), ("days", "0")])
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.html.contains("1 to 90 days"));
    let bad = console
        .post("/locations/locActs/pair", &[("csrf", &csrf), ("phone", "12")])
        .await;
    assert_eq!(bad.status, 400, "{}", bad.html);
    assert!(bad.html.contains("class=\"notice error\""));

    let tested = console.post("/locations/locActs/test", &[("csrf", &csrf)]).await;
    assert_eq!(tested.status, 200, "{}", tested.html);
    assert!(tested.html.contains("the connection works"));

    let unknown = console.get("/locations/locNowhere").await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.html.contains("no location locNowhere"));
    let odd = console.get("/locations/bad%20id").await;
    assert_eq!(odd.status, 400);
    for undecodable in ["/locations/%ff%fe", "/locations/%ff%fe/pair"] {
        let page = match undecodable.ends_with("pair") {
            true => console.post(undecodable, &[("csrf", &csrf)]).await,
            false => console.get(undecodable).await,
        };
        assert_eq!(page.status, 400, "{undecodable}");
        assert!(
            page.html.starts_with("<!doctype html>"),
            "a page, not plain text: {}",
            page.html
        );
    }
    let filter = console.get("/?state=sleeping").await;
    assert_eq!(filter.status, 400);
    assert!(
        filter.html.contains("there is no WhatsApp state &quot;sleeping&quot;"),
        "{}",
        filter.html
    );

    // The pairing the console started is the admin API's: the API sees it.
    console.post("/locations/locActs/pair", &[("csrf", &csrf)]).await;
    b.app.wait_for_session("locActs", "pairing", None).await;
    b.sim("locActs", "scan", json!({ "phone": "+15551800001" })).await;
    b.app.wait_for_session("locActs", "connected", None).await;
    let connected = console.get("/?state=connected").await;
    assert!(connected.html.contains("+15551800001") && connected.html.contains("locActs"));
    let history = console.get("/locations/locActs").await;
    assert!(history.html.contains("State history") && history.html.contains(">pairing<"));
}

/// The list's queue depths come from one grouped scan: they must agree with the per-location
/// count on both databases.
#[tokio::test]
async fn queue_depths_in_the_list_agree_with_each_location_on_both_databases() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(b) = sim_bench_on(backend, FAST_RETRIES).await else {
            continue;
        };
        b.paired("locDepth", "+15551800002").await;
        b.app.install(&b.fake, "locIdle").await;
        b.fake.fail_next("/conversations/messages/inbound", 422, 2);
        b.inbound(
            "locDepth",
            json!({ "from": "+15550600011", "id": "Q1", "text": "dies" }),
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let one: serde_json::Value = b
                .app
                .admin_get("/api/v1/locations/locDepth")
                .await
                .json()
                .await
                .unwrap();
            if one["queues"]["dead"] == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "never dead on {backend:?}");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        b.fake.fail_next("/conversations/messages/inbound", 503, 100_000);
        b.inbound(
            "locDepth",
            json!({ "from": "+15550600012", "id": "Q2", "text": "waits" }),
        )
        .await;
        let list: serde_json::Value = b.app.admin_get("/api/v1/locations").await.json().await.unwrap();
        for location in list["locations"].as_array().unwrap() {
            let id = location["id"].as_str().unwrap();
            let one: serde_json::Value = b
                .app
                .admin_get(&format!("/api/v1/locations/{id}"))
                .await
                .json()
                .await
                .unwrap();
            assert_eq!(location["queues"], one["queues"], "{id} on {backend:?}");
        }
        let depth = &list["locations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["id"] == "locDepth")
            .unwrap()["queues"];
        assert_eq!(
            *depth,
            json!({ "inbound_pending": 1, "outbound_pending": 0, "dead": 1 }),
            "{backend:?}"
        );
        b.fake.clear_faults();
    }
}

#[tokio::test]
async fn the_locations_page_stays_fast_with_a_thousand_locations() {
    let b = sim_bench(&[]).await;
    let store = &b.app.state.store;
    let tokens = waghl::store::GhlTokens {
        access_token: waghl::crypto::Secret::new("access"),
        refresh_token: Some(waghl::crypto::Secret::new("refresh")),
        expires_at: waghl::time::now_ms() + 86_400_000,
    };
    for n in 0..1000 {
        let id = format!("locMany{n:04}");
        let name = format!("Clinic number {n}");
        store
            .upsert_location(waghl::store::NewLocation {
                location_id: &id,
                company_id: Some("companyMany"),
                name: Some(&name),
                tokens: &tokens,
                source: waghl::store::TokenSource::Oauth,
            })
            .await
            .unwrap();
    }
    let mut console = ConsoleClient::new(&b.app);
    console.sign_in(ADMIN_TOKEN).await;
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let page = console.get("/").await;
        times.push(started.elapsed());
        assert_eq!(page.status, 200);
        assert_eq!(page.html.matches("<tr><td data-label=\"Location\">").count(), 1000);
    }
    times.sort();
    let median = times[times.len() / 2];
    let size = console.get("/").await.html.len();
    println!(
        "console: the locations page with 1,000 locations took {median:?} (median of 5; {} KB)",
        size / 1024
    );
    assert!(median < Duration::from_secs(2), "{median:?}");
    let started = Instant::now();
    // Straight through the client: `admin_get` would add the schema check to the time.
    let list = b
        .app
        .client
        .get(b.app.url("/api/v1/locations"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 200);
    list.bytes().await.unwrap();
    println!(
        "console: GET /api/v1/locations with 1,000 locations took {:?}",
        started.elapsed()
    );
}
