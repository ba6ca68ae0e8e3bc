//! The lease round: which instance runs which session. Every third of the lease TTL (and at
//! once when another instance stops cleanly) each instance
//! 1. writes its heartbeat row and renews its leases — a client whose lease was not renewed
//!    (it expired, and another instance may hold it now) is stopped, and so is every client
//!    when the database cannot be reached before the leases run out: two live connections for
//!    one session are worse than a gap;
//! 2. takes its part of the sessions that should run and whose lease is free or expired: each
//!    such session goes to the least-loaded live instance (ties broken by id), as every
//!    instance computes it from the same rows, so they do not all grab the same sessions; the
//!    conditional lease update settles any race. The lease is taken before the client starts;
//! 3. hands over a few idle sessions when it holds more than its fair share
//!    (`ceil(sessions / live instances)`), so a new instance gets its share without a restart.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio_util::task::TaskTracker;

use super::slot::{PairingCode, Slot, lock};
use super::state::{SessionState, reasons};
use super::supervisor::Supervisor;
use super::views::view_of;
use crate::crypto::random_fraction;
use crate::domain::LocationId;
use crate::store::{LeaseCandidate, LiveInstance};
use crate::time::now_ms;
use crate::wa::Pairing;

/// The least number of sessions an instance takes in one round (more when its fair share is
/// larger: a restart of the only instance resumes every session at once).
const TAKE_PER_ROUND: usize = 8;

/// At most this many sessions leave an instance per round when it holds more than its share.
const HAND_OVER_PER_ROUND: usize = 3;

/// What one instance remembers from round to round.
#[derive(Default)]
pub(super) struct Rounds {
    /// Unix ms until which this instance's leases are known to be held (its last renewal).
    held_until: i64,
    /// Sessions this instance handed over, and when: not taken back while another instance may
    /// still be about to take them.
    handed: HashMap<LocationId, i64>,
}

impl Supervisor {
    /// Runs the lease round until shutdown; then leaves the live instances before the runners
    /// free their leases (so no other instance hands this one the sessions it frees), and tells
    /// the others again once every lease is freed.
    pub fn spawn_lease_loop(&self, tasks: &TaskTracker) {
        let supervisor = self.clone();
        tasks.spawn(async move {
            let shared = &supervisor.shared;
            let mut rounds = Rounds::default();
            loop {
                tokio::select! {
                    () = shared.shutdown.cancelled() => break,
                    () = tokio::time::sleep(shared.settings.lease_ttl / 3) => {}
                    () = shared.wake_leases.notified() => {}
                }
                supervisor.lease_round(&mut rounds).await;
            }
            supervisor.leave().await;
            supervisor.runners.close();
            supervisor.runners.wait().await;
            supervisor.leave().await;
        });
    }

