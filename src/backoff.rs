//! The one backoff of the daemon: exponential from a base delay up to a cap, with jitter over
//! 50–100 % of the delay so that many things failing together do not retry together. Pure: the
//! caller passes the attempt and the random fraction, so the rule is tested without clocks.

use std::time::Duration;

/// Delays that double from `base` up to `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The delay before retry number `attempt` (0 for the first retry); `jitter` in [0, 1)
    /// picks a point in 50–100 % of it.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let full = self.base.saturating_mul(1u32 << attempt.min(20)).min(self.max);
        full.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_to_the_cap_and_jitter_stays_within_half() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let full: Vec<u64> = (0..9)
            .map(|a| backoff.delay(a, 0.999_999).as_secs_f64().round() as u64)
            .collect();
        assert_eq!(full, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff.delay(3, 0.0), Duration::from_secs(4));
        assert_eq!(backoff.delay(1000, 0.5), Duration::from_secs(45));
    }
}
