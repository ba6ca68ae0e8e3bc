//! The WhatsApp device keys of each location: the device row (`wa_devices`) and the keyed
//! rows of everything else the device keeps (`wa_device_keys`). whatsapp-rust reaches them
//! through the adapter in `wa/whatsapp/device_store`, which owns what the bytes mean; here
//! they are opaque values, sealed on the way in. Each value is bound to its location, kind,
//! scope and key, so a value copied into another row (or another location) does not open.
//!
//! A location is never served by two clients at once (the session lease), so these functions
//! need no locking of their own. Every write is one statement, or one transaction when a batch
//! needs several, and never reads before it writes inside a transaction (SQLite would have to
//! upgrade a read snapshot, which fails under a concurrent writer).

mod writes;

use std::fmt;

use sqlx::QueryBuilder;

use super::{Result, Store, on_db};
use crate::time::now_ms;

pub use writes::OnConflict;

/// Keys per `IN (…)` list, well below SQLite's limit on parameters.
const KEYS_PER_STATEMENT: usize = 500;

/// The row of a key in whichever scope holds it (the first, if several do).
const IN_ANY_SCOPE: &str = "SELECT scope, key, value, num, flag, ts FROM wa_device_keys \
     WHERE location_id = $1 AND kind = $2 AND key = $3 ORDER BY scope LIMIT 1";

/// What a row of `wa_device_keys` holds. The numbers are stored: never renumber one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeviceKeyKind {
    Identity = 1,
    Session = 2,
    PreKey = 3,
    SignedPreKey = 4,
    SenderKey = 5,
    SyncKey = 6,
    AppStateVersion = 7,
    MutationMac = 8,
    LidMapping = 9,
    BaseKey = 10,
    DeviceList = 11,
    TcToken = 12,
    SentMessage = 13,
    MsgSecret = 14,
    PendingInbound = 15,
    SenderKeyDevice = 16,
    GroupMetadata = 17,
}

impl DeviceKeyKind {
    fn code(self) -> i16 {
        self as i16
    }
}

/// One row: where it sits and what it holds. The value is plaintext here and sealed in the
/// table; `num`, `flag` and `ts` stay plain because queries select and merge on them.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub kind: DeviceKeyKind,
    /// '' for kinds that are not grouped.
    pub scope: String,
    pub key: String,
    pub value: Vec<u8>,
    pub num: Option<i64>,
    pub flag: bool,
    /// Unix seconds (whatsapp-rust's unit); expiry deletes compare it.
    pub ts: Option<i64>,
}

impl KeyRow {
    pub fn new(
        kind: DeviceKeyKind,
        scope: impl Into<String>,
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            kind,
            scope: scope.into(),
            key: key.into(),
            value: value.into(),
            num: None,
            flag: false,
            ts: None,
        }
    }

    pub fn num(mut self, num: i64) -> Self {
        self.num = Some(num);
        self
    }

    pub fn flag(mut self, flag: bool) -> Self {
        self.flag = flag;
        self
    }

    pub fn ts(mut self, ts: Option<i64>) -> Self {
        self.ts = ts;
        self
    }
}

/// Never prints the value: it is key material.
impl fmt::Debug for KeyRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRow")
            .field("kind", &self.kind)
            .field("scope", &self.scope)
            .field("key", &self.key)
            .field("value", &format_args!("[{} bytes]", self.value.len()))
            .field("num", &self.num)
            .field("flag", &self.flag)
            .field("ts", &self.ts)
            .finish()
    }
}

#[derive(sqlx::FromRow)]
struct StoredRow {
    scope: String,
    key: String,
    value: Vec<u8>,
    num: Option<i64>,
    flag: bool,
    ts: Option<i64>,
}

const SELECT_ROWS: &str = "SELECT scope, key, value, num, flag, ts FROM wa_device_keys \
     WHERE location_id = $1 AND kind = $2";

