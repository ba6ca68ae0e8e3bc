//! Reads a device file of whatsapp-rust's own SQLite store (`sessions/{location}.db`, where
//! waghl kept a location's device keys before they moved into its database), for the one-time
//! import. The tables are the crate's (whatsapp-rust-sqlite-storage 0.7.0, device id 1); the
//! columns come back as stored, for the importer to map. Nothing is written to the file.

use std::path::Path;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection as _, SqliteConnection};

use super::Result;

/// The crate's own store keeps one device per file, under this id.
const DEVICE_ID: i64 = 1;

/// A record under an address (identities, sessions, sender keys).
#[derive(sqlx::FromRow)]
pub struct AddressRecord {
    pub address: String,
    pub record: Vec<u8>,
}

#[derive(sqlx::FromRow)]
pub struct SignedPreKeyRecord {
    pub id: i64,
    pub record: Vec<u8>,
}

#[derive(sqlx::FromRow)]
pub struct PreKeyRecord {
    pub id: i64,
    pub record: Vec<u8>,
    pub uploaded: bool,
}

#[derive(sqlx::FromRow)]
pub struct MutationMacRecord {
    pub name: String,
    pub version: i64,
    pub index_mac: Vec<u8>,
    pub value_mac: Vec<u8>,
}

#[derive(sqlx::FromRow)]
pub struct LidMappingRecord {
    pub lid: String,
    pub phone_number: String,
    pub created_at: i64,
    pub learning_source: String,
    pub updated_at: i64,
}

#[derive(sqlx::FromRow)]
pub struct BaseKeyRecord {
    pub address: String,
    pub message_id: String,
    pub base_key: Vec<u8>,
    pub created_at: i64,
}

#[derive(sqlx::FromRow)]
pub struct DeviceListRecord {
    pub user_id: String,
    /// The crate's JSON of the user's devices.
    pub devices_json: String,
    pub timestamp: i64,
    pub phash: Option<String>,
    pub raw_id: Option<i64>,
}

#[derive(sqlx::FromRow)]
pub struct TcTokenRecord {
    pub jid: String,
    pub token: Vec<u8>,
    pub token_timestamp: i64,
    pub sender_timestamp: Option<i64>,
}

/// A message under (chat, sender, id): the inbound buffer, message secrets (`ts` the deadline,
/// `num` the parent's time), sent messages (no sender).
#[derive(sqlx::FromRow)]
pub struct MessageRecord {
    pub chat: String,
    pub sender: String,
    pub id: String,
    pub payload: Vec<u8>,
    pub ts: i64,
    pub num: i64,
}

#[derive(sqlx::FromRow)]
pub struct SenderKeyDeviceRecord {
    pub group_jid: String,
    pub device_jid: String,
    pub has_key: i64,
    pub updated_at: i64,
}

/// The rows of one device file, as stored. The device row and the values the crate encodes
/// in its own formats (app-state keys and versions) are read through the crate's store
/// instead; here are only their keys.
pub struct LegacyDeviceFile {
    pub identities: Vec<AddressRecord>,
    pub sessions: Vec<AddressRecord>,
    pub sender_keys: Vec<AddressRecord>,
    pub prekeys: Vec<PreKeyRecord>,
    pub signed_prekeys: Vec<SignedPreKeyRecord>,
    pub sync_key_ids: Vec<Vec<u8>>,
    pub app_state_collections: Vec<String>,
    pub mutation_macs: Vec<MutationMacRecord>,
    pub lid_mappings: Vec<LidMappingRecord>,
    pub base_keys: Vec<BaseKeyRecord>,
    pub device_lists: Vec<DeviceListRecord>,
    pub group_metadata: Vec<AddressRecord>,
    pub tc_tokens: Vec<TcTokenRecord>,
    pub sent_messages: Vec<MessageRecord>,
    pub pending_inbound: Vec<MessageRecord>,
    pub msg_secrets: Vec<MessageRecord>,
    pub sender_key_devices: Vec<SenderKeyDeviceRecord>,
}

impl LegacyDeviceFile {
    /// Every row of the file, read in one transaction (one consistent view).
    pub async fn read(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new().filename(path).create_if_missing(false);
        let mut conn = SqliteConnection::connect_with(&options).await?;
        let mut tx = conn.begin().await?;
        macro_rules! rows {
            ($sql:expr) => {
                sqlx::query_as($sql).bind(DEVICE_ID).fetch_all(&mut *tx).await?
            };
        }
        macro_rules! column {
            ($sql:expr) => {
                sqlx::query_scalar($sql)
                    .bind(DEVICE_ID)
                    .fetch_all(&mut *tx)
                    .await?
            };
        }
        let file = Self {
            identities: rows!("SELECT address, key AS record FROM identities WHERE device_id = $1"),
            sessions: rows!("SELECT address, record FROM sessions WHERE device_id = $1"),
            sender_keys: rows!("SELECT address, record FROM sender_keys WHERE device_id = $1"),
            prekeys: rows!("SELECT id, key AS record, uploaded FROM prekeys WHERE device_id = $1"),
            signed_prekeys: rows!("SELECT id, record FROM signed_prekeys WHERE device_id = $1"),
            sync_key_ids: column!("SELECT key_id FROM app_state_keys WHERE device_id = $1"),
            app_state_collections: column!("SELECT name FROM app_state_versions WHERE device_id = $1"),
            mutation_macs: rows!(
                "SELECT name, version, index_mac, value_mac FROM app_state_mutation_macs WHERE device_id = $1"
            ),
            lid_mappings: rows!(
                "SELECT lid, phone_number, created_at, learning_source, updated_at FROM lid_pn_mapping \
                 WHERE device_id = $1"
            ),
            base_keys: rows!("SELECT address, message_id, base_key, created_at FROM base_keys WHERE device_id = $1"),
            device_lists: rows!(
                "SELECT user_id, devices_json, timestamp, phash, raw_id FROM device_registry WHERE device_id = $1"
            ),
            group_metadata: rows!(
                "SELECT group_jid AS address, info AS record FROM group_metadata WHERE device_id = $1"
            ),
            tc_tokens: rows!(
                "SELECT jid, token, token_timestamp, sender_timestamp FROM tc_tokens WHERE device_id = $1"
            ),
            sent_messages: rows!(
                "SELECT chat_jid AS chat, '' AS sender, message_id AS id, payload, created_at AS ts, 0 AS num \
                 FROM sent_messages WHERE device_id = $1"
            ),
            pending_inbound: rows!(
                "SELECT chat, sender, id, message AS payload, inserted_at AS ts, 0 AS num \
                 FROM pending_inbound_messages WHERE device_id = $1"
            ),
            msg_secrets: rows!(
                "SELECT chat, sender, msg_id AS id, secret AS payload, expires_at AS ts, message_ts AS num \
                 FROM msg_secrets WHERE device_id = $1"
            ),
            sender_key_devices: rows!(
                "SELECT group_jid, device_jid, has_key, updated_at FROM sender_key_devices WHERE device_id = $1"
            ),
        };
        tx.rollback().await?;
        conn.close().await?;
        Ok(file)
    }
}
