//! Downloads the attachments of outbound messages from the URLs GHL gives: https only (plain
//! http only when a setting allows it, for tests), a size cap, and only from globally routable
//! addresses ([`super::address`]) — GHL's payload must not make waghl reach into its own
//! network, neither through a literal, nor a name, nor a redirect.

use std::net::IpAddr;
use std::time::Duration;

use super::address::refusal;
use crate::domain::{Fetched, clip};

pub struct Fetcher {
    http: reqwest::Client,
    max_bytes: usize,
    allow_http: bool,
    /// Downloads of one attachment before its message fails; a failed one is retried with the
    /// message's backoff, so a broken link never holds its chat for the whole retry budget.
    attempts: u32,
}

/// Why an attachment could not be fetched; `retry` says whether trying later may help.
#[derive(Debug)]
pub struct FetchError {
    pub retry: bool,
    pub message: String,
}

fn refuse(message: String) -> FetchError {
    FetchError { retry: false, message }
}

/// Why waghl must not connect to `ip`, if it must not. Loopback is allowed only together
/// with plain http (tests, whose servers listen on 127.0.0.1).
fn refused(ip: IpAddr, allow_loopback: bool) -> Option<String> {
    refusal(ip).filter(|_| !(allow_loopback && ip.is_loopback()))
}

fn refused_host(host: &url::Host<&str>, allow_loopback: bool) -> Option<String> {
    match host {
        url::Host::Ipv4(ip) => refused(IpAddr::V4(*ip), allow_loopback),
        url::Host::Ipv6(ip) => refused(IpAddr::V6(*ip), allow_loopback),
        // Names are checked on every address they resolve to, by [`PublicOnly`].
        url::Host::Domain(_) => None,
    }
}

/// A name that resolves only to addresses waghl must not connect to: final, never retried.
#[derive(Debug, thiserror::Error)]
#[error("attachment host {host} resolves only to addresses waghl does not connect to ({why})")]
struct RefusedName {
    host: String,
    why: String,
}

/// Resolves names like the system does, but never to an address [`refused`] refuses: a public
/// name pointing into waghl's network is refused, at the first request and at every redirect.
struct PublicOnly {
    allow_loopback: bool,
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let allow_loopback = self.allow_loopback;
        Box::pin(async move {
            let mut why = None;
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| match refused(a.ip(), allow_loopback) {
                    Some(reason) => {
                        why = Some(reason);
                        false
                    }
                    None => true,
                })
                .collect();
            if addrs.is_empty() {
                let why = why.unwrap_or_else(|| "no address".into());
                return Err(Box::new(RefusedName { host, why }) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The refusal of [`PublicOnly`] somewhere in a request error's causes.
fn refused_name(error: &reqwest::Error) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(refused) = e.downcast_ref::<RefusedName>() {
            return Some(refused.to_string());
        }
        cause = e.source();
    }
    None
}

impl Fetcher {
    pub fn new(max_bytes: usize, allow_http: bool, attempts: u32) -> Self {
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            let url = attempt.url();
            let scheme_ok = url.scheme() == "https" || (allow_http && url.scheme() == "http");
            let refused = url.host().is_some_and(|h| refused_host(&h, allow_http).is_some());
            if attempt.previous().len() >= 5 || !scheme_ok || refused {
                attempt.stop()
            } else {
                attempt.follow()
            }
        });
        let http = reqwest::Client::builder()
            .dns_resolver(std::sync::Arc::new(PublicOnly {
                allow_loopback: allow_http,
            }))
            .redirect(policy)
            .timeout(Duration::from_secs(120))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .expect("the HTTP client builds");
        Self {
            http,
            max_bytes,
            allow_http,
            attempts: attempts.max(1),
        }
    }

    /// Downloads `url`; `failed_before` counts the message's earlier failed attempts, and a
    /// failure of the last allowed attempt is final.
    pub async fn fetch(&self, url: &str, failed_before: i64) -> Result<Fetched, FetchError> {
        self.try_fetch(url).await.map_err(|mut e| {
            if e.retry && failed_before + 1 >= i64::from(self.attempts) {
                e.retry = false;
                e.message = format!("{} (gave up after {} attempts)", e.message, self.attempts);
            }
            e
        })
    }

