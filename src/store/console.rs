//! Read-only queries for the operator's views (admin API lists and the console): every
//! location's queue depths in one pass, and a session's state history.

use std::collections::HashMap;

use super::{QueueCounts, Result, Store, on_db};

/// A row of `events`: one state transition of a location's session.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct StateEvent {
    pub from_state: Option<String>,
    pub to_state: String,
    pub reason: Option<String>,
    /// Unix ms.
    pub at: i64,
}

impl Store {
    /// The queue depths of every location that has any work, in three grouped scans instead
    /// of three queries per location (the list pages must stay fast with thousands).
    pub async fn all_queue_counts(&self) -> Result<HashMap<String, QueueCounts>> {
        let rows: Vec<(String, i64, i64, i64)> = on_db!(self, pool => {
            sqlx::query_as(
                "SELECT location_id, SUM(inbound_pending), SUM(outbound_pending), SUM(dead) FROM ( \
                   SELECT location_id, \
                     CASE WHEN state = 'pending' THEN 1 ELSE 0 END AS inbound_pending, \
                     0 AS outbound_pending, CASE WHEN state = 'dead' THEN 1 ELSE 0 END AS dead \
                   FROM inbox WHERE state IN ('pending', 'dead') \
                   UNION ALL \
                   SELECT location_id, 0, CASE WHEN state IN ('pending', 'sending') THEN 1 ELSE 0 END, \
                     CASE WHEN state = 'dead' THEN 1 ELSE 0 END \
                   FROM outbox WHERE state IN ('pending', 'sending', 'dead') \
                 ) AS work GROUP BY location_id",
            )
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(id, inbound_pending, outbound_pending, dead)| {
                let counts = QueueCounts {
                    inbound_pending,
                    outbound_pending,
                    dead,
                };
                (id, counts)
            })
            .collect())
    }

    /// The latest `limit` transitions of a location's session, newest first.
    pub async fn state_history(&self, location_id: &str, limit: i64) -> Result<Vec<StateEvent>> {
        Ok(on_db!(self, pool => {
            sqlx::query_as(
                "SELECT from_state, to_state, reason, at FROM events WHERE location_id = $1 \
                 ORDER BY event_id DESC LIMIT $2",
            )
            .bind(location_id)
            .bind(limit)
            .fetch_all(pool)
            .await?
        }))
    }
}
