//! The GHL API as waghl uses it: typed calls ([`api`]), OAuth ([`oauth`]), per-location tokens
//! with single-flight refresh ([`tokens`]), the rate limiter ([`limiter`]) and the retry policy
//! (here). Callers get a [`GhlError`] that says what to do next.

mod api;
mod error;
mod limiter;
mod oauth;
mod settings;
mod tokens;
pub mod types;
pub mod user_context;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use serde::de::DeserializeOwned;

pub use api::Attachment;
pub use error::{Action, GhlError};
pub use limiter::RateLimiter;
pub use oauth::Installed;
pub use settings::GhlConfig;

use crate::backoff::Backoff;
use crate::crypto::random_fraction;
use crate::metrics::{GhlLabels, Metrics};
use crate::store::{Store, TokenOwner};
use tokens::TokenManager;
use types::ErrorBody;

pub type Result<T, E = GhlError> = std::result::Result<T, E>;

/// Cheap to clone; one per application, shared by every worker and handler.
#[derive(Clone)]
pub struct GhlClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    config: GhlConfig,
    /// `{WAGHL_PUBLIC_URL}/oauth/callback`, sent as `redirect_uri`.
    redirect_uri: String,
    store: Store,
    limiter: RateLimiter,
    tokens: TokenManager,
    metrics: Arc<Metrics>,
}

/// Which failed attempts a call repeats by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retries {
    /// 429, 5xx, timeouts and network errors, with backoff.
    All,
    /// None: a refresh that timed out may have spent the rotating refresh token.
    None,
    /// Only failures that say GHL did nothing (429, 503, 408, a refused connection); a
    /// timeout, a 500/502/504 or a lost answer may have done the work.
    UnlessMaybeDone,
}

/// How one attempt at a call ended, before the retry policy decides.
enum Attempt {
    Ok(Bytes),
    Unauthorized(String),
    RateLimited(Duration),
    /// 5xx, a timeout or a network error. `maybe_done`: GHL may have carried the request out
    /// (a timeout, a 500/502/504, a lost answer); not after a refused connection or a 503/408.
    Transient {
        message: String,
        maybe_done: bool,
    },
    Rejected {
        status: u16,
        message: String,
    },
}

impl GhlClient {
    pub fn new(config: GhlConfig, public_url: &str, store: Store, metrics: Arc<Metrics>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("waghl/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client builds (TLS provider installed)");
        Self {
            inner: Arc::new(Inner {
                limiter: RateLimiter::new(config.rate_limit, config.rate_window),
                tokens: TokenManager::default(),
                redirect_uri: format!("{public_url}/oauth/callback"),
                http,
                config,
                store,
                metrics,
            }),
        }
    }

    pub fn config(&self) -> &GhlConfig {
        &self.inner.config
    }

