//! The supervisor: one runner task per location that owns its WhatsApp client's life —
//! lease, start, the actor, and after the client ends the restart policy (backoff with
//! jitter, crash-loop parking) — plus the registry the rest of the daemon reads.
//!
//! The transport reconnects dropped sockets by itself; the runner only restarts a client that
//! ended, failed to start or was found dead by the health check. It never restarts during
//! shutdown, and never runs two clients for one location: a runner holds the location's lease
//! row while its client lives, so an overlapping deploy waits instead of connecting twice.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::actor::Command;
use super::policy::PolicySettings;
use super::runner::Runner;
use super::state::{SessionState, StateView, reasons};
use crate::crypto::random_fraction;
use crate::domain::LocationId;
use crate::metrics::Metrics;
use crate::relay::Postbox;
use crate::store::Store;
use crate::time::now_ms;
use crate::wa::{Pairing, Transport, WaError, WaSession};

/// How long a logout waits for WhatsApp to confirm the unlinking.
const LOGOUT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long starting a pairing waits for the first code, to answer with it.
const PAIRING_CODE_WAIT: Duration = Duration::from_secs(3);

#[derive(Clone, Debug)]
pub struct SessionSettings {
    pub health_interval: Duration,
    pub policy: PolicySettings,
    /// A lease lasts this long unless renewed (renewed every third of it).
    pub lease_ttl: Duration,
    /// Restored sessions start at random moments within this span, not all at once.
    pub restore_spread: Duration,
    /// How long an inbound message may take to be stored (retrying a failing database) before
    /// it is left to WhatsApp's redelivery.
    pub store_budget: Duration,
}

/// What the supervisor shares with every runner and actor.
pub(super) struct Shared {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub settings: SessionSettings,
    pub transport: Arc<dyn Transport>,
    /// Identifies this process in lease rows.
    pub instance: String,
    /// Where the sessions hand their messages and receipts (the relays own them).
    pub postbox: Postbox,
    registry: Mutex<HashMap<LocationId, Arc<Slot>>>,
}

/// A location's entry in the registry: its current view and, while a runner lives, the
/// means to reach it.
pub(super) struct Slot {
    view: watch::Sender<StateView>,
    pairing: Mutex<PairingCode>,
    /// The live client, for senders; `None` between clients.
    pub(super) session: Mutex<Option<Arc<dyn WaSession>>>,
    runner: Mutex<Option<RunnerHandle>>,
    /// Serialises pairing starts and logouts of this location, so two requests at once can
    /// never leave two runners (two clients) behind.
    operations: tokio::sync::Mutex<()>,
}

/// The code a person scans or types right now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PairingCode {
    pub qr: Option<String>,
    pub code: Option<String>,
    /// Unix ms until the QR code is valid.
    pub valid_until: Option<i64>,
}

pub(super) struct RunnerHandle {
    stop: CancellationToken,
    commands: mpsc::Sender<Command>,
    done: watch::Receiver<bool>,
}

impl Slot {
    fn new(view: StateView) -> Self {
        Self {
            view: watch::channel(view).0,
            pairing: Mutex::default(),
            session: Mutex::default(),
            runner: Mutex::default(),
            operations: tokio::sync::Mutex::new(()),
        }
    }

    pub fn view(&self) -> StateView {
        self.view.borrow().clone()
    }

    pub fn show_code(&self, qr: Option<String>, code: Option<String>, valid_for: Option<Duration>) {
        *lock(&self.pairing) = PairingCode {
            qr,
            code,
            valid_until: valid_for.map(|d| now_ms() + d.as_millis() as i64),
        };
    }

    pub fn pairing_code(&self) -> PairingCode {
        lock(&self.pairing).clone()
    }

