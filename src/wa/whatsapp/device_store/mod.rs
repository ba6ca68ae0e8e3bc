//! whatsapp-rust's storage `Backend` on waghl's database, for one location: each call maps the
//! crate's values to device-key rows (`rows`) and hands them to `store::DeviceKeys`, which
//! seals them and owns the SQL. Async all the way, no file and no blocking pool. The crate's
//! batch calls (sessions, identities, pre-keys, LID mappings, the inbound buffer, message
//! secrets…) are one statement, or one transaction when the batch is larger than a statement.
//!
//! The semantics are those of the crate's own SQLite store (`whatsapp-rust-sqlite-storage`),
//! including the defaulted methods it overrides: the pending-inbound buffer the durability
//! hook needs, the atomic tc-token merges, the expiry deletes, `has_signal_state_for_user`.

pub(super) mod rows;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use whatsapp_rust::bytes::Bytes;
use whatsapp_rust::store::traits::{
    AppStateSyncKey, AppSyncStore, DeviceListRecord, DeviceStore, LidPnMappingEntry, MsgSecretEntry, MsgSecretStore,
    PendingInboundKey, PendingInboundRow, ProtocolStore, SignalStore, TcTokenEntry, merge_msg_secret_expiry,
    merge_msg_secret_message_ts,
};
use whatsapp_rust::wacore::appstate::hash::HashState;
use whatsapp_rust::wacore::appstate::processor::AppStateMutationMAC;
use whatsapp_rust::wacore::stats::StorageResourceReport;
use whatsapp_rust::wacore::store::Device;
use whatsapp_rust::wacore::store::error::{Result, StoreError};

use crate::domain::LocationId;
use crate::store::{DeviceKeyKind as Kind, DeviceKeys, KeyRow, OnConflict, Store};
use crate::time::now_ms;
use rows::{UNSCOPED, hex, joined};

/// One location's device keys, as whatsapp-rust's storage backend.
pub struct DbBackend {
    keys: DeviceKeys,
    /// Held from the start of a device save to its commit. The crate's saver and its explicit
    /// flushes each take a snapshot of the device and save it, and may overlap; on two pool
    /// connections the older snapshot could commit last and stay (the next start then loses
    /// e.g. the pre-key watermarks and uploads a new batch). Tokio's mutex is first come,
    /// first served, and a save takes it before its first await: saves commit in the order the
    /// snapshots were taken, as on the crate's own single-connection store.
    device_saves: tokio::sync::Mutex<()>,
}

impl DbBackend {
    pub fn new(store: &Store, location: &LocationId) -> Self {
        Self {
            keys: store.device_keys(location.as_str()),
            device_saves: tokio::sync::Mutex::new(()),
        }
    }

    async fn value(&self, kind: Kind, scope: &str, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.keys.get(kind, scope, key).await.map_err(db)?.map(|row| row.value))
    }

    async fn put(&self, row: KeyRow) -> Result<()> {
        self.keys.put(row, OnConflict::Replace).await.map_err(db)
    }

    async fn put_many(&self, rows: &[KeyRow]) -> Result<()> {
        self.keys.put_many(rows, OnConflict::Replace).await.map_err(db)
    }

    async fn delete(&self, kind: Kind, scope: &str, key: &str) -> Result<()> {
        self.keys.delete(kind, scope, key).await.map_err(db)
    }

    fn location(&self) -> &str {
        self.keys.location()
    }
}

fn db(e: crate::store::StoreError) -> StoreError {
    StoreError::Database(Box::new(e))
}

/// whatsapp-rust's clock unit for the times it compares (expiry cutoffs).
fn now_secs() -> i64 {
    now_ms() / 1000
}

#[whatsapp_rust::async_trait]
impl SignalStore for DbBackend {
    async fn put_identity(&self, address: &str, key: [u8; 32]) -> Result<()> {
        self.put(rows::identity(address, &key)).await
    }

    async fn put_identities_batch(&self, identities: &[(Arc<str>, [u8; 32])]) -> Result<()> {
        let rows: Vec<KeyRow> = identities.iter().map(|(a, k)| rows::identity(a, k)).collect();
        self.put_many(&rows).await
    }

