//! Downloads the attachments of outbound messages from the URLs GHL gives: https only (plain
//! http only when a setting allows it, for tests), a size cap, and no redirect to a private or
//! loopback address — GHL's payload must not make waghl reach into its own network.

use std::net::IpAddr;
use std::time::Duration;

use crate::domain::Fetched;

pub struct Fetcher {
    http: reqwest::Client,
    max_bytes: usize,
    allow_http: bool,
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

/// A host that is an IP literal in a private, loopback or link-local range.
fn is_private(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Ipv4(ip) => is_private_ip(IpAddr::V4(*ip)),
        url::Host::Ipv6(ip) => is_private_ip(IpAddr::V6(*ip)),
        url::Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
    }
}

/// Addresses an attachment URL must not reach: private, loopback, link-local, carrier-grade NAT,
/// unspecified, and IPv4 mapped into IPv6.
fn is_private_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            ip.is_private()
                || ip.is_loopback()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.octets()[0] == 0
                || (ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(ip) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || (ip.segments()[0] & 0xfe00) == 0xfc00
                || (ip.segments()[0] & 0xffc0) == 0xfe80
                || ip.to_ipv4_mapped().is_some_and(|v4| is_private_ip(IpAddr::V4(v4)))
        }
    }
}

/// Resolves names like the system does, but never to an address [`is_private_ip`] refuses: a
/// public name pointing into waghl's network is refused, at the first request and at every
/// redirect.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| !is_private_ip(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves only to private addresses").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl Fetcher {
    pub fn new(max_bytes: usize, allow_http: bool) -> Self {
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            let url = attempt.url();
            let scheme_ok = url.scheme() == "https" || (allow_http && url.scheme() == "http");
            let private = url.host().is_some_and(|h| is_private(&h)) && !allow_http;
            if attempt.previous().len() >= 5 || !scheme_ok || private {
                attempt.stop()
            } else {
                attempt.follow()
            }
        });
        let mut builder = reqwest::Client::builder();
        if !allow_http {
            builder = builder.dns_resolver(std::sync::Arc::new(PublicOnly));
        }
        let http = builder
            .redirect(policy)
            .timeout(Duration::from_secs(120))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .expect("the HTTP client builds");
        Self {
            http,
            max_bytes,
            allow_http,
        }
    }

    pub async fn fetch(&self, url: &str) -> Result<Fetched, FetchError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| refuse(format!("attachment URL {url:?} is not a URL")))?;
        let scheme_ok = parsed.scheme() == "https" || (self.allow_http && parsed.scheme() == "http");
        if !scheme_ok {
            return Err(refuse("attachment URLs must be https".into()));
        }
        if !self.allow_http && parsed.host().is_some_and(|h| is_private(&h)) {
            return Err(refuse("attachment URL points into a private network".into()));
        }
        let mut response = self.http.get(parsed.clone()).send().await.map_err(|e| FetchError {
            retry: true,
            message: format!("attachment download failed: {}", e.without_url()),
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
    async fn plain_http_and_private_addresses_are_refused() {
        crate::startup::install_crypto_provider();
        let fetcher = Fetcher::new(1024, false);
        let err = fetcher.fetch("http://example.com/a.png").await.unwrap_err();
        assert!(!err.retry && err.message.contains("https"));
        let err = fetcher.fetch("https://127.0.0.1/a.png").await.unwrap_err();
        assert!(err.message.contains("private"));
        let err = fetcher.fetch("https://10.1.2.3/a.png").await.unwrap_err();
        assert!(err.message.contains("private"));
    }

    #[tokio::test]
    async fn names_that_resolve_only_to_private_addresses_are_refused() {
        use reqwest::dns::Resolve as _;
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let err = PublicOnly.resolve(name).await.err().expect("localhost is private");
        assert!(err.to_string().contains("private"), "{err}");
    }

    #[test]
    fn private_ranges_are_recognised() {
        for ip in [
            "10.0.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.1.2.3",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private_ip(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "100.128.0.1", "2606:4700::1111"] {
            assert!(!is_private_ip(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn file_names_are_percent_decoded() {
        assert_eq!(percent_decode("my%20file.pdf"), "my file.pdf");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
