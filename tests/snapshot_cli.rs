//! `weft snapshot` (export, import, inspect, restore), driven through the real binary against
//! temporary data directories.
//!
//! The fixture `tests/fixtures/reference-data/reference-room.json` was written by the npm
//! reference server (`@woven-ecs/canvas-store-server` 2.0.2, file storage) after creates, an edit,
//! a delete (`e2/Shape` is a tombstone) and a buffer delta; `generate.mjs` beside it regenerates
//! it. The test that loads an exported file into the reference server needs Node.js and
//! `npm ci` in `tests/interop` (`scripts/test` does both); it fails rather than skips without them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use weft::engine::{Document, Limits};
use weft::ids::{RecordKey, RoomId, RoomKey};
use weft::protocols::game::{load_stored_room, Entry, Op};
use weft::storage::{self, Durability, RocksStorage, StorageKind};

const FIXTURE_ROOM: &str = "reference-room";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/reference-data")
        .join(format!("{FIXTURE_ROOM}.json"))
}

/// What a run of the binary printed.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `weft snapshot ARGS` in `cwd`, with no `WEFT_*` settings from the environment.
fn snapshot(cwd: &Path, args: &[&str]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_weft"));
    command.arg("snapshot").args(args).current_dir(cwd);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WEFT_") {
            command.env_remove(key);
        }
    }
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("weft runs");
    Run {
        ok: status.success(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Like [`snapshot`], but the command must succeed.
fn snapshot_ok(cwd: &Path, args: &[&str]) -> Run {
    let run = snapshot(cwd, args);
    assert!(
        run.ok,
        "weft snapshot {args:?} failed\nstdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    run
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("valid JSON")
}

/// The canvas rooms a storage holds, sorted.
fn canvas_rooms(storage: &dyn storage::Storage) -> Vec<RoomId> {
    let mut ids: Vec<RoomId> = storage
        .list()
        .expect("list")
        .into_iter()
        .filter_map(|k| k.canvas().cloned())
        .collect();
    ids.sort();
    ids
}

fn decode(bytes: &[u8]) -> Document {
    Document::decode_snapshot(bytes).expect("a snapshot")
}

/// The number after `name` on its line of a `restore` summary.
fn summary_number(stdout: &str, name: &str) -> u64 {
    stdout
        .lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some(name))
                .then(|| words.next())
                .flatten()
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no `{name}` in summary:\n{stdout}"))
}

/// A fixture round trip through one backend: import, export to a file and to stdout, import the
/// export into a second data directory under another id, export again.
fn round_trip(kind: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cwd = dir.path();
    let original = std::fs::read(fixture()).expect("fixture");
    let fixture = fixture().display().to_string();
    let storage = ["--storage", kind, "--data-dir", "a"];

    let run = snapshot_ok(cwd, &[&["import", fixture.as_str()], &storage[..]].concat());
    assert!(
        run.stdout.contains("imported room reference-room"),
        "{}",
        run.stdout
    );
    let to_file = [&["export", FIXTURE_ROOM, "-o", "out.json"], &storage[..]].concat();
    snapshot_ok(cwd, &to_file);
    let exported = std::fs::read(cwd.join("out.json")).expect("exported file");
    let to_stdout = snapshot_ok(cwd, &[&["export", FIXTURE_ROOM], &storage[..]].concat());
    assert_eq!(to_stdout.stdout.as_bytes(), exported, "stdout and -o agree");
    assert_eq!(
        json_of(&exported),
        json_of(&original),
        "{kind}: the export is the reference file, tombstone included"
    );
    assert_eq!(decode(&exported), decode(&original));

    let other = ["--storage", kind, "--data-dir", "b"];
    snapshot_ok(
        cwd,
        &[&["import", "out.json", "--room", "copy"], &other[..]].concat(),
    );
    let again = snapshot_ok(cwd, &[&["export", "copy"], &other[..]].concat());
    assert_eq!(json_of(again.stdout.as_bytes()), json_of(&original));
}

/// A reference-server file imported into file storage exports as the same document.
#[test]
fn round_trip_through_file_storage() {
    round_trip("file");
}

/// A reference-server file imported into RocksDB storage exports as the same document.
#[test]
fn round_trip_through_rocksdb_storage() {
    round_trip("rocksdb");
}

/// Import refuses to replace a stored room unless --force, and a refused batch writes nothing.
#[test]
fn import_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cwd = dir.path();
    let fixture = fixture().display().to_string();
    snapshot_ok(cwd, &["import", &fixture, "--data-dir", "d"]);

    // A newer version of the room, and a new room in the same batch.
    let mut doc = decode(&std::fs::read(fixture.as_str()).expect("fixture"));
    doc.apply(&[json!({"e1/Shape": {"x": 99}})], &Limits::default());
    std::fs::write(cwd.join("reference-room.json"), doc.encode_snapshot()).expect("write");
    std::fs::write(
        cwd.join("fresh.json"),
        Document::default().encode_snapshot(),
    )
    .expect("write");

    let refused = snapshot(
        cwd,
        &[
            "import",
            "fresh.json",
            "reference-room.json",
            "--data-dir",
            "d",
        ],
    );
    assert!(!refused.ok);
    assert!(
        refused
            .stderr
            .contains("room reference-room already exists")
            && refused.stderr.contains("--force"),
        "{}",
        refused.stderr
    );
    let stored = snapshot_ok(cwd, &["export", FIXTURE_ROOM, "--data-dir", "d"]);
    assert_eq!(decode(stored.stdout.as_bytes()).clock(), 7, "not replaced");
    let fresh = snapshot(cwd, &["export", "fresh", "--data-dir", "d"]);
    assert!(!fresh.ok, "nothing of a refused batch is imported");
    assert!(
        fresh.stderr.contains("room fresh is not in"),
        "{}",
        fresh.stderr
    );

    let forced = snapshot_ok(
        cwd,
        &[
            "import",
            "fresh.json",
            "reference-room.json",
            "--force",
            "--data-dir",
            "d",
        ],
    );
    assert!(
        forced.stdout.contains("replaced room reference-room")
            && forced.stdout.contains("imported room fresh"),
        "{}",
        forced.stdout
    );
    let stored = snapshot_ok(cwd, &["export", FIXTURE_ROOM, "--data-dir", "d"]);
    assert_eq!(
        decode(stored.stdout.as_bytes()),
        doc,
        "replaced with --force"
    );
}

/// Inspect reports the reference fixture's clock, live components, tombstones, fields, size and
/// largest components, as a table and as JSON.
#[test]
fn inspect_reports_the_numbers_of_a_known_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture = fixture().display().to_string();
    let size = std::fs::metadata(fixture.as_str()).expect("fixture").len();

    let run = snapshot_ok(dir.path(), &["inspect", "--json", &fixture]);
    let report = json_of(run.stdout.as_bytes());
    assert_eq!(report["room"], "reference-room");
    assert_eq!(report["clock"], 7);
    assert_eq!(report["timestamp"], 7);
    assert_eq!(report["live_components"], 3);
    assert_eq!(report["tombstones"], 1);
    // e1/Shape 4 (_exists, x, y, pts) + e2/Shape 1 + e3/Text 3 + SINGLETON/Camera 2.
    assert_eq!(report["total_fields"], 10);
    assert_eq!(report["file_bytes"], size);
    let largest: Vec<(&str, u64, bool)> = report["largest"]
        .as_array()
        .expect("array")
        .iter()
        .map(|c| {
            (
                c["key"].as_str().expect("key"),
                c["bytes"].as_u64().expect("bytes"),
                c["tombstone"].as_bool().expect("flag"),
            )
        })
        .collect();
    let e3 = r#"{"_exists":true,"text":"the largest component of this room, by far","size":12}"#;
    assert_eq!(
        largest,
        vec![
            ("e3/Text", e3.len() as u64, false),
            (
                "e1/Shape",
                r#"{"_exists":true,"x":10,"y":2,"pts":[1,2,3,4,5]}"#.len() as u64,
                false
            ),
            (
                "SINGLETON/Camera",
                r#"{"_exists":true,"zoom":1.5}"#.len() as u64,
                false
            ),
            ("e2/Shape", r#"{"_exists":false}"#.len() as u64, true),
        ]
    );

    let table = snapshot_ok(dir.path(), &["inspect", &fixture]).stdout;
    for line in [
        "room             reference-room",
        "clock            7",
        "live components  3",
        "tombstones       1",
        "total fields     10",
        &format!("file size        {size} bytes"),
    ] {
        assert!(table.contains(line), "{line:?} missing from\n{table}");
    }
    assert!(
        table.contains("tombstone  e2/Shape") && table.contains("live       e3/Text"),
        "{table}"
    );
}

/// Restore imports ~200 reference-format files plus the reference server's own file, skips a
/// file whose name is not a room id, fails a corrupt one, summarizes correctly (non-zero exit
/// for the failure), every imported room loads from storage as its file reads, and a second
/// restore refuses stored rooms unless --force.
#[test]
fn restore_a_reference_data_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cwd = dir.path();
    let source = cwd.join("reference-data");
    std::fs::create_dir(&source).expect("mkdir");
    let mut expected_bytes = 0u64;
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(source.join(name), bytes).expect("write");
        bytes.len() as u64
    };
    for i in 0..200u64 {
        // As the reference writes them: compact JSON, a live component with an array, a tombstone.
        let doc = json!({
            "timestamp": i + 3,
            "state": {
                format!("e{i}/Shape"): {"_exists": true, "x": i, "pts": (0..i % 7).collect::<Vec<_>>()},
                "gone/Shape": {"_exists": false},
            },
            "timestamps": {
                format!("e{i}/Shape"): {"_exists": 1, "x": i + 2, "pts": 1},
                "gone/Shape": {"_exists": i + 3},
            },
        });
        expected_bytes += write(&format!("room-{i:03}.json"), doc.to_string().as_bytes());
    }
    expected_bytes += write(
        "reference-room.json",
        &std::fs::read(fixture()).expect("fixture"),
    );
    write("not a room id.json", b"{\"timestamp\":0}");
    write("corrupt.json", b"{\"timestamp\":3,\"state\":{\"a/S\":");
    write("room-1.json.0b6f.tmp", b"partial write of the reference");

    let run = snapshot(cwd, &["restore", "reference-data", "--data-dir", "d"]);
    assert!(!run.ok, "a failed file makes the exit non-zero");
    assert_eq!(
        summary_number(&run.stdout, "imported"),
        201,
        "{}",
        run.stdout
    );
    assert_eq!(summary_number(&run.stdout, "skipped"), 1);
    assert_eq!(summary_number(&run.stdout, "failed"), 1);
    assert_eq!(summary_number(&run.stdout, "total"), 203);
    assert!(
        run.stdout.contains(&format!("({expected_bytes} bytes)")),
        "imported bytes: {}",
        run.stdout
    );
    assert!(run.stdout.contains("elapsed"), "{}", run.stdout);
    assert!(
        run.stderr
            .contains("not a room id.json: the file name is not a valid room id"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("corrupt.json is not a valid snapshot"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("restore: 200/203 files"),
        "without a terminal, progress is logged as lines: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("1 of 203 files failed"),
        "{}",
        run.stderr
    );

    let storage = storage::open(
        StorageKind::Rocksdb,
        &cwd.join("d"),
        Durability::ProcessCrash,
    )
    .expect("storage opens");
    let mut ids = canvas_rooms(&*storage);
    ids.sort();
    assert_eq!(ids.len(), 201);
    for id in ids {
        let file = std::fs::read(source.join(format!("{id}.json"))).expect("source file");
        let stored = storage::load_document(&*storage, &id, &Limits::default())
            .expect("loads")
            .expect("present");
        assert_eq!(stored, decode(&file), "room {id}");
    }
    let reference = storage::load_document(
        &*storage,
        &RoomId::parse(FIXTURE_ROOM).expect("id"),
        &Limits::default(),
    )
    .expect("loads")
    .expect("present");
    assert_eq!(
        (reference.live_components(), reference.tombstones()),
        (3, 1)
    );
    drop(storage);

    // Again: every stored room is refused without --force, replaced with it.
    let again = snapshot(cwd, &["restore", "reference-data", "--data-dir", "d"]);
    assert!(!again.ok);
    assert_eq!(summary_number(&again.stdout, "imported"), 0);
    assert_eq!(summary_number(&again.stdout, "failed"), 202);
    assert!(
        again.stderr.contains("room room-000 already exists"),
        "{}",
        again.stderr
    );
    let forced = snapshot(
        cwd,
        &["restore", "reference-data", "--force", "--data-dir", "d"],
    );
    assert_eq!(
        summary_number(&forced.stdout, "imported"),
        201,
        "{}",
        forced.stdout
    );
    assert_eq!(summary_number(&forced.stdout, "failed"), 1);
}

/// Bad inputs exit non-zero with a message naming the file and the problem, and import nothing.
#[test]
fn bad_inputs_fail_with_clear_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cwd = dir.path();
    std::fs::write(cwd.join("corrupt.json"), "{\"timestamp\":").expect("write");
    std::fs::write(
        cwd.join("shape.json"),
        r#"{"timestamp":1,"state":{"a/S":1}}"#,
    )
    .expect("write");
    std::fs::write(
        cwd.join("bad name.json"),
        Document::default().encode_snapshot(),
    )
    .expect("write");
    std::fs::write(cwd.join("room.txt"), Document::default().encode_snapshot()).expect("write");

    let cases: [(&[&str], &[&str]); 8] = [
        (
            &["import", "corrupt.json"],
            &["corrupt.json is not a valid snapshot", "EOF"],
        ),
        (
            &["import", "shape.json"],
            &[
                "shape.json is not a valid snapshot",
                "\"a/S\" is not an object",
            ],
        ),
        (
            &["import", "bad name.json"],
            &["bad name.json: the file name is not a valid room id"],
        ),
        (
            &["import", "room.txt"],
            &["file name must be `<roomId>.json`"],
        ),
        (&["import", "missing.json"], &["cannot read missing.json"]),
        (
            &["import", "corrupt.json", "shape.json"],
            &[
                "2 of 2 files refused, nothing imported",
                "corrupt.json",
                "shape.json",
            ],
        ),
        (
            &["import", "room.txt", "shape.json", "--room", "r"],
            &["--room needs exactly one FILE, got 2"],
        ),
        (
            &["inspect", "corrupt.json"],
            &["corrupt.json is not a valid snapshot"],
        ),
    ];
    for (args, needles) in cases {
        let storage: &[&str] = if args[0] == "import" {
            &["--data-dir", "d"]
        } else {
            &[]
        };
        let run = snapshot(cwd, &[args, storage].concat());
        assert!(!run.ok, "{args:?} must fail");
        assert!(
            run.stderr.starts_with("weft snapshot: error: "),
            "{args:?}: {}",
            run.stderr
        );
        for needle in needles {
            assert!(
                run.stderr.contains(needle),
                "{args:?}: {needle:?} missing from {}",
                run.stderr
            );
        }
    }
    let export = snapshot(cwd, &["export", "../etc", "--data-dir", "d"]);
    assert!(
        !export.ok && export.stderr.contains("invalid room id \"../etc\""),
        "{}",
        export.stderr
    );
    let memory = snapshot(
        cwd,
        &["import", "room.txt", "--room", "r", "--storage", "memory"],
    );
    assert!(
        !memory.ok && memory.stderr.contains("storage `memory` keeps nothing"),
        "{}",
        memory.stderr
    );

    // Nothing above was imported; `--room` makes a non-`.json` name importable.
    let storage = storage::open(
        StorageKind::Rocksdb,
        &cwd.join("d"),
        Durability::ProcessCrash,
    )
    .expect("storage opens");
    assert_eq!(canvas_rooms(&*storage), Vec::<RoomId>::new());
    drop(storage);
    snapshot_ok(
        cwd,
        &["import", "room.txt", "--room", "r", "--data-dir", "d"],
    );
}

