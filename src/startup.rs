//! Builds the application (settings → secrets → store → state → listener) and runs it until a
//! shutdown trigger fires. Tests call the same two steps with their own configuration, a port-0
//! listener and their own trigger.

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::config::{Config, WaBackend};
use crate::crypto::Secret;
use crate::crypto::SecretKey;
use crate::ghl::webhook::WebhookVerifier;
use crate::sessions::Replay;
use crate::state::AppState;
use crate::store::Store;
use crate::wa::Transport;
use crate::wa::sim::{SimTransport, SimWorld};
use crate::wa::whatsapp::WhatsAppTransport;

pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    /// Resolves secrets, opens and migrates the database and binds the listener. Any failure
    /// here is a configuration or environment problem and stops the daemon with its cause.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        install_crypto_provider();
        let store = open_store(&config).await?;
        let admin_token = match &config.admin_token {
            Some(token) => token.clone(),
            None => Secret::new(read_or_generate(
                &config.data_dir.join("admin.token"),
                "WAGHL_ADMIN_TOKEN",
                generate_token,
            )?),
        };
        let webhooks = WebhookVerifier::from_config(&config.ghl)?;
        for missing in config.ghl.missing() {
            tracing::warn!(setting = missing, "not set: GHL routes answer 503 until it is");
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {} (WAGHL_LISTEN / PORT)", config.listen))?;
        if config.wa_test_server.is_some() {
            tracing::warn!(
                "this is a test build talking to a WhatsApp test server, not to WhatsApp (WAGHL_WA_SERVER_URL)"
            );
        }
        if config.wa_backend == WaBackend::WhatsApp {
            // Before any session starts: a session must find its keys where it looks for them.
            crate::wa::whatsapp::import_device_files(&store, &config.sessions_dir).await;
        }
        let (transport, sim) = transport_for(&config, &store);
        let state = AppState::new(Arc::new(config), store, admin_token, webhooks, transport, sim);
        Ok(Self { listener, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then stops accepting, drains in-flight requests and
    /// background tasks within the configured deadline and closes the database.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Self { listener, state } = self;
        let cancel = state.shutdown.clone();
        tokio::spawn({
            let cancel = cancel.clone();
            async move {
                shutdown.await;
                cancel.cancel();
            }
        });

        // Claims of this instance's earlier lives are dead: release them before the relays
        // start, so a restart after kill -9 resumes at once instead of after `claim_for`.
        let (inbox, outbox) = state
            .store
            .release_claims_of_earlier_lives(&state.incarnation)
            .await
            .context("releasing the queue claims of an earlier run")?;
        if inbox + outbox > 0 {
            tracing::info!(inbox, outbox, "released the claims of an earlier run of this instance");
        }
        crate::maintenance::spawn(&state);
        state.postbox.spawn_writer(&state.tasks);
        let restored = state
            .sessions
            .restore()
            .await
            .context("restoring the WhatsApp sessions")?;
        state.sessions.spawn_lease_loop(&state.tasks);
        state.sessions.spawn_listener(&state.tasks);
        let replay: Option<Arc<dyn Replay>> = match state.sim {
            Some(_) => Some(Arc::new(crate::http::SimReplay::new(state.clone()))),
            None => None,
        };
        state.sessions.serve_commands(replay, &state.tasks);
        crate::relay::spawn(&state);
        state
            .intake
            .spawn(state.store.clone(), state.postbox.clone(), &state.tasks);
        let app = crate::http::router(state.clone());
        state.mark_started();
        tracing::info!(
            address = %listener.local_addr()?,
            console = %format!("{}/", state.config.public_url),
            database = state.store.dialect(),
            restored,
            "waghl is serving"
        );
        let server = tokio::spawn(crate::http::serve(
            listener,
            app,
            state.config.server.clone(),
            cancel.clone(),
        ));

        cancel.cancelled().await;
        let deadline = state.config.shutdown_timeout;
        state.tasks.close();
        let drained = tokio::time::timeout(deadline, async {
            let served = server.await;
            // No request can queue any more: the writer commits what is queued and stops.
            state.intake.close();
            state.sessions.shutdown(deadline).await;
            state.postbox.close_writer();
            state.tasks.wait().await;
            served
        })
        .await;
        match drained {
            Ok(Ok(Ok(()))) => tracing::info!("stopped cleanly"),
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "the HTTP server failed while stopping"),
            Ok(Err(e)) => tracing::error!(error = %e, "the HTTP server task panicked"),
            Err(_) => tracing::warn!(?deadline, "in-flight work did not finish in time; stopping anyway"),
        }
        // A task still holding a connection (it missed the deadline) would hold the close, and
        // the process, forever; exiting ends its transaction.
        if tokio::time::timeout(deadline, state.store.close()).await.is_err() {
            tracing::warn!("the database did not close in time; exiting anyway");
        }
        Ok(())
    }
}

/// The WhatsApp behind the transport seam: whatsapp-rust, or the simulated WhatsApp (whose
/// world the `/sim` control routes also need).
fn transport_for(config: &Config, store: &Store) -> (Arc<dyn Transport>, Option<Arc<SimWorld>>) {
    match config.wa_backend {
        WaBackend::Sim => {
            let world = SimWorld::new(&config.sessions_dir, config.sim_time_scale);
            (Arc::new(SimTransport::new(world.clone())), Some(world))
        }
        WaBackend::WhatsApp => (
            Arc::new(WhatsAppTransport::new(
                store.clone(),
                &config.sessions_dir,
                config.wa_test_server.clone(),
                config.wa_presence,
            )),
            None,
        ),
    }
}

/// rustls is compiled with ring only; make it the process-wide provider before any TLS use.
pub fn install_crypto_provider() {
    // An error means a provider is installed already (tests build several applications).
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Opens the database, applies migrations and checks the secret key against it.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let key_text = match &config.secret_key {
        Some(key) => key.expose().to_owned(),
        None => read_or_generate(
            &config.data_dir.join("secret.key"),
            "WAGHL_SECRET_KEY",
            SecretKey::generate_base64,
        )?,
    };
    let key = SecretKey::from_base64(&key_text).context("WAGHL_SECRET_KEY: expected base64 of exactly 32 bytes")?;
    let store = Store::connect(&config.database_url, Arc::new(key))
        .await
        .with_context(|| format!("DATABASE_URL: cannot open {:?}", config.database_url))?;
    store.migrate().await.context("DATABASE_URL: migrations failed")?;
    store
        .verify_secret_key()
        .await
        .context("WAGHL_SECRET_KEY: this database was sealed with another key; set the original key")?;
    Ok(store)
}

/// Reads a generated secret, or writes a new one (mode 0600) on a first run. Only SQLite
/// setups get here: PostgreSQL requires the setting. The log names the file, never the value.
fn read_or_generate(path: &Path, setting: &str, generate: fn() -> String) -> anyhow::Result<String> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        return Ok(existing.trim().to_owned());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let value = generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(file, "{value}").with_context(|| format!("cannot write {}", path.display()))?;
    tracing::warn!(
        file = %path.display(),
        setting,
        "generated a new value and saved it in this file; set {setting} to keep it stable"
    );
    Ok(value)
}

fn generate_token() -> String {
    // 32 random bytes, URL-safe.
    let key = SecretKey::generate_base64();
    key.replace(['+', '/'], "-").trim_end_matches('=').to_owned()
}