    fn runner(&self) -> Option<(CancellationToken, mpsc::Sender<Command>, watch::Receiver<bool>)> {
        lock(&self.runner)
            .as_ref()
            .filter(|r| !*r.done.borrow())
            .map(|r| (r.stop.clone(), r.commands.clone(), r.done.clone()))
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Persists, logs and counts a transition, and updates the view.
    pub async fn transition(
        &self,
        location: &LocationId,
        slot: &Slot,
        state: SessionState,
        reason: Option<&str>,
        phone: Option<&str>,
    ) {
        let current = slot.view();
        if current.state == state
            && current.reason.as_deref() == reason
            && phone.is_none_or(|p| current.phone.as_deref() == Some(p))
        {
            return;
        }
        if let Err(e) = self
            .store
            .record_transition(location.as_str(), state.as_str(), reason, phone)
            .await
        {
            tracing::error!(location.id = %location, error = %e, "could not persist a session transition");
        }
        let changed = current.state != state || current.reason.as_deref() != reason;
        slot.view.send_modify(|view| {
            if changed {
                view.since = now_ms();
            }
            view.state = state;
            view.reason = reason.map(str::to_owned);
            if let Some(phone) = phone {
                view.phone = Some(phone.to_owned());
            }
        });
        if changed {
            tracing::info!(location.id = %location, from = current.state.as_str(), to = state.as_str(), reason, "session transition");
            self.metrics.count_transition(state.as_str());
            self.refresh_state_gauge();
        }
    }

    fn refresh_state_gauge(&self) {
        let registry = lock(&self.registry);
        let mut counts: HashMap<SessionState, i64> = SessionState::ALL.iter().map(|s| (*s, 0)).collect();
        for slot in registry.values() {
            *counts.entry(slot.view().state).or_default() += 1;
        }
        drop(registry);
        for (state, count) in counts {
            self.metrics.set_sessions(state.as_str(), count);
        }
    }
}

/// Cheap to clone; one per application.
#[derive(Clone)]
pub struct Supervisor {
    shared: Arc<Shared>,
    /// Cancelled at shutdown: every runner stops its client and exits.
    shutdown: CancellationToken,
    runners: TaskTracker,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the session is connected; log it out first (DELETE /api/v1/locations/{{id}}/session)")]
    Connected,
    #[error("WhatsApp: {0}")]
    WhatsApp(#[from] WaError),
    #[error("database: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error(
        "WhatsApp did not confirm that the device is unlinked ({0}); the phone still lists it, so \
         its keys are kept: try again once the session is connected, or add ?force=true to wipe \
         them anyway (then remove the device on the phone: Settings → Linked devices)"
    )]
    NotUnlinked(WaError),
}

/// Whether a logout must have unlinked the device from the phone before it wipes the keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unlink {
    /// Keep the keys (and the session) when WhatsApp does not confirm the unlinking: the
    /// phone would otherwise list a device nobody can remove from here any more.
    Required,
    /// Wipe the keys whatever WhatsApp answers (an operator's explicit force, an uninstall).
    BestEffort,
}

