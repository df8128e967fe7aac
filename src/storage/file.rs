//! Files in the data directory: per room a snapshot `<roomId>.json` in the reference server's
//! format (a directory written by `@woven-ecs/canvas-store-server`'s `FileStorage` loads here, and
//! the other way round) and an append-only log `<roomId>.log` of the writes after it. Game rooms:
//! `game-rooms/<namespace>/<id>.json` and `.log`.
//!
//! A log entry is framed `[len u32 LE][seq u64 LE][crc32 u32 LE][bytes]`, the checksum over seq
//! and bytes. A crash mid-append leaves a torn last entry (never acked): it is cut off at load,
//! with a warning. A bad entry with good data after it is corruption, reported, never skipped.
//!
//! One writer thread takes every queued job, writes the group's entries (each room's in order),
//! then, in power-loss mode, fdatasyncs each touched log once, and only then answers the
//! appends: group commit across rooms. At most [`MAX_OPEN_LOGS`] log files stay open.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;

use tracing::{error, warn};

use super::writer::{next_group, Job, JobQueue};
use super::{gapless_len, AppendDone, Durability, Storage, StorageError, Stored};
use crate::ids::{RecordKey, RoomId, RoomKey};

/// Game rooms live in this subdirectory, apart from canvas snapshots.
const RECORDS_DIR: &str = "game-rooms";
/// Log files kept open by the writer; the least recently used is closed past this.
const MAX_OPEN_LOGS: usize = 128;
/// Bytes of an entry's frame before its data.
const HEADER: usize = 16;

pub struct FileStorage {
    paths: Paths,
    queue: JobQueue,
}

/// Where each room's files are. Room ids are validated, so every path stays inside `dir`.
#[derive(Clone)]
struct Paths {
    dir: PathBuf,
}

impl Paths {
    fn base(&self, key: &RoomKey) -> PathBuf {
        match key {
            RoomKey::Canvas(id) => self.dir.join(id.as_str()),
            RoomKey::Game(key) => self
                .dir
                .join(RECORDS_DIR)
                .join(key.namespace.as_str())
                .join(key.id.as_str()),
        }
    }

    fn with(&self, key: &RoomKey, ext: &str) -> PathBuf {
        let mut path = self.base(key).into_os_string();
        path.push(ext);
        PathBuf::from(path)
    }

    fn snapshot(&self, key: &RoomKey) -> PathBuf {
        self.with(key, ".json")
    }

    fn log(&self, key: &RoomKey) -> PathBuf {
        self.with(key, ".log")
    }
}

fn io(key: &RoomKey, source: std::io::Error) -> StorageError {
    StorageError::Io {
        room: key.to_string(),
        source,
    }
}

fn whole(source: std::io::Error) -> StorageError {
    StorageError::Io {
        room: String::new(),
        source,
    }
}

fn not_found(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
}

/// Reads a file, `None` if it does not exist.
fn read_optional(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

fn remove_optional(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if !not_found(&e) => Err(e),
        _ => Ok(()),
    }
}

fn frame(seq: u64, bytes: &[u8], out: &mut Vec<u8>) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(bytes);
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(bytes);
}

/// A log file read back: its entries, and the length of the valid part when the rest is a torn
/// tail.
struct ParsedLog {
    entries: Vec<(u64, Vec<u8>)>,
    /// Byte offset where each entry starts.
    offsets: Vec<usize>,
    torn_at: Option<usize>,
}

