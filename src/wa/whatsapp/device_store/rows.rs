//! Pure mapping between what whatsapp-rust stores and waghl's device-key rows: which kind,
//! scope and key each item gets, and how its value is encoded. No IO. Shared by the storage
//! backend and by the import of the crate's own SQLite files, so both write the same rows.
//!
//! Encodings: raw bytes where the crate hands bytes; the device as JSON (its serde form, whose
//! `#[serde(default)]` fields let a newer crate read an older row); app-state keys and hash
//! states in a small versioned binary form (a hash state holds one MAC per app-state entry,
//! too many for JSON's byte arrays).

use std::collections::HashMap;
use std::sync::Arc;

use whatsapp_rust::ClientProfile;
use whatsapp_rust::store::traits::{
    AppStateSyncKey, DeviceListRecord, LidPnMappingEntry, MsgSecretEntry, TcTokenEntry,
};
use whatsapp_rust::wacore::appstate::hash::HashState;
use whatsapp_rust::wacore::store::Device;
use whatsapp_rust::wacore::store::device::DEVICE_PROPS;
use whatsapp_rust::wacore::store::error::StoreError;

use crate::store::{DeviceKeyKind as Kind, KeyRow};

/// The scope of kinds that are not grouped.
pub const UNSCOPED: &str = "";

/// Joins the parts of a key that whatsapp-rust scopes by two names (sender and message id).
/// JIDs never hold control characters, so the separator cannot occur inside the first part.
pub fn joined(first: &str, second: &str) -> String {
    format!("{first}\u{1f}{second}")
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(text: &str) -> Result<Vec<u8>, StoreError> {
    let bad = || {
        StoreError::Validation(format!(
            "a device-key row has a malformed hex key ({} chars)",
            text.len()
        ))
    };
    if !text.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
        .collect()
}

pub fn identity(address: &str, key: &[u8; 32]) -> KeyRow {
    KeyRow::new(Kind::Identity, UNSCOPED, address, key.to_vec())
}

pub fn identity_key(address: &str, row: KeyRow) -> Result<[u8; 32], StoreError> {
    row.value.try_into().map_err(|v: Vec<u8>| {
        StoreError::Validation(format!("the identity key of {address} has {} bytes, not 32", v.len()))
    })
}

pub fn session(address: &str, record: &[u8]) -> KeyRow {
    KeyRow::new(Kind::Session, UNSCOPED, address, record)
}

pub fn sender_key(address: &str, record: &[u8]) -> KeyRow {
    KeyRow::new(Kind::SenderKey, UNSCOPED, address, record)
}

/// `num` holds the id, for the largest-id query; `flag` whether it was uploaded.
pub fn prekey(id: u32, record: &[u8], uploaded: bool) -> KeyRow {
    KeyRow::new(Kind::PreKey, UNSCOPED, id.to_string(), record)
        .num(i64::from(id))
        .flag(uploaded)
}

pub fn signed_prekey(id: u32, record: &[u8]) -> KeyRow {
    KeyRow::new(Kind::SignedPreKey, UNSCOPED, id.to_string(), record).num(i64::from(id))
}

/// The id of a pre-key or signed pre-key row.
pub fn key_id(row: &KeyRow) -> Result<u32, StoreError> {
    row.key
        .parse()
        .map_err(|_| StoreError::Validation(format!("a pre-key row has the key {:?}, not an id", row.key)))
}

pub fn sync_key(key_id: &[u8], key: &AppStateSyncKey) -> KeyRow {
    let mut out = Writer::new();
    out.bytes(&key.key_data);
    out.bytes(&key.fingerprint);
    out.i64(key.timestamp);
    KeyRow::new(Kind::SyncKey, UNSCOPED, hex(key_id), out.0)
}

pub fn decode_sync_key(value: &[u8]) -> Result<AppStateSyncKey, StoreError> {
    let mut input = Reader::new(value)?;
    let key = AppStateSyncKey {
        key_data: input.bytes()?,
        fingerprint: input.bytes()?,
        timestamp: input.i64()?,
    };
    input.end()?;
    Ok(key)
}

pub fn app_state_version(name: &str, state: &HashState) -> KeyRow {
    let mut out = Writer::new();
    out.0.extend_from_slice(&state.version.to_le_bytes());
    out.0.extend_from_slice(&state.hash);
    out.0.push(u8::from(state.mac_mismatch_fatal));
    let mut entries: Vec<_> = state.index_value_map.iter().collect();
    entries.sort();
    out.len(entries.len());
    for (index, value) in entries {
        out.bytes(index.as_bytes());
        out.bytes(value);
    }
    KeyRow::new(Kind::AppStateVersion, UNSCOPED, name, out.0)
}

pub fn decode_app_state_version(value: &[u8]) -> Result<HashState, StoreError> {
    let mut input = Reader::new(value)?;
    let version = u64::from_le_bytes(input.array()?);
    let hash: [u8; 128] = input.array()?;
    let mac_mismatch_fatal = input.array::<1>()?[0] != 0;
    let count = input.len()?;
    let mut index_value_map = HashMap::with_capacity(count.min(value.len()));
    for _ in 0..count {
        let index = String::from_utf8(input.bytes()?)
            .map_err(|_| StoreError::Validation("an app-state index is not UTF-8".into()))?;
        index_value_map.insert(index, input.bytes()?);
    }
    input.end()?;
    Ok(HashState {
        version,
        hash,
        index_value_map,
        mac_mismatch_fatal,
    })
}

/// Scoped by collection (cleared per collection); `num` holds the version that wrote it.
pub fn mutation_mac(collection: &str, version: u64, index_mac: &[u8], value_mac: &[u8]) -> KeyRow {
    KeyRow::new(Kind::MutationMac, collection, hex(index_mac), value_mac).num(version as i64)
}

/// Scoped by phone (the lookup by phone); `num` the first sighting, `ts` the last update.
pub fn lid_mapping(entry: &LidPnMappingEntry) -> KeyRow {
    KeyRow::new(
        Kind::LidMapping,
        entry.phone_number.as_str(),
        entry.lid.as_str(),
        entry.learning_source.as_bytes(),
    )
    .num(entry.created_at)
    .ts(Some(entry.updated_at))
}

pub fn lid_mapping_entry(row: KeyRow) -> Result<LidPnMappingEntry, StoreError> {
    Ok(LidPnMappingEntry {
        learning_source: String::from_utf8(row.value)
            .map_err(|_| StoreError::Validation("a LID mapping's source is not UTF-8".into()))?,
        created_at: row.num.unwrap_or_default(),
        updated_at: row.ts.unwrap_or_default(),
        lid: row.key,
        phone_number: row.scope,
    })
}

pub fn base_key(address: &str, message_id: &str, key: &[u8], now_secs: i64) -> KeyRow {
    KeyRow::new(Kind::BaseKey, address, message_id, key).ts(Some(now_secs))
}

pub fn device_list(record: &DeviceListRecord) -> Result<KeyRow, StoreError> {
    let json = serde_json::to_vec(record).map_err(|e| StoreError::Serialization(Box::new(e)))?;
    Ok(KeyRow::new(Kind::DeviceList, UNSCOPED, record.user.as_str(), json))
}

pub fn decode_device_list(value: &[u8]) -> Result<DeviceListRecord, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Serialization(Box::new(e)))
}

