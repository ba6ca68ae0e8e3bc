//! GHL OAuth tokens of locations and companies (agencies), sealed at rest, and the row lock
//! that keeps two instances from refreshing the same tokens at once.

use super::locations::{LocationStatus, TokenSource};
use super::{Db, Result, Store, StoreError, on_db};
use crate::crypto::Secret;
use crate::time::now_ms;

/// Whose tokens: a location's own, or an agency's company token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenOwner<'a> {
    Location(&'a str),
    Company(&'a str),
}

impl TokenOwner<'_> {
    pub fn id(&self) -> &str {
        match self {
            Self::Location(id) | Self::Company(id) => id,
        }
    }

    /// Binds a sealed value to its column and owner: a token copied into another row or
    /// column does not open.
    fn context(&self, column: &str) -> String {
        match self {
            Self::Location(id) => format!("locations.{column}:{id}"),
            Self::Company(id) => format!("companies.{column}:{id}"),
        }
    }

    fn select_sql(&self, for_update: bool) -> &'static str {
        match (self, for_update) {
            (Self::Location(_), false) => concat!("SELECT ", location_credentials!(), " WHERE location_id = $1"),
            (Self::Location(_), true) => {
                concat!("SELECT ", location_credentials!(), " WHERE location_id = $1 FOR UPDATE")
            }
            (Self::Company(_), false) => {
                concat!("SELECT ", company_credentials!(), " WHERE company_id = $1")
            }
            (Self::Company(_), true) => {
                concat!("SELECT ", company_credentials!(), " WHERE company_id = $1 FOR UPDATE")
            }
        }
    }

    fn update_sql(&self) -> &'static str {
        match self {
            Self::Location(_) => concat!("UPDATE locations SET ", token_update!(), " WHERE location_id = $1"),
            Self::Company(_) => concat!("UPDATE companies SET ", token_update!(), " WHERE company_id = $1"),
        }
    }
}

macro_rules! location_credentials {
    () => {
        "status, token_source, company_id, access_token, refresh_token, token_expires_at FROM locations"
    };
}
macro_rules! company_credentials {
    () => {
        "status, 'oauth' AS token_source, company_id, access_token, refresh_token, token_expires_at \
         FROM companies"
    };
}
/// The refresh token is kept when GHL answers without a new one.
macro_rules! token_update {
    () => {
        "access_token = $2, refresh_token = COALESCE($3, refresh_token), token_expires_at = $4, \
         last_error = NULL, updated_at = $5"
    };
}
use {company_credentials, location_credentials, token_update};

/// An access token and, when there is one, its refresh token.
#[derive(Clone, Debug)]
pub struct GhlTokens {
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
    /// Unix milliseconds.
    pub expires_at: i64,
}

/// What calls on behalf of an owner need: whether it may call, how its tokens renew, and
/// the tokens.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub status: LocationStatus,
    pub source: TokenSource,
    pub company_id: Option<String>,
    pub tokens: GhlTokens,
}

#[derive(sqlx::FromRow)]
struct CredentialsRow {
    status: String,
    token_source: String,
    company_id: Option<String>,
    access_token: Option<Vec<u8>>,
    refresh_token: Option<Vec<u8>>,
    token_expires_at: Option<i64>,
}

/// Held while tokens are refreshed; see [`Store::lock_credentials`]. Dropping it without
/// [`Store::finish_token_refresh`] releases the lock and changes nothing.
pub struct TokenLock {
    tx: Option<sqlx::Transaction<'static, sqlx::Postgres>>,
}

impl Store {
    pub(super) fn seal_tokens(&self, owner: TokenOwner<'_>, tokens: &GhlTokens) -> (Vec<u8>, Option<Vec<u8>>) {
        let access = self
            .key()
            .seal_str(&owner.context("access_token"), tokens.access_token.expose());
        let refresh = tokens
            .refresh_token
            .as_ref()
            .map(|t| self.key().seal_str(&owner.context("refresh_token"), t.expose()));
        (access, refresh)
    }

    /// The owner's status and tokens, unsealed; `None` when it has no tokens (never installed,
    /// or uninstalled).
    pub async fn credentials(&self, owner: TokenOwner<'_>) -> Result<Option<Credentials>> {
        let row: Option<CredentialsRow> = on_db!(self, pool => {
            sqlx::query_as(owner.select_sql(false))
                .bind(owner.id())
                .fetch_optional(pool)
                .await?
        });
        self.unseal(owner, row)
    }

