//! Where rooms live between processes: bytes by [`RoomKey`].
//!
//! A backend stores, per room key, a snapshot (opaque bytes; for a canvas room the reference
//! server's `<roomId>.json` format) and a log of entries `(seq, bytes)` written after it. What the
//! bytes mean is the engine's business ([`crate::engine::replay`]); this layer only keeps them.
//!
//! One write path for every backend: a room appends each request's batch ([`Storage::append`])
//! and holds the request's ack until the append is durable; now and then it folds its state into
//! a new snapshot ([`Storage::fold`]), which trims the log. Recovery = snapshot + log replay.
//! Appends wait for room in a shared byte budget ([`WriteBudget`]) before they are queued, so
//! the writer's queue never grows past it.
//!
//! Blocking calls (`load`, `fold`, `delete`, `list`) run on blocking threads, never on the async
//! workers; `append` never blocks.

mod budget;
mod file;
mod gated;
mod memory;
mod rocks;
mod writer;

use std::sync::Arc;

pub use budget::{BudgetPermit, WriteBudget, DEFAULT_STORAGE_QUEUE_BYTES};
pub use file::FileStorage;
pub use gated::{Appends, GatedStorage};
pub use memory::MemoryStorage;
pub use rocks::RocksStorage;

use crate::engine::{replay, Document, Limits, ReplayError, SnapshotError};
#[cfg(test)]
use crate::ids::RecordKey;
use crate::ids::{RoomId, RoomKey};

/// A failure of the storage layer. Never swallowed: the caller logs it, counts it, and retries.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage io error for room {room}: {source}")]
    Io {
        room: String,
        #[source]
        source: std::io::Error,
    },
    /// What is stored cannot be read back: never treated as an empty room.
    #[error("stored data of room {room} is unreadable: {reason}")]
    Corrupt { room: String, reason: String },
    /// Refused before anything was written: the data would not load again.
    #[error("refused to save room {room}: {reason}")]
    Unloadable { room: String, reason: String },
    /// The stored room is bigger than the configured limits allow (written before they existed,
    /// or under higher ones): it is refused, alone, until an operator raises the named setting.
    #[error("stored room {room} is over its limits: {source}; raise the setting to load it")]
    OverLimit {
        room: String,
        #[source]
        source: crate::engine::LimitError,
    },
}

/// What is stored for a room: its last snapshot, and the log entries `(seq, bytes)` after it, in
/// seq order and without gaps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    pub snapshot: Option<Vec<u8>>,
    pub log: Vec<(u64, Vec<u8>)>,
}

/// Called once an appended batch is durable, or failed.
pub type AppendDone = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// A storage backend. Safe to call from several threads at once for different rooms; calls for
/// one room are never concurrent (the room serializes them), except that appends may be queued
/// while a fold of the same room runs.
pub trait Storage: Send + Sync + 'static {
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;

    /// The room's snapshot and log, or `None` if nothing is stored. Waits until everything
    /// queued for the room before it was written (or refused), and lets the room append again
    /// after a failed append. Log entries after a break in seq order (written after a failed
    /// append, so never acked) are dropped, with a warning.
    fn load(&self, key: &RoomKey) -> Result<Option<Stored>, StorageError>;

    /// Queues `bytes` as the log entry `seq` of the room. Never blocks; `done` runs (on the
    /// writer's thread) once the entry is durable as configured, or has failed. Entries of one
    /// room are written in the order they are queued; after a failure no later entry of that
    /// room is written until it is loaded again.
    fn append(&self, key: &RoomKey, seq: u64, bytes: Vec<u8>, done: AppendDone);

    /// Replaces the room's snapshot with one that holds every entry up to `seq`, atomically (a
    /// load sees the old snapshot or this one), then drops the log entries `<= seq`. Returns
    /// once done; ordered after the appends queued before it.
    fn fold(&self, key: &RoomKey, seq: u64, snapshot: &[u8]) -> Result<(), StorageError>;

    /// Removes everything stored for the room; removing a missing room is fine.
    fn delete(&self, key: &RoomKey) -> Result<(), StorageError>;

    /// Every stored room's key (a room with only log entries too).
    fn list(&self) -> Result<Vec<RoomKey>, StorageError>;

    /// Called once at shutdown, after every room is folded: finish queued writes and stop
    /// background work, so the process can exit cleanly.
    fn close(&self) {}
}