fn parse_log(data: &[u8]) -> Result<ParsedLog, String> {
    let mut parsed = ParsedLog {
        entries: Vec::new(),
        offsets: Vec::new(),
        torn_at: None,
    };
    let mut at = 0;
    while at < data.len() {
        let rest = &data[at..];
        let header = rest.get(..HEADER).and_then(|h| {
            let len = u32::from_le_bytes(h[0..4].try_into().ok()?) as usize;
            let seq = u64::from_le_bytes(h[4..12].try_into().ok()?);
            let crc = u32::from_le_bytes(h[12..16].try_into().ok()?);
            Some((len, seq, crc))
        });
        let Some((len, seq, crc)) = header else {
            parsed.torn_at = Some(at);
            break;
        };
        let Some(bytes) = rest.get(HEADER..HEADER + len) else {
            parsed.torn_at = Some(at);
            break;
        };
        let mut check = crc32fast::Hasher::new();
        check.update(&seq.to_le_bytes());
        check.update(bytes);
        if check.finalize() != crc {
            // A torn write leaves garbage or zeros up to the end; anything else after a bad
            // entry means the log was damaged where it had been written whole.
            if rest[HEADER + len..].iter().all(|b| *b == 0) {
                parsed.torn_at = Some(at);
                break;
            }
            return Err(format!("log entry at byte {at} fails its checksum"));
        }
        parsed.entries.push((seq, bytes.to_vec()));
        parsed.offsets.push(at);
        at += HEADER + len;
    }
    Ok(parsed)
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

impl FileStorage {
    /// Opens (and creates) the directory; `durability` says when an append is done.
    pub fn open(dir: &Path, durability: Durability) -> Result<FileStorage, StorageError> {
        fs::create_dir_all(dir).map_err(whole)?;
        let paths = Paths {
            dir: dir.to_path_buf(),
        };
        let queue = {
            let mut writer = Writer {
                paths: paths.clone(),
                durability,
                open: HashMap::new(),
                tick: 0,
                failed: HashSet::new(),
                unsynced: HashMap::new(),
            };
            JobQueue::start("weft-file-writer", move |jobs| writer.run(jobs)).map_err(whole)?
        };
        Ok(FileStorage { paths, queue })
    }

    /// The snapshot file of a canvas room.
    pub fn path(&self, room: &RoomId) -> PathBuf {
        self.paths.snapshot(&RoomKey::Canvas(room.clone()))
    }

    /// The log file of a canvas room.
    pub fn log_path(&self, room: &RoomId) -> PathBuf {
        self.paths.log(&RoomKey::Canvas(room.clone()))
    }

    /// The snapshot file of a game room: `<dir>/game-rooms/<namespace>/<id>.json`.
    pub fn record_path(&self, key: &RecordKey) -> PathBuf {
        self.paths.snapshot(&RoomKey::Game(key.clone()))
    }

    /// Reads a room's log, cutting off a torn tail and entries after a gap (never acked).
    fn read_log(&self, key: &RoomKey) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let path = self.paths.log(key);
        let Some(data) = read_optional(&path).map_err(|e| io(key, e))? else {
            return Ok(Vec::new());
        };
        let mut parsed = parse_log(&data).map_err(|reason| StorageError::Corrupt {
            room: key.to_string(),
            reason,
        })?;
        let keep = gapless_len(parsed.entries.iter().map(|(seq, _)| *seq));
        let cut = match parsed.offsets.get(keep) {
            Some(&at) => {
                warn!(room = %key, seq = parsed.entries[keep].0, "log has a gap; dropping the unacknowledged tail");
                parsed.entries.truncate(keep);
                Some(at)
            }
            None => parsed.torn_at.inspect(|at| {
                warn!(room = %key, at, len = data.len(), "log ends in a torn entry (a crash mid-append); cutting it off");
            }),
        };
        if let Some(at) = cut {
            let file = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io(key, e))?;
            file.set_len(at as u64).map_err(|e| io(key, e))?;
            file.sync_all().map_err(|e| io(key, e))?;
        }
        Ok(parsed.entries)
    }
}

impl Drop for FileStorage {
    fn drop(&mut self) {
        self.queue.stop();
    }
}

impl Storage for FileStorage {
    fn name(&self) -> &'static str {
        "file"
    }

    fn load(&self, key: &RoomKey) -> Result<Option<Stored>, StorageError> {
        self.queue.reopen(key)?;
        let snapshot = read_optional(&self.paths.snapshot(key)).map_err(|e| io(key, e))?;
        let log = self.read_log(key)?;
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
        let mut keys = HashSet::new();
        for name in file_names(&self.paths.dir)? {
            if let Some(id) = room_file(&name) {
                keys.insert(RoomKey::Canvas(id));
            }
        }
        let root = self.paths.dir.join(RECORDS_DIR);
        let namespaces = match fs::read_dir(&root) {
            Ok(entries) => entries,
            Err(e) if not_found(&e) => return Ok(keys.into_iter().collect()),
            Err(e) => return Err(whole(e)),
        };
        for ns in namespaces {
            let ns = ns.map_err(whole)?;
            let Ok(namespace) = RoomId::parse(&ns.file_name().to_string_lossy()) else {
                continue;
            };
            for name in file_names(&ns.path())? {
                if let Some(id) = room_file(&name) {
                    keys.insert(RoomKey::Game(RecordKey::new(namespace.clone(), id)));
                }
            }
        }
        Ok(keys.into_iter().collect())
    }

    fn close(&self) {
        self.queue.stop();
    }
}

