//! Inbound benchmark: simulated WhatsApp messages through waghl to the fake GHL (its rate
//! limit raised). Prints throughput, the latency waghl adds (message received → GHL request
//! issued) p50/p99, and peak memory.
//!
//! `cargo run --release --example bench_inbound -- [messages] [chats] [rate]` (rate: messages
//! per second offered; unlimited when absent, which measures saturation); set
//! `WAGHL_BENCH_DATABASE_URL=postgres://…` (an empty database) to run it on PostgreSQL.

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Semaphore;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let messages: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let chats: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let rate: Option<f64> = args.next().and_then(|a| a.parse().ok());
    let database = std::env::var("WAGHL_BENCH_DATABASE_URL").ok();
    let backend = if database.is_some() { "postgres" } else { "sqlite" };
    let bench = Arc::new(support::start(database).await);
    bench.install_and_pair("benchIn", "+15550004321").await;

    let started = Instant::now();
    // As WhatsApp delivers: one message at a time per chat, chats in parallel.
    let permits = Arc::new(Semaphore::new(chats));
    let mut tasks = Vec::with_capacity(messages);
    for i in 0..messages {
        if let Some(rate) = rate {
            tokio::time::sleep_until((started + Duration::from_secs_f64(i as f64 / rate)).into()).await;
        }
        let bench = bench.clone();
        let permit = permits.clone().acquire_owned().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let body = json!({
                "from": format!("+1556{:07}", 2_000_001 + i % chats), "push_name": "Bench",
                "id": format!("B{i}"), "text": format!("message {i}"),
            });
            let received = Instant::now();
            let response = bench.admin(reqwest::Method::POST, "/sim/benchIn/inbound", body).await;
            assert_eq!(response.status(), 200);
            drop(permit);
            (format!("B{i}"), received)
        }));
    }
    let mut received_at = HashMap::with_capacity(messages);
    for task in tasks {
        let (id, at) = task.await.unwrap();
        received_at.insert(id, at);
    }
    while bench.fake.messages().len() < messages {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {} of {messages} relayed",
            bench.fake.messages().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_relayed = started.elapsed();
    // GHL's view: when each add-message request arrived.
    let mut bridge_ms: Vec<f64> = bench
        .fake
        .calls_to("/conversations/messages/inbound")
        .iter()
        .filter_map(|call| {
            let id = call.json()["altId"].as_str()?.to_owned();
            Some(call.at.duration_since(*received_at.get(&id)?).as_secs_f64() * 1000.0)
        })
        .collect();
    let offered = rate.map_or_else(|| "as fast as possible".to_owned(), |r| format!("offered at {r} msg/s"));
    println!("inbound benchmark ({backend}): {messages} messages in {chats} chats, {offered}");
    println!(
        "  throughput: {:.0} messages/s (all in GHL after {:.2} s)",
        messages as f64 / all_relayed.as_secs_f64(),
        all_relayed.as_secs_f64()
    );
    println!(
        "  bridge-added latency (received -> GHL request issued): p50 {:.1} ms, p99 {:.1} ms",
        support::percentile(&mut bridge_ms, 50.0),
        support::percentile(&mut bridge_ms, 99.0)
    );
    println!(
        "  peak memory of the whole process: {:.0} MiB",
        support::peak_memory_mib()
    );
}
