//! The provider-webhook intake's group commit: many webhooks in one transaction must behave
//! exactly as if they had come one by one — each accepted one queued once, duplicates answered
//! `duplicate`, each chat with one head and its messages in arrival order — on both backends.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use fake_ghl::FakeGhl;
use serde_json::{Value, json};
use waghl::crypto::SecretKey;
use waghl::domain::{Incarnation, OutboxState};
use waghl::store::{DatabaseUrl, IntakeRow, Store};

use crate::helpers::{Backend, SECRET_KEY, TestDb, spawn_app_with_ghl};

const KEY: &str = "intake-key-0123456789";
const CONNECTIONS: usize = 32;
const PER_CONNECTION: usize = 7;
const RECIPIENTS: usize = 5;

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { super::$name(super::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() { super::$name(super::Backend::Postgres).await })*
        }
    };
}

on_both_backends!(
    concurrent_webhooks_are_queued_once_each_in_arrival_order_with_one_head_per_chat,
    a_batch_answers_each_row_and_keeps_heads_as_if_rows_came_one_by_one,
);

async fn open(url: &str) -> Store {
    let key = Arc::new(SecretKey::from_base64(SECRET_KEY).unwrap());
    let store = Store::connect(&DatabaseUrl::parse(url).unwrap(), key).await.unwrap();
    store.migrate().await.unwrap();
    store
}

fn phone(recipient: usize) -> String {
    format!("+1415555{:04}", 100 + recipient)
}

/// Claims every chat's head, ends it, and again until the queue is empty; returns each chat's
/// messages in the order they became heads. Fails if a chat ever shows two heads at once.
async fn drain_heads(store: &Store, location: &str) -> BTreeMap<String, Vec<String>> {
    store
        .record_transition(location, "connected", None, Some("+14155550100"), None)
        .await
        .unwrap();
    // This instance runs the session: it sends for it.
    let me = Incarnation::new("test", "1");
    assert!(store.acquire_lease(location, me.as_str(), i64::MAX).await.unwrap());
    let mut order: BTreeMap<String, Vec<String>> = BTreeMap::new();
    loop {
        let heads = store.claim_outbox_batch(1000, 60_000, &me).await.unwrap();
        if heads.is_empty() {
            return order;
        }
        let mut chats: Vec<&str> = heads.iter().map(|h| h.to_phone.as_str()).collect();
        chats.sort();
        let before = chats.len();
        chats.dedup();
        assert_eq!(chats.len(), before, "a chat had two heads at once");
        for head in &heads {
            order
                .entry(head.to_phone.clone())
                .or_default()
                .push(head.ghl_message_id.clone());
            store
                .fail_outbound(head.outbox_id, OutboxState::Failed, "test")
                .await
                .unwrap();
        }
    }
}

/// 224 webhooks over 32 connections, to 5 recipients: each connection repeats one of its
/// `messageId`s and one of its `webhookId`s, and pairs of connections race with the same
/// `messageId`.
async fn concurrent_webhooks_are_queued_once_each_in_arrival_order_with_one_head_per_chat(backend: Backend) {
    let fake = FakeGhl::start().await;
    let Some(app) = spawn_app_with_ghl(backend, &fake, &[("WAGHL_WEBHOOK_KEY", KEY)]).await else {
        return;
    };
    app.install(&fake, "locI").await;
    // Paired once, now offline: messages are queued (not refused) and nothing sends them.
    let store = &app.state.store;
    store
        .record_transition("locI", "connected", None, Some("+14155550100"), None)
        .await
        .unwrap();
    store
        .record_transition("locI", "disconnected", Some("test"), None, None)
        .await
        .unwrap();
    let app = Arc::new(app);
    let connections: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for k in 0..PER_CONNECTION {
                    let (message, webhook, recipient) = match k {
                        3 => (format!("m{c}-1"), None, (c + 1) % RECIPIENTS),
                        5 => (format!("m{c}-5"), Some(format!("w{c}-0")), (c + 5) % RECIPIENTS),
                        6 => (format!("shared{}", c % 16), None, c % 16 % RECIPIENTS),
                        _ => (format!("m{c}-{k}"), Some(format!("w{c}-{k}")), (c + k) % RECIPIENTS),
                    };
                    let body = json!({
                        "locationId": "locI", "messageId": message, "contactId": "ct", "type": "SMS",
                        "phone": phone(recipient), "message": "hi", "webhookId": webhook,
                    });
                    let response = app
                        .client
                        .post(app.url(&format!("/webhooks/ghl/provider?key={KEY}")))
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200);
                    let ack: Value = response.json().await.unwrap();
                    answers.push((message, ack["status"].as_str().unwrap().to_owned()));
                }
                answers
            })
        })
        .collect();
    let mut queued: HashMap<String, usize> = HashMap::new();
    for (c, connection) in connections.into_iter().enumerate() {
        for (k, (message, status)) in connection.await.unwrap().into_iter().enumerate() {
            match k {
                3 | 5 => assert_eq!(status, "duplicate", "{message} repeats an earlier webhook"),
                6 => {}
                _ => assert_eq!(status, "queued", "{message}"),
            }
            if status == "queued" {
                assert!(queued.insert(message, c).is_none(), "queued twice");
            }
        }
    }
    for shared in 0..16 {
        assert!(
            queued.contains_key(&format!("shared{shared}")),
            "one of two racing copies is queued"
        );
    }
    assert_eq!(queued.len(), CONNECTIONS * (PER_CONNECTION - 3) + 16);

    let app = Arc::into_inner(app).expect("the connections ended");
    let db = app.stop().await;
    let store = open(&db.url).await;
    let order = drain_heads(&store, "locI").await;
    let drained: usize = order.values().map(Vec::len).sum();
    assert_eq!(drained, queued.len(), "every accepted message is in the outbox once");
    // Each connection waited for one answer before its next webhook: per recipient, its
    // messages are in the order it sent them.
    for messages in order.values() {
        for c in 0..CONNECTIONS {
            let mine: Vec<&String> = messages.iter().filter(|m| m.starts_with(&format!("m{c}-"))).collect();
            let mut sorted = mine.clone();
            sorted.sort();
            assert_eq!(mine, sorted, "connection {c}'s messages out of order");
        }
    }
}

