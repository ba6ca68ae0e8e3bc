//! The supervisor: one runner task per location this instance runs, which owns its WhatsApp
//! client's life — start, the actor, and after the client ends the restart policy (backoff with
//! jitter, crash-loop parking) — plus the registry the rest of the daemon reads.
//!
//! The transport reconnects dropped sockets by itself; the runner only restarts a client that
//! ended, failed to start or was found dead by the health check. It never restarts during
//! shutdown, and never runs two clients for one location, on this instance or across instances:
//! a client starts only under the location's lease row, taken before it starts and renewed by
//! the lease round (`leases.rs`), which also decides which instance runs which session. An
//! operation on a session another instance runs (start pairing, log out) is asked of that
//! instance through the command channel (`commands.rs`).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::actor::Command;
use super::commands::{self, Channel};
use super::policy::PolicySettings;
use super::runner::Runner;
use super::slot::{PairingCode, RunnerHandle, Slot, lock};
use super::state::{SessionState, StateView, reasons};
use super::views::view_of;
use crate::domain::{Incarnation, LocationId};
use crate::metrics::Metrics;
use crate::relay::Postbox;
use crate::store::{Store, StoreError};
use crate::time::now_ms;
use crate::wa::{Pairing, Transport, WaError};

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
    /// Sessions this instance takes start at random moments within this span, not all at once.
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
    /// This process's life: it names the leases this instance holds.
    pub me: Incarnation,
    /// Where the sessions hand their messages and receipts (the relays own them).
    pub postbox: Postbox,
    pub(super) registry: Mutex<HashMap<LocationId, Arc<Slot>>>,
    /// Cancelled at shutdown: runners then hand their sessions over.
    pub shutdown: CancellationToken,
    /// Wakes the lease round before its time (another instance stopped and freed its leases).
    pub wake_leases: Notify,
    /// Commands between instances: the ones this instance waits for, and who carries out the
    /// ones the sessions module does not own.
    pub commands: Channel,
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
            .record_transition(location.as_str(), state.as_str(), reason, phone, Some(self.me.as_str()))
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

    /// Shows a code to scan (or none) here, and publishes it for the other instances' pages.
    pub async fn show_code(&self, location: &LocationId, slot: &Slot, code: PairingCode) {
        let published = (!code.is_empty()).then(|| serde_json::to_string(&code).expect("a code serializes"));
        slot.set_code(code);
        if let Err(e) = self
            .store
            .publish_pairing_code(location.as_str(), published.as_deref())
            .await
        {
            tracing::warn!(location.id = %location, error = %e, "could not publish the pairing code");
        }
    }

    /// The session leaves this instance: `reconnecting` (`handed_over`) while it was live, so the
    /// next owner resumes it, then the lease is freed for the others to take at once.
    pub async fn hand_over(&self, location: &LocationId, slot: &Slot) {
        if slot.view().state.is_live() {
            self.transition(
                location,
                slot,
                SessionState::Reconnecting,
                Some(reasons::HANDED_OVER),
                None,
            )
            .await;
        }
        self.release(location).await;
    }

    pub async fn release(&self, location: &LocationId) {
        if let Err(e) = self.store.release_lease(location.as_str(), self.me.as_str()).await {
            tracing::error!(location.id = %location, error = %e, "could not release the session lease");
        }
    }

    pub(super) fn refresh_state_gauge(&self) {
        let registry = lock(&self.registry);
        let mut counts: HashMap<SessionState, i64> = SessionState::ALL.iter().map(|s| (*s, 0)).collect();
        let mut owned = 0;
        for slot in registry.values() {
            *counts.entry(slot.view().state).or_default() += 1;
            owned += i64::from(slot.runs_here());
        }
        drop(registry);
        for (state, count) in counts {
            self.metrics.set_sessions(state.as_str(), count);
        }
        self.metrics.sessions_owned.set(owned);
    }
}