impl Supervisor {
    pub fn new(
        transport: Arc<dyn Transport>,
        store: Store,
        metrics: Arc<Metrics>,
        settings: SessionSettings,
        instance: String,
        postbox: Postbox,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                metrics,
                settings,
                transport,
                instance,
                postbox,
                registry: Mutex::default(),
            }),
            shutdown,
            runners: TaskTracker::new(),
        }
    }

    /// Loads every session's persisted view, then starts the paired ones that were running,
    /// spread over `restore_spread` so a restart does not reconnect them all at once.
    pub async fn restore(&self) -> Result<usize, SessionError> {
        for row in self.shared.store.session_rows().await? {
            let Ok(location) = LocationId::parse(&row.location_id) else {
                continue;
            };
            let view = StateView {
                state: SessionState::parse(&row.state).unwrap_or(SessionState::Unpaired),
                reason: row.reason,
                phone: row.phone,
                since: row.state_since,
            };
            lock(&self.shared.registry).insert(location, Arc::new(Slot::new(view)));
        }
        let to_restore = self.shared.store.sessions_to_restore().await?;
        let spread = self.shared.settings.restore_spread;
        for id in &to_restore {
            let Ok(location) = LocationId::parse(id) else { continue };
            // Not connected until its client says so.
            let slot = self.slot(&location);
            self.shared
                .transition(
                    &location,
                    &slot,
                    SessionState::Reconnecting,
                    Some(reasons::RESTORING),
                    None,
                )
                .await;
            let delay = spread.mul_f64(random_fraction());
            self.spawn_runner(location, Pairing::Qr, delay);
        }
        self.shared.refresh_state_gauge();
        Ok(to_restore.len())
    }

    fn slot(&self, location: &LocationId) -> Arc<Slot> {
        lock(&self.shared.registry)
            .entry(location.clone())
            .or_insert_with(|| {
                Arc::new(Slot::new(StateView {
                    state: SessionState::Unpaired,
                    reason: None,
                    phone: None,
                    since: now_ms(),
                }))
            })
            .clone()
    }

    pub fn view(&self, location: &LocationId) -> Option<StateView> {
        lock(&self.shared.registry).get(location).map(|slot| slot.view())
    }

    /// The view of a location, or a fresh `unpaired` one since `since` when it never had a
    /// session.
    pub fn view_or_unpaired(&self, location: &LocationId, since: i64) -> StateView {
        self.view(location).unwrap_or(StateView {
            state: SessionState::Unpaired,
            reason: None,
            phone: None,
            since,
        })
    }

    pub fn views(&self) -> Vec<(LocationId, StateView)> {
        let mut views: Vec<_> = lock(&self.shared.registry)
            .iter()
            .map(|(id, slot)| (id.clone(), slot.view()))
            .collect();
        views.sort_by(|a, b| a.0.cmp(&b.0));
        views
    }

    /// Follows a location's state as it changes (the pairing page's live updates).
    pub fn watch(&self, location: &LocationId) -> watch::Receiver<StateView> {
        self.slot(location).view.subscribe()
    }

    pub fn pairing_code(&self, location: &LocationId) -> PairingCode {
        self.slot(location).pairing_code()
    }

    /// The live client of a location, when it has one.
    pub fn session(&self, location: &LocationId) -> Option<Arc<dyn WaSession>> {
        lock(&self.shared.registry)
            .get(location)
            .and_then(|slot| lock(&slot.session).clone())
    }

    /// Starts pairing (QR, or a pairing code for `Pairing::Code`), replacing a pairing in
    /// progress. A connected session must be logged out first.
    #[tracing::instrument(skip_all, fields(location.id = %location))]
    pub async fn start_pairing(&self, location: &LocationId, pairing: Pairing) -> Result<StateView, SessionError> {
        let slot = self.slot(location);
        let _one_at_a_time = slot.operations.lock().await;
        if slot.view().state.is_live() && slot.runner().is_some() {
            return Err(SessionError::Connected);
        }
        self.stop_runner(&slot).await;
        if slot.view().state == SessionState::LoggedOut {
            self.shared.transport.wipe(location).await?;
            self.shared.store.forget_pairing(location.as_str()).await?;
        }
        self.shared.metrics.pairing_attempts.inc();
        slot.show_code(None, None, None);
        // `pairing` means a code is there to scan (the client's first code makes it so); until
        // then the session is unpaired and says why.
        self.shared
            .transition(
                location,
                &slot,
                SessionState::Unpaired,
                Some(reasons::PAIRING_STARTING),
                None,
            )
            .await;
        let mut view = slot.view.subscribe();
        self.spawn_runner(location.clone(), pairing, Duration::ZERO);
        // Answer with the code when it comes quickly (it normally does); a client that cannot
        // reach WhatsApp gets the `pairing_starting` view and the state follows later.
        let _ = tokio::time::timeout(
            PAIRING_CODE_WAIT,
            view.wait_for(|v| v.reason.as_deref() != Some(reasons::PAIRING_STARTING)),
        )
        .await;
        Ok(slot.view())
    }

    /// Unlinks the device from the phone, wipes the keys and leaves the session `unpaired`.
    /// Used by the admin API and when the app is uninstalled. With [`Unlink::Required`], a
    /// device that may still be linked is kept, keys and client, unless WhatsApp confirms.
    #[tracing::instrument(skip_all, fields(location.id = %location))]
    pub async fn logout(&self, location: &LocationId, mode: Unlink) -> Result<StateView, SessionError> {
        let slot = self.slot(location);
        let _one_at_a_time = slot.operations.lock().await;
        // Only a paired device is on the phone's list; a logged-out one was removed there.
        let linked = matches!(
            slot.view().state,
            SessionState::Connected | SessionState::Reconnecting | SessionState::Parked
        );
        let client_is_live = lock(&slot.session).is_some();
        let unlinked = match slot.runner().filter(|_| client_is_live) {
            Some((_, commands, _)) => {
                let (reply, answer) = oneshot::channel();
                match commands.send(Command::Logout(reply)).await {
                    Ok(()) => match tokio::time::timeout(LOGOUT_TIMEOUT, answer).await {
                        Ok(Ok(outcome)) => outcome,
                        _ => Err(WaError::Failed("the client did not answer".into())),
                    },
                    Err(_) => Err(WaError::NotConnected),
                }
            }
            None => Err(WaError::NotConnected),
        };
        if let Err(e) = unlinked
            && linked
        {
            if mode == Unlink::Required {
                tracing::warn!(error = %e, "WhatsApp did not confirm the unlinking; the keys are kept");
                return Err(SessionError::NotUnlinked(e));
            }
            tracing::warn!(error = %e, "WhatsApp did not confirm the unlinking; wiping the keys anyway");
        }
        self.stop_runner(&slot).await;
        self.shared.transport.wipe(location).await?;
        self.shared.store.forget_pairing(location.as_str()).await?;
        slot.view.send_modify(|v| v.phone = None);
        self.shared
            .transition(location, &slot, SessionState::Unpaired, None, None)
            .await;
        Ok(slot.view())
    }

    async fn stop_runner(&self, slot: &Slot) {
        if let Some((stop, _, mut done)) = slot.runner() {
            stop.cancel();
            let _ = done.wait_for(|d| *d).await;
        }
    }

    fn spawn_runner(&self, location: LocationId, pairing: Pairing, delay: Duration) {
        let span = tracing::info_span!("session", location.id = %location);
        let slot = self.slot(&location);
        let stop = self.shutdown.child_token();
        let (commands_tx, commands) = mpsc::channel(8);
        let (done_tx, done) = watch::channel(false);
        let replaced = lock(&slot.runner).replace(RunnerHandle {
            stop: stop.clone(),
            commands: commands_tx,
            done,
        });
        // Callers stop the previous runner first; cancelling it here keeps that true even if
        // one forgets.
        if let Some(previous) = replaced {
            previous.stop.cancel();
        }
        let runner = Runner {
            shared: self.shared.clone(),
            location,
            slot,
            stop,
            commands,
        };
        let shared = self.shared.clone();
        self.runners.spawn(
            async move {
                let (location, slot) = (runner.location.clone(), runner.slot.clone());
                let stop = runner.stop.clone();
                let run = async move {
                    tokio::select! {
                        () = runner.stop.cancelled() => {}
                        () = tokio::time::sleep(delay) => runner.run(pairing).await,
                    }
                };
                // The client's own panics are restarted inside `run`; one outside it (lease or
                // state bookkeeping) parks the session visibly instead of leaving a dead slot.
                if AssertUnwindSafe(run).catch_unwind().await.is_err() {
                    shared.metrics.count_panic("session");
                    tracing::error!("the session runner panicked; parking the session");
                    let orphan = lock(&slot.session).take();
                    if let Some(session) = orphan {
                        session.stop().await;
                    }
                    if !stop.is_cancelled() {
                        shared
                            .transition(&location, &slot, SessionState::Parked, Some(reasons::CRASH_LOOP), None)
                            .await;
                    }
                }
                let _ = done_tx.send(true);
            }
            .instrument(span),
        );
    }

    /// Stops every client (keys kept) and waits for the runners, at most `deadline`.
    pub async fn shutdown(&self, deadline: Duration) {
        self.shutdown.cancel();
        self.runners.close();
        if tokio::time::timeout(deadline, self.runners.wait()).await.is_err() {
            tracing::warn!("some WhatsApp sessions did not stop in time");
        }
    }

    /// Renews this instance's leases until shutdown (the heartbeat). A live client whose lease
    /// could not be renewed (it expired, e.g. while the database was unreachable, and another
    /// instance may hold it now) is stopped: two live connections are worse than a gap.
    pub fn spawn_heartbeat(&self, tasks: &TaskTracker) {
        let supervisor = self.clone();
        tasks.spawn(async move {
            let shared = &supervisor.shared;
            let ttl = shared.settings.lease_ttl;
            loop {
                tokio::select! {
                    () = supervisor.shutdown.cancelled() => return,
                    () = tokio::time::sleep(ttl / 3) => {}
                }
                let until = now_ms() + ttl.as_millis() as i64;
                let renewed = match shared.store.renew_leases(&shared.instance, until).await {
                    Ok(renewed) => renewed,
                    Err(e) => {
                        tracing::error!(error = %e, "could not renew session leases");
                        continue;
                    }
                };
                let live: Vec<(LocationId, Arc<Slot>)> = lock(&shared.registry)
                    .iter()
                    .filter(|(_, slot)| lock(&slot.session).is_some())
                    .map(|(id, slot)| (id.clone(), slot.clone()))
                    .collect();
                for (location, slot) in live {
                    if !renewed.iter().any(|id| id == location.as_str()) {
                        tracing::error!(location.id = %location, "lost the session lease; stopping the client");
                        supervisor.stop_runner(&slot).await;
                        shared
                            .transition(
                                &location,
                                &slot,
                                SessionState::Reconnecting,
                                Some(reasons::LEASE_LOST),
                                None,
                            )
                            .await;
                        // A new runner waits for the lease and resumes from the stored keys.
                        supervisor.spawn_runner(location, Pairing::Qr, Duration::ZERO);
                    }
                }
            }
        });
    }
}