    async fn load_identity(&self, address: &str) -> Result<Option<[u8; 32]>> {
        let row = self.keys.get(Kind::Identity, UNSCOPED, address).await.map_err(db)?;
        row.map(|row| rows::identity_key(address, row)).transpose()
    }

    async fn delete_identity(&self, address: &str) -> Result<()> {
        self.delete(Kind::Identity, UNSCOPED, address).await
    }

    async fn get_session(&self, address: &str) -> Result<Option<Bytes>> {
        Ok(self.value(Kind::Session, UNSCOPED, address).await?.map(Bytes::from))
    }

    async fn put_session(&self, address: &str, session: &[u8]) -> Result<()> {
        self.put(rows::session(address, session)).await
    }

    async fn put_sessions_batch(&self, sessions: &[(Arc<str>, Bytes)]) -> Result<()> {
        let rows: Vec<KeyRow> = sessions.iter().map(|(a, s)| rows::session(a, s)).collect();
        self.put_many(&rows).await
    }

    async fn delete_session(&self, address: &str) -> Result<()> {
        self.delete(Kind::Session, UNSCOPED, address).await
    }

    async fn has_session(&self, address: &str) -> Result<bool> {
        self.keys.contains(Kind::Session, UNSCOPED, address).await.map_err(db)
    }

    /// Addresses are `user@server` (device 0) or `user:device@server`.
    async fn has_signal_state_for_user(&self, user: &str) -> Result<bool> {
        let (base, device) = (format!("{user}@"), format!("{user}:"));
        self.keys
            .any_key_starting_with(&[Kind::Session, Kind::Identity], &[&base, &device])
            .await
            .map_err(db)
    }

    async fn store_prekey(&self, id: u32, record: &[u8], uploaded: bool) -> Result<()> {
        self.put(rows::prekey(id, record, uploaded)).await
    }

    async fn store_prekeys_batch(&self, keys: &[(u32, Bytes)], uploaded: bool) -> Result<()> {
        let rows: Vec<KeyRow> = keys.iter().map(|(id, r)| rows::prekey(*id, r, uploaded)).collect();
        self.put_many(&rows).await
    }

    async fn load_prekey(&self, id: u32) -> Result<Option<Bytes>> {
        Ok(self
            .value(Kind::PreKey, UNSCOPED, &id.to_string())
            .await?
            .map(Bytes::from))
    }

    async fn load_prekeys_batch(&self, ids: &[u32]) -> Result<Vec<(u32, Bytes)>> {
        let keys: Vec<String> = ids.iter().map(u32::to_string).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let found = self.keys.get_many(Kind::PreKey, UNSCOPED, &keys).await.map_err(db)?;
        found
            .into_iter()
            .map(|row| Ok((rows::key_id(&row)?, Bytes::from(row.value))))
            .collect()
    }

    async fn mark_prekeys_uploaded(&self, ids: &[u32]) -> Result<()> {
        let keys: Vec<String> = ids.iter().map(u32::to_string).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.keys.set_flag(Kind::PreKey, &keys, true).await.map_err(db)
    }

    async fn remove_prekey(&self, id: u32) -> Result<()> {
        self.delete(Kind::PreKey, UNSCOPED, &id.to_string()).await
    }

    async fn get_max_prekey_id(&self) -> Result<u32> {
        let max = self.keys.max_num(Kind::PreKey).await.map_err(db)?;
        Ok(max.and_then(|n| u32::try_from(n).ok()).unwrap_or(0))
    }

    async fn store_signed_prekey(&self, id: u32, record: &[u8]) -> Result<()> {
        self.put(rows::signed_prekey(id, record)).await
    }

    async fn load_signed_prekey(&self, id: u32) -> Result<Option<Vec<u8>>> {
        self.value(Kind::SignedPreKey, UNSCOPED, &id.to_string()).await
    }

    async fn load_all_signed_prekeys(&self) -> Result<Vec<(u32, Vec<u8>)>> {
        let all = self.keys.list(Kind::SignedPreKey, None).await.map_err(db)?;
        all.into_iter()
            .map(|row| Ok((rows::key_id(&row)?, row.value)))
            .collect()
    }

    async fn remove_signed_prekey(&self, id: u32) -> Result<()> {
        self.delete(Kind::SignedPreKey, UNSCOPED, &id.to_string()).await
    }

