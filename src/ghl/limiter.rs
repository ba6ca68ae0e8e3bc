//! Keeps waghl under GHL's rate limit: at most `limit` requests per location in ANY window of
//! `window` as GHL counts them (a sliding log, not a token bucket — a bucket that starts full
//! and refills lets about twice the limit through in the first window).
//!
//! GHL counts a request when it arrives, which is some time after waghl sent it. So a request
//! occupies its slot from the moment it is let through until `window` after its answer came
//! back: every request GHL can still be counting in its current window is then counted here
//! too, however slow the network, and waghl never exceeds the limit as GHL sees it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Notify;
use tokio::time::Instant;

pub struct RateLimiter {
    limit: usize,
    window: Duration,
    /// One log per location (or company), created on first use and kept.
    logs: DashMap<String, Arc<Log>>,
}

#[derive(Default)]
struct Log {
    /// A std mutex: held for a few instructions, never across an `.await`.
    state: Mutex<LogState>,
    /// Wakes waiters when a request finishes (its slot starts to age out).
    finished: Notify,
}

#[derive(Default)]
struct LogState {
    in_flight: usize,
    /// When each request of the current window got its answer, oldest first.
    finished_at: VecDeque<Instant>,
    /// GHL said 429: nothing goes out before this instant.
    paused_until: Option<Instant>,
}

/// A request's slot; dropping it (when the answer arrived) starts the slot's window.
pub struct Permit {
    log: Arc<Log>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.log.state.lock().unwrap_or_else(|p| p.into_inner());
        state.in_flight -= 1;
        state.finished_at.push_back(Instant::now());
        drop(state);
        self.log.finished.notify_waiters();
    }
}

impl RateLimiter {
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit: limit.max(1) as usize,
            window,
            logs: DashMap::new(),
        }
    }

    fn log(&self, key: &str) -> Arc<Log> {
        if let Some(log) = self.logs.get(key) {
            return log.clone();
        }
        self.logs.entry(key.to_owned()).or_default().clone()
    }

    /// Waits until a request for `key` may go out. Hold the permit until its answer arrived.
    pub async fn acquire(&self, key: &str) -> Permit {
        let log = self.log(key);
        loop {
            let finished = log.finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            let wait = {
                let mut state = log.state.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                while state
                    .finished_at
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= self.window)
                {
                    state.finished_at.pop_front();
                }
                match state.paused_until {
                    Some(until) if until > now => Some(until - now),
                    _ if state.in_flight + state.finished_at.len() < self.limit => {
                        state.in_flight += 1;
                        return Permit { log: log.clone() };
                    }
                    // Every slot is in flight: wait for one to finish.
                    _ if state.finished_at.is_empty() => None,
                    _ => Some(self.window - now.duration_since(state.finished_at[0])),
                }
            };
            match wait {
                Some(delay) => {
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = &mut finished => {}
                    }
                }
                None => finished.await,
            }
        }
    }

    /// GHL answered 429: hold every request of `key` for `delay`.
    pub fn pause(&self, key: &str, delay: Duration) {
        let log = self.log(key);
        let mut state = log.state.lock().unwrap_or_else(|p| p.into_inner());
        let until = Instant::now() + delay;
        if state.paused_until.is_none_or(|current| current < until) {
            state.paused_until = Some(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `count` requests that each take `latency`, and returns when each was let through.
    async fn run(limiter: Arc<RateLimiter>, count: usize, latency: Duration) -> Vec<Instant> {
        let mut tasks = Vec::new();
        for _ in 0..count {
            let limiter = limiter.clone();
            tasks.push(tokio::spawn(async move {
                let permit = limiter.acquire("loc").await;
                let started = Instant::now();
                tokio::time::sleep(latency).await;
                drop(permit);
                started
            }));
        }
        let mut times = Vec::new();
        for task in tasks {
            times.push(task.await.unwrap());
        }
        times.sort();
        times
    }

    fn most_in_any_window(times: &[Instant], window: Duration) -> usize {
        (0..times.len())
            .map(|i| {
                times[i..]
                    .iter()
                    .filter(|u| u.duration_since(times[i]) < window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn no_window_ever_holds_more_than_the_limit() {
        let limiter = Arc::new(RateLimiter::new(10, Duration::from_secs(1)));
        let started = Instant::now();
        let times = run(limiter, 35, Duration::ZERO).await;
        assert!(most_in_any_window(&times, Duration::from_secs(1)) <= 10);
        // 35 requests at 10 per second need three full windows, and not much more.
        let took = times.last().unwrap().duration_since(started);
        assert!(
            took >= Duration::from_secs(3) && took < Duration::from_millis(3100),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slow_answers_keep_their_slot_so_arrivals_never_bunch_up() {
        let limiter = Arc::new(RateLimiter::new(10, Duration::from_secs(1)));
        let latency = Duration::from_millis(400);
        let times = run(limiter, 40, latency).await;
        // As GHL sees them: each request arrives somewhere within its latency; even if the
        // first ones arrived late and the next ones early, no window holds more than 10.
        let arrivals_late: Vec<Instant> = times.iter().map(|t| *t + latency).collect();
        let mut mixed: Vec<Instant> = arrivals_late[..10].to_vec();
        mixed.extend_from_slice(&times[10..]);
        mixed.sort();
        assert!(most_in_any_window(&mixed, Duration::from_secs(1)) <= 10);
    }

    #[tokio::test(start_paused = true)]
    async fn locations_do_not_share_a_window_and_a_pause_holds_one_location() {
        let limiter = RateLimiter::new(1, Duration::from_secs(10));
        let started = Instant::now();
        drop(limiter.acquire("a").await);
        drop(limiter.acquire("b").await);
        assert_eq!(Instant::now(), started);
        limiter.pause("b", Duration::from_secs(30));
        drop(limiter.acquire("c").await);
        assert_eq!(Instant::now(), started);
        drop(limiter.acquire("b").await);
        assert!(Instant::now().duration_since(started) >= Duration::from_secs(30));
    }
}