/// One location's device keys. Cheap to clone.
#[derive(Clone)]
pub struct DeviceKeys {
    store: Store,
    location: String,
}

impl Store {
    /// The WhatsApp device keys of `location`.
    pub fn device_keys(&self, location: &str) -> DeviceKeys {
        DeviceKeys {
            store: self.clone(),
            location: location.to_owned(),
        }
    }
}

/// Runs `$body` in one transaction (`$tx`) on whichever pool the store holds.
macro_rules! in_tx {
    ($keys:expr, $tx:ident => $body:expr) => {
        match &$keys.store.db {
            $crate::store::Db::Sqlite(pool) => {
                let mut $tx = pool.begin().await?;
                let out = $body;
                $tx.commit().await?;
                out
            }
            $crate::store::Db::Postgres(pool) => {
                let mut $tx = pool.begin().await?;
                let out = $body;
                $tx.commit().await?;
                out
            }
        }
    };
}
use in_tx;

impl DeviceKeys {
    pub fn location(&self) -> &str {
        &self.location
    }

    /// What a sealed value is bound to. Lengths keep the parts from running into each other.
    fn context(&self, kind: DeviceKeyKind, scope: &str, key: &str) -> String {
        format!(
            "wa_device_keys/{}/{}:{}/{}:{}/{key}",
            kind.code(),
            self.location.len(),
            self.location,
            scope.len(),
            scope
        )
    }

    fn device_context(&self) -> String {
        format!("wa_devices.device:{}", self.location)
    }

    fn seal(&self, row: &KeyRow) -> Vec<u8> {
        self.store
            .key()
            .seal(&self.context(row.kind, &row.scope, &row.key), &row.value)
    }

    fn open(&self, kind: DeviceKeyKind, row: StoredRow) -> Result<KeyRow> {
        let value = self
            .store
            .key()
            .open(&self.context(kind, &row.scope, &row.key), &row.value)?;
        Ok(KeyRow {
            kind,
            scope: row.scope,
            key: row.key,
            value,
            num: row.num,
            flag: row.flag,
            ts: row.ts,
        })
    }

    fn open_all(&self, kind: DeviceKeyKind, rows: Vec<StoredRow>) -> Result<Vec<KeyRow>> {
        rows.into_iter().map(|row| self.open(kind, row)).collect()
    }

    /// The device (whatsapp-rust's `Device`, serialised by the adapter), unsealed.
    pub async fn load_device(&self) -> Result<Option<Vec<u8>>> {
        let sealed: Option<Vec<u8>> = on_db!(self.store, pool => {
            sqlx::query_scalar("SELECT device FROM wa_devices WHERE location_id = $1")
                .bind(&self.location)
                .fetch_optional(pool)
                .await?
        });
        Ok(sealed
            .map(|sealed| self.store.key().open(&self.device_context(), &sealed))
            .transpose()?)
    }

    pub async fn has_device(&self) -> Result<bool> {
        let found: Option<i32> = on_db!(self.store, pool => {
            sqlx::query_scalar("SELECT 1 FROM wa_devices WHERE location_id = $1")
                .bind(&self.location)
                .fetch_optional(pool)
                .await?
        });
        Ok(found.is_some())
    }

