//! RocksDB storage, the default: a log of every acked request, folded into a snapshot per room
//! now and then. Recovery is snapshot + log replay.
//!
//! Layout (one database in `<data_dir>/rocksdb`):
//! - column family `snapshots`: `<roomId>` -> canvas snapshot (the `<roomId>.json` format);
//! - column family `game_rooms`: `<namespace>/<id>` -> a game room's snapshot (its record);
//! - column family `log`: `<key> 0x00 <seq, u64 big-endian>` -> the entry's bytes, where `<key>`
//!   is the room key's storage name (`<roomId>` or `<namespace>/<id>`). Names never contain
//!   0x00, so one room's entries are the contiguous key range `<key> 0x00 ..` `<key> 0x01`, in
//!   seq order.
//!
//! All writes go through one writer thread that drains its queue into a single `WriteBatch`
//! (group commit across rooms), so durability costs one WAL write (and, in power-loss mode, one
//! fsync) per group rather than per request.

use std::collections::HashSet;
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use tracing::{error, warn};

use super::writer::{next_group, Job, JobQueue};
use super::{gapless_len, AppendDone, Durability, Storage, StorageError, Stored};
use crate::ids::{RecordKey, RoomId, RoomKey};

const SNAPSHOTS: &str = "snapshots";
const LOG: &str = "log";
/// Game room snapshots, keyed `namespace/id`.
const RECORDS: &str = "game_rooms";

pub struct RocksStorage {
    /// `None` once closed. [`Storage::close`] takes the database out and closes it then and
    /// there, not whoever drops the last handle to the storage: at shutdown that may be a thread
    /// the process does not join (actix-server's workers), closing the database while `exit`
    /// destroys RocksDB's statics, which aborts the process (SIGABRT in `pthread lock`).
    db: RwLock<Option<Arc<DB>>>,
    queue: JobQueue,
}

fn io_error(key: &RoomKey, e: impl std::fmt::Display) -> StorageError {
    db_error(&key.to_string(), e)
}

/// An error of the database as a whole, or of one room when `room` is not empty.
fn db_error(room: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Io {
        room: room.to_owned(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// The column family and key of a room's snapshot.
fn snapshot_place(key: &RoomKey) -> (&'static str, String) {
    match key {
        RoomKey::Canvas(id) => (SNAPSHOTS, id.to_string()),
        RoomKey::Game(key) => (RECORDS, key.to_string()),
    }
}

fn log_prefix(key: &RoomKey) -> Vec<u8> {
    let mut bytes = key.storage_name().into_bytes();
    bytes.push(0);
    bytes
}

fn log_key(key: &RoomKey, seq: u64) -> Vec<u8> {
    let mut bytes = log_prefix(key);
    bytes.extend_from_slice(&seq.to_be_bytes());
    bytes
}

/// The first key after every log key of `key`.
fn log_end(key: &RoomKey) -> Vec<u8> {
    let mut bytes = key.storage_name().into_bytes();
    bytes.push(1);
    bytes
}

impl RocksStorage {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path, durability: Durability) -> Result<RocksStorage, StorageError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.increase_parallelism(2);
        let cfs =
            [SNAPSHOTS, LOG, RECORDS].map(|name| ColumnFamilyDescriptor::new(name, opts.clone()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|e| StorageError::Io {
            room: String::new(),
            source: std::io::Error::other(format!("opening RocksDB in {}: {e}", dir.display())),
        })?;
        let db = Arc::new(db);
        let queue = {
            let db = db.clone();
            JobQueue::start("weft-rocksdb-writer", move |jobs| {
                write_loop(&db, jobs, durability)
            })
            .map_err(|e| StorageError::Io {
                room: String::new(),
                source: e,
            })?
        };
        Ok(RocksStorage {
            db: RwLock::new(Some(db)),
            queue,
        })
    }

    /// The open database, for one read (`room` names the caller in the error once closed).
    fn db(&self, room: &str) -> Result<OpenDb<'_>, StorageError> {
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        match *db {
            Some(_) => Ok(OpenDb(db)),
            None => Err(db_error(room, "storage is closed")),
        }
    }
}

/// The database, borrowed while open: [`RocksStorage::stop`] waits until no read borrows it.
struct OpenDb<'a>(RwLockReadGuard<'a, Option<Arc<DB>>>);