pub fn group_metadata(group: &str, blob: &[u8]) -> KeyRow {
    KeyRow::new(Kind::GroupMetadata, UNSCOPED, group, blob)
}

/// `num`: when the token was received; `flag`: a token is there (not a placeholder); `ts`:
/// when waghl last issued its own token to the contact.
pub fn tc_token(jid: &str, entry: &TcTokenEntry) -> KeyRow {
    KeyRow::new(Kind::TcToken, UNSCOPED, jid, entry.token.as_slice())
        .num(entry.token_timestamp)
        .flag(!entry.token.is_empty())
        .ts(entry.sender_timestamp)
}

pub fn tc_token_entry(row: KeyRow) -> TcTokenEntry {
    TcTokenEntry {
        token: row.value,
        token_timestamp: row.num.unwrap_or_default(),
        sender_timestamp: row.ts,
    }
}

/// Scoped by chat; `ts` when it was stored (its expiry).
pub fn sent_message(chat: &str, message_id: &str, payload: &[u8], now_secs: i64) -> KeyRow {
    KeyRow::new(Kind::SentMessage, chat, message_id, payload).ts(Some(now_secs))
}

/// Scoped by chat; `ts` when it was stored (its expiry).
pub fn pending_inbound(chat: &str, sender: &str, id: &str, message: &[u8], now_secs: i64) -> KeyRow {
    KeyRow::new(Kind::PendingInbound, chat, joined(sender, id), message).ts(Some(now_secs))
}

