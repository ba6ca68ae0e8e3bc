//! GHL locations and their OAuth tokens (sealed at rest).

use serde::Serialize;

use super::credentials::{GhlTokens, TokenOwner};
use super::{Result, Store, StoreError, on_db};
use crate::time::now_ms;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LocationStatus {
    Installed,
    /// GHL refused a token refresh: someone must install the app again.
    ReauthRequired,
    Uninstalled,
}

impl LocationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Installed => "installed",
            Self::ReauthRequired => "reauth_required",
            Self::Uninstalled => "uninstalled",
        }
    }

    pub(super) fn parse(text: &str) -> Result<Self> {
        match text {
            "installed" => Ok(Self::Installed),
            "reauth_required" => Ok(Self::ReauthRequired),
            "uninstalled" => Ok(Self::Uninstalled),
            other => Err(corrupt("locations.status", other)),
        }
    }
}

/// How a location's tokens are renewed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    /// The location's own OAuth install: renewed with its rotating refresh token.
    Oauth,
    /// Minted from the agency's company token: renewed by minting again.
    Company,
}

impl TokenSource {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Oauth => "oauth",
            Self::Company => "company",
        }
    }

    pub(super) fn parse(text: &str) -> Result<Self> {
        match text {
            "oauth" => Ok(Self::Oauth),
            "company" => Ok(Self::Company),
            other => Err(corrupt("locations.token_source", other)),
        }
    }
}

pub(super) fn corrupt(column: &str, value: &str) -> StoreError {
    StoreError::Database(sqlx::Error::Decode(
        format!("unexpected value {value:?} in {column}").into(),
    ))
}

pub struct NewLocation<'a> {
    pub location_id: &'a str,
    pub company_id: Option<&'a str>,
    pub name: Option<&'a str>,
    pub tokens: &'a GhlTokens,
    pub source: TokenSource,
}

/// A location as the admin API shows it (no tokens).
#[derive(Clone, Debug)]
pub struct LocationRecord {
    pub location_id: String,
    pub company_id: Option<String>,
    pub name: Option<String>,
    pub status: LocationStatus,
    pub token_source: TokenSource,
    pub token_expires_at: Option<i64>,
    pub last_error: Option<String>,
    pub installed_at: i64,
    pub updated_at: i64,
}

#[derive(sqlx::FromRow)]
struct LocationRow {
    location_id: String,
    company_id: Option<String>,
    name: Option<String>,
    status: String,
    token_source: String,
    token_expires_at: Option<i64>,
    last_error: Option<String>,
    installed_at: i64,
    updated_at: i64,
}

impl TryFrom<LocationRow> for LocationRecord {
    type Error = StoreError;
    fn try_from(row: LocationRow) -> Result<Self> {
        Ok(Self {
            status: LocationStatus::parse(&row.status)?,
            token_source: TokenSource::parse(&row.token_source)?,
            location_id: row.location_id,
            company_id: row.company_id,
            name: row.name,
            token_expires_at: row.token_expires_at,
            last_error: row.last_error,
            installed_at: row.installed_at,
            updated_at: row.updated_at,
        })
    }
}

/// The columns of [`LocationRow`], as a literal so queries stay `&'static str` (sqlx refuses
/// SQL built at run time).
macro_rules! location_columns {
    () => {
        "location_id, company_id, name, status, token_source, token_expires_at, last_error, \
         installed_at, updated_at"
    };
}

impl Store {
    /// Records an install (or a re-install): the location is `installed` with these tokens and
    /// no error. Name and company are kept when the new install doesn't know them.
    pub async fn upsert_location(&self, new: NewLocation<'_>) -> Result<()> {
        let id = new.location_id;
        let (access, refresh) = self.seal_tokens(TokenOwner::Location(id), new.tokens);
        let now = now_ms();
        on_db!(self, pool => {
            sqlx::query(
                "INSERT INTO locations (location_id, company_id, name, status, access_token, \
                   refresh_token, token_expires_at, token_source, last_error, installed_at, updated_at) \
                 VALUES ($1, $2, $3, 'installed', $4, $5, $6, $7, NULL, $8, $8) \
                 ON CONFLICT (location_id) DO UPDATE SET \
                   company_id = COALESCE(excluded.company_id, locations.company_id), \
                   name = COALESCE(excluded.name, locations.name), \
                   status = 'installed', access_token = excluded.access_token, \
                   refresh_token = excluded.refresh_token, \
                   token_expires_at = excluded.token_expires_at, \
                   token_source = excluded.token_source, last_error = NULL, \
                   installed_at = excluded.installed_at, updated_at = excluded.updated_at",
            )
            .bind(id)
            .bind(new.company_id)
            .bind(new.name)
            .bind(access)
            .bind(refresh)
            .bind(new.tokens.expires_at)
            .bind(new.source.as_str())
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    pub async fn location(&self, location_id: &str) -> Result<Option<LocationRecord>> {
        let row: Option<LocationRow> = on_db!(self, pool => {
            sqlx::query_as(concat!("SELECT ", location_columns!(), " FROM locations WHERE location_id = $1"))
                .bind(location_id)
                .fetch_optional(pool)
                .await?
        });
        row.map(LocationRecord::try_from).transpose()
    }

    pub async fn locations(&self) -> Result<Vec<LocationRecord>> {
        let rows: Vec<LocationRow> = on_db!(self, pool => {
            sqlx::query_as(concat!("SELECT ", location_columns!(), " FROM locations ORDER BY location_id"))
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(LocationRecord::try_from).collect()
    }

    /// Locations installed through an agency (any status).
    pub async fn company_location_ids(&self, company_id: &str) -> Result<Vec<String>> {
        Ok(on_db!(self, pool => {
            sqlx::query_scalar("SELECT location_id FROM locations WHERE company_id = $1 ORDER BY location_id")
                .bind(company_id)
                .fetch_all(pool)
                .await?
        }))
    }
}
