//! The one-time import of the device files that earlier versions wrote (whatsapp-rust's own
//! SQLite store, one `{sessions_dir}/{location}.db` per location) into the database.
//!
//! Each file goes in one transaction, and only into a location that has no device in the
//! database yet, so a file can never overwrite keys (nor be imported twice). The file is
//! renamed `.imported` after the commit and kept for a rollback. A file that fails is left
//! where it is and logged without secrets; its session then refuses to start (parked,
//! `wa_keys_not_imported`) instead of pairing anew over the keys it holds, and each start of
//! that session tries the import again.
//!
//! The crate's own store reads what it encodes in its private formats (the device, app-state
//! keys and versions); `store::LegacyDeviceFile` reads the other tables as stored.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, anyhow};
use whatsapp_rust::store::SqliteStore;
use whatsapp_rust::store::traits::{
    AppSyncStore, DeviceInfo, DeviceListRecord, DeviceStore, LidPnMappingEntry, MsgSecretEntry, TcTokenEntry,
};
use whatsapp_rust::wacore::store::Device;

use super::device_store::rows;
use super::files::{legacy_file, legacy_files, mark_imported};
use crate::domain::LocationId;
use crate::store::{KeyRow, LegacyDeviceFile, Store};

/// What became of one file.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    Imported {
        rows: usize,
    },
    /// The database holds a device for the location already: the file is left as it is.
    AlreadyInDatabase,
    /// The file holds no device (created, never written): renamed, nothing to import.
    NoDevice,
}

/// Imports every device file in `sessions_dir` that is not imported yet; at start, before any
/// session starts.
pub async fn import_device_files(store: &Store, sessions_dir: &Path) {
    let files = match legacy_files(sessions_dir) {
        Ok(files) => files,
        Err(e) => {
            tracing::error!(dir = %sessions_dir.display(), error = %e, "cannot list the device files of earlier versions");
            return;
        }
    };
    for (location, path) in files {
        let started = std::time::Instant::now();
        match import_file(store, &location, &path).await {
            Ok(Outcome::Imported { rows }) => tracing::info!(
                location.id = %location,
                rows,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "imported the WhatsApp device keys of an earlier version into the database"
            ),
            Ok(Outcome::AlreadyInDatabase) => tracing::warn!(
                location.id = %location,
                file = %path.display(),
                "the database holds this location's device keys already; the file is left as it is and not used"
            ),
            Ok(Outcome::NoDevice) => {
                tracing::info!(location.id = %location, "a device file without a device was set aside")
            }
            Err(e) => report_failure(&location, &path, &e),
        }
    }
}

/// Imports the location's device file, when it has one that is not imported yet.
pub(super) async fn import_if_present(store: &Store, sessions_dir: &Path, location: &LocationId) -> anyhow::Result<()> {
    let path = legacy_file(sessions_dir, location);
    if !path.exists() {
        return Ok(());
    }
    import_file(store, location, &path).await.map(|_| ())
}

pub(super) fn report_failure(location: &LocationId, path: &Path, e: &anyhow::Error) {
    tracing::error!(
        location.id = %location,
        file = %path.display(),
        error = format!("{e:#}"),
        "could not import the WhatsApp device keys of an earlier version; the file is kept and the session \
         waits (fix the file and restart, or log the session out with ?force=true to pair anew)"
    );
}

async fn import_file(store: &Store, location: &LocationId, path: &Path) -> anyhow::Result<Outcome> {
    let keys = store.device_keys(location.as_str());
    if keys.has_device().await? {
        return Ok(Outcome::AlreadyInDatabase);
    }
    let Some((device, rows)) = read(path).await? else {
        mark_imported(path).context("setting the empty file aside")?;
        return Ok(Outcome::NoDevice);
    };
    let count = rows.len();
    if !keys.import(&rows::encode_device(&device)?, &rows).await? {
        return Ok(Outcome::AlreadyInDatabase);
    }
    // Committed: from now on the database's device wins, so a failed rename imports nothing
    // twice.
    if let Err(e) = mark_imported(path) {
        tracing::error!(location.id = %location, file = %path.display(), error = %e, "imported, but the file could not be renamed; it is not used any more");
    }
    Ok(Outcome::Imported { rows: count })
}

