//! The intake: provider webhooks are queued through group commit (see `group_commit`), so
//! concurrent requests share a durable commit instead of each paying for its own. A request is
//! answered only after the transaction holding its row committed; when a batch's commit fails,
//! its rows are written one by one, and a row that still fails is answered with the error (GHL
//! retries).

use tokio_util::task::TaskTracker;

use crate::group_commit::{self, GroupCommit, Stopping, answer_or_return};
use crate::relay::Postbox;
use crate::store::{IntakeRow, Store};

/// What became of one webhook's row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queued {
    /// Committed with this outbox id.
    New(i64),
    /// Its `webhookId` or `messageId` was queued before: nothing changed.
    Duplicate,
    /// Its location is not installed: nothing stored.
    UnknownLocation,
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("the message could not be stored ({0}); retry")]
    Store(String),
    #[error(transparent)]
    Stopping(#[from] Stopping),
}

/// One webhook's row, waiting for its batch.
pub struct Pending {
    row: IntakeRow,
    /// When GHL says the message was written, to tell a replay of old messages.
    written_at: Option<i64>,
}

type Job = group_commit::Job<Pending, Result<Queued, IntakeError>>;

/// The handle requests queue through; cheap to clone.
#[derive(Clone, Default)]
pub struct Intake {
    writer: GroupCommit<Pending, Result<Queued, IntakeError>>,
}

impl Intake {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `row` (written in GHL at `written_at`, when GHL says) and waits until the
    /// transaction holding it committed. The writer judges the row with its batch: an unknown
    /// location, or a message that can never be sent (`row.failure` is set then).
    pub async fn queue(&self, row: IntakeRow, written_at: Option<i64>) -> Result<Queued, IntakeError> {
        self.writer.submit(Pending { row, written_at }).await?
    }

    /// Starts the writer on `tasks`; it wakes the outbound relay (`postbox`) after each batch
    /// that queued a message.
    pub fn spawn(&self, store: Store, postbox: Postbox, tasks: &TaskTracker) {
        self.writer.spawn(tasks, store.writers(), move |batch| {
            let (store, postbox) = (store.clone(), postbox.clone());
            async move { commit(&store, &postbox, batch).await }
        });
    }

    /// Lets the writer finish what is queued, then stop. Called once no request can arrive.
    pub fn close(&self) {
        self.writer.close();
    }
}

/// Writes `batch` in one transaction, then answers each request; when that transaction fails,
/// each row is written alone, so that one row the database refuses cannot fail the webhooks it
/// arrived with. One query first reads what every row's location needs (installed? paired
/// when?), so a request costs no read of its own. The relay is woken once per batch, not once
/// per request: each wake costs it a round of queries (a claim, the statuses to report), and a
/// wake per request made the relay's rounds take most of the database's time while webhooks
/// poured in. A batch of several tells the relay that webhooks crowd in, so it yields to them
/// (`relay::crowd`).
async fn commit(store: &Store, postbox: &Postbox, batch: Vec<Job>) {
    postbox.intake_committed(batch.len());
    let mut locations: Vec<&str> = batch.iter().map(|job| job.job.row.location_id.as_str()).collect();
    locations.sort_unstable();
    locations.dedup();
    let facts = match store.intake_facts(&locations).await {
        Ok(facts) => facts,
        Err(e) => return fail(batch, &e),
    };
    // The rows to write, and their requests, each naming its row.
    let mut rows = Vec::with_capacity(batch.len());
    let mut requests = Vec::with_capacity(batch.len());
    for Job { job, reply } in batch {
        match facts.get(&job.row.location_id) {
            None => {
                let _ = reply.send(Ok(Queued::UnknownLocation));
            }
            Some(paired_at) => {
                let mut row = job.row;
                row.failure = unsendable(*paired_at, job.written_at);
                requests.push(group_commit::Job { job: rows.len(), reply });
                rows.push(row);
            }
        }
    }
    if rows.is_empty() {
        return;
    }
    let together = queue(store, postbox, &rows).await;
    for request in answer_or_return("webhooks", requests, together) {
        let row = &rows[request.job];
        let alone = queue(store, postbox, std::slice::from_ref(row)).await;
        if let Err(e) = &alone {
            tracing::error!(error = %e, location.id = %row.location_id, "the intake could not store a webhook");
        }
        let _ = request.reply.send(alone.map(|queued| queued[0]));
    }
}

