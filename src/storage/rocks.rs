//! RocksDB storage, the default: a write-ahead log of every acked request, folded into a snapshot
//! per room now and then. Recovery is snapshot + log replay.
//!
//! Layout (one database in `<data_dir>/rocksdb`):
//! - column family `snapshots`: `<roomId>` -> snapshot JSON (the `<roomId>.json` format);
//! - column family `log`: `<roomId> 0x00 <clock, u64 big-endian>` -> that request's document
//!   patches (JSON array, as received). Room ids never contain 0x00, so one room's entries are the
//!   contiguous key range `<roomId> 0x00 ..` `<roomId> 0x01`, in clock order.
//!
//! All writes go through one writer thread that drains its queue into a single `WriteBatch`
//! (group commit across rooms), so durability costs one WAL write (and, in power-loss mode, one
//! fsync) per group rather than per request.

use std::collections::HashSet;
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;

use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use serde_json::Value;
use tracing::{error, warn};

use super::{AppendDone, Storage, StorageError, WriteAhead};
use crate::engine::{Document, Limits};
use crate::ids::{RecordKey, RoomId};

const SNAPSHOTS: &str = "snapshots";
const LOG: &str = "log";
/// Game room records, keyed `namespace/id`.
const RECORDS: &str = "game_rooms";
/// Most jobs folded into one write.
const MAX_GROUP: usize = 4096;

/// What an acknowledged write survives.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// The write is in RocksDB's write-ahead log (the OS has it) before the ack: survives a crash
    /// or kill of the process.
    ProcessCrash,
    /// The log is fsynced before the ack (once per group commit): survives power loss.
    PowerLoss,
}

enum Job {
    Append {
        room: RoomId,
        clock: u64,
        patches: Vec<u8>,
        done: AppendDone,
    },
    /// Writes a snapshot and drops the log entries it covers.
    Fold {
        room: RoomId,
        clock: u64,
        snapshot: Vec<u8>,
        done: std_mpsc::Sender<Result<(), StorageError>>,
    },
    Delete {
        room: RoomId,
        done: std_mpsc::Sender<Result<(), StorageError>>,
    },
    /// Sent before a room is loaded: everything queued for the room's previous incarnation has
    /// been written (or refused) once it is answered, and the room may append again.
    Reopen {
        room: RoomId,
        done: std_mpsc::Sender<Result<(), StorageError>>,
    },
    /// Puts (or with `None` deletes) a game room record.
    Record {
        key: RecordKey,
        bytes: Option<Vec<u8>>,
        done: std_mpsc::Sender<Result<(), StorageError>>,
    },
}

pub struct RocksStorage {
    /// `None` once closed. [`Storage::close`] takes the database out and closes it then and
    /// there, not whoever drops the last handle to the storage: at shutdown that may be a thread
    /// the process does not join (actix-server's workers), closing the database while `exit`
    /// destroys RocksDB's statics, which aborts the process (SIGABRT in `pthread lock`).
    db: RwLock<Option<Arc<DB>>>,
    // Unbounded, but bounded in practice: each room has at most a fixed number of appends in
    // flight (rooms::room::MAX_APPENDS_IN_FLIGHT) and folds/deletes wait for their reply.
    jobs: Mutex<Option<std_mpsc::Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

fn io_error(room: &RoomId, e: impl std::fmt::Display) -> StorageError {
    db_error(room.as_str(), e)
}

/// An error of the database as a whole, or of one room when `room` is not empty.
fn db_error(room: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Io {
        room: room.to_owned(),
        source: std::io::Error::other(e.to_string()),
    }
}

fn log_prefix(room: &RoomId) -> Vec<u8> {
    let mut key = room.as_str().as_bytes().to_vec();
    key.push(0);
    key
}

fn log_key(room: &RoomId, clock: u64) -> Vec<u8> {
    let mut key = log_prefix(room);
    key.extend_from_slice(&clock.to_be_bytes());
    key
}

/// The first key after every log key of `room`.
fn log_end(room: &RoomId) -> Vec<u8> {
    let mut key = room.as_str().as_bytes().to_vec();
    key.push(1);
    key
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
        let (tx, rx) = std_mpsc::channel();
        let writer = {
            let db = db.clone();
            std::thread::Builder::new()
                .name("weft-rocksdb-writer".into())
                .spawn(move || write_loop(&db, &rx, durability))
                .map_err(|e| StorageError::Io {
                    room: String::new(),
                    source: e,
                })?
        };
        Ok(RocksStorage {
            db: RwLock::new(Some(db)),
            jobs: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        })
    }

