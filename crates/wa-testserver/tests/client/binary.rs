//! The binary's contract: `--listen 127.0.0.1:0` prints `listening on 127.0.0.1:PORT` as its
//! first stdout line, serves the control API there, and stops on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wa_testserver::LoopbackHttpClient;
use whatsapp_rust::http::{HttpClient, HttpRequest};

#[tokio::test]
async fn prints_its_address_serves_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wa-testserver"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wa-testserver");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{first:?}"))
        .to_owned();
    assert!(addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"), "{addr}");

    let base = format!("http://{addr}");
    let stats = LoopbackHttpClient::new(&base)
        .execute(HttpRequest::get(format!("{base}/_ctl/stats")))
        .await
        .expect("the control API answers");
    assert_eq!(stats.status_code, 200);
    let stats: serde_json::Value = serde_json::from_slice(&stats.body).unwrap();
    assert_eq!(stats["connects"], 0, "{stats}");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "still running 10 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn refuses_to_listen_beyond_loopback() {
    let output = Command::new(env!("CARGO_BIN_EXE_wa-testserver"))
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .expect("run wa-testserver");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("loopback"));
}
