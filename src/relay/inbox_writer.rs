//! Group commit of inbound messages: the messages every session hands over at the same moment
//! are stored in one transaction, so a burst across many locations costs one durable commit per
//! batch instead of one per message. Each session still waits for its own message's commit
//! before WhatsApp is told the message arrived.

use tokio_util::task::TaskTracker;

use crate::domain::{InboundMessage, LocationId};
use crate::group_commit::{GroupCommit, Job, answer_or_return};
use crate::store::{InboxStart, InboxWrite, NewInbound, Store, StoreError};

/// One message to store, as its session handed it over.
#[derive(Clone)]
pub(super) struct Inbound {
    pub location: LocationId,
    pub message: InboundMessage,
    pub media_ref: Option<Vec<u8>>,
    pub start: InboxStart,
}

impl Inbound {
    fn as_new(&self) -> NewInbound<'_> {
        NewInbound {
            location_id: self.location.as_str(),
            message: &self.message,
            media_ref: self.media_ref.as_deref(),
            start: self.start,
        }
    }
}

pub(super) type InboxWriter = GroupCommit<Inbound, Result<InboxWrite, StoreError>>;

/// Starts `writer`'s task on `tasks`.
pub(super) fn spawn(writer: &InboxWriter, store: Store, tasks: &TaskTracker) {
    writer.spawn(tasks, &store, |store, batch| async move { commit(&store, batch).await });
}

/// Stores `batch` in one transaction and answers each session. When the transaction fails,
/// each message is stored on its own, so that one message the database refuses cannot hold
/// back the others of its batch.
async fn commit(store: &Store, batch: Vec<Job<Inbound, Result<InboxWrite, StoreError>>>) {
    let news: Vec<NewInbound<'_>> = batch.iter().map(|job| job.job.as_new()).collect();
    let together = store.insert_inbound_batch(&news).await;
    drop(news);
    for job in answer_or_return("inbound messages", batch, together) {
        let new = job.job.as_new();
        let alone = store
            .insert_inbound(new.location_id, new.message, new.media_ref, new.start)
            .await;
        let _ = job.reply.send(alone);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::crypto::{Secret, SecretKey};
    use crate::domain::Content;
    use crate::store::{DatabaseUrl, GhlTokens, NewLocation, TokenSource};

    fn inbound(id: &str) -> Inbound {
        let chat = format!("1555000{}@s.whatsapp.net", id.len());
        Inbound {
            location: LocationId::parse("loc").unwrap(),
            message: InboundMessage {
                id: id.into(),
                chat: chat.clone(),
                sender: chat,
                sender_phone: None,
                chat_phone: None,
                push_name: None,
                timestamp: 1,
                from_me: false,
                is_group: false,
                is_status: false,
                reply_to: None,
                content: Content::Text { text: "hi".into() },
            },
            media_ref: None,
            start: InboxStart::Pending,
        }
    }

    #[tokio::test]
    async fn a_message_the_database_refuses_fails_alone_not_its_whole_batch() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/w.db", dir.path().display());
        let store = Store::connect(
            &DatabaseUrl::parse(&url).unwrap(),
            Arc::new(SecretKey::from_bytes(&[1; 32]).unwrap()),
        )
        .await
        .unwrap();
        store.migrate().await.unwrap();
        let tokens = GhlTokens {
            access_token: Secret::new("token"),
            refresh_token: None,
            expires_at: i64::MAX / 2,
        };
        let location = NewLocation {
            location_id: "loc",
            company_id: None,
            name: None,
            tokens: &tokens,
            source: TokenSource::Oauth,
        };
        store.upsert_location(location).await.unwrap();
        // The database refuses one message: a trigger, as a constraint would.
        let raw = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::query(
            "CREATE TRIGGER refuse BEFORE INSERT ON inbox WHEN NEW.wa_message_id = 'poison' \
             BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .execute(&raw)
        .await
        .unwrap();

        let writer = InboxWriter::default();
        let submitted: Vec<_> = ["a", "poison", "bb"]
            .into_iter()
            .map(|id| {
                let writer = writer.clone();
                tokio::spawn(async move { writer.submit(inbound(id)).await.unwrap() })
            })
            .collect();
        // All three wait in the queue before the writer starts: one batch.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let tasks = TaskTracker::new();
        spawn(&writer, store.clone(), &tasks);
        let mut answers = Vec::new();
        for one in submitted {
            answers.push(one.await.unwrap());
        }
        assert!(matches!(answers[0], Ok(InboxWrite::New)), "{:?}", answers[0]);
        assert!(answers[1].is_err(), "the refused message is not confirmed");
        assert!(matches!(answers[2], Ok(InboxWrite::New)), "{:?}", answers[2]);
        let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM inbox")
            .fetch_one(&raw)
            .await
            .unwrap();
        assert_eq!(stored, 2);
        writer.close();
        tasks.close();
        tasks.wait().await;
    }
}
