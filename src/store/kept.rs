//! The connection a group-commit writer keeps from one transaction to the next.
//!
//! A connection returned to its pool is tested by sqlx on the way (a round trip to SQLite's
//! connection thread, or to the PostgreSQL server) and the writer's next `BEGIN` waited for
//! that test (160–240 µs on SQLite), or took the pool's other connection: then on SQLite each
//! batch began with a cold page cache, since a connection drops its whole cache when another
//! connection wrote since its last transaction (a profile of the intake: a tenth of its SQLite
//! time in `malloc` and in re-reading index pages). Kept out of the pool, the writer's
//! connection is neither tested nor swapped.

use std::sync::{Arc, Mutex};

use sqlx::pool::PoolConnection;
use sqlx::{Pool, Postgres, Sqlite};

use super::{Result, Store};

/// A writer's kept connection, of either backend.
pub(crate) enum KeptConnection {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(PoolConnection<Postgres>),
}

/// Where a writer's store keeps its connection between transactions (empty while one runs).
pub(crate) type Slot = Arc<Mutex<Option<KeptConnection>>>;

/// A backend whose connections a writer can keep.
pub(crate) trait Keepable: sqlx::Database {
    fn wrap(conn: PoolConnection<Self>) -> KeptConnection;
    fn unwrap(kept: KeptConnection) -> Option<PoolConnection<Self>>;
}

impl Keepable for Sqlite {
    fn wrap(conn: PoolConnection<Self>) -> KeptConnection {
        KeptConnection::Sqlite(conn)
    }
    fn unwrap(kept: KeptConnection) -> Option<PoolConnection<Self>> {
        match kept {
            KeptConnection::Sqlite(conn) => Some(conn),
            KeptConnection::Postgres(_) => None,
        }
    }
}

impl Keepable for Postgres {
    fn wrap(conn: PoolConnection<Self>) -> KeptConnection {
        KeptConnection::Postgres(conn)
    }
    fn unwrap(kept: KeptConnection) -> Option<PoolConnection<Self>> {
        match kept {
            KeptConnection::Postgres(conn) => Some(conn),
            KeptConnection::Sqlite(_) => None,
        }
    }
}

impl Store {
    /// A connection for one transaction: the kept one when this store keeps one and has it,
    /// else one from `pool` (the store's own).
    pub(crate) async fn connection<DB: Keepable>(&self, pool: &Pool<DB>) -> Result<PoolConnection<DB>> {
        let kept = self
            .kept
            .as_ref()
            .and_then(|slot| lock(slot).take())
            .and_then(DB::unwrap);
        match kept {
            Some(conn) => Ok(conn),
            None => Ok(pool.acquire().await?),
        }
    }

    /// Ends the use of `conn` after a transaction: a store that keeps a connection keeps it
    /// when the transaction `succeeded`; otherwise it goes back to the pool, whose test closes
    /// it if it is broken (the next transaction then opens another).
    pub(crate) fn release<DB: Keepable>(&self, conn: PoolConnection<DB>, succeeded: bool) {
        if let Some(slot) = &self.kept
            && succeeded
        {
            *lock(slot) = Some(DB::wrap(conn));
        }
    }

    /// Closes the kept connection, if any.
    pub(super) async fn close_kept(&self) {
        let kept = self.kept.as_ref().and_then(|slot| lock(slot).take());
        match kept {
            Some(KeptConnection::Sqlite(conn)) => drop(conn.close().await),
            Some(KeptConnection::Postgres(conn)) => drop(conn.close().await),
            None => {}
        }
    }
}

fn lock(slot: &Slot) -> std::sync::MutexGuard<'_, Option<KeptConnection>> {
    slot.lock().expect("the kept-connection lock is never poisoned")
}