impl std::ops::Deref for OpenDb<'_> {
    type Target = DB;

    fn deref(&self) -> &DB {
        match self.0.as_deref() {
            Some(db) => db,
            None => unreachable!("RocksStorage::db lends only an open database"),
        }
    }
}

fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily, StorageError> {
    db.cf_handle(name)
        .ok_or_else(|| db_error("", format!("column family {name} missing")))
}

impl RocksStorage {
    /// Ends the writer after it wrote everything queued, waits for running reads, syncs the
    /// write-ahead log, stops RocksDB's background threads (flushes, compactions) and closes the
    /// database, all on the calling thread. Later calls are refused with "storage is closed".
    fn stop(&self) {
        self.queue.stop();
        let db = self.db.write().unwrap_or_else(|e| e.into_inner()).take();
        let Some(db) = db else { return };
        if let Err(e) = db.flush_wal(true) {
            warn!(error = %e, "syncing the RocksDB write-ahead log at close failed");
        }
        db.cancel_all_background_work(true);
        // The writer's handle ended with its thread and reads are done: this is the last one.
        if Arc::try_unwrap(db).is_err() {
            error!("RocksDB is still referenced at close; it closes with the last reference");
        }
    }
}

impl Drop for RocksStorage {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Storage for RocksStorage {
    fn name(&self) -> &'static str {
        "rocksdb"
    }

    fn load(&self, key: &RoomKey) -> Result<Option<Stored>, StorageError> {
        self.queue.reopen(key)?;
        let name = key.to_string();
        let db = self.db(&name)?;
        let (family, snapshot_key) = snapshot_place(key);
        let snapshot = db
            .get_cf(cf(&db, family)?, snapshot_key)
            .map_err(|e| io_error(key, e))?;
        let log_cf = cf(&db, LOG)?;
        let (start, end) = (log_prefix(key), log_end(key));
        let mut log = Vec::new();
        for item in db.iterator_cf(log_cf, IteratorMode::From(&start, Direction::Forward)) {
            let (k, value) = item.map_err(|e| io_error(key, e))?;
            if *k >= *end {
                break;
            }
            let seq = k
                .get(start.len()..)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| StorageError::Corrupt {
                    room: name.clone(),
                    reason: "a log key has no sequence number".into(),
                })?;
            log.push((seq, value.into_vec()));
        }
        // Entries after a gap were written after a failed append (never acked): removed, so a
        // later write with the missing seq cannot revive them.
        let keep = gapless_len(log.iter().map(|(seq, _)| *seq));
        if let Some((stale, _)) = log.get(keep) {
            warn!(room = %key, seq = stale, "log has a gap; dropping the unacknowledged tail");
            db.delete_range_cf(log_cf, log_key(key, *stale), end)
                .map_err(|e| io_error(key, e))?;
            log.truncate(keep);
        }
        if snapshot.is_none() && log.is_empty() {
            return Ok(None);
        }
        Ok(Some(Stored { snapshot, log }))
    }

    fn append(&self, key: &RoomKey, seq: u64, bytes: Vec<u8>, done: AppendDone) {
        self.queue.append(key, seq, bytes, done);
    }

    fn fold(&self, key: &RoomKey, seq: u64, snapshot: &[u8]) -> Result<(), StorageError> {
        self.queue.fold(key, seq, snapshot)
    }

    fn delete(&self, key: &RoomKey) -> Result<(), StorageError> {
        self.queue.delete(key)
    }

    fn list(&self) -> Result<Vec<RoomKey>, StorageError> {
        let mut keys: Vec<RoomKey> = Vec::new();
        let whole = |e| db_error("", e);
        let db = self.db("")?;
        let canvas = |k: &str| RoomId::parse(k).ok().map(RoomKey::Canvas);
        let game = |k: &str| RecordKey::parse(k).map(RoomKey::Game);
        for (family, parse) in [
            (SNAPSHOTS, &canvas as &dyn Fn(&str) -> Option<RoomKey>),
            (RECORDS, &game),
        ] {
            for item in db.iterator_cf(cf(&db, family)?, IteratorMode::Start) {
                let (key, _) = item.map_err(whole)?;
                if let Some(key) = std::str::from_utf8(&key).ok().and_then(parse) {
                    keys.push(key);
                }
            }
        }
        // Rooms that have log entries but were never folded.
        let mut iter = db.raw_iterator_cf(cf(&db, LOG)?);
        iter.seek_to_first();
        while let Some(raw) = iter.key() {
            let Some(end) = raw.iter().position(|b| *b == 0) else {
                iter.next();
                continue;
            };
            if let Some(key) = std::str::from_utf8(&raw[..end])
                .ok()
                .and_then(RoomKey::parse)
            {
                let next = log_end(&key);
                if !keys.contains(&key) {
                    keys.push(key);
                }
                iter.seek(next);
            } else {
                iter.next();
            }
        }
        iter.status().map_err(whole)?;
        Ok(keys)
    }

    fn close(&self) {
        self.stop();
    }
}

