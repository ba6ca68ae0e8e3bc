//! Read-only summaries for the admin API.

use super::{Result, Store, on_db};

/// How much work waits for a location.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub inbound_pending: i64,
    pub outbound_pending: i64,
    pub dead: i64,
}

impl Store {
    pub async fn queue_counts(&self, location_id: &str) -> Result<QueueCounts> {
        let (inbound_pending, outbound_pending, dead): (i64, i64, i64) = on_db!(self, pool => {
            sqlx::query_as(
                "SELECT \
                   (SELECT COUNT(*) FROM inbox WHERE location_id = $1 AND state = 'pending'), \
                   (SELECT COUNT(*) FROM outbox WHERE location_id = $1 AND state IN ('pending', 'sending')), \
                   (SELECT COUNT(*) FROM inbox WHERE location_id = $1 AND state = 'dead') \
                   + (SELECT COUNT(*) FROM outbox WHERE location_id = $1 AND state = 'dead')",
            )
            .bind(location_id)
            .fetch_one(pool)
            .await?
        });
        Ok(QueueCounts {
            inbound_pending,
            outbound_pending,
            dead,
        })
    }
}