/// With the RocksDB data dir held by another process (as by `weft serve`), the commands say so.
#[test]
fn a_locked_rocksdb_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db =
        RocksStorage::open(&dir.path().join("d/rocksdb"), Durability::ProcessCrash).expect("open");
    let fixture = fixture().display().to_string();
    for args in [
        vec!["export", FIXTURE_ROOM, "--data-dir", "d"],
        vec!["import", fixture.as_str(), "--data-dir", "d"],
    ] {
        let run = snapshot(dir.path(), &args);
        assert!(!run.ok);
        assert!(
            run.stderr.contains(
                "is locked by another process (is `weft serve` running on this data dir?)"
            ),
            "{args:?}: {}",
            run.stderr
        );
    }
    drop(db);
}

/// The npm reference server, stopped when dropped.
struct ReferenceServer {
    child: Child,
    port: u16,
}

impl ReferenceServer {
    fn start(data_dir: &Path) -> ReferenceServer {
        let interop = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
        assert!(
            interop
                .join("node_modules/@woven-ecs/canvas-store-server")
                .is_dir(),
            "npm packages missing: run `npm ci` in tests/interop (scripts/test does it)"
        );
        let mut child = Command::new("node")
            .args(["reference-server.mjs", "--port", "0", "--storage", "file"])
            .arg("--data-dir")
            .arg(data_dir)
            .current_dir(&interop)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs (install Node.js; scripts/test does)");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read");
        let port = line
            .trim()
            .strip_prefix("listening on 127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the reference server: {line:?}"));
        ReferenceServer { child, port }
    }
}

