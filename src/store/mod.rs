//! All SQL of waghl, behind functions named for what they do. Other modules never write SQL.
//!
//! Two backends: SQLite (embedded default) and PostgreSQL. Both speak `$N` parameters,
//! `ON CONFLICT` and `RETURNING`, so a query is written once and run on whichever pool is open
//! through [`on_db!`]; a function branches on the dialect only where they really differ (the
//! row lock PostgreSQL takes around a token refresh, which SQLite's single writer does not need). Times are unix milliseconds. Secrets are sealed here, on the way
//! in, so nothing else can write one in plaintext.

mod chats;
mod claims;
mod commands;
mod console;
mod contacts;
mod credentials;
mod device_keys;
mod heads;
mod inbox;
mod inbox_writes;
mod instances;
mod intake;
mod kept;
mod legacy_device_file;
mod locations;
mod message_map;
mod messages;
mod meta;
mod outbox;
mod outbox_writes;
mod overview;
mod quotes;
mod sessions;
mod sqlite_wait;
mod url;
mod webhooks;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use crate::crypto::{CryptoError, SecretKey};

pub use claims::Queue;
pub use commands::PendingCommand;
pub use console::StateEvent;
pub use contacts::CachedContact;
pub use credentials::{Credentials, GhlTokens, TokenLock, TokenOwner};
pub use device_keys::{DeviceKeyKind, DeviceKeys, KeyRow, OnConflict};
pub use inbox::{InboxRow, InboxStart, InboxWrite, NewInbound};
pub use inbox_writes::{InboxOutcome, InboxRelayWrite};
pub use instances::{LeaseCandidate, LiveInstance, channels};
pub use intake::{IntakeRow, Queued, REPLAYED, UNPAIRED};
pub use legacy_device_file::LegacyDeviceFile;
pub use locations::{LocationRecord, LocationStatus, NewLocation, TokenSource};
pub use messages::{MessageRef, MessageRow};
pub use outbox::{NewOutbound, OutboxRow, PartRow, StatusToReport};
pub use outbox_writes::OutboxWrite;
pub use overview::QueueCounts;
pub use sessions::SessionRow;
pub use url::DatabaseUrl;

fn sqlite_pool(connections: u32) -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(connections)
        // A ping before each use is a round trip to the connection's thread (a file does not
        // hang up): it was a third of a trivial query's time.
        .test_before_acquire(false)
        .after_connect(|conn, _| Box::pin(sqlite_wait::install(conn)))
}

fn postgres_pool(connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(10))
}

/// Runs the same query body on whichever pool the store holds. The body is compiled once per
/// dialect, so every type it binds or decodes must work on both.
macro_rules! on_db {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.db {
            $crate::store::Db::Sqlite($pool) => $body,
            $crate::store::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_db;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A unique or foreign key constraint refused the write; carries the constraint's name
    /// when the database reports one.
    #[error("conflicts with an existing row ({0})")]
    Conflict(String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::RowNotFound => Self::NotFound,
            sqlx::Error::Database(db) if db.is_unique_violation() || db.is_foreign_key_violation() => {
                Self::Conflict(db.constraint().unwrap_or(db.message()).to_owned())
            }
            other => Self::Database(other),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone, Debug)]
pub(crate) enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The database and the key that seals secrets in it. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Db,
    key: Arc<SecretKey>,
    /// A group-commit writer's connection, kept between its transactions (see `kept`).
    kept: Option<kept::Slot>,
}

impl Store {
    /// Opens the pool (creating the SQLite file and its folder on first run). Does not migrate.
    pub async fn connect(url: &DatabaseUrl, key: Arc<SecretKey>) -> Result<Self> {
        let db = match url {
            DatabaseUrl::Sqlite(url) => {
                create_parent_dir(url)?;
                let options = SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // FULL: a committed inbox row survives a power cut, not only a crash.
                    .synchronous(SqliteSynchronous::Full)
                    // A batch insert keeps a statement journal (to undo that statement alone);
                    // in memory it costs no temporary file's writes. Not needed after a crash.
                    .pragma("temp_store", "memory")
                    // Each connection keeps its own page cache, filled as the database grows:
                    // at SQLite's default (2 MiB each) the daemon's memory rose with the
                    // messages handled until eight caches were full. The OS caches the file.
                    .pragma("cache_size", "-512")
                    .foreign_keys(true);
                Db::Sqlite(sqlite_pool(8).connect_with(options).await?)
            }
            DatabaseUrl::Postgres(url) => {
                let options = PgConnectOptions::from_str(url.expose())?;
                Db::Postgres(postgres_pool(16).connect_with(options).await?)
            }
        };
        Ok(Self { db, key, kept: None })
    }

