//! Both queues as one list, for the admin API: newest first, filtered by state, paged by time.

use super::{Result, Store, StoreError, on_db};

/// A message of either direction, as the admin API shows it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct MessageRow {
    pub id: i64,
    pub direction: String,
    pub wa_message_id: Option<String>,
    pub ghl_message_id: Option<String>,
    pub kind: Option<String>,
    pub state: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub received_at: i64,
    pub done_at: Option<i64>,
}

impl MessageRow {
    /// `in_42` / `out_17`: unique across both directions.
    pub fn public_id(&self) -> String {
        match self.direction.as_str() {
            "inbound" => format!("in_{}", self.id),
            _ => format!("out_{}", self.id),
        }
    }
}

/// A message id of the admin API, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageRef {
    Inbound(i64),
    Outbound(i64),
}

impl MessageRef {
    pub fn parse(text: &str) -> Option<Self> {
        if let Some(n) = text.strip_prefix("in_") {
            return n.parse().ok().map(Self::Inbound);
        }
        text.strip_prefix("out_")
            .and_then(|n| n.parse().ok())
            .map(Self::Outbound)
    }
}

impl Store {
    /// Up to `limit` messages received before `before` (unix ms), newest first.
    pub async fn list_messages(
        &self,
        location_id: &str,
        state: Option<&str>,
        before: i64,
        limit: i64,
    ) -> Result<Vec<MessageRow>> {
        let mut rows: Vec<MessageRow> = on_db!(self, pool => {
            let mut rows: Vec<MessageRow> = sqlx::query_as(
                "SELECT inbox_id AS id, 'inbound' AS direction, wa_message_id, ghl_message_id, kind, state, attempts, \
                   last_error, received_at, relayed_at AS done_at FROM inbox \
                 WHERE location_id = $1 AND ($2 IS NULL OR state = $2) AND received_at < $3 \
                 ORDER BY received_at DESC, inbox_id DESC LIMIT $4",
            )
            .bind(location_id)
            .bind(state)
            .bind(before)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            let outbound: Vec<MessageRow> = sqlx::query_as(
                "SELECT o.outbox_id AS id, 'outbound' AS direction, \
                   (SELECT MIN(m.wa_message_id) FROM message_map m WHERE m.outbox_id = o.outbox_id) AS wa_message_id, \
                   o.ghl_message_id, NULL AS kind, o.state, o.attempts, o.last_error, o.received_at, \
                   o.sent_at AS done_at FROM outbox o \
                 WHERE o.location_id = $1 AND ($2 IS NULL OR o.state = $2) AND o.received_at < $3 \
                 ORDER BY o.received_at DESC, o.outbox_id DESC LIMIT $4",
            )
            .bind(location_id)
            .bind(state)
            .bind(before)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.extend(outbound);
            rows
        });
        rows.sort_by(|a, b| b.received_at.cmp(&a.received_at).then(b.id.cmp(&a.id)));
        rows.truncate(limit.max(0) as usize);
        Ok(rows)
    }

    /// The location a message belongs to and its state.
    pub async fn message_location(&self, message: MessageRef) -> Result<(String, String)> {
        let row: Option<(String, String)> = on_db!(self, pool => {
            match message {
                MessageRef::Inbound(id) => {
                    sqlx::query_as("SELECT location_id, state FROM inbox WHERE inbox_id = $1")
                        .bind(id)
                        .fetch_optional(pool)
                        .await?
                }
                MessageRef::Outbound(id) => {
                    sqlx::query_as("SELECT location_id, state FROM outbox WHERE outbox_id = $1")
                        .bind(id)
                        .fetch_optional(pool)
                        .await?
                }
            }
        });
        row.ok_or(StoreError::NotFound)
    }
}

impl Store {
    /// Retention: forgets the bodies and media references of finished messages received
    /// before `before` (unix ms); ids, states and times stay. Returns how many rows.
    pub async fn purge_bodies(&self, before: i64) -> Result<u64> {
        Ok(on_db!(self, pool => {
            let inbound = sqlx::query(
                "UPDATE inbox SET body = NULL, media_ref = NULL WHERE received_at < $1 \
                 AND state IN ('relayed', 'skipped', 'dead') AND (body IS NOT NULL OR media_ref IS NOT NULL)",
            )
            .bind(before)
            .execute(pool)
            .await?
            .rows_affected();
            let outbound = sqlx::query(
                "UPDATE outbox SET body = NULL WHERE received_at < $1 \
                 AND state IN ('sent', 'delivered', 'read', 'failed', 'dead') AND body IS NOT NULL",
            )
            .bind(before)
            .execute(pool)
            .await?
            .rows_affected();
            inbound + outbound
        }))
    }
}