    pub async fn save_device(&self, device: &[u8]) -> Result<()> {
        let sealed = self.store.key().seal(&self.device_context(), device);
        on_db!(self.store, pool => {
            sqlx::query(
                "INSERT INTO wa_devices (location_id, device, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (location_id) DO UPDATE SET device = excluded.device, updated_at = excluded.updated_at",
            )
            .bind(&self.location)
            .bind(sealed)
            .bind(now_ms())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Stores `device` unless the location has one already; true when it was stored.
    pub async fn create_device(&self, device: &[u8]) -> Result<bool> {
        let sealed = self.store.key().seal(&self.device_context(), device);
        let created = on_db!(self.store, pool => {
            sqlx::query(
                "INSERT INTO wa_devices (location_id, device, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (location_id) DO NOTHING",
            )
            .bind(&self.location)
            .bind(sealed)
            .bind(now_ms())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(created == 1)
    }

    pub async fn get(&self, kind: DeviceKeyKind, scope: &str, key: &str) -> Result<Option<KeyRow>> {
        let row: Option<StoredRow> = on_db!(self.store, pool => {
            sqlx::query_as(concat!(
                "SELECT scope, key, value, num, flag, ts FROM wa_device_keys ",
                "WHERE location_id = $1 AND kind = $2 AND scope = $3 AND key = $4"
            ))
            .bind(&self.location)
            .bind(kind.code())
            .bind(scope)
            .bind(key)
            .fetch_optional(pool)
            .await?
        });
        row.map(|row| self.open(kind, row)).transpose()
    }

    /// The rows of `keys` in `scope` that exist, in no particular order.
    pub async fn get_many(&self, kind: DeviceKeyKind, scope: &str, keys: &[&str]) -> Result<Vec<KeyRow>> {
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(KEYS_PER_STATEMENT) {
            let rows: Vec<StoredRow> = on_db!(self.store, pool => {
                let mut query =
                    QueryBuilder::new("SELECT scope, key, value, num, flag, ts FROM wa_device_keys WHERE location_id = ");
                query.push_bind(&self.location);
                query.push(" AND kind = ").push_bind(kind.code());
                query.push(" AND scope = ").push_bind(scope);
                query.push(" AND key IN (");
                let mut list = query.separated(", ");
                for key in chunk {
                    list.push_bind(*key);
                }
                query.push(")");
                query.build_query_as().fetch_all(pool).await?
            });
            found.extend(self.open_all(kind, rows)?);
        }
        Ok(found)
    }

    /// Every row of `kind`, or of `kind` in `scope`.
    pub async fn list(&self, kind: DeviceKeyKind, scope: Option<&str>) -> Result<Vec<KeyRow>> {
        let rows: Vec<StoredRow> = on_db!(self.store, pool => {
            match scope {
                Some(scope) => {
                    sqlx::query_as(concat!(
                        "SELECT scope, key, value, num, flag, ts FROM wa_device_keys ",
                        "WHERE location_id = $1 AND kind = $2 AND scope = $3"
                    ))
                    .bind(&self.location)
                    .bind(kind.code())
                    .bind(scope)
                    .fetch_all(pool)
                    .await?
                }
                None => {
                    sqlx::query_as(SELECT_ROWS)
                        .bind(&self.location)
                        .bind(kind.code())
                        .fetch_all(pool)
                        .await?
                }
            }
        });
        self.open_all(kind, rows)
    }

    /// The row of `key` in whichever scope holds it (the first, if several do).
    pub async fn get_in_any_scope(&self, kind: DeviceKeyKind, key: &str) -> Result<Option<KeyRow>> {
        let row: Option<StoredRow> = on_db!(self.store, pool => {
            sqlx::query_as(IN_ANY_SCOPE)
            .bind(&self.location)
            .bind(kind.code())
            .bind(key)
            .fetch_optional(pool)
            .await?
        });
        row.map(|row| self.open(kind, row)).transpose()
    }

    /// The row of `scope` with the latest `ts`.
    pub async fn latest_in_scope(&self, kind: DeviceKeyKind, scope: &str) -> Result<Option<KeyRow>> {
        let row: Option<StoredRow> = on_db!(self.store, pool => {
            sqlx::query_as(concat!(
                "SELECT scope, key, value, num, flag, ts FROM wa_device_keys ",
                "WHERE location_id = $1 AND kind = $2 AND scope = $3 ORDER BY ts DESC NULLS LAST, key LIMIT 1"
            ))
            .bind(&self.location)
            .bind(kind.code())
            .bind(scope)
            .fetch_optional(pool)
            .await?
        });
        row.map(|row| self.open(kind, row)).transpose()
    }

    /// The keys of every row of `kind`, without opening the values.
    pub async fn keys(&self, kind: DeviceKeyKind) -> Result<Vec<String>> {
        Ok(on_db!(self.store, pool => {
            sqlx::query_scalar("SELECT key FROM wa_device_keys WHERE location_id = $1 AND kind = $2 ORDER BY key")
                .bind(&self.location)
                .bind(kind.code())
                .fetch_all(pool)
                .await?
        }))
    }

    /// Whether the row exists, without opening it.
    pub async fn contains(&self, kind: DeviceKeyKind, scope: &str, key: &str) -> Result<bool> {
        let found: Option<i32> = on_db!(self.store, pool => {
            sqlx::query_scalar(
                "SELECT 1 FROM wa_device_keys WHERE location_id = $1 AND kind = $2 AND scope = $3 AND key = $4",
            )
            .bind(&self.location)
            .bind(kind.code())
            .bind(scope)
            .bind(key)
            .fetch_optional(pool)
            .await?
        });
        Ok(found.is_some())
    }

    /// Whether a row of one of `kinds` (unscoped) has a key starting with one of `prefixes`.
    /// Prefixes become key ranges, which both dialects answer from the index in byte order.
    pub async fn any_key_starting_with(&self, kinds: &[DeviceKeyKind], prefixes: &[&str]) -> Result<bool> {
        let ranges: Vec<(&str, String)> = prefixes
            .iter()
            .filter_map(|p| prefix_end(p).map(|end| (*p, end)))
            .collect();
        if kinds.is_empty() || ranges.is_empty() {
            return Ok(false);
        }
        let found: Option<i32> = on_db!(self.store, pool => {
            let mut query = QueryBuilder::new("SELECT 1 FROM wa_device_keys WHERE location_id = ");
            query.push_bind(&self.location);
            query.push(" AND scope = '' AND kind IN (");
            let mut list = query.separated(", ");
            for kind in kinds {
                list.push_bind(kind.code());
            }
            query.push(") AND (");
            for (i, (start, end)) in ranges.iter().enumerate() {
                if i > 0 {
                    query.push(" OR ");
                }
                query.push("(key >= ").push_bind(*start).push(" AND key < ").push_bind(end.as_str()).push(")");
            }
            query.push(") LIMIT 1");
            query.build_query_scalar().fetch_optional(pool).await?
        });
        Ok(found.is_some())
    }

    /// The largest `num` of `kind`, `None` when it has no rows.
    pub async fn max_num(&self, kind: DeviceKeyKind) -> Result<Option<i64>> {
        Ok(on_db!(self.store, pool => {
            sqlx::query_scalar("SELECT MAX(num) FROM wa_device_keys WHERE location_id = $1 AND kind = $2")
                .bind(&self.location)
                .bind(kind.code())
                .fetch_one(pool)
                .await?
        }))
    }

    /// Deletes the location's device and every row: the next client pairs anew.
    pub async fn wipe(&self) -> Result<()> {
        in_tx!(self, tx => {
            sqlx::query("DELETE FROM wa_device_keys WHERE location_id = $1")
                .bind(&self.location)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM wa_devices WHERE location_id = $1")
                .bind(&self.location)
                .execute(&mut *tx)
                .await?;
        });
        Ok(())
    }
}

/// The first string after every string that starts with `prefix` (its last character
/// incremented), so `key >= prefix AND key < end` selects exactly those; `None` when empty.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    let last = chars.pop()?;
    chars.push(char::from_u32(last as u32 + 1)?);
    Some(chars.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key looked up in any scope is searched by (location, kind, key): without the scope in
    /// the index SQLite read every key of the kind in order of the primary key, to avoid a sort.
    #[tokio::test]
    async fn a_key_in_any_scope_is_searched_not_read_with_every_key_of_its_kind() {
        crate::store::assert_plan_has(
            IN_ANY_SCOPE,
            "USING INDEX wa_device_keys_by_key (location_id=? AND kind=? AND key=?)",
        )
        .await;
    }

    #[test]
    fn a_prefix_range_holds_exactly_the_keys_that_start_with_it() {
        let end = prefix_end("1555:").unwrap();
        assert_eq!(end, "1555;");
        for inside in ["1555:", "1555:2@lid", "1555:99@s.whatsapp.net"] {
            assert!(inside >= "1555:" && inside < end.as_str(), "{inside}");
        }
        for outside in ["1555@s.whatsapp.net", "15551:2@lid", "1555", "1556:1@lid"] {
            assert!(!(outside >= "1555:" && outside < end.as_str()), "{outside}");
        }
        assert_eq!(prefix_end(""), None);
    }

    /// A sealed value moved to another location, kind, scope or key by someone with write
    /// access to the database does not open there.
    #[tokio::test]
    async fn a_value_copied_to_another_row_does_not_open() {
        use std::sync::Arc;

        use sqlx::Connection as _;

        use crate::crypto::SecretKey;
        use crate::store::{DatabaseUrl, StoreError};

        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/w.db", dir.path().display());
        let key = Arc::new(SecretKey::from_bytes(&[9; 32]).unwrap());
        let store = Store::connect(&DatabaseUrl::parse(&url).unwrap(), key).await.unwrap();
        store.migrate().await.unwrap();
        let loc1 = store.device_keys("loc1");
        loc1.put(
            KeyRow::new(DeviceKeyKind::Session, "", "a@lid", b"record".to_vec()),
            OnConflict::Replace,
        )
        .await
        .unwrap();
        loc1.save_device(b"device").await.unwrap();
        assert_eq!(
            loc1.get(DeviceKeyKind::Session, "", "a@lid")
                .await
                .unwrap()
                .unwrap()
                .value,
            b"record"
        );

        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        for (location, kind, scope, key) in [
            ("loc2", 2, "", "a@lid"),
            ("loc1", 1, "", "a@lid"),
            ("loc1", 2, "g", "a@lid"),
            ("loc1", 2, "", "b@lid"),
        ] {
            sqlx::query(
                "INSERT INTO wa_device_keys (location_id, kind, scope, key, value, flag) \
                 SELECT $1, $2, $3, $4, value, flag FROM wa_device_keys WHERE location_id = 'loc1' AND kind = 2 AND key = 'a@lid' AND scope = ''",
            )
            .bind(location)
            .bind(kind)
            .bind(scope)
            .bind(key)
            .execute(&mut conn)
            .await
            .unwrap();
        }
        sqlx::query(
            "INSERT INTO wa_devices (location_id, device, updated_at) SELECT 'loc2', device, 0 FROM wa_devices",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        let refused = |r: Result<Option<KeyRow>>| matches!(r, Err(StoreError::Crypto(_)));
        let loc2 = store.device_keys("loc2");
        assert!(
            refused(loc2.get(DeviceKeyKind::Session, "", "a@lid").await),
            "another location"
        );
        assert!(
            refused(loc1.get(DeviceKeyKind::Identity, "", "a@lid").await),
            "another kind"
        );
        assert!(
            refused(loc1.get(DeviceKeyKind::Session, "g", "a@lid").await),
            "another scope"
        );
        assert!(
            refused(loc1.get(DeviceKeyKind::Session, "", "b@lid").await),
            "another key"
        );
        assert!(
            matches!(loc2.load_device().await, Err(StoreError::Crypto(_))),
            "another location's device"
        );
    }

    #[test]
    fn a_row_prints_without_its_value() {
        let row = KeyRow::new(
            DeviceKeyKind::Identity,
            "",
            "1555@s.whatsapp.net",
            b"secret-bytes".to_vec(),
        );
        let printed = format!("{row:?}");
        assert!(
            !printed.contains("secret") && printed.contains("[12 bytes]"),
            "{printed}"
        );
    }
}
