//! Webhooks before the drain. GHL waits on a provider webhook's answer, which comes only once
//! its row committed; the outbound relay's drain waits on nobody. On a machine whose cores and
//! database the two share, a drain going full speed left a burst of webhooks a fifth of the
//! rate and ten times the latency they had alone. So when webhooks queue up behind each other
//! (one commit carried several), the relay starts a trickle of new sends and reports — a
//! sixteenth of its slots every [`GAP`] — until the intake has been calm for [`CALM`]: the drain
//! keeps a floor through the burst (40 sends a second with the default 32 slots) and goes full
//! speed again right after it. Small and frequent rather than a batch now and then: a whole
//! batch of sends starting at once held webhooks up to 18 ms (p99) in `bench_intake`.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// While webhooks crowd in, the least time between two refills of the relay.
const GAP: Duration = Duration::from_millis(50);
/// The intake is calm once no commit carried several webhooks for this long.
const CALM: Duration = Duration::from_millis(100);

/// Whether webhooks are crowding in; shared by the intake and the outbound relay.
#[derive(Default)]
pub struct Crowd {
    /// Until when the intake counts as crowded.
    until: Mutex<Option<Instant>>,
}

impl Crowd {
    /// The intake committed one transaction for `requests` webhooks.
    pub fn committed(&self, requests: usize) {
        if requests > 1 {
            *self.until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + CALM);
        }
    }

    /// When the relay may refill next, having last refilled at `last`.
    pub fn next_refill(&self, last: Instant) -> Instant {
        next_refill(last, self.until(), Instant::now())
    }

    /// How many new sends (or reports) the relay starts now, with `busy` of its `capacity`
    /// slots taken.
    pub fn to_start(&self, capacity: usize, busy: usize) -> usize {
        let crowded = self.until().is_some_and(|until| until > Instant::now());
        to_start(capacity, busy, crowded)
    }

    fn until(&self) -> Option<Instant> {
        *self.until.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// While crowded, a sixteenth of the slots (at least one); when calm, every free slot, once a
/// quarter of them are free (each refill is a claim, a write transaction: with most slots busy,
/// several are refilled at once rather than each as it frees).
fn to_start(capacity: usize, busy: usize, crowded: bool) -> usize {
    let free = capacity.saturating_sub(busy);
    if crowded {
        free.min(capacity.div_ceil(16))
    } else if free >= capacity.div_ceil(4) {
        free
    } else {
        0
    }
}

/// At once when the intake is calm at `now`; while it is crowded (until `until`), a [`GAP`]
/// after the last refill, or as the crowd ends if that comes first.
fn next_refill(last: Instant, until: Option<Instant>, now: Instant) -> Instant {
    match until {
        Some(until) if until > now => (last + GAP).min(until),
        _ => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crowded_intake_spaces_the_refills_and_a_calm_one_does_not() {
        let now = Instant::now();
        let last = now - Duration::from_millis(10);
        assert_eq!(next_refill(last, None, now), now, "never crowded");
        assert_eq!(next_refill(last, Some(now - CALM), now), now, "the crowd ended");
        let soon = now + Duration::from_millis(5);
        assert_eq!(
            next_refill(last, Some(soon), now),
            soon,
            "as the crowd ends, before the gap"
        );
        let long = now + 10 * GAP;
        assert_eq!(next_refill(last, Some(long), now), last + GAP, "a gap after the last");
        let old = now - 2 * GAP;
        assert_eq!(next_refill(old, Some(long), now), old + GAP, "overdue: at once");
    }

    #[test]
    fn a_crowded_intake_leaves_the_relay_a_trickle_and_a_calm_one_every_free_slot() {
        assert_eq!(to_start(32, 0, false), 32);
        assert_eq!(to_start(32, 24, false), 8, "a quarter free");
        assert_eq!(to_start(32, 25, false), 0, "less than a quarter free: wait");
        assert_eq!(to_start(32, 0, true), 2);
        assert_eq!(to_start(32, 31, true), 1);
        assert_eq!(to_start(32, 32, true), 0);
        assert_eq!(to_start(1, 0, true), 1, "never nothing at all");
        assert_eq!(to_start(200, 0, true), 13);
    }

    #[test]
    fn only_a_commit_that_carried_several_webhooks_crowds_the_intake() {
        let crowd = Crowd::default();
        let last = Instant::now();
        crowd.committed(1);
        assert!(crowd.next_refill(last) <= Instant::now());
        assert_eq!(crowd.to_start(32, 0), 32);
        crowd.committed(3);
        assert!(crowd.next_refill(last) > Instant::now());
        assert_eq!(crowd.to_start(32, 0), 2);
    }
}
