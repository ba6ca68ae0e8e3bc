//! One location's runner: checks the session's lease before each client start, starts the
//! client, runs its actor, and decides after each exit (through the restart policy) whether and
//! when to start it again. Whoever spawns a runner took the lease first.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::actor::{Actor, Command, Exit};
use super::policy::{Decision, RestartPolicy};
use super::slot::{Slot, lock};
use super::state::{SessionState, reasons};
use super::supervisor::Shared;
use crate::crypto::random_fraction;
use crate::domain::LocationId;
use crate::time::now_ms;
use crate::wa::{Pairing, Resume, WaError};

/// Owns one location's client from start to its final exit.
pub(super) struct Runner {
    pub(super) shared: Arc<Shared>,
    pub(super) location: LocationId,
    pub(super) slot: Arc<Slot>,
    pub(super) stop: CancellationToken,
    pub(super) commands: mpsc::Receiver<Command>,
}

impl Runner {
    pub(super) async fn run(mut self, pairing: Pairing) {
        let mut policy = RestartPolicy::new(self.shared.settings.policy.clone());
        loop {
            if !self.take_lease().await {
                return;
            }
            // A panic anywhere in the client's life (its start, the actor, an event) ends this
            // client like a crash: seen, counted, cleaned up and restarted through the policy,
            // so a panic loop parks the session as `crash_loop` instead of killing it silently.
            let exit = match AssertUnwindSafe(self.run_client(&pairing, &mut policy))
                .catch_unwind()
                .await
            {
                Ok(exit) => exit,
                Err(_) => {
                    self.shared.metrics.count_panic("session");
                    tracing::error!("the WhatsApp client's task panicked; restarting it");
                    let orphan = lock(&self.slot.session).take();
                    if let Some(session) = orphan {
                        session.stop().await;
                    }
                    Exit::Panicked
                }
            };
            if self.stop.is_cancelled() && exit != Exit::LoggedOutOnRequest {
                self.stopped_before_start().await;
                return;
            }
            let shared = &self.shared;
            let (location, slot) = (&self.location, &self.slot);
            match exit {
                Exit::Stopped => {}
                // The logout that asked for it holds the lease until the keys are wiped.
                Exit::LoggedOutOnRequest => return,
                Exit::LoggedOut => {
                    // The keys are dead; wipe them now so the next pairing starts clean.
                    if let Err(e) = shared.transport.wipe(location).await {
                        tracing::error!(error = %e, "could not wipe the keys of a logged-out session");
                    }
                    shared
                        .transition(
                            location,
                            slot,
                            SessionState::LoggedOut,
                            Some(reasons::WA_LOGGED_OUT),
                            None,
                        )
                        .await;
                }
                Exit::Parked(reason) => {
                    shared
                        .transition(location, slot, SessionState::Parked, Some(reason.code()), None)
                        .await;
                    let delay = match reason.resume() {
                        Resume::Never => None,
                        Resume::After(left) => Some(left),
                        Resume::Backoff => Some(policy.refused(tokio::time::Instant::now(), random_fraction())),
                    };
                    if let Some(delay) = delay {
                        tracing::info!(?delay, reason = reason.code(), "trying the parked session again later");
                        if self.sleep_unless_stopped(delay).await {
                            continue;
                        }
                        self.stopped_before_start().await;
                        return;
                    }
                }
                Exit::QrExhausted => {
                    shared.show_code(location, slot, Default::default()).await;
                    shared
                        .transition(location, slot, SessionState::Pairing, Some(reasons::QR_EXHAUSTED), None)
                        .await;
                }
                Exit::PhoneInUse => {
                    let _ = shared.transport.wipe(location).await;
                    shared
                        .transition(
                            location,
                            slot,
                            SessionState::Unpaired,
                            Some(reasons::PHONE_IN_USE),
                            None,
                        )
                        .await;
                }
                Exit::Ended | Exit::Zombie | Exit::Panicked => {
                    shared.metrics.restarts.inc();
                    match policy.on_exit(tokio::time::Instant::now(), random_fraction()) {
                        Decision::Park => {
                            shared
                                .transition(location, slot, SessionState::Parked, Some(reasons::CRASH_LOOP), None)
                                .await;
                        }
                        Decision::RestartAfter(delay) => {
                            let reason = if exit == Exit::Zombie {
                                reasons::HEALTH_CHECK
                            } else {
                                reasons::RESTARTING
                            };
                            let state = if slot.view().is_pairing() {
                                SessionState::Pairing
                            } else {
                                SessionState::Reconnecting
                            };
                            shared.transition(location, slot, state, Some(reason), None).await;
                            tracing::info!(?delay, ?exit, "restarting the WhatsApp client");
                            if self.sleep_unless_stopped(delay).await {
                                continue;
                            }
                            self.stopped_before_start().await;
                            return;
                        }
                    }
                }
            }
            self.shared.release(&self.location).await;
            return;
        }
    }

    /// Sleeps for `delay`; false when told to stop first.
    async fn sleep_unless_stopped(&self, delay: Duration) -> bool {
        tokio::select! {
            () = self.stop.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    /// Told to stop: at shutdown the session is handed over to the other instances at once;
    /// otherwise whoever stopped it (a new pairing, a logout, a lost lease, a rebalance) keeps
    /// or settles the lease.
    pub(super) async fn stopped_before_start(&self) {
        if self.shared.shutdown.is_cancelled() {
            self.shared.hand_over(&self.location, &self.slot).await;
        }
    }

    /// Renews the lease before a client starts; false when another instance holds it now (this
    /// one's lapsed): the session is that instance's to run.
    async fn take_lease(&self) -> bool {
        if self.stop.is_cancelled() {
            return false;
        }
        let until = now_ms() + self.shared.settings.lease_ttl.as_millis() as i64;
        match self
            .shared
            .store
            .acquire_lease(self.location.as_str(), self.shared.me.as_str(), until)
            .await
        {
            Ok(true) => {
                self.slot.took_lease();
                true
            }
            Ok(false) => {
                tracing::warn!("another instance holds this session now; leaving it to that instance");
                false
            }
            Err(e) => {
                // Unknown: starting without the lease could make two clients; the lease round
                // gives the session to whoever can take it.
                tracing::error!(error = %e, "could not renew the session lease before starting the client");
                self.shared.release(&self.location).await;
                false
            }
        }
    }

    /// Starts one client and runs its actor until it exits.
    async fn run_client(&mut self, pairing: &Pairing, policy: &mut RestartPolicy) -> Exit {
        let (events_tx, events) = mpsc::channel(64);
        let session = match self
            .shared
            .transport
            .start(&self.location, pairing.clone(), events_tx)
            .await
        {
            Ok(session) => session,
            Err(WaError::Unstartable(reason)) => return Exit::Parked(reason),
            Err(e) => {
                tracing::warn!(error = %e, "the WhatsApp client did not start");
                return Exit::Ended;
            }
        };
        *lock(&self.slot.session) = Some(session.clone());
        let exit = Actor {
            location: &self.location,
            session: session.clone(),
            events,
            commands: &mut self.commands,
            shared: &self.shared,
            slot: &self.slot,
            stop: &self.stop,
            policy,
            unstored: VecDeque::new(),
        }
        .run()
        .await;
        *lock(&self.slot.session) = None;
        if exit != Exit::LoggedOutOnRequest {
            session.stop().await;
        }
        exit
    }
}