impl Drop for ReferenceServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a fresh client of the reference server receives for `room`: the document patch of its
/// reconnect from clock 0 with its timestamp, then the ack timestamp of one more write.
async fn reference_view(port: u16, room: &str) -> (Value, u64, u64) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let url = format!("ws://127.0.0.1:{port}/?roomId={room}&clientId=check&token=anonymous");
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connects");
    ws.send(Message::text(
        json!({"type": "reconnect", "lastTimestamp": 0, "protocolVersion": 2}).to_string(),
    ))
    .await
    .expect("send");
    let patch = loop {
        let frame = recv(&mut ws).await;
        if frame["type"] == "patch" {
            break frame;
        }
    };
    ws.send(Message::text(
        json!({"type": "patch", "messageId": "after", "documentPatches": [{"z/S": {"_exists": true}}]})
            .to_string(),
    ))
    .await
    .expect("send");
    let ack = loop {
        let frame = recv(&mut ws).await;
        if frame["type"] == "ack" {
            break frame;
        }
    };
    (
        patch["documentPatches"][0].clone(),
        patch["timestamp"].as_u64().expect("timestamp"),
        ack["timestamp"].as_u64().expect("ack timestamp"),
    )
}

async fn recv<S>(ws: &mut S) -> Value
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures_util::StreamExt;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("frame");
        if let tokio_tungstenite::tungstenite::Message::Text(text) = frame {
            return serde_json::from_str(&text).expect("json frame");
        }
    }
}

