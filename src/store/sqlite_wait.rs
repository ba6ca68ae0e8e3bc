//! How a SQLite connection waits for the write lock another connection holds. SQLite's own
//! busy timeout sleeps 1, 2, 5, 10, 15, 20, 25 … 100 ms between tries, so a writer that finds
//! the lock taken sleeps long after it was released: with the intake writer and the relay's
//! claims and writes taking turns, requests waited hundreds of milliseconds on an idle lock
//! (p99 of the webhook intake 170–400 ms, one sleep per commit). Tries spaced by a fraction of
//! a commit's time take the lock soon after it is free.

use std::ffi::{c_int, c_void};
use std::time::Duration;

use sqlx::sqlite::SqliteConnection;

/// Between tries while the wait is short: a fraction of one commit (≈ 0.2 ms on a fast disk).
const SOON: Duration = Duration::from_micros(50);
/// Tries at [`SOON`] before slowing to [`LATER`] (≈ 20 ms of waiting).
const SOON_TRIES: c_int = 400;
/// Between tries once the lock has been held long (a migration, a large batch).
const LATER: Duration = Duration::from_millis(2);
/// Tries at [`LATER`] before the statement fails with `SQLITE_BUSY` (≈ 10 s, as before).
const LATER_TRIES: c_int = 5_000;

/// Installs the waiting on `conn` (in place of the busy timeout).
pub(super) async fn install(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle();
    // SAFETY: the locked handle guarantees no other call runs on this connection meanwhile;
    // `wait` is a plain function that touches no data (its argument is null and unused).
    let code = unsafe { libsqlite3_sys::sqlite3_busy_handler(db.as_ptr(), Some(wait), std::ptr::null_mut()) };
    if code == libsqlite3_sys::SQLITE_OK {
        Ok(())
    } else {
        Err(sqlx::Error::Configuration(
            format!("sqlite3_busy_handler failed ({code})").into(),
        ))
    }
}

/// SQLite's busy handler: called with the number of tries so far; nonzero means try again.
extern "C" fn wait(_: *mut c_void, tries: c_int) -> c_int {
    let pause = match tries {
        t if t < SOON_TRIES => SOON,
        t if t < SOON_TRIES + LATER_TRIES => LATER,
        _ => return 0,
    };
    // This runs on the connection's own thread (sqlx gives each SQLite connection one), not
    // on the async runtime.
    std::thread::sleep(pause);
    1
}