    async fn put_sender_key(&self, address: &str, record: &[u8]) -> Result<()> {
        self.put(rows::sender_key(address, record)).await
    }

    async fn put_sender_keys_batch(&self, sender_keys: &[(Arc<str>, Bytes)]) -> Result<()> {
        let rows: Vec<KeyRow> = sender_keys.iter().map(|(a, r)| rows::sender_key(a, r)).collect();
        self.put_many(&rows).await
    }

    async fn get_sender_key(&self, address: &str) -> Result<Option<Vec<u8>>> {
        self.value(Kind::SenderKey, UNSCOPED, address).await
    }

    async fn delete_sender_key(&self, address: &str) -> Result<()> {
        self.delete(Kind::SenderKey, UNSCOPED, address).await
    }
}

#[whatsapp_rust::async_trait]
impl AppSyncStore for DbBackend {
    /// A key that does not decode counts as absent, as in the crate's store: the crate asks
    /// the phone for it again.
    async fn get_sync_key(&self, key_id: &[u8]) -> Result<Option<AppStateSyncKey>> {
        let Some(value) = self.value(Kind::SyncKey, UNSCOPED, &hex(key_id)).await? else {
            return Ok(None);
        };
        match rows::decode_sync_key(&value) {
            Ok(key) => Ok(Some(key)),
            Err(e) => {
                tracing::warn!(location.id = %self.location(), error = %e, "an app-state key does not decode; asking for it again");
                Ok(None)
            }
        }
    }

    async fn set_sync_key(&self, key_id: &[u8], key: AppStateSyncKey) -> Result<()> {
        self.put(rows::sync_key(key_id, &key)).await
    }

    /// A version that does not decode starts the collection over, as in the crate's store.
    async fn get_version(&self, name: &str) -> Result<HashState> {
        let Some(value) = self.value(Kind::AppStateVersion, UNSCOPED, name).await? else {
            return Ok(HashState::default());
        };
        Ok(rows::decode_app_state_version(&value).unwrap_or_else(|e| {
            tracing::warn!(location.id = %self.location(), collection = name, error = %e, "an app-state version does not decode; syncing the collection again");
            HashState::default()
        }))
    }

    async fn set_version(&self, name: &str, state: HashState) -> Result<()> {
        self.put(rows::app_state_version(name, &state)).await
    }

    async fn put_mutation_macs(&self, name: &str, version: u64, mutations: &[AppStateMutationMAC]) -> Result<()> {
        let rows: Vec<KeyRow> = mutations
            .iter()
            .map(|m| rows::mutation_mac(name, version, &m.index_mac, &m.value_mac))
            .collect();
        self.put_many(&rows).await
    }

    async fn get_mutation_mac(&self, name: &str, index_mac: &[u8]) -> Result<Option<Vec<u8>>> {
        self.value(Kind::MutationMac, name, &hex(index_mac)).await
    }

    async fn get_mutation_macs(&self, name: &str, index_macs: &[[u8; 32]]) -> Result<HashMap<[u8; 32], Vec<u8>>> {
        let keys: Vec<String> = index_macs.iter().map(|m| hex(m)).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let found = self.keys.get_many(Kind::MutationMac, name, &keys).await.map_err(db)?;
        Ok(found
            .into_iter()
            .filter_map(|row| {
                let index: [u8; 32] = rows::unhex(&row.key).ok()?.try_into().ok()?;
                Some((index, row.value))
            })
            .collect())
    }

    async fn delete_mutation_macs(&self, name: &str, index_macs: &[Vec<u8>]) -> Result<()> {
        let keys: Vec<String> = index_macs.iter().map(|m| hex(m)).collect();
        let items: Vec<(&str, &str)> = keys.iter().map(|k| (name, k.as_str())).collect();
        self.keys.delete_many(Kind::MutationMac, &items).await.map_err(db)
    }

    async fn clear_mutation_macs(&self, name: &str) -> Result<()> {
        self.keys.clear(Kind::MutationMac, Some(name)).await.map_err(db)
    }

