//! Writes and deletes of device-key rows: upserts with the merge rules whatsapp-rust relies on,
//! batches as multi-row statements (one transaction when a batch needs several), expiry.

use std::collections::{BTreeMap, HashMap};

use sqlx::QueryBuilder;

use super::{DeviceKeyKind, DeviceKeys, KEYS_PER_STATEMENT, KeyRow, in_tx};
use crate::store::{Result, on_db};
use crate::time::now_ms;

/// Rows per multi-row insert (8 parameters each).
const ROWS_PER_STATEMENT: usize = 100;

/// What an upsert does with a row that exists already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnConflict {
    /// Takes everything from the new row.
    Replace,
    /// Takes the value; `ts` is a deadline where NULL means never, and the later one wins (NULL
    /// above all); `num` becomes the larger. Redeliveries never shorten a retention window.
    MergeDeadline,
    /// Takes value, `num` and `flag` only when the stored row has no flag or a `num` not newer
    /// than the new one; keeps `ts`. A stale write never replaces a fresher value.
    IfNewer,
    /// Keeps the stored row but moves `ts` forward to the new one when it is later; a new row
    /// is inserted as given.
    AdvanceTs,
}

impl OnConflict {
    fn clause(self) -> &'static str {
        match self {
            Self::Replace => {
                " ON CONFLICT (location_id, kind, scope, key) DO UPDATE SET value = excluded.value, \
                 num = excluded.num, flag = excluded.flag, ts = excluded.ts"
            }
            Self::MergeDeadline => {
                " ON CONFLICT (location_id, kind, scope, key) DO UPDATE SET value = excluded.value, \
                 num = CASE WHEN wa_device_keys.num IS NULL OR excluded.num > wa_device_keys.num \
                   THEN excluded.num ELSE wa_device_keys.num END, \
                 ts = CASE WHEN wa_device_keys.ts IS NULL OR excluded.ts IS NULL THEN NULL \
                   WHEN excluded.ts > wa_device_keys.ts THEN excluded.ts ELSE wa_device_keys.ts END"
            }
            Self::IfNewer => {
                " ON CONFLICT (location_id, kind, scope, key) DO UPDATE SET value = excluded.value, \
                 num = excluded.num, flag = excluded.flag \
                 WHERE NOT wa_device_keys.flag OR excluded.num >= wa_device_keys.num"
            }
            Self::AdvanceTs => {
                " ON CONFLICT (location_id, kind, scope, key) DO UPDATE SET \
                 ts = CASE WHEN wa_device_keys.ts IS NOT NULL AND wa_device_keys.ts > excluded.ts \
                   THEN wa_device_keys.ts ELSE excluded.ts END"
            }
        }
    }
}

/// A LID's mapping keeps when it was first seen (`num`) across updates.
const KEEP_NUM: &str = " ON CONFLICT (location_id, kind, scope, key) DO UPDATE SET value = excluded.value, \
     flag = excluded.flag, ts = excluded.ts";

/// Inserts `$rows` (with their `$sealed` values) in one statement on `$exec`; rows affected.
macro_rules! upsert {
    ($keys:expr, $exec:expr, $rows:expr, $sealed:expr, $clause:expr) => {{
        let mut query =
            QueryBuilder::new("INSERT INTO wa_device_keys (location_id, kind, scope, key, value, num, flag, ts) ");
        query.push_values($rows.iter().zip($sealed.iter()), |mut b, (row, sealed)| {
            b.push_bind($keys.location.as_str())
                .push_bind(row.kind.code())
                .push_bind(row.scope.as_str())
                .push_bind(row.key.as_str())
                .push_bind(sealed.as_slice())
                .push_bind(row.num)
                .push_bind(row.flag)
                .push_bind(row.ts);
        });
        query.push($clause);
        query.build().execute($exec).await?.rows_affected()
    }};
}