    /// Reads the credentials for a token refresh, holding the row so that no other instance
    /// refreshes (and spends the rotating refresh token) at the same time. PostgreSQL: a
    /// transaction with `SELECT … FOR UPDATE`, held across the GHL call until
    /// [`Store::finish_token_refresh`] or drop. SQLite serves one instance, whose in-process
    /// single flight suffices; a read transaction held across the GHL call would fail to
    /// upgrade once anything else was written, so it takes no lock.
    pub async fn lock_credentials(&self, owner: TokenOwner<'_>) -> Result<(TokenLock, Option<Credentials>)> {
        match &self.db {
            Db::Sqlite(_) => Ok((TokenLock { tx: None }, self.credentials(owner).await?)),
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let row: Option<CredentialsRow> = sqlx::query_as(owner.select_sql(true))
                    .bind(owner.id())
                    .fetch_optional(&mut *tx)
                    .await?;
                let credentials = self.unseal(owner, row)?;
                Ok((TokenLock { tx: Some(tx) }, credentials))
            }
        }
    }

    /// Stores refreshed tokens and releases the lock. The refresh token rotates, so this is
    /// committed before the new access token is used.
    pub async fn finish_token_refresh(&self, lock: TokenLock, owner: TokenOwner<'_>, tokens: &GhlTokens) -> Result<()> {
        let (access, refresh) = self.seal_tokens(owner, tokens);
        macro_rules! update_on {
            ($executor:expr) => {
                sqlx::query(owner.update_sql())
                    .bind(owner.id())
                    .bind(&access)
                    .bind(&refresh)
                    .bind(tokens.expires_at)
                    .bind(now_ms())
                    .execute($executor)
                    .await?
                    .rows_affected()
            };
        }
        let updated = match (lock.tx, &self.db) {
            (Some(mut tx), _) => {
                let updated = update_on!(&mut *tx);
                tx.commit().await?;
                updated
            }
            (None, Db::Sqlite(pool)) => update_on!(pool),
            (None, Db::Postgres(pool)) => update_on!(pool),
        };
        if updated == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    fn unseal(&self, owner: TokenOwner<'_>, row: Option<CredentialsRow>) -> Result<Option<Credentials>> {
        let Some(CredentialsRow {
            status,
            token_source,
            company_id,
            access_token: Some(access),
            refresh_token: refresh,
            token_expires_at: Some(expires_at),
        }) = row
        else {
            return Ok(None);
        };
        let access_token = Secret::new(self.key().open_str(&owner.context("access_token"), &access)?);
        let refresh_token = refresh
            .map(|r| {
                self.key()
                    .open_str(&owner.context("refresh_token"), &r)
                    .map(Secret::new)
            })
            .transpose()?;
        Ok(Some(Credentials {
            status: LocationStatus::parse(&status)?,
            source: TokenSource::parse(&token_source)?,
            company_id,
            tokens: GhlTokens {
                access_token,
                refresh_token,
                expires_at,
            },
        }))
    }

    /// Records an agency install: the company's tokens, sealed.
    pub async fn upsert_company(&self, company_id: &str, tokens: &GhlTokens) -> Result<()> {
        let (access, refresh) = self.seal_tokens(TokenOwner::Company(company_id), tokens);
        let now = now_ms();
        on_db!(self, pool => {
            sqlx::query(
                "INSERT INTO companies (company_id, access_token, refresh_token, token_expires_at, \
                   status, last_error, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, 'installed', NULL, $5, $5) \
                 ON CONFLICT (company_id) DO UPDATE SET access_token = excluded.access_token, \
                   refresh_token = excluded.refresh_token, token_expires_at = excluded.token_expires_at, \
                   status = 'installed', last_error = NULL, updated_at = excluded.updated_at",
            )
            .bind(company_id)
            .bind(access)
            .bind(refresh)
            .bind(tokens.expires_at)
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Marks the owner (location or company) with a status and the error that caused it.
    pub async fn set_status(
        &self,
        owner: TokenOwner<'_>,
        status: LocationStatus,
        last_error: Option<&str>,
    ) -> Result<()> {
        let sql = match owner {
            TokenOwner::Location(_) => {
                "UPDATE locations SET status = $2, last_error = $3, updated_at = $4 WHERE location_id = $1"
            }
            TokenOwner::Company(_) => {
                "UPDATE companies SET status = $2, last_error = $3, updated_at = $4 WHERE company_id = $1"
            }
        };
        let updated = on_db!(self, pool => {
            sqlx::query(sql)
                .bind(owner.id())
                .bind(status.as_str())
                .bind(last_error)
                .bind(now_ms())
                .execute(pool)
                .await?
                .rows_affected()
        });
        if updated == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Uninstall: the tokens are deleted, the status says so, the message history stays.
    pub async fn uninstall(&self, owner: TokenOwner<'_>) -> Result<()> {
        let sql = match owner {
            TokenOwner::Location(_) => {
                "UPDATE locations SET status = 'uninstalled', access_token = NULL, refresh_token = NULL, \
                   token_expires_at = NULL, updated_at = $2 WHERE location_id = $1"
            }
            TokenOwner::Company(_) => {
                "UPDATE companies SET status = 'uninstalled', access_token = NULL, refresh_token = NULL, \
                   token_expires_at = NULL, updated_at = $2 WHERE company_id = $1"
            }
        };
        on_db!(self, pool => {
            sqlx::query(sql).bind(owner.id()).bind(now_ms()).execute(pool).await?;
        });
        Ok(())
    }
}
