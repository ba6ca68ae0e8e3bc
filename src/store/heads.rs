//! Each chat's head: its oldest unfinished row, the only one of the chat a worker may claim
//! (first in, first out per chat). The flag is kept in the transaction that starts or ends a
//! row, under a per-chat lock, so claims read heads only — their cost does not grow with the
//! rows queued behind them — and a unique index guarantees one head per chat.

use super::{Result, Store};

/// A chat of one of the queues: (location, chat JID) in the inbox, (location, phone as GHL wrote
/// it) in the outbox.
#[derive(Clone, Copy, Debug)]
pub(super) enum ChatKey<'a> {
    Inbox { location: &'a str, chat: &'a str },
    Outbox { location: &'a str, phone: &'a str },
}

impl ChatKey<'_> {
    pub(super) fn lock_name(&self) -> String {
        match self {
            Self::Inbox { location, chat } => format!("inbox\n{location}\n{chat}"),
            Self::Outbox { location, phone } => format!("outbox\n{location}\n{phone}"),
        }
    }

    pub(super) fn parts(&self) -> (&str, &str) {
        match *self {
            Self::Inbox { location, chat } => (location, chat),
            Self::Outbox { location, phone } => (location, phone),
        }
    }
}

/// Makes the chat's oldest unfinished row its head, when it is not already.
const PROMOTE_INBOX: &str = "UPDATE inbox SET head = 1 WHERE head = 0 AND inbox_id = ( \
     SELECT MIN(inbox_id) FROM inbox WHERE location_id = $1 AND chat = $2 AND state = 'pending')";
const PROMOTE_OUTBOX: &str = "UPDATE outbox SET head = 1 WHERE head = 0 AND outbox_id = ( \
     SELECT MIN(outbox_id) FROM outbox WHERE location_id = $1 AND to_phone = $2 AND state IN ('pending', 'sending'))";
/// After rows re-entered the queue (a replay), any row but the oldest stops being the head.
const DEMOTE_INBOX: &str = "UPDATE inbox SET head = 0 WHERE location_id = $1 AND chat = $2 AND state = 'pending' \
     AND head = 1 AND inbox_id > (SELECT MIN(inbox_id) FROM inbox WHERE location_id = $1 AND chat = $2 \
     AND state = 'pending')";
const DEMOTE_OUTBOX: &str = "UPDATE outbox SET head = 0 WHERE location_id = $1 AND to_phone = $2 \
     AND state IN ('pending', 'sending') AND head = 1 AND outbox_id > (SELECT MIN(outbox_id) FROM outbox \
     WHERE location_id = $1 AND to_phone = $2 AND state IN ('pending', 'sending'))";

/// Runs `$body` in a transaction (`$tx`) that holds `$key`'s chat lock: the one-chat case of
/// [`in_chats_tx!`]. The lock keeps an enqueue and the end of the chat's last row from missing
/// each other.
macro_rules! in_chat_tx {
    ($store:expr, $key:expr, $tx:ident => $body:expr) => {
        $crate::store::heads::in_chats_tx!($store, &vec![$key.lock_name()], $tx => $body)
    };
}
pub(super) use in_chat_tx;

/// Runs `$body` in a transaction (`$tx`) that holds the chat locks `$names` (their
/// [`ChatKey::lock_name`]s, sorted and without repeats, so two such transactions — of two
/// instances, or a writer and a relay — take their locks in the same order and never
/// deadlock): PostgreSQL takes advisory locks for the transaction; SQLite's single writer
/// already serialises write transactions (each body starts with a write, so it never upgrades
/// a read snapshot).
macro_rules! in_chats_tx {
    ($store:expr, $names:expr, $tx:ident => $body:expr) => {
        match &$store.db {
            $crate::store::Db::Sqlite(pool) => {
                $crate::store::heads::in_chats_tx!(@on $store, pool, $tx => $body)
            }
            $crate::store::Db::Postgres(pool) => {
                $crate::store::heads::in_chats_tx!(@on $store, pool, $tx => {
                    // One round trip for all the locks, taken in the array's order.
                    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended(name, 0)) FROM unnest($1::text[]) AS name")
                        .bind($names)
                        .execute(&mut *$tx)
                        .await?;
                    $body
                })
            }
        }
    };
    // The transaction on a connection of the store (its kept one, if it keeps one); the body
    // runs in a block of its own so that a failure still gives the connection back.
    (@on $store:expr, $pool:ident, $tx:ident => $body:expr) => {{
        let mut conn = $store.connection($pool).await?;
        let out: $crate::store::Result<_> = async {
            let mut $tx = sqlx::Connection::begin(&mut *conn).await?;
            let out = $body;
            $tx.commit().await?;
            Ok(out)
        }
        .await;
        $store.release(conn, out.is_ok());
        out?
    }};
}
pub(super) use in_chats_tx;

/// Promotes the chat's next head, inside the caller's chat transaction.
macro_rules! promote_in {
    ($tx:ident, $key:expr) => {{
        let (location, chat) = $key.parts();
        let sql = $key.promote_sql();
        sqlx::query(sql).bind(location).bind(chat).execute(&mut *$tx).await?;
    }};
}
pub(super) use promote_in;

/// Makes any row but the chat's oldest unfinished one stop being its head, inside the caller's
/// chat transaction (after an older row re-entered the queue).
macro_rules! demote_in {
    ($tx:ident, $key:expr) => {{
        let (location, chat) = $key.parts();
        let sql = $key.demote_sql();
        sqlx::query(sql).bind(location).bind(chat).execute(&mut *$tx).await?;
    }};
}
pub(super) use demote_in;

impl ChatKey<'_> {
    pub(super) fn promote_sql(&self) -> &'static str {
        match self {
            Self::Inbox { .. } => PROMOTE_INBOX,
            Self::Outbox { .. } => PROMOTE_OUTBOX,
        }
    }

    pub(super) fn demote_sql(&self) -> &'static str {
        match self {
            Self::Inbox { .. } => DEMOTE_INBOX,
            Self::Outbox { .. } => DEMOTE_OUTBOX,
        }
    }
}

impl Store {
    /// Puts the chat's head right: the oldest unfinished row, and no other. For chats whose rows
    /// ended or re-entered the queue outside a chat transaction (expiry, replay).
    pub(super) async fn fix_head(&self, key: ChatKey<'_>) -> Result<()> {
        let (location, chat) = key.parts();
        in_chat_tx!(self, key, tx => {
            sqlx::query(key.demote_sql()).bind(location).bind(chat).execute(&mut *tx).await?;
            sqlx::query(key.promote_sql()).bind(location).bind(chat).execute(&mut *tx).await?;
        });
        Ok(())
    }
}
