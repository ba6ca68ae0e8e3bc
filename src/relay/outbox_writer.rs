//! Group commit of the outbound relay's writes: the part ids, finished messages and reported
//! statuses its concurrent sends and reports produce at one moment are committed in one
//! transaction, so draining a backlog costs a durable commit per batch instead of several per
//! message. Each send still waits for its own write's commit before it goes on (a part's id is
//! durable before the part is sent).

use tokio_util::task::TaskTracker;

use crate::group_commit::{GroupCommit, Job, write_each_or_alone};
use crate::store::{OutboxWrite, Store, StoreError};

pub(super) type OutboxWriter = GroupCommit<OutboxWrite, Result<(), StoreError>>;

/// Starts `writer`'s tasks on `tasks`.
pub(super) fn spawn(writer: &OutboxWriter, store: Store, tasks: &TaskTracker) {
    writer.spawn(tasks, &store, |store, batch| async move { commit(&store, batch).await });
}

/// Writes `batch` in one transaction and answers each writer; on failure each write alone.
async fn commit(store: &Store, batch: Vec<Job<OutboxWrite, Result<(), StoreError>>>) {
    write_each_or_alone("outbound writes", batch, |writes| async move {
        store.write_outbox(&writes).await.map(|()| vec![(); writes.len()])
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_the_database_refuses_fails_alone_not_its_whole_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::migrated_sqlite_in(dir.path()).await;
        let writer = OutboxWriter::default();
        let part = |outbox_id: i64, id: &str| OutboxWrite::Part {
            outbox_id,
            location_id: "loc".into(),
            ghl_message_id: format!("g{outbox_id}"),
            chat: "1555@s.whatsapp.net".into(),
            part_index: 0,
            wa_message_id: id.into(),
        };
        // The second repeats the first's id: the unique key refuses it, and only it.
        let writes = [part(1, "A"), part(2, "A"), part(3, "C")];
        let submitted = {
            let writer = writer.clone();
            let submits: Vec<_> = writes
                .into_iter()
                .map(|w| {
                    tokio::spawn({
                        let writer = writer.clone();
                        async move { writer.submit(w).await }
                    })
                })
                .collect();
            async move {
                let mut answers = Vec::new();
                for submit in submits {
                    answers.push(submit.await.unwrap());
                }
                answers
            }
        };
        // All three wait before the writer starts: they are one batch.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let tasks = TaskTracker::new();
        spawn(&writer, store.clone(), &tasks);
        let answers = submitted.await;
        let refused: Vec<bool> = answers.into_iter().map(|a| a.unwrap().is_err()).collect();
        assert_eq!(
            refused,
            [false, true, false],
            "the batch's first A is kept, the repeat refused, C kept"
        );
        for (outbox_id, stored) in [(1, Some("A")), (2, None), (3, Some("C"))] {
            let parts = store.outbound_parts(outbox_id).await.unwrap();
            let ids: Vec<&str> = parts.iter().map(|p| p.wa_message_id.as_str()).collect();
            assert_eq!(ids, stored.into_iter().collect::<Vec<_>>(), "outbox {outbox_id}");
        }
        writer.close();
        tasks.close();
        tasks.wait().await;
    }
}
