//! `weft snapshot`: move rooms between storage and snapshot files in the reference server's
//! `<roomId>.json` format (`{"timestamp":N,"state":{..},"timestamps":{..}}`, tombstones kept).
//!
//! - `export ROOM [-o FILE]`: a stored room as a snapshot file (or stdout);
//! - `import FILE... [--room ID] [--force]`: snapshot files into storage, every file checked
//!   before any is written;
//! - `inspect FILE [--json]`: what a snapshot file holds;
//!
//! Game rooms go by `NAMESPACE/ID` (`export battle/r1`, `import FILE --room battle/r1`): their
//! file is the room's record (the format `weft` stores, with its log folded in), and `inspect`
//! recognises one.
//! - `restore DIR [--force]`: every `*.json` of a reference server's data directory into storage,
//!   one file at a time, with progress on stderr and a summary on stdout.
//!
//! The storage commands open the configured backend (`--config`, `--data-dir`, `--storage`,
//! `--durability`, or their `WEFT_*` variables, layered as for `weft serve`). They must not run
//! while `weft serve` uses the same data directory: RocksDB refuses (its lock), and with file
//! storage a running server would overwrite imported rooms it has loaded.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Subcommand};
use indexmap::IndexMap;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::value::RawValue;

use weft::config::{ConfigError, Overrides, Settings, StorageArgs};
use weft::engine::{Document, Limits, SnapshotError};
use weft::ids::{IdError, RecordKey, RoomId, RoomKey};
use weft::protocols::game::{load_stored_room, RecordError, Restored, RoomRecord};
use weft::storage::{self, Storage, StorageError, StorageKind};

/// How many of the largest components `inspect` lists.
const LARGEST: usize = 5;
/// Without a terminal, `restore` logs a progress line every this many files.
const LOG_EVERY: usize = 100;

/// `weft snapshot` subcommands.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Write a stored room as a `<roomId>.json` snapshot to FILE or stdout.
    ///
    /// The output is the reference server's format, tombstones included: a file the npm
    /// reference server (and `weft --storage file`) loads as it is.
    Export(ExportArgs),
    /// Save `<roomId>.json` snapshot files into storage.
    ///
    /// Every file is read and checked before any is written: if one is refused (bad name,
    /// unreadable, not a snapshot, room already stored) nothing is imported. Existing rooms are
    /// only replaced with --force.
    Import(ImportArgs),
    /// Show what a snapshot file holds.
    ///
    /// Room (from the file name), clock, live components, tombstones, total fields (`_exists`
    /// included), file size and the largest components by the bytes of their state in the file.
    Inspect(InspectArgs),
    /// Import every `*.json` of a reference server's data directory into storage.
    ///
    /// Files are read one at a time. Files whose names are not room ids are skipped and
    /// reported; unreadable or corrupt files, and rooms already stored (without --force), count
    /// as failed. Progress goes to stderr (a bar on a terminal), the summary to stdout. Exits
    /// non-zero if any file failed.
    Restore(RestoreArgs),
}

