//! Replays every saved fuzz input (`fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`)
//! through the same checks the fuzz targets run (`fuzz/src/checks.rs`), on the stable toolchain.

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use checks::{Buf, Kind, Program, Request, Run, Val, Write};

/// A fuzz target's check: panics when the input breaks a property.
type Check = fn(&[u8]);

/// The fuzz targets and the check each one runs.
const TARGETS: [(&str, Check); 5] = [
    ("decode_frame", checks::check_frame),
    ("engine_apply", checks::check_engine),
    ("engine_limits", checks::check_limits),
    ("snapshot_load", checks::check_snapshot),
    ("ws_frames", checks::check_ws_frames),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Files directly inside `dir` (none if it does not exist), sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.expect("readable directory entry").path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Runs `check` on every saved input of `target`; fails naming every input that panicked.
fn replay(target: &str, check: Check) {
    let mut inputs = files(&fuzz_dir().join("corpus").join(target));
    assert!(!inputs.is_empty(), "no seed corpus for {target}");
    inputs.extend(files(&fuzz_dir().join("regressions").join(target)));
    let failed: Vec<String> = inputs
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).expect("readable input");
            catch_unwind(AssertUnwindSafe(|| check(&data))).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(failed.is_empty(), "{target}: failing inputs: {failed:#?}");
}

fn replay_target(name: &str) {
    let (_, check) = TARGETS
        .iter()
        .find(|(target, _)| *target == name)
        .expect("known target");
    replay(name, *check);
}

/// Every saved `decode_frame` input decodes (or is refused) without a panic, and every frame that
/// decodes re-encodes to the same frame and survives apply, relay, ack and reconnect.
#[test]
fn decode_frame_inputs_replay() {
    replay_target("decode_frame");
}

/// Every saved `engine_apply` program applies without a panic and keeps the diff invariant (a
/// replica catches up with `diff_since`), the rebuild from zero and the snapshot round trip.
#[test]
fn engine_apply_inputs_replay() {
    replay_target("engine_apply");
}

/// Every saved `engine_limits` program keeps the document within the limits, refuses without
/// changing anything, and costs engine steps linear in its input (apply, load and diff).
#[test]
fn engine_limits_inputs_replay() {
    replay_target("engine_limits");
}

/// Every saved `snapshot_load` input loads or is refused without a panic, and what loads saves and
/// loads back as an equal document.
#[test]
fn snapshot_load_inputs_replay() {
    replay_target("snapshot_load");
}

/// Every saved `ws_frames` input is read by the server's frame reader without a panic, within the
/// size limit, and gives the same messages (and fails alike) whatever chunks its bytes came in.
#[test]
fn ws_frames_inputs_replay() {
    replay_target("ws_frames");
}

/// No saved input sits in a folder that no test replays (a misspelt target name would hide it).
#[test]
fn every_input_folder_is_replayed() {
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("readable directory entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            assert!(
                path.is_dir() && TARGETS.iter().any(|(t, _)| *t == name),
                "{} is not a fuzz target folder",
                path.display()
            );
        }
    }
}

/// The server as shipped parses floats exactly (`float_roundtrip` on serde_json in weft's own
/// `[dependencies]`). The float regressions replayed above cannot see this: a dev-dependency
/// (jsonschema) turns the feature on for every test build, so only this guard and the fuzz crate
/// (which has no dev-dependencies) would notice it going away.
#[test]
fn shipped_build_parses_floats_exactly() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let manifest = std::fs::read_to_string(path).expect("readable Cargo.toml");
    let deps = manifest
        .split("\n[dependencies]\n")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .expect("a [dependencies] table");
    let serde_json = deps
        .lines()
        .find(|line| line.trim_start().starts_with("serde_json"))
        .expect("serde_json in [dependencies]");
    assert!(
        serde_json.contains("float_roundtrip"),
        "without float_roundtrip a float like 3e54 changes on every snapshot save and load \
         (fuzz/regressions/*/float-3e54-*): {serde_json}"
    );
}

fn write(key: usize, kind: Kind, fields: Vec<(usize, Val)>) -> Write {
    Write { key, kind, fields }
}

fn request(client: usize, patches: Vec<Vec<Write>>) -> Request {
    Request { client, patches }
}

fn buf(len: i64, runs: &[(i64, &[i64])]) -> Val {
    Val::Buf(Buf {
        marker: 0,
        len,
        len_style: 0,
        runs: runs
            .iter()
            .map(|(offset, values)| Run {
                offset: *offset,
                values: values.to_vec(),
                bad: false,
            })
            .collect(),
    })
}