/// Runs `$body` once per chunk of `$items` with `$exec` an executor, and sums what it returns:
/// on the pool when one chunk does, else every chunk in one transaction.
macro_rules! in_chunks {
    ($keys:expr, $items:expr, $size:expr, $exec:ident, $chunk:ident => $body:expr) => {
        if $items.len() <= $size {
            let $chunk = &$items[..];
            on_db!($keys.store, $exec => $body)
        } else {
            in_tx!($keys, tx => {
                let mut total = 0;
                for $chunk in $items.chunks($size) {
                    let $exec = &mut *tx;
                    total += $body;
                }
                total
            })
        }
    };
}

/// One row per (kind, scope, key), the last given winning, sorted: a statement never names a
/// row twice (PostgreSQL refuses that), and concurrent batches lock rows in the same order.
fn last_of_each(rows: &[KeyRow]) -> Vec<&KeyRow> {
    let mut by_key = BTreeMap::new();
    for row in rows {
        by_key.insert((row.kind, row.scope.as_str(), row.key.as_str()), row);
    }
    by_key.into_values().collect()
}

impl DeviceKeys {
    pub async fn put(&self, row: KeyRow, on_conflict: OnConflict) -> Result<()> {
        self.put_many(std::slice::from_ref(&row), on_conflict).await
    }

    /// Writes `rows` (a batch naming one row twice keeps the last).
    pub async fn put_many(&self, rows: &[KeyRow], on_conflict: OnConflict) -> Result<()> {
        let rows = last_of_each(rows);
        if rows.is_empty() {
            return Ok(());
        }
        let sealed: Vec<Vec<u8>> = rows.iter().map(|row| self.seal(row)).collect();
        let pairs: Vec<(&KeyRow, Vec<u8>)> = rows.into_iter().zip(sealed).collect();
        in_chunks!(self, pairs, ROWS_PER_STATEMENT, exec, chunk => {
            let (rows, sealed): (Vec<&KeyRow>, Vec<&Vec<u8>>) = chunk.iter().map(|(r, s)| (*r, s)).unzip();
            upsert!(self, exec, rows, sealed, on_conflict.clause())
        });
        Ok(())
    }

