//! `wa-testserver --listen 127.0.0.1:0`: prints `listening on 127.0.0.1:PORT` as its first
//! line, serves until SIGTERM (or Ctrl-C).

use std::net::SocketAddr;

use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "wa_testserver=info,whatsapp_rust=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let listen = listen_arg()?;
    // The handlers exist before the address is printed: whoever reads it may signal at once.
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let server = wa_testserver::TestServer::start(listen).await?;
    println!("listening on {}", server.addr());
    tokio::select! {
        _ = term.recv() => {}
        _ = interrupt.recv() => {}
    }
    server.shutdown().await;
    Ok(())
}

fn listen_arg() -> anyhow::Result<SocketAddr> {
    let mut args = std::env::args().skip(1);
    let mut listen = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next(),
            other => match other.strip_prefix("--listen=") {
                Some(value) => listen = Some(value.to_owned()),
                None => anyhow::bail!("usage: wa-testserver --listen 127.0.0.1:0 (unknown argument {other:?})"),
            },
        }
    }
    let listen: SocketAddr = listen.unwrap_or_else(|| "127.0.0.1:0".into()).parse()?;
    anyhow::ensure!(listen.ip().is_loopback(), "the test server listens on loopback only");
    Ok(listen)
}
