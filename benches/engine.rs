//! Engine benches: applying the recorded trace, `diff_since` on large documents, buffer-delta
//! appends, snapshot encode/decode, and one game action against one canvas patch in a room of 10
//! (frame decode, state change, frames encoded). See `benches/README.md`.
//!
//! ```text
//! cargo bench --bench engine -- --warm-up-time 1 --measurement-time 3
//! ```

mod trace;

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use serde_json::{json, Value};
use weft::engine::state::{StateBatch, StateDoc, Writes};
use weft::engine::tree::{self, Change};
use weft::engine::{Document, Ephemeral, Limits};
use weft::protocols::canvas::wire::{self as canvas, ClientFrame};
use weft::protocols::game::wire as game;
use weft::protocols::game::{Entry, Op};

/// One request of the trace as the room task sees it: decoded and validated.
struct Request {
    room: usize,
    /// The client's session (presence belongs to a session): one per client of the trace.
    session: u64,
    document: Vec<Value>,
    ephemeral: Vec<Value>,
}

/// The trace's requests that carry patches (patch frames and reconnects with an offline buffer),
/// and the number of rooms.
fn requests() -> (Vec<Request>, usize) {
    let limits = Limits::default();
    let mut rooms = BTreeMap::new();
    let mut sessions = BTreeMap::new();
    let mut out = Vec::new();
    for f in trace::load() {
        let next = rooms.len();
        let room = *rooms.entry(f.room.clone()).or_insert(next);
        let (document, ephemeral) = match canvas::decode(&f.text, &limits).expect("trace frame") {
            ClientFrame::Patch {
                document,
                ephemeral,
                ..
            }
            | ClientFrame::Reconnect {
                document,
                ephemeral,
                ..
            } => (document, ephemeral),
            ClientFrame::AuthRefresh { .. } => continue,
        };
        let document = document.map(|p| p.parsed).unwrap_or_default();
        let ephemeral = ephemeral.map(|p| p.parsed).unwrap_or_default();
        if document.is_empty() && ephemeral.is_empty() {
            continue;
        }
        let next = sessions.len() as u64;
        let session = *sessions.entry(f.client).or_insert(next);
        out.push(Request {
            room,
            session,
            document,
            ephemeral,
        });
    }
    (out, rooms.len())
}

/// Replays the trace's requests into fresh rooms, as the room task does (document, then presence).
fn bench_apply_trace(c: &mut Criterion) {
    let limits = Limits::default();
    let (requests, rooms) = requests();
    let doc_requests = requests.iter().filter(|r| !r.document.is_empty()).count();
    // What the replay builds (printed once, so the numbers below can be put in context).
    let mut docs = vec![Document::default(); rooms];
    for r in requests.iter().filter(|r| !r.document.is_empty()) {
        docs[r.room].apply(&r.document, &limits);
    }
    for (i, d) in docs.iter().enumerate() {
        eprintln!(
            "trace room {i}: clock {}, {} live components, {} tombstones",
            d.clock(),
            d.live_components(),
            d.tombstones()
        );
    }
    let mut group = c.benchmark_group("apply_trace");
    group.throughput(Throughput::Elements(requests.len() as u64));
    group.bench_function("document+presence", |b| {
        b.iter(|| {
            let mut docs = vec![Document::default(); rooms];
            let mut eph = vec![Ephemeral::default(); rooms];
            for r in &requests {
                if !r.document.is_empty() {
                    docs[r.room].apply(&r.document, &limits);
                }
                if !r.ephemeral.is_empty() {
                    eph[r.room].apply(r.session, &r.ephemeral, &limits);
                }
            }
            (docs, eph)
        })
    });
    group.throughput(Throughput::Elements(doc_requests as u64));
    group.bench_function("document_only", |b| {
        b.iter(|| {
            let mut docs = vec![Document::default(); rooms];
            for r in requests.iter().filter(|r| !r.document.is_empty()) {
                docs[r.room].apply(&r.document, &limits);
            }
            docs
        })
    });
    group.finish();
}

/// `diff_since` (a `Value` tree) and `diff_since_raw` (JSON text) on large documents: since an
/// early clock (nearly everything), since a recent clock (the last 20 requests), and since the
/// current clock (nothing: the cost of finding nothing).
fn bench_diff_since(c: &mut Criterion) {
    let mut group = c.benchmark_group("diff_since");
    for n in [10_000, 100_000] {
        let (doc, _) = trace::large_document(n);
        let clock = doc.clock();
        // Fewer samples for the large document: a whole-document diff of it takes a while.
        group.sample_size(if n > 10_000 { 20 } else { 100 });
        for (name, since) in [("early", 1), ("recent", clock - 20), ("current", clock)] {
            group.bench_with_input(BenchmarkId::new(name, n), &since, |b, &since| {
                b.iter(|| doc.diff_since(black_box(since)))
            });
        }
    }
    group.finish();
    // The same diffs as JSON text written straight from the document (what a reconnect sends).
    let mut group = c.benchmark_group("diff_since_raw");
    for n in [10_000, 100_000] {
        let (doc, _) = trace::large_document(n);
        let clock = doc.clock();
        group.sample_size(if n > 10_000 { 20 } else { 100 });
        for (name, since) in [("early", 1), ("recent", clock - 20), ("current", clock)] {
            group.bench_with_input(BenchmarkId::new(name, n), &since, |b, &since| {
                b.iter(|| doc.diff_since_raw(black_box(since)))
            });
        }
    }
    group.finish();
}

