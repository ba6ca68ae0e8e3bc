//! The intake: provider webhooks are queued through group commit (see `group_commit`), so
//! concurrent requests share a durable commit instead of each paying for its own. A request is
//! answered only after the transaction holding its row committed; when a batch's commit fails,
//! its rows are written one by one, and a row that still fails is answered with the error (GHL
//! retries).

use tokio_util::task::TaskTracker;

use crate::group_commit::{self, GroupCommit, Stopping, answer_or_return};
use crate::relay::Postbox;
pub use crate::store::Queued;
use crate::store::{IntakeRow, Store};

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("the message could not be stored ({0}); retry")]
    Store(String),
    #[error(transparent)]
    Stopping(#[from] Stopping),
}

type Job = group_commit::Job<IntakeRow, Result<Queued, IntakeError>>;

/// The handle requests queue through; cheap to clone.
#[derive(Clone, Default)]
pub struct Intake {
    writer: GroupCommit<IntakeRow, Result<Queued, IntakeError>>,
}

impl Intake {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `row` and waits until the transaction holding it committed. The store judges
    /// the row with its batch: an unknown location, or a message that can never be sent.
    pub async fn queue(&self, row: IntakeRow) -> Result<Queued, IntakeError> {
        self.writer.submit(row).await?
    }

    /// Starts the writer on `tasks`; it wakes the outbound relay (`postbox`) after each batch
    /// that queued a message.
    pub fn spawn(&self, store: Store, postbox: Postbox, tasks: &TaskTracker) {
        self.writer.spawn(tasks, &store, move |store, batch| {
            let postbox = postbox.clone();
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
/// arrived with. The relay is woken once per batch, not once per request: each wake costs it a
/// round of queries (a claim, the statuses to report), and a wake per request made the relay's
/// rounds take most of the database's time while webhooks poured in. A batch of several tells
/// the relay that webhooks crowd in, so it yields to them (`relay::crowd`).
async fn commit(store: &Store, postbox: &Postbox, batch: Vec<Job>) {
    postbox.intake_committed(batch.len());
    let mut rows = Vec::with_capacity(batch.len());
    let mut requests = Vec::with_capacity(batch.len());
    for Job { job, reply } in batch {
        requests.push(group_commit::Job { job: rows.len(), reply });
        rows.push(job);
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
    let queued = store
        .enqueue_outbound_batch(rows)
        .await
        .map_err(|e| IntakeError::Store(e.to_string()))?;
    if queued.iter().any(|q| matches!(q, Queued::New(_))) {
        postbox.wake_outbound();
    }
    Ok(queued)
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
            written_at: None,
            webhook_id: None,
        }
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
                    let queued = intake.queue(row(&format!("m{}", i % 30))).await.unwrap();
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

        // The database refuses every row from now on.
        store
            .execute_raw("CREATE TRIGGER refuse BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'refused'); END")
            .await;
        let (a, b) = tokio::join!(intake.queue(row("x1")), intake.queue(row("x2")));
        assert!(matches!(a, Err(IntakeError::Store(_))) && matches!(b, Err(IntakeError::Store(_))));
        intake.close();
        tasks.close();
        tasks.wait().await;
        assert!(matches!(intake.queue(row("x3")).await, Err(IntakeError::Stopping(_))));
    }
}