/// Scoped by chat; `num` the parent message's time, `ts` the deadline (NULL: never, the
/// crate's 0).
pub fn msg_secret(entry: &MsgSecretEntry) -> KeyRow {
    KeyRow::new(
        Kind::MsgSecret,
        &*entry.chat,
        joined(&entry.sender, &entry.msg_id),
        entry.secret.to_vec(),
    )
    .num(entry.message_ts)
    .ts((entry.expires_at != 0).then_some(entry.expires_at))
}

/// Scoped by group; `flag` whether the device holds the current sender key.
pub fn sender_key_device(group: &str, device: &str, has_key: bool, now_secs: i64) -> KeyRow {
    KeyRow::new(Kind::SenderKeyDevice, group, device, Vec::new())
        .flag(has_key)
        .ts(Some(now_secs))
}

pub fn encode_device(device: &Device) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(device).map_err(|e| StoreError::Serialization(Box::new(e)))
}

/// The device, with what the crate never persists set as its own store sets it on load.
pub fn decode_device(bytes: &[u8]) -> Result<Device, StoreError> {
    let mut device: Device = serde_json::from_slice(bytes).map_err(|e| StoreError::Serialization(Box::new(e)))?;
    device.device_props = Arc::new(DEVICE_PROPS.clone());
    device.client_profile = ClientProfile::web();
    Ok(device)
}

/// Length-prefixed fields behind a format version byte.
struct Writer(Vec<u8>);

const FORMAT_V1: u8 = 1;

impl Writer {
    fn new() -> Self {
        Self(vec![FORMAT_V1])
    }

    fn len(&mut self, len: usize) {
        self.0.extend_from_slice(&(len as u32).to_le_bytes());
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.len(bytes.len());
        self.0.extend_from_slice(bytes);
    }

    fn i64(&mut self, value: i64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }
}

struct Reader<'a>(&'a [u8]);

fn truncated() -> StoreError {
    StoreError::Validation("a device-key value is truncated or of an unknown format".into())
}

