//! Several instances on one database: their heartbeat rows, which sessions wait for an owner,
//! whether a session is idle enough to move, the pairing code its owner publishes, and the
//! PostgreSQL notifications that wake another instance (SQLite has one instance: no-ops).

use super::{Db, Result, Store, on_db};
use crate::domain::Incarnation;
use crate::time::now_ms;

/// Channels of `LISTEN/NOTIFY` between instances (PostgreSQL only).
pub mod channels {
    /// An outbound message was queued; the payload is its location id.
    pub const OUTBOX: &str = "waghl_outbox";
    /// A command was queued; the payload is the incarnation asked.
    pub const COMMANDS: &str = "waghl_commands";
    /// A command was answered; the payload is its id.
    pub const ANSWERS: &str = "waghl_answers";
    /// An instance stopped and released its leases; the payload is its incarnation.
    pub const LEASES: &str = "waghl_leases";
}

/// A live instance and how many unexpired session leases it holds.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct LiveInstance {
    pub instance_id: String,
    pub leases: i64,
}

/// A session that should run and whose lease is free or expired.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct LeaseCandidate {
    pub location_id: String,
    /// Who held the lease last (a stopped, dead or rebalancing instance), if anyone.
    pub owner: Option<String>,
    /// Pairing (or about to): its new owner starts a new pairing instead of resuming.
    pub pairing: bool,
}

