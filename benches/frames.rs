//! Frame benches: decoding every frame of the recorded trace with the server's decoder, and
//! encoding the server's outgoing frames (ack, broadcast relay, reconnect reply). See
//! `benches/README.md`.
//!
//! ```text
//! cargo bench --bench frames -- --warm-up-time 1 --measurement-time 3
//! ```

mod trace;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::Value;
use weft::engine::{Ephemeral, Limits};
use weft::protocols::canvas::wire::{self as canvas, ClientFrame, Patches, ServerFrame};

/// Decodes (and validates) every frame of the trace.
fn bench_decode(c: &mut Criterion) {
    let limits = Limits::default();
    let frames = trace::load();
    let bytes: usize = frames.iter().map(|f| f.text.len()).sum();
    eprintln!(
        "trace: {} frames, {bytes} bytes of frame text",
        frames.len()
    );
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(frames.len() as u64));
    group.bench_function("trace_frames", |b| {
        b.iter(|| {
            for f in &frames {
                black_box(canvas::decode(black_box(&f.text), &limits).expect("trace frame"));
            }
        })
    });
    group.finish();
}

/// Encodes the frames the server sends: acks, the relay of every trace request to the other
/// sessions, and the reconnect reply (diff + presence `patch`, then `synced`) for a large diff.
fn bench_encode(c: &mut Criterion) {
    let limits = Limits::default();
    let mut relays: Vec<(String, Option<Patches>, Option<Patches>)> = Vec::new();
    let mut presence = Ephemeral::default();
    // Presence belongs to a session: one per client of the trace.
    let mut sessions = std::collections::HashMap::new();
    for f in trace::load() {
        if let ClientFrame::Patch {
            document,
            ephemeral,
            ..
        } = canvas::decode(&f.text, &limits).expect("trace frame")
        {
            if let Some(e) = &ephemeral {
                let next = sessions.len() as u64;
                let session = *sessions.entry(f.client.clone()).or_insert(next);
                presence.apply(session, &e.parsed, &limits);
            }
            relays.push((f.client, document, ephemeral));
        }
    }
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("ack", |b| {
        b.iter(|| {
            ServerFrame::Ack {
                message_id: black_box("f47ac10b-58cc-4372-a567-0e02b2c3d479-12"),
                timestamp: black_box(12_345),
            }
            .encode()
        })
    });
    group.throughput(Throughput::Elements(relays.len() as u64));
    group.bench_function("broadcast_relay/trace", |b| {
        b.iter(|| {
            for (client, document, ephemeral) in &relays {
                let frame = ServerFrame::Patch {
                    document_patches: document.as_ref().map(|d| d.raw.as_ref()),
                    ephemeral_patches: ephemeral.as_ref().map(|e| e.raw.as_ref()),
                    client_id: client,
                    timestamp: document.as_ref().map(|_| 4_242),
                };
                black_box(frame.encode());
            }
        })
    });

    // Reconnect replies on large documents, as the room builds them: the merged presence of the
    // trace's clients, the diff serialized straight from the document into the `patch` frame
    // (`canvas::encode_reconnect_patch`), then `synced`.
    // - `full`: a client that has seen nothing (the whole document as a diff);
    // - `full_value`: the same reply built as the room did before `encode_reconnect_patch`:
    //   `diff_since` as a `Value` tree, then `single_patch` and `ServerFrame::Patch`;
    // - `serialize`: that older construction from the already computed diff (serialization alone);
    // - `recent`: a client back after a short absence (the last 20 requests).
    for n in [10_000usize, 100_000] {
        let (doc, _) = trace::large_document(n);
        let clock = doc.clock();
        let reply = |since: u64, others: &Value| {
            let patch = canvas::encode_reconnect_patch(&doc, since, others).expect("a diff");
            let synced = ServerFrame::Synced { timestamp: clock }.encode();
            (patch, synced)
        };
        let reply_from_values = |diff: &Value, others: &Value| {
            let (doc_raw, eph_raw) = (canvas::single_patch(diff), canvas::single_patch(others));
            let patch = ServerFrame::Patch {
                document_patches: Some(&doc_raw),
                ephemeral_patches: Some(&eph_raw),
                client_id: "",
                timestamp: Some(clock),
            }
            .encode();
            let synced = ServerFrame::Synced { timestamp: clock }.encode();
            (patch, synced)
        };
        let (diff, others) = (doc.diff_since(0), presence.merged_except(u64::MAX));
        let (patch, _) = reply_from_values(&diff, &others);
        assert_eq!(
            reply(0, &others).0,
            patch,
            "both constructions send the same bytes"
        );
        // Few samples for the slow whole-document replies of the large document.
        group.sample_size(if n > 10_000 { 10 } else { 100 });
        group.throughput(Throughput::Bytes(patch.len() as u64));
        group.bench_with_input(BenchmarkId::new("reconnect_reply/full", n), &n, |b, _| {
            b.iter(|| reply(black_box(0), &presence.merged_except(u64::MAX)))
        });
        group.bench_with_input(
            BenchmarkId::new("reconnect_reply/full_value", n),
            &n,
            |b, _| {
                b.iter(|| {
                    reply_from_values(
                        &doc.diff_since(black_box(0)),
                        &presence.merged_except(u64::MAX),
                    )
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("reconnect_reply/serialize", n),
            &n,
            |b, _| b.iter(|| reply_from_values(black_box(&diff), black_box(&others))),
        );
        drop((diff, patch));
        group.sample_size(100);
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("reconnect_reply/recent", n), &n, |b, _| {
            b.iter(|| reply(black_box(clock - 20), &presence.merged_except(u64::MAX)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_decode, bench_encode);
criterion_main!(benches);