/// Which backend to open.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// RocksDB in `<data_dir>/rocksdb`: every acked write is in its write-ahead log first.
    Rocksdb,
    /// Kept in memory only: NOTHING survives a restart. For tests and throwaway rooms.
    Memory,
    /// One `<roomId>.json` per room in the data directory, compatible with the reference
    /// server, plus a `<roomId>.log` that holds every acked write before its ack.
    File,
}

/// What an acknowledged write survives (RocksDB and file storage).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// The write is handed to the OS (RocksDB's write-ahead log, or the room's log file) before
    /// the ack: survives a crash or kill of the process.
    ProcessCrash,
    /// The log is also fsynced before the ack (once per group commit): survives power loss.
    PowerLoss,
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
        StorageKind::File => Arc::new(FileStorage::open(data_dir, durability)?),
    })
}

/// Loads a canvas room and rebuilds its document (snapshot + log replay) within `limits`:
/// a room over them is refused with [`StorageError::OverLimit`] before it is built past them.
pub fn load_document(
    storage: &dyn Storage,
    room: &RoomId,
    limits: &Limits,
) -> Result<Option<Document>, StorageError> {
    let Some(stored) = storage.load(&RoomKey::Canvas(room.clone()))? else {
        return Ok(None);
    };
    let log = stored.log.iter().map(|(seq, b)| (*seq, b.as_slice()));
    let replayed = replay(stored.snapshot.as_deref(), log, limits).map_err(|e| match e {
        ReplayError::Snapshot(SnapshotError::OverLimit(source))
        | ReplayError::OverLimit { source, .. } => StorageError::OverLimit {
            room: room.to_string(),
            source,
        },
        e => StorageError::Corrupt {
            room: room.to_string(),
            reason: e.to_string(),
        },
    })?;
    Ok(replayed.map(|r| r.doc))
}

/// How many of `log`'s entries (in seq order) continue one another without a gap: the rest
/// followed a failed append, were never acked, and are dropped by the backend.
fn gapless_len(seqs: impl IntoIterator<Item = u64>) -> usize {
    let mut previous = None;
    let mut len = 0;
    for seq in seqs {
        if previous.is_some_and(|p: u64| seq != p + 1) {
            break;
        }
        previous = Some(seq);
        len += 1;
    }
    len
}

#[cfg(test)]
pub(crate) mod contract {
    //! The contract every backend passes.
    use super::*;
    use std::sync::mpsc;