    /// Writes LID mappings (`scope`: the phone, `key`: the LID, `num`: first seen): one row per
    /// LID, so a LID that moves to another phone leaves its old phone, keeping when it was
    /// first seen.
    pub async fn put_lid_mappings(&self, rows: &[KeyRow]) -> Result<()> {
        let rows = last_of_each(rows);
        if rows.is_empty() {
            return Ok(());
        }
        in_tx!(self, tx => {
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let pairs: Vec<(&str, &str)> = chunk.iter().map(|row| (row.scope.as_str(), row.key.as_str())).collect();
                let mut moved = delete_pairs(&self.location, DeviceKeyKind::LidMapping, &pairs, Scope::Other);
                moved.push(" RETURNING key, num");
                let first_seen: HashMap<String, Option<i64>> =
                    moved.build_query_as().fetch_all(&mut *tx).await?.into_iter().collect();
                let chunk: Vec<KeyRow> = chunk
                    .iter()
                    .map(|row| {
                        let mut row = (*row).clone();
                        row.kind = DeviceKeyKind::LidMapping;
                        if let Some(num) = first_seen.get(&row.key) {
                            row.num = *num;
                        }
                        row
                    })
                    .collect();
                let sealed: Vec<Vec<u8>> = chunk.iter().map(|row| self.seal(row)).collect();
                upsert!(self, &mut *tx, chunk, sealed, KEEP_NUM);
            }
        });
        Ok(())
    }

    /// Sets `flag` on the unscoped rows of `keys` that exist; never inserts (a row deleted
    /// meanwhile stays deleted).
    pub async fn set_flag(&self, kind: DeviceKeyKind, keys: &[&str], flag: bool) -> Result<()> {
        in_chunks!(self, keys, KEYS_PER_STATEMENT, exec, chunk => {
            let mut query = QueryBuilder::new("UPDATE wa_device_keys SET flag = ");
            query.push_bind(flag);
            query.push(" WHERE location_id = ").push_bind(self.location.as_str());
            query.push(" AND kind = ").push_bind(kind.code()).push(" AND scope = '' AND key IN (");
            let mut list = query.separated(", ");
            for key in chunk {
                list.push_bind(*key);
            }
            query.push(")");
            query.build().execute(exec).await?.rows_affected()
        });
        Ok(())
    }

    pub async fn delete(&self, kind: DeviceKeyKind, scope: &str, key: &str) -> Result<()> {
        self.delete_many(kind, &[(scope, key)]).await
    }

    /// Deletes the rows named by (scope, key).
    pub async fn delete_many(&self, kind: DeviceKeyKind, items: &[(&str, &str)]) -> Result<()> {
        in_chunks!(self, items, KEYS_PER_STATEMENT, exec, chunk => {
            delete_pairs(&self.location, kind, chunk, Scope::Same).build().execute(exec).await?.rows_affected()
        });
        Ok(())
    }

    /// Deletes the rows of `keys` in every scope.
    pub async fn delete_in_any_scope(&self, kind: DeviceKeyKind, keys: &[&str]) -> Result<()> {
        in_chunks!(self, keys, KEYS_PER_STATEMENT, exec, chunk => {
            let mut query = QueryBuilder::new("DELETE FROM wa_device_keys WHERE location_id = ");
            query.push_bind(self.location.as_str());
            query.push(" AND kind = ").push_bind(kind.code()).push(" AND key IN (");
            let mut list = query.separated(", ");
            for key in chunk {
                list.push_bind(*key);
            }
            query.push(")");
            query.build().execute(exec).await?.rows_affected()
        });
        Ok(())
    }

    /// Deletes every row of `kind`, or of `kind` in `scope`.
    pub async fn clear(&self, kind: DeviceKeyKind, scope: Option<&str>) -> Result<()> {
        on_db!(self.store, pool => {
            match scope {
                Some(scope) => {
                    sqlx::query("DELETE FROM wa_device_keys WHERE location_id = $1 AND kind = $2 AND scope = $3")
                        .bind(&self.location)
                        .bind(kind.code())
                        .bind(scope)
                        .execute(pool)
                        .await?;
                }
                None => {
                    sqlx::query("DELETE FROM wa_device_keys WHERE location_id = $1 AND kind = $2")
                        .bind(&self.location)
                        .bind(kind.code())
                        .execute(pool)
                        .await?;
                }
            }
        });
        Ok(())
    }

    /// Deletes the row and returns its value, in one statement: two takers never both get it.
    pub async fn take(&self, kind: DeviceKeyKind, scope: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let sealed: Option<Vec<u8>> = on_db!(self.store, pool => {
            sqlx::query_scalar(
                "DELETE FROM wa_device_keys WHERE location_id = $1 AND kind = $2 AND scope = $3 AND key = $4 \
                 RETURNING value",
            )
            .bind(&self.location)
            .bind(kind.code())
            .bind(scope)
            .bind(key)
            .fetch_optional(pool)
            .await?
        });
        Ok(sealed
            .map(|sealed| self.store.key().open(&self.context(kind, scope, key), &sealed))
            .transpose()?)
    }

    /// Deletes the rows of `kind` whose `ts` is before `before` (a NULL `ts` never expires);
    /// how many.
    pub async fn expire(&self, kind: DeviceKeyKind, before: i64) -> Result<u64> {
        Ok(on_db!(self.store, pool => {
            sqlx::query("DELETE FROM wa_device_keys WHERE location_id = $1 AND kind = $2 AND ts < $3")
                .bind(&self.location)
                .bind(kind.code())
                .bind(before)
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }

    /// Deletes the rows of `kind` that are stale on both counts: no flag or a `num` before
    /// `num_before`, and no `ts` or one before `ts_before`; how many.
    pub async fn expire_both(&self, kind: DeviceKeyKind, num_before: i64, ts_before: i64) -> Result<u64> {
        Ok(on_db!(self.store, pool => {
            sqlx::query(
                "DELETE FROM wa_device_keys WHERE location_id = $1 AND kind = $2 \
                 AND (NOT flag OR num IS NULL OR num < $3) AND (ts IS NULL OR ts < $4)",
            )
            .bind(&self.location)
            .bind(kind.code())
            .bind(num_before)
            .bind(ts_before)
            .execute(pool)
            .await?
            .rows_affected()
        }))
    }

    /// Stores a device and its rows taken from elsewhere (an older store), in one
    /// transaction, unless the location has a device already: then nothing is written and
    /// the answer is false.
    pub async fn import(&self, device: &[u8], rows: &[KeyRow]) -> Result<bool> {
        let sealed_device = self.store.key().seal(&self.device_context(), device);
        let rows = last_of_each(rows);
        let sealed: Vec<Vec<u8>> = rows.iter().map(|row| self.seal(row)).collect();
        let imported = in_tx!(self, tx => {
            let created = sqlx::query(
                "INSERT INTO wa_devices (location_id, device, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (location_id) DO NOTHING",
            )
            .bind(&self.location)
            .bind(&sealed_device)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if created == 1 {
                for (rows, sealed) in rows.chunks(ROWS_PER_STATEMENT).zip(sealed.chunks(ROWS_PER_STATEMENT)) {
                    upsert!(self, &mut *tx, rows, sealed, OnConflict::Replace.clause());
                }
            }
            created == 1
        });
        Ok(imported)
    }
}

/// Which row of its key a (scope, key) pair of [`delete_pairs`] names.
#[derive(Clone, Copy)]
enum Scope {
    /// The row in that scope.
    Same,
    /// The rows in every other scope (a key that moved).
    Other,
}

/// Deletes the location's rows of `kind` named by `pairs` ((scope, key) each). The pairs are an
/// `OR` of (scope, key) terms, which SQLite's planner does not search through the key index, so
/// the statement also says `key IN (…)`; without it, it read every key of its kind in the
/// location (the test below asserts the plan).
fn delete_pairs<'a, DB: sqlx::Database>(
    location: &'a str,
    kind: DeviceKeyKind,
    pairs: &[(&'a str, &'a str)],
    scope: Scope,
) -> QueryBuilder<DB>
where
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i16: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let scope_is = match scope {
        Scope::Same => " AND scope = ",
        Scope::Other => " AND scope <> ",
    };
    let mut query = QueryBuilder::new("DELETE FROM wa_device_keys WHERE location_id = ");
    query.push_bind(location);
    query.push(" AND kind = ").push_bind(kind.code()).push(" AND (");
    for (i, (scope, key)) in pairs.iter().enumerate() {
        if i > 0 {
            query.push(" OR ");
        }
        query
            .push("(key = ")
            .push_bind(*key)
            .push(scope_is)
            .push_bind(*scope)
            .push(")");
    }
    query.push(") AND key IN (");
    let mut list = query.separated(", ");
    for (_, key) in pairs {
        list.push_bind(*key);
    }
    query.push(")");
    query
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both deletes by (scope, key) pairs are searched through the key index, not read with
    /// every key of their kind.
    #[tokio::test]
    async fn a_delete_by_pairs_searches_the_key_index() {
        let pairs = [("s1", "k1"), ("s2", "k2")];
        for scope in [Scope::Same, Scope::Other] {
            let query = delete_pairs::<sqlx::Sqlite>("loc", DeviceKeyKind::LidMapping, &pairs, scope);
            crate::store::assert_plan_has(
                query.sql().as_str(),
                "USING INDEX wa_device_keys_by_key (location_id=? AND kind=? AND key=?)",
            )
            .await;
        }
    }
}
