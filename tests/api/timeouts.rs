//! Slow and idle clients, on real sockets to 127.0.0.1: a head or a body trickling in, an idle
//! keep-alive connection, a body announced too large, and more connections than allowed.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Backend, TestApp, spawn_app_with};

async fn app(settings: &[(&str, &str)]) -> TestApp {
    spawn_app_with(Backend::Sqlite, settings).await.unwrap()
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.base_url.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// What the server sends until it closes the connection or `within` passes; `closed` says
/// whether it closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&received).into_owned(), true),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&received).into_owned(), false),
        }
    }
}

#[tokio::test]
async fn a_request_head_sent_a_byte_at_a_time_is_cut_off_at_the_header_timeout() {
    let app = app(&[
        ("WAGHL_HTTP_HEADER_TIMEOUT_MS", "300"),
        ("WAGHL_HTTP_IDLE_TIMEOUT_MS", "60000"),
    ])
    .await;
    let mut stream = connect(&app).await;
    let started = Instant::now();
    let head = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: {}", "a".repeat(100));
    let (mut reader, mut writer) = stream.split();
    let read = async {
        let mut buf = [0u8; 1024];
        tokio::time::timeout(Duration::from_secs(5), reader.read(&mut buf)).await
    };
    let write = async {
        for byte in head.as_bytes() {
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (outcome, ()) = tokio::join!(read, write);
    assert!(matches!(outcome, Ok(Ok(0)) | Ok(Err(_))), "{outcome:?}");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(2_500), "held for {elapsed:?}");
}

#[tokio::test]
async fn a_body_sent_a_byte_at_a_time_is_answered_408_at_the_body_timeout() {
    let app = app(&[("WAGHL_HTTP_BODY_TIMEOUT_MS", "300")]).await;
    let mut stream = connect(&app).await;
    let head = "POST /webhooks/ghl/provider HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                Content-Length: 200\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = stream.split();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut answer));
    let write = async {
        for _ in 0..200 {
            if writer.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };
    let (outcome, ()) = tokio::join!(read, write);
    assert!(outcome.is_ok(), "never answered");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    assert!(started.elapsed() < Duration::from_millis(2_500));
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    let app = app(&[
        ("WAGHL_HTTP_IDLE_TIMEOUT_MS", "300"),
        ("WAGHL_HTTP_HEADER_TIMEOUT_MS", "60000"),
    ])
    .await;
    let mut stream = connect(&app).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (received, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(received.starts_with("HTTP/1.1 200"), "{received}");
    assert!(closed, "the idle connection was kept");
    assert!(started.elapsed() < Duration::from_millis(2_500));
}

#[tokio::test]
async fn a_body_announced_too_large_is_refused_at_once_and_before_100_continue() {
    let app = app(&[("WAGHL_BODY_LIMIT_BYTES", "65536")]).await;
    for expect in ["", "Expect: 100-continue\r\n"] {
        let mut stream = connect(&app).await;
        let head = format!(
            "POST /webhooks/ghl/provider HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             {expect}Content-Length: 10737418240\r\n\r\n{{"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let (received, _) = read_until_closed(&mut stream, Duration::from_secs(2)).await;
        assert!(received.starts_with("HTTP/1.1 413"), "{expect:?}: {received}");
        assert!(received.contains("\"payload_too_large\""), "{received}");
    }
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let app = app(&[
        ("WAGHL_HTTP_MAX_CONNECTIONS", "2"),
        ("WAGHL_HTTP_HEADER_TIMEOUT_MS", "60000"),
    ])
    .await;
    let first = connect(&app).await;
    let mut second = connect(&app).await;
    second
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    assert!(second.read(&mut buf).await.unwrap() > 0, "the second is served");
    let mut third = connect(&app).await;
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(400), third.read(&mut buf)).await;
    assert!(waited.is_err(), "a third connection was served while two were open");
    drop(first);
    let served = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf)).await;
    let n = served.expect("served once a connection closed").unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}
