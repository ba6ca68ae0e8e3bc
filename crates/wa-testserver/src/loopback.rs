//! The HTTP client of the in-process clients. whatsapp-rust builds every media URL as
//! `https://<host from media_conn>/…`; this client sends each request to the same path on the
//! test server's plain-http address instead, so no request can leave the machine (the web
//! version fetch of `web.whatsapp.com` would land here too, and fail: the clients pin their
//! version instead).

use anyhow::Result;
use whatsapp_rust::http::{HttpClient, HttpRequest, HttpResponse};
use whatsapp_rust_ureq_http_client::UreqHttpClient;

#[derive(Clone, Debug)]
pub struct LoopbackHttpClient {
    base: String,
    inner: UreqHttpClient,
}

impl LoopbackHttpClient {
    /// `base` is `http://127.0.0.1:PORT`.
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into().trim_end_matches('/').to_owned(),
            inner: UreqHttpClient::new(),
        }
    }

    /// `scheme://host[:port]/path?query` → `base/path?query`.
    pub fn rewrite(&self, url: &str) -> String {
        let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
        let path = after_scheme.find('/').map_or("/", |i| &after_scheme[i..]);
        format!("{}{path}", self.base)
    }
}

#[whatsapp_rust::async_trait]
impl HttpClient for LoopbackHttpClient {
    async fn execute(&self, mut request: HttpRequest) -> Result<HttpResponse> {
        request.url = self.rewrite(&request.url);
        self.inner.execute(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_url_goes_to_the_test_server() {
        let client = LoopbackHttpClient::new("http://127.0.0.1:4000/");
        assert_eq!(
            client.rewrite("https://mmg.whatsapp.net/mms/image/abc?auth=x&token=y"),
            "http://127.0.0.1:4000/mms/image/abc?auth=x&token=y"
        );
        assert_eq!(client.rewrite("https://web.whatsapp.com"), "http://127.0.0.1:4000/");
    }
}
