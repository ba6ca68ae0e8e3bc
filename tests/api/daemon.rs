//! The real binary, as an operator runs it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_waghl");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_fresh_start_serves_health_creates_the_database_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .env_clear()
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let url = format!("http://127.0.0.1:{port}/readyz");
    let started = Instant::now();
    let ready = loop {
        if let Ok(body) = blocking_get(&url) {
            break body;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "not ready within 15 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(ready.contains("\"ready\""), "{ready}");
    assert!(dir.path().join("data/waghl.db").exists());
    let token_file = dir.path().join("data/admin.token");
    assert!(token_file.exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    let stopping = Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = wait_with_deadline(&mut child, Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    assert!(stopping.elapsed() < Duration::from_secs(10));
    let log = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert!(!log.contains(token.trim()), "the generated admin token was logged");
    assert!(
        log.contains("data/admin.token"),
        "the log must say where the token is: {log}"
    );
}

#[test]
fn a_bad_setting_stops_the_daemon_with_a_line_naming_the_variable() {
    for (var, value) in [("DATABASE_URL", "mysql://x"), ("WAGHL_SECRET_KEY", "MDEyMzQ1Njc4OQ==")] {
        let output = Command::new(BIN).env_clear().env(var, value).output().unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(var), "{var}: {stderr}");
        assert!(
            !stderr.contains(value) || var == "DATABASE_URL",
            "the secret was echoed: {stderr}"
        );
    }
}

#[test]
fn config_check_prints_the_configuration_with_secrets_redacted() {
    let output = Command::new(BIN)
        .args(["config", "check"])
        .env_clear()
        .env("GHL_CLIENT_SECRET", "very-secret-client-secret")
        .env("WAGHL_ADMIN_TOKEN", "admin-token-admin-token")
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("listen: 0.0.0.0:8080"), "{stdout}");
    assert!(!stdout.contains("very-secret-client-secret"));
    assert!(!stdout.contains("admin-token-admin-token"));
}

fn blocking_get(url: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let (host, path) = addr.split_once('/').unwrap();
    let mut stream = std::net::TcpStream::connect(host)?;
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    if response.starts_with("HTTP/1.1 200") {
        Ok(response)
    } else {
        Err(std::io::Error::other(response))
    }
}

fn wait_with_deadline(child: &mut std::process::Child, deadline: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            panic!("did not exit within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
