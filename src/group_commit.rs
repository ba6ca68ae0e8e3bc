//! Group commit: requests that each need a durable write are queued for one writer task, which
//! takes everything waiting at that moment and writes it in one transaction, so concurrent
//! requests share a commit instead of each paying for its own. Each request is answered only
//! after the transaction holding its row committed. The provider-webhook intake and the inbox
//! both write through one.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Most jobs per transaction: bounds one commit's latency under a burst.
const BATCH: usize = 256;
/// Jobs waiting for the writer; a full queue makes new requests wait (backpressure).
const QUEUE: usize = 4096;

/// One queued job and where its answer goes.
pub struct Job<J, R> {
    pub job: J,
    pub reply: oneshot::Sender<R>,
}

/// The queue's receiving end, until the writer takes it.
type Receiver<J, R> = Arc<Mutex<Option<mpsc::Receiver<Job<J, R>>>>>;

/// Where a group commit's writers run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writers {
    /// This many tasks on the daemon's runtime, committing side by side (PostgreSQL: its
    /// connections are the runtime's sockets).
    Tasks(usize),
    /// One writer on a thread of its own (SQLite). Its statements run on the database's own
    /// threads, outside the runtime, and each answer would wake it in the runtime's shared
    /// queue, behind every request being served: measured, that wait was most of each
    /// statement's time (a `BEGIN` 110–190 µs on the runtime, 35–70 µs on its own thread), and
    /// the one writer is what the intake waits for.
    OwnThread,
}

/// The writer is gone: it was stopped, or never started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("waghl is stopping; retry")]
pub struct Stopping;

/// The handle requests queue through; cheap to clone.
pub struct GroupCommit<J, R> {
    jobs: mpsc::Sender<Job<J, R>>,
    /// Taken once by [`GroupCommit::spawn`].
    receiver: Receiver<J, R>,
    /// Stops the writer once it wrote what is queued.
    stop: CancellationToken,
}

impl<J, R> Clone for GroupCommit<J, R> {
    fn clone(&self) -> Self {
        Self {
            jobs: self.jobs.clone(),
            receiver: self.receiver.clone(),
            stop: self.stop.clone(),
        }
    }
}

impl<J: Send + 'static, R: Send + 'static> Default for GroupCommit<J, R> {
    fn default() -> Self {
        let (jobs, receiver) = mpsc::channel(QUEUE);
        Self {
            jobs,
            receiver: Arc::new(Mutex::new(Some(receiver))),
            stop: CancellationToken::new(),
        }
    }
}

impl<J: Send + 'static, R: Send + 'static> GroupCommit<J, R> {
    /// Queues `job` and waits for the writer's answer, given once its batch committed (or
    /// failed).
    pub async fn submit(&self, job: J) -> Result<R, Stopping> {
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job { job, reply }).await.map_err(|_| Stopping)?;
        answer.await.map_err(|_| Stopping)
    }

    /// Starts the writers on `tasks`: `commit` writes one batch in one transaction and answers
    /// every job of it. Several writers commit batches side by side (PostgreSQL); one takes the
    /// next batch while the others commit, so each batch is what was queued at that moment.
    pub fn spawn<F, Fut>(&self, tasks: &TaskTracker, writers: Writers, commit: F)
    where
        F: Fn(Vec<Job<J, R>>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let receiver = self
            .receiver
            .lock()
            .expect("the group-commit lock is never poisoned")
            .take()
            .expect("a group-commit writer is started once");
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        let writer = |receiver: Arc<tokio::sync::Mutex<_>>, stop: CancellationToken, commit: F| async move {
            while let Some(batch) = next_batch(&receiver, &stop).await {
                commit(batch).await;
            }
        };
        match writers {
            Writers::Tasks(n) => {
                for _ in 0..n.max(1) {
                    tasks.spawn(writer(receiver.clone(), self.stop.clone(), commit.clone()));
                }
            }
            Writers::OwnThread => {
                let writer = tasks.track_future(writer(receiver, self.stop.clone(), commit));
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a thread's runtime can be built");
                std::thread::Builder::new()
                    .name("waghl-writer".into())
                    .spawn(move || {
                        runtime.block_on(writer);
                        // The database's own threads, started from here, outlive this one.
                        runtime.shutdown_background();
                    })
                    .expect("a writer thread can be started");
            }
        }
    }

    /// Lets the writer finish what is queued, then stop. Called once no job can arrive.
    pub fn close(&self) {
        self.stop.cancel();
    }
}

/// Waits for the next job, then takes everything queued behind it (up to [`BATCH`]); `None`
/// once stopped and empty.
async fn next_batch<J, R>(
    receiver: &tokio::sync::Mutex<mpsc::Receiver<Job<J, R>>>,
    stop: &CancellationToken,
) -> Option<Vec<Job<J, R>>> {
    let mut receiver = receiver.lock().await;
    let first = tokio::select! {
        job = receiver.recv() => job,
        () = stop.cancelled() => {
            receiver.close();
            receiver.recv().await
        }
    }?;
    let mut batch = Vec::with_capacity(BATCH);
    batch.push(first);
    while batch.len() < BATCH
        && let Ok(job) = receiver.try_recv()
    {
        batch.push(job);
    }
    Some(batch)
}

/// Answers each job of `batch` from `together`, what writing the whole batch in one transaction
/// gave (one answer per job, in order). When that transaction failed, the jobs come back to be
/// written each alone, so that one job the database refuses cannot fail the others of its
/// batch (a batch of one is answered with the error).
pub fn answer_or_return<J, T, E: std::fmt::Display>(
    what: &str,
    batch: Vec<Job<J, Result<T, E>>>,
    together: Result<Vec<T>, E>,
) -> Vec<Job<J, Result<T, E>>> {
    match together {
        Ok(answers) => {
            for (job, answer) in batch.into_iter().zip(answers) {
                // A request that gave up needs no answer; its row is committed.
                let _ = job.reply.send(Ok(answer));
            }
            Vec::new()
        }
        Err(e) if batch.len() == 1 => {
            let _ = batch.into_iter().next().map(|job| job.reply.send(Err(e)));
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(error = %e, jobs = batch.len(), "writing a batch of {what} failed; writing each alone");
            batch
        }
    }
}