/// `weft serve`'s settings with these storage flags applied (the others keep their layers).
fn settings(storage: &StorageArgs) -> Result<Settings, ConfigError> {
    Settings::load(&Overrides {
        storage: storage.clone(),
        ..Overrides::default()
    })
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Room id, or NAMESPACE/ID for a game room.
    pub room: String,
    /// Write to this file instead of stdout (replaced if it exists).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Snapshot files, each named `<roomId>.json`.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Room id to import into, instead of the file name (only with exactly one FILE). A
    /// NAMESPACE/ID imports a game room record instead.
    #[arg(long, value_name = "ID")]
    pub room: Option<String>,
    /// Replace rooms that already exist in storage.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Snapshot file.
    pub file: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Directory of `<roomId>.json` files (a reference server's data directory, or a copy).
    pub dir: PathBuf,
    /// Replace rooms that already exist in storage (without it they count as failed).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// Why a snapshot command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "storage `memory` keeps nothing between processes: choose --storage file or --storage rocksdb"
    )]
    MemoryStorage,
    #[error("no {kind} storage in {}: check --data-dir and --storage", .path.display())]
    NoStorage { kind: &'static str, path: PathBuf },
    #[error(
        "cannot open RocksDB in {}: it is locked by another process (is `weft serve` running on this data dir?)",
        .path.display()
    )]
    Locked { path: PathBuf },
    #[error("cannot open {kind} storage in {}", .path.display())]
    Open {
        kind: &'static str,
        path: PathBuf,
        #[source]
        source: StorageError,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("invalid room id {id:?}")]
    RoomId {
        id: String,
        #[source]
        source: IdError,
    },
    #[error("{} is not a valid game room record", .path.display())]
    CorruptRecord {
        path: PathBuf,
        #[source]
        source: RecordError,
    },
    #[error("game room {key} already exists in storage; pass --force to replace it")]
    GameExists { key: RecordKey },
    #[error("game room {key} is not in {kind} storage in {}", .path.display())]
    GameNotFound {
        key: RecordKey,
        kind: &'static str,
        path: PathBuf,
    },
    #[error("{}: the file name must be `<roomId>.json` (or pass --room with one file)", .path.display())]
    NotJsonName { path: PathBuf },
    #[error("{}: the file name is not a valid room id (or pass --room with one file)", .path.display())]
    FileNameRoomId {
        path: PathBuf,
        #[source]
        source: IdError,
    },
    #[error("--room needs exactly one FILE, got {0}")]
    RoomNeedsOneFile(usize),
    #[error("room {room} would be imported from both {} and {}", .first.display(), .second.display())]
    DuplicateRoom {
        room: RoomId,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("cannot read {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a valid snapshot", .path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: SnapshotError,
    },
    #[error("{}: room {room} already exists in storage; pass --force to replace it", .path.display())]
    Exists { room: RoomId, path: PathBuf },
    #[error("room {room} is not in {kind} storage in {}", .path.display())]
    NotFound {
        room: RoomId,
        kind: &'static str,
        path: PathBuf,
    },
    #[error("cannot write {target}")]
    Write {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot list {}", .path.display())]
    ListDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is the storage directory itself: restore from a copy of it", .path.display())]
    SameDir { path: PathBuf },
    #[error("{} of {} files refused, nothing imported:{}", .0.len(), .1, list(.0))]
    Refused(Vec<CliError>, usize),
    #[error("{failed} of {total} files failed (listed above)")]
    RestoreIncomplete { failed: usize, total: usize },
    #[error("restore stopped after {done} of {total} files")]
    RestoreStopped {
        done: usize,
        total: usize,
        #[source]
        source: Box<CliError>,
    },
}

/// The message of an error followed by its sources, `: `-separated, on one line. A source whose
/// message is already part of the text (some errors repeat their source's) is not repeated.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

fn list(errors: &[CliError]) -> String {
    errors
        .iter()
        .map(|e| format!("\n  - {}", error_chain(e)))
        .collect()
}

/// Runs one `weft snapshot` subcommand.
pub fn run(command: SnapshotCommand) -> Result<(), CliError> {
    match command {
        SnapshotCommand::Export(args) => export(&args),
        SnapshotCommand::Import(args) => import(&args),
        SnapshotCommand::Inspect(args) => inspect(&args),
        SnapshotCommand::Restore(args) => restore(&args),
    }
}

/// An open backend and where it is.
struct Opened {
    storage: Arc<dyn Storage>,
    kind: &'static str,
    data_dir: PathBuf,
}

fn kind_name(kind: StorageKind) -> &'static str {
    match kind {
        StorageKind::Rocksdb => "rocksdb",
        StorageKind::Memory => "memory",
        StorageKind::File => "file",
    }
}

/// Where a backend keeps its files: the directory a missing database is looked for in.
fn storage_path(kind: StorageKind, data_dir: &Path) -> PathBuf {
    match kind {
        StorageKind::Rocksdb => data_dir.join("rocksdb"),
        StorageKind::Memory | StorageKind::File => data_dir.to_path_buf(),
    }
}