    /// Appends and waits until the entry is durable (or failed).
    pub fn append_sync(
        storage: &dyn Storage,
        key: &RoomKey,
        seq: u64,
        bytes: &[u8],
    ) -> Result<(), StorageError> {
        let (tx, rx) = mpsc::channel();
        storage.append(
            key,
            seq,
            bytes.to_vec(),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().expect("append answered")
    }

    fn load(storage: &dyn Storage, key: &RoomKey) -> Option<Stored> {
        storage.load(key).expect("load")
    }

    fn sorted(mut keys: Vec<RoomKey>) -> Vec<RoomKey> {
        keys.sort();
        keys
    }

    fn entries(seqs: std::ops::RangeInclusive<u64>) -> Vec<(u64, Vec<u8>)> {
        seqs.map(|s| (s, format!("[{s}]").into_bytes())).collect()
    }

    pub fn check(storage: &dyn Storage) {
        let canvas = RoomKey::Canvas(RoomId::parse("battle").expect("id"));
        let other = RoomKey::Canvas(RoomId::parse("other").expect("id"));
        // A game room whose namespace is a canvas room's id: neither may see the other.
        let game = RoomKey::Game(RecordKey::parse("battle/battle").expect("key"));
        assert!(load(storage, &canvas).is_none(), "a new room has nothing");
        assert!(storage.list().expect("list").is_empty());

        // Appends keep their order; a room with only a log is stored and listed.
        for (seq, bytes) in entries(1..=3) {
            append_sync(storage, &canvas, seq, &bytes).expect("append");
        }
        assert_eq!(
            load(storage, &canvas),
            Some(Stored {
                snapshot: None,
                log: entries(1..=3)
            })
        );
        assert_eq!(storage.list().expect("list"), vec![canvas.clone()]);

        // A fold replaces the snapshot and drops the entries it holds, not later ones.
        for (seq, bytes) in entries(4..=5) {
            append_sync(storage, &canvas, seq, &bytes).expect("append");
        }
        storage.fold(&canvas, 4, b"snapshot@4").expect("fold");
        assert_eq!(
            load(storage, &canvas),
            Some(Stored {
                snapshot: Some(b"snapshot@4".to_vec()),
                log: entries(5..=5)
            })
        );
        append_sync(storage, &canvas, 6, b"[6]").expect("append after a fold");
        storage.fold(&canvas, 6, b"snapshot@6").expect("fold");
        assert_eq!(
            load(storage, &canvas),
            Some(Stored {
                snapshot: Some(b"snapshot@6".to_vec()),
                log: Vec::new()
            })
        );

        // Game keys live beside canvas keys with the same names, each with its own data.
        storage.fold(&game, 0, b"record").expect("fold game");
        append_sync(storage, &game, 1, b"[g1]").expect("append game");
        storage.fold(&other, 0, b"other").expect("fold other");
        assert_eq!(
            sorted(storage.list().expect("list")),
            sorted(vec![canvas.clone(), other.clone(), game.clone()])
        );
        assert_eq!(
            load(storage, &game),
            Some(Stored {
                snapshot: Some(b"record".to_vec()),
                log: vec![(1, b"[g1]".to_vec())]
            })
        );
        assert_eq!(
            load(storage, &canvas).and_then(|s| s.snapshot).as_deref(),
            Some(&b"snapshot@6"[..])
        );

        // Delete removes one room, whole; deleting twice is fine.
        storage.delete(&canvas).expect("delete");
        storage.delete(&canvas).expect("deleting twice is fine");
        assert!(load(storage, &canvas).is_none(), "deleted");
        assert!(load(storage, &game).is_some(), "the game room stays");
        storage.delete(&game).expect("delete game");
        assert!(load(storage, &game).is_none());
        assert_eq!(storage.list().expect("list"), vec![other.clone()]);

        // A deleted room starts again from nothing.
        append_sync(storage, &canvas, 1, b"[1]").expect("append");
        assert_eq!(
            load(storage, &canvas),
            Some(Stored {
                snapshot: None,
                log: entries(1..=1)
            })
        );

        // Entries after a break in seq order were never acked: dropped at load, so a later
        // append with the missing seq does not bring them back.
        append_sync(storage, &canvas, 3, b"[3]").expect("append");
        assert_eq!(load(storage, &canvas).map(|s| s.log), Some(entries(1..=1)));
        append_sync(storage, &canvas, 2, b"[2]").expect("append");
        assert_eq!(load(storage, &canvas).map(|s| s.log), Some(entries(1..=2)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A canvas room is rebuilt from snapshot + log by the engine; a log entry over the limits
    /// is refused as OverLimit, an unreadable one as Corrupt, and neither is served empty.
    #[test]
    fn load_document_replays_and_maps_errors() {
        let storage = MemoryStorage::default();
        let room = RoomId::parse("r").expect("id");
        let key = RoomKey::Canvas(room.clone());
        let limits = Limits::default();
        let mut doc = Document::default();
        doc.apply(&[json!({"a/S": {"_exists": true, "x": 1}})], &limits);
        storage.fold(&key, 1, &doc.encode_snapshot()).expect("fold");
        let write = json!([{"a/S": {"x": 2}}]);
        doc.apply(write.as_array().expect("array"), &limits);
        contract::append_sync(&storage, &key, 2, write.to_string().as_bytes()).expect("append");
        assert_eq!(
            load_document(&storage, &room, &limits).expect("load"),
            Some(doc)
        );

        let huge =
            json!([{"b/S": {"_exists": true, "pts": {"__buf": 1, "len": 1 << 12, "runs": []}}}]);
        contract::append_sync(&storage, &key, 3, huge.to_string().as_bytes()).expect("append");
        let small = Limits {
            max_document_values: 1000,
            ..limits
        };
        assert!(matches!(
            load_document(&storage, &room, &small),
            Err(StorageError::OverLimit { .. })
        ));
        contract::append_sync(&storage, &key, 4, b"{oops").expect("append");
        assert!(matches!(
            load_document(&storage, &room, &Limits::UNBOUNDED),
            Err(StorageError::Corrupt { .. })
        ));
    }
}