/// Queues `rows` in one transaction: what became of each, in order.
async fn queue(store: &Store, postbox: &Postbox, rows: &[IntakeRow]) -> Result<Vec<Queued>, IntakeError> {
    let ids = store
        .enqueue_outbound_batch(rows)
        .await
        .map_err(|e| IntakeError::Store(e.to_string()))?;
    if ids.iter().any(Option::is_some) {
        postbox.wake_outbound();
    }
    Ok(ids
        .into_iter()
        .map(|id| id.map_or(Queued::Duplicate, Queued::New))
        .collect())
}

/// Answers every request of `batch` with the store's error.
fn fail(batch: Vec<Job>, e: &crate::store::StoreError) {
    tracing::error!(error = %e, rows = batch.len(), "the intake could not read its batch's locations");
    for job in batch {
        let _ = job.reply.send(Err(IntakeError::Store(e.to_string())));
    }
}

/// A message that can never be sent, decided at once instead of after the TTL: the location's
/// WhatsApp was never paired, or GHL is replaying a message written before it was (seen after
/// installs).
fn unsendable(paired_at: Option<i64>, written_at: Option<i64>) -> Option<&'static str> {
    match (paired_at, written_at) {
        (None, _) => Some("WhatsApp not paired"),
        (Some(paired), Some(written)) if written < paired => {
            Some("written before WhatsApp was paired (GHL replayed an old message); not sent")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn row(message: &str) -> IntakeRow {
        IntakeRow {
            location_id: "loc".into(),
            ghl_message_id: message.into(),
            ghl_contact_id: None,
            to_phone: "+14155550001".into(),
            body: "{}".into(),
            failure: None,
            webhook_id: None,
        }
    }

    #[test]
    fn a_message_that_can_never_be_sent_is_failed_at_once() {
        assert_eq!(unsendable(None, None), Some("WhatsApp not paired"));
        assert!(unsendable(Some(2_000), Some(1_000)).unwrap().contains("written before"));
        assert_eq!(unsendable(Some(2_000), Some(3_000)), None);
        assert_eq!(unsendable(Some(2_000), None), None);
    }

    #[tokio::test]
    async fn each_request_is_answered_after_its_row_committed_and_a_failed_commit_fails_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::migrated_sqlite_in(dir.path()).await;
        let tokens = crate::store::GhlTokens {
            access_token: crate::crypto::Secret::new("token"),
            refresh_token: None,
            expires_at: i64::MAX / 2,
        };
        let installed = crate::store::NewLocation {
            location_id: "loc",
            company_id: None,
            name: None,
            tokens: &tokens,
            source: crate::store::TokenSource::Oauth,
        };
        store.upsert_location(installed).await.unwrap();
        let intake = Intake::new();
        let tasks = TaskTracker::new();
        let postbox = crate::relay::Postbox::new(store.clone(), Arc::new(crate::metrics::Metrics::new()));
        intake.spawn(store.clone(), postbox, &tasks);
        let requests: Vec<_> = (0..40)
            .map(|i| {
                let (intake, store) = (intake.clone(), store.clone());
                tokio::spawn(async move {
                    let queued = intake.queue(row(&format!("m{}", i % 30)), None).await.unwrap();
                    // Answered: the row is visible to any other connection.
                    if let Queued::New(id) = queued {
                        let count = store.outbound_count("loc").await.unwrap();
                        assert!(count >= 1, "{id} answered before its commit");
                    }
                    queued
                })
            })
            .collect();
        let mut new = 0;
        for request in requests {
            new += usize::from(matches!(request.await.unwrap(), Queued::New(_)));
        }
        assert_eq!(new, 30, "ten repeats are duplicates");
        assert_eq!(store.outbound_count("loc").await.unwrap(), 30);

        store.close().await;
        let (a, b) = tokio::join!(intake.queue(row("x1"), None), intake.queue(row("x2"), None));
        assert!(matches!(a, Err(IntakeError::Store(_))) && matches!(b, Err(IntakeError::Store(_))));
        intake.close();
        tasks.close();
        tasks.wait().await;
        assert!(matches!(
            intake.queue(row("x3"), None).await,
            Err(IntakeError::Stopping(_))
        ));
    }
}