/// A room written by weft (live fields, a buffer delta, a delete) and exported loads in the npm
/// reference server: a fresh client gets every field and the tombstone, and the clock goes on.
#[test]
fn an_export_loads_in_the_reference_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cwd = dir.path();
    let limits = Limits::default();
    let mut doc = Document::default();
    doc.apply(
        &[json!({"s1/Stroke": {"_exists": true, "pts": [1, 2], "color": "red"}})],
        &limits,
    );
    doc.apply(
        &[
            json!({"s2/Stroke": {"_exists": true, "w": 2}}),
            json!({"cam/C": {"_exists": true, "z": 1.5}}),
        ],
        &limits,
    );
    doc.apply(
        &[json!({"s1/Stroke": {"pts": {"__buf": 1, "len": 4, "runs": [[2, [3, 4]]]}}})],
        &limits,
    );
    doc.apply(&[json!({"s2/Stroke": {"_exists": false}})], &limits);
    std::fs::write(cwd.join("weft-room.json"), doc.encode_snapshot()).expect("write");
    snapshot_ok(cwd, &["import", "weft-room.json", "--data-dir", "d"]);

    let reference_dir = cwd.join("reference");
    std::fs::create_dir(&reference_dir).expect("mkdir");
    let out = reference_dir.join("weft-room.json");
    snapshot_ok(
        cwd,
        &[
            "export",
            "weft-room",
            "--data-dir",
            "d",
            "-o",
            &out.display().to_string(),
        ],
    );

    let server = ReferenceServer::start(&reference_dir);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (diff, timestamp, next) = runtime.block_on(reference_view(server.port, "weft-room"));
    drop(server);

    assert_eq!(
        diff,
        json!({
            "s1/Stroke": {"_exists": true, "pts": [1, 2, 3, 4], "color": "red"},
            "s2/Stroke": {"_exists": false},
            "cam/C": {"_exists": true, "z": 1.5},
        })
    );
    assert_eq!(diff, doc.diff_since(0));
    assert_eq!(timestamp, doc.clock());
    assert_eq!(
        next,
        doc.clock() + 1,
        "the reference continues the exported clock"
    );
}

