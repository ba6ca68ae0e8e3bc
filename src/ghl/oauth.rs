//! The OAuth side of GHL (GHL_API.md §1): the install URL, exchanging the callback's code,
//! refreshing tokens, and agency installs (a company token minting one token per location).

use super::types::{InstalledLocations, TokenResponse};
use super::{GhlClient, GhlError, Result};
use crate::crypto::Secret;
use crate::store::{GhlTokens, NewLocation, TokenOwner, TokenSource};
use crate::time::now_ms;

/// What an install (OAuth callback or INSTALL event) connected.
#[derive(Clone, Debug, Default)]
pub struct Installed {
    pub company_id: Option<String>,
    /// `(location id, name)` of every location that now has working tokens.
    pub locations: Vec<(String, Option<String>)>,
}

impl TokenResponse {
    fn into_tokens(self) -> GhlTokens {
        GhlTokens {
            access_token: Secret::new(self.access_token),
            refresh_token: self.refresh_token.map(Secret::new),
            expires_at: now_ms() + self.expires_in.max(0) * 1000,
        }
    }
}

impl GhlClient {
    /// GHL's location chooser, where an agency user installs the app on a sub-account.
    pub fn install_url(&self) -> Result<String> {
        self.ensure_configured()?;
        let config = self.config();
        let mut url = reqwest::Url::parse(&format!("{}/v2/oauth/chooselocation", config.marketplace_url))
            .map_err(|e| GhlError::NotConfigured(format!("GHL_MARKETPLACE_URL ({e})")))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", &self.inner.redirect_uri)
            .append_pair("client_id", config.client_id.as_deref().unwrap_or_default())
            .append_pair("scope", &config.scopes);
        Ok(url.into())
    }

    /// The marketplace app id: the part of the client id before the first `-` (GHL_API.md
    /// §1.1); webhooks for any other app id are not ours.
    pub fn app_id(&self) -> Option<&str> {
        self.config()
            .client_id
            .as_deref()
            .map(|id| id.split('-').next().unwrap_or(id))
    }

    /// `POST /oauth/token`; never retried (a repeated code or refresh token is refused).
    async fn token_endpoint(&self, operation: &'static str, fields: &[(&str, &str)]) -> Result<TokenResponse> {
        let config = self.config();
        let mut form: Vec<(&str, &str)> = vec![
            ("client_id", config.client_id.as_deref().unwrap_or_default()),
            (
                "client_secret",
                config.client_secret.as_ref().map_or("", |s| s.expose()),
            ),
        ];
        form.extend_from_slice(fields);
        let url = self.url("/oauth/token");
        self.call_once(operation, None, |http, _| http.post(&url).form(&form))
            .await
    }

