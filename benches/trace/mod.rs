//! Shared by the criterion benches: the recorded trace (`benches/data/trace.jsonl`, written by
//! `benches/gen_trace.rs`) and synthetic large documents.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use weft::engine::{Document, Limits};

/// One recorded client frame and who sent it.
pub struct TraceFrame {
    #[allow(dead_code)] // read by the engine bench only
    pub room: String,
    pub client: String,
    /// The frame exactly as the client sent it.
    pub text: String,
}

#[derive(Deserialize)]
struct Line<'a> {
    room: String,
    client: String,
    #[serde(borrow)]
    frame: &'a RawValue,
}

/// Loads the recorded trace.
pub fn load() -> Vec<TraceFrame> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/data/trace.jsonl");
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e} (run `cargo run --example gen_trace`)"));
    text.lines()
        .map(|line| {
            let l: Line<'_> = serde_json::from_str(line).expect("trace line");
            TraceFrame {
                room: l.room,
                client: l.client,
                text: l.frame.get().to_owned(),
            }
        })
        .collect()
}

/// Tiny deterministic generator (xorshift64*) for the synthetic documents.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Components created per request while building a large document.
pub const CREATE_BATCH: usize = 100;
/// Edit requests applied after the creates (each moves 1-3 shapes or appends to a stroke).
pub const EDITS: usize = 2_000;

/// A document of `n` components shaped like a busy board: 60% `Block`s (9 fields), 25% `Text`s,
/// 10% `Stroke`s (a 64-value point array), 5% deleted (tombstones); created `CREATE_BATCH` per
/// request, then `EDITS` edit requests touching random blocks and strokes. Returns the document
/// and its keys.
pub fn large_document(n: usize) -> (Document, Vec<String>) {
    let limits = Limits::default();
    let mut rng = Rng(0x1a49_e5d0_c000_0000 ^ n as u64);
    let mut doc = Document::default();
    let mut keys = Vec::with_capacity(n);
    let mut blocks = Vec::new();
    let mut strokes = Vec::new();
    for batch in 0..n.div_ceil(CREATE_BATCH) {
        let mut patch = Map::new();
        for i in batch * CREATE_BATCH..((batch + 1) * CREATE_BATCH).min(n) {
            let id = format!("{:08x}-0000-4000-8000-{:012x}", rng.next() >> 32, i);
            let (key, value) = match i % 20 {
                0..=11 => {
                    blocks.push(keys.len());
                    (
                        format!("{id}/Block"),
                        json!({"_exists": true, "_version": null, "tag": "rect",
                               "x": rng.below(4000), "y": rng.below(3000), "w": 120, "h": 80,
                               "rotation": 0, "color": "#1971c2"}),
                    )
                }
                12..=16 => (
                    format!("{id}/Text"),
                    json!({"_exists": true, "_version": null,
                           "content": "plan the launch review with the api owners", "fontSize": 16}),
                ),
                17 | 18 => {
                    strokes.push(keys.len());
                    let points: Vec<usize> = (0..64).map(|_| rng.below(4000)).collect();
                    (
                        format!("{id}/Stroke"),
                        json!({"_exists": true, "_version": null, "color": "#e03131",
                               "width": 2, "points": points}),
                    )
                }
                _ => (format!("{id}/Block"), json!({"_exists": false})),
            };
            keys.push(key.clone());
            patch.insert(key, value);
        }
        doc.apply(&[Value::Object(patch)], &limits);
    }
    for _ in 0..EDITS {
        let mut patch = Map::new();
        if rng.below(10) < 8 {
            for _ in 0..1 + rng.below(3) {
                let key = &keys[blocks[rng.below(blocks.len())]];
                patch.insert(
                    key.clone(),
                    json!({"x": rng.below(4000), "y": rng.below(3000)}),
                );
            }
        } else {
            let key = &keys[strokes[rng.below(strokes.len())]];
            patch.insert(
                key.clone(),
                json!({"points": {"__buf": 1, "len": 64, "runs": [[60, [1, 2, 3, 4]]]}}),
            );
        }
        doc.apply(&[Value::Object(patch)], &limits);
    }
    (doc, keys)
}