    /// One round; returns how many sessions this instance took.
    pub(super) async fn lease_round(&self, rounds: &mut Rounds) -> usize {
        let shared = &self.shared;
        let ttl = shared.settings.lease_ttl.as_millis() as i64;
        let started = now_ms();
        let renewed = match shared.store.renew_leases(shared.me.as_str(), started + ttl).await {
            Ok(renewed) => {
                rounds.held_until = started + ttl;
                renewed
            }
            Err(e) => {
                tracing::error!(error = %e, "could not renew the session leases");
                if now_ms() + ttl / 3 >= rounds.held_until {
                    // The leases may run out before the next round: stop while they surely hold.
                    self.stop_unleased(&HashSet::new(), i64::MAX).await;
                }
                return 0;
            }
        };
        let renewed: HashSet<String> = renewed.into_iter().collect();
        self.stop_unleased(&renewed, started).await;
        if let Err(e) = shared.store.heartbeat(&shared.me, renewed.len() as i64).await {
            tracing::warn!(error = %e, "could not write this instance's heartbeat");
        }
        let (live, candidates) = match tokio::try_join!(
            shared.store.live_instances(started - ttl),
            shared.store.lease_candidates()
        ) {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "could not read the instances and free sessions");
                return 0;
            }
        };
        let live = with_me(live, shared.me.as_str(), renewed.len() as i64);
        rounds.handed.retain(|_, at| *at + 2 * ttl > started);
        let alone = live.len() == 1;
        let candidates: Vec<LeaseCandidate> = candidates
            .into_iter()
            .filter(|c| alone || !LocationId::parse(&c.location_id).is_ok_and(|l| rounds.handed.contains_key(&l)))
            .collect();
        let sessions = live.iter().map(|i| i.leases as usize).sum::<usize>() + candidates.len();
        let fair = sessions.div_ceil(live.len());
        let mine = assign(&live, &candidates, shared.me.as_str());
        let mut taken = 0;
        for candidate in mine.into_iter().take(TAKE_PER_ROUND.max(fair)) {
            if self.take(candidate).await {
                taken += 1;
            }
        }
        if !alone {
            let held = renewed.len() + taken;
            if held > fair {
                self.hand_over_idle((held - fair).min(HAND_OVER_PER_ROUND), rounds)
                    .await;
            }
        }
        shared.refresh_state_gauge();
        taken
    }

    /// Stops the clients whose lease was not renewed in a round that began at `round_start`
    /// (one taken since could not have been).
    async fn stop_unleased(&self, renewed: &HashSet<String>, round_start: i64) {
        let running: Vec<(LocationId, Arc<Slot>)> = lock(&self.shared.registry)
            .iter()
            .filter(|(id, slot)| {
                slot.runs_here() && !renewed.contains(id.as_str()) && slot.lease_taken_at() < round_start
            })
            .map(|(id, slot)| (id.clone(), slot.clone()))
            .collect();
        for (location, slot) in running {
            tracing::error!(location.id = %location, "lost the session lease; stopping the client");
            self.stop_runner(&slot).await;
            self.shared
                .transition(
                    &location,
                    &slot,
                    SessionState::Reconnecting,
                    Some(reasons::LEASE_LOST),
                    None,
                )
                .await;
        }
    }

    /// Takes a free session's lease and starts its client; false when another instance was first.
    async fn take(&self, candidate: LeaseCandidate) -> bool {
        let shared = &self.shared;
        let Ok(location) = LocationId::parse(&candidate.location_id) else {
            return false;
        };
        let slot = self.slot(&location);
        let _one_at_a_time = slot.operations.lock().await;
        if slot.runs_here() {
            return false;
        }
        let until = now_ms() + shared.settings.lease_ttl.as_millis() as i64;
        match shared
            .store
            .acquire_lease(location.as_str(), shared.me.as_str(), until)
            .await
        {
            Ok(true) => slot.took_lease(),
            Ok(false) => return false,
            Err(e) => {
                tracing::warn!(location.id = %location, error = %e, "could not take a free session lease");
                return false;
            }
        }
        if candidate.owner.as_deref().is_some_and(|o| o != shared.me.as_str()) {
            shared.metrics.lease_takeovers.inc();
        }
        // Its last owner kept its state: start from that, not from what this instance once saw.
        match shared.store.session_row(location.as_str()).await {
            Ok(Some(row)) => {
                slot.view.send_replace(view_of(row));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(location.id = %location, error = %e, "could not read a taken session"),
        }
        if candidate.pairing {
            // The code its last owner showed died with that client; a new one follows.
            shared.show_code(&location, &slot, PairingCode::default()).await;
            shared
                .transition(
                    &location,
                    &slot,
                    SessionState::Unpaired,
                    Some(reasons::PAIRING_STARTING),
                    None,
                )
                .await;
        } else {
            // Not connected until its client says so.
            shared
                .transition(
                    &location,
                    &slot,
                    SessionState::Reconnecting,
                    Some(reasons::RESTORING),
                    None,
                )
                .await;
        }
        tracing::info!(location.id = %location, previous = candidate.owner.as_deref(), "took the session");
        let delay = shared.settings.restore_spread.mul_f64(random_fraction());
        self.spawn_runner(location, Pairing::Qr, delay);
        true
    }

    /// Hands up to `count` idle connected sessions over to the other instances: no message of
    /// theirs is being stored or sent, so nothing waits on the client that stops.
    async fn hand_over_idle(&self, count: usize, rounds: &mut Rounds) {
        let shared = &self.shared;
        let mut running: Vec<(LocationId, Arc<Slot>)> = lock(&shared.registry)
            .iter()
            .filter(|(_, slot)| slot.runs_here() && slot.view().state == SessionState::Connected)
            .map(|(id, slot)| (id.clone(), slot.clone()))
            .collect();
        running.sort_by(|a, b| a.0.cmp(&b.0));
        let mut handed = 0;
        for (location, slot) in running {
            if handed == count {
                break;
            }
            if slot.is_storing() || shared.store.is_sending(location.as_str()).await.unwrap_or(true) {
                continue;
            }
            let _one_at_a_time = slot.operations.lock().await;
            tracing::info!(location.id = %location, "handing the session over to a less loaded instance");
            self.stop_runner(&slot).await;
            shared.hand_over(&location, &slot).await;
            rounds.handed.insert(location, now_ms());
            handed += 1;
        }
    }
}

