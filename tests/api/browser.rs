//! Chromium through chromedriver (WebDriver over HTTP), as a person would use the pages; and
//! the tools the browser tests need (zbarimg for QR codes). Outside CI a missing tool skips the
//! test; in CI it fails it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    client: reqwest::Client,
}

pub fn tool(name: &str) -> Option<String> {
    ["/usr/bin", "/usr/local/bin"]
        .iter()
        .map(|dir| format!("{dir}/{name}"))
        .find(|path| std::path::Path::new(path).exists())
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

impl Browser {
    /// A headless Chromium with a window of `width` × `height`; `None` (skip) when it is not
    /// installed outside CI.
    pub async fn start_sized(width: u32, height: u32) -> Option<Self> {
        waghl::startup::install_crypto_provider();
        let (Some(chromium), Some(chromedriver)) = (tool("chromium"), tool("chromedriver")) else {
            assert!(
                !in_ci(),
                "CI=true but chromium or chromedriver is missing (apt: chromium chromium-driver)"
            );
            eprintln!("skipped: chromium / chromedriver not installed");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let started = Instant::now();
        while client.get(format!("{base}/status")).send().await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap().keep();
        let capabilities = json!({ "capabilities": { "alwaysMatch": { "browserName": "chrome", "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     format!("--window-size={width},{height}"), format!("--user-data-dir={}", profile.display())]
        }}}});
        let created: Value = client
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("{created}"))
            .to_owned();
        Some(Self {
            driver,
            base,
            session,
            client,
        })
    }

    pub async fn start() -> Option<Self> {
        Self::start_sized(900, 1100).await
    }

    async fn command(&self, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let response = self.client.post(url).json(&body).send().await.unwrap();
        response.json::<Value>().await.unwrap()["value"].clone()
    }

    pub async fn open(&self, url: &str) {
        self.command("/url", json!({ "url": url })).await;
    }

    /// Runs `script` in the page (or the current frame) and returns its value.
    pub async fn run(&self, script: &str) -> Value {
        self.command("/execute/sync", json!({ "script": script, "args": [] }))
            .await
    }

    pub async fn text(&self) -> String {
        self.run("return document.body ? document.body.innerText : ''")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Polls the page's text until it contains `wanted`; panics with the text after `seconds`.
    pub async fn wait_for_text(&self, wanted: &str, seconds: u64) -> String {
        let started = Instant::now();
        loop {
            let text = self.text().await;
            if text.contains(wanted) {
                return text;
            }
            assert!(
                started.elapsed() < Duration::from_secs(seconds),
                "the page never showed {wanted:?}: {text}"
            );
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// Sets the value of the input `selector`.
    pub async fn fill(&self, selector: &str, value: &str) {
        let script = format!("document.querySelector({}).value = {};", json!(selector), json!(value));
        self.run(&script).await;
    }

    /// Clicks the first element matching `selector`, as a person would (a real click).
    pub async fn click(&self, selector: &str) {
        let found = self
            .command("/element", json!({ "using": "css selector", "value": selector }))
            .await;
        let id = found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {selector}: {found}"))
            .to_owned();
        self.command(&format!("/element/{id}/click"), json!({})).await;
    }

    /// Enters the first frame of the page (for the GHL harness), or leaves it.
    pub async fn enter_frame(&self) {
        self.command("/frame", json!({ "id": 0 })).await;
    }

    pub async fn leave_frame(&self) {
        self.command("/frame/parent", json!({})).await;
    }

    /// Resizes the window, e.g. to a phone's width.
    pub async fn resize(&self, width: u32, height: u32) {
        self.command("/window/rect", json!({ "width": width, "height": height }))
            .await;
    }

    pub async fn screenshot(&self) -> Vec<u8> {
        let url = format!("{}/session/{}/screenshot", self.base, self.session);
        let value: Value = self.client.get(url).send().await.unwrap().json().await.unwrap();
        base64::engine::general_purpose::STANDARD
            .decode(value["value"].as_str().unwrap())
            .unwrap()
    }

    /// Saves a screenshot for a person to look at, under `WAGHL_SCREENSHOTS`
    /// (default `target/screenshots`).
    pub async fn save_screenshot(&self, name: &str) {
        let dir = std::env::var("WAGHL_SCREENSHOTS")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target/screenshots").to_owned());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(format!("{dir}/{name}.png"), self.screenshot().await).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Decodes the QR code in a PNG with zbarimg.
pub fn decode_qr(png: &[u8]) -> Option<String> {
    let zbarimg = tool("zbarimg")?;
    let file = tempfile::Builder::new().suffix(".png").tempfile().unwrap();
    std::fs::write(file.path(), png).unwrap();
    let output = Command::new(zbarimg)
        .args(["--raw", "-q"])
        .arg(file.path())
        .output()
        .unwrap();
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
