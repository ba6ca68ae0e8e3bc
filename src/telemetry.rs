//! Tracing, set up once per process. Log lines carry ids and states, never tokens or message
//! bodies. whatsapp-rust and sqlx are kept at `warn` unless `RUST_LOG` says otherwise.

use tracing_subscriber::EnvFilter;

/// whatsapp-rust logs through `log` under its crate names and under short custom targets
/// (`Client/…`, `Bot/PairCode` — which prints pairing codes at info —, `AppState`, …); all
/// are held at `warn` so that no personal data or pairing code reaches the log by default.
const DEFAULT_FILTER: &str = "info,sqlx=warn,tower_http=info,whatsapp_rust=warn,wacore=warn,waproto=warn,\
     Client=warn,Bot=warn,AppState=warn,usync=warn,Blocking=warn,UnifiedSession=warn,Chatstate=warn,\
     ChatstateHandler=warn,blocklist=warn,TcToken=warn,PresenceHandler=warn,MessageQueue=warn,Mex=warn";

/// Installs the global subscriber. Calling it again (as tests do) is harmless.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .try_init(),
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (colour when a terminal is attached).
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}
