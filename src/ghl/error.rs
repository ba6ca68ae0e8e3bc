//! What went wrong with a GHL call, phrased as what the caller should do about it.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum GhlError {
    /// waghl lacks GHL settings; nothing can be called until they are set.
    #[error("GHL is not configured: set {0}")]
    NotConfigured(String),
    /// The location has no tokens (never installed, or uninstalled).
    #[error("the location is not installed")]
    NotInstalled,
    /// GHL refused to renew the tokens: the app must be installed again.
    #[error("GHL refused the tokens: install the app again ({0})")]
    ReauthRequired(String),
    /// Still rate limited after the retries; try again after the delay.
    #[error("GHL rate limit reached; retry in {retry_after:?}")]
    RateLimited { retry_after: Duration },
    /// 5xx, a timeout or a network error that outlasted the retries: retry later.
    #[error("GHL is unavailable: {0}")]
    Unavailable(String),
    /// A call that must not be repeated blindly may have been carried out: it timed out, got a
    /// 500/502/504, or lost its answer. Retry later, after finding out whether it was.
    #[error("GHL may or may not have done it: {0}")]
    Uncertain(String),
    /// GHL answered 4xx: retrying the same request will not help.
    #[error("GHL refused the request ({status}): {message}")]
    Rejected { status: u16, message: String },
    #[error("local database error: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// The decision a caller makes from a [`GhlError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    RetryLater,
    Reauthenticate,
    GiveUp,
}

impl GhlError {
    pub fn action(&self) -> Action {
        match self {
            Self::RateLimited { .. } | Self::Unavailable(_) | Self::Uncertain(_) | Self::Store(_) => Action::RetryLater,
            Self::NotConfigured(_) | Self::NotInstalled | Self::ReauthRequired(_) => Action::Reauthenticate,
            Self::Rejected { .. } => Action::GiveUp,
        }
    }

    /// A 400/404/422 that can mean a cached contact or conversation id went stale (deleted or
    /// merged in GHL): resolve the ids again once before giving up.
    pub fn may_be_stale_reference(&self) -> bool {
        matches!(
            self,
            Self::Rejected {
                status: 400 | 404 | 422,
                ..
            }
        )
    }

    /// A short stable code for the admin API and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotConfigured(_) => "ghl_not_configured",
            Self::NotInstalled => "ghl_not_installed",
            Self::ReauthRequired(_) => "ghl_reauth_required",
            Self::RateLimited { .. } => "ghl_rate_limited",
            Self::Unavailable(_) | Self::Uncertain(_) => "ghl_unavailable",
            Self::Rejected { .. } => "ghl_rejected",
            Self::Store(_) => "store_error",
        }
    }
}
