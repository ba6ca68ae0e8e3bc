//! waghl's memory over the real WhatsApp transport: the whatsapp-rust client paired with the
//! WhatsApp test server (`crates/wa-testserver`, on loopback), relaying messages both ways —
//! contacts writing to the business (decrypted by waghl's client, posted to GHL) and GHL's
//! replies (encrypted by waghl's client, decrypted by the contacts' clients). waghl runs as a
//! separate process, so its memory is measured alone; the test server, its phones and contacts,
//! the fake GHL and the load generator stay in this process.
//!
//! Prints the rate and waghl's resident memory each time another tenth of the messages was
//! relayed (flat memory: the first and the last tenth's figures stay within 10 %).
//!
//! `cargo run --release --example bench_wa_memory --all-features -- [messages] [contacts]`
//! (default 20000 4; half each way); set `WAGHL_BENCH_DATABASE_URL=postgres://…` (an empty
//! database) to run it on PostgreSQL.

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{Value, json};
use wa_testserver::TestServer;

const LOCATION: &str = "benchReal";
const BUSINESS: &str = "+14155550180";
/// Messages posted each way before waiting for them to be relayed: bounds what is in flight.
const ROUND: usize = 200;
/// Without progress for this long, the run fails.
const STUCK: Duration = Duration::from_secs(120);

fn main() {
    support::bench_or_daemon(bench());
}

async fn bench() {
    let mut args = std::env::args().skip(1);
    let messages: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let contacts: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
    let database = std::env::var("WAGHL_BENCH_DATABASE_URL").ok();
    let fake = support::fake_ghl().await;
    let server = TestServer::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = support::settings(&fake, dir.path(), database);
    settings.retain(|(name, _)| !name.starts_with("WAGHL_WA_") && !name.starts_with("WAGHL_SIM_"));
    settings.push(("WAGHL_WA_BACKEND", "whatsapp".into()));
    settings.push(("WAGHL_WA_SERVER_URL", server.ws_url()));
    settings.push(("WAGHL_WA_MEDIA_URL", server.http_url()));
    let (mut daemon, bench) = support::start_daemon(&settings, fake, dir).await;
    let bench = Arc::new(bench);
    let ctl = Ctl {
        client: reqwest::Client::new(),
        base: server.http_url(),
    };

    bench.install(LOCATION).await;
    let session = bench.wait_for_session(LOCATION, |s| s["qr"].is_string()).await;
    ctl.post("/_ctl/scan", json!({ "phone": BUSINESS, "qr": session["qr"] }))
        .await;
    bench.wait_for_session(LOCATION, |s| s["state"] == "connected").await;
    let phones: Vec<String> = (0..contacts).map(|c| format!("+1415555{:04}", 200 + c)).collect();

    let each_way = messages / 2;
    let mut tenths = support::Tenths::new(2 * each_way);
    let mut posted = 0;
    while posted < each_way {
        // A round at most a tenth of the run, so that each tenth's memory is read after it.
        let round = ROUND.min((each_way / 10).max(1)).min(each_way - posted);
        // Each contact writes its share in order; GHL's replies go to the contacts in turn.
        let writes = phones.iter().enumerate().map(|(c, phone)| {
            let ctl = &ctl;
            async move {
                for n in (posted..posted + round).filter(|n| n % contacts == c) {
                    let body = json!({ "from": phone, "to": BUSINESS, "text": format!("inbound {n}") });
                    ctl.post("/_ctl/send", body).await;
                }
            }
        });
        let replies = (posted..posted + round).map(|n| {
            let bench = bench.clone();
            let phone = phones[n % contacts].clone();
            async move { reply(&bench, n, &phone).await }
        });
        tokio::join!(join_all(writes), join_all(replies));
        posted += round;
        tenths.record(wait_relayed(&bench, posted).await, &daemon);
    }
    let backend = bench.store.dialect();
    println!(
        "real-transport memory benchmark ({backend}): {messages} messages, half from {contacts} contacts, half GHL's replies to them"
    );
    tenths.print(&daemon, "relayed");
    support::stop(&mut daemon);
    server.shutdown().await;
}

/// The test server's control API (the phones and contacts).
struct Ctl {
    client: reqwest::Client,
    base: String,
}

impl Ctl {
    /// Posts `body` to `path`; it must be accepted.
    async fn post(&self, path: &str, body: Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert_eq!(status, 200, "{path}: {}", response.text().await.unwrap_or_default());
    }
}

/// GHL's reply number `n`, to `phone`, through the provider webhook.
async fn reply(bench: &support::Bench, n: usize, phone: &str) {
    let webhook = json!({
        "locationId": LOCATION, "messageId": format!("reply-{n}"), "contactId": "c", "type": "SMS",
        "phone": phone, "message": format!("reply {n}"),
    });
    let response = bench.provider_webhook(&webhook).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap_or_default());
}

/// Waits until `each_way` messages were relayed into GHL and as many replies sent; returns both
/// together.
async fn wait_relayed(bench: &support::Bench, each_way: usize) -> usize {
    let mut last = (0, Instant::now());
    loop {
        let counts = support::relayed(
            &bench.client,
            &bench.base,
            &[("inbound", "relayed"), ("outbound", "sent")],
        )
        .await;
        let (inbound, outbound) = (counts[0], counts[1]);
        if inbound >= each_way && outbound >= each_way {
            return inbound + outbound;
        }
        if inbound + outbound > last.0 {
            last = (inbound + outbound, Instant::now());
        }
        assert!(
            last.1.elapsed() < STUCK,
            "stuck at {inbound} relayed and {outbound} sent of {each_way} each"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