fn file_names(dir: &Path) -> Result<Vec<String>, StorageError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(whole)? {
        let entry = entry.map_err(whole)?;
        if entry.file_type().map_err(whole)?.is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(names)
}

/// The room a `<valid room id>.json` or `.log` file belongs to (temp files and strays are none).
fn room_file(name: &str) -> Option<RoomId> {
    name.strip_suffix(".json")
        .or_else(|| name.strip_suffix(".log"))
        .and_then(|s| RoomId::parse(s).ok())
}

/// The writer thread's state.
struct Writer {
    paths: Paths,
    durability: Durability,
    /// Open log files (append mode), with when each was last used.
    open: HashMap<RoomKey, (fs::File, u64)>,
    tick: u64,
    /// Rooms whose append failed: refused further writes until reopened.
    failed: HashSet<RoomKey>,
    /// Logs closed during the current group whose sync failed, and why.
    unsynced: HashMap<RoomKey, String>,
}

impl Writer {
    fn run(&mut self, jobs: &std_mpsc::Receiver<Job>) {
        while let Some(group) = next_group(jobs) {
            self.write_group(group);
        }
        // Closing: what was written reaches the disk before the process exits.
        for (key, (file, _)) in self.open.drain() {
            if let Err(e) = file.sync_data() {
                error!(room = %key, error = %e, "syncing a log at close failed");
            }
        }
    }

    fn write_group(&mut self, group: Vec<Job>) {
        // Appends whose answer waits for the group's sync, by room.
        let mut answers: Vec<(RoomKey, AppendDone, Result<(), String>)> = Vec::new();
        let mut touched: HashSet<RoomKey> = HashSet::new();
        for job in group {
            match job {
                Job::Append {
                    key,
                    seq,
                    bytes,
                    done,
                } => {
                    let result = if self.failed.contains(&key) {
                        Err("an earlier write of this room failed".to_owned())
                    } else {
                        self.append(&key, seq, &bytes).map_err(|e| e.to_string())
                    };
                    if result.is_err() {
                        self.failed.insert(key.clone());
                    } else {
                        touched.insert(key.clone());
                    }
                    answers.push((key, done, result));
                }
                Job::Fold {
                    key,
                    seq,
                    snapshot,
                    done,
                } => {
                    let result = if self.failed.contains(&key) {
                        Err(io(
                            &key,
                            std::io::Error::other("an earlier write of this room failed"),
                        ))
                    } else {
                        self.fold(&key, seq, &snapshot).map_err(|e| io(&key, e))
                    };
                    let _ = done.send(result);
                }
                Job::Delete { key, done } => {
                    self.open.remove(&key);
                    let result = remove_optional(&self.paths.log(&key))
                        .and_then(|()| remove_optional(&self.paths.snapshot(&key)))
                        .map_err(|e| io(&key, e));
                    let _ = done.send(result);
                }
                Job::Reopen { key, done } => {
                    // An open log stays usable: it appends at the end the load may cut back to.
                    self.failed.remove(&key);
                    let _ = done.send(Ok(()));
                }
            }
        }
        if self.durability == Durability::PowerLoss {
            for key in &touched {
                let synced = match self.open.get(key) {
                    Some((file, _)) => file.sync_data().map_err(|e| e.to_string()),
                    // Closed mid-group: synced as it was closed (evicted), or folded into a
                    // synced snapshot, or deleted.
                    None => match self.unsynced.remove(key) {
                        Some(e) => Err(e),
                        None => Ok(()),
                    },
                };
                if let Err(e) = synced {
                    self.failed.insert(key.clone());
                    for answer in answers.iter_mut().filter(|a| &a.0 == key) {
                        answer.2 = Err(format!("syncing the log failed: {e}"));
                    }
                }
            }
        }
        self.unsynced.clear();
        for (key, done, result) in answers {
            done(result.map_err(|e| io(&key, std::io::Error::other(e))));
        }
    }

    /// Writes one entry to the room's log (the OS has it when this returns).
    fn append(&mut self, key: &RoomKey, seq: u64, bytes: &[u8]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(HEADER + bytes.len());
        frame(seq, bytes, &mut buf);
        let file = self.log_file(key)?;
        file.write_all(&buf)
    }

