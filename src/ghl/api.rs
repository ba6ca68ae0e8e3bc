//! Typed calls to GHL's resource endpoints on behalf of a location (GHL_API.md §3, §5–§7).

use axum::body::Bytes;

use super::types::MessagePage;
use super::types::{
    AddMessage, AddedMessage, ConversationMessages, ConversationSearch, CreatedConversation, DuplicateSearch,
    StatusUpdate, UploadTicket, UploadedFiles, UpsertContact, UpsertContactResponse,
};
use super::{GhlClient, GhlError, Result, Retries};
use crate::store::TokenOwner;

/// Files up to this size go through the one-request multipart upload; larger ones through the
/// signed-URL flow, whose `WHATSAPP` channel allows 100 MB (GHL_API.md §7.2).
const MULTIPART_LIMIT: usize = 5 << 20;

/// A file to attach to a GHL message.
pub struct Attachment<'a> {
    pub file_name: &'a str,
    pub content_type: &'a str,
    pub bytes: Bytes,
}

impl GhlClient {
    /// `POST /contacts/upsert`: finds the contact by phone or creates it.
    pub async fn upsert_contact(&self, location_id: &str, body: &UpsertContact<'_>) -> Result<UpsertContactResponse> {
        let url = self.url("/contacts/upsert");
        self.call(
            "contacts_upsert",
            Some(TokenOwner::Location(location_id)),
            |http, token| http.post(&url).bearer_auth(token).json(body),
        )
        .await
    }

    /// `GET /contacts/search/duplicate`: the contact with this E.164 phone, if any.
    pub async fn find_contact_by_phone(
        &self,
        location_id: &str,
        phone: &str,
    ) -> Result<Option<super::types::ContactRef>> {
        let url = self.url("/contacts/search/duplicate");
        let found: DuplicateSearch = self
            .call(
                "contacts_search",
                Some(TokenOwner::Location(location_id)),
                |http, token| {
                    http.get(&url)
                        .bearer_auth(token)
                        .query(&[("locationId", location_id), ("number", phone)])
                },
            )
            .await?;
        Ok(found.contact)
    }

    /// `GET /conversations/search`: the contact's conversation, if it has one (GHL keeps one
    /// per contact).
    pub async fn find_conversation(&self, location_id: &str, contact_id: &str) -> Result<Option<String>> {
        let url = self.url("/conversations/search");
        let found: ConversationSearch = self
            .call(
                "conversations_search",
                Some(TokenOwner::Location(location_id)),
                |http, token| {
                    http.get(&url).bearer_auth(token).query(&[
                        ("locationId", location_id),
                        ("contactId", contact_id),
                        ("limit", "1"),
                    ])
                },
            )
            .await?;
        Ok(found.conversations.into_iter().next().map(|c| c.id))
    }

    /// `POST /conversations/`.
    pub async fn create_conversation(&self, location_id: &str, contact_id: &str) -> Result<String> {
        let url = self.url("/conversations/");
        let body = serde_json::json!({ "locationId": location_id, "contactId": contact_id });
        let created: CreatedConversation = self
            .call(
                "conversations_create",
                Some(TokenOwner::Location(location_id)),
                |http, token| http.post(&url).bearer_auth(token).json(&body),
            )
            .await?;
        created.id().ok_or_else(|| GhlError::Rejected {
            status: 200,
            message: "GHL created a conversation but sent no id".into(),
        })
    }

    /// `POST /conversations/messages/inbound`: adds a message to a conversation through the
    /// custom provider (inbound, or outbound for messages typed on the phone).
    pub async fn add_message(&self, location_id: &str, body: &AddMessage<'_>) -> Result<AddedMessage> {
        let url = self.url("/conversations/messages/inbound");
        // Never repeated blindly: a post whose answer was lost may have added the message, so
        // the caller looks it up in the conversation before posting again.
        self.call_with(
            "messages_add",
            Some(TokenOwner::Location(location_id)),
            Retries::UnlessMaybeDone,
            |http, token| http.post(&url).bearer_auth(token).json(body),
        )
        .await
        .map_err(|e| match e {
            // GHL drops a custom-provider message with an empty 201 when the provider id is
            // wrong or missing (GHL_API.md §5.1): say so instead of "unexpected answer".
            GhlError::Rejected { status: 200, .. } => GhlError::Rejected {
                status: 201,
                message: "GHL did not add the message (check GHL_CONVERSATION_PROVIDER_ID)".into(),
            },
            other => other,
        })
    }