/// The live instances, with this one among them (its heartbeat row may not be written yet).
fn with_me(mut live: Vec<LiveInstance>, me: &str, leases: i64) -> Vec<LiveInstance> {
    if !live.iter().any(|i| i.instance_id == me) {
        live.push(LiveInstance {
            instance_id: me.to_owned(),
            leases,
        });
    }
    live
}

/// The candidates that fall to `me` when each, in order, goes to the least-loaded instance
/// (ties broken by id) — the same split on every instance that reads the same rows.
fn assign(live: &[LiveInstance], candidates: &[LeaseCandidate], me: &str) -> Vec<LeaseCandidate> {
    let mut loads: Vec<(i64, &str)> = live.iter().map(|i| (i.leases, i.instance_id.as_str())).collect();
    let mut mine = Vec::new();
    for candidate in candidates {
        let Some(least) = loads.iter_mut().min() else {
            break;
        };
        least.0 += 1;
        if least.1 == me {
            mine.push(candidate.clone());
        }
    }
    mine
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, leases: i64) -> LiveInstance {
        LiveInstance {
            instance_id: id.into(),
            leases,
        }
    }

    fn candidates(n: usize) -> Vec<LeaseCandidate> {
        (0..n)
            .map(|i| LeaseCandidate {
                location_id: format!("loc{i:02}"),
                owner: None,
                pairing: false,
            })
            .collect()
    }

    #[test]
    fn free_sessions_fill_the_least_loaded_instances_first_and_every_instance_agrees() {
        let live = [instance("a", 4), instance("b", 0), instance("c", 1)];
        let free = candidates(7);
        let split: Vec<Vec<String>> = ["a", "b", "c"]
            .iter()
            .map(|me| assign(&live, &free, me).into_iter().map(|c| c.location_id).collect())
            .collect();
        // b takes the first (0 < 1), then b and c alternate (ties to the smaller id) until all
        // three hold 4.
        assert_eq!(split[0], Vec::<String>::new());
        assert_eq!(split[1], ["loc00", "loc01", "loc03", "loc05"]);
        assert_eq!(split[2], ["loc02", "loc04", "loc06"]);
        let all: HashSet<String> = split.into_iter().flatten().collect();
        assert_eq!(all.len(), 7, "a session fell to two instances or to none");
    }

    #[test]
    fn this_instance_counts_itself_before_its_first_heartbeat() {
        let live = with_me(vec![instance("a", 3)], "b", 0);
        assert_eq!(live.len(), 2);
        assert_eq!(assign(&live, &candidates(3), "b").len(), 3);
    }
}