/// The file's device and its rows; `None` when it holds no device.
async fn read(path: &Path) -> anyhow::Result<Option<(Device, Vec<KeyRow>)>> {
    let url = path.to_str().context("the file's path is not UTF-8")?;
    // The earlier version created the file empty before the crate's store filled it.
    if std::fs::metadata(path).context("reading the file's size")?.len() == 0 {
        return Ok(None);
    }
    // The tables first: a file that is not the crate's database fails here at once, where
    // the crate's connection pool would retry it for half a minute.
    let file = LegacyDeviceFile::read(path).await.context("reading the tables")?;
    // Opening runs the crate's migrations, which are no-ops on a file of this crate version.
    let crate_store = SqliteStore::new(url)
        .await
        .context("opening the file with whatsapp-rust's store")?;
    let Some(device) = crate_store.load().await.context("reading the device")? else {
        return Ok(None);
    };
    let mut rows = Vec::new();
    for id in &file.sync_key_ids {
        if let Some(key) = crate_store.get_sync_key(id).await.context("reading an app-state key")? {
            rows.push(rows::sync_key(id, &key));
        }
    }
    for name in &file.app_state_collections {
        let state = crate_store
            .get_version(name)
            .await
            .context("reading an app-state version")?;
        rows.push(rows::app_state_version(name, &state));
    }
    drop(crate_store);
    rows.extend(file_rows(file)?);
    Ok(Some((device, rows)))
}

/// The rows of the tables read as stored: the same mapping as the storage backend's.
fn file_rows(file: LegacyDeviceFile) -> anyhow::Result<Vec<KeyRow>> {
    let mut out = Vec::new();
    for r in file.identities {
        let key: [u8; 32] = r
            .record
            .try_into()
            .map_err(|v: Vec<u8>| anyhow!("an identity key has {} bytes, not 32", v.len()))?;
        out.push(rows::identity(&r.address, &key));
    }
    out.extend(file.sessions.iter().map(|r| rows::session(&r.address, &r.record)));
    out.extend(file.sender_keys.iter().map(|r| rows::sender_key(&r.address, &r.record)));
    for r in file.prekeys {
        out.push(rows::prekey(id(r.id)?, &r.record, r.uploaded));
    }
    for r in file.signed_prekeys {
        out.push(rows::signed_prekey(id(r.id)?, &r.record));
    }
    out.extend(
        file.mutation_macs
            .iter()
            .map(|r| rows::mutation_mac(&r.name, r.version.max(0) as u64, &r.index_mac, &r.value_mac)),
    );
    out.extend(file.lid_mappings.into_iter().map(|r| {
        rows::lid_mapping(&LidPnMappingEntry {
            lid: r.lid,
            phone_number: r.phone_number,
            created_at: r.created_at,
            updated_at: r.updated_at,
            learning_source: r.learning_source,
        })
    }));
    out.extend(
        file.base_keys
            .iter()
            .map(|r| rows::base_key(&r.address, &r.message_id, &r.base_key, r.created_at)),
    );
    for r in file.device_lists {
        let devices: Vec<DeviceInfo> = serde_json::from_str(&r.devices_json).context("a device list is not JSON")?;
        out.push(rows::device_list(&DeviceListRecord {
            user: r.user_id,
            devices,
            timestamp: r.timestamp,
            phash: r.phash,
            raw_id: r.raw_id.and_then(|id| u32::try_from(id).ok()),
        })?);
    }
    out.extend(
        file.group_metadata
            .iter()
            .map(|r| rows::group_metadata(&r.address, &r.record)),
    );
    out.extend(file.tc_tokens.into_iter().map(|r| {
        let entry = TcTokenEntry {
            token: r.token,
            token_timestamp: r.token_timestamp,
            sender_timestamp: r.sender_timestamp,
        };
        rows::tc_token(&r.jid, &entry)
    }));
    out.extend(
        file.sent_messages
            .iter()
            .map(|r| rows::sent_message(&r.chat, &r.id, &r.payload, r.ts)),
    );
    out.extend(
        file.pending_inbound
            .iter()
            .map(|r| rows::pending_inbound(&r.chat, &r.sender, &r.id, &r.payload, r.ts)),
    );
    for r in file.msg_secrets {
        let secret = r
            .payload
            .try_into()
            .map_err(|v: Vec<u8>| anyhow!("a message secret has {} bytes, not 32", v.len()))?;
        out.push(rows::msg_secret(&MsgSecretEntry {
            chat: Arc::from(r.chat),
            sender: Arc::from(r.sender),
            msg_id: Arc::from(r.id),
            secret,
            expires_at: r.ts,
            message_ts: r.num,
        }));
    }
    out.extend(
        file.sender_key_devices
            .iter()
            .map(|r| rows::sender_key_device(&r.group_jid, &r.device_jid, r.has_key != 0, r.updated_at)),
    );
    Ok(out)
}

fn id(id: i64) -> anyhow::Result<u32> {
    u32::try_from(id).map_err(|_| anyhow!("a pre-key id {id} is out of range"))
}
