//! JSON snapshot files, `<dir>/<roomId>.json`, in the reference server's format: a directory
//! written by `@woven-ecs/canvas-store-server`'s `FileStorage` loads here, and the other way round.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{decode_within, Storage, StorageError};
use crate::engine::{Document, Limits};
use crate::ids::{RecordKey, RoomId};

/// Game room records live in this subdirectory, apart from canvas snapshots.
const RECORDS_DIR: &str = "game-rooms";

pub struct FileStorage {
    dir: PathBuf,
}

impl FileStorage {
    /// Opens (and creates) the directory.
    pub fn open(dir: &Path) -> Result<FileStorage, StorageError> {
        fs::create_dir_all(dir).map_err(|source| StorageError::Io {
            room: String::new(),
            source,
        })?;
        Ok(FileStorage {
            dir: dir.to_path_buf(),
        })
    }

    /// The snapshot file of a room. Room ids are validated, so this stays inside `dir`.
    pub fn path(&self, room: &RoomId) -> PathBuf {
        self.dir.join(format!("{room}.json"))
    }

    /// The record file of a game room: `<dir>/game-rooms/<namespace>/<id>.json`.
    pub fn record_path(&self, key: &RecordKey) -> PathBuf {
        self.dir
            .join(RECORDS_DIR)
            .join(key.namespace.as_str())
            .join(format!("{}.json", key.id))
    }

    fn write_atomic(&self, room: &RoomId, bytes: &[u8]) -> std::io::Result<()> {
        write_atomic(&self.path(room), bytes)
    }
}

/// Writes `target` so that a crash leaves either the old or the new content.
fn write_atomic(target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!("{name}.{}.tmp", uuid::Uuid::new_v4()));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        // Data reaches the disk before the rename makes it visible, so a power loss cannot
        // leave an empty file where the last good snapshot was.
        file.sync_all()?;
        fs::rename(&tmp, target)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn record_error(key: &RecordKey, source: std::io::Error) -> StorageError {
    StorageError::Io {
        room: key.to_string(),
        source,
    }
}

impl Storage for FileStorage {
    fn name(&self) -> &'static str {
        "file"
    }

    fn load(&self, room: &RoomId, limits: &Limits) -> Result<Option<Document>, StorageError> {
        match fs::read(self.path(room)) {
            Ok(bytes) => decode_within(room, &bytes, limits).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StorageError::Io {
                room: room.to_string(),
                source,
            }),
        }
    }

    fn save(&self, room: &RoomId, snapshot: &[u8]) -> Result<(), StorageError> {
        self.write_atomic(room, snapshot)
            .map_err(|source| StorageError::Io {
                room: room.to_string(),
                source,
            })
    }

    fn delete(&self, room: &RoomId) -> Result<(), StorageError> {
        match fs::remove_file(self.path(room)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StorageError::Io {
                room: room.to_string(),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    fn room_ids(&self) -> Result<Vec<RoomId>, StorageError> {
        let io = |source| StorageError::Io {
            room: String::new(),
            source,
        };
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            let name = name.to_string_lossy();
            // Files that are not `<valid room id>.json` (temp files, strays) are not rooms.
            if let Some(id) = name
                .strip_suffix(".json")
                .and_then(|s| RoomId::parse(s).ok())
            {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    fn load_record(&self, key: &RecordKey) -> Result<Option<Vec<u8>>, StorageError> {
        match fs::read(self.record_path(key)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(record_error(key, e)),
        }
    }

    fn save_record(&self, key: &RecordKey, bytes: &[u8]) -> Result<(), StorageError> {
        let path = self.record_path(key);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| record_error(key, e))?;
        }
        write_atomic(&path, bytes).map_err(|e| record_error(key, e))
    }

    fn delete_record(&self, key: &RecordKey) -> Result<(), StorageError> {
        match fs::remove_file(self.record_path(key)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(record_error(key, e)),
            _ => Ok(()),
        }
    }

    fn record_keys(&self) -> Result<Vec<RecordKey>, StorageError> {
        let io = |source| StorageError::Io {
            room: String::new(),
            source,
        };
        let root = self.dir.join(RECORDS_DIR);
        let mut keys = Vec::new();
        let namespaces = match fs::read_dir(&root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
            Err(e) => return Err(io(e)),
        };
        for ns in namespaces {
            let ns = ns.map_err(io)?;
            let Ok(namespace) = RoomId::parse(&ns.file_name().to_string_lossy()) else {
                continue;
            };
            for entry in fs::read_dir(ns.path()).map_err(io)? {
                let name = entry.map_err(io)?.file_name();
                if let Some(id) = name
                    .to_string_lossy()
                    .strip_suffix(".json")
                    .and_then(|s| RoomId::parse(s).ok())
                {
                    keys.push(RecordKey::new(namespace.clone(), id));
                }
            }
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file backend passes the storage contract.
    #[test]
    fn passes_the_contract() {
        let dir = tempfile::tempdir().expect("tempdir");
        super::super::contract::check(&FileStorage::open(dir.path()).expect("open"));
    }

    /// A snapshot file written by the reference server loads, and a corrupt file is reported,
    /// not treated as an empty room (which the next save would overwrite).
    #[test]
    fn reads_reference_files_and_refuses_corrupt_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = FileStorage::open(dir.path()).expect("open");
        let room = RoomId::parse("ref").expect("id");
        fs::write(
            storage.path(&room),
            r#"{"timestamp":2,"state":{"e1/Shape":{"_exists":true,"x":3},"e2/Shape":{"_exists":false}},"timestamps":{"e1/Shape":{"_exists":1,"x":2},"e2/Shape":{"_exists":2}}}"#,
        )
        .expect("write");
        let doc = storage
            .load(&room, &Limits::default())
            .expect("load")
            .expect("present");
        assert_eq!(
            (doc.clock(), doc.live_components(), doc.tombstones()),
            (2, 1, 1)
        );

        fs::write(storage.path(&room), "{\"timestamp\":").expect("write");
        assert!(matches!(
            storage.load(&room, &Limits::default()),
            Err(StorageError::Corrupt { .. })
        ));
    }

    /// Saves leave no temp files behind.
    #[test]
    fn saves_leave_only_the_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = FileStorage::open(dir.path()).expect("open");
        let room = RoomId::parse("r").expect("id");
        for _ in 0..3 {
            storage
                .save(&room, &Document::default().encode_snapshot())
                .expect("save");
        }
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("read")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("r.json")]);
    }
}
