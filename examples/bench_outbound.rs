//! Outbound benchmark: provider webhooks fired at waghl over many connections, sent on the
//! simulated WhatsApp. Prints accepted webhooks per second, webhook response latency p50/p99
//! and webhook → WhatsApp send latency p50/p99.
//!
//! `cargo run --release --example bench_outbound -- [messages] [connections]`; set
//! `WAGHL_BENCH_DATABASE_URL=postgres://…` (an empty database) to run it on PostgreSQL.

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Semaphore;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let messages: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let connections: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(32);
    let database = std::env::var("WAGHL_BENCH_DATABASE_URL").ok();
    let backend = if database.is_some() { "postgres" } else { "sqlite" };
    let bench = Arc::new(support::start(database).await);
    bench.install_and_pair("benchOut", "+15550001234").await;

    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(connections));
    let mut tasks = Vec::with_capacity(messages);
    for i in 0..messages {
        let bench = bench.clone();
        let permit = permits.clone().acquire_owned().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let body = json!({
                "locationId": "benchOut", "messageId": format!("bench-{i}"), "contactId": "c", "type": "SMS",
                // 50 recipients: order is kept per recipient, so they go out in parallel.
                "phone": format!("+1415{:07}", 2_000_001 + i % 50), "message": format!("{i}"),
            });
            let sent_at = waghl::time::now_ms();
            let begun = Instant::now();
            let response = bench.provider_webhook(&body).await;
            assert_eq!(response.status(), 200);
            drop(permit);
            (sent_at, begun.elapsed())
        }));
    }
    let mut webhook_at = Vec::with_capacity(messages);
    let mut response_ms = Vec::with_capacity(messages);
    for task in tasks {
        let (at, took) = task.await.unwrap();
        webhook_at.push(at);
        response_ms.push(took.as_secs_f64() * 1000.0);
    }
    let accepting = started.elapsed();

    // Done when nothing is left to send (the database says so; reading the sent log while it
    // grows would cost the process more than the sends).
    while bench.store.outbound_pending().await.unwrap() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "not all {messages} sent after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_sent = started.elapsed();
    let sent: Value = bench
        .admin(reqwest::Method::GET, "/sim/benchOut/sent", json!({}))
        .await
        .json()
        .await
        .unwrap();
    let sent = sent["sent"].as_array().unwrap().clone();
    assert_eq!(sent.len(), messages, "each message sent once");
    let mut send_ms: Vec<f64> = sent
        .iter()
        .map(|m| {
            let i: usize = m["text"].as_str().unwrap().parse().unwrap();
            (m["at"].as_i64().unwrap() - webhook_at[i]) as f64
        })
        .collect();
    println!("outbound benchmark ({backend}): {messages} webhooks over {connections} connections");
    println!(
        "  accepted: {:.0} webhooks/s ({} in {:.2} s)",
        messages as f64 / accepting.as_secs_f64(),
        messages,
        accepting.as_secs_f64()
    );
    println!(
        "  webhook response: p50 {:.1} ms, p99 {:.1} ms",
        support::percentile(&mut response_ms, 50.0),
        support::percentile(&mut response_ms, 99.0)
    );
    println!(
        "  webhook -> WhatsApp send: p50 {:.0} ms, p99 {:.0} ms; all sent after {:.2} s ({:.0} sends/s)",
        support::percentile(&mut send_ms, 50.0),
        support::percentile(&mut send_ms, 99.0),
        all_sent.as_secs_f64(),
        messages as f64 / all_sent.as_secs_f64()
    );
    println!(
        "  peak memory of the whole process: {:.0} MiB",
        support::peak_memory_mib()
    );
}