    /// The same database through connections of its own (opened when first needed), for a
    /// runtime of its own — a group-commit writer's thread: a PostgreSQL connection is a socket
    /// of the runtime that opened it, woken only when that runtime polls, and the writer's
    /// connections are ones no other work waits for. Call it on that runtime, and
    /// [`Store::close`] it there when done.
    ///
    /// Its transactions run on one connection it keeps from one to the next (`kept`): one
    /// PostgreSQL backend serves every batch (alternating two took a quarter fewer webhooks),
    /// one SQLite page cache stays warm. The pool's second connection serves anything else.
    pub fn for_own_runtime(&self) -> Store {
        let db = match &self.db {
            Db::Sqlite(pool) => Db::Sqlite(sqlite_pool(2).connect_lazy_with((*pool.connect_options()).clone())),
            Db::Postgres(pool) => Db::Postgres(postgres_pool(2).connect_lazy_with((*pool.connect_options()).clone())),
        };
        Self {
            db,
            key: self.key.clone(),
            kept: Some(kept::Slot::default()),
        }
    }

    /// Applies the migrations of this dialect that are not applied yet.
    pub async fn migrate(&self) -> Result<()> {
        match &self.db {
            Db::Sqlite(pool) => sqlx::migrate!("./migrations/sqlite").run(pool).await?,
            Db::Postgres(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

    /// True when the database answers and every migration this binary knows is applied.
    pub async fn is_ready(&self) -> bool {
        let expected = match &self.db {
            Db::Sqlite(_) => sqlx::migrate!("./migrations/sqlite").iter().count(),
            Db::Postgres(_) => sqlx::migrate!("./migrations/postgres").iter().count(),
        };
        let applied: Result<i64, sqlx::Error> = on_db!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
                .fetch_one(pool)
                .await
        });
        applied.is_ok_and(|n| n as usize >= expected)
    }

    pub fn dialect(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    pub async fn close(&self) {
        self.close_kept().await;
        on_db!(self, pool => pool.close().await);
    }

    /// The daemon's secret key (sealing, and the keys derived from it).
    pub fn key(&self) -> &SecretKey {
        &self.key
    }

    /// A migrated SQLite database in `dir`, for unit tests.
    #[cfg(test)]
    pub(crate) async fn migrated_sqlite_in(dir: &std::path::Path) -> Self {
        let url = DatabaseUrl::parse(&format!("sqlite://{}/test.db", dir.display())).unwrap();
        let store = Self::connect(&url, Arc::new(SecretKey::from_bytes(&[1; 32]).unwrap()))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        store
    }

    /// Runs `sql` as it is, for unit tests that change the schema (e.g. a trigger that refuses
    /// writes).
    #[cfg(test)]
    pub(crate) async fn execute_raw(&self, sql: &'static str) {
        on_db!(self, pool => sqlx::raw_sql(sql).execute(pool).await.map(drop).unwrap());
    }
}

/// One statement for each database, where their SQL differs.
pub(super) struct Dialects {
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

impl Dialects {
    pub fn of(&self, store: &Store) -> &'static str {
        match store.db {
            Db::Sqlite(_) => self.sqlite,
            Db::Postgres(_) => self.postgres,
        }
    }
}

/// `value` as JSON text, for a statement that reads a whole list from one parameter
/// (`json_each` on SQLite, `jsonb_array_elements` on PostgreSQL), so its text is the same for
/// every length and each connection prepares it once.
pub(super) fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("a list of strings or ids always serializes")
}

/// The steps SQLite's planner chooses for `sql` on a migrated empty database (its first two
/// parameters bound to 0, any others NULL): for tests that a per-message statement searches its
/// whole key.
#[cfg(test)]
pub(crate) async fn sqlite_plan(sql: &str) -> Vec<String> {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .unwrap();
    sqlx::migrate!("./migrations/sqlite").run(&pool).await.unwrap();
    let explain = format!("EXPLAIN QUERY PLAN {sql}");
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(explain))
        .bind(0_i64)
        .bind(0_i64)
        .fetch_all(&pool)
        .await
        .unwrap();
    plan.into_iter().map(|step| step.3).collect()
}

/// Fails unless SQLite's plan for `sql` has a step containing `step` (an index search).
#[cfg(test)]
pub(crate) async fn assert_plan_has(sql: &str, step: &str) {
    let steps = sqlite_plan(sql).await;
    assert!(steps.iter().any(|s| s.contains(step)), "{steps:?}");
}

fn create_parent_dir(url: &str) -> Result<()> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path.starts_with(":memory:") {
        return Ok(());
    }
    if let Some(dir) = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
    }
    Ok(())
}
