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

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_ghl::FakeGhl;
use waghl::config::Config;
use waghl::crypto::SecretKey;
use waghl::startup::Application;
use waghl::store::{DatabaseUrl, IntakeRow, Store};

/// Set in the daemon's environment: this program then runs waghl instead of the benchmark.
const DAEMON: &str = "WAGHL_BENCH_DAEMON";
const CHATS: usize = 5;
/// Rows per fill transaction.
const FILL_BATCH: usize = 1_000;

fn main() {
    if std::env::var_os(DAEMON).is_some() {
        return daemon();
    }
    tokio::runtime::Runtime::new().unwrap().block_on(bench());
}

/// waghl itself, configured by the environment the benchmark gave; prints its address.
fn daemon() {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        waghl::startup::install_crypto_provider();
        let app = Application::build(Config::from_env().unwrap()).await.unwrap();
        println!("http://{}", app.local_addr());
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        app.run_until_stopped(async move {
            terminate.recv().await;
        })
        .await
        .unwrap();
    });
}

async fn bench() {
    let mut args = std::env::args().skip(1);
    let messages: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let locations: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let database = std::env::var("WAGHL_BENCH_DATABASE_URL").ok();
    waghl::startup::install_crypto_provider();
    let fake = FakeGhl::start().await;
    fake.set_rate_limit(usize::MAX);
    let dir = tempfile::tempdir().unwrap();
    let settings = support::settings(&fake, dir.path(), database);
    let url = settings.iter().find(|(k, _)| *k == "DATABASE_URL").unwrap().1.clone();

    let (mut first, base) = spawn_daemon(&settings);
    let key = SecretKey::from_base64(support::SECRET_KEY).unwrap();
    let store = Store::connect(&DatabaseUrl::parse(&url).unwrap(), Arc::new(key))
        .await
        .unwrap();
    let bench = Arc::new(support::Bench::remote(base, fake, store, dir));
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
    stop(&mut first);

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

    let started = Instant::now();
    let (mut second, second_base) = spawn_daemon(&settings);
    // (sent, when, resident MiB) each time another tenth of the backlog was sent.
    let mut tenths: Vec<(usize, Duration, f64)> = Vec::with_capacity(10);
    let sent = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let sent = sent_by(&bench, &second_base).await;
        while tenths.len() < 10 && sent >= messages * (tenths.len() + 1) / 10 {
            tenths.push((sent, started.elapsed(), resident_mib(&second, "VmRSS")));
        }
        if sent >= messages {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "only {sent} of {messages} sent"
        );
    };
    let rss_end = resident_mib(&second, "VmRSS");
    let peak = resident_mib(&second, "VmHWM");
    stop(&mut second);
    let (tenth, tenth_at, rss_tenth) = tenths[0];
    let backend = bench.store.dialect();
    println!("drain benchmark ({backend}): {messages} messages over {locations} locations × {CHATS} chats, pacing off");
    println!(
        "  all sent {:.2} s after the start ({:.0} sends/s; the first {tenth} in {:.2} s)",
        sent.as_secs_f64(),
        messages as f64 / sent.as_secs_f64(),
        tenth_at.as_secs_f64()
    );
    println!("  each tenth of the backlog: sends/s during it, waghl's resident memory after it");
    let mut before = (0, Duration::ZERO);
    for (sent, at, rss) in &tenths {
        let rate = (sent - before.0) as f64 / (*at - before.1).as_secs_f64();
        println!(
            "    {sent:>7} sent at {:>7.2} s: {rate:>6.0} sends/s, {rss:.1} MiB",
            at.as_secs_f64()
        );
        before = (*sent, *at);
    }
    println!(
        "  waghl's resident memory: {rss_tenth:.1} MiB after {tenth} sent, {rss_end:.1} MiB after {messages} ({:+.1} %); peak {peak:.1} MiB",
        100.0 * (rss_end - rss_tenth) / rss_tenth
    );
}

/// The messages the daemon at `base` finished sending, from its `/metrics`: cheap to read every
/// 100 ms, where counting the outbox reads every queued row (13 ms a count at 100,000 queued on
/// PostgreSQL, a tenth of the database's time in this benchmark).
async fn sent_by(bench: &support::Bench, base: &str) -> usize {
    let metrics = bench
        .client
        .get(format!("{base}/metrics"))
        .bearer_auth(support::ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(r#"waghl_messages_total{direction="outbound",outcome="sent"} "#))
        .map_or(0, |count| count.trim().parse::<f64>().unwrap() as usize)
}

/// Starts waghl in daemon mode with `settings`; returns it and its base URL.
fn spawn_daemon(settings: &[(&'static str, String)]) -> (Child, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env_clear()
        .envs(settings.iter().map(|(k, v)| (*k, v.as_str())))
        .env(DAEMON, "1")
        // glibc's allocator settings, to compare their effect on waghl's memory.
        .envs(std::env::vars().filter(|(k, _)| k.starts_with("MALLOC_")))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().to_owned())
}

/// Stops waghl the way a deploy does (SIGTERM) and waits for it.
fn stop(child: &mut Child) {
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    child.wait().unwrap();
}

/// A `/proc/<pid>/status` memory line of `child`, in MiB.
fn resident_mib(child: &Child, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
