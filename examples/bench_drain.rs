//! Drain benchmark: a backlog of outbound messages spread over many locations, sent by a
//! restarted waghl with send pacing off, on the simulated WhatsApp. waghl runs as a separate
//! process (this program started again in daemon mode), so its memory is measured alone: the
//! fake GHL and the load generator stay in this process.
//!
//! Pairs the locations, stops waghl, queues the backlog straight into the database (5 chats per
//! location), starts waghl again and prints the drain rate and waghl's resident memory once 10 %
//! and all of the backlog were sent (flat memory: the two figures stay within 10 %).
//!
//! `cargo run --release --example bench_drain -- [messages] [locations]` (default 100000 200);
//! set `WAGHL_BENCH_DATABASE_URL=postgres://…` (an empty database) to run it on PostgreSQL.

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use waghl::store::IntakeRow;

const CHATS: usize = 5;
/// Rows per fill transaction.
const FILL_BATCH: usize = 1_000;

fn main() {
    support::bench_or_daemon(bench());
}

async fn bench() {
    let mut args = std::env::args().skip(1);
    let messages: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let locations: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let database = std::env::var("WAGHL_BENCH_DATABASE_URL").ok();
    let fake = support::fake_ghl().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = support::settings(&fake, dir.path(), database);
    let (mut first, bench) = support::start_daemon(&settings, fake, dir).await;
    let bench = Arc::new(bench);
    let pairing = Instant::now();
    let names: Vec<String> = (0..locations).map(|l| format!("drain{l}")).collect();
    for group in names.chunks(16) {
        let pairs = group.iter().map(|name| {
            let bench = bench.clone();
            let phone = format!("+1555{:07}", 1_000_001 + name[5..].parse::<usize>().unwrap());
            async move { bench.install_and_pair(name, &phone).await }
        });
        futures_util::future::join_all(pairs).await;
    }
    println!("{locations} locations paired in {:.1?}", pairing.elapsed());
    support::stop(&mut first);

    let filling = Instant::now();
    let rows: Vec<IntakeRow> = (0..messages)
        .map(|n| IntakeRow {
            location_id: names[n % locations].clone(),
            ghl_message_id: format!("drain-{n}"),
            ghl_contact_id: None,
            to_phone: format!("+14156661{:03}", (n / locations) % CHATS),
            body: format!("{{\"text\":\"{n}\",\"attachments\":[]}}"),
            written_at: None,
            webhook_id: None,
        })
        .collect();
    for batch in rows.chunks(FILL_BATCH) {
        bench.store.enqueue_outbound_batch(batch).await.unwrap();
    }
    drop(rows);
    println!("{messages} messages queued in {:.1?}", filling.elapsed());

    // Counted from the start of the daemon, as a restart after an outage would be.
    let mut tenths = support::Tenths::new(messages);
    let started = Instant::now();
    let (mut second, second_base) = support::spawn_daemon(&settings);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let sent = support::sent_by(&bench.client, &second_base).await;
        tenths.record(sent, &second);
        if sent >= messages {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "only {sent} of {messages} sent"
        );
    }
    let backend = bench.store.dialect();
    println!("drain benchmark ({backend}): {messages} messages over {locations} locations × {CHATS} chats, pacing off");
    tenths.print(&second, "sent");
    support::stop(&mut second);
}