/// The writer thread: takes every queued job, writes them as one batch, then answers them all.
/// Rooms whose append failed are refused further appends and folds until they are reopened, so
/// a room's log never has an entry after a hole.
fn write_loop(db: &DB, jobs: &std_mpsc::Receiver<Job>, durability: Durability) {
    let mut failed: HashSet<RoomKey> = HashSet::new();
    let mut options = WriteOptions::default();
    options.set_sync(durability == Durability::PowerLoss);
    let (Some(snapshots), Some(log), Some(records)) = (
        db.cf_handle(SNAPSHOTS),
        db.cf_handle(LOG),
        db.cf_handle(RECORDS),
    ) else {
        error!("RocksDB column families missing; the writer cannot run");
        return;
    };
    let snapshot_cf = |key: &RoomKey| match key {
        RoomKey::Canvas(_) => snapshots,
        RoomKey::Game(_) => records,
    };
    while let Some(group) = next_group(jobs) {
        let mut batch = WriteBatch::default();
        let mut refused = Vec::new();
        for (i, job) in group.iter().enumerate() {
            match job {
                Job::Append { key, .. } | Job::Fold { key, .. } if failed.contains(key) => {
                    refused.push(i);
                }
                Job::Append {
                    key, seq, bytes, ..
                } => batch.put_cf(log, log_key(key, *seq), bytes),
                Job::Fold {
                    key, seq, snapshot, ..
                } => {
                    batch.put_cf(snapshot_cf(key), snapshot_place(key).1, snapshot);
                    batch.delete_range_cf(
                        log,
                        log_prefix(key),
                        log_key(key, seq.saturating_add(1)),
                    );
                }
                Job::Delete { key, .. } => {
                    batch.delete_cf(snapshot_cf(key), snapshot_place(key).1);
                    batch.delete_range_cf(log, log_prefix(key), log_end(key));
                }
                Job::Reopen { .. } => {}
            }
        }
        let result = db.write_opt(batch, &options).map_err(|e| e.to_string());
        for (i, job) in group.into_iter().enumerate() {
            let outcome = match &result {
                _ if refused.contains(&i) => Err("an earlier write of this room failed".to_owned()),
                Ok(()) => Ok(()),
                Err(e) => Err(e.clone()),
            };
            match job {
                Job::Append { key, done, .. } => {
                    if outcome.is_err() {
                        failed.insert(key.clone());
                    }
                    done(outcome.map_err(|e| io_error(&key, e)));
                }
                Job::Fold { key, done, .. } | Job::Delete { key, done } => {
                    let _ = done.send(outcome.map_err(|e| io_error(&key, e)));
                }
                Job::Reopen { key, done } => {
                    failed.remove(&key);
                    let _ = done.send(Ok(()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Document, Limits};
    use crate::storage::contract::append_sync as append_bytes;
    use crate::storage::load_document;
    use serde_json::{json, Value};

    fn append_sync(storage: &dyn Storage, room: &RoomId, clock: u64, patches: Value) {
        append_bytes(
            storage,
            &RoomKey::Canvas(room.clone()),
            clock,
            patches.to_string().as_bytes(),
        )
        .expect("appended");
    }

    fn fold(storage: &dyn Storage, room: &RoomId, doc: &Document) {
        storage
            .fold(
                &RoomKey::Canvas(room.clone()),
                doc.clock(),
                &doc.encode_snapshot(),
            )
            .expect("fold");
    }

    /// The RocksDB backend passes the storage contract.
    #[test]
    fn passes_the_contract() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = RocksStorage::open(dir.path(), Durability::ProcessCrash).expect("open");
        super::super::contract::check(&storage);
    }

    /// A database written with the layout of the previous release (canvas snapshots, the
    /// canvas log, game records in `game_rooms`) loads unchanged.
    #[test]
    fn reads_the_previous_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut doc = Document::default();
        let limits = Limits::default();
        let first = json!([{"a/S": {"_exists": true, "x": 1}}]);
        let second = json!([{"a/S": {"x": 2}}]);
        doc.apply(first.as_array().expect("array"), &limits);
        let snapshot = doc.encode_snapshot();
        doc.apply(second.as_array().expect("array"), &limits);
        {
            let mut opts = Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            let db = DB::open_cf(&opts, dir.path(), [SNAPSHOTS, LOG, RECORDS]).expect("raw db");
            let cf = |n| db.cf_handle(n).expect("cf");
            db.put_cf(cf(SNAPSHOTS), "old", &snapshot).expect("put");
            let mut log_key = b"old\0".to_vec();
            log_key.extend_from_slice(&2u64.to_be_bytes());
            db.put_cf(cf(LOG), log_key, second.to_string())
                .expect("put");
            db.put_cf(cf(RECORDS), "battle/r1", b"{\"v\":1}")
                .expect("put");
        }
        let storage = RocksStorage::open(dir.path(), Durability::ProcessCrash).expect("open");
        let room = RoomId::parse("old").expect("id");
        assert_eq!(
            load_document(&storage, &room, &limits).expect("load"),
            Some(doc)
        );
        let game = RecordKey::parse("battle/r1").expect("key");
        let stored = storage.load(&RoomKey::Game(game.clone())).expect("load");
        assert_eq!(
            stored.and_then(|s| s.snapshot).as_deref(),
            Some(&b"{\"v\":1}"[..])
        );
        let mut keys = storage.list().expect("list");
        keys.sort();
        assert_eq!(keys, vec![RoomKey::Canvas(room), RoomKey::Game(game)]);
    }

    /// A room is its snapshot plus the log after it; folding trims the log; reopening the
    /// database recovers the same document.
    #[test]
    fn recovers_snapshot_plus_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let room = RoomId::parse("r").expect("id");
        let limits = Limits::default();
        let mut expected = Document::default();
        let writes = [
            json!([{"a/S": {"_exists": true, "x": 1, "pts": {"__buf": 1, "len": 2, "runs": [[1, [7]]]}}}]),
            json!([{"a/S": {"x": 2}}]),
            json!([{"b/S": {"_exists": true}}, {"b/S": {"_exists": false}}]),
        ];
        {
            let storage = RocksStorage::open(dir.path(), Durability::PowerLoss).expect("open");
            for (i, w) in writes.iter().enumerate() {
                let clock = expected.apply(w.as_array().expect("array"), &limits);
                assert_eq!(clock, i as u64 + 1);
                append_sync(&storage, &room, clock, w.clone());
                if i == 0 {
                    fold(&storage, &room, &expected);
                }
            }
            assert_eq!(
                load_document(&storage, &room, &Limits::default()).expect("load"),
                Some(expected.clone())
            );
        }
        let storage = RocksStorage::open(dir.path(), Durability::ProcessCrash).expect("reopen");
        assert_eq!(
            load_document(&storage, &room, &Limits::default()).expect("load"),
            Some(expected.clone())
        );
        assert_eq!(
            storage.list().expect("ids"),
            vec![RoomKey::Canvas(room.clone())]
        );
    }

    /// Log entries after a hole were never acked: recovery stops at the hole and removes them, so
    /// a later write with the same clock cannot bring them back.
    #[test]
    fn a_hole_in_the_log_ends_recovery() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = RocksStorage::open(dir.path(), Durability::ProcessCrash).expect("open");
        let room = RoomId::parse("holes").expect("id");
        append_sync(
            &storage,
            &room,
            1,
            json!([{"a/S": {"_exists": true, "x": 1}}]),
        );
        append_sync(&storage, &room, 3, json!([{"a/S": {"x": 3}}]));
        let doc = load_document(&storage, &room, &Limits::default())
            .expect("load")
            .expect("present");
        assert_eq!(doc.clock(), 1);
        append_sync(&storage, &room, 2, json!([{"a/S": {"x": 2}}]));
        let doc = load_document(&storage, &room, &Limits::default())
            .expect("load")
            .expect("present");
        assert_eq!(
            (doc.clock(), doc.get("a/S").map(|f| f["x"].clone())),
            (2, Some(json!(2)))
        );
    }

    /// `close` closes the database even while others still hold the storage (at shutdown, threads
    /// the process does not join may drop the last handle during exit, when RocksDB's statics are
    /// gone: SIGABRT): the directory opens again at once, and the old handle answers "closed".
    #[test]
    fn close_releases_the_database_while_still_shared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let room = RoomId::parse("r").expect("id");
        let storage: Arc<dyn Storage> =
            Arc::new(RocksStorage::open(dir.path(), Durability::ProcessCrash).expect("open"));
        let late_holder = storage.clone();
        append_sync(&*storage, &room, 1, json!([{"k/S": {"_exists": true}}]));
        storage.close();
        let reopened = RocksStorage::open(dir.path(), Durability::ProcessCrash)
            .expect("the closed database's directory opens again");
        assert_eq!(
            load_document(&reopened, &room, &Limits::default())
                .expect("load")
                .map(|d| d.clock()),
            Some(1)
        );
        assert!(
            load_document(&*late_holder, &room, &Limits::default()).is_err(),
            "a closed storage refuses reads"
        );
        assert!(late_holder.list().is_err());
        drop(late_holder);
    }

    /// A room that has only log entries (never folded) is listed and loads.
    #[test]
    fn unfolded_rooms_are_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = RocksStorage::open(dir.path(), Durability::ProcessCrash).expect("open");
        let (a, b) = (
            RoomId::parse("a").expect("id"),
            RoomId::parse("a-b").expect("id"),
        );
        append_sync(&storage, &a, 1, json!([{"k/S": {"_exists": true}}]));
        append_sync(&storage, &b, 1, json!([{"k/S": {"_exists": true}}]));
        append_sync(&storage, &b, 2, json!([{"k/S": {"v": 1}}]));
        let mut ids = storage.list().expect("ids");
        ids.sort();
        assert_eq!(
            ids,
            vec![RoomKey::Canvas(a.clone()), RoomKey::Canvas(b.clone())]
        );
        assert_eq!(
            load_document(&storage, &a, &Limits::default())
                .expect("load")
                .map(|d| d.clock()),
            Some(1)
        );
        assert_eq!(
            load_document(&storage, &b, &Limits::default())
                .expect("load")
                .map(|d| d.clock()),
            Some(2)
        );
    }

    /// A log written before the limits existed that holds the report's attack (the 142-byte
    /// buffer frame, three times) is refused by the replay before it builds the arrays, with an
    /// error naming the setting; another room of the same database loads, and the attacked room
    /// loads once the limit is raised.
    #[test]
    fn a_logged_room_over_the_limits_is_refused_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = RocksStorage::open(dir.path(), Durability::ProcessCrash).expect("open");
        let (attacked, fine) = (
            RoomId::parse("attacked").expect("id"),
            RoomId::parse("fine").expect("id"),
        );
        for clock in 1..=3 {
            let frame = json!([{ format!("s{clock}/Stroke"): {"_exists": true, "pts": {"__buf": 1, "len": 1 << 20, "runs": []}}}]);
            append_sync(&storage, &attacked, clock, frame);
        }
        append_sync(&storage, &fine, 1, json!([{"k/S": {"_exists": true}}]));
        let limits = Limits {
            max_document_values: 1 << 20,
            ..Limits::default()
        };
        match load_document(&storage, &attacked, &limits) {
            Err(e @ StorageError::OverLimit { .. }) => {
                assert!(
                    e.to_string().contains("max_document_values (1048576)"),
                    "{e}"
                );
            }
            other => panic!("expected OverLimit, got {other:?}"),
        }
        let doc = load_document(&storage, &fine, &limits)
            .expect("load")
            .expect("present");
        assert_eq!(doc.clock(), 1);
        let raised = Limits {
            max_document_values: 4 << 20,
            ..limits
        };
        let doc = load_document(&storage, &attacked, &raised)
            .expect("load")
            .expect("present");
        assert_eq!(doc.clock(), 3);
    }
}
