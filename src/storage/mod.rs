//! Where room documents live between processes.
//!
//! A backend stores one snapshot per room (the reference server's `<roomId>.json` format, produced
//! and read by [`Document::encode_snapshot`]/[`Document::decode_snapshot`]). Calls block: the
//! rooms runtime runs them on blocking threads, never on the async workers.
//!
//! A room applies a request, persists it, then acks. Snapshot backends (memory, file) persist by
//! a throttled [`Storage::save`]; a backend with a [`WriteAhead`] log (RocksDB) appends every
//! request's batch before its ack and folds the log into a snapshot with `save`.

mod file;
mod memory;
mod rocks;

use std::sync::Arc;

pub use file::FileStorage;
pub use memory::MemoryStorage;
pub use rocks::{Durability, RocksStorage};

use crate::engine::{Document, LimitError, Limits, SnapshotError};
use crate::ids::{RecordKey, RoomId};

/// A failure of the storage layer. Never swallowed: the caller logs it, counts it, and retries.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage io error for room {room}: {source}")]
    Io {
        room: String,
        #[source]
        source: std::io::Error,
    },
    #[error("stored snapshot of room {room} is unreadable: {source}")]
    Corrupt {
        room: String,
        #[source]
        source: SnapshotError,
    },
    /// Refused before anything was written: the data would not load again.
    #[error("refused to save room {room}: {reason}")]
    Unloadable { room: String, reason: String },
    /// The stored room is bigger than the configured limits allow (written before they existed,
    /// or under higher ones): it is refused, alone, until an operator raises the named setting.
    #[error("stored room {room} is over its limits: {source}; raise the setting to load it")]
    OverLimit {
        room: String,
        #[source]
        source: LimitError,
    },
}

/// A storage backend. Implementations must be safe to call from several threads at once for
/// different rooms; calls for one room are never concurrent (the room serializes them).
pub trait Storage: Send + Sync + 'static {
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;

    /// The room's last saved document, or `None` if the room was never saved. A stored room over
    /// the room bounds of `limits` is refused with [`StorageError::OverLimit`] before it is
    /// built past them (snapshots are counted before they are read, log entries checked before
    /// they are replayed).
    fn load(&self, room: &RoomId, limits: &Limits) -> Result<Option<Document>, StorageError>;

    /// Replaces the room's saved snapshot (bytes from [`Document::encode_snapshot`]) atomically:
    /// after a crash, a load sees either the previous snapshot or this one, never a mix.
    fn save(&self, room: &RoomId, snapshot: &[u8]) -> Result<(), StorageError>;

    /// Removes everything stored for the room.
    fn delete(&self, room: &RoomId) -> Result<(), StorageError>;

    /// Ids of every stored room.
    fn room_ids(&self) -> Result<Vec<RoomId>, StorageError>;

    /// The backend's write-ahead log, if it has one. Then a room appends every request's document
    /// patches before it acks them, and [`Storage::save`] only folds the log into a snapshot.
    /// Without one, acked writes reach storage with the next (throttled) save.
    fn write_ahead(&self) -> Option<&dyn WriteAhead> {
        None
    }

    /// The saved record of a game room (an opaque JSON document owned by the game layer), or
    /// `None`. Records live beside canvas snapshots and never collide with them.
    /// The default (for backends written before game rooms) stores none.
    fn load_record(&self, _key: &RecordKey) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(None)
    }

    /// Replaces a game room's record atomically (durable as configured when this returns).
    fn save_record(&self, key: &RecordKey, _bytes: &[u8]) -> Result<(), StorageError> {
        Err(no_records(key))
    }

    /// Removes a game room's record; removing a missing one is fine.
    fn delete_record(&self, key: &RecordKey) -> Result<(), StorageError> {
        Err(no_records(key))
    }

    /// Every stored game room record's key.
    fn record_keys(&self) -> Result<Vec<RecordKey>, StorageError> {
        Ok(Vec::new())
    }

    /// Called once at shutdown, after every room is saved: finish queued writes and stop
    /// background work, so the process can exit cleanly.
    fn close(&self) {}
}

/// Called once an appended batch is durable, or failed.
pub type AppendDone = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// A write-ahead log shared by all rooms.
pub trait WriteAhead: Send + Sync {
    /// Queues the document patches (raw JSON array, as received) of the request that moved the
    /// room's clock to `clock`. Never blocks; `done` runs on the log's writer thread once the batch
    /// is durable or has failed. Batches of one room are written in the order they are queued, and
    /// after a failure no later batch of that room is written until the room is loaded again.
    fn append(&self, room: &RoomId, clock: u64, patches: Vec<u8>, done: AppendDone);
}

