//! One running WhatsApp client of a location: turns its events into state transitions, hands
//! its messages and receipts to the relays' postbox, answers commands, and checks the client's health. It runs until the client
//! ends, a terminal event arrives, the health check finds a zombie, or it is told to stop;
//! what happens next is the runner's decision (`runner.rs`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::policy::RestartPolicy;
use super::slot::{PairingCode, Slot};
use super::state::{SessionState, reasons};
use super::supervisor::Shared;
use crate::domain::{InboundMessage, LocationId};
use crate::wa::{Link, ParkReason, WaError, WaEvent, WaSession};

/// How often messages left unstored are tried again, once the store budget ran out.
const UNSTORED_RETRY: Duration = Duration::from_secs(1);

/// Requests to the actor from the rest of the daemon.
pub(super) enum Command {
    /// Unlink the device from the phone (admin DELETE, app uninstalled).
    Logout(oneshot::Sender<Result<(), WaError>>),
}

/// Why the actor returned.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Exit {
    /// Told to stop (shutdown, or a new pairing replaces this client).
    Stopped,
    /// The phone removed the device.
    LoggedOut,
    /// waghl unlinked the device on request.
    LoggedOutOnRequest,
    /// WhatsApp stopped the session; the reason says why and when it may try again.
    Parked(ParkReason),
    QrExhausted,
    /// The phone is already paired to another location.
    PhoneInUse,
    /// The client ended without a terminal event.
    Ended,
    /// The health check found the client dead while it claimed to run.
    Zombie,
    /// The client's task panicked (caught by the runner).
    Panicked,
}

pub(super) struct Actor<'a> {
    pub location: &'a LocationId,
    pub session: Arc<dyn WaSession>,
    pub events: mpsc::Receiver<WaEvent>,
    pub commands: &'a mut mpsc::Receiver<Command>,
    pub shared: &'a Shared,
    pub slot: &'a Slot,
    pub stop: &'a CancellationToken,
    pub policy: &'a mut RestartPolicy,
    /// Messages whose inbox write failed for the whole store budget, oldest first: not
    /// confirmed, so WhatsApp holds them, but it delivers them again only on a new connection.
    /// Once they are stored the client reconnects, and the redelivery is acknowledged.
    pub unstored: VecDeque<Unstored>,
}

pub(super) struct Unstored {
    message: Box<InboundMessage>,
    media_ref: Option<Vec<u8>>,
}

