//! WhatsApp Web's version, which every client announces at login, fetched once for the whole
//! process instead of once per session. Left to itself, the crate fetches
//! `web.whatsapp.com/sw.js` in each client whose stored version is a day old, and a failed
//! fetch fails that client's connect even though it holds a usable version: a fleet restarting
//! while that host is slow would stay offline. Here one fetch serves every client for a day;
//! a failed fetch falls back to the last version known (this process's, else the one the
//! device stored), and only a device that never had one is left to the crate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use whatsapp_rust::http::HttpClient;

/// `(primary, secondary, revision)`, as WhatsApp Web announces itself.
pub type Version = (u32, u32, u32);

/// How long a fetched version is used before it is fetched again (the crate's own period).
const REFRESH_EVERY: Duration = Duration::from_secs(24 * 60 * 60);
/// After a failed fetch, the next start tries again only after this long, so 200 sessions
/// starting while the host is down make one request, not 200.
const RETRY_FAILED_AFTER: Duration = Duration::from_secs(60);
/// The crate bounds its own fetch so; starts wait for ours, so it must not hang them longer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(20);

pub struct WebVersion {
    http: Arc<dyn HttpClient>,
    state: tokio::sync::Mutex<Known>,
    /// WhatsApp refused a client as outdated: fetch again before the next start.
    stale: AtomicBool,
}

#[derive(Default)]
struct Known {
    version: Option<Version>,
    fetched_at: Option<Instant>,
    failed_at: Option<Instant>,
}

impl WebVersion {
    pub fn new(http: Arc<dyn HttpClient>) -> Self {
        Self {
            http,
            state: tokio::sync::Mutex::new(Known::default()),
            stale: AtomicBool::new(false),
        }
    }

    /// The version a client starting now announces: the last one fetched while it is less
    /// than a day old (and not refused since), else a fresh fetch (bounded by
    /// [`FETCH_TIMEOUT`]); on a failed fetch the last one known. `None` when this process never
    /// fetched one: the caller falls back to the device's own.
    pub async fn current(&self) -> Option<Version> {
        // One fetch at a time: the sessions starting together wait for its answer.
        let mut known = self.state.lock().await;
        let now = Instant::now();
        let fresh = known
            .fetched_at
            .is_some_and(|at| now.duration_since(at) < REFRESH_EVERY)
            && !self.stale.load(Ordering::Acquire);
        let failed_lately = known
            .failed_at
            .is_some_and(|at| now.duration_since(at) < RETRY_FAILED_AFTER);
        if !fresh && !failed_lately {
            let fetched = tokio::time::timeout(
                FETCH_TIMEOUT,
                whatsapp_rust::version::fetch_latest_app_version(&self.http),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {} s", FETCH_TIMEOUT.as_secs())));
            match fetched {
                Ok(version) => {
                    if known.version != Some(version) {
                        tracing::info!(version = %show(version), "WhatsApp Web version fetched");
                    }
                    known.version = Some(version);
                    known.fetched_at = Some(now);
                    known.failed_at = None;
                    self.stale.store(false, Ordering::Release);
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "could not fetch WhatsApp Web's version; using the last one known");
                    known.failed_at = Some(now);
                }
            }
        }
        known.version
    }

    /// WhatsApp refused a client as outdated: the next start fetches the version again.
    pub fn refused(&self) {
        self.stale.store(true, Ordering::Release);
    }
}

fn show((primary, secondary, revision): Version) -> String {
    format!("{primary}.{secondary}.{revision}")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use whatsapp_rust::http::{HttpRequest, HttpResponse};

    use super::*;

    /// Answers `sw.js` with `revision`, or 503 while `failing`; counts the requests.
    #[derive(Default)]
    struct SwJs {
        revision: std::sync::atomic::AtomicU32,
        failing: AtomicBool,
        fetches: AtomicUsize,
    }

    #[whatsapp_rust::async_trait]
    impl HttpClient for SwJs {
        async fn execute(&self, request: HttpRequest) -> anyhow::Result<HttpResponse> {
            assert!(request.url.ends_with("/sw.js"), "{}", request.url);
            self.fetches.fetch_add(1, Ordering::SeqCst);
            let (status_code, body) = if self.failing.load(Ordering::SeqCst) {
                (503, String::new())
            } else {
                let revision = self.revision.load(Ordering::SeqCst);
                (200, format!(r#"{{"client_revision":{revision}}}"#))
            };
            Ok(HttpResponse {
                status_code,
                body: body.into_bytes(),
            })
        }
    }

    fn serving(revision: u32) -> (Arc<SwJs>, WebVersion) {
        let sw = Arc::new(SwJs::default());
        sw.revision.store(revision, Ordering::SeqCst);
        let version = WebVersion::new(sw.clone());
        (sw, version)
    }

    #[tokio::test]
    async fn many_sessions_share_one_fetch() {
        let (sw, version) = serving(111);
        let version = Arc::new(version);
        let starts = (0..20).map(|_| {
            let version = version.clone();
            tokio::spawn(async move { version.current().await })
        });
        for start in starts {
            assert_eq!(start.await.unwrap(), Some((2, 3000, 111)));
        }
        assert_eq!(sw.fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_fetch_falls_back_to_the_last_version_known() {
        let (sw, version) = serving(111);
        sw.failing.store(true, Ordering::SeqCst);
        // Nothing known in this process: the caller falls back to the device's version.
        assert_eq!(version.current().await, None);
        assert_eq!(version.current().await, None);
        assert_eq!(sw.fetches.load(Ordering::SeqCst), 1, "a failure is not retried at once");

        let (sw, version) = serving(111);
        assert_eq!(version.current().await, Some((2, 3000, 111)));
        sw.failing.store(true, Ordering::SeqCst);
        version.refused();
        assert_eq!(version.current().await, Some((2, 3000, 111)));
    }

    #[tokio::test]
    async fn a_refused_version_is_fetched_again() {
        let (sw, version) = serving(111);
        assert_eq!(version.current().await, Some((2, 3000, 111)));
        sw.revision.store(222, Ordering::SeqCst);
        assert_eq!(version.current().await, Some((2, 3000, 111)), "a day is not over");
        version.refused();
        assert_eq!(version.current().await, Some((2, 3000, 222)));
        assert_eq!(version.current().await, Some((2, 3000, 222)));
        assert_eq!(sw.fetches.load(Ordering::SeqCst), 2);
    }
}