    /// The largest key id whose key decodes, so outbound patches use a usable key.
    async fn get_latest_sync_key_id(&self) -> Result<Option<Vec<u8>>> {
        let all = self.keys.list(Kind::SyncKey, None).await.map_err(db)?;
        Ok(all
            .into_iter()
            .filter(|row| rows::decode_sync_key(&row.value).is_ok())
            .filter_map(|row| rows::unhex(&row.key).ok())
            .max())
    }
}

#[whatsapp_rust::async_trait]
impl ProtocolStore for DbBackend {
    async fn get_sender_key_devices(&self, group_jid: &str) -> Result<Vec<(String, bool)>> {
        let all = self
            .keys
            .list(Kind::SenderKeyDevice, Some(group_jid))
            .await
            .map_err(db)?;
        Ok(all.into_iter().map(|row| (row.key, row.flag)).collect())
    }

    async fn set_sender_key_status(&self, group_jid: &str, entries: &[(&str, bool)]) -> Result<()> {
        let now = now_secs();
        let rows: Vec<KeyRow> = entries
            .iter()
            .map(|(device, has_key)| rows::sender_key_device(group_jid, device, *has_key, now))
            .collect();
        self.put_many(&rows).await
    }

    async fn clear_sender_key_devices(&self, group_jid: &str) -> Result<()> {
        self.keys
            .clear(Kind::SenderKeyDevice, Some(group_jid))
            .await
            .map_err(db)
    }

    async fn delete_sender_key_device_rows(&self, device_jids: &[&str]) -> Result<()> {
        self.keys
            .delete_in_any_scope(Kind::SenderKeyDevice, device_jids)
            .await
            .map_err(db)
    }

    async fn clear_all_sender_key_devices(&self) -> Result<()> {
        self.keys.clear(Kind::SenderKeyDevice, None).await.map_err(db)
    }

    async fn get_lid_mapping(&self, lid: &str) -> Result<Option<LidPnMappingEntry>> {
        let row = self.keys.get_in_any_scope(Kind::LidMapping, lid).await.map_err(db)?;
        row.map(rows::lid_mapping_entry).transpose()
    }

    /// The LID most recently mapped to `phone`.
    async fn get_pn_mapping(&self, phone: &str) -> Result<Option<LidPnMappingEntry>> {
        let row = self.keys.latest_in_scope(Kind::LidMapping, phone).await.map_err(db)?;
        row.map(rows::lid_mapping_entry).transpose()
    }

    async fn put_lid_mapping(&self, entry: &LidPnMappingEntry) -> Result<()> {
        self.put_lid_mappings(std::slice::from_ref(entry)).await
    }

    async fn put_lid_mappings(&self, entries: &[LidPnMappingEntry]) -> Result<()> {
        let rows: Vec<KeyRow> = entries.iter().map(rows::lid_mapping).collect();
        self.keys.put_lid_mappings(&rows).await.map_err(db)
    }

    async fn get_all_lid_mappings(&self) -> Result<Vec<LidPnMappingEntry>> {
        let all = self.keys.list(Kind::LidMapping, None).await.map_err(db)?;
        all.into_iter().map(rows::lid_mapping_entry).collect()
    }

    async fn save_base_key(&self, address: &str, message_id: &str, base_key: &[u8]) -> Result<()> {
        self.put(rows::base_key(address, message_id, base_key, now_secs()))
            .await
    }

    async fn has_same_base_key(&self, address: &str, message_id: &str, current_base_key: &[u8]) -> Result<bool> {
        let stored = self.value(Kind::BaseKey, address, message_id).await?;
        Ok(stored.as_deref() == Some(current_base_key))
    }

    async fn delete_base_key(&self, address: &str, message_id: &str) -> Result<()> {
        self.delete(Kind::BaseKey, address, message_id).await
    }

    async fn update_device_list(&self, record: DeviceListRecord) -> Result<()> {
        self.put(rows::device_list(&record)?).await
    }

    async fn update_device_lists(&self, records: Vec<DeviceListRecord>) -> Result<()> {
        let rows = records.iter().map(rows::device_list).collect::<Result<Vec<_>>>()?;
        self.put_many(&rows).await
    }

    async fn get_devices(&self, user: &str) -> Result<Option<DeviceListRecord>> {
        let value = self.value(Kind::DeviceList, UNSCOPED, user).await?;
        value.map(|v| rows::decode_device_list(&v)).transpose()
    }