    /// The open log of `key`, opening (and creating) it, and closing the least recently used
    /// one when too many are open.
    fn log_file(&mut self, key: &RoomKey) -> std::io::Result<&mut fs::File> {
        self.tick += 1;
        if !self.open.contains_key(key) {
            if self.open.len() >= MAX_OPEN_LOGS {
                let oldest = self
                    .open
                    .iter()
                    .min_by_key(|(_, (_, used))| *used)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    if let Some((file, _)) = self.open.remove(&oldest) {
                        // A log closed mid-group is synced now, as the group's sync would have.
                        if self.durability == Durability::PowerLoss {
                            if let Err(e) = file.sync_data() {
                                self.unsynced.insert(oldest, e.to_string());
                            }
                        }
                    }
                }
            }
            let path = self.paths.log(key);
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)?;
            }
            let created = !path.exists();
            let file = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            if created && self.durability == Durability::PowerLoss {
                // The new file's name must survive a power loss too.
                fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()?;
            }
            self.open.insert(key.clone(), (file, self.tick));
        }
        let tick = self.tick;
        match self.open.get_mut(key) {
            Some((file, used)) => {
                *used = tick;
                Ok(file)
            }
            None => Err(std::io::Error::other("log file vanished")),
        }
    }

    /// Writes the snapshot atomically, then drops the log entries it holds (`<= seq`), keeping
    /// later ones (appended while the snapshot was on its way).
    fn fold(&mut self, key: &RoomKey, seq: u64, snapshot: &[u8]) -> std::io::Result<()> {
        let target = self.paths.snapshot(key);
        if let Some(dir) = target.parent() {
            fs::create_dir_all(dir)?;
        }
        write_atomic(&target, snapshot)?;
        let log = self.paths.log(key);
        let Some(data) = read_optional(&log)? else {
            return Ok(());
        };
        // The log was written by this process since its load cut any torn tail: whole entries.
        let parsed = parse_log(&data).map_err(std::io::Error::other)?;
        let keep_from = parsed.entries.iter().position(|(s, _)| *s > seq);
        self.open.remove(key);
        match keep_from {
            None => remove_optional(&log),
            Some(first) => {
                let at = parsed.offsets[first];
                write_atomic(&log, &data[at..parsed.torn_at.unwrap_or(data.len())])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Document, Limits};
    use crate::storage::contract::append_sync;
    use crate::storage::load_document;

    fn open(dir: &Path) -> FileStorage {
        FileStorage::open(dir, Durability::ProcessCrash).expect("open")
    }

    /// The file backend passes the storage contract, in both durability modes.
    #[test]
    fn passes_the_contract() {
        for durability in [Durability::ProcessCrash, Durability::PowerLoss] {
            let dir = tempfile::tempdir().expect("tempdir");
            super::super::contract::check(
                &FileStorage::open(dir.path(), durability).expect("open"),
            );
        }
    }

    /// A snapshot file written by the reference server loads, and a corrupt file is reported,
    /// not treated as an empty room (which the next save would overwrite).
    #[test]
    fn reads_reference_files_and_refuses_corrupt_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = open(dir.path());
        let room = RoomId::parse("ref").expect("id");
        fs::write(
            storage.path(&room),
            r#"{"timestamp":2,"state":{"e1/Shape":{"_exists":true,"x":3},"e2/Shape":{"_exists":false}},"timestamps":{"e1/Shape":{"_exists":1,"x":2},"e2/Shape":{"_exists":2}}}"#,
        )
        .expect("write");
        let doc = load_document(&storage, &room, &Limits::default())
            .expect("load")
            .expect("present");
        assert_eq!(
            (doc.clock(), doc.live_components(), doc.tombstones()),
            (2, 1, 1)
        );

        fs::write(storage.path(&room), "{\"timestamp\":").expect("write");
        assert!(matches!(
            load_document(&storage, &room, &Limits::default()),
            Err(StorageError::Corrupt { .. })
        ));
    }

    /// Folds leave only the snapshot: no temp files, and no log once it is folded whole.
    #[test]
    fn folds_leave_only_the_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = open(dir.path());
        let key = RoomKey::Canvas(RoomId::parse("r").expect("id"));
        for seq in 1..=3 {
            append_sync(&storage, &key, seq, b"[]").expect("append");
            storage
                .fold(&key, seq, &Document::default().encode_snapshot())
                .expect("fold");
        }
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("read")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("r.json")]);
    }

    /// A torn last entry (a crash mid-append: never acked) is cut off at load and the room goes
    /// on appending after what was whole; a damaged entry followed by good ones is Corrupt.
    #[test]
    fn a_torn_tail_is_cut_and_damage_before_it_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = open(dir.path());
        let room = RoomId::parse("torn").expect("id");
        let key = RoomKey::Canvas(room.clone());
        for seq in 1..=3 {
            append_sync(&storage, &key, seq, format!("[{seq}]").as_bytes()).expect("append");
        }
        let path = storage.log_path(&room);
        let whole = fs::read(&path).expect("log");
        let entry = whole.len() / 3;
        for torn in [1, HEADER - 1, HEADER + 1] {
            fs::write(&path, &whole[..2 * entry + torn]).expect("tear");
            let log = storage.load(&key).expect("load").expect("present").log;
            assert_eq!(log.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 2]);
            assert_eq!(fs::read(&path).expect("log").len(), 2 * entry, "cut off");
        }
        // Zeros where the last entry was (a power loss) are a torn tail too.
        let mut zeroed = whole.clone();
        zeroed[2 * entry + 4..].fill(0);
        fs::write(&path, &zeroed).expect("zero");
        assert_eq!(
            storage
                .load(&key)
                .expect("load")
                .expect("present")
                .log
                .len(),
            2
        );
        append_sync(&storage, &key, 3, b"[3]").expect("append after the cut");
        assert_eq!(fs::read(&path).expect("log"), whole);

        let mut damaged = whole.clone();
        damaged[entry + HEADER] ^= 0xff;
        fs::write(&path, &damaged).expect("damage");
        assert!(matches!(
            storage.load(&key),
            Err(StorageError::Corrupt { .. })
        ));
    }

    /// A room's log and snapshot survive reopening the directory: a snapshot written by the
    /// previous release (no log) plus the log of the new one load as one document.
    #[test]
    fn recovers_snapshot_plus_log_after_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let room = RoomId::parse("r").expect("id");
        let key = RoomKey::Canvas(room.clone());
        let limits = Limits::default();
        let mut doc = Document::default();
        doc.apply(
            &[serde_json::json!({"a/S": {"_exists": true, "x": 1}})],
            &limits,
        );
        fs::write(dir.path().join("r.json"), doc.encode_snapshot()).expect("old snapshot");
        {
            let storage = open(dir.path());
            let write = serde_json::json!([{"a/S": {"x": 2}}]);
            let clock = doc.apply(write.as_array().expect("array"), &limits);
            append_sync(&storage, &key, clock, write.to_string().as_bytes()).expect("append");
        }
        let storage = open(dir.path());
        assert_eq!(
            load_document(&storage, &room, &limits).expect("load"),
            Some(doc)
        );
    }

    /// An append that cannot be written (here the log's name is taken by a directory) fails,
    /// and the room's later appends are refused until it is loaded again.
    #[test]
    fn a_failed_append_refuses_later_ones_until_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = open(dir.path());
        let room = RoomId::parse("broken").expect("id");
        let key = RoomKey::Canvas(room.clone());
        fs::create_dir(storage.log_path(&room)).expect("block the log");
        assert!(append_sync(&storage, &key, 1, b"[1]").is_err());
        fs::remove_dir(storage.log_path(&room)).expect("unblock");
        assert!(
            append_sync(&storage, &key, 2, b"[2]").is_err(),
            "refused after a failure"
        );
        assert!(storage.load(&key).expect("load").is_none());
        append_sync(&storage, &key, 1, b"[1]").expect("appends again after a load");
    }

    /// More rooms than the writer keeps open append fine: handles are closed and reopened.
    #[test]
    fn many_rooms_share_a_bounded_set_of_open_logs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = FileStorage::open(dir.path(), Durability::PowerLoss).expect("open");
        let keys: Vec<_> = (0..MAX_OPEN_LOGS + 5)
            .map(|i| RoomKey::Canvas(RoomId::parse(&format!("r{i}")).expect("id")))
            .collect();
        for seq in 1..=2 {
            for key in &keys {
                append_sync(&storage, key, seq, b"[]").expect("append");
            }
        }
        for key in &keys {
            assert_eq!(
                storage.load(key).expect("load").expect("present").log.len(),
                2
            );
        }
    }
}