fn row(message: &str, phone: &str, webhook: Option<&str>) -> IntakeRow {
    row_of("locB", message, phone, webhook)
}

fn row_of(location: &str, message: &str, phone: &str, webhook: Option<&str>) -> IntakeRow {
    IntakeRow {
        location_id: location.into(),
        ghl_message_id: message.into(),
        ghl_contact_id: None,
        to_phone: phone.into(),
        body: "{}".into(),
        written_at: None,
        webhook_id: webhook.map(str::to_owned),
    }
}

/// A row GHL says was written long before the location's WhatsApp was paired.
fn replayed(message: &str, phone: &str) -> IntakeRow {
    IntakeRow {
        written_at: Some(1),
        ..row(message, phone, None)
    }
}

/// One batch with every case at once: a chat already waiting, new chats with several rows,
/// repeats inside the batch and of earlier batches, rows failed at once (a replay of an old
/// message, a location never paired), a location not installed, and would-be heads that are a
/// duplicate or failed (the chat's next row leads instead).
async fn a_batch_answers_each_row_and_keeps_heads_as_if_rows_came_one_by_one(backend: Backend) {
    use waghl::store::{Queued, REPLAYED, UNPAIRED};
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let store = open(&db.url).await;
    install(&store).await;
    install_location(&store, "locU").await; // never paired
    store
        .record_transition("locB", "connected", None, Some("+14155550100"), None)
        .await
        .unwrap();
    let (a, b, c, d) = ("+14155550001", "+14155550002", "+14155550003", "+14155550004");
    // old-c ended (refused): nothing of chat c is waiting.
    let first = store
        .enqueue_outbound_batch(&[row("old-a", a, Some("w-old")), replayed("old-c", c)])
        .await
        .unwrap();
    assert!(first.iter().all(|q| matches!(q, Queued::New(_))), "{first:?}");
    let batch = [
        row("a1", a, Some("w1")),
        row("b1", b, None),
        replayed("b-refused", b),
        row("a1", a, None),          // same messageId as earlier in the batch
        row("b2", b, Some("w1")),    // same webhookId as earlier in the batch
        row("b3", b, Some("w-old")), // webhookId of an earlier batch
        row("old-c", c, None),       // messageId of an earlier batch: c's would-be head
        row("c1", c, None),
        row("b4", b, None),
        replayed("d-old", d), // d's would-be head, failed at once
        row("d1", d, None),
        IntakeRow {
            written_at: Some(i64::MAX / 4), // written after the pairing
            ..row("b5", b, None)
        },
        row_of("locU", "u1", a, None),
        row_of("locX", "x1", a, Some("w-x")),
    ];
    let queued = store.enqueue_outbound_batch(&batch).await.unwrap();
    let answered = |answer: Queued| -> Vec<&str> {
        batch
            .iter()
            .zip(&queued)
            .filter(|(_, q)| **q == answer)
            .map(|(r, _)| r.ghl_message_id.as_str())
            .collect()
    };
    assert_eq!(answered(Queued::Duplicate), ["a1", "b2", "b3", "old-c"]);
    assert_eq!(answered(Queued::UnknownLocation), ["x1"]);
    assert!(
        !store.webhook_seen("w-x").await.unwrap(),
        "a webhook refused for its location is not recorded: GHL's retry after the install is queued"
    );
    let mut failed: Vec<(String, Option<String>)> = store
        .statuses_to_report(100, &[])
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.state == OutboxState::Failed)
        .map(|s| (s.ghl_message_id, s.last_error))
        .collect();
    failed.sort();
    let reason = |r: &str| Some(r.to_owned());
    assert_eq!(
        failed,
        [
            ("b-refused".to_owned(), reason(REPLAYED)),
            ("d-old".to_owned(), reason(REPLAYED)),
            ("old-c".to_owned(), reason(REPLAYED)),
            ("u1".to_owned(), reason(UNPAIRED)),
        ]
    );
    let order = drain_heads(&store, "locB").await;
    assert_eq!(order[a], ["old-a", "a1"]);
    assert_eq!(order[b], ["b1", "b4", "b5"], "the refused row is never a head");
    assert_eq!(order[c], ["c1"], "the duplicate would-be head leaves the lead to c1");
    assert_eq!(order[d], ["d1"], "the failed would-be head leaves the lead to d1");
}

