//! The persisted side of WhatsApp sessions: state with reason and time, every transition in
//! `events`, and the lease that keeps one live connection per session across instances.

use super::{Result, Store, on_db};
use crate::time::now_ms;

/// A session's state as persisted (see `sessions::SessionState` for the rules).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionRow {
    pub location_id: String,
    pub state: String,
    pub reason: Option<String>,
    pub phone: Option<String>,
    pub paired_at: Option<i64>,
    pub state_since: i64,
}

impl Store {
    /// Records a transition (no-op when nothing changed): the state, its reason and, once
    /// known, the paired phone; and a row in `events`, naming the incarnation that recorded it.
    pub async fn record_transition(
        &self,
        location_id: &str,
        state: &str,
        reason: Option<&str>,
        phone: Option<&str>,
        recorded_by: Option<&str>,
    ) -> Result<()> {
        let now = now_ms();
        let previous: Option<(String, Option<String>, Option<String>)> = on_db!(self, pool => {
            sqlx::query_as("SELECT state, reason, phone FROM wa_sessions WHERE location_id = $1")
                .bind(location_id)
                .fetch_optional(pool)
                .await?
        });
        let unchanged = previous.as_ref().is_some_and(|(s, r, p)| {
            s == state && r.as_deref() == reason && (phone.is_none() || p.as_deref() == phone)
        });
        if unchanged {
            return Ok(());
        }
        let paired_now = (state == "connected").then_some(now);
        on_db!(self, pool => {
            sqlx::query(
                "INSERT INTO wa_sessions (location_id, state, reason, phone, paired_at, state_since, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $6) \
                 ON CONFLICT (location_id) DO UPDATE SET state = excluded.state, reason = excluded.reason, \
                   phone = COALESCE(excluded.phone, wa_sessions.phone), \
                   paired_at = COALESCE(wa_sessions.paired_at, excluded.paired_at), \
                   state_since = CASE WHEN wa_sessions.state = excluded.state \
                     AND wa_sessions.reason IS NOT DISTINCT FROM excluded.reason \
                     THEN wa_sessions.state_since ELSE excluded.state_since END, \
                   updated_at = excluded.updated_at",
            )
            .bind(location_id)
            .bind(state)
            .bind(reason)
            .bind(phone)
            .bind(paired_now)
            .bind(now)
            .execute(pool)
            .await?;
            sqlx::query(
                "INSERT INTO events (location_id, from_state, to_state, reason, at, instance_id) VALUES ($1, $2, $3, $4, $5, $6)",
            )
                .bind(location_id)
                .bind(previous.map(|(s, _, _)| s))
                .bind(state)
                .bind(reason)
                .bind(now)
                .bind(recorded_by)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Forgets the pairing (phone, pairing time, published code) after a logout and wipe.
    pub async fn forget_pairing(&self, location_id: &str) -> Result<()> {
        on_db!(self, pool => {
            sqlx::query(
                "UPDATE wa_sessions SET phone = NULL, paired_at = NULL, pairing_code = NULL, updated_at = $2 \
                 WHERE location_id = $1",
            )
                .bind(location_id)
                .bind(now_ms())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    pub async fn session_row(&self, location_id: &str) -> Result<Option<SessionRow>> {
        Ok(on_db!(self, pool => {
            sqlx::query_as(
                "SELECT location_id, state, reason, phone, paired_at, state_since FROM wa_sessions WHERE location_id = $1",
            )
            .bind(location_id)
            .fetch_optional(pool)
            .await?
        }))
    }

    pub async fn session_rows(&self) -> Result<Vec<SessionRow>> {
        Ok(on_db!(self, pool => {
            sqlx::query_as(
                "SELECT location_id, state, reason, phone, paired_at, state_since FROM wa_sessions ORDER BY location_id",
            )
            .fetch_all(pool)
            .await?
        }))
    }

    /// Another location whose live (or restorable) session is paired to `phone`.
    pub async fn location_paired_to(&self, phone: &str, except: &str) -> Result<Option<String>> {
        Ok(on_db!(self, pool => {
            sqlx::query_scalar(
                "SELECT location_id FROM wa_sessions WHERE phone = $1 AND location_id <> $2 \
                 AND state IN ('connected', 'reconnecting') LIMIT 1",
            )
            .bind(phone)
            .bind(except)
            .fetch_optional(pool)
            .await?
        }))
    }

    /// Takes (or renews) the lease of a session for `owner` until `until` (unix ms): true
    /// when `owner` holds it now. Never granted while another owner's lease is unexpired.
    pub async fn acquire_lease(&self, location_id: &str, owner: &str, until: i64) -> Result<bool> {
        let now = now_ms();
        let taken = on_db!(self, pool => {
            sqlx::query(
                "INSERT INTO wa_sessions (location_id, state, state_since, updated_at, owner, lease_until) \
                 VALUES ($1, 'unpaired', $4, $4, $2, $3) \
                 ON CONFLICT (location_id) DO UPDATE SET owner = excluded.owner, lease_until = excluded.lease_until \
                 WHERE wa_sessions.owner IS NULL OR wa_sessions.owner = excluded.owner \
                   OR wa_sessions.lease_until IS NULL OR wa_sessions.lease_until < $4",
            )
            .bind(location_id)
            .bind(owner)
            .bind(until)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(taken == 1)
    }

    /// Extends every unexpired lease `owner` holds (the heartbeat); returns their locations.
    /// A lease that expired meanwhile may belong to another instance now: it is not renewed.
    pub async fn renew_leases(&self, owner: &str, until: i64) -> Result<Vec<String>> {
        Ok(on_db!(self, pool => {
            sqlx::query_scalar(
                "UPDATE wa_sessions SET lease_until = $2 WHERE owner = $1 AND lease_until >= $3 RETURNING location_id",
            )
            .bind(owner)
            .bind(until)
            .bind(now_ms())
            .fetch_all(pool)
            .await?
        }))
    }

    /// Lets go of a lease at once. The owner stays named, so whoever takes it next knows it took
    /// it over from another instance.
    pub async fn release_lease(&self, location_id: &str, owner: &str) -> Result<()> {
        on_db!(self, pool => {
            sqlx::query("UPDATE wa_sessions SET lease_until = NULL WHERE location_id = $1 AND owner = $2")
                .bind(location_id)
                .bind(owner)
                .execute(pool)
                .await?;
        });
        Ok(())
    }
}