/// Which backend to open.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// RocksDB in `<data_dir>/rocksdb`: every acked write is in its write-ahead log first.
    Rocksdb,
    /// Nothing survives a restart. For tests and throwaway rooms.
    Memory,
    /// One `<roomId>.json` per room in the data directory, compatible with the reference server.
    File,
}

/// Opens the configured backend.
pub fn open(
    kind: StorageKind,
    data_dir: &std::path::Path,
    durability: Durability,
) -> Result<Arc<dyn Storage>, StorageError> {
    Ok(match kind {
        StorageKind::Rocksdb => {
            Arc::new(RocksStorage::open(&data_dir.join("rocksdb"), durability)?)
        }
        StorageKind::Memory => Arc::new(MemoryStorage::default()),
        StorageKind::File => Arc::new(FileStorage::open(data_dir)?),
    })
}

fn no_records(key: &RecordKey) -> StorageError {
    StorageError::Io {
        room: key.to_string(),
        source: std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "this storage backend keeps no game room records",
        ),
    }
}

fn decode(room: &RoomId, bytes: &[u8]) -> Result<Document, StorageError> {
    decode_within(room, bytes, &Limits::UNBOUNDED)
}

/// Reads a stored snapshot of a room bounded by `limits`.
fn decode_within(room: &RoomId, bytes: &[u8], limits: &Limits) -> Result<Document, StorageError> {
    Document::decode_snapshot_within(bytes, limits).map_err(|source| match source {
        SnapshotError::OverLimit(source) => StorageError::OverLimit {
            room: room.to_string(),
            source,
        },
        source => StorageError::Corrupt {
            room: room.to_string(),
            source,
        },
    })
}

#[cfg(test)]
pub(crate) mod contract {
    //! The contract every backend passes.
    use super::*;
    use serde_json::json;

    pub fn check(storage: &dyn Storage) {
        let room = RoomId::parse("contract-room").expect("valid id");
        let other = RoomId::parse("other-room").expect("valid id");
        assert!(
            storage
                .load(&room, &Limits::default())
                .expect("load")
                .is_none(),
            "a new room has no snapshot"
        );

        let mut doc = Document::default();
        let limits = Limits::default();
        doc.apply(&[json!({"a/S": {"_exists": true, "x": 1}})], &limits);
        doc.apply(&[json!({"b/S": {"_exists": true}})], &limits);
        doc.apply(&[json!({"b/S": {"_exists": false}})], &limits);
        storage.save(&room, &doc.encode_snapshot()).expect("save");
        assert_eq!(
            storage.load(&room, &Limits::default()).expect("load"),
            Some(doc.clone()),
            "round trip, tombstones kept"
        );

        doc.apply(&[json!({"a/S": {"x": 2}})], &limits);
        storage
            .save(&room, &doc.encode_snapshot())
            .expect("save again");
        assert_eq!(
            storage.load(&room, &Limits::default()).expect("load"),
            Some(doc.clone()),
            "last save wins"
        );

        storage
            .save(&other, &Document::default().encode_snapshot())
            .expect("save other");
        let mut ids = storage.room_ids().expect("ids");
        ids.sort();
        assert_eq!(ids, vec![room.clone(), other.clone()]);

        storage.delete(&room).expect("delete");
        assert!(
            storage
                .load(&room, &Limits::default())
                .expect("load")
                .is_none(),
            "deleted"
        );
        assert_eq!(storage.room_ids().expect("ids"), vec![other.clone()]);
        storage.delete(&room).expect("deleting twice is fine");

        // Game room records: beside snapshots, never listed as canvas rooms.
        let key = RecordKey::parse("battle/room-1").expect("key");
        assert!(storage.load_record(&key).expect("load").is_none());
        storage
            .save_record(&key, b"{\"v\":1}")
            .expect("save record");
        storage.save_record(&key, b"{\"v\":2}").expect("save again");
        assert_eq!(
            storage.load_record(&key).expect("load").as_deref(),
            Some(&b"{\"v\":2}"[..])
        );
        assert_eq!(storage.record_keys().expect("keys"), vec![key.clone()]);
        assert_eq!(storage.room_ids().expect("ids"), vec![other.clone()]);
        storage.delete_record(&key).expect("delete record");
        storage.delete_record(&key).expect("deleting twice is fine");
        assert!(storage.load_record(&key).expect("load").is_none());
        assert!(storage.record_keys().expect("keys").is_empty());
    }
}
