//! The connection a group-commit writer keeps from one transaction to the next.
//!
//! A connection returned to its pool is tested by sqlx on the way (a round trip to SQLite's
//! connection thread, or to the PostgreSQL server) and the writer's next `BEGIN` waited for
//! that test (160–240 µs on SQLite), or took the pool's other connection: then on SQLite each
//! batch began with a cold page cache, since a connection drops its whole cache when another
//! connection wrote since its last transaction (a profile of the intake: a tenth of its SQLite
//! time in `malloc` and in re-reading index pages). Kept out of the pool, the writer's
//! connection is neither tested nor swapped.

use std::sync::{Arc, Mutex, MutexGuard};

use sqlx::pool::PoolConnection;
use sqlx::{Pool, Postgres, Sqlite};

use super::{Result, Store};

/// Where a writer's store keeps its connection between transactions (empty while one runs),
/// one place per backend: a store only ever fills the place of its own.
#[derive(Default)]
pub(super) struct Kept {
    sqlite: Mutex<Option<PoolConnection<Sqlite>>>,
    postgres: Mutex<Option<PoolConnection<Postgres>>>,
}

pub(super) type Slot = Arc<Kept>;

/// A backend whose connections a writer can keep.
pub(super) trait Keepable: sqlx::Database {
    /// This backend's place in `kept`.
    fn place(kept: &Kept) -> &Mutex<Option<PoolConnection<Self>>>;
}

impl Keepable for Sqlite {
    fn place(kept: &Kept) -> &Mutex<Option<PoolConnection<Self>>> {
        &kept.sqlite
    }
}

impl Keepable for Postgres {
    fn place(kept: &Kept) -> &Mutex<Option<PoolConnection<Self>>> {
        &kept.postgres
    }
}

impl Store {
    /// A connection for one transaction: the kept one when this store keeps one and has it,
    /// else one from `pool` (the store's own).
    pub(super) async fn connection<DB: Keepable>(&self, pool: &Pool<DB>) -> Result<PoolConnection<DB>> {
        let kept = self.kept.as_ref().and_then(|kept| lock(DB::place(kept)).take());
        match kept {
            Some(conn) => Ok(conn),
            None => Ok(pool.acquire().await?),
        }
    }

    /// Ends the use of `conn` after a transaction: a store that keeps a connection keeps it
    /// when the transaction `succeeded`; otherwise it goes back to the pool, whose test closes
    /// it if it is broken (the next transaction then opens another).
    pub(super) fn release<DB: Keepable>(&self, conn: PoolConnection<DB>, succeeded: bool) {
        if let Some(kept) = &self.kept
            && succeeded
        {
            *lock(DB::place(kept)) = Some(conn);
        }
    }

    /// Closes the kept connection, if any.
    pub(super) async fn close_kept(&self) {
        let Some(kept) = &self.kept else { return };
        close::<Sqlite>(kept).await;
        close::<Postgres>(kept).await;
    }
}

async fn close<DB: Keepable>(kept: &Kept) {
    let conn = lock(DB::place(kept)).take();
    if let Some(conn) = conn {
        drop(conn.close().await);
    }
}

fn lock<T>(place: &Mutex<T>) -> MutexGuard<'_, T> {
    place.lock().expect("the kept-connection lock is never poisoned")
}