/// Realistic engine programs, the source of `fuzz/corpus/engine_apply/` (field indices: 0 x,
/// 1 y, 2 pts, 3 label; key indices: 0 a/Shape, 1 b/Shape, 2 c/Shape, 3 SINGLETON/Camera).
fn seed_programs() -> Vec<(&'static str, Program)> {
    use Kind::{BadExists, Create, Delete, Edit, NotObject};
    let shapes = Program {
        cut: 2,
        requests: vec![
            request(
                0,
                vec![vec![write(
                    0,
                    Create,
                    vec![(0, Val::Int(1)), (1, Val::Int(2)), (3, Val::Str(1))],
                )]],
            ),
            request(
                1,
                vec![vec![write(
                    1,
                    Create,
                    vec![(0, Val::Int(3)), (2, Val::Array(vec![1, 2, 3]))],
                )]],
            ),
            request(0, vec![vec![write(0, Edit, vec![(0, Val::Int(5))])]]),
            request(1, vec![vec![write(1, Delete, vec![])]]),
            request(0, vec![vec![write(1, Edit, vec![(0, Val::Int(9))])]]),
        ],
    };
    let stroke = Program {
        cut: 1,
        requests: vec![
            request(
                0,
                vec![vec![write(0, Create, vec![(2, buf(2, &[(0, &[1, 2])]))])]],
            ),
            request(
                0,
                vec![vec![write(0, Edit, vec![(2, buf(4, &[(2, &[3, 4])]))])]],
            ),
            request(
                0,
                vec![vec![write(
                    0,
                    Edit,
                    vec![(
                        2,
                        Val::Buf(Buf {
                            marker: 1,
                            len: 3,
                            len_style: 1,
                            runs: vec![Run {
                                offset: -1,
                                values: vec![7, 8],
                                bad: false,
                            }],
                        }),
                    )],
                )]],
            ),
            request(1, vec![vec![write(0, Edit, vec![(2, buf(13, &[]))])]]),
            request(
                1,
                vec![vec![write(0, Edit, vec![(2, buf(1, &[(5, &[1])]))])]],
            ),
        ],
    };
    let recreate = Program {
        cut: 1,
        requests: vec![
            request(
                0,
                vec![vec![write(
                    0,
                    Create,
                    vec![(0, Val::Int(1)), (1, Val::Int(1))],
                )]],
            ),
            request(1, vec![vec![write(0, Delete, vec![])]]),
            request(0, vec![vec![write(0, Create, vec![(0, Val::Int(2))])]]),
            request(1, vec![vec![write(0, Edit, vec![(3, Val::Str(2))])]]),
        ],
    };
    let mixed = Program {
        cut: 0,
        requests: vec![
            request(
                0,
                vec![
                    vec![
                        write(0, Create, vec![(0, Val::Int(1))]),
                        write(1, Create, vec![]),
                    ],
                    vec![write(0, Edit, vec![(1, Val::Frac(2))])],
                    vec![write(2, Delete, vec![(0, Val::Null)])],
                ],
            ),
            request(1, vec![vec![write(1, BadExists, vec![(0, Val::Int(1))])]]),
            request(1, vec![vec![write(2, NotObject, vec![])]]),
            request(
                1,
                vec![vec![write(
                    1,
                    Edit,
                    vec![
                        (0, Val::WholeFloat(4)),
                        (1, Val::Nested(Box::new(Val::Bool(true)))),
                        (3, Val::Null),
                    ],
                )]],
            ),
            request(0, vec![]),
        ],
    };
    let camera = Program {
        cut: 3,
        requests: (0..6)
            .map(|i| {
                let kind = if i == 0 { Create } else { Edit };
                request(
                    i % 2,
                    vec![vec![write(3, kind, vec![(i % 2, Val::Int(i as i64))])]],
                )
            })
            .collect(),
    };
    vec![
        ("shapes", shapes),
        ("stroke", stroke),
        ("recreate", recreate),
        ("mixed", mixed),
        ("camera", camera),
    ]
}

/// The seed encoder is the inverse of the engine_apply decoder, so each seed file stands for the
/// program it was written from, and the committed seeds are exactly those programs.
#[test]
fn engine_seeds_are_the_seed_programs() {
    let dir = fuzz_dir().join("corpus").join("engine_apply");
    for (name, program) in seed_programs() {
        let bytes = program.encode();
        assert!(
            bytes.iter().all(u8::is_ascii_graphic),
            "{name} is printable"
        );
        assert_eq!(Program::decode(&bytes), program, "{name}");
        let saved = std::fs::read(dir.join(name)).expect("seed file exists");
        assert_eq!(saved, bytes, "fuzz/corpus/engine_apply/{name} is stale");
        checks::run_program(&program);
    }
}

/// Writes `fuzz/corpus/engine_apply/` from the seed programs (`-- --ignored write_engine_seeds`).
#[test]
#[ignore = "writes the seed files; run by hand after changing the programs or the decoder"]
fn write_engine_seeds() {
    let dir = fuzz_dir().join("corpus").join("engine_apply");
    std::fs::create_dir_all(&dir).expect("seed folder");
    for (name, program) in seed_programs() {
        std::fs::write(dir.join(name), program.encode()).expect("seed written");
    }
}

