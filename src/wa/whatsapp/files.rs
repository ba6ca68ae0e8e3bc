//! The device files of earlier versions, `{sessions_dir}/{location}.db` (whatsapp-rust's own
//! SQLite store): found for the import, renamed `{location}.db.imported` once imported (kept,
//! 0600, so an operator can roll back), deleted with the location's keys. The transport itself
//! writes nothing under the sessions directory any more.

use std::path::{Path, PathBuf};

use crate::domain::LocationId;

/// The files SQLite keeps beside a database, found by the database's name.
const COMPANIONS: [&str; 3] = ["-wal", "-shm", "-journal"];

pub(super) fn legacy_file(dir: &Path, location: &LocationId) -> PathBuf {
    dir.join(format!("{}.db", location.as_str()))
}

fn imported_name(db: &Path) -> PathBuf {
    with_suffix(db, ".imported")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The device files in `dir` (none when it does not exist), in location order. Files whose
/// name is not a location id are not waghl's and are left alone.
pub(super) fn legacy_files(dir: &Path) -> std::io::Result<Vec<(LocationId, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let location = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".db"))
            .and_then(|stem| LocationId::parse(stem).ok());
        if let Some(location) = location
            && path.is_file()
        {
            found.push((location, path));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

/// Renames an imported file to `.imported` (its companions too, so SQLite still finds them
/// for a rollback) and keeps it private; the new name.
pub(super) fn mark_imported(db: &Path) -> std::io::Result<PathBuf> {
    let target = imported_name(db);
    std::fs::rename(db, &target)?;
    for suffix in COMPANIONS {
        let companion = with_suffix(db, suffix);
        if companion.exists() {
            std::fs::rename(&companion, with_suffix(&target, suffix))?;
        }
    }
    #[cfg(unix)]
    for path in std::iter::once(target.clone()).chain(COMPANIONS.iter().map(|s| with_suffix(&target, s))) {
        use std::os::unix::fs::PermissionsExt;
        if path.exists() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(target)
}

/// Deletes the location's device file, imported or not, with its companions. Companions go
/// first: a stale `-wal` next to a new database would be replayed into it.
pub(super) async fn remove_legacy_files(dir: &Path, location: &LocationId) -> std::io::Result<()> {
    let db = legacy_file(dir, location);
    for base in [db.clone(), imported_name(&db)] {
        for path in COMPANIONS.iter().map(|s| with_suffix(&base, s)).chain([base.clone()]) {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(id: &str) -> LocationId {
        LocationId::parse(id).unwrap()
    }

    #[test]
    fn only_files_named_after_a_location_are_device_files() {
        let temp = tempfile::tempdir().unwrap();
        for name in [
            "locB.db",
            "locA.db",
            "locA.db-wal",
            "locC.db.imported",
            "notes.txt",
            "bad id.db",
        ] {
            std::fs::write(temp.path().join(name), b"x").unwrap();
        }
        std::fs::create_dir(temp.path().join("sim")).unwrap();
        let found: Vec<String> = legacy_files(temp.path())
            .unwrap()
            .into_iter()
            .map(|(l, _)| l.as_str().to_owned())
            .collect();
        assert_eq!(found, ["locA", "locB"]);
        assert!(legacy_files(&temp.path().join("missing")).unwrap().is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn an_imported_file_keeps_its_companions_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let temp = tempfile::tempdir().unwrap();
        let db = legacy_file(temp.path(), &location("loc1"));
        std::fs::write(&db, b"db").unwrap();
        std::fs::write(with_suffix(&db, "-wal"), b"wal").unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let target = mark_imported(&db).unwrap();
        assert_eq!(target, temp.path().join("loc1.db.imported"));
        assert!(!db.exists() && !with_suffix(&db, "-wal").exists());
        assert_eq!(std::fs::read(temp.path().join("loc1.db.imported-wal")).unwrap(), b"wal");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[tokio::test]
    async fn removing_a_locations_files_leaves_the_others() {
        let temp = tempfile::tempdir().unwrap();
        let names = [
            "loc1.db",
            "loc1.db-wal",
            "loc1.db-shm",
            "loc1.db.imported",
            "loc1.db.imported-wal",
            "loc2.db",
            "loc2.db.imported",
        ];
        for name in names {
            std::fs::write(temp.path().join(name), b"x").unwrap();
        }
        remove_legacy_files(temp.path(), &location("loc1")).await.unwrap();
        for name in &names[..5] {
            assert!(!temp.path().join(name).exists(), "{name} survived");
        }
        assert!(temp.path().join("loc2.db").exists() && temp.path().join("loc2.db.imported").exists());
        // Removing what is already gone is fine.
        remove_legacy_files(temp.path(), &location("loc1")).await.unwrap();
    }
}
