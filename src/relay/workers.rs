//! The claim → spawn → in-flight loop both relays share: each claimed row is worked on in its
//! own task, at most once at a time, with its claim renewed for as long as the task runs (so a
//! long GHL call or media upload is never taken over by another worker mid-flight), and a task
//! that panics is reported with its row instead of vanishing with it.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use tokio::task::{Id, JoinSet};

use crate::domain::Incarnation;
use crate::store::{Queue, Store};
use crate::time::now_ms;

/// Renews the claims of running rows: every third of `claim_for`, for another `claim_for`.
#[derive(Clone)]
pub(super) struct Renewal {
    pub store: Store,
    pub queue: Queue,
    pub holder: Incarnation,
    pub claim_for: Duration,
}

/// How a row's task ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Joined {
    Done(i64),
    /// The task panicked: its row is still claimed and unfinished.
    Panicked(i64),
}

/// The rows one relay is working on.
pub(super) struct Workers {
    tasks: JoinSet<i64>,
    /// Task → row, to name the row of a task that panicked (a panic returns no value).
    rows: HashMap<Id, i64>,
    /// Rows with a task: a claim that is taken again while its row still runs (it expired,
    /// or a claim query raced) must not start a second task on it.
    in_flight: HashSet<i64>,
    renewal: Option<Renewal>,
}

impl Workers {
    pub fn new(renewal: Option<Renewal>) -> Self {
        Self {
            tasks: JoinSet::new(),
            rows: HashMap::new(),
            in_flight: HashSet::new(),
            renewal,
        }
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Starts `work` on `row` unless the row has a task already (then returns false, and lets
    /// go of the claim just taken: the task's own outcome already released it, and a claim
    /// nobody works on would hold the row until it expires).
    pub async fn start(&mut self, row: i64, work: impl Future<Output = ()> + Send + 'static) -> bool {
        if !self.in_flight.insert(row) {
            if let Some(renewal) = &self.renewal
                && let Err(e) = renewal.store.release_claim(renewal.queue, row, &renewal.holder).await
            {
                tracing::warn!(row, error = %e, "could not let go of a claim on a row in flight");
            }
            return false;
        }
        let renewal = self.renewal.clone();
        let handle = self.tasks.spawn(async move {
            match renewal {
                Some(renewal) => renewing(renewal, row, work).await,
                None => work.await,
            }
            row
        });
        self.rows.insert(handle.id(), row);
        true
    }

    /// The next task to end; `None` when none runs.
    pub async fn next(&mut self) -> Option<Joined> {
        let joined = match self.tasks.join_next_with_id().await? {
            Ok((id, row)) => {
                self.rows.remove(&id);
                Joined::Done(row)
            }
            Err(e) => {
                let row = self
                    .rows
                    .remove(&e.id())
                    .expect("every task is registered with its row");
                if e.is_panic() {
                    Joined::Panicked(row)
                } else {
                    Joined::Done(row)
                }
            }
        };
        let (Joined::Done(row) | Joined::Panicked(row)) = joined;
        self.in_flight.remove(&row);
        Some(joined)
    }

    /// Waits for every task (at shutdown).
    pub async fn drain(&mut self) {
        while self.next().await.is_some() {}
    }
}

/// Runs `work` while renewing the row's claim. A renewal that finds the claim gone is logged
/// and the work goes on: the steps that must not run twice check the claim themselves.
async fn renewing(renewal: Renewal, row: i64, work: impl Future<Output = ()>) {
    let period = (renewal.claim_for / 3).max(Duration::from_millis(10));
    let renew = || {
        let renewal = renewal.clone();
        async move {
            let until = now_ms() + renewal.claim_for.as_millis() as i64;
            match renewal
                .store
                .renew_claim(renewal.queue, row, &renewal.holder, until)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(row, queue = ?renewal.queue, "a claim was lost while its row was being worked on")
                }
                Err(e) => tracing::warn!(row, queue = ?renewal.queue, error = %e, "could not renew a claim"),
            }
        }
    };
    alongside(period, renew, work).await;
}

/// Runs `work`, and `renew` every `period` until the work ends. The two run side by side: a
/// renewal that waits — for the row's lock, which the work's own transaction may hold — must
/// not stop the work from finishing that transaction (that would wait forever).
async fn alongside<R, F>(period: Duration, mut renew: R, work: impl Future<Output = ()>)
where
    R: FnMut() -> F,
    F: Future<Output = ()>,
{
    let renewals = async {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            ticks.tick().await;
            renew().await;
        }
    };
    tokio::select! {
        () = work => {}
        () = renewals => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_renewal_waiting_for_what_the_work_holds_does_not_stop_the_work() {
        // The work holds a lock (as its transaction holds the row) across several renewal
        // periods; each renewal needs that lock (as its UPDATE needs the row).
        let row = std::sync::Arc::new(tokio::sync::Mutex::new(0));
        let work = {
            let row = row.clone();
            async move {
                let _held = row.lock().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let renew = || {
            let row = row.clone();
            async move { *row.lock().await += 1 }
        };
        let finished = tokio::time::timeout(
            Duration::from_secs(2),
            alongside(Duration::from_millis(10), renew, work),
        )
        .await;
        assert!(finished.is_ok(), "the work never finished: its renewal waited on it");
    }

    #[tokio::test]
    async fn a_row_runs_once_at_a_time_and_a_panic_names_its_row() {
        let mut workers = Workers::new(None);
        assert!(workers.start(1, async {}).await);
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        assert!(
            workers
                .start(2, async move {
                    let _ = wait.await;
                    panic!("poison row");
                })
                .await
        );
        assert!(!workers.start(2, async {}).await, "a row in flight started twice");
        assert_eq!(workers.next().await, Some(Joined::Done(1)));
        release.send(()).unwrap();
        assert_eq!(workers.next().await, Some(Joined::Panicked(2)));
        assert!(workers.is_empty());
        assert!(workers.start(2, async {}).await, "a panicked row stays blocked");
        assert_eq!(workers.next().await, Some(Joined::Done(2)));
        assert_eq!(workers.next().await, None);
    }
}