    async fn delete_devices(&self, user: &str) -> Result<()> {
        self.delete(Kind::DeviceList, UNSCOPED, user).await
    }

    async fn get_group_metadata(&self, group_jid: &str) -> Result<Option<Vec<u8>>> {
        self.value(Kind::GroupMetadata, UNSCOPED, group_jid).await
    }

    async fn put_group_metadata(&self, group_jid: &str, blob: &[u8]) -> Result<()> {
        self.put(rows::group_metadata(group_jid, blob)).await
    }

    async fn delete_group_metadata(&self, group_jid: &str) -> Result<()> {
        self.delete(Kind::GroupMetadata, UNSCOPED, group_jid).await
    }

    async fn get_tc_token(&self, jid: &str) -> Result<Option<TcTokenEntry>> {
        let row = self.keys.get(Kind::TcToken, UNSCOPED, jid).await.map_err(db)?;
        Ok(row.map(rows::tc_token_entry))
    }

    async fn put_tc_token(&self, jid: &str, entry: &TcTokenEntry) -> Result<()> {
        self.put(rows::tc_token(jid, entry)).await
    }

    async fn delete_tc_token(&self, jid: &str) -> Result<()> {
        self.delete(Kind::TcToken, UNSCOPED, jid).await
    }

    async fn get_all_tc_token_jids(&self) -> Result<Vec<String>> {
        self.keys.keys(Kind::TcToken).await.map_err(db)
    }

    async fn delete_expired_tc_tokens(&self, token_cutoff: i64, sender_cutoff: i64) -> Result<u32> {
        let deleted = self
            .keys
            .expire_both(Kind::TcToken, token_cutoff, sender_cutoff)
            .await
            .map_err(db)?;
        Ok(deleted as u32)
    }

    /// One upsert: a placeholder when absent, else only the sender time, moved forward.
    async fn touch_tc_token_sender_timestamp(&self, jid: &str, sender_timestamp: i64) -> Result<()> {
        let placeholder = TcTokenEntry {
            token: Vec::new(),
            token_timestamp: sender_timestamp,
            sender_timestamp: Some(sender_timestamp),
        };
        self.keys
            .put(rows::tc_token(jid, &placeholder), OnConflict::AdvanceTs)
            .await
            .map_err(db)
    }

    /// One upsert: newer wins, a placeholder never blocks a real token, the sender time stays.
    async fn store_received_tc_token(&self, jid: &str, token: &[u8], token_timestamp: i64) -> Result<()> {
        let received = TcTokenEntry {
            token: token.to_vec(),
            token_timestamp,
            sender_timestamp: None,
        };
        self.keys
            .put(rows::tc_token(jid, &received), OnConflict::IfNewer)
            .await
            .map_err(db)
    }

    async fn store_sent_message(&self, chat_jid: &str, message_id: &str, payload: &[u8]) -> Result<()> {
        self.put(rows::sent_message(chat_jid, message_id, payload, now_secs()))
            .await
    }

    async fn take_sent_message(&self, chat_jid: &str, message_id: &str) -> Result<Option<Vec<u8>>> {
        self.keys
            .take(Kind::SentMessage, chat_jid, message_id)
            .await
            .map_err(db)
    }

    async fn delete_expired_sent_messages(&self, cutoff_timestamp: i64) -> Result<u32> {
        let deleted = self
            .keys
            .expire(Kind::SentMessage, cutoff_timestamp)
            .await
            .map_err(db)?;
        Ok(deleted as u32)
    }

    async fn store_pending_inbound(&self, chat: &str, sender: &str, id: &str, message: &[u8]) -> Result<()> {
        self.put(rows::pending_inbound(chat, sender, id, message, now_secs()))
            .await
    }

    async fn get_pending_inbound(&self, chat: &str, sender: &str, id: &str) -> Result<Option<Vec<u8>>> {
        self.value(Kind::PendingInbound, chat, &joined(sender, id)).await
    }

    async fn delete_pending_inbound(&self, chat: &str, sender: &str, id: &str) -> Result<()> {
        self.delete(Kind::PendingInbound, chat, &joined(sender, id)).await
    }

    async fn delete_expired_pending_inbound(&self, cutoff_timestamp: i64) -> Result<u32> {
        let deleted = self
            .keys
            .expire(Kind::PendingInbound, cutoff_timestamp)
            .await
            .map_err(db)?;
        Ok(deleted as u32)
    }