#[path = "common/client_frames.rs"]
mod client_frames;
use client_frames::{
    client_frame as ws_frame, client_header as ws_header, BINARY, CLOSE, PING, PONG, TEXT,
};

/// Realistic client byte streams, the source of `fuzz/corpus/ws_frames/`: the chunk size byte
/// (0: all at once), then the frames.
fn ws_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let patch = br#"{"type":"patch","messageId":"m1","documentPatches":[{"a/Shape":{"_exists":true,"x":1}}]}"#;
    let reconnect = br#"{"type":"reconnect","lastTimestamp":0,"protocolVersion":2}"#;
    let seed = |chunk: u8, frames: &[Vec<u8>]| [vec![chunk], frames.concat()].concat();
    let mut close = 4000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    let long = "\u{e9}".repeat(600);
    vec![
        (
            "session",
            seed(
                0,
                &[
                    ws_frame(true, TEXT, reconnect),
                    ws_frame(true, TEXT, patch),
                    ws_frame(true, PING, b"hb"),
                    ws_frame(true, PONG, b""),
                    ws_frame(true, CLOSE, &close),
                ],
            ),
        ),
        (
            "bytewise",
            seed(
                1,
                &[
                    ws_frame(true, TEXT, reconnect),
                    ws_frame(true, BINARY, &[0, 1, 2, 0xff]),
                    ws_frame(true, CLOSE, b""),
                ],
            ),
        ),
        (
            "fragments_with_ping",
            seed(
                3,
                &[
                    ws_frame(false, TEXT, &patch[..20]),
                    ws_frame(true, PING, b"mid"),
                    ws_frame(false, 0, &patch[20..50]),
                    ws_frame(true, 0, &patch[50..]),
                ],
            ),
        ),
        (
            "utf8_split_across_fragments",
            seed(
                2,
                &[
                    ws_frame(false, TEXT, b"caf\xc3"),
                    ws_frame(false, 0, b"\xa9 \xf0\x9f"),
                    ws_frame(true, 0, b"\x98\x80"),
                    ws_frame(false, TEXT, b"bad \xc3"),
                    ws_frame(true, 0, b"("),
                ],
            ),
        ),
        (
            "length_16_bit",
            seed(200, &[ws_frame(true, TEXT, long.as_bytes())]),
        ),
        (
            "huge_length",
            seed(
                5,
                &[
                    ws_frame(true, TEXT, patch),
                    ws_header(true, BINARY, 1 << 40),
                ],
            ),
        ),
        (
            "joined_over_the_limit",
            seed(
                64,
                &[
                    ws_frame(false, BINARY, &[7; 3000]),
                    ws_frame(true, 0, &[8; 1200]),
                ],
            ),
        ),
        (
            "unmasked",
            seed(0, &[ws_frame(true, PING, b"x"), b"\x81\x02hi".to_vec()]),
        ),
    ]
}

/// The committed `ws_frames` seeds are exactly [`ws_seeds`] (binary files, so they are written
/// from code a reviewer can read).
#[test]
fn ws_seeds_are_the_seed_streams() {
    let dir = fuzz_dir().join("corpus").join("ws_frames");
    for (name, bytes) in ws_seeds() {
        let saved = std::fs::read(dir.join(name)).expect("seed file exists");
        assert_eq!(saved, bytes, "fuzz/corpus/ws_frames/{name} is stale");
    }
}

/// The seeds reach every outcome of the frame reader: each kind of message, and each error.
#[test]
fn ws_seeds_reach_every_outcome() {
    let mut seen = std::collections::BTreeSet::new();
    for (_, bytes) in ws_seeds() {
        let (chunk, stream) = bytes.split_first().expect("a chunk size");
        let chunk = if *chunk == 0 {
            stream.len()
        } else {
            usize::from(*chunk)
        };
        let (messages, error) = checks::read_ws_stream(stream, chunk);
        for message in &messages {
            seen.insert(
                format!("{message:?}")
                    .split('(')
                    .next()
                    .unwrap_or("")
                    .to_owned(),
            );
        }
        let outcome = error.map_or("end".to_owned(), |e| {
            format!("{e:?}").split('(').next().unwrap_or("").to_owned()
        });
        seen.insert(outcome);
    }
    let all = [
        "Text",
        "Binary",
        "Ping",
        "Pong",
        "Close",
        "end",
        "TooBig",
        "InvalidUtf8",
        "Protocol",
    ];
    assert_eq!(seen, all.iter().map(|s| s.to_string()).collect());
}

/// Writes `fuzz/corpus/ws_frames/` from [`ws_seeds`] (`-- --ignored write_ws_seeds`).
#[test]
#[ignore = "writes the seed files; run by hand after changing the seeds"]
fn write_ws_seeds() {
    let dir = fuzz_dir().join("corpus").join("ws_frames");
    std::fs::create_dir_all(&dir).expect("seed folder");
    for (name, bytes) in ws_seeds() {
        std::fs::write(dir.join(name), bytes).expect("seed written");
    }
}
