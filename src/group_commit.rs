//! Group commit: requests that each need a durable write are queued for one writer task, which
//! takes everything waiting at that moment and writes it in one transaction, so concurrent
//! requests share a commit instead of each paying for its own. Each request is answered only
//! after the transaction holding its row committed. The provider-webhook intake, the inbox and
//! both relays write through one each.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::store::Store;

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

/// The writer is gone: it was stopped, or never started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("waghl is stopping; retry")]
pub struct Stopping;

/// A writer that stopped takes no more writes: it stops after everything that writes through it,
/// so a write it refuses is one of a daemon whose pool is closing.
impl From<Stopping> for crate::store::StoreError {
    fn from(_: Stopping) -> Self {
        Self::Database(sqlx::Error::PoolClosed)
    }
}

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

    /// Starts the writer on a thread of its own, tracked by `tasks`: `commit` writes one batch
    /// in one transaction through the store it is given and answers every job of it. While it
    /// commits, the next jobs queue up, so each batch is what was queued at that moment.
    ///
    /// One writer, on both backends: on PostgreSQL four writers committing side by side made
    /// smaller batches and more round trips per row, and took fewer webhooks per second than
    /// one (`bench_intake`: 7.4k/s against 9.1–13.2k/s) and drained no faster (`bench_drain`,
    /// writers still on the daemon's runtime).
    ///
    /// Why a thread: every request queued here waits for the writer, and on the daemon's
    /// runtime each answer from the database woke it in the queue shared with every request
    /// being served (measured on SQLite: a `BEGIN` took 110–190 µs there, 30–40 µs on a thread
    /// of its own). The thread has its own runtime and, so that the database's answers wake it
    /// directly, its own connections ([`Store::for_own_runtime`]).
    pub fn spawn<F, Fut>(&self, tasks: &TaskTracker, store: &Store, commit: F)
    where
        F: Fn(Store, Vec<Job<J, R>>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut receiver = self
            .receiver
            .lock()
            .expect("the group-commit lock is never poisoned")
            .take()
            .expect("a group-commit writer is started once");
        let (store, stop) = (store.clone(), self.stop.clone());
        let writer = tasks.track_future(async move {
            let own = store.for_own_runtime();
            while let Some(batch) = next_batch(&mut receiver, &stop).await {
                commit(own.clone(), batch).await;
            }
            own.close().await;
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a thread's runtime can be built");
        std::thread::Builder::new()
            .name("waghl-writer".into())
            .spawn(move || {
                runtime.block_on(writer);
                // Not waiting for the closed connection's own thread to end.
                runtime.shutdown_background();
            })
            .expect("a writer thread can be started");
    }

    /// Lets the writer finish what is queued, then stop. Called once no job can arrive.
    pub fn close(&self) {
        self.stop.cancel();
    }
}

/// Waits for the next job, then takes everything queued behind it (up to [`BATCH`]); `None`
/// once stopped and empty.
async fn next_batch<J, R>(
    receiver: &mut mpsc::Receiver<Job<J, R>>,
    stop: &CancellationToken,
) -> Option<Vec<Job<J, R>>> {
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

/// Writes `batch` with `write` in one transaction and answers each job; when that transaction
/// fails, each job is written alone (see [`answer_or_return`]). For writers whose jobs are
/// written alone the same way as together.
pub async fn write_each_or_alone<J: Clone, T, E: std::fmt::Display, Fut>(
    what: &str,
    batch: Vec<Job<J, Result<T, E>>>,
    write: impl Fn(Vec<J>) -> Fut,
) where
    Fut: Future<Output = Result<Vec<T>, E>>,
{
    let jobs = batch.iter().map(|job| job.job.clone()).collect();
    let together = write(jobs).await;
    for job in answer_or_return(what, batch, together) {
        let alone = write(vec![job.job]).await.map(|mut answers| answers.remove(0));
        let _ = job.reply.send(alone);
    }
}