    /// `GET /conversations/{conversationId}/messages`: a page of the conversation, newest
    /// first, starting after `after` (the previous page's `lastMessageId`).
    pub async fn conversation_messages(
        &self,
        location_id: &str,
        conversation_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<MessagePage> {
        let url = self.url(&format!("/conversations/{conversation_id}/messages"));
        let limit = limit.to_string();
        let page: ConversationMessages = self
            .call(
                "messages_list",
                Some(TokenOwner::Location(location_id)),
                |http, token| {
                    let request = http.get(&url).bearer_auth(token).query(&[("limit", limit.as_str())]);
                    match after {
                        Some(id) => request.query(&[("lastMessageId", id)]),
                        None => request,
                    }
                },
            )
            .await?;
        Ok(page.into_page())
    }

    /// `PUT /conversations/messages/{id}/status`. Right after GHL sent a message to the
    /// provider it answers 403 until it has "downstreamed" it (GHL_API.md §6): 403s are
    /// retried with a delay before they count as a refusal.
    pub async fn update_message_status(
        &self,
        location_id: &str,
        message_id: &str,
        body: &StatusUpdate<'_>,
    ) -> Result<()> {
        let url = self.url(&format!("/conversations/messages/{message_id}/status"));
        let config = self.config();
        let mut lag_retries = config.status_lag_retries;
        loop {
            let outcome: Result<serde_json::Value> = self
                .call(
                    "messages_status",
                    Some(TokenOwner::Location(location_id)),
                    |http, token| http.put(&url).bearer_auth(token).json(body),
                )
                .await;
            match outcome {
                Err(GhlError::Rejected { status: 403, .. }) if lag_retries > 0 => {
                    lag_retries -= 1;
                    tokio::time::sleep(config.status_lag_delay).await;
                }
                other => return other.map(drop),
            }
        }
    }

    /// Uploads a file into a conversation and returns its GHL-hosted URL.
    pub async fn upload_attachment(
        &self,
        location_id: &str,
        conversation_id: &str,
        contact_id: &str,
        file: Attachment<'_>,
    ) -> Result<String> {
        let uploaded = if file.bytes.len() <= MULTIPART_LIMIT {
            self.upload_multipart(location_id, conversation_id, contact_id, &file)
                .await?
        } else {
            self.upload_signed(location_id, conversation_id, &file).await?
        };
        uploaded.first_url().ok_or_else(|| GhlError::Rejected {
            status: 200,
            message: "GHL accepted the upload but returned no URL".into(),
        })
    }

    /// `POST /conversations/messages/upload`, the file in the `fileAttachment` part.
    async fn upload_multipart(
        &self,
        location_id: &str,
        conversation_id: &str,
        contact_id: &str,
        file: &Attachment<'_>,
    ) -> Result<UploadedFiles> {
        let url = self.url("/conversations/messages/upload");
        self.call(
            "messages_upload",
            Some(TokenOwner::Location(location_id)),
            |http, token| {
                let part = reqwest::multipart::Part::stream_with_length(
                    reqwest::Body::from(file.bytes.clone()),
                    file.bytes.len() as u64,
                )
                .file_name(file.file_name.to_owned())
                .mime_str(file.content_type)
                .unwrap_or_else(|_| {
                    reqwest::multipart::Part::bytes(file.bytes.to_vec()).file_name(file.file_name.to_owned())
                });
                let form = reqwest::multipart::Form::new()
                    .text("conversationId", conversation_id.to_owned())
                    .text("contactId", contact_id.to_owned())
                    .text("locationId", location_id.to_owned())
                    .part("fileAttachment", part);
                http.post(&url).bearer_auth(token).multipart(form)
            },
        )
        .await
    }

    /// The signed-URL flow: initiate, PUT the bytes, complete.
    async fn upload_signed(
        &self,
        location_id: &str,
        conversation_id: &str,
        file: &Attachment<'_>,
    ) -> Result<UploadedFiles> {
        let owner = Some(TokenOwner::Location(location_id));
        let initiate = serde_json::json!({
            "locationId": location_id, "conversationId": conversation_id, "filename": file.file_name,
            "contentType": file.content_type, "channel": "WHATSAPP", "fileSize": file.bytes.len(),
        });
        let url = self.url("/conversations/messages/upload/initiate");
        let ticket: UploadTicket = self
            .call("messages_upload_initiate", owner, |http, token| {
                http.post(&url).bearer_auth(token).json(&initiate)
            })
            .await?;
        // The signed URL carries its own authorisation; no token, no Version header.
        let _: serde_json::Value = self
            .call("messages_upload_put", None, |http, _| {
                http.put(&ticket.upload_url)
                    .header(reqwest::header::CONTENT_TYPE, file.content_type)
                    .body(file.bytes.clone())
            })
            .await?;
        let complete = serde_json::json!({
            "uploadId": ticket.upload_id, "filePath": ticket.file_path, "locationId": location_id,
            "conversationId": conversation_id, "filename": file.file_name,
        });
        let url = self.url("/conversations/messages/upload/complete");
        self.call("messages_upload_complete", owner, |http, token| {
            http.post(&url).bearer_auth(token).json(&complete)
        })
        .await
    }

    /// A cheap authenticated call that proves the location's tokens work.
    pub async fn test_connection(&self, location_id: &str) -> Result<()> {
        let url = self.url("/conversations/search");
        let _: ConversationSearch = self
            .call(
                "connection_test",
                Some(TokenOwner::Location(location_id)),
                |http, token| {
                    http.get(&url)
                        .bearer_auth(token)
                        .query(&[("locationId", location_id), ("limit", "1")])
                },
            )
            .await?;
        Ok(())
    }
}
