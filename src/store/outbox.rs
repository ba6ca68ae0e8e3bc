//! The outbound queue (GHL → WhatsApp): one row per GHL message, keyed by GHL's `messageId`.

use super::heads::{ChatKey, in_chat_tx, promote_in};
use super::{Db, Dialects, Result, Store, json, on_db};
use crate::domain::{Incarnation, OutboxState, PartStatus};
use crate::time::now_ms;

/// Ranks a state column in SQL in [`OutboxState`]'s and [`PartStatus`]'s order, for updates
/// that must never move a message or a part backwards. `failed` and `dead` share the terminal
/// rank (both are reported to GHL as failed); `handed` is a part's only. Tests check it against
/// the types' order.
macro_rules! rank {
    ($column:literal) => {
        concat!(
            "CASE ",
            $column,
            " WHEN 'pending' THEN 0 WHEN 'sending' THEN 1 WHEN 'handed' THEN 2 WHEN 'sent' THEN 3 ",
            "WHEN 'delivered' THEN 4 WHEN 'read' THEN 5 ELSE 6 END"
        )
    };
}
pub(super) use rank;

/// A part's status moves forward, never back; returns its outbox row, if it is one of waghl's
/// sends.
pub(super) const ADVANCE_PART: &str = concat!(
    "UPDATE message_map SET status = $3, updated_at = $4 WHERE location_id = $1 AND wa_message_id = $2 \
     AND direction = 'outbound' AND ",
    rank!("status"),
    " < ",
    rank!("$3"),
    " RETURNING outbox_id"
);

/// A message's parts, in order.
pub(super) const PARTS: &str =
    "SELECT part_index, wa_message_id, status FROM message_map WHERE outbox_id = $1 ORDER BY part_index";

/// Due status reports, oldest first, but for the ids in the JSON array `$3`.
macro_rules! statuses_due {
    ($skipped:literal) => {
        concat!(
            "SELECT outbox_id, location_id, ghl_message_id, state, last_error FROM outbox \
             WHERE report_after IS NOT NULL AND report_after <= $1 \
               AND state IN ('sent', 'delivered', 'read', 'failed', 'dead') \
               AND (reported_status IS NULL OR ",
            rank!("reported_status"),
            " < ",
            rank!("state"),
            ") AND outbox_id NOT IN (",
            $skipped,
            ") ORDER BY report_after LIMIT $2"
        )
    };
}
const STATUSES_DUE: Dialects = Dialects {
    sqlite: statuses_due!("SELECT value FROM json_each($3)"),
    postgres: statuses_due!("SELECT jsonb_array_elements_text($3::jsonb)::bigint"),
};

/// Sets a message's state ($2) from its parts; never backwards, never out of `failed`. With $4
/// false (a receipt, not the sender) a message still being sent is left alone: its later
/// parts are not committed yet.
pub(super) const SETTLE: &str = concat!(
    "UPDATE outbox SET state = $2, head = 0, sent_at = COALESCE(sent_at, $3), updated_at = $3, \
       claimed_until = NULL, claimed_by = NULL, last_error = NULL, report_after = $3 \
     WHERE outbox_id = $1 AND state <> 'failed' AND state <> 'dead' \
       AND ($4 OR state NOT IN ('pending', 'sending')) AND ",
    rank!("state"),
    " < ",
    rank!("$2")
);

/// The state a message settles in: its least advanced part's status, once every part was at
/// least sent; `None` while one is not, or when one failed (a refused part fails the message
/// on its own path, with its reason).
pub(super) fn settled(parts: &[PartRow]) -> Option<PartStatus> {
    if parts.iter().any(|p| p.status == PartStatus::Failed) {
        return None;
    }
    parts
        .iter()
        .map(|p| p.status)
        .min()
        .filter(|least| *least >= PartStatus::Sent)
}

/// A claimed outbound row.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct OutboxRow {
    pub outbox_id: i64,
    pub location_id: String,
    pub ghl_message_id: String,
    pub to_phone: String,
    pub body: Option<String>,
    pub attempts: i64,
    pub received_at: i64,
    pub retry_from: i64,
}

/// A part (one WhatsApp message) of an outbound message, as committed before it is sent.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct PartRow {
    pub part_index: i64,
    pub wa_message_id: String,
    #[sqlx(try_from = "String")]
    pub status: PartStatus,
}