    /// `Err(NotConfigured)` naming the missing settings, when any is missing.
    pub fn ensure_configured(&self) -> Result<()> {
        let missing = self.inner.config.missing();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(GhlError::NotConfigured(missing.join(", ")))
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.inner.config.api_base_url)
    }

    /// The delays between the attempts of one call: at most `max_retries` of them.
    fn backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        let config = &self.inner.config;
        let backoff = Backoff::new(config.retry_base_delay, config.retry_max_delay);
        (0..config.max_retries as u32).map(move |attempt| backoff.delay(attempt, random_fraction()))
    }

    /// Runs a call with the policy every GHL call shares. With an owner (a location or a
    /// company): wait for its rate limiter, use a fresh token (refreshed ahead of expiry),
    /// send the `Version` header, refresh once on 401, honour 429 for the whole owner. Always:
    /// retry 5xx and timeouts with backoff and jitter, a bounded number of times. `build` is
    /// called for every attempt (a multipart body cannot be replayed) with the access token
    /// (empty for unauthenticated calls such as `/oauth/token`).
    async fn call<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        owner: Option<TokenOwner<'_>>,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<T> {
        self.call_with(operation, owner, Retries::All, build).await
    }

    /// [`GhlClient::call`] without retries, for a call whose repetition could do harm: a
    /// refresh that timed out may have spent the rotating refresh token already.
    async fn call_once<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        owner: Option<TokenOwner<'_>>,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<T> {
        self.call_with(operation, owner, Retries::None, build).await
    }

    async fn call_with<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        owner: Option<TokenOwner<'_>>,
        retries: Retries,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<T> {
        self.ensure_configured()?;
        let inner = &self.inner;
        let mut delays = self
            .backoff()
            .take(if retries == Retries::None { 0 } else { usize::MAX });
        let mut refreshed = false;
        loop {
            let authed = match owner {
                Some(owner) => Some((owner, self.token(owner).await?)),
                None => None,
            };
            // Held until the answer arrived (see `limiter`).
            let _permit = match owner {
                Some(owner) => Some(inner.limiter.acquire(owner.id()).await),
                None => None,
            };
            let request = match &authed {
                Some((_, token)) => build(&inner.http, token.expose()).header("Version", &inner.config.api_version),
                None => build(&inner.http, ""),
            };
            match self.attempt(operation, request).await {
                Attempt::Ok(body) => return decode(operation, &body),
                Attempt::Unauthorized(message) => match &authed {
                    Some((owner, token)) if !refreshed => {
                        refreshed = true;
                        self.refresh(*owner, token).await?;
                    }
                    _ => {
                        return Err(GhlError::Rejected { status: 401, message });
                    }
                },
                Attempt::RateLimited(delay) => {
                    if delays.next().is_none() {
                        return Err(GhlError::RateLimited { retry_after: delay });
                    }
                    // The limiter holds every caller of this owner, not just this one.
                    match owner {
                        Some(owner) => inner.limiter.pause(owner.id(), delay),
                        None => tokio::time::sleep(delay).await,
                    }
                }
                Attempt::Transient {
                    message,
                    maybe_done: true,
                } if retries == Retries::UnlessMaybeDone => {
                    return Err(GhlError::Uncertain(message));
                }
                Attempt::Transient { message, .. } => match delays.next() {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => return Err(GhlError::Unavailable(message)),
                },
                Attempt::Rejected { status, message } => {
                    return Err(GhlError::Rejected { status, message });
                }
            }
        }
    }

    /// Sends one request and classifies the answer; counts it in metrics.
    async fn attempt(&self, operation: &'static str, request: reqwest::RequestBuilder) -> Attempt {
        let attempt = match request.send().await {
            Err(e) if e.is_timeout() => Attempt::Transient {
                message: format!("{operation}: timed out"),
                maybe_done: true,
            },
            Err(e) => Attempt::Transient {
                message: format!("{operation}: {}", without_url(&e)),
                // A connection never made carried nothing; any other failure may have.
                maybe_done: !e.is_connect(),
            },
            Ok(response) => classify(response).await,
        };
        let outcome = match &attempt {
            Attempt::Ok(_) => "ok",
            Attempt::Unauthorized(_) => "unauthorized",
            Attempt::RateLimited(_) => "rate_limited",
            Attempt::Transient { .. } => "unavailable",
            Attempt::Rejected { .. } => "rejected",
        };
        self.inner
            .metrics
            .ghl_requests
            .get_or_create(&GhlLabels {
                operation: operation.into(),
                outcome: outcome.into(),
            })
            .inc();
        attempt
    }
}

async fn classify(response: reqwest::Response) -> Attempt {
    let status = response.status();
    let headers = response.headers().clone();
    let body = match response.bytes().await {
        Ok(body) => body,
        Err(e) => {
            return Attempt::Transient {
                message: format!("reading the answer: {}", without_url(&e)),
                maybe_done: true,
            };
        }
    };
    if status.is_success() {
        return Attempt::Ok(body);
    }
    let message = serde_json::from_slice::<ErrorBody>(&body)
        .ok()
        .and_then(|b| b.text())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    match status.as_u16() {
        401 => Attempt::Unauthorized(message),
        429 => Attempt::RateLimited(retry_after(&headers)),
        500..=599 | 408 => Attempt::Transient {
            message: format!("{status}: {message}"),
            // GHL (or its load balancer) refusing the request outright did nothing.
            maybe_done: !matches!(status.as_u16(), 503 | 408),
        },
        code => Attempt::Rejected { status: code, message },
    }
}

/// How long GHL wants us to wait after a 429: `Retry-After` (seconds) when present, else the
/// rate-limit interval it announces, else 10 s (its documented window).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Duration {
    let number = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<u64>().ok();
    number("retry-after")
        .map(Duration::from_secs)
        .or_else(|| number("x-ratelimit-interval-milliseconds").map(Duration::from_millis))
        .unwrap_or(Duration::from_secs(10))
        .max(Duration::from_millis(100))
}

/// An empty body reads as JSON `null`: fine where nothing is expected (`serde_json::Value`),
/// an "unexpected answer" where a body was.
fn decode<T: DeserializeOwned>(operation: &str, body: &[u8]) -> Result<T> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"null"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| GhlError::Rejected {
        status: 200,
        message: format!("{operation}: unexpected answer from GHL ({e})"),
    })
}

/// reqwest errors print the URL, which can carry ids and query values; keep only the cause.
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "GHL");
    }
    text
}
