//! Engine benches: applying the recorded trace, `diff_since` on large documents, buffer-delta
//! appends, snapshot encode/decode. See `benches/README.md`.
//!
//! ```text
//! cargo bench --bench engine -- --warm-up-time 1 --measurement-time 3
//! ```

mod trace;

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use serde_json::{json, Value};
use weft::engine::{Document, Ephemeral, Limits};
use weft::protocol::canvas::{self, ClientFrame};

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

criterion_group!(
    benches,
    bench_apply_trace,
    bench_diff_since,
    bench_buffer_append,
    bench_snapshot
);
criterion_main!(benches);
