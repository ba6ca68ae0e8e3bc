//! Access tokens of locations and companies: used while fresh, refreshed ahead of expiry (or
//! after a 401), one refresh at a time per owner. Refresh tokens rotate, so two concurrent
//! refreshes would spend the same refresh token and lock the owner out; callers that arrive
//! during a refresh wait for it and reuse its result.

use std::sync::Arc;

use dashmap::DashMap;

use super::{Action, GhlClient, GhlError, Result};
use crate::crypto::Secret;
use crate::store::{Credentials, GhlTokens, LocationStatus, TokenOwner, TokenSource};
use crate::time::now_ms;

/// Refresh when less than this remains (GHL_API.md §1.3: clients use 30 s to 5 min).
const REFRESH_MARGIN_MS: i64 = 5 * 60 * 1000;

#[derive(Default)]
pub(super) struct TokenManager {
    /// One async mutex per owner, held for the whole refresh (including the GHL call).
    /// Entries are never removed: one small mutex per installed location or company.
    refreshing: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

impl TokenManager {
    fn lock_for(&self, owner: TokenOwner<'_>) -> Arc<tokio::sync::Mutex<()>> {
        let key = match owner {
            TokenOwner::Location(id) => format!("location:{id}"),
            TokenOwner::Company(id) => format!("company:{id}"),
        };
        self.refreshing.entry(key).or_default().clone()
    }
}

fn is_fresh(tokens: &GhlTokens) -> bool {
    tokens.expires_at - now_ms() > REFRESH_MARGIN_MS
}

/// Calls are allowed only for an installed owner.
fn usable(credentials: Option<Credentials>) -> Result<Credentials> {
    let credentials = credentials.ok_or(GhlError::NotInstalled)?;
    match credentials.status {
        LocationStatus::Installed => Ok(credentials),
        LocationStatus::ReauthRequired => Err(GhlError::ReauthRequired("an earlier refresh was refused".into())),
        LocationStatus::Uninstalled => Err(GhlError::NotInstalled),
    }
}

impl GhlClient {
    /// A token to call GHL with for this owner, refreshed first when it is about to expire.
    pub(super) async fn token(&self, owner: TokenOwner<'_>) -> Result<Secret> {
        let credentials = usable(self.inner.store.credentials(owner).await?)?;
        if is_fresh(&credentials.tokens) {
            return Ok(credentials.tokens.access_token);
        }
        self.refresh(owner, &credentials.tokens.access_token).await
    }

    /// Replaces `stale` (expiring, or refused with 401) unless another caller already did.
    pub(super) async fn refresh(&self, owner: TokenOwner<'_>, stale: &Secret) -> Result<Secret> {
        let lock = self.inner.tokens.lock_for(owner);
        let _single_flight = lock.lock().await;
        let (row_lock, credentials) = self.inner.store.lock_credentials(owner).await?;
        let credentials = usable(credentials)?;
        // Re-read under the lock: a refresh that finished while we waited (here, or on another
        // instance) already produced a fresh token.
        if credentials.tokens.access_token != *stale && is_fresh(&credentials.tokens) {
            return Ok(credentials.tokens.access_token);
        }
        // Boxed: renewing a location minted from a company may first renew the company's token.
        let renewed = Box::pin(self.renew(owner, &credentials)).await;
        self.inner.metrics.count_token_refresh(match &renewed {
            Ok(_) => "ok",
            Err(GhlError::ReauthRequired(_)) => "refused",
            Err(e) if e.action() == Action::RetryLater => "unavailable",
            Err(_) => "failed",
        });
        match renewed {
            Ok(tokens) => {
                self.inner.store.finish_token_refresh(row_lock, owner, &tokens).await?;
                tracing::info!(owner = ?owner, "GHL tokens refreshed");
                Ok(tokens.access_token)
            }
            Err(GhlError::ReauthRequired(reason)) => {
                drop(row_lock);
                self.inner
                    .store
                    .set_status(owner, LocationStatus::ReauthRequired, Some(&reason))
                    .await?;
                tracing::warn!(owner = ?owner, error = %reason, "GHL refused to renew the tokens; install the app again");
                Err(GhlError::ReauthRequired(reason))
            }
            Err(other) => Err(other),
        }
    }

    /// New tokens: the rotating refresh token for OAuth installs; a new mint from the agency's
    /// company token for locations installed through an agency.
    async fn renew(&self, owner: TokenOwner<'_>, credentials: &Credentials) -> Result<GhlTokens> {
        match (owner, credentials.source) {
            (TokenOwner::Location(location_id), TokenSource::Company) => {
                let company_id = credentials
                    .company_id
                    .as_deref()
                    .ok_or_else(|| GhlError::ReauthRequired("the location has no company".into()))?;
                self.mint_location_token(company_id, location_id).await
            }
            (_, TokenSource::Oauth) => {
                let refresh_token = credentials
                    .tokens
                    .refresh_token
                    .as_ref()
                    .ok_or_else(|| GhlError::ReauthRequired("no refresh token is stored".into()))?;
                let user_type = match owner {
                    TokenOwner::Location(_) => "Location",
                    TokenOwner::Company(_) => "Company",
                };
                self.refresh_grant(refresh_token, user_type).await
            }
            (TokenOwner::Company(_), TokenSource::Company) => {
                unreachable!("companies always hold OAuth tokens")
            }
        }
    }
}
