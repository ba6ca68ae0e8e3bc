//! The GHL marketplace app and the API it talks to, as `config` reads them from the environment.

use std::time::Duration;

use crate::crypto::Secret;

/// The GHL marketplace app and the API it talks to.
#[derive(Clone, Debug)]
pub struct GhlConfig {
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub conversation_provider_id: Option<String>,
    pub api_base_url: String,
    pub marketplace_url: String,
    /// The `Version` header sent on every resource call (GHL_API.md §2).
    pub api_version: String,
    /// PEM text of the Ed25519 key that verifies `x-ghl-signature`.
    pub webhook_public_key: String,
    /// PEM text of the RSA key that verifies the legacy `x-wh-signature`.
    pub webhook_legacy_public_key: String,
    /// Shared secret accepted as `?key=` on webhook URLs that GHL delivers unsigned.
    pub webhook_key: Option<Secret>,
    /// At most this many requests per location in any window of `rate_window`.
    pub rate_limit: u32,
    pub rate_window: Duration,
    pub request_timeout: Duration,
    /// Retries of a call that failed with 5xx, 429 or a timeout, before giving up for now.
    pub max_retries: usize,
    /// First retry delay; doubles each time (with jitter) up to `retry_max_delay`.
    pub retry_base_delay: Duration,
    pub retry_max_delay: Duration,
    /// Delay between retries of a status update that hit GHL's 403 lag after a send.
    pub status_lag_delay: Duration,
    pub status_lag_retries: usize,
    /// Space-separated OAuth scopes asked for at install.
    pub scopes: String,
    /// The app's Shared Secret (marketplace app → Advanced Settings → Auth): decrypts the user
    /// context of the Custom Page `/ghl/page`, which stays off without it.
    pub app_shared_secret: Option<Secret>,
    /// The origins allowed to frame `/ghl/page` (CSP `frame-ancestors`): GHL's own, plus an
    /// agency's white-label domain when it has one.
    pub page_frame_ancestors: String,
}

impl GhlConfig {
    /// What is missing before waghl can talk to GHL, if anything.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.client_id.is_none() {
            missing.push("GHL_CLIENT_ID");
        }
        if self.client_secret.is_none() {
            missing.push("GHL_CLIENT_SECRET");
        }
        if self.conversation_provider_id.is_none() {
            missing.push("GHL_CONVERSATION_PROVIDER_ID");
        }
        missing
    }
}