/// `import --force` replaces a RocksDB room whole: writes still in its log (never folded, as
/// after a crash) are not replayed on top of the imported snapshot.
#[test]
fn forced_import_drops_the_replaced_rooms_log() {
    use weft::ids::RoomKey;
    use weft::storage::Storage;

    let dir = tempfile::tempdir().expect("tempdir");
    let cwd = dir.path();
    let room = RoomId::parse(FIXTURE_ROOM).expect("id");
    {
        let db =
            RocksStorage::open(&cwd.join("d/rocksdb"), Durability::ProcessCrash).expect("open");
        // Clocks 1..=9 in the log only: the fixture's clock is 7, so 8 and 9 lie above it.
        for clock in 1..=9u64 {
            let (tx, rx) = std::sync::mpsc::channel();
            let patch = json!([{ format!("old{clock}/S"): {"_exists": true} }]);
            db.append(
                &RoomKey::Canvas(room.clone()),
                clock,
                patch.to_string().into_bytes(),
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            );
            rx.recv().expect("answered").expect("appended");
        }
        assert_eq!(
            storage::load_document(&db, &room, &Limits::default())
                .expect("load")
                .map(|d| d.clock()),
            Some(9)
        );
    }
    snapshot_ok(
        cwd,
        &[
            "import",
            &fixture().display().to_string(),
            "--force",
            "--data-dir",
            "d",
        ],
    );
    let exported = snapshot_ok(cwd, &["export", FIXTURE_ROOM, "--data-dir", "d"]);
    assert_eq!(
        decode(exported.stdout.as_bytes()),
        decode(&std::fs::read(fixture()).expect("fixture")),
        "the stored room is the imported file, nothing of the old log"
    );
}