/// An outbound message whose status GHL has not been told yet.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct StatusToReport {
    pub outbox_id: i64,
    pub location_id: String,
    pub ghl_message_id: String,
    #[sqlx(try_from = "String")]
    pub state: OutboxState,
    pub last_error: Option<String>,
}

pub struct NewOutbound<'a> {
    pub location_id: &'a str,
    pub ghl_message_id: &'a str,
    pub ghl_contact_id: Option<&'a str>,
    pub to_phone: &'a str,
    /// JSON of what to send (text, attachment URLs, quoted message).
    pub body: &'a str,
}

/// Fails the messages never attempted that waited since before `$1` (at `$2`). The `IN` term
/// repeats what `state = 'pending'` says so that SQLite reads the index of waiting rows: it does
/// not see that the one implies the other, and would scan the whole outbox, holding the write
/// lock, every poll.
const EXPIRE_NEVER_ATTEMPTED: &str = "UPDATE outbox SET state = 'failed', head = 0, last_error = 'WhatsApp not connected', \
     updated_at = $2, report_after = $2 WHERE state = 'pending' AND state IN ('pending', 'sending') AND attempts = 0 \
     AND retry_from < $1 AND (claimed_until IS NULL OR claimed_until < $2) RETURNING location_id, to_phone";

impl Store {
    /// Queues a GHL message; `None` when that `messageId` was queued before (a GHL retry).
    /// With `failure`, the message is recorded as failed at once (e.g. WhatsApp never paired)
    /// and GHL is told why.
    pub async fn enqueue_outbound(&self, new: NewOutbound<'_>, failure: Option<&str>) -> Result<Option<i64>> {
        let now = now_ms();
        let (state, report_after) = match failure {
            None => (OutboxState::Pending, None),
            Some(_) => (OutboxState::Failed, Some(now)),
        };
        let key = ChatKey::Outbox {
            location: new.location_id,
            phone: new.to_phone,
        };
        // A pending message is its chat's head when nothing of the chat is unfinished before it.
        Ok(in_chat_tx!(self, key, tx => {
            sqlx::query_scalar(
                "INSERT INTO outbox (location_id, ghl_message_id, ghl_contact_id, to_phone, body, state, last_error, \
                   attempts, next_attempt_at, retry_from, received_at, updated_at, report_after, head) \
                 VALUES ($1, $2, $3, $4, $5, $7, $8, 0, $6, $6, $6, $6, $9, \
                   CASE WHEN $7 = 'pending' AND NOT EXISTS (SELECT 1 FROM outbox WHERE location_id = $1 \
                     AND to_phone = $4 AND state IN ('pending', 'sending')) THEN 1 ELSE 0 END) \
                 ON CONFLICT (location_id, ghl_message_id) DO NOTHING RETURNING outbox_id",
            )
            .bind(new.location_id)
            .bind(new.ghl_message_id)
            .bind(new.ghl_contact_id)
            .bind(new.to_phone)
            .bind(new.body)
            .bind(now)
            .bind(state.as_str())
            .bind(failure)
            .bind(report_after)
            .fetch_optional(&mut *tx)
            .await?
        }))
    }

