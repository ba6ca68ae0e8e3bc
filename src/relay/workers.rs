//! The claim → spawn → in-flight loop both relays share: each claimed row is worked on in its
//! own task, at most once at a time, with its claim renewed for as long as the task runs (so a
//! long GHL call or media upload is never taken over by another worker mid-flight), and a task
//! that panics is reported with its row instead of vanishing with it.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use tokio::task::{Id, JoinSet};

use crate::domain::Incarnation;
use crate::store::{Queue, Store, StoreError};
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

    /// The rows that have a task now.
    pub fn in_flight(&self) -> impl Iterator<Item = i64> + '_ {
        self.in_flight.iter().copied()
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

    /// Starts `work(relay, row)` on each of the rows a query `found` (`id` names a row; `relay`
    /// is cloned for each task); when the query failed, logs that it could not `what` and
    /// starts nothing.
    pub async fn start_found<T: Clone, R, Fut>(
        &mut self,
        found: Result<Vec<R>, StoreError>,
        what: &str,
        id: impl Fn(&R) -> i64,
        relay: &T,
        work: impl Fn(T, R) -> Fut,
    ) where
        Fut: Future<Output = ()> + Send + 'static,
    {
        match found {
            Ok(rows) => {
                for row in rows {
                    self.start(id(&row), work(relay.clone(), row)).await;
                }
            }
            Err(e) => tracing::error!(error = %e, "could not {what}"),
        }
    }

    /// The next task to end; `None` when none runs.
    pub async fn next(&mut self) -> Option<Joined> {
        let joined = self.tasks.join_next_with_id().await?;
        Some(self.reap(joined))
    }

    /// The next task to end and every other that ended meanwhile, so that one round refills
    /// all their slots (and an ended task's memory is not held until it is joined); `None`
    /// when none runs.
    pub async fn ended(&mut self) -> Option<Vec<Joined>> {
        let first = self.next().await?;
        let mut ended = vec![first];
        while let Some(joined) = self.tasks.try_join_next_with_id() {
            ended.push(self.reap(joined));
        }
        Some(ended)
    }

    fn reap(&mut self, joined: Result<(Id, i64), tokio::task::JoinError>) -> Joined {
        let joined = match joined {
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
        joined
    }

    pub async fn drain(&mut self) {
        while self.next().await.is_some() {}
    }
}

/// Runs `work` while renewing the row's claim. A renewal that finds the claim gone is logged
/// and the work goes on: the steps that must not run twice check the claim themselves.
///
/// The renewals run beside the work, never in its place. The work ends by writing its row in
/// a transaction (settling it and promoting its chat's next message), and a renewal updates
/// that same row, so it waits for that transaction. Were the work not polled while a renewal
/// waits, the transaction could never end: on PostgreSQL both would wait forever (the row stays
/// claimed, its chat held), on SQLite until the busy timeout, every other writer with them.
async fn renewing(renewal: Renewal, row: i64, work: impl Future<Output = ()>) {
    let period = (renewal.claim_for / 3).max(Duration::from_millis(10));
    let renewals = async {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            ticks.tick().await;
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
    // Work first: once it is done, a renewal still in flight is dropped (the row's final write
    // released the claim, so that renewal would only find it gone).
    tokio::select! {
        biased;
        () = work => {}
        _ = renewals => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The interleaving that held chats under load: a renewal falls due while the work holds
    /// its row in an open transaction, as its final write (settling the row and promoting the
    /// chat's next message) does. The work still ends at once, and the claim is still renewed
    /// while it runs.
    #[tokio::test]
    async fn a_renewal_due_while_the_work_holds_its_row_in_a_transaction_does_not_stop_the_work() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = format!("sqlite://{}/w.db", dir.path().display());
        renewal_beside_a_transaction::<sqlx::Sqlite>(&sqlite).await;
        // On PostgreSQL the renewal waits for the row's lock with no timeout: never ending.
        if let Some(postgres) = fresh_postgres_database().await {
            renewal_beside_a_transaction::<sqlx::Postgres>(&postgres).await;
        }
    }

    async fn renewal_beside_a_transaction<DB>(url: &str)
    where
        DB: sqlx::Database,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        i64: for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
        usize: sqlx::ColumnIndex<DB::Row>,
    {
        let key = std::sync::Arc::new(crate::crypto::SecretKey::from_bytes(&[1; 32]).unwrap());
        let store = Store::connect(&crate::store::DatabaseUrl::parse(url).unwrap(), key)
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let queued = crate::store::NewOutbound {
            location_id: "loc",
            ghl_message_id: "m1",
            ghl_contact_id: None,
            to_phone: "+14155550001",
            body: "{}",
        };
        let row = store.enqueue_outbound(queued, None).await.unwrap().unwrap();
        let holder = Incarnation::new("host", "life");
        let own = sqlx::Pool::<DB>::connect(url).await.unwrap();
        let claimed_until = |pool: sqlx::Pool<DB>| async move {
            let sql = format!("SELECT claimed_until FROM outbox WHERE outbox_id = {row}");
            let found = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).fetch_one(&pool).await.unwrap();
            sqlx::Row::get::<i64, _>(&found, 0)
        };
        let claimed = now_ms() + 60_000;
        let claim = format!(
            "UPDATE outbox SET claimed_by = '{}', claimed_until = {claimed} WHERE outbox_id = {row}",
            holder.as_str()
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(claim)).execute(&own).await.unwrap();

        let pool = own.clone();
        let work = async move {
            let mut tx = pool.begin().await.unwrap();
            let write = format!("UPDATE outbox SET updated_at = updated_at + 1 WHERE outbox_id = {row}");
            sqlx::raw_sql(sqlx::AssertSqlSafe(write))
                .execute(&mut *tx)
                .await
                .unwrap();
            // Renewals fall due every 10 ms: several while the row is held.
            tokio::time::sleep(Duration::from_millis(300)).await;
            tx.commit().await.unwrap();
            // Then more work, outside any transaction, while the renewals go on.
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let renewal = Renewal {
            store: store.clone(),
            queue: Queue::Outbox,
            holder,
            claim_for: Duration::from_millis(30),
        };
        // Far below SQLite's busy timeout (10 s), which was the least a renewal held it up.
        tokio::time::timeout(Duration::from_secs(5), renewing(renewal, row, work))
            .await
            .expect("the work waited for a renewal of its own claim");
        assert_ne!(
            claimed_until(own).await,
            claimed,
            "the claim was not renewed while the work ran"
        );
        store.close().await;
    }

    /// A database of its own on the PostgreSQL server of `WAGHL_TEST_DATABASE_URL`, if set.
    async fn fresh_postgres_database() -> Option<String> {
        let admin = std::env::var("WAGHL_TEST_DATABASE_URL")
            .ok()
            .filter(|url| !url.is_empty())?;
        let name = format!("waghl_unit_{}_{}", std::process::id(), now_ms());
        let pool = sqlx::PgPool::connect(&admin).await.unwrap();
        let create = format!("CREATE DATABASE {name}");
        sqlx::raw_sql(sqlx::AssertSqlSafe(create)).execute(&pool).await.unwrap();
        pool.close().await;
        let mut url = url::Url::parse(&admin).unwrap();
        url.set_path(&format!("/{name}"));
        Some(url.to_string())
    }
}