/// Appends `bytes` as log entry `seq` of `key` and waits until it is written.
fn append_and_wait(storage: &dyn storage::Storage, key: &RoomKey, seq: u64, bytes: Vec<u8>) {
    let (tx, rx) = std::sync::mpsc::channel();
    storage.append(
        key,
        seq,
        bytes,
        Box::new(move |result| {
            let _ = tx.send(result);
        }),
    );
    rx.recv().expect("answered").expect("appended");
}

/// A game room goes by NAMESPACE/ID: a record file imports into storage (over a stored room
/// only with --force), the export is its record with the log after it folded in (here a log
/// entry written after the import: alice hit, bob gone), and `inspect` reads a record file.
fn game_round_trip(kind: StorageKind, name: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cwd = dir.path();
    let record =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/game/battle-format1.json");
    let record = record.display().to_string();
    let flags = ["--storage", name, "--data-dir", "a"];
    let import = [
        &["import", record.as_str(), "--room", "battle/r1"],
        &flags[..],
    ]
    .concat();
    let run = snapshot_ok(cwd, &import);
    assert!(
        run.stdout.contains("imported game room battle/r1"),
        "{}",
        run.stdout
    );

    // What the room wrote after that: one log entry.
    let key = RecordKey::parse("battle/r1").expect("key");
    {
        let storage = storage::open(kind, &cwd.join("a"), Durability::ProcessCrash).expect("open");
        let stored = load_stored_room(storage.as_ref(), &key)
            .expect("load")
            .expect("stored");
        let mut alice = stored.players["alice"].state.clone();
        let batch = alice
            .apply(json!({"hp": 50, "position": {"x": 3, "y": 4}}))
            .expect("a change");
        let entry = Entry {
            ops: vec![
                Op::Player {
                    user: "alice".into(),
                    batch,
                },
                Op::Left { user: "bob".into() },
            ],
            at_ms: 1_764_859_300_000,
            elapsed_ms: 9_000,
        };
        let bytes = entry.encode().expect("encodes");
        append_and_wait(storage.as_ref(), &RoomKey::Game(key.clone()), 1, bytes);
        storage.close();
    }

    let export = [&["export", "battle/r1", "-o", "game.json"], &flags[..]].concat();
    snapshot_ok(cwd, &export);
    let exported = json_of(&std::fs::read(cwd.join("game.json")).expect("exported"));
    assert_eq!(exported["format"], 3);
    assert_eq!(exported["seq"], 1);
    assert_eq!(exported["savedAtMs"], 1_764_859_300_000u64);
    assert_eq!(
        exported["players"].as_object().map(|p| p.len()),
        Some(1),
        "{exported}"
    );
    assert_eq!(exported["players"]["alice"]["state"]["hp"], 50);
    assert_eq!(exported["players"]["alice"]["version"], 4);
    assert_eq!(exported["sharedVersion"], 3);

    let inspected = snapshot_ok(cwd, &["inspect", "game.json", "--json"]);
    let report = json_of(inspected.stdout.as_bytes());
    assert_eq!(report["seq"], 1);
    assert_eq!(report["players"]["alice"]["version"], 4);
    assert_eq!(report["timers"]["turnEnd"], 1_764_859_230_000u64);
    let table = snapshot_ok(cwd, &["inspect", "game.json"]);
    assert!(table.stdout.contains("record format 3"), "{}", table.stdout);

    // A file that is not a game room record is refused, and nothing is stored.
    let canvas = fixture().display().to_string();
    let wrong = [
        &["import", canvas.as_str(), "--room", "battle/r2"],
        &flags[..],
    ]
    .concat();
    let refused = snapshot(cwd, &wrong);
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains("is not a valid game room record"),
        "{}",
        refused.stderr
    );
    let missing = snapshot(cwd, &[&["export", "battle/r2"], &flags[..]].concat());
    assert!(
        !missing.ok && missing.stderr.contains("game room battle/r2 is not in"),
        "{}",
        missing.stderr
    );

    let again = [&["import", "game.json", "--room", "battle/r1"], &flags[..]].concat();
    let refused = snapshot(cwd, &again);
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains("already exists"),
        "{}",
        refused.stderr
    );
    snapshot_ok(cwd, &[&again[..], &["--force"]].concat());
    let export_again = snapshot_ok(cwd, &[&["export", "battle/r1"], &flags[..]].concat());
    assert_eq!(json_of(export_again.stdout.as_bytes()), exported);
}

/// Game rooms round-trip through file storage.
#[test]
fn game_rooms_round_trip_through_file_storage() {
    game_round_trip(StorageKind::File, "file");
}

/// Game rooms round-trip through RocksDB storage.
#[test]
fn game_rooms_round_trip_through_rocksdb_storage() {
    game_round_trip(StorageKind::Rocksdb, "rocksdb");
}