    /// `grant_type=refresh_token`: a new access token and a new (rotated) refresh token.
    pub(super) async fn refresh_grant(&self, refresh_token: &Secret, user_type: &str) -> Result<GhlTokens> {
        let fields = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose()),
            ("user_type", user_type),
            ("redirect_uri", &self.inner.redirect_uri),
        ];
        let response = self
            .token_endpoint("oauth_refresh", &fields)
            .await
            .map_err(refused_means_reauth)?;
        Ok(response.into_tokens())
    }

    /// Completes an install from the OAuth callback's `code`: stores the location (or, for an
    /// agency install, the company and every location it installed) with sealed tokens.
    pub async fn install_from_code(&self, code: &str) -> Result<Installed> {
        let fields = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("user_type", "Location"),
            ("redirect_uri", &self.inner.redirect_uri),
        ];
        let response = self.token_endpoint("oauth_exchange", &fields).await?;
        if response.is_company() {
            let company_id = response
                .company_id
                .clone()
                .ok_or_else(|| rejected("a company token without a companyId"))?;
            self.inner
                .store
                .upsert_company(&company_id, &response.into_tokens())
                .await?;
            return self.install_company_locations(&company_id).await;
        }
        let location_id = response
            .location_id
            .clone()
            .ok_or_else(|| rejected("a location token without a locationId"))?;
        let company_id = response.company_id.clone();
        let tokens = response.into_tokens();
        self.inner
            .store
            .upsert_location(NewLocation {
                location_id: &location_id,
                company_id: company_id.as_deref(),
                name: None,
                tokens: &tokens,
                source: TokenSource::Oauth,
            })
            .await?;
        tracing::info!(location.id = %location_id, "location installed");
        Ok(Installed {
            company_id: None,
            locations: vec![(location_id, None)],
        })
    }

    /// For an agency install: every location the app is installed on gets its own token,
    /// minted with the company token.
    pub async fn install_company_locations(&self, company_id: &str) -> Result<Installed> {
        let mut installed = Installed {
            company_id: Some(company_id.to_owned()),
            locations: Vec::new(),
        };
        for location in self.installed_locations(company_id).await? {
            self.install_company_location(company_id, &location.0, location.1.as_deref())
                .await?;
            installed.locations.push(location);
        }
        Ok(installed)
    }

    /// Mints and stores the token of one location of an agency install.
    pub async fn install_company_location(
        &self,
        company_id: &str,
        location_id: &str,
        name: Option<&str>,
    ) -> Result<()> {
        let tokens = self.mint_location_token(company_id, location_id).await?;
        self.inner
            .store
            .upsert_location(NewLocation {
                location_id,
                company_id: Some(company_id),
                name,
                tokens: &tokens,
                source: TokenSource::Company,
            })
            .await?;
        tracing::info!(location.id = %location_id, company.id = %company_id, "location installed through its agency");
        Ok(())
    }

    /// `GET /oauth/installedLocations`, every page.
    async fn installed_locations(&self, company_id: &str) -> Result<Vec<(String, Option<String>)>> {
        const PAGE: usize = 100;
        let app_id = self.app_id().unwrap_or_default().to_owned();
        let url = self.url("/oauth/installedLocations");
        let mut all = Vec::new();
        loop {
            let skip = all.len().to_string();
            let page: InstalledLocations = self
                .call(
                    "oauth_installed_locations",
                    Some(TokenOwner::Company(company_id)),
                    |http, token| {
                        http.get(&url).bearer_auth(token).query(&[
                            ("companyId", company_id),
                            ("appId", &app_id),
                            ("isInstalled", "true"),
                            ("limit", "100"),
                            ("skip", &skip),
                        ])
                    },
                )
                .await?;
            let count = page.locations.len();
            all.extend(
                page.locations
                    .into_iter()
                    .filter(|l| l.is_installed)
                    .map(|l| (l.id, l.name)),
            );
            if count < PAGE {
                return Ok(all);
            }
        }
    }

    /// `POST /oauth/locationToken`: a location token from the agency's company token.
    pub(super) async fn mint_location_token(&self, company_id: &str, location_id: &str) -> Result<GhlTokens> {
        let url = self.url("/oauth/locationToken");
        let form = [("companyId", company_id), ("locationId", location_id)];
        let response: TokenResponse = self
            .call(
                "oauth_location_token",
                Some(TokenOwner::Company(company_id)),
                |http, token| http.post(&url).bearer_auth(token).form(&form),
            )
            .await
            .map_err(refused_means_reauth)?;
        Ok(response.into_tokens())
    }
}

fn rejected(message: &str) -> GhlError {
    GhlError::Rejected {
        status: 200,
        message: format!("GHL answered {message}"),
    }
}

/// A refresh (or mint) GHL refuses with 400/422 — refresh token invalid or already used, app
/// no longer installed — will never work again: the owner needs a new install. 401/403 mean
/// the app's own credentials are wrong: a configuration problem, not the owner's.
fn refused_means_reauth(e: GhlError) -> GhlError {
    match e {
        GhlError::Rejected {
            status: 400 | 422,
            message,
        } => GhlError::ReauthRequired(message),
        other => other,
    }
}
