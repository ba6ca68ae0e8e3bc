//! Tracing, set up once per process. Log lines carry ids and states, never tokens or message
//! bodies. whatsapp-rust and sqlx are kept at `warn` unless `RUST_LOG` says otherwise.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

const DEFAULT_FILTER: &str = "info,whatsapp_rust=warn,wacore=warn,sqlx=warn,tower_http=info";

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