impl<'a> Reader<'a> {
    fn new(input: &'a [u8]) -> Result<Self, StoreError> {
        match input.split_first() {
            Some((&FORMAT_V1, rest)) => Ok(Self(rest)),
            _ => Err(truncated()),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(truncated());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }

    fn len(&mut self) -> Result<usize, StoreError> {
        Ok(u32::from_le_bytes(self.array()?) as usize)
    }

    fn bytes(&mut self) -> Result<Vec<u8>, StoreError> {
        let len = self.len()?;
        Ok(self.take(len)?.to_vec())
    }

    fn i64(&mut self) -> Result<i64, StoreError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn end(self) -> Result<(), StoreError> {
        if self.0.is_empty() { Ok(()) } else { Err(truncated()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_state_comes_back_whole() {
        let mut hash = [0u8; 128];
        hash[0] = 0xff;
        hash[127] = 0x11;
        let state = HashState {
            version: 42,
            hash,
            index_value_map: HashMap::from([("idx-a".to_owned(), vec![1, 2, 3]), ("idx-b".to_owned(), vec![])]),
            mac_mismatch_fatal: true,
        };
        let row = app_state_version("regular_high", &state);
        assert_eq!(
            (row.kind, row.scope.as_str(), row.key.as_str()),
            (Kind::AppStateVersion, "", "regular_high")
        );
        let back = decode_app_state_version(&row.value).unwrap();
        assert_eq!(
            (back.version, back.hash, back.index_value_map, back.mac_mismatch_fatal),
            (42, hash, state.index_value_map, true)
        );
        let empty = decode_app_state_version(&app_state_version("x", &HashState::default()).value).unwrap();
        assert!(empty.index_value_map.is_empty() && empty.version == 0);
    }

    #[test]
    fn a_truncated_or_foreign_value_is_refused_not_misread() {
        let row = sync_key(
            &[1, 2],
            &AppStateSyncKey {
                key_data: vec![7; 32],
                fingerprint: vec![9, 8],
                timestamp: 1_700_000_123,
            },
        );
        let back = decode_sync_key(&row.value).unwrap();
        assert_eq!(
            (back.key_data, back.fingerprint, back.timestamp),
            (vec![7; 32], vec![9, 8], 1_700_000_123)
        );
        assert_eq!(row.key, "0102");
        assert!(decode_sync_key(&row.value[..row.value.len() - 1]).is_err());
        assert!(decode_sync_key(&[row.value.as_slice(), &[0]].concat()).is_err());
        assert!(decode_sync_key(&[2, 0, 0, 0, 0]).is_err());
        assert!(decode_app_state_version(&row.value).is_err());
        assert!(decode_sync_key(&[]).is_err());
    }

    #[test]
    fn keys_in_hex_come_back_as_bytes() {
        assert_eq!(hex(&[0x00, 0xab, 0x10]), "00ab10");
        assert_eq!(unhex("00ab10").unwrap(), [0x00, 0xab, 0x10]);
        assert!(unhex("abc").is_err() && unhex("zz").is_err());
        assert_eq!(unhex("").unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn a_device_comes_back_with_its_keys_and_the_runtime_fields_restored() {
        let mut device = Device::new();
        device.pn = Some("15551234567@s.whatsapp.net".parse().unwrap());
        device.push_name = "Acme".into();
        device.next_pre_key_id = 812;
        let back = decode_device(&encode_device(&device).unwrap()).unwrap();
        assert_eq!(back.pn, device.pn);
        assert_eq!(back.push_name, "Acme");
        assert_eq!(back.next_pre_key_id, 812);
        assert_eq!(back.registration_id, device.registration_id);
        assert_eq!(
            back.noise_key.private_key.serialize(),
            device.noise_key.private_key.serialize()
        );
        assert_eq!(
            back.identity_key.public_key.public_key_bytes(),
            device.identity_key.public_key.public_key_bytes()
        );
        assert_eq!(back.adv_secret_key, device.adv_secret_key);
        assert_eq!(back.signed_pre_key_signature, device.signed_pre_key_signature);
        assert_eq!(back.device_props.os, DEVICE_PROPS.os);
        assert!(decode_device(b"{}").is_err());
    }

    #[test]
    fn a_message_secret_without_a_deadline_never_expires() {
        let chat = "15551234567@s.whatsapp.net".parse().unwrap();
        let sender = "15557654321:3@s.whatsapp.net".parse().unwrap();
        let forever = MsgSecretEntry::new(&chat, &sender, "3EB0AA", [5; 32], 0, 1_700_000_000);
        let row = msg_secret(&forever);
        assert_eq!(row.scope, "15551234567@s.whatsapp.net");
        assert_eq!(row.key, joined("15557654321@s.whatsapp.net", "3EB0AA"));
        assert_eq!(
            (row.ts, row.num, row.value.as_slice()),
            (None, Some(1_700_000_000), &[5u8; 32][..])
        );
        let dated = MsgSecretEntry::new(&chat, &sender, "3EB0AA", [5; 32], 1_800_000_000, 0);
        assert_eq!(msg_secret(&dated).ts, Some(1_800_000_000));
    }

    #[test]
    fn a_tc_token_row_says_whether_a_token_is_there() {
        let real = TcTokenEntry {
            token: vec![1, 2],
            token_timestamp: 100,
            sender_timestamp: Some(90),
        };
        let row = tc_token("1555@lid", &real);
        assert!(row.flag);
        let back = tc_token_entry(row);
        assert_eq!(
            (back.token, back.token_timestamp, back.sender_timestamp),
            (vec![1, 2], 100, Some(90))
        );
        let placeholder = TcTokenEntry {
            token: vec![],
            token_timestamp: 100,
            sender_timestamp: None,
        };
        assert!(!tc_token("1555@lid", &placeholder).flag);
    }

    #[test]
    fn a_lid_mapping_is_scoped_by_its_phone() {
        let entry = LidPnMappingEntry {
            lid: "100000012345678".into(),
            phone_number: "15551234567".into(),
            created_at: 10,
            updated_at: 20,
            learning_source: "usync".into(),
        };
        let row = lid_mapping(&entry);
        assert_eq!(
            (row.scope.as_str(), row.key.as_str()),
            ("15551234567", "100000012345678")
        );
        let back = lid_mapping_entry(row).unwrap();
        assert_eq!(
            (
                back.lid,
                back.phone_number,
                back.created_at,
                back.updated_at,
                back.learning_source
            ),
            (entry.lid, entry.phone_number, 10, 20, entry.learning_source)
        );
    }

    #[test]
    fn pre_keys_carry_their_id_for_the_largest_id_query() {
        let row = prekey(4_000_000_000, b"record", true);
        assert_eq!(
            (row.key.as_str(), row.num, row.flag),
            ("4000000000", Some(4_000_000_000), true)
        );
        assert_eq!(key_id(&row).unwrap(), 4_000_000_000);
        assert_eq!(key_id(&signed_prekey(7, b"r")).unwrap(), 7);
    }
}
