//! When to restart a WhatsApp client that ended, crashed or was killed by the health check.
//! Pure: the caller passes the time and the jitter, so the rules are tested without clocks.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;

#[derive(Clone, Debug)]
pub struct PolicySettings {
    /// First restart delay; doubles each time up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Connected this long without trouble: the next failure starts from `base_delay` again.
    pub stable_after: Duration,
    /// More than `crash_limit` restarts within `crash_window` is a crash loop: park.
    pub crash_limit: usize,
    pub crash_window: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    RestartAfter(Duration),
    Park,
}

pub struct RestartPolicy {
    settings: PolicySettings,
    /// Consecutive restarts since the last stable period.
    attempts: u32,
    recent_exits: VecDeque<Instant>,
    connected_since: Option<Instant>,
}

impl RestartPolicy {
    pub fn new(settings: PolicySettings) -> Self {
        Self {
            settings,
            attempts: 0,
            recent_exits: VecDeque::new(),
            connected_since: None,
        }
    }

    pub fn connected(&mut self, now: Instant) {
        self.connected_since.get_or_insert(now);
    }

    /// The connection dropped at `now`; a connection that had been stable resets the backoff.
    pub fn disconnected(&mut self, now: Instant) {
        self.forget_if_stable(now);
    }

    fn forget_if_stable(&mut self, now: Instant) {
        let stable_after = self.settings.stable_after;
        if self
            .connected_since
            .take()
            .is_some_and(|since| now.duration_since(since) >= stable_after)
        {
            self.attempts = 0;
            self.recent_exits.clear();
        }
    }

    /// The client ended unexpectedly at `now`; `jitter` in [0, 1) spreads the delay over
    /// 50–100 % of the backoff so that many sessions failing together do not retry together.
    pub fn on_exit(&mut self, now: Instant, jitter: f64) -> Decision {
        self.forget_if_stable(now);
        let settings = &self.settings;
        self.recent_exits.push_back(now);
        while self
            .recent_exits
            .front()
            .is_some_and(|t| now.duration_since(*t) > settings.crash_window)
        {
            self.recent_exits.pop_front();
        }
        if self.recent_exits.len() > settings.crash_limit {
            return Decision::Park;
        }
        let delay = Backoff::new(settings.base_delay, settings.max_delay).delay(self.attempts, jitter);
        self.attempts += 1;
        Decision::RestartAfter(delay)
    }
}

impl RestartPolicy {
    /// WhatsApp refused the client in a way that may pass (an outdated version, a refused
    /// connection): the delay before the next try, growing like a restart's, without counting
    /// toward a crash loop — the session is parked with its reason meanwhile.
    pub fn refused(&mut self, now: Instant, jitter: f64) -> Duration {
        self.forget_if_stable(now);
        let settings = &self.settings;
        let delay = Backoff::new(settings.base_delay, settings.max_delay).delay(self.attempts, jitter);
        self.attempts += 1;
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy::new(PolicySettings {
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            stable_after: Duration::from_secs(120),
            crash_limit: 5,
            crash_window: Duration::from_secs(600),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_to_the_cap_and_jitter_stays_within_half() {
        let mut policy = RestartPolicy::new(PolicySettings {
            crash_limit: 100,
            ..policy().settings
        });
        let mut delays = Vec::new();
        for _ in 0..9 {
            tokio::time::advance(Duration::from_secs(61)).await;
            match policy.on_exit(Instant::now(), 0.999_999) {
                Decision::RestartAfter(d) => delays.push(d.as_secs_f64().round() as u64),
                Decision::Park => panic!("parked"),
            }
        }
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(
            policy.on_exit(Instant::now(), 0.0),
            Decision::RestartAfter(Duration::from_secs(30))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stable_connection_resets_the_backoff() {
        let mut policy = policy();
        for _ in 0..3 {
            policy.on_exit(Instant::now(), 0.999_999);
            tokio::time::advance(Duration::from_secs(10)).await;
        }
        policy.connected(Instant::now());
        tokio::time::advance(Duration::from_secs(121)).await;
        // Back to the base delay (half of it with no jitter).
        assert_eq!(
            policy.on_exit(Instant::now(), 0.0),
            Decision::RestartAfter(Duration::from_millis(500))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stable_connection_that_drops_before_ending_still_resets_the_backoff() {
        let mut policy = policy();
        for _ in 0..4 {
            policy.on_exit(Instant::now(), 0.0);
        }
        policy.connected(Instant::now());
        tokio::time::advance(Duration::from_secs(3600)).await;
        policy.disconnected(Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            policy.on_exit(Instant::now(), 0.0),
            Decision::RestartAfter(Duration::from_millis(500))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_connection_does_not_reset_the_backoff() {
        let mut policy = policy();
        policy.on_exit(Instant::now(), 0.999_999);
        policy.connected(Instant::now());
        tokio::time::advance(Duration::from_secs(5)).await;
        let Decision::RestartAfter(delay) = policy.on_exit(Instant::now(), 0.999_999) else {
            panic!()
        };
        assert!(delay > Duration::from_millis(1500), "{delay:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn more_than_the_limit_within_the_window_is_a_crash_loop() {
        let mut policy = policy();
        for _ in 0..5 {
            assert!(matches!(policy.on_exit(Instant::now(), 0.5), Decision::RestartAfter(_)));
            tokio::time::advance(Duration::from_secs(30)).await;
        }
        assert_eq!(policy.on_exit(Instant::now(), 0.5), Decision::Park);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_spread_beyond_the_window_are_not_a_crash_loop() {
        let mut policy = policy();
        for _ in 0..12 {
            assert!(matches!(policy.on_exit(Instant::now(), 0.5), Decision::RestartAfter(_)));
            tokio::time::advance(Duration::from_secs(200)).await;
        }
    }
}
