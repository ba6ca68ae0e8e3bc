//! Memory and threads of whatsapp-rust sessions: starts N sessions of the real transport (the
//! network is unreachable here, so they stay unconnected, pairing), measures, stops them all,
//! and checks that no client stays alive.
//!
//! `cargo run --release --example probe_sessions -- [sessions]`

use std::time::Duration;

use waghl::config::Config;
use waghl::crypto::Secret;
use waghl::domain::LocationId;
use waghl::startup::Application;
use waghl::store::{GhlTokens, NewLocation, TokenSource};
use waghl::wa::Pairing;

fn status(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn report(when: &str) {
    println!(
        "  {when}: RSS {:.1} MiB, threads {}, live whatsapp-rust clients {}",
        status("VmRSS:") / 1024.0,
        status("Threads:"),
        waghl::wa::whatsapp::live_clients()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sessions: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    let settings: Vec<(&str, String)> = vec![
        ("WAGHL_LISTEN", "127.0.0.1:0".into()),
        ("DATABASE_URL", format!("sqlite://{}/waghl.db", dir.path().display())),
        ("WAGHL_DATA_DIR", dir.path().join("data").display().to_string()),
        ("WAGHL_SESSIONS_DIR", dir.path().join("sessions").display().to_string()),
        (
            "WAGHL_SECRET_KEY",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into(),
        ),
        ("WAGHL_ADMIN_TOKEN", "probe-admin-token-0123456789".into()),
        ("WAGHL_WA_BACKEND", "whatsapp".into()),
    ];
    let config = Config::from_lookup(|name| settings.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())).unwrap();
    let app = Application::build(config).await.unwrap();
    let state = app.state().clone();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("{sessions} whatsapp-rust sessions, no network (release build, 2 tokio workers)");
    report("before");

    let tokens = GhlTokens {
        access_token: Secret::new("a"),
        refresh_token: None,
        expires_at: i64::MAX,
    };
    for i in 0..sessions {
        let id = format!("probe{i:03}");
        state
            .store
            .upsert_location(NewLocation {
                location_id: &id,
                company_id: None,
                name: None,
                tokens: &tokens,
                source: TokenSource::Oauth,
            })
            .await
            .unwrap();
        state
            .sessions
            .start_pairing(&LocationId::parse(&id).unwrap(), Pairing::Qr)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    report("started");
    state.sessions.shutdown(Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    report("stopped");
    // tokio's idle blocking threads (SQLite and HTTP work of the clients) exit after 10 s.
    tokio::time::sleep(Duration::from_secs(12)).await;
    report("stopped + 14 s");
}
