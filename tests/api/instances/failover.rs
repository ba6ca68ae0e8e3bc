//! The "done when": three instances of the real binary on one PostgreSQL database and
//! 30 paired simulated locations; messages flow both ways while one instance is killed with
//! SIGKILL and another is stopped with SIGTERM. Every session must be connected on the survivor
//! within the lease TTL + 5 s, every inbound message must reach GHL exactly once and every
//! outbound one be sent exactly once. Phones resend a message whose request failed (WhatsApp
//! redelivers until a device acks it); GHL resends a webhook that got no 200.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use fake_ghl::FakeGhl;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde_json::{Value, json};
use waghl::time::now_ms;

use super::{Api, pair, two_clients_at_once};
use crate::helpers::{ADMIN_TOKEN, Backend, SECRET_KEY, TestDb, ghl_settings};

const BIN: &str = env!("CARGO_BIN_EXE_waghl");
const LOCATIONS: usize = 30;
const ROUNDS: usize = 6;
const TTL_MS: i64 = 3_000;

/// One instance: the real binary as a child process.
struct Instance {
    child: Option<Child>,
    api: Api,
}

impl Instance {
    fn spawn(env: &[(String, String)], index: usize) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(BIN)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("WAGHL_LISTEN", format!("127.0.0.1:{port}"))
            .env("WAGHL_INSTANCE_ID", format!("inst-{index}"))
            .stdout(Stdio::null())
            // WAGHL_CHILD_LOG_DIR=dir keeps each instance's debug log in dir/inst-N.log.
            .stderr(match std::env::var("WAGHL_CHILD_LOG_DIR") {
                Ok(dir) => Stdio::from(std::fs::File::create(format!("{dir}/inst-{index}.log")).unwrap()),
                Err(_) => Stdio::inherit(),
            })
            .env(
                "RUST_LOG",
                match std::env::var("WAGHL_CHILD_LOG_DIR") {
                    Ok(_) => "debug,sqlx=warn,hyper=info,h2=info,reqwest=info",
                    Err(_) => "error",
                },
            )
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            api: Api::new(format!("http://127.0.0.1:{port}")),
        }
    }

    async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .api
            .call("GET", "/readyz", None)
            .await
            .is_none_or(|(s, _)| s != 200)
        {
            assert!(Instant::now() < deadline, "an instance did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn terminate(&self) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    }

    async fn exited_cleanly(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.success();
            }
            assert!(Instant::now() < deadline, "the stopped instance did not exit");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The phones and GHL: they send until a message is acknowledged, to whichever instance answers.
struct Senders {
    apis: Vec<Api>,
    signer: Ed25519KeyPair,
    /// Requests that failed (their instance died or stopped meanwhile) and were sent again.
    resent: AtomicUsize,
}

fn contact(i: usize) -> String {
    format!("+1415555{:04}", 1000 + i)
}

impl Senders {
    /// Sends `body` to `path` on one instance after another until one answers 200.
    async fn deliver(&self, start: usize, path: &str, body: Value, signed: bool) {
        let raw = serde_json::to_vec(&body).unwrap();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(40))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(45);
        for attempt in 0.. {
            let api = &self.apis[(start + attempt) % self.apis.len()];
            let mut request = client
                .post(format!("{}{path}", api.base))
                .header("content-type", "application/json")
                .body(raw.clone());
            request = if signed {
                request.header("x-ghl-signature", BASE64.encode(self.signer.sign(&raw).as_ref()))
            } else {
                request.bearer_auth(ADMIN_TOKEN)
            };
            if request.send().await.is_ok_and(|r| r.status() == 200) {
                return;
            }
            self.resent.fetch_add(1, Ordering::Relaxed);
            assert!(Instant::now() < deadline, "{path} {body} was never acknowledged");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn inbound(&self, i: usize, k: usize) {
        let body = json!({ "from": contact(i), "id": format!("IN{i:02}K{k}"), "text": format!("in {i} {k}") });
        self.deliver(i + k, &format!("/sim/loc{i:02}/inbound"), body, false)
            .await;
    }

    async fn outbound(&self, i: usize, k: usize) {
        let body = json!({
            "locationId": format!("loc{i:02}"), "messageId": format!("out-{i}-{k}"), "contactId": "c",
            "type": "SMS", "phone": contact(i), "message": format!("out {i} {k}"),
        });
        self.deliver(i + k + 1, "/webhooks/ghl/provider", body, true).await;
    }
}

/// The Ed25519 public key as an SPKI PEM, as GHL publishes its own.
fn public_pem(key: &Ed25519KeyPair) -> String {
    let mut der = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    der.extend_from_slice(key.public_key().as_ref());
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        BASE64.encode(der)
    )
}

async fn count(pool: &sqlx::PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn three_instances_lose_one_to_sigkill_and_one_to_sigterm_and_every_message_goes_through_once() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    waghl::startup::install_crypto_provider();
    let fake = FakeGhl::start().await;
    let signer =
        Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap().as_ref()).unwrap();
    let mut env: Vec<(String, String)> = ghl_settings(&fake)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let dir = db.dir.path();
    for (k, v) in [
        ("DATABASE_URL", db.url.clone()),
        ("WAGHL_DATA_DIR", dir.join("data").display().to_string()),
        // One simulated WhatsApp for all: its servers' state is this directory.
        ("WAGHL_SESSIONS_DIR", dir.join("sessions").display().to_string()),
        ("WAGHL_SECRET_KEY", SECRET_KEY.to_owned()),
        ("WAGHL_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
        ("GHL_WEBHOOK_PUBLIC_KEY", public_pem(&signer)),
        ("WAGHL_WA_BACKEND", "sim".to_owned()),
        ("WAGHL_SIM_TIME_SCALE", "0.1".to_owned()),
        ("WAGHL_LEASE_TTL_MS", TTL_MS.to_string()),
        ("WAGHL_RESTORE_SPREAD_MS", "200".to_owned()),
        ("WAGHL_HEALTH_INTERVAL_MS", "1000".to_owned()),
        ("WAGHL_RESTART_BASE_MS", "100".to_owned()),
        ("WAGHL_RETRY_BASE_MS", "20".to_owned()),
        ("WAGHL_RETRY_MAX_MS", "200".to_owned()),
        ("WAGHL_RELAY_POLL_MS", "250".to_owned()),
        ("WAGHL_RELAY_CLAIM_MS", "2000".to_owned()),
        ("WAGHL_SEND_GAP_MS", "0".to_owned()),
        ("WAGHL_GHL_TIMEOUT_MS", "5000".to_owned()),
        ("WAGHL_SHUTDOWN_TIMEOUT_MS", "5000".to_owned()),
    ] {
        env.push((k.to_owned(), v));
    }
    let mut instances: Vec<Instance> = (0..3).map(|i| Instance::spawn(&env, i)).collect();
    for instance in &instances {
        instance.ready().await;
    }
    let apis: Vec<Api> = instances.iter().map(|i| i.api.clone()).collect();
    // Pairing starts on instance i % 3, which then runs the session; the phone scans through
    // another instance.
    let mut pairings = tokio::task::JoinSet::new();
    for i in 0..LOCATIONS {
        let (start, other) = (apis[i % 3].clone(), apis[(i + 1) % 3].clone());
        start.install(&fake, &format!("loc{i:02}")).await;
        pairings.spawn(async move { pair(&start, &other, &format!("loc{i:02}"), &format!("+1555{i:03}6789")).await });
    }
    while let Some(paired) = pairings.join_next().await {
        paired.unwrap();
    }

    let senders = Arc::new(Senders {
        apis: apis.clone(),
        signer,
        resent: AtomicUsize::new(0),
    });
    let traffic = tokio::spawn({
        let senders = senders.clone();
        async move {
            let mut sends = tokio::task::JoinSet::new();
            for k in 0..ROUNDS {
                for i in 0..LOCATIONS {
                    let (phone, ghl) = (senders.clone(), senders.clone());
                    sends.spawn(async move { phone.inbound(i, k).await });
                    sends.spawn(async move { ghl.outbound(i, k).await });
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            while let Some(sent) = sends.join_next().await {
                sent.unwrap();
            }
        }
    });

    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let owners: HashMap<String, String> = sqlx::query_as("SELECT location_id, owner FROM wa_sessions")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let in_flight = count(
        &pool,
        "SELECT COUNT(*) FROM outbox WHERE state IN ('pending', 'sending')",
    )
    .await
        + count(&pool, "SELECT COUNT(*) FROM inbox WHERE state = 'pending'").await;
    let killed_at = now_ms();
    instances[0].kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopped_at = now_ms();
    instances[1].terminate();
    traffic.await.unwrap();
    assert!(
        instances[1].exited_cleanly().await,
        "SIGTERM did not stop the instance cleanly"
    );

    // Every session is connected on the survivor within the TTL + 5 s of losing its instance.
    let survivor = &apis[2];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut takeovers = Vec::new();
    for i in 0..LOCATIONS {
        let location = format!("loc{i:02}");
        let before = &owners[&location];
        let lost_at = match before.split('#').next() {
            Some("inst-0") => killed_at,
            Some("inst-1") => stopped_at,
            _ => continue,
        };
        let connected: Option<i64> = loop {
            let at: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(at) FROM events WHERE location_id = $1 AND to_state = 'connected' \
                   AND instance_id LIKE 'inst-2#%' AND at >= $2",
            )
            .bind(&location)
            .bind(lost_at)
            .fetch_one(&pool)
            .await
            .unwrap();
            if at.is_some() || Instant::now() > deadline {
                break at;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let took = connected.map(|at| at - lost_at);
        assert!(
            took.is_some_and(|t| t <= TTL_MS + 5_000),
            "{location} of {before} connected on the survivor after {took:?} ms"
        );
        takeovers.push((location, before.split('#').next().unwrap().to_owned(), took.unwrap()));
    }
    for i in 0..LOCATIONS {
        survivor.wait_for_state(&format!("loc{i:02}"), "connected").await;
    }

    // Inbound: each message in GHL once.
    let expected_in: HashSet<String> = (0..LOCATIONS)
        .flat_map(|i| (0..ROUNDS).map(move |k| format!("IN{i:02}K{k}")))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while fake.messages().len() < expected_in.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Outbound: each message on WhatsApp once.
    let mut sent_texts = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..LOCATIONS {
        loop {
            let (_, sent) = survivor.get(&format!("/sim/loc{i:02}/sent")).await;
            let texts: Vec<String> = sent["sent"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
                        .collect()
                })
                .unwrap_or_default();
            if texts.len() >= ROUNDS || Instant::now() > deadline {
                sent_texts.extend(texts);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let received: Vec<String> = fake
        .messages()
        .iter()
        .map(|m| m.body["altId"].as_str().unwrap_or_default().to_owned())
        .collect();
    let unique_in: HashSet<String> = received.iter().cloned().collect();
    let expected_out: HashSet<String> = (0..LOCATIONS)
        .flat_map(|i| (0..ROUNDS).map(move |k| format!("out {i} {k}")))
        .collect();
    let unique_out: HashSet<String> = sent_texts.iter().cloned().collect();
    let duplicates = (received.len() - unique_in.len()) + (sent_texts.len() - unique_out.len());
    let lost = expected_in.difference(&unique_in).count() + expected_out.difference(&unique_out).count();
    let doubled = two_clients_at_once(&db.url, &HashMap::from([("inst-0#".to_owned(), killed_at)])).await;

    takeovers.sort_by_key(|t| t.2);
    eprintln!("takeover per session (ms after its instance was lost):");
    for (location, from, took) in &takeovers {
        eprintln!("  {location} from {from}: {took}");
    }
    eprintln!(
        "messages: {} inbound, {} outbound; in flight at the kill: {in_flight}; requests resent: {}; \
         duplicates: {duplicates}; lost: {lost}",
        expected_in.len(),
        expected_out.len(),
        senders.resent.load(Ordering::Relaxed)
    );
    assert_eq!(duplicates, 0, "in GHL: {received:?}; on WhatsApp: {sent_texts:?}");
    assert_eq!(
        lost,
        0,
        "not in GHL: {:?}; not sent: {:?}",
        expected_in.difference(&unique_in).take(5).collect::<Vec<_>>(),
        expected_out.difference(&unique_out).take(5).collect::<Vec<_>>()
    );
    assert!(doubled.is_empty(), "{doubled:#?}");
    assert_eq!(takeovers.len(), 20, "the sessions of the lost instances");
    pool.close().await;
}