impl Actor<'_> {
    pub async fn run(mut self) -> Exit {
        let mut health = tokio::time::interval_at(
            Instant::now() + self.shared.settings.health_interval,
            self.shared.settings.health_interval,
        );
        health.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut unstored_retry = tokio::time::interval(UNSTORED_RETRY);
        unstored_retry.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut failed_checks = 0;
        let mut quiet_checks = 0;
        loop {
            tokio::select! {
                biased;
                () = self.stop.cancelled() => return Exit::Stopped,
                Some(command) = self.commands.recv() => match command {
                    Command::Logout(reply) => {
                        let outcome = self.session.logout().await;
                        let ok = outcome.is_ok();
                        let _ = reply.send(outcome);
                        if ok {
                            return Exit::LoggedOutOnRequest;
                        }
                    }
                },
                event = self.events.recv() => match event {
                    Some(event) => {
                        if let Some(exit) = self.handle(event).await {
                            return exit;
                        }
                    }
                    None => return Exit::Ended,
                },
                _ = unstored_retry.tick(), if !self.unstored.is_empty() => {
                    self.store_unstored().await;
                }
                _ = health.tick() => {
                    self.notice_silent_reconnect().await;
                    if self.is_zombie() {
                        failed_checks += 1;
                        self.shared.metrics.health_failures.inc();
                        // Twice in a row: a drop that is being reported right now is not a zombie.
                        if failed_checks >= 2 {
                            tracing::warn!("health check: the client is dead but claims to run");
                            return Exit::Zombie;
                        }
                    } else {
                        failed_checks = 0;
                    }
                    self.check_reachable(&mut quiet_checks).await;
                }
            }
        }
    }

    /// Tries the unstored messages again, in order. Once all are stored, the client reconnects:
    /// WhatsApp then delivers them again (a no-op for the inbox) and they are acknowledged.
    async fn store_unstored(&mut self) {
        while let Some(next) = self.unstored.front() {
            let stored = self
                .shared
                .postbox
                .deliver(self.location, &next.message, next.media_ref.as_deref(), Duration::ZERO)
                .await;
            if stored.is_err() {
                return;
            }
            self.unstored.pop_front();
        }
        tracing::info!(
            "the inbox is writable again; reconnecting so that WhatsApp delivers the unacknowledged messages again"
        );
        self.session.reconnect().await;
    }

    /// A client still waiting for its first code after two health checks cannot reach
    /// WhatsApp (no network, blocked): say so instead of showing "pairing" forever. The
    /// transport keeps trying; the reason clears with the first code.
    async fn check_reachable(&self, quiet_checks: &mut u32) {
        let view = self.slot.view();
        let code = self.slot.pairing_code();
        let waiting = view.is_pairing()
            && view.reason.as_deref().is_none_or(|r| r == reasons::PAIRING_STARTING)
            && code.qr.is_none()
            && code.code.is_none()
            && self.session.link() != Link::Connected;
        *quiet_checks = if waiting { *quiet_checks + 1 } else { 0 };
        if *quiet_checks >= 2 {
            self.shared
                .transition(
                    self.location,
                    self.slot,
                    SessionState::Pairing,
                    Some(reasons::WA_UNREACHABLE),
                    None,
                )
                .await;
        }
    }

    /// The client says it is gone while its actor still runs. A client that is merely not
    /// connected is reconnecting by itself (see [`Self::notice_silent_reconnect`]); restarting
    /// it would cost a new login and count toward a crash loop.
    fn is_zombie(&self) -> bool {
        self.session.link() == Link::Dead
    }

    /// The crate reconnects by itself after some stream errors (a server-side stream restart,
    /// a failed keepalive) without reporting a disconnection; the session shows it then.
    /// Its next `Connected` event brings the session back.
    async fn notice_silent_reconnect(&self) {
        if self.slot.view().state == SessionState::Connected && self.session.link() == Link::Reconnecting {
            tracing::info!("the client is reconnecting by itself");
            self.show_reconnecting().await;
        }
    }

    /// The transport is reconnecting by itself: `reconnecting` / `wa_disconnected`.
    async fn show_reconnecting(&self) {
        self.shared
            .transition(
                self.location,
                self.slot,
                SessionState::Reconnecting,
                Some(reasons::WA_DISCONNECTED),
                None,
            )
            .await;
    }

    async fn handle(&mut self, event: WaEvent) -> Option<Exit> {
        let shared = self.shared;
        match event {
            WaEvent::Qr { code, valid_for } => {
                shared
                    .show_code(
                        self.location,
                        self.slot,
                        PairingCode::new(Some(code), None, Some(valid_for)),
                    )
                    .await;
                shared
                    .transition(self.location, self.slot, SessionState::Pairing, None, None)
                    .await;
            }
            WaEvent::PairCode { code } => {
                shared
                    .show_code(self.location, self.slot, PairingCode::new(None, Some(code), None))
                    .await;
                shared
                    .transition(self.location, self.slot, SessionState::Pairing, None, None)
                    .await;
            }
            WaEvent::QrExhausted => return Some(Exit::QrExhausted),
            WaEvent::Paired { phone } => {
                shared.show_code(self.location, self.slot, PairingCode::default()).await;
                match shared.store.location_paired_to(&phone, self.location.as_str()).await {
                    Ok(Some(other)) => {
                        tracing::warn!(other.location = %other, "this WhatsApp number is paired to another location; unlinking");
                        let _ = self.session.logout().await;
                        return Some(Exit::PhoneInUse);
                    }
                    Ok(None) => {
                        shared.metrics.pairings.inc();
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "could not check the paired number")
                    }
                }
            }
            WaEvent::Connected { phone } => {
                // First: sends still waiting for an ack of a frame written on the old
                // connection are sent again (before the transition's database write, so that
                // the window for a send on the new connection to be taken for an old one is
                // as short as it can be).
                shared.postbox.connected(self.location);
                if !self.slot.pairing_code().is_empty() {
                    shared.show_code(self.location, self.slot, PairingCode::default()).await;
                }
                self.policy.connected(Instant::now());
                let phone = Some(phone).filter(|p| !p.is_empty());
                shared
                    .transition(
                        self.location,
                        self.slot,
                        SessionState::Connected,
                        None,
                        phone.as_deref(),
                    )
                    .await;
                shared.postbox.wake_outbound();
            }
            WaEvent::Disconnected => {
                self.policy.disconnected(Instant::now());
                self.show_reconnecting().await;
            }
            WaEvent::LoggedOut => return Some(Exit::LoggedOut),
            WaEvent::Parked(reason) => return Some(Exit::Parked(reason)),
            WaEvent::Message {
                message,
                media_ref,
                stored,
            } => {
                // Behind messages left unstored: queued after them (first in, first out), and
                // unconfirmed, since the redelivery brings it again anyway.
                if !self.unstored.is_empty() {
                    self.unstored.push_back(Unstored { message, media_ref });
                    return None;
                }
                let budget = shared.settings.store_budget;
                let delivered = shared
                    .postbox
                    .deliver(self.location, &message, media_ref.as_deref(), budget);
                // While it is being stored the session is not moved to another instance.
                self.slot.storing.store(true, Ordering::Release);
                // Unconfirmed when stopped: WhatsApp delivers it again to the next client.
                let delivered = tokio::select! {
                    delivered = delivered => Some(delivered),
                    () = self.stop.cancelled() => None,
                };
                self.slot.storing.store(false, Ordering::Release);
                let Some(delivered) = delivered else {
                    return Some(Exit::Stopped);
                };
                match delivered {
                    // Only now is WhatsApp told the message arrived.
                    Ok(()) => stored.confirm(),
                    Err(e) => {
                        tracing::error!(error = %e, "could not store an inbound message; trying again until the database recovers");
                        self.unstored.push_back(Unstored { message, media_ref });
                    }
                }
            }
            WaEvent::Receipt { .. } | WaEvent::ServerAck { .. } | WaEvent::ServerRefused { .. } => {
                shared.postbox.receipt(self.location, event);
            }
            WaEvent::LidMapping { .. } => shared.postbox.wake_inbound(),
            WaEvent::ChatTimer { chat, expiration } => {
                shared.postbox.chat_timer(self.location, &chat, expiration).await;
            }
        }
        None
    }
}