/// Opens the configured backend. With `create == false` (a read-only command) a backend that
/// does not exist yet is an error rather than created empty.
fn open_storage(settings: &Settings, create: bool) -> Result<Opened, CliError> {
    let kind = settings.storage;
    if kind == StorageKind::Memory {
        return Err(CliError::MemoryStorage);
    }
    let path = storage_path(kind, &settings.data_dir);
    let exists = match kind {
        StorageKind::Rocksdb => path.join("CURRENT").is_file(),
        StorageKind::Memory | StorageKind::File => path.is_dir(),
    };
    if !create && !exists {
        return Err(CliError::NoStorage {
            kind: kind_name(kind),
            path,
        });
    }
    let storage = storage::open(kind, &settings.data_dir, settings.durability).map_err(|e| {
        if kind == StorageKind::Rocksdb && is_lock_error(&e) {
            CliError::Locked { path: path.clone() }
        } else {
            CliError::Open {
                kind: kind_name(kind),
                path: path.clone(),
                source: e,
            }
        }
    })?;
    Ok(Opened {
        storage,
        kind: kind_name(kind),
        data_dir: settings.data_dir.clone(),
    })
}

/// RocksDB reports a held lock as "IO error: While lock file: <dir>/LOCK: Resource temporarily
/// unavailable"; the storage layer passes it on as text.
fn is_lock_error(e: &StorageError) -> bool {
    let text = error_chain(e).to_ascii_lowercase();
    text.contains("lock file")
}

fn parse_room(id: &str) -> Result<RoomId, CliError> {
    RoomId::parse(id).map_err(|source| CliError::RoomId {
        id: id.to_owned(),
        source,
    })
}

