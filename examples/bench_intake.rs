//! Intake benchmark: in one run, the HTTP ceiling (`GET /healthz`) and the durable intake of
//! provider webhooks (each a fresh `messageId`), both over the same number of connections for
//! the same time. Prints both rates, their ratio and the webhooks' latency p50/p99, then checks
//! that every webhook answered `queued` is in the outbox.
//!
//! `cargo run --release --example bench_intake -- [seconds] [connections]`; set
//! `WAGHL_BENCH_DATABASE_URL=postgres://…` (an empty database) to run it on PostgreSQL, and
//! `WAGHL_BENCH_SENDING=off` to measure the intake alone: the session is parked (a simulated
//! ban) after pairing, so the outbound relay sends nothing meanwhile.

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const LOCATION: &str = "benchIn";

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10.0);
    let connections: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(32);
    let database = std::env::var("WAGHL_BENCH_DATABASE_URL").ok();
    let backend = if database.is_some() { "postgres" } else { "sqlite" };
    let bench = Arc::new(support::start(database).await);
    bench.install_and_pair(LOCATION, "+15550001234").await;
    let sending = std::env::var("WAGHL_BENCH_SENDING").as_deref() != Ok("off");
    if !sending {
        let banned = bench
            .admin(reqwest::Method::POST, &format!("/sim/{LOCATION}/ban"), json!({}))
            .await;
        assert_eq!(banned.status(), 200);
    }
    let span = Duration::from_secs_f64(seconds);

    let (healthz, _) = hammer(&bench, connections, span, |bench, _| async move {
        let response = bench.client.get(bench.url("/healthz")).send().await.unwrap();
        response.status() == 200
    })
    .await;

    let next = Arc::new(AtomicUsize::new(0));
    let (accepted, mut latency_ms) = hammer(&bench, connections, span, move |bench, _| {
        let i = next.fetch_add(1, Ordering::Relaxed);
        async move {
            let body = json!({
                "locationId": LOCATION, "messageId": format!("intake-{i}"), "contactId": "c", "type": "SMS",
                "phone": format!("+1415{:07}", 2_000_001 + i % 50), "message": format!("{i}"),
            });
            let response = bench.provider_webhook(&body).await;
            assert_eq!(response.status(), 200, "{}", response.text().await.unwrap_or_default());
            let ack: Value = response.json().await.unwrap();
            assert_eq!(ack["status"], "queued");
            true
        }
    })
    .await;
    let in_outbox = bench.store.outbound_count(LOCATION).await.unwrap();

    let healthz_rate = healthz as f64 / seconds;
    let intake_rate = accepted as f64 / seconds;
    let relay = if sending { "sending" } else { "not sending" };
    println!("intake benchmark ({backend}, relay {relay}): {connections} connections, {seconds} s each");
    println!("  GET /healthz: {healthz_rate:.0} req/s");
    println!(
        "  provider webhooks accepted durably: {intake_rate:.0}/s ({:.1} % of /healthz)",
        100.0 * intake_rate / healthz_rate
    );
    println!(
        "  webhook response: p50 {:.1} ms, p99 {:.1} ms",
        support::percentile(&mut latency_ms, 50.0),
        support::percentile(&mut latency_ms, 99.0)
    );
    println!("  in the outbox: {in_outbox} of {accepted} accepted");
    println!(
        "  peak memory of the whole process: {:.0} MiB",
        support::peak_memory_mib()
    );
    assert_eq!(
        in_outbox as usize, accepted,
        "an accepted webhook is missing from the outbox"
    );
}

/// Runs `request` from `connections` concurrent loops for `span`; returns how many succeeded
/// and each one's latency in milliseconds.
async fn hammer<F, Fut>(
    bench: &Arc<support::Bench>,
    connections: usize,
    span: Duration,
    request: F,
) -> (usize, Vec<f64>)
where
    F: Fn(Arc<support::Bench>, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let deadline = Instant::now() + span;
    let loops: Vec<_> = (0..connections)
        .map(|c| {
            let bench = bench.clone();
            let request = request.clone();
            tokio::spawn(async move {
                let mut latency_ms = Vec::new();
                while Instant::now() < deadline {
                    let begun = Instant::now();
                    if request(bench.clone(), c).await {
                        latency_ms.push(begun.elapsed().as_secs_f64() * 1000.0);
                    }
                }
                latency_ms
            })
        })
        .collect();
    let mut all = Vec::new();
    for one in loops {
        all.extend(one.await.unwrap());
    }
    (all.len(), all)
}