async fn install(store: &Store) {
    install_location(store, "locB").await;
}

async fn install_location(store: &Store, location: &str) {
    use waghl::crypto::Secret;
    use waghl::store::{GhlTokens, NewLocation, TokenSource};
    let tokens = GhlTokens {
        access_token: Secret::new("token"),
        refresh_token: None,
        expires_at: i64::MAX / 2,
    };
    store
        .upsert_location(NewLocation {
            location_id: location,
            company_id: None,
            name: None,
            tokens: &tokens,
            source: TokenSource::Oauth,
        })
        .await
        .unwrap();
}

/// A row PostgreSQL refuses (a NUL in its phone, which the webhook route refuses before it gets
/// this far) fails alone: the webhooks committed with it are queued and answered `queued`.
#[tokio::test]
async fn a_row_the_database_refuses_fails_alone_not_the_webhooks_of_its_batch() {
    use waghl::intake::{IntakeError, Queued};
    let Some((_db, store, intake)) = postgres_intake().await else {
        return;
    };
    // Queued before the writer starts, so that the three are one batch.
    let requests: Vec<_> = [("ok-1", "+14155550001"), ("nul", "+1415\0"), ("ok-2", "+14155550002")]
        .into_iter()
        .map(|(message, phone)| {
            let intake = intake.clone();
            tokio::spawn(async move { intake.queue(row(message, phone, None)).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let tasks = start_writer(&intake, &store);
    let mut answers = Vec::new();
    for request in requests {
        answers.push(request.await.unwrap());
    }
    assert!(matches!(answers[0], Ok(Queued::New(_))), "{:?}", answers[0]);
    assert!(matches!(answers[1], Err(IntakeError::Store(_))), "{:?}", answers[1]);
    assert!(matches!(answers[2], Ok(Queued::New(_))), "{:?}", answers[2]);
    assert_eq!(store.outbound_count("locB").await.unwrap(), 2);
    stop_writer(&intake, tasks).await;
}

/// The writer keeps one connection from batch to batch; when the server drops it (a restart, a
/// network cut), the batch on it fails, its rows are written again on a new connection and
/// answered `queued`, and later batches are written too.
#[tokio::test]
async fn a_writer_whose_connection_was_cut_writes_on_a_new_one() {
    use sqlx::Connection as _;
    use waghl::intake::Queued;
    let Some((db, store, intake)) = postgres_intake().await else {
        return;
    };
    let tasks = start_writer(&intake, &store);
    let queue = |message: &'static str| {
        let intake = intake.clone();
        async move { intake.queue(row(message, "+14155550001", None)).await }
    };
    assert!(matches!(queue("before").await, Ok(Queued::New(_))));

    let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(cut.iter().any(|c| *c), "the writer's connection was open");

    let (a, b) = tokio::join!(queue("after-1"), queue("after-2"));
    assert!(matches!(a, Ok(Queued::New(_))), "{a:?}");
    assert!(matches!(b, Ok(Queued::New(_))), "{b:?}");
    assert!(matches!(queue("later").await, Ok(Queued::New(_))));
    assert_eq!(store.outbound_count("locB").await.unwrap(), 4);
    stop_writer(&intake, tasks).await;
}

/// A new PostgreSQL database with `locB` installed, and an intake whose writer is not started.
async fn postgres_intake() -> Option<(TestDb, Store, waghl::intake::Intake)> {
    let db = TestDb::new(Backend::Postgres).await?;
    let store = open(&db.url).await;
    install(&store).await;
    Some((db, store, waghl::intake::Intake::new()))
}

/// Starts `intake`'s writer on `store`; the tracker to wait for it with.
fn start_writer(intake: &waghl::intake::Intake, store: &Store) -> tokio_util::task::TaskTracker {
    let tasks = tokio_util::task::TaskTracker::new();
    let postbox = waghl::relay::Postbox::new(store.clone(), Arc::new(waghl::metrics::Metrics::new()));
    intake.spawn(store.clone(), postbox, &tasks);
    tasks
}

/// Lets the writer finish what is queued and waits until it stopped.
async fn stop_writer(intake: &waghl::intake::Intake, tasks: tokio_util::task::TaskTracker) {
    intake.close();
    tasks.close();
    tasks.wait().await;
}