/// The room a file named `<roomId>.json` holds.
fn room_from_file_name(path: &Path) -> Result<RoomId, CliError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let Some(stem) = name.strip_suffix(".json") else {
        return Err(CliError::NotJsonName {
            path: path.to_path_buf(),
        });
    };
    RoomId::parse(stem).map_err(|source| CliError::FileNameRoomId {
        path: path.to_path_buf(),
        source,
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>, CliError> {
    fs::read(path).map_err(|source| CliError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads and validates a snapshot file.
fn read_snapshot(path: &Path) -> Result<(Document, usize), CliError> {
    let bytes = read_file(path)?;
    let doc = Document::decode_snapshot(&bytes).map_err(|source| CliError::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((doc, bytes.len()))
}

/// Saves `doc` as the room. A room that is already stored is deleted first: a fold drops a room's
/// log only up to the snapshot's clock, so without the delete, logged writes above an imported
/// (older) clock would be replayed on top of it.
fn store(
    storage: &dyn Storage,
    room: &RoomId,
    doc: &Document,
    replacing: bool,
) -> Result<(), StorageError> {
    let key = RoomKey::Canvas(room.clone());
    if replacing {
        storage.delete(&key)?;
    }
    storage.fold(&key, doc.clock(), &doc.encode_snapshot())
}

/// The canvas rooms in storage (game rooms are listed apart).
fn canvas_rooms(storage: &dyn Storage) -> Result<HashSet<RoomId>, StorageError> {
    Ok(storage
        .list()?
        .into_iter()
        .filter_map(|k| k.canvas().cloned())
        .collect())
}

fn describe(doc: &Document) -> String {
    format!(
        "clock {}, live components {}, tombstones {}",
        doc.clock(),
        doc.live_components(),
        doc.tombstones()
    )
}

fn stdout_error(source: io::Error) -> CliError {
    CliError::Write {
        target: "stdout".into(),
        source,
    }
}

/// The game room `arg` names (`NAMESPACE/ID`, each a valid room id), if it names one; anything
/// else is taken as a canvas room id (and refused as one if it is not).
fn game_key(arg: &str) -> Option<RecordKey> {
    RecordKey::parse(arg)
}

/// Writes `bytes` to the file, or to stdout.
fn write_out(output: Option<&Path>, bytes: &[u8]) -> Result<(), CliError> {
    match output {
        Some(path) => fs::write(path, bytes).map_err(|source| CliError::Write {
            target: path.display().to_string(),
            source,
        }),
        None => {
            let mut out = io::stdout().lock();
            out.write_all(bytes)
                .and_then(|()| out.flush())
                .map_err(stdout_error)
        }
    }
}

fn export(args: &ExportArgs) -> Result<(), CliError> {
    if let Some(key) = game_key(&args.room) {
        return export_game(args, &key);
    }
    let room = parse_room(&args.room)?;
    let opened = open_storage(&settings(&args.storage)?, false)?;
    // An operator's export reads whatever is stored, over the limits or not.
    let doc = storage::load_document(opened.storage.as_ref(), &room, &Limits::UNBOUNDED)?
        .ok_or_else(|| CliError::NotFound {
            room: room.clone(),
            kind: opened.kind,
            path: opened.data_dir.clone(),
        })?;
    write_out(args.output.as_deref(), &doc.encode_snapshot())?;
    if let Some(path) = &args.output {
        eprintln!(
            "exported room {room} ({}) to {}",
            describe(&doc),
            path.display()
        );
    }
    Ok(())
}

/// A stored game room (its record with the log after it folded in) as a record file.
fn export_game(args: &ExportArgs, key: &RecordKey) -> Result<(), CliError> {
    let opened = open_storage(&settings(&args.storage)?, false)?;
    let room =
        load_stored_room(opened.storage.as_ref(), key)?.ok_or_else(|| CliError::GameNotFound {
            key: key.clone(),
            kind: opened.kind,
            path: opened.data_dir.clone(),
        })?;
    let description = describe_game(&room);
    let bytes = encode_record(key, room)?;
    write_out(args.output.as_deref(), &bytes)?;
    if let Some(path) = &args.output {
        eprintln!(
            "exported game room {key} ({description}) to {}",
            path.display()
        );
    }
    Ok(())
}

fn describe_game(room: &Restored) -> String {
    format!(
        "shared version {}, players {}, timers {}",
        room.shared.clock(),
        room.players.len(),
        room.timers.len()
    )
}

/// The room as record bytes; a record too deep to load again is refused (never written).
fn encode_record(key: &RecordKey, room: Restored) -> Result<Vec<u8>, CliError> {
    room.into_record().encode().map_err(|e| {
        CliError::Storage(StorageError::Unloadable {
            room: key.to_string(),
            reason: e.to_string(),
        })
    })
}

/// Validates the game room record file `path` holds as `bytes`.
fn decode_record(path: &Path, bytes: &[u8]) -> Result<Restored, CliError> {
    RoomRecord::decode(bytes)
        .and_then(Restored::from_record)
        .map_err(|source| CliError::CorruptRecord {
            path: path.to_path_buf(),
            source,
        })
}

/// Saves a record file as the game room `key`, replacing a stored one (and its log) only when
/// forced.
fn import_game(args: &ImportArgs, key: &RecordKey) -> Result<(), CliError> {
    let path = &args.files[0];
    let room = decode_record(path, &read_file(path)?)?;
    let opened = open_storage(&settings(&args.storage)?, true)?;
    let storage = opened.storage.as_ref();
    let room_key = RoomKey::Game(key.clone());
    let replacing = storage.list()?.contains(&room_key);
    if replacing && !args.force {
        return Err(CliError::GameExists { key: key.clone() });
    }
    if replacing {
        storage.delete(&room_key)?;
    }
    let (description, seq) = (describe_game(&room), room.seq);
    let bytes = encode_record(key, room)?;
    storage.fold(&room_key, seq, &bytes)?;
    let verb = if replacing { "replaced" } else { "imported" };
    println!(
        "{verb} game room {key} from {} ({description})",
        path.display()
    );
    Ok(())
}

fn import(args: &ImportArgs) -> Result<(), CliError> {
    if args.room.is_some() && args.files.len() != 1 {
        return Err(CliError::RoomNeedsOneFile(args.files.len()));
    }
    if let Some(key) = args.room.as_deref().and_then(game_key) {
        return import_game(args, &key);
    }
    let forced = match &args.room {
        Some(id) => Some(parse_room(id)?),
        None => None,
    };
    let opened = open_storage(&settings(&args.storage)?, true)?;
    let existing: HashSet<RoomId> = canvas_rooms(opened.storage.as_ref())?;

    // First pass: every file must name a room, parse, and not clobber anything. Files are read
    // again for the writes, so memory holds one document at a time however many files there are.
    let mut problems = Vec::new();
    let mut plan: Vec<(RoomId, &Path)> = Vec::with_capacity(args.files.len());
    let mut seen: HashMap<RoomId, &Path> = HashMap::new();
    for path in &args.files {
        let room = match &forced {
            Some(room) => room.clone(),
            None => match room_from_file_name(path) {
                Ok(room) => room,
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            },
        };
        if let Err(e) = read_snapshot(path) {
            problems.push(e);
            continue;
        }
        if let Some(first) = seen.get(&room) {
            problems.push(CliError::DuplicateRoom {
                room,
                first: first.to_path_buf(),
                second: path.clone(),
            });
            continue;
        }
        if existing.contains(&room) && !args.force {
            problems.push(CliError::Exists {
                room,
                path: path.clone(),
            });
            continue;
        }
        seen.insert(room.clone(), path);
        plan.push((room, path));
    }
    match problems.len() {
        0 => {}
        1 => return Err(problems.remove(0)),
        _ => return Err(CliError::Refused(problems, args.files.len())),
    }

    let mut out = io::stdout().lock();
    for (room, path) in plan {
        let (doc, _) = read_snapshot(path)?;
        let replacing = existing.contains(&room);
        store(opened.storage.as_ref(), &room, &doc, replacing)?;
        let verb = if replacing { "replaced" } else { "imported" };
        writeln!(
            out,
            "{verb} room {room} from {} ({})",
            path.display(),
            describe(&doc)
        )
        .map_err(stdout_error)?;
    }
    Ok(())
}

/// One component's share of a snapshot file.
#[derive(Debug, Serialize)]
struct ComponentSize {
    key: String,
    /// Bytes of its `state` value in the file.
    bytes: usize,
    fields: usize,
    tombstone: bool,
}

/// What `inspect` reports.
#[derive(Debug, Serialize)]
struct Inspection {
    file: String,
    /// From the file name, when it is `<valid roomId>.json`.
    room: Option<String>,
    /// The document's clock (the file's `timestamp`, raised to its highest field stamp).
    clock: u64,
    /// The `timestamp` written in the file.
    timestamp: u64,
    live_components: usize,
    tombstones: usize,
    /// Fields of every component, tombstones and `_exists` included.
    total_fields: usize,
    file_bytes: usize,
    largest: Vec<ComponentSize>,
}

/// The `format` member of a game room record.
#[derive(serde::Deserialize)]
struct RecordFormat {
    format: Option<u32>,
}

/// The file's components as written, for their sizes.
#[derive(serde::Deserialize)]
struct RawState {
    timestamp: u64,
    #[serde(default)]
    state: IndexMap<String, Box<RawValue>>,
}

fn inspect_file(path: &Path, bytes: &[u8]) -> Result<Inspection, CliError> {
    let corrupt = |source| CliError::Corrupt {
        path: path.to_path_buf(),
        source,
    };
    let doc = Document::decode_snapshot(bytes).map_err(corrupt)?;
    let raw: RawState =
        serde_json::from_slice(bytes).map_err(|e| corrupt(SnapshotError::Json(e)))?;
    let mut components = Vec::with_capacity(raw.state.len());
    for (key, value) in raw.state {
        let fields: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(value.get()).map_err(|e| corrupt(SnapshotError::Json(e)))?;
        components.push(ComponentSize {
            bytes: value.get().len(),
            fields: fields.len(),
            tombstone: fields.get("_exists") == Some(&serde_json::Value::Bool(false)),
            key,
        });
    }
    let total_fields = components.iter().map(|c| c.fields).sum();
    // Stable: equal sizes keep file order.
    components.sort_by_key(|c| std::cmp::Reverse(c.bytes));
    components.truncate(LARGEST);
    Ok(Inspection {
        file: path.display().to_string(),
        room: room_from_file_name(path).ok().map(|r| r.to_string()),
        clock: doc.clock(),
        timestamp: raw.timestamp,
        live_components: doc.live_components(),
        tombstones: doc.tombstones(),
        total_fields,
        file_bytes: bytes.len(),
        largest: components,
    })
}

/// A state document's share of a game room record.
#[derive(Debug, Serialize)]
struct StateSize {
    version: u64,
    /// Bytes of its value as compact JSON.
    bytes: usize,
}

impl StateSize {
    fn of(doc: &weft::engine::state::StateDoc) -> StateSize {
        StateSize {
            version: doc.clock(),
            bytes: serde_json::to_vec(doc.value()).map_or(0, |b| b.len()),
        }
    }
}

/// What `inspect` reports of a game room record.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct GameInspection {
    file: String,
    format: u32,
    created: bool,
    /// The last log entry the record holds.
    seq: u64,
    saved_at_ms: u64,
    elapsed_ms: u64,
    shared: StateSize,
    players: IndexMap<String, StateSize>,
    server: StateSize,
    metadata: serde_json::Value,
    /// Each pending timer's due time, in Unix milliseconds.
    timers: IndexMap<String, u64>,
    locked: bool,
    private: bool,
    file_bytes: usize,
}

fn inspect_game(path: &Path, bytes: &[u8], format: u32) -> Result<GameInspection, CliError> {
    let room = decode_record(path, bytes)?;
    Ok(GameInspection {
        file: path.display().to_string(),
        format,
        created: room.created,
        seq: room.seq,
        saved_at_ms: room.saved_at_ms,
        elapsed_ms: room.elapsed_ms,
        shared: StateSize::of(&room.shared),
        players: room
            .players
            .iter()
            .map(|(user, p)| (user.clone(), StateSize::of(&p.state)))
            .collect(),
        server: StateSize::of(&room.server),
        metadata: room.metadata.value().clone(),
        timers: room
            .timers
            .iter()
            .map(|(name, t)| (name.clone(), t.due_ms))
            .collect(),
        locked: room.locked,
        private: room.private,
        file_bytes: bytes.len(),
    })
}

fn game_inspection_table(r: &GameInspection) -> String {
    let state = |s: &StateSize| format!("version {}, {}", s.version, human_bytes(s.bytes as u64));
    let mut rows = vec![
        ("file", r.file.clone()),
        ("game room", format!("record format {}", r.format)),
        ("created", r.created.to_string()),
        ("log entries in", r.seq.to_string()),
        ("saved at (ms)", r.saved_at_ms.to_string()),
        ("room clock (ms)", r.elapsed_ms.to_string()),
        ("shared state", state(&r.shared)),
        ("server state", state(&r.server)),
        ("metadata", r.metadata.to_string()),
        ("locked", r.locked.to_string()),
        ("private", r.private.to_string()),
        ("file size", human_bytes(r.file_bytes as u64)),
    ];
    rows.push(("players", r.players.len().to_string()));
    let mut text = String::new();
    for (name, value) in rows {
        text.push_str(&format!("{name:<16} {value}\n"));
    }
    for (user, s) in &r.players {
        text.push_str(&format!("  player {user}: {}\n", state(s)));
    }
    text.push_str(&format!("{:<16} {}\n", "timers", r.timers.len()));
    for (name, due) in &r.timers {
        text.push_str(&format!("  timer {name}: due at {due} ms\n"));
    }
    text
}

fn pretty_json(report: &impl Serialize) -> Result<String, CliError> {
    let mut json = serde_json::to_string_pretty(report).map_err(|e| CliError::Write {
        target: "stdout".into(),
        source: e.into(),
    })?;
    json.push('\n');
    Ok(json)
}

fn inspect(args: &InspectArgs) -> Result<(), CliError> {
    // A game room record says its format; a canvas snapshot has none.
    let bytes = read_file(&args.file)?;
    let format = serde_json::from_slice::<RecordFormat>(&bytes)
        .ok()
        .and_then(|r| r.format);
    let text = match format {
        Some(format) => {
            let report = inspect_game(&args.file, &bytes, format)?;
            if args.json {
                pretty_json(&report)?
            } else {
                game_inspection_table(&report)
            }
        }
        None => {
            let report = inspect_file(&args.file, &bytes)?;
            if args.json {
                pretty_json(&report)?
            } else {
                inspection_table(&report)
            }
        }
    };
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

fn inspection_table(r: &Inspection) -> String {
    let mut rows = vec![
        ("file", r.file.clone()),
        (
            "room",
            r.room
                .clone()
                .unwrap_or_else(|| "- (file name is not <roomId>.json)".into()),
        ),
    ];
    let clock = if r.clock == r.timestamp {
        r.clock.to_string()
    } else {
        format!(
            "{} (the file says {}; a field stamp is higher)",
            r.clock, r.timestamp
        )
    };
    rows.extend([
        ("clock", clock),
        ("live components", r.live_components.to_string()),
        ("tombstones", r.tombstones.to_string()),
        ("total fields", r.total_fields.to_string()),
        ("file size", human_bytes(r.file_bytes as u64)),
    ]);
    let mut text = String::new();
    for (name, value) in rows {
        text.push_str(&format!("{name:<16} {value}\n"));
    }
    if r.largest.is_empty() {
        text.push_str("\nno components\n");
        return text;
    }
    text.push_str(&format!(
        "\nlargest components (top {LARGEST} by serialized size)\n{:>8}  {:>6}  {:<9}  key\n",
        "bytes", "fields", "state"
    ));
    for c in &r.largest {
        let state = if c.tombstone { "tombstone" } else { "live" };
        text.push_str(&format!(
            "{:>8}  {:>6}  {:<9}  {}\n",
            c.bytes, c.fields, state, c.key
        ));
    }
    text
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut value = n as f64;
    let mut unit = "bytes";
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    format!("{value:.1} {unit} ({n} bytes)")
}

/// What became of one file of a restore.
enum Outcome {
    Imported(u64),
    Skipped(String),
    Failed(CliError),
}

/// Progress of a restore on stderr: a bar on a terminal, a line every [`LOG_EVERY`] files
/// otherwise.
enum Progress {
    Bar(ProgressBar),
    Lines,
}

impl Progress {
    fn new(total: usize) -> Progress {
        if !io::stderr().is_terminal() {
            return Progress::Lines;
        }
        let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} files, eta {eta}, {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style.progress_chars("=> "));
        bar.set_message("0 failed");
        Progress::Bar(bar)
    }

    /// A message that stays (above the bar, if there is one).
    fn note(&self, message: &str) {
        match self {
            Progress::Bar(bar) => bar.println(message),
            Progress::Lines => eprintln!("{message}"),
        }
    }

    fn advance(&self, tally: &Tally, total: usize) {
        let done = tally.done();
        match self {
            Progress::Bar(bar) => {
                bar.set_position(done as u64);
                bar.set_message(format!("{} failed", tally.failed));
            }
            Progress::Lines if done.is_multiple_of(LOG_EVERY) && done < total => eprintln!(
                "restore: {done}/{total} files (imported {}, skipped {}, failed {})",
                tally.imported, tally.skipped, tally.failed
            ),
            Progress::Lines => {}
        }
    }

    fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

#[derive(Default)]
struct Tally {
    imported: usize,
    skipped: usize,
    failed: usize,
    bytes: u64,
}

impl Tally {
    fn done(&self) -> usize {
        self.imported + self.skipped + self.failed
    }
}

/// The `*.json` files of `dir`, sorted by name (paths only: contents are read one at a time).
fn json_files(dir: &Path) -> Result<Vec<PathBuf>, CliError> {
    let list_error = |source| CliError::ListDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(list_error)? {
        let path = entry.map_err(list_error)?.path();
        let is_json = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(".json"));
        if is_json && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn restore_one(
    storage: &dyn Storage,
    existing: &HashSet<RoomId>,
    path: &Path,
    force: bool,
) -> Outcome {
    let room = match room_from_file_name(path) {
        Ok(room) => room,
        Err(CliError::FileNameRoomId { path, source }) => {
            return Outcome::Skipped(format!(
                "{}: the file name is not a valid room id: {source}",
                path.display()
            ))
        }
        Err(e) => return Outcome::Skipped(error_chain(&e)),
    };
    if !force && existing.contains(&room) {
        return Outcome::Failed(CliError::Exists {
            room,
            path: path.to_path_buf(),
        });
    }
    let (doc, bytes) = match read_snapshot(path) {
        Ok(read) => read,
        Err(e) => return Outcome::Failed(e),
    };
    match store(storage, &room, &doc, existing.contains(&room)) {
        Ok(()) => Outcome::Imported(bytes as u64),
        Err(e) => Outcome::Failed(e.into()),
    }
}

fn restore(args: &RestoreArgs) -> Result<(), CliError> {
    let started = Instant::now();
    let settings = settings(&args.storage)?;
    // Restoring a file-storage directory into itself would only rewrite (or refuse) every file.
    if settings.storage == StorageKind::File {
        if let (Ok(a), Ok(b)) = (args.dir.canonicalize(), settings.data_dir.canonicalize()) {
            if a == b {
                return Err(CliError::SameDir {
                    path: args.dir.clone(),
                });
            }
        }
    }
    let files = json_files(&args.dir)?;
    let opened = open_storage(&settings, true)?;
    let existing: HashSet<RoomId> = canvas_rooms(opened.storage.as_ref())?;
    let total = files.len();
    let progress = Progress::new(total);
    let mut tally = Tally::default();
    let mut stopped = None;
    for path in &files {
        match restore_one(opened.storage.as_ref(), &existing, path, args.force) {
            Outcome::Imported(bytes) => {
                tally.imported += 1;
                tally.bytes += bytes;
            }
            Outcome::Skipped(reason) => {
                tally.skipped += 1;
                progress.note(&format!("skipped: {reason}"));
            }
            Outcome::Failed(CliError::Storage(e)) => {
                // Not this file's fault: the next ones would fail the same way.
                tally.failed += 1;
                stopped = Some(CliError::Storage(e));
                break;
            }
            Outcome::Failed(e) => {
                tally.failed += 1;
                progress.note(&format!("failed: {}", error_chain(&e)));
            }
        }
        progress.advance(&tally, total);
    }
    progress.finish();
    let summary = format!(
        "restore of {} into {} storage in {}\n\
         {:<10} {}\n{:<10} {}\n{:<10} {}\n{:<10} {} files\n{:<10} {}\n{:<10} {:.2} s\n",
        args.dir.display(),
        opened.kind,
        opened.data_dir.display(),
        "imported",
        tally.imported,
        "skipped",
        tally.skipped,
        "failed",
        tally.failed,
        "total",
        total,
        "bytes",
        human_bytes(tally.bytes),
        "elapsed",
        started.elapsed().as_secs_f64(),
    );
    let mut out = io::stdout().lock();
    out.write_all(summary.as_bytes())
        .and_then(|()| out.flush())
        .map_err(stdout_error)?;
    if let Some(source) = stopped {
        return Err(CliError::RestoreStopped {
            done: tally.done(),
            total,
            source: Box::new(source),
        });
    }
    if tally.failed > 0 {
        return Err(CliError::RestoreIncomplete {
            failed: tally.failed,
            total,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Room ids come from `<roomId>.json` names only; anything else is a typed error.
    #[test]
    fn room_ids_come_from_file_names() {
        let ok = room_from_file_name(Path::new("/x/room-1.json")).expect("valid");
        assert_eq!(ok.as_str(), "room-1");
        assert!(matches!(
            room_from_file_name(Path::new("/x/room-1.txt")),
            Err(CliError::NotJsonName { .. })
        ));
        assert!(matches!(
            room_from_file_name(Path::new("/x/bad name.json")),
            Err(CliError::FileNameRoomId { .. })
        ));
        assert!(matches!(
            room_from_file_name(Path::new("/x/.json")),
            Err(CliError::FileNameRoomId { .. })
        ));
    }

    /// Sizes print as bytes below 1 KiB and with a unit (and the exact count) above.
    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(12), "12 bytes");
        assert_eq!(human_bytes(1536), "1.5 KiB (1536 bytes)");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB (3145728 bytes)");
    }

    /// RocksDB's lock message is recognised, other open errors are not.
    #[test]
    fn lock_errors_are_recognised() {
        let io = |m: &str| StorageError::Io {
            room: String::new(),
            source: io::Error::other(m.to_owned()),
        };
        assert!(is_lock_error(&io(
            "opening RocksDB in /d/rocksdb: IO error: While lock file: /d/rocksdb/LOCK: Resource temporarily unavailable"
        )));
        assert!(!is_lock_error(&io(
            "opening RocksDB in /d: Permission denied"
        )));
    }
}