/// Cheap to clone; one per application.
#[derive(Clone)]
pub struct Supervisor {
    pub(super) shared: Arc<Shared>,
    pub(super) runners: TaskTracker,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the session is connected; log it out first (DELETE /api/v1/locations/{{id}}/session)")]
    Connected,
    #[error("WhatsApp: {0}")]
    WhatsApp(#[from] WaError),
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error(
        "WhatsApp did not confirm that the device is unlinked ({0}); the phone still lists it, so \
         its keys are kept: try again once the session is connected, or add ?force=true to wipe \
         them anyway (then remove the device on the phone: Settings → Linked devices)"
    )]
    NotUnlinked(WaError),
    /// Another instance runs the session and did not answer (it may have just died: its
    /// sessions move to the others within the lease TTL).
    #[error("{0}")]
    OwnerUnavailable(String),
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

/// Where an operation on a session runs.
pub(super) enum Here<T> {
    Done(T),
    /// Another instance holds the session's lease.
    Elsewhere(String),
}

impl Supervisor {
    pub fn new(
        transport: Arc<dyn Transport>,
        store: Store,
        metrics: Arc<Metrics>,
        settings: SessionSettings,
        me: Incarnation,
        postbox: Postbox,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                metrics,
                settings,
                transport,
                me,
                postbox,
                registry: Mutex::default(),
                shutdown,
                wake_leases: Notify::new(),
                commands: Channel::default(),
            }),
            runners: TaskTracker::new(),
        }
    }

    /// Loads every session's persisted view, frees the leases of this instance's earlier lives
    /// and takes this instance's share of the sessions that should run (the first lease round);
    /// returns how many it took.
    pub async fn restore(&self) -> Result<usize, SessionError> {
        for row in self.shared.store.session_rows().await? {
            let Ok(location) = LocationId::parse(&row.location_id) else {
                continue;
            };
            lock(&self.shared.registry).insert(location, Arc::new(Slot::new(view_of(row))));
        }
        let freed = self
            .shared
            .store
            .release_leases_of_earlier_lives(&self.shared.me)
            .await?;
        if freed > 0 {
            tracing::info!(freed, "freed the session leases of an earlier run of this instance");
        }
        let taken = self.lease_round(&mut Default::default()).await;
        self.shared.refresh_state_gauge();
        Ok(taken)
    }

    pub(super) fn slot(&self, location: &LocationId) -> Arc<Slot> {
        lock(&self.shared.registry)
            .entry(location.clone())
            .or_insert_with(|| Arc::new(Slot::new(StateView::unpaired(now_ms()))))
            .clone()
    }

    /// Starts pairing (QR, or a pairing code for `Pairing::Code`), replacing a pairing in
    /// progress, on whichever instance runs the session (here when none does). A connected
    /// session must be logged out first.
    #[tracing::instrument(skip_all, fields(location.id = %location))]
    pub async fn start_pairing(&self, location: &LocationId, pairing: Pairing) -> Result<StateView, SessionError> {
        match self.start_pairing_here(location, pairing.clone()).await? {
            Here::Done(view) => Ok(view),
            Here::Elsewhere(owner) => {
                commands::ask(
                    &self.shared,
                    location,
                    &owner,
                    &commands::Command::start_pairing(&pairing),
                )
                .await
            }
        }
    }

    /// Unlinks the device from the phone, wipes the keys and leaves the session `unpaired`, on
    /// whichever instance runs it. Used by the admin API and when the app is uninstalled. With
    /// [`Unlink::Required`], a device that may still be linked is kept, keys and client,
    /// unless WhatsApp confirms.
    #[tracing::instrument(skip_all, fields(location.id = %location))]
    pub async fn logout(&self, location: &LocationId, mode: Unlink) -> Result<StateView, SessionError> {
        match self.logout_here(location, mode).await? {
            Here::Done(view) => Ok(view),
            Here::Elsewhere(owner) => {
                commands::ask(&self.shared, location, &owner, &commands::Command::logout(mode)).await
            }
        }
    }

    /// Takes the lease for an operation: false when another instance holds it.
    async fn lease_for_operation(&self, location: &LocationId, slot: &Slot) -> Result<bool, StoreError> {
        let until = now_ms() + self.shared.settings.lease_ttl.as_millis() as i64;
        let taken = self
            .shared
            .store
            .acquire_lease(location.as_str(), self.shared.me.as_str(), until)
            .await?;
        if taken {
            slot.took_lease();
        }
        Ok(taken)
    }

    pub(super) async fn start_pairing_here(
        &self,
        location: &LocationId,
        pairing: Pairing,
    ) -> Result<Here<StateView>, SessionError> {
        let slot = self.slot(location);
        let _one_at_a_time = slot.operations.lock().await;
        if slot.view().state.is_live() && slot.runner().is_some() {
            return Err(SessionError::Connected);
        }
        if !self.lease_for_operation(location, &slot).await? {
            return Ok(Here::Elsewhere(
                self.owner_elsewhere(location).await?.unwrap_or_default(),
            ));
        }
        // The lease is held from here on (the runner keeps it): no other instance can start it.
        self.stop_runner(&slot).await;
        let fresh = self.shared.store.session_row(location.as_str()).await?.map(view_of);
        if let Some(fresh) = fresh.filter(|_| !slot.runs_here()) {
            // Another instance may have run it since this one last looked.
            slot.view.send_replace(fresh);
        }
        if slot.view().state == SessionState::LoggedOut {
            self.shared.transport.wipe(location).await?;
            self.shared.store.forget_pairing(location.as_str()).await?;
        }
        self.shared.metrics.pairing_attempts.inc();
        self.shared.show_code(location, &slot, PairingCode::default()).await;
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
        Ok(Here::Done(slot.view()))
    }

    pub(super) async fn logout_here(
        &self,
        location: &LocationId,
        mode: Unlink,
    ) -> Result<Here<StateView>, SessionError> {
        let slot = self.slot(location);
        let _one_at_a_time = slot.operations.lock().await;
        if !self.lease_for_operation(location, &slot).await? {
            return Ok(Here::Elsewhere(
                self.owner_elsewhere(location).await?.unwrap_or_default(),
            ));
        }
        let outcome = self.unlink_and_wipe(location, &slot, mode).await;
        // The lease was only for the operation: an unpaired session runs nowhere.
        if !slot.runs_here() {
            self.shared.release(location).await;
        }
        outcome.map(Here::Done)
    }

    async fn unlink_and_wipe(
        &self,
        location: &LocationId,
        slot: &Slot,
        mode: Unlink,
    ) -> Result<StateView, SessionError> {
        if !slot.runs_here()
            && let Some(fresh) = self.shared.store.session_row(location.as_str()).await?
        {
            slot.view.send_replace(view_of(fresh));
        }
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
        self.stop_runner(slot).await;
        self.shared.transport.wipe(location).await?;
        self.shared.store.forget_pairing(location.as_str()).await?;
        slot.set_code(PairingCode::default());
        slot.view.send_modify(|v| v.phone = None);
        self.shared
            .transition(location, slot, SessionState::Unpaired, None, None)
            .await;
        Ok(slot.view())
    }

    pub(super) async fn stop_runner(&self, slot: &Slot) {
        if let Some((stop, _, mut done)) = slot.runner() {
            stop.cancel();
            let _ = done.wait_for(|d| *d).await;
        }
    }

    pub(super) fn spawn_runner(&self, location: LocationId, pairing: Pairing, delay: Duration) {
        let span = tracing::info_span!("session", location.id = %location);
        let slot = self.slot(&location);
        let stop = self.shared.shutdown.child_token();
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
        self.shared.refresh_state_gauge();
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
                        () = runner.stop.cancelled() => runner.stopped_before_start().await,
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
                    shared.release(&location).await;
                }
                let _ = done_tx.send(true);
                shared.refresh_state_gauge();
            }
            .instrument(span),
        );
    }

    /// Stops every client (keys kept), hands the sessions over (their leases freed) and waits for
    /// the runners, at most `deadline`; this instance leaves the live ones, and the others are
    /// told to take the sessions at once.
    pub async fn shutdown(&self, deadline: Duration) {
        self.shared.shutdown.cancel();
        self.runners.close();
        if tokio::time::timeout(deadline, self.runners.wait()).await.is_err() {
            tracing::warn!("some WhatsApp sessions did not stop in time");
        }
        self.leave().await;
    }

    /// Deletes this instance's heartbeat row and wakes the others' lease rounds.
    pub(super) async fn leave(&self) {
        if let Err(e) = self.shared.store.remove_instance(&self.shared.me).await {
            tracing::warn!(error = %e, "could not remove this instance's heartbeat row");
        }
    }
}