impl Store {
    /// Writes this instance's heartbeat row (every lease round).
    pub async fn heartbeat(&self, me: &Incarnation, sessions: i64) -> Result<()> {
        let now = now_ms();
        on_db!(self, pool => {
            sqlx::query(
                "INSERT INTO instances (instance_id, sessions, started_at, heartbeat_at) VALUES ($1, $2, $3, $3) \
                 ON CONFLICT (instance_id) DO UPDATE SET sessions = excluded.sessions, heartbeat_at = excluded.heartbeat_at",
            )
            .bind(me.as_str())
            .bind(sessions)
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Deletes this instance's row at a clean stop (after its leases were released) and wakes the
    /// other instances' lease rounds, so they take its sessions at once.
    pub async fn remove_instance(&self, me: &Incarnation) -> Result<()> {
        on_db!(self, pool => {
            sqlx::query("DELETE FROM instances WHERE instance_id = $1")
                .bind(me.as_str())
                .execute(pool)
                .await?;
        });
        self.notify(channels::LEASES, me.as_str()).await
    }

    /// Instances whose heartbeat is not older than `since`, with their unexpired leases, by id.
    pub async fn live_instances(&self, since: i64) -> Result<Vec<LiveInstance>> {
        Ok(on_db!(self, pool => {
            sqlx::query_as(
                "SELECT i.instance_id, (SELECT COUNT(*) FROM wa_sessions s WHERE s.owner = i.instance_id \
                   AND s.lease_until >= $2) AS leases \
                 FROM instances i WHERE i.heartbeat_at >= $1 ORDER BY i.instance_id",
            )
            .bind(since)
            .bind(now_ms())
            .fetch_all(pool)
            .await?
        }))
    }

    /// Sessions that should run — installed, and paired and running, or pairing — whose lease is
    /// free or expired, by location.
    pub async fn lease_candidates(&self) -> Result<Vec<LeaseCandidate>> {
        Ok(on_db!(self, pool => {
            sqlx::query_as(
                "SELECT s.location_id, s.owner, s.state <> 'connected' AND s.state <> 'reconnecting' AS pairing \
                 FROM wa_sessions s JOIN locations l ON l.location_id = s.location_id \
                 WHERE l.status <> 'uninstalled' AND (s.lease_until IS NULL OR s.lease_until < $1) \
                   AND ((s.paired_at IS NOT NULL AND s.state IN ('connected', 'reconnecting')) \
                     OR (s.state = 'pairing' AND COALESCE(s.reason, '') <> 'qr_exhausted') \
                     OR (s.state = 'unpaired' AND s.reason = 'pairing_starting')) \
                 ORDER BY s.location_id",
            )
            .bind(now_ms())
            .fetch_all(pool)
            .await?
        }))
    }

    /// Frees the leases (and heartbeat rows) of this instance's earlier lives, dead for certain:
    /// a restart after kill -9 resumes its sessions at once. Leases named by the bare instance id
    /// were taken by a version before incarnations named them.
    pub async fn release_leases_of_earlier_lives(&self, me: &Incarnation) -> Result<u64> {
        let instance = me.instance_prefix().trim_end_matches('#');
        Ok(on_db!(self, pool => {
            sqlx::query(
                "DELETE FROM instances WHERE instance_id <> $1 AND substr(instance_id, 1, length($2)) = $2",
            )
            .bind(me.as_str())
            .bind(me.instance_prefix())
            .execute(pool)
            .await?;
            sqlx::query(
                "UPDATE wa_sessions SET lease_until = NULL WHERE lease_until IS NOT NULL \
                   AND (owner = $3 OR (owner <> $1 AND substr(owner, 1, length($2)) = $2))",
            )
            .bind(me.as_str())
            .bind(me.instance_prefix())
            .bind(instance)
            .execute(pool)
            .await?
            .rows_affected()
        }))
    }

    /// The incarnation holding the session's unexpired lease, if any.
    pub async fn lease_owner(&self, location_id: &str) -> Result<Option<String>> {
        let owner: Option<Option<String>> = on_db!(self, pool => {
            sqlx::query_scalar("SELECT owner FROM wa_sessions WHERE location_id = $1 AND lease_until >= $2")
                .bind(location_id)
                .bind(now_ms())
                .fetch_optional(pool)
                .await?
        });
        Ok(owner.flatten())
    }

    /// Whether an outbound message of the location is being sent (a part written but not acked,
    /// or a row claimed by a sender): such a session is not moved to another instance.
    pub async fn is_sending(&self, location_id: &str) -> Result<bool> {
        let busy: i64 = on_db!(self, pool => {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM outbox WHERE location_id = $1 AND state IN ('pending', 'sending') \
                   AND (state = 'sending' OR claimed_until >= $2)",
            )
            .bind(location_id)
            .bind(now_ms())
            .fetch_one(pool)
            .await?
        });
        Ok(busy > 0)
    }

    /// Publishes (or, with `None`, clears) the code to scan, JSON, sealed.
    pub async fn publish_pairing_code(&self, location_id: &str, code: Option<&str>) -> Result<()> {
        let sealed = code.map(|c| self.key().seal_str(&pairing_context(location_id), c));
        on_db!(self, pool => {
            sqlx::query("UPDATE wa_sessions SET pairing_code = $2 WHERE location_id = $1")
                .bind(location_id)
                .bind(sealed)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The code the session's owner published, JSON.
    pub async fn pairing_code(&self, location_id: &str) -> Result<Option<String>> {
        let sealed: Option<Option<Vec<u8>>> = on_db!(self, pool => {
            sqlx::query_scalar("SELECT pairing_code FROM wa_sessions WHERE location_id = $1")
                .bind(location_id)
                .fetch_optional(pool)
                .await?
        });
        Ok(match sealed.flatten() {
            Some(sealed) => Some(self.key().open_str(&pairing_context(location_id), &sealed)?),
            None => None,
        })
    }

    /// Sends a notification to every instance listening on `channel` (PostgreSQL only).
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<()> {
        if let Db::Postgres(pool) = &self.db {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(channel)
                .bind(payload)
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// Listens on every channel of [`channels`]; `None` on SQLite (one instance, nothing to hear).
    pub async fn listen(&self) -> Result<Option<sqlx::postgres::PgListener>> {
        let Db::Postgres(pool) = &self.db else {
            return Ok(None);
        };
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        listener
            .listen_all([
                channels::OUTBOX,
                channels::COMMANDS,
                channels::ANSWERS,
                channels::LEASES,
            ])
            .await?;
        Ok(Some(listener))
    }
}

/// Binds a sealed code to its location, so a row's code cannot be moved to another.
fn pairing_context(location_id: &str) -> String {
    format!("pairing-code:{location_id}")
}
