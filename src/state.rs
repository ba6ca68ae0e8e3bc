//! The state every handler and worker shares; cloning it is one reference count (axum clones
//! it for each extractor and middleware of every request: cloning each field, two strings among
//! them, was 4 % of the webhook intake's CPU).

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::crypto::Secret;
use crate::crypto::random_hex;
use crate::domain::Incarnation;
use crate::ghl::GhlClient;
use crate::ghl::webhook::WebhookVerifier;
use crate::intake::Intake;
use crate::metrics::Metrics;
use crate::relay::Postbox;
use crate::sessions::Supervisor;
use crate::store::Store;
use crate::wa::Transport;
use crate::wa::sim::SimWorld;

#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// What [`AppState`] shares.
pub struct Shared {
    pub config: Arc<Config>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub ghl: GhlClient,
    /// Checks that a webhook comes from GHL (keys read and validated at start).
    pub webhooks: Arc<WebhookVerifier>,
    pub sessions: Supervisor,
    /// Where sessions and handlers hand messages, receipts and wake-ups to the relays.
    pub postbox: Postbox,
    /// Where provider webhooks are queued, many per transaction.
    pub intake: Intake,
    /// The simulated WhatsApp, when `WAGHL_WA_BACKEND=sim` (its control routes use it).
    pub sim: Option<Arc<SimWorld>>,
    /// The admin bearer token: configured, or generated on a first SQLite run.
    pub admin_token: Secret,
    /// Cancelled when the daemon stops; every background task watches it.
    pub shutdown: CancellationToken,
    /// Background tasks, awaited (under a deadline) before the database is closed.
    pub tasks: TaskTracker,
    /// This process's life (instance and a nonce drawn at start), named in queue claims, session
    /// leases and its heartbeat row.
    pub incarnation: Incarnation,
    /// Set once start-up finished; `/readyz` answers 503 before that.
    started: AtomicBool,
}

impl AppState {
    /// The state around `transport` (chosen by `startup`); `sim` is the simulated world when
    /// that is the transport, for its control routes.
    pub fn new(
        config: Arc<Config>,
        store: Store,
        admin_token: Secret,
        webhooks: WebhookVerifier,
        transport: Arc<dyn Transport>,
        sim: Option<Arc<SimWorld>>,
    ) -> Self {
        let metrics = Arc::new(Metrics::new());
        let ghl = GhlClient::new(config.ghl.clone(), &config.public_url, store.clone(), metrics.clone());
        let shutdown = CancellationToken::new();
        let postbox = Postbox::new(store.clone(), metrics.clone());
        let incarnation = Incarnation::new(&config.instance_id, &random_hex(8));
        let sessions = Supervisor::new(
            transport,
            store.clone(),
            metrics.clone(),
            config.sessions.clone(),
            incarnation.clone(),
            postbox.clone(),
            shutdown.child_token(),
        );
        Self(Arc::new(Shared {
            sessions,
            postbox,
            intake: Intake::new(),
            sim,
            config,
            store,
            metrics,
            ghl,
            webhooks: Arc::new(webhooks),
            admin_token,
            shutdown,
            tasks: TaskTracker::new(),
            incarnation,
            started: AtomicBool::new(false),
        }))
    }

    pub fn mark_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}
