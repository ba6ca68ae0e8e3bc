//! The intake writer: provider webhooks are queued by one task that writes everything waiting
//! at that moment in one transaction (group commit), so concurrent requests share a durable
//! commit instead of each paying for its own. A request is answered only after the transaction
//! holding its row committed; a failed commit fails every request of its batch (GHL retries).

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::store::{IntakeRow, Store};

/// Most rows per transaction: bounds one commit's latency under a burst.
const BATCH: usize = 256;
/// Requests waiting for the writer; a full queue makes new requests wait (backpressure).
const QUEUE: usize = 4096;

/// What became of one webhook's row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queued {
    /// Committed with this outbox id.
    New(i64),
    /// Its `webhookId` or `messageId` was queued before: nothing changed.
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("the message could not be stored ({0}); retry")]
    Store(String),
    #[error("waghl is stopping; retry")]
    Stopping,
}

struct Job {
    row: IntakeRow,
    reply: oneshot::Sender<Result<Queued, IntakeError>>,
}

/// The handle requests queue through; cheap to clone.
#[derive(Clone)]
pub struct Intake {
    jobs: mpsc::Sender<Job>,
    /// Taken once by [`Intake::spawn`].
    receiver: Arc<Mutex<Option<mpsc::Receiver<Job>>>>,
    /// Stops the writer once it wrote what is queued (after the HTTP server stopped).
    stop: CancellationToken,
}

impl Default for Intake {
    fn default() -> Self {
        Self::new()
    }
}

impl Intake {
    pub fn new() -> Self {
        let (jobs, receiver) = mpsc::channel(QUEUE);
        Self {
            jobs,
            receiver: Arc::new(Mutex::new(Some(receiver))),
            stop: CancellationToken::new(),
        }
    }

    /// Queues `row` and waits until the transaction holding it committed.
    pub async fn queue(&self, row: IntakeRow) -> Result<Queued, IntakeError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { row, reply })
            .await
            .map_err(|_| IntakeError::Stopping)?;
        answer.await.map_err(|_| IntakeError::Stopping)?
    }

    /// Starts the writer on `tasks`.
    pub fn spawn(&self, store: Store, tasks: &TaskTracker) {
        let receiver = self
            .receiver
            .lock()
            .expect("the intake lock is never poisoned")
            .take()
            .expect("the intake writer is started once");
        tasks.spawn(write(store, receiver, self.stop.clone()));
    }

    /// Lets the writer finish what is queued, then stop. Called once no request can arrive.
    pub fn close(&self) {
        self.stop.cancel();
    }
}

/// The writer: takes everything queued now (up to [`BATCH`]), commits it, answers each request.
async fn write(store: Store, mut receiver: mpsc::Receiver<Job>, stop: CancellationToken) {
    loop {
        let mut batch = Vec::with_capacity(BATCH);
        let first = tokio::select! {
            job = receiver.recv() => job,
            () = stop.cancelled() => {
                receiver.close();
                receiver.recv().await
            }
        };
        let Some(first) = first else { return };
        batch.push(first);
        while batch.len() < BATCH
            && let Ok(job) = receiver.try_recv()
        {
            batch.push(job);
        }
        commit(&store, batch).await;
    }
}

/// Writes `batch` in one transaction, then answers each request.
async fn commit(store: &Store, batch: Vec<Job>) {
    let (rows, replies): (Vec<IntakeRow>, Vec<_>) = batch.into_iter().map(|job| (job.row, job.reply)).unzip();
    match store.enqueue_outbound_batch(&rows).await {
        Ok(ids) => {
            for (reply, id) in replies.into_iter().zip(ids) {
                // A request that gave up (client gone) needs no answer; its row is committed.
                let _ = reply.send(Ok(id.map_or(Queued::Duplicate, Queued::New)));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, rows = rows.len(), "the intake could not commit a batch");
            let cause = e.to_string();
            for reply in replies {
                let _ = reply.send(Err(IntakeError::Store(cause.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;
    use crate::store::DatabaseUrl;

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

    #[tokio::test]
    async fn each_request_is_answered_after_its_row_committed_and_a_failed_commit_fails_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::parse(&format!("sqlite://{}/w.db", dir.path().display())).unwrap();
        let store = Store::connect(&url, Arc::new(SecretKey::from_bytes(&[1; 32]).unwrap()))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let intake = Intake::new();
        let tasks = TaskTracker::new();
        intake.spawn(store.clone(), &tasks);
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

        store.close().await;
        let (a, b) = tokio::join!(intake.queue(row("x1")), intake.queue(row("x2")));
        assert!(matches!(a, Err(IntakeError::Store(_))) && matches!(b, Err(IntakeError::Store(_))));
        intake.close();
        tasks.close();
        tasks.wait().await;
        assert!(matches!(intake.queue(row("x3")).await, Err(IntakeError::Stopping)));
    }
}