    fn submit(&self, job: Job) -> Result<(), Job> {
        match lock(&self.jobs).as_ref() {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }

    /// Sends a job that answers on a channel and waits for the answer.
    fn call(
        &self,
        room: &RoomId,
        make: impl FnOnce(std_mpsc::Sender<Result<(), StorageError>>) -> Job,
    ) -> Result<(), StorageError> {
        let (tx, rx) = std_mpsc::channel();
        self.submit(make(tx))
            .map_err(|_| io_error(room, "storage is closed"))?;
        rx.recv()
            .unwrap_or_else(|_| Err(io_error(room, "storage writer stopped")))
    }

    /// Record writes go through the writer thread: one ordering, one sync policy, and nothing
    /// is written after `close`.
    fn record_job(&self, key: &RecordKey, bytes: Option<Vec<u8>>) -> Result<(), StorageError> {
        let (tx, rx) = std_mpsc::channel();
        let job = Job::Record {
            key: key.clone(),
            bytes,
            done: tx,
        };
        let closed = || db_error(&key.to_string(), "storage is closed");
        self.submit(job).map_err(|_| closed())?;
        rx.recv().unwrap_or_else(|_| Err(closed()))
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
        lock(&self.jobs).take();
        if let Some(writer) = lock(&self.writer).take() {
            let _ = writer.join();
        }
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

    fn load(&self, room: &RoomId, limits: &Limits) -> Result<Option<Document>, StorageError> {
        self.call(room, |done| Job::Reopen {
            room: room.clone(),
            done,
        })?;
        let db = self.db(room.as_str())?;
        let snapshot = db
            .get_cf(cf(&db, SNAPSHOTS)?, room.as_str())
            .map_err(|e| io_error(room, e))?;
        let mut doc = match &snapshot {
            Some(bytes) => Some(super::decode_within(room, bytes, limits)?),
            None => None,
        };
        // Replay the log after the snapshot, in clock order. An entry that does not continue the
        // clock (after a failed write) ends the replay: it and everything after it was never
        // acked, and is removed so a later write with the same clock cannot revive it.
        let log = cf(&db, LOG)?;
        let start = log_key(room, doc.as_ref().map_or(0, Document::clock) + 1);
        let end = log_end(room);
        // Each entry is checked before it is replayed, so a room over the limits is refused
        // without being built past them.
        let replay = limits.for_replay();
        let mut stale_from = None;
        for item in db.iterator_cf(log, IteratorMode::From(&start, Direction::Forward)) {
            let (key, value) = item.map_err(|e| io_error(room, e))?;
            if *key >= *end {
                break;
            }
            let clock = key
                .get(key.len().saturating_sub(8)..)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .unwrap_or_default();
            let current = doc.get_or_insert_with(Document::default);
            if clock != current.clock() + 1 {
                warn!(room = %room, clock, expected = current.clock() + 1, "log has a gap; dropping the unacknowledged tail");
                stale_from = Some(key.to_vec());
                break;
            }
            let patches: Vec<Value> =
                serde_json::from_slice(&value).map_err(|e| StorageError::Corrupt {
                    room: room.to_string(),
                    source: e.into(),
                })?;
            current
                .check(&patches, &replay)
                .map_err(|source| StorageError::OverLimit {
                    room: room.to_string(),
                    source,
                })?;
            current.apply(&patches, &replay);
        }
        if let Some(from) = stale_from {
            db.delete_range_cf(log, from, end)
                .map_err(|e| io_error(room, e))?;
        }
        Ok(doc)
    }

    fn save(&self, room: &RoomId, snapshot: &[u8]) -> Result<(), StorageError> {
        // The clock is read back from the snapshot so the log is trimmed exactly to what it holds.
        let clock = super::decode(room, snapshot)?.clock();
        self.call(room, |done| Job::Fold {
            room: room.clone(),
            clock,
            snapshot: snapshot.to_vec(),
            done,
        })
    }

    fn delete(&self, room: &RoomId) -> Result<(), StorageError> {
        self.call(room, |done| Job::Delete {
            room: room.clone(),
            done,
        })
    }

    fn room_ids(&self) -> Result<Vec<RoomId>, StorageError> {
        let mut ids: Vec<RoomId> = Vec::new();
        let whole = |e| db_error("", e);
        let db = self.db("")?;
        for item in db.iterator_cf(cf(&db, SNAPSHOTS)?, IteratorMode::Start) {
            let (key, _) = item.map_err(whole)?;
            if let Some(id) = std::str::from_utf8(&key)
                .ok()
                .and_then(|k| RoomId::parse(k).ok())
            {
                ids.push(id);
            }
        }
        // Rooms that have log entries but were never folded.
        let mut iter = db.raw_iterator_cf(cf(&db, LOG)?);
        iter.seek_to_first();
        while let Some(key) = iter.key() {
            let Some(end) = key.iter().position(|b| *b == 0) else {
                iter.next();
                continue;
            };
            if let Some(id) = std::str::from_utf8(&key[..end])
                .ok()
                .and_then(|k| RoomId::parse(k).ok())
            {
                let next = log_end(&id);
                if !ids.contains(&id) {
                    ids.push(id);
                }
                iter.seek(next);
            } else {
                iter.next();
            }
        }
        iter.status().map_err(whole)?;
        Ok(ids)
    }

    fn load_record(&self, key: &RecordKey) -> Result<Option<Vec<u8>>, StorageError> {
        let name = key.to_string();
        let db = self.db(&name)?;
        db.get_cf(cf(&db, RECORDS)?, &name)
            .map_err(|e| db_error(&name, e))
    }

    fn save_record(&self, key: &RecordKey, bytes: &[u8]) -> Result<(), StorageError> {
        self.record_job(key, Some(bytes.to_vec()))
    }

    fn delete_record(&self, key: &RecordKey) -> Result<(), StorageError> {
        self.record_job(key, None)
    }

    fn record_keys(&self) -> Result<Vec<RecordKey>, StorageError> {
        let mut keys = Vec::new();
        let db = self.db("")?;
        for item in db.iterator_cf(cf(&db, RECORDS)?, IteratorMode::Start) {
            let (key, _) = item.map_err(|e| db_error("", e))?;
            if let Some(key) = std::str::from_utf8(&key).ok().and_then(RecordKey::parse) {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    fn write_ahead(&self) -> Option<&dyn WriteAhead> {
        Some(self)
    }

    fn close(&self) {
        self.stop();
    }
}

impl WriteAhead for RocksStorage {
    fn append(&self, room: &RoomId, clock: u64, patches: Vec<u8>, done: AppendDone) {
        let job = Job::Append {
            room: room.clone(),
            clock,
            patches,
            done,
        };
        if let Err(Job::Append { room, done, .. }) = self.submit(job) {
            done(Err(io_error(&room, "storage is closed")));
        }
    }
}

/// The writer thread: takes every queued job, writes them as one batch, then answers them all.
/// Rooms whose append failed are refused further appends and folds until they are reopened, so
/// a room's log never has an entry after a hole.
fn write_loop(db: &DB, jobs: &std_mpsc::Receiver<Job>, durability: Durability) {
    let mut failed: HashSet<RoomId> = HashSet::new();
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
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        group.extend(jobs.try_iter().take(MAX_GROUP - 1));
        let mut batch = WriteBatch::default();
        let mut refused = Vec::new();
        {
            for (i, job) in group.iter().enumerate() {
                match job {
                    Job::Append { room, .. } | Job::Fold { room, .. } if failed.contains(room) => {
                        refused.push(i);
                    }
                    Job::Append {
                        room,
                        clock,
                        patches,
                        ..
                    } => batch.put_cf(log, log_key(room, *clock), patches),
                    Job::Fold {
                        room,
                        clock,
                        snapshot,
                        ..
                    } => {
                        batch.put_cf(snapshots, room.as_str(), snapshot);
                        batch.delete_range_cf(log, log_prefix(room), log_key(room, *clock + 1));
                    }
                    Job::Delete { room, .. } => {
                        batch.delete_cf(snapshots, room.as_str());
                        batch.delete_range_cf(log, log_prefix(room), log_end(room));
                    }
                    Job::Reopen { .. } => {}
                    Job::Record { key, bytes, .. } => match bytes {
                        Some(bytes) => batch.put_cf(records, key.to_string(), bytes),
                        None => batch.delete_cf(records, key.to_string()),
                    },
                }
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
                Job::Append { room, done, .. } => {
                    if outcome.is_err() {
                        failed.insert(room.clone());
                    }
                    done(outcome.map_err(|e| io_error(&room, e)));
                }
                Job::Fold { room, done, .. } | Job::Delete { room, done } => {
                    let _ = done.send(outcome.map_err(|e| io_error(&room, e)));
                }
                Job::Reopen { room, done } => {
                    failed.remove(&room);
                    let _ = done.send(Ok(()));
                }
                Job::Record { key, done, .. } => {
                    let _ = done.send(outcome.map_err(|e| db_error(&key.to_string(), e)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn append_sync(storage: &RocksStorage, room: &RoomId, clock: u64, patches: Value) {
        append_sync_dyn(storage, room, clock, patches);
    }

    fn append_sync_dyn(storage: &dyn Storage, room: &RoomId, clock: u64, patches: Value) {
        let (tx, rx) = std_mpsc::channel();
        let log = storage.write_ahead().expect("a write-ahead log");
        log.append(
            room,
            clock,
            patches.to_string().into_bytes(),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().expect("answered").expect("appended");
    }

    /// The RocksDB backend passes the storage contract.
    #[test]
    fn passes_the_contract() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = RocksStorage::open(dir.path(), Durability::ProcessCrash).expect("open");
        super::super::contract::check(&storage);
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
                    storage
                        .save(&room, &expected.encode_snapshot())
                        .expect("fold");
                }
            }
            assert_eq!(
                storage.load(&room, &Limits::default()).expect("load"),
                Some(expected.clone())
            );
        }
        let storage = RocksStorage::open(dir.path(), Durability::ProcessCrash).expect("reopen");
        assert_eq!(
            storage.load(&room, &Limits::default()).expect("load"),
            Some(expected.clone())
        );
        assert_eq!(storage.room_ids().expect("ids"), vec![room.clone()]);
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
        let doc = storage
            .load(&room, &Limits::default())
            .expect("load")
            .expect("present");
        assert_eq!(doc.clock(), 1);
        append_sync(&storage, &room, 2, json!([{"a/S": {"x": 2}}]));
        let doc = storage
            .load(&room, &Limits::default())
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
        append_sync_dyn(&*storage, &room, 1, json!([{"k/S": {"_exists": true}}]));
        storage.close();
        let reopened = RocksStorage::open(dir.path(), Durability::ProcessCrash)
            .expect("the closed database's directory opens again");
        assert_eq!(
            reopened
                .load(&room, &Limits::default())
                .expect("load")
                .map(|d| d.clock()),
            Some(1)
        );
        assert!(
            late_holder.load(&room, &Limits::default()).is_err(),
            "a closed storage refuses reads"
        );
        assert!(late_holder.room_ids().is_err());
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
        let mut ids = storage.room_ids().expect("ids");
        ids.sort();
        assert_eq!(ids, vec![a.clone(), b.clone()]);
        assert_eq!(
            storage
                .load(&a, &Limits::default())
                .expect("load")
                .map(|d| d.clock()),
            Some(1)
        );
        assert_eq!(
            storage
                .load(&b, &Limits::default())
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
        match storage.load(&attacked, &limits) {
            Err(e @ StorageError::OverLimit { .. }) => {
                assert!(
                    e.to_string().contains("max_document_values (1048576)"),
                    "{e}"
                );
            }
            other => panic!("expected OverLimit, got {other:?}"),
        }
        let doc = storage
            .load(&fine, &limits)
            .expect("load")
            .expect("present");
        assert_eq!(doc.clock(), 1);
        let raised = Limits {
            max_document_values: 4 << 20,
            ..limits
        };
        let doc = storage
            .load(&attacked, &raised)
            .expect("load")
            .expect("present");
        assert_eq!(doc.clock(), 3);
    }
}