    async fn store_pending_inbound_batch(&self, batch: &[PendingInboundRow<'_>]) -> Result<()> {
        let now = now_secs();
        let rows: Vec<KeyRow> = batch
            .iter()
            .map(|r| rows::pending_inbound(r.chat, r.sender, r.id, r.message, now))
            .collect();
        self.put_many(&rows).await
    }

    async fn delete_pending_inbound_batch(&self, batch: &[PendingInboundKey<'_>]) -> Result<()> {
        let keys: Vec<String> = batch.iter().map(|k| joined(k.sender, k.id)).collect();
        let items: Vec<(&str, &str)> = batch.iter().zip(&keys).map(|(k, key)| (k.chat, key.as_str())).collect();
        self.keys.delete_many(Kind::PendingInbound, &items).await.map_err(db)
    }
}

#[whatsapp_rust::async_trait]
impl MsgSecretStore for DbBackend {
    /// Entries naming one message twice are merged first with the crate's own rules, which
    /// the upsert then applies against the stored row.
    async fn put_msg_secrets(&self, entries: Vec<MsgSecretEntry>) -> Result<usize> {
        let count = entries.len();
        let mut merged: HashMap<(Arc<str>, Arc<str>, Arc<str>), MsgSecretEntry> = HashMap::with_capacity(count);
        for entry in entries {
            let key = (entry.chat.clone(), entry.sender.clone(), entry.msg_id.clone());
            match merged.get_mut(&key) {
                Some(earlier) => {
                    earlier.secret = entry.secret;
                    earlier.expires_at = merge_msg_secret_expiry(earlier.expires_at, entry.expires_at);
                    earlier.message_ts = merge_msg_secret_message_ts(earlier.message_ts, entry.message_ts);
                }
                None => {
                    merged.insert(key, entry);
                }
            }
        }
        let rows: Vec<KeyRow> = merged.values().map(rows::msg_secret).collect();
        self.keys.put_many(&rows, OnConflict::MergeDeadline).await.map_err(db)?;
        Ok(count)
    }

    async fn get_msg_secret(&self, chat: &str, sender: &str, msg_id: &str) -> Result<Option<Vec<u8>>> {
        self.value(Kind::MsgSecret, chat, &joined(sender, msg_id)).await
    }

    async fn get_msg_secret_with_ts(&self, chat: &str, sender: &str, msg_id: &str) -> Result<Option<(Vec<u8>, i64)>> {
        let row = self
            .keys
            .get(Kind::MsgSecret, chat, &joined(sender, msg_id))
            .await
            .map_err(db)?;
        Ok(row.map(|row| (row.value, row.num.unwrap_or_default())))
    }

    /// Deadlines at or before the cutoff go; "never" is stored as no deadline.
    async fn delete_expired_msg_secrets(&self, cutoff_timestamp: i64) -> Result<u32> {
        let deleted = self
            .keys
            .expire(Kind::MsgSecret, cutoff_timestamp.saturating_add(1))
            .await
            .map_err(db)?;
        Ok(deleted as u32)
    }
}

#[whatsapp_rust::async_trait]
impl DeviceStore for DbBackend {
    async fn save(&self, device: &Device) -> Result<()> {
        let _in_order = self.device_saves.lock().await;
        self.keys.save_device(&rows::encode_device(device)?).await.map_err(db)
    }

    async fn load(&self) -> Result<Option<Device>> {
        let bytes = self.keys.load_device().await.map_err(db)?;
        bytes.map(|b| rows::decode_device(&b)).transpose()
    }

    async fn exists(&self) -> Result<bool> {
        self.keys.has_device().await.map_err(db)
    }

    /// A fresh device (new keys), unless one exists already; the crate's device id is 1.
    async fn create(&self) -> Result<i32> {
        self.keys
            .create_device(&rows::encode_device(&Device::new())?)
            .await
            .map_err(db)?;
        Ok(1)
    }

    /// The data lives in the database, not in this process.
    async fn resource_report(&self) -> StorageResourceReport {
        StorageResourceReport {
            memory_bytes: Some(0),
            ..Default::default()
        }
    }
}