    /// How many outbound messages a location has received in all (for tests and metrics).
    pub async fn outbound_count(&self, location_id: &str) -> Result<i64> {
        Ok(on_db!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE location_id = $1")
                .bind(location_id)
                .fetch_one(pool)
                .await?
        }))
    }

    /// Puts dead outbound rows back in the queue: one, or all of a location's. Parts already
    /// given a WhatsApp id keep it, so a replay never sends a second copy.
    pub async fn retry_dead_outbound(&self, location_id: &str, outbox_id: Option<i64>) -> Result<u64> {
        let now = now_ms();
        let mut phones: Vec<String> = on_db!(self, pool => {
            sqlx::query_scalar(
                "UPDATE outbox SET state = 'pending', head = 0, attempts = 0, next_attempt_at = $3, retry_from = $3, \
                   claimed_until = NULL, claimed_by = NULL, updated_at = $3, reported_status = NULL, report_after = NULL \
                 WHERE location_id = $1 AND state = 'dead' AND ($2 IS NULL OR outbox_id = $2) AND body IS NOT NULL \
                 RETURNING to_phone",
            )
            .bind(location_id)
            .bind(outbox_id)
            .bind(now)
            .fetch_all(pool)
            .await?
        });
        let replayed = phones.len() as u64;
        phones.sort();
        phones.dedup();
        for phone in &phones {
            self.fix_head(ChatKey::Outbox {
                location: location_id,
                phone,
            })
            .await?;
        }
        Ok(replayed)
    }

    /// Claims up to `limit` rows: the oldest unfinished message of each chat (first in, first
    /// out per recipient), when due and unclaimed, for installed locations whose WhatsApp is
    /// connected on this instance (`holder` holds its lease: with several instances each sends
    /// for the sessions it runs). A message interrupted mid-send (`sending`) is resumed first.
    pub async fn claim_outbox_batch(&self, limit: i64, claim_ms: i64, holder: &Incarnation) -> Result<Vec<OutboxRow>> {
        macro_rules! heads {
            () => {
                "SELECT h.outbox_id FROM outbox h \
                   JOIN locations l ON l.location_id = h.location_id AND l.status = 'installed' \
                       JOIN wa_sessions s ON s.location_id = h.location_id AND s.state = 'connected' AND s.owner = $4 \
                   WHERE h.state IN ('pending', 'sending') AND h.head = 1 AND h.next_attempt_at <= $1 \
                     AND (h.claimed_until IS NULL OR h.claimed_until < $1) \
                   ORDER BY h.next_attempt_at LIMIT $2"
            };
        }
        let now = now_ms();
        Ok(match &self.db {
            Db::Sqlite(pool) => {
                sqlx::query_as(concat!(
                    "UPDATE outbox SET claimed_until = $3, claimed_by = $4 WHERE outbox_id IN (",
                    heads!(),
                    ") AND state IN ('pending', 'sending') AND (claimed_until IS NULL OR claimed_until < $1) RETURNING outbox_id, location_id, ghl_message_id, to_phone, body, attempts, received_at, retry_from"
                ))
                    .bind(now)
                    .bind(limit)
                    .bind(now + claim_ms)
                    .bind(holder.as_str())
                    .fetch_all(pool)
                    .await?
            }
            // Several workers (and instances) skip each other's rows instead of waiting.
            Db::Postgres(pool) => {
                // Picked once, in a CTE: a subquery with SKIP LOCKED inside `IN (…)` may run again per
                // row and pick more than the limit. The update joins on the id alone: the rows are
                // locked and were re-checked as locked, and a filter of its own let a plan made while
                // the table was empty read every unfinished row (`outbox_waiting`) at each claim.
                sqlx::query_as(concat!(
                    "WITH picked AS (",
                    heads!(),
                    " FOR UPDATE OF h SKIP LOCKED) UPDATE outbox SET claimed_until = $3, claimed_by = $4 FROM picked \
                     WHERE outbox.outbox_id = picked.outbox_id \
                     RETURNING outbox.outbox_id, location_id, ghl_message_id, to_phone, body, attempts, received_at, retry_from"
                ))
                    .bind(now)
                    .bind(limit)
                    .bind(now + claim_ms)
                    .bind(holder.as_str())
                    .fetch_all(pool)
                    .await?
            }
        })
    }

    /// The parts committed so far, in order.
    pub async fn outbound_parts(&self, outbox_id: i64) -> Result<Vec<PartRow>> {
        Ok(on_db!(self, pool => {
            sqlx::query_as(PARTS)
            .bind(outbox_id)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Advances a part's status (never backwards); returns its outbox row, if it is one of
    /// waghl's sends.
    pub async fn advance_part(
        &self,
        location_id: &str,
        wa_message_id: &str,
        status: PartStatus,
    ) -> Result<Option<i64>> {
        let outbox_id: Option<Option<i64>> = on_db!(self, pool => {
            sqlx::query_scalar(ADVANCE_PART)
            .bind(location_id)
            .bind(wa_message_id)
            .bind(status.as_str())
            .bind(now_ms())
            .fetch_optional(pool)
            .await?
        });
        Ok(outbox_id.flatten())
    }

    /// A receipt moved a part of a message that was sent: the message follows its least
    /// advanced part (the sender settles its own message through [`Store::write_outbox`]).
    pub async fn settle_outbound(&self, outbox_id: i64) -> Result<()> {
        let Some(least) = settled(&self.outbound_parts(outbox_id).await?) else {
            return Ok(());
        };
        on_db!(self, pool => {
            sqlx::query(SETTLE)
                .bind(outbox_id)
                .bind(least.as_str())
                .bind(now_ms())
                .bind(false)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Terminal failure, reported to GHL as failed (`dead` when retries ran out: replayable).
    pub async fn fail_outbound(&self, outbox_id: i64, state: OutboxState, error: &str) -> Result<()> {
        let (location, phone): (String, String) = on_db!(self, pool => {
            sqlx::query_as("SELECT location_id, to_phone FROM outbox WHERE outbox_id = $1")
                .bind(outbox_id)
                .fetch_one(pool)
                .await?
        });
        let key = ChatKey::Outbox {
            location: &location,
            phone: &phone,
        };
        let now = now_ms();
        in_chat_tx!(self, key, tx => {
            sqlx::query(
                "UPDATE outbox SET state = $2, head = 0, last_error = $3, attempts = attempts + 1, claimed_until = NULL, \
                   claimed_by = NULL, updated_at = $4, report_after = $4 WHERE outbox_id = $1",
            )
            .bind(outbox_id)
            .bind(state.as_str())
            .bind(error)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            promote_in!(tx, key);
        });
        Ok(())
    }

    /// Tries again at `at`; `count` says whether this was an attempt (a wait for the session
    /// to connect is not).
    pub async fn retry_outbound(&self, outbox_id: i64, at: i64, error: &str, count: bool) -> Result<()> {
        on_db!(self, pool => {
            sqlx::query(
                "UPDATE outbox SET next_attempt_at = $2, last_error = $3, attempts = attempts + $4, \
                   claimed_until = NULL, claimed_by = NULL, updated_at = $5 WHERE outbox_id = $1",
            )
            .bind(outbox_id)
            .bind(at)
            .bind(error)
            .bind(i64::from(count))
            .bind(now_ms())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Messages that waited longer than the TTL for WhatsApp to connect without ever being
    /// attempted: failed. Messages attempted before that are stuck past the retry budget (the
    /// session went away meanwhile): dead, so they can be replayed. Returns how many.
    pub async fn expire_outbound(&self, waiting_since_before: i64, budget_since_before: i64) -> Result<u64> {
        let now = now_ms();
        let mut ended: Vec<(String, String)> = on_db!(self, pool => {
            let mut failed: Vec<(String, String)> = sqlx::query_as(EXPIRE_NEVER_ATTEMPTED)
            .bind(waiting_since_before)
            .bind(now)
            .fetch_all(pool)
            .await?;
            let dead: Vec<(String, String)> = sqlx::query_as(
                "UPDATE outbox SET state = 'dead', head = 0, \
                   last_error = 'gave up after the retry budget: ' || COALESCE(last_error, 'WhatsApp not connected'), \
                   updated_at = $2, report_after = $2 WHERE state IN ('pending', 'sending') AND attempts > 0 \
                   AND retry_from < $1 AND (claimed_until IS NULL OR claimed_until < $2) RETURNING location_id, to_phone",
            )
            .bind(budget_since_before)
            .bind(now)
            .fetch_all(pool)
            .await?;
            failed.extend(dead);
            failed
        });
        let expired = ended.len() as u64;
        ended.sort();
        ended.dedup();
        for (location, phone) in &ended {
            self.fix_head(ChatKey::Outbox { location, phone }).await?;
        }
        Ok(expired)
    }

    /// Messages whose current status is ahead of what GHL was told, due for a report, but for
    /// those in `skip` (reports in flight: they stay due until GHL accepted them, and being the
    /// oldest due they would fill the limit, so a round started few new reports and read the
    /// same rows again and again — five reads a report in a drain).
    pub async fn statuses_to_report(&self, limit: i64, skip: &[i64]) -> Result<Vec<StatusToReport>> {
        let sql = STATUSES_DUE.of(self);
        let skip = json(&skip);
        Ok(on_db!(self, pool => {
            sqlx::query_as(sql)
                .bind(now_ms())
                .bind(limit)
                .bind(&skip)
                .fetch_all(pool)
                .await?
        }))
    }

    /// Reporting failed: try again at `at` (a reason that heals), or never (`None`: GHL refused
    /// the report itself).
    pub async fn report_later(&self, outbox_id: i64, at: Option<i64>) -> Result<()> {
        on_db!(self, pool => {
            sqlx::query("UPDATE outbox SET report_after = $2 WHERE outbox_id = $1")
                .bind(outbox_id)
                .bind(at)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Outbound messages waiting, over all locations (the queue-depth gauge).
    pub async fn outbound_pending(&self) -> Result<i64> {
        Ok(on_db!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE state IN ('pending', 'sending')")
                .fetch_one(pool)
                .await?
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn rank_of(pool: &sqlx::SqlitePool, name: &str) -> i64 {
        sqlx::query_scalar(concat!("SELECT ", rank!("$1")))
            .bind(name)
            .fetch_one(pool)
            .await
            .unwrap()
    }

    /// Expiry runs at every poll: on SQLite it reads the index of waiting rows, not the whole
    /// outbox (it held the write lock for 10 ms at 80,000 queued rows).
    #[tokio::test]
    async fn expiry_reads_the_index_of_waiting_rows_not_the_whole_outbox() {
        let steps = crate::store::sqlite_plan(EXPIRE_NEVER_ATTEMPTED).await;
        assert!(
            steps.iter().any(|s| s.contains("USING INDEX outbox_waiting"))
                && !steps.iter().any(|s| s.starts_with("SCAN")),
            "{steps:?}"
        );
    }

    /// A part's ack or receipt finds its row by (location, WhatsApp id): through the unique key,
    /// which leads with the chat, it read every row of the location (the drain slowed as the
    /// map grew).
    #[tokio::test]
    async fn an_ack_finds_its_part_by_its_whatsapp_id_not_by_reading_the_location() {
        crate::store::assert_plan_has(
            ADVANCE_PART,
            "USING INDEX message_map_wa (location_id=? AND wa_message_id=?)",
        )
        .await;
    }

    /// A round of reports skips those in flight, and so reaches the due reports behind them.
    #[tokio::test]
    async fn the_statuses_to_report_skip_those_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::migrated_sqlite_in(dir.path()).await;
        for id in ["g1", "g2", "g3"] {
            let new = NewOutbound {
                location_id: "loc",
                ghl_message_id: id,
                ghl_contact_id: None,
                to_phone: "+14155550001",
                body: "{}",
            };
            store.enqueue_outbound(new, Some("refused")).await.unwrap();
        }
        let messages = |due: Vec<StatusToReport>| due.into_iter().map(|d| d.ghl_message_id).collect::<Vec<_>>();
        let first = store.statuses_to_report(2, &[]).await.unwrap();
        let in_flight: Vec<i64> = first.iter().map(|d| d.outbox_id).collect();
        assert_eq!(messages(first), ["g1", "g2"]);
        let next = store.statuses_to_report(2, &in_flight).await.unwrap();
        assert_eq!(messages(next), ["g3"], "the reports in flight are not read again");
    }

    /// The SQL rank agrees with the type's order (`failed` and `dead` tie: both terminal).
    #[tokio::test]
    async fn the_sql_rank_follows_the_order_of_outbox_states() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        let mut ranked = Vec::new();
        for state in OutboxState::ALL {
            ranked.push((*state, rank_of(&pool, state.as_str()).await));
        }
        for pair in ranked.windows(2) {
            let ((a, rank_a), (b, rank_b)) = (pair[0], pair[1]);
            assert!(a < b);
            if b == OutboxState::Dead {
                assert_eq!(rank_a, rank_b, "{a} and {b}");
            } else {
                assert!(rank_a < rank_b, "{a} ranks {rank_a}, {b} ranks {rank_b}");
            }
        }
    }

    /// Parts rank strictly in their type's order: a `handed` part is below `sent`, so a late
    /// `handed` never undoes an ack that came first, and an ack always moves a handed part on.
    #[tokio::test]
    async fn the_sql_rank_follows_the_order_of_part_statuses() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        for pair in PartStatus::ALL.windows(2) {
            let (a, b) = (
                rank_of(&pool, pair[0].as_str()).await,
                rank_of(&pool, pair[1].as_str()).await,
            );
            assert!(a < b, "{} ranks {a}, {} ranks {b}", pair[0], pair[1]);
        }
    }
}
