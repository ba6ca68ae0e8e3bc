//! Who holds a queue row's claim. A claim names the process incarnation that took it
//! (`claimed_by`) and lasts until `claimed_until`: the holder renews it while its work runs, a
//! dead holder's claim expires, and a restarted instance releases the claims of its own earlier
//! lives at once — they are certainly dead, and waiting for them would stall every chat whose
//! head they held.

use super::heads::ChatKey;
use super::{Result, Store, on_db};
use crate::domain::Incarnation;

/// Which queue a claim is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queue {
    Inbox,
    Outbox,
}

impl Store {
    /// Releases the claims held by earlier incarnations of this instance (and claims that name
    /// no holder, taken before holders were recorded). Returns how many rows, per queue.
    pub async fn release_claims_of_earlier_lives(&self, me: &Incarnation) -> Result<(u64, u64)> {
        const RELEASE: [&str; 2] = [
            "UPDATE inbox SET claimed_until = NULL, claimed_by = NULL WHERE claimed_until IS NOT NULL \
               AND (claimed_by IS NULL OR (claimed_by <> $1 AND substr(claimed_by, 1, length($2)) = $2))",
            "UPDATE outbox SET claimed_until = NULL, claimed_by = NULL WHERE claimed_until IS NOT NULL \
               AND (claimed_by IS NULL OR (claimed_by <> $1 AND substr(claimed_by, 1, length($2)) = $2))",
        ];
        let mut released = [0; 2];
        for (count, sql) in released.iter_mut().zip(RELEASE) {
            *count = on_db!(self, pool => {
                sqlx::query(sql)
                    .bind(me.as_str())
                    .bind(me.instance_prefix())
                    .execute(pool)
                    .await?
                    .rows_affected()
            });
        }
        Ok((released[0], released[1]))
    }

    /// Extends a claim this incarnation holds until `until` (unix ms); false when it no longer
    /// holds it (released, finished, or taken over after it expired).
    pub async fn renew_claim(&self, queue: Queue, row_id: i64, me: &Incarnation, until: i64) -> Result<bool> {
        let renewed = on_db!(self, pool => {
            match queue {
                Queue::Inbox => sqlx::query(
                    "UPDATE inbox SET claimed_until = $3 WHERE inbox_id = $1 AND claimed_by = $2 \
                       AND claimed_until IS NOT NULL",
                ),
                Queue::Outbox => sqlx::query(
                    "UPDATE outbox SET claimed_until = $3 WHERE outbox_id = $1 AND claimed_by = $2 \
                       AND claimed_until IS NOT NULL",
                ),
            }
            .bind(row_id)
            .bind(me.as_str())
            .bind(until)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(renewed == 1)
    }

    /// Lets go of a claim this incarnation took for a row it already works on (its task had
    /// just finished, or not yet been reaped): left alone, the claim would hold the row until
    /// it expires.
    pub async fn release_claim(&self, queue: Queue, row_id: i64, me: &Incarnation) -> Result<()> {
        on_db!(self, pool => {
            match queue {
                Queue::Inbox => sqlx::query(
                    "UPDATE inbox SET claimed_until = NULL, claimed_by = NULL WHERE inbox_id = $1 AND claimed_by = $2",
                ),
                Queue::Outbox => sqlx::query(
                    "UPDATE outbox SET claimed_until = NULL, claimed_by = NULL WHERE outbox_id = $1 AND claimed_by = $2",
                ),
            }
            .bind(row_id)
            .bind(me.as_str())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// A task panicked on a row this incarnation holds: count the attempt, say so, and try again
    /// at `at` — or give the row up as `dead` when it has been failing since before
    /// `dead_if_since_before` (a message that crashes the relay every time must not retry forever).
    pub async fn release_after_panic(
        &self,
        queue: Queue,
        row_id: i64,
        me: &Incarnation,
        at: i64,
        dead_if_since_before: i64,
    ) -> Result<()> {
        const ERROR: &str = "the relay crashed while handling this message";
        let chat: Option<(String, String)> = on_db!(self, pool => {
            sqlx::query_as(match queue {
                Queue::Inbox => {
                    "UPDATE inbox SET claimed_until = NULL, claimed_by = NULL, attempts = attempts + 1, \
                       next_attempt_at = $3, last_error = $4, updated_at = $5, \
                       state = CASE WHEN retry_from < $6 THEN 'dead' ELSE state END, \
                       head = CASE WHEN retry_from < $6 THEN 0 ELSE head END \
                     WHERE inbox_id = $1 AND claimed_by = $2 AND state = 'pending' RETURNING location_id, chat"
                }
                Queue::Outbox => {
                    "UPDATE outbox SET claimed_until = NULL, claimed_by = NULL, attempts = attempts + 1, \
                       next_attempt_at = $3, last_error = $4, updated_at = $5, \
                       state = CASE WHEN retry_from < $6 THEN 'dead' ELSE state END, \
                       head = CASE WHEN retry_from < $6 THEN 0 ELSE head END, \
                       report_after = CASE WHEN retry_from < $6 THEN $5 ELSE report_after END \
                     WHERE outbox_id = $1 AND claimed_by = $2 AND state IN ('pending', 'sending') \
                     RETURNING location_id, to_phone"
                }
            })
            .bind(row_id)
            .bind(me.as_str())
            .bind(at)
            .bind(ERROR)
            .bind(crate::time::now_ms())
            .bind(dead_if_since_before)
            .fetch_optional(pool)
            .await?
        });
        // A row given up ends: its chat needs its next head.
        if let Some((location, chat)) = &chat {
            self.fix_head(match queue {
                Queue::Inbox => ChatKey::Inbox { location, chat },
                Queue::Outbox => ChatKey::Outbox { location, phone: chat },
            })
            .await?;
        }
        Ok(())
    }
}