    async fn try_fetch(&self, url: &str) -> Result<Fetched, FetchError> {
        let parsed =
            reqwest::Url::parse(url).map_err(|_| refuse(format!("attachment URL {} is not a URL", clip(url))))?;
        let scheme_ok = parsed.scheme() == "https" || (self.allow_http && parsed.scheme() == "http");
        if !scheme_ok {
            return Err(refuse("attachment URLs must be https".into()));
        }
        if let Some(why) = parsed.host().and_then(|h| refused_host(&h, self.allow_http)) {
            return Err(refuse(format!(
                "attachment URL points to an address waghl does not connect to ({why})"
            )));
        }
        let mut response = self
            .http
            .get(parsed.clone())
            .send()
            .await
            .map_err(|e| match refused_name(&e) {
                Some(message) => refuse(message),
                None => FetchError {
                    retry: true,
                    message: format!("attachment download failed: {}", e.without_url()),
                },
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError {
                retry: status.is_server_error() || status.as_u16() == 429,
                message: format!("attachment download answered {status}"),
            });
        }
        if response.content_length().is_some_and(|n| n as usize > self.max_bytes) {
            return Err(refuse(format!("attachment larger than {} bytes", self.max_bytes)));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "application/octet-stream".into());
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| FetchError {
            retry: true,
            message: format!("attachment download broke off: {}", e.without_url()),
        })? {
            if bytes.len() + chunk.len() > self.max_bytes {
                return Err(refuse(format!("attachment larger than {} bytes", self.max_bytes)));
            }
            bytes.extend_from_slice(&chunk);
        }
        let file_name = parsed
            .path_segments()
            .and_then(|mut s| s.next_back())
            .filter(|n| !n.is_empty())
            .map(percent_decode)
            .unwrap_or_else(|| "attachment".into());
        Ok(Fetched {
            content_type,
            bytes,
            file_name,
        })
    }
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn plain_http_and_special_addresses_are_refused_at_once() {
        crate::startup::install_crypto_provider();
        let fetcher = Fetcher::new(1024, false, 5);
        let err = fetcher.fetch("http://example.com/a.png", 0).await.unwrap_err();
        assert!(!err.retry && err.message.contains("https"));
        // Loopback literals only: were the guard broken, nothing else is ever connected to.
        for url in ["https://127.0.0.1:9/a.png", "https://[::ffff:127.0.0.1]:9/a.png"] {
            let err = fetcher.fetch(url, 0).await.unwrap_err();
            assert!(
                !err.retry && err.message.contains("does not connect to"),
                "{url}: {err:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_name_resolving_only_to_loopback_is_refused_at_once_not_retried() {
        crate::startup::install_crypto_provider();
        // Port 9: nothing is asked of it, the name is refused before any connection.
        let err = Fetcher::new(1024, false, 5)
            .fetch("https://localhost:9/a.png", 0)
            .await
            .unwrap_err();
        assert!(!err.retry, "{err:?}");
        assert!(err.message.contains("localhost resolves only to"), "{err:?}");
    }

    #[tokio::test]
    async fn the_last_allowed_attempt_is_final() {
        crate::startup::install_crypto_provider();
        // Loopback is allowed with plain http; port 9 (discard) refuses the connection.
        let fetcher = Fetcher::new(1024, true, 3);
        assert!(fetcher.fetch("http://127.0.0.1:9/a.png", 1).await.unwrap_err().retry);
        let err = fetcher.fetch("http://127.0.0.1:9/a.png", 2).await.unwrap_err();
        assert!(
            !err.retry && err.message.ends_with("(gave up after 3 attempts)"),
            "{err:?}"
        );
    }

    #[test]
    fn file_names_are_percent_decoded() {
        assert_eq!(percent_decode("my%20file.pdf"), "my file.pdf");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
