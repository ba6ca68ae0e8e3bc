//! Group commit of the inbound relay's writes: the marks before posting and the ends of rows
//! that its concurrent chats produce at one moment are committed in one transaction, so
//! relaying a burst costs a durable commit per batch for each step instead of one per message.
//! Each chat still waits for its own write's commit before it goes on (a row is marked
//! durably before its message is handed to GHL).

use tokio_util::task::TaskTracker;

use crate::group_commit::{GroupCommit, Job, write_each_or_alone};
use crate::store::{InboxRelayWrite, Store, StoreError};

pub(super) type InboundWriter = GroupCommit<InboxRelayWrite, Result<bool, StoreError>>;

/// Starts `writer`'s task on `tasks`.
pub(super) fn spawn(writer: &InboundWriter, store: Store, tasks: &TaskTracker) {
    writer.spawn(tasks, &store, |store, batch| async move { commit(&store, batch).await });
}

/// Writes `batch` in one transaction and answers each chat; on failure each write alone.
async fn commit(store: &Store, batch: Vec<Job<InboxRelayWrite, Result<bool, StoreError>>>) {
    write_each_or_alone("inbound relay writes", batch, |writes| async move {
        store.write_inbox(&writes).await
    })
    .await;
}