/// Pen strokes grown by append deltas of 8 values (4 points), one request per 33 ms batch, until
/// the stroke holds `len` values. Throughput is requests; the time per request grows with the
/// stroke's length if a delta costs more than the values it carries.
fn bench_buffer_append(c: &mut Criterion) {
    let limits = Limits::default();
    let mut group = c.benchmark_group("buffer_append");
    for len in [256usize, 4_096] {
        let mut start = Document::default();
        start.apply(
            &[json!({"s/Stroke": {"_exists": true, "color": "#000", "width": 2,
                                  "points": {"__buf": 1, "len": 8, "runs": [[0, [1, 2, 3, 4, 5, 6, 7, 8]]]}}})],
            &limits,
        );
        let appends: Vec<Vec<Value>> = (8..len)
            .step_by(8)
            .map(|at| {
                let values: Vec<f64> = (0..8).map(|i| (at + i) as f64 + 0.5).collect();
                vec![json!({"s/Stroke": {"points": {"__buf": 1, "len": at + 8, "runs": [[at, values]]}}})]
            })
            .collect();
        let mut check = start.clone();
        for a in &appends {
            check.apply(a, &limits);
        }
        let points = check.get("s/Stroke").and_then(|f| f["points"].as_array());
        assert_eq!(points.map(Vec::len), Some(len));
        group.throughput(Throughput::Elements(appends.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("stroke_to_len", len),
            &appends,
            |b, appends| {
                b.iter_batched_ref(
                    || start.clone(),
                    |doc| {
                        for a in appends {
                            doc.apply(a, &limits);
                        }
                    },
                    BatchSize::SmallInput,
                )
            },
        );
    }
    group.finish();
}

/// Snapshot encode and decode of a 10k-component document.
fn bench_snapshot(c: &mut Criterion) {
    let (doc, _) = trace::large_document(10_000);
    let bytes = doc.encode_snapshot();
    assert_eq!(Document::decode_snapshot(&bytes).expect("decodes"), doc);
    let mut group = c.benchmark_group("snapshot");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("encode/10000", |b| b.iter(|| doc.encode_snapshot()));
    group.bench_function("decode/10000", |b| {
        b.iter(|| Document::decode_snapshot(black_box(&bytes)).expect("decodes"))
    });
    group.finish();
}

/// Players in the room of the per-action benches: the acting one and 9 peers.
const ROOM_OF: usize = 10;

/// A `battle` room of [`ROOM_OF`] players, as the game benches hold it: the shared state and
/// each player's `{"hp", "position"}`.
fn battle_states() -> (Value, Vec<Value>) {
    let ids: Vec<Value> = (0..ROOM_OF)
        .map(|i| json!({"id": format!("p{i}")}))
        .collect();
    let shared = json!({"round": 3, "phase": "playing", "players": ids});
    let players = (0..ROOM_OF)
        .map(|i| json!({"hp": 100, "position": {"x": i, "y": i}}))
        .collect();
    (shared, players)
}

/// `battle`'s MOVE handler as the room runs it: decode the `send` frame, run the updater on a
/// copy of the player's state, normalize it and check the size (of every state) and depth
/// limits, as `RoomContext::set_player` does. Returns the new value and the request id.
fn move_action(frame: &str, state: &Value, others_size: usize) -> (Value, String) {
    let Ok(game::ClientFrame::Send {
        payload,
        request_id,
        ..
    }) = game::ClientFrame::decode(frame)
    else {
        panic!("a send frame")
    };
    let mut next = state.clone();
    next["position"] = json!({"x": payload["x"].clone(), "y": payload["y"].clone()});
    tree::normalize_root(&mut next);
    let size = tree::json_size(&next);
    assert!(others_size + size < 512 * 1024);
    assert!(game::depth(&next) <= weft::protocols::game::MAX_STATE_DEPTH);
    (next, request_id)
}

/// A MOVE committed through the player's [`StateDoc`]: its `player_delta`, its `action_result`
/// and the batch (what the room logs).
fn commit_move(
    doc: &mut StateDoc,
    frame: &str,
    others_size: usize,
) -> (bytestring::ByteString, bytestring::ByteString, StateBatch) {
    let (next, request_id) = move_action(frame, doc.value(), others_size);
    // `set_player` keeps a changed value for the flush, which applies it.
    assert!(next != *doc.value());
    let batch = doc.apply(next).expect("a change");
    let Writes::Paths(delta) = &batch.writes else {
        panic!("a delta")
    };
    let delta = game::ServerFrame::PlayerDelta {
        delta,
        version: batch.clock,
    }
    .encode();
    (delta, action_result(&request_id), batch)
}

fn action_result(request_id: &str) -> bytestring::ByteString {
    game::ServerFrame::ActionResult {
        request_id,
        action_type: "MOVE",
        result: &json!({"moved": true}),
    }
    .encode()
}

/// One action or patch in a room of [`ROOM_OF`]: `game_action/state_doc` is a `battle` MOVE as
/// the room runs it now (the player's [`StateDoc`] applies the new value: diff, stamps, version),
/// `game_action/state_doc_logged` that plus the log entry the room appends for it (an action's
/// frames leave once it is durable), `game_action/sent_copy` the same action as rooms ran it
/// before the stamped documents (the
/// value diffed against a copy of what clients were sent, then copied again), and
/// `canvas_patch` a canvas patch moving one shape (decode, check, apply, `ack` and the broadcast
/// `patch` frame). A broadcast frame is encoded once for all peers, so peers add delivery (a
/// reference count per outbox), not work measured here.
fn bench_action(c: &mut Criterion) {
    let frames: Vec<String> = (0..2)
        .map(|i| {
            json!({"type": "send", "actionType": "MOVE", "payload": {"x": 10 + i, "y": 20},
                "requestId": "r1"})
            .to_string()
        })
        .collect();
    let (shared, players) = battle_states();
    let others = tree::json_size(&shared) + players[1..].iter().map(tree::json_size).sum::<usize>();
    let mut group = c.benchmark_group("game_action");

    let mut doc = StateDoc::new(players[0].clone(), 1);
    let mut n = 0usize;
    group.bench_function("state_doc", |b| {
        b.iter(|| {
            n += 1;
            let (delta, result, _batch) = commit_move(&mut doc, &frames[n % 2], others);
            (delta, result)
        })
    });

    // The same, plus the log entry the room appends before the frames may leave.
    let mut doc = StateDoc::new(players[0].clone(), 1);
    group.bench_function("state_doc_logged", |b| {
        b.iter(|| {
            n += 1;
            let (delta, result, batch) = commit_move(&mut doc, &frames[n % 2], others);
            let entry = Entry {
                ops: vec![Op::Player {
                    user: "p0".to_owned(),
                    batch,
                }],
                at_ms: 1_764_859_300_000,
                elapsed_ms: 9_000,
            }
            .encode()
            .expect("loads again");
            (delta, result, entry)
        })
    });

    let (mut value, mut sent, mut version) = (players[0].clone(), players[0].clone(), 1u64);
    group.bench_function("sent_copy", |b| {
        b.iter(|| {
            n += 1;
            let (next, request_id) = move_action(&frames[n % 2], &value, others);
            if next != value {
                value = next;
            }
            let Change::Delta(delta) = tree::diff(&sent, &value) else {
                panic!("a delta")
            };
            version += 1;
            sent = value.clone();
            let delta = game::ServerFrame::PlayerDelta {
                delta: &delta,
                version,
            }
            .encode();
            (delta, action_result(&request_id))
        })
    });
    group.finish();

    let limits = Limits::default();
    let mut doc = Document::default();
    for i in 0..ROOM_OF {
        doc.apply(
            &[json!({ format!("s{i}/Pos"): {"_exists": true, "x": i, "y": i} })],
            &limits,
        );
    }
    let frames: Vec<String> = (0..2)
        .map(|i| {
            json!({"type": "patch", "messageId": "m1",
                "documentPatches": [{"s0/Pos": {"x": 10 + i, "y": 20}}]})
            .to_string()
        })
        .collect();
    c.bench_function("canvas_patch", |b| {
        b.iter(|| {
            n += 1;
            let Ok(ClientFrame::Patch {
                document: Some(patches),
                message_id,
                ..
            }) = canvas::decode(&frames[n % 2], &limits)
            else {
                panic!("a patch frame")
            };
            doc.check(&patches.parsed, &limits).expect("within limits");
            let timestamp = doc.apply(&patches.parsed, &limits);
            let ack = canvas::ServerFrame::Ack {
                message_id: &message_id,
                timestamp,
            }
            .encode();
            let relay = canvas::ServerFrame::Patch {
                document_patches: Some(patches.raw.as_ref()),
                ephemeral_patches: None,
                client_id: "c0",
                timestamp: Some(timestamp),
            }
            .encode();
            (ack, relay)
        })
    });
}

criterion_group!(
    benches,
    bench_apply_trace,
    bench_diff_since,
    bench_buffer_append,
    bench_snapshot,
    bench_action
);
criterion_main!(benches);
