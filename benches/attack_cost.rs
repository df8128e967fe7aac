//! `attack_cost`: what the engine spends on the two amplification attacks of issue 10, with the
//! limits checked as a room checks them and without (the code before the limits existed, which
//! only validated and applied), counting bytes allocated and wall time.
//!
//! ```text
//! cargo run --release --example attack_cost
//! ```
//!
//! - buffer: the 142-byte frame `{"s/Stroke":{"_exists":true,"pts":{"__buf":1,"len":1048576,
//!   "runs":[]}}}`, 32 times on different keys, decoded then checked/applied on one document.
//! - fields: one ~1 MiB frame writing a component with 90k fields, then the same fields written
//!   again, then the document's snapshot loaded and diffed from zero. Its unchecked cost depends
//!   on how stamps are kept (`FEW_STAMPS` in src/engine/document.rs): build once as is and once
//!   with `FEW_STAMPS = usize::MAX` (every component a vector, as before) to compare.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde_json::{json, Map, Value};
use weft::engine::{Document, Limits};
use weft::protocols::canvas::wire::{self as canvas, ClientFrame};

/// The system allocator, counting bytes allocated in total and the peak in use.
struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        let now = IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const MIB: f64 = (1 << 20) as f64;

/// Runs `f`, printing the bytes it allocated, the peak in use above the start, and its time.
fn measure<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let (allocated, in_use) = (
        ALLOCATED.load(Ordering::Relaxed),
        IN_USE.load(Ordering::Relaxed),
    );
    PEAK.store(in_use, Ordering::Relaxed);
    let start = Instant::now();
    let out = f();
    let elapsed = start.elapsed();
    println!(
        "{name:<44} allocated {:>9.1} MiB  peak +{:>8.1} MiB  {:>10.1} ms",
        (ALLOCATED.load(Ordering::Relaxed) - allocated) as f64 / MIB,
        (PEAK.load(Ordering::Relaxed) - in_use) as f64 / MIB,
        elapsed.as_secs_f64() * 1e3
    );
    out
}

/// The parsed document patches of a client `patch` frame.
fn document_patches(text: &str, limits: &Limits) -> Vec<Value> {
    match canvas::decode(text, limits).expect("a valid frame") {
        ClientFrame::Patch {
            document: Some(d), ..
        } => d.parsed,
        _ => panic!("a patch frame with document patches"),
    }
}

/// Decodes `frames` and applies each to one document, checked against `limits` first when
/// `checked`; returns how many were applied.
fn run(frames: &[String], limits: &Limits, checked: bool) -> usize {
    let mut doc = Document::default();
    let mut applied = 0;
    for text in frames {
        let patches = document_patches(text, limits);
        if !checked || doc.check(&patches, limits).is_ok() {
            doc.apply(&patches, limits);
            applied += 1;
        }
    }
    applied
}

fn main() {
    let limits = Limits::default();
    // The unchecked run decodes under the old per-request cap only.
    let unchecked = Limits {
        max_buffer_len: limits.max_buffer_len,
        ..Limits::UNBOUNDED
    };

    let buffer: Vec<String> = (0..32)
        .map(|n| {
            format!(
                r#"{{"type":"patch","messageId":"m","documentPatches":[{{"s{n}/Stroke":{{"_exists":true,"pts":{{"__buf":1,"len":1048576,"runs":[]}}}}}}]}}"#
            )
        })
        .collect();
    println!(
        "buffer amplification: 32 frames of {} bytes",
        buffer[0].len()
    );
    let n = measure("  unchecked (before): decode + apply", || {
        run(&buffer, &unchecked, false)
    });
    println!("    {n} of 32 applied");
    let n = measure("  checked (after): decode + check", || {
        run(&buffer, &limits, true)
    });
    println!("    {n} of 32 applied");

    let mut fields = Map::new();
    fields.insert("_exists".into(), Value::Bool(true));
    for i in 0..90_000 {
        fields.insert(format!("f{i}"), json!(1));
    }
    let frame = json!({"type": "patch", "messageId": "m", "documentPatches": [{"a/S": fields}]})
        .to_string();
    println!(
        "\nfield stamping: one frame of {} bytes, 90k fields",
        frame.len()
    );
    let twice = [frame.clone(), frame.replace("\"m\"", "\"m2\"")];
    let n = measure("  checked (after): decode + check", || {
        run(&twice[..1], &limits, true)
    });
    println!("    {n} of 1 applied");
    let mut doc = Document::default();
    measure("  unchecked: decode + apply (create)", || {
        let patches = document_patches(&twice[0], &unchecked);
        doc.apply(&patches, &unchecked);
    });
    measure("  unchecked: decode + apply (rewrite)", || {
        let patches = document_patches(&twice[1], &unchecked);
        doc.apply(&patches, &unchecked);
    });
    let snapshot = doc.encode_snapshot();
    let back = measure("  load its snapshot", || {
        Document::decode_snapshot(&snapshot).expect("loads")
    });
    let diff = measure("  diff from zero", || back.diff_since_raw(0));
    println!(
        "    snapshot {} bytes, diff {} bytes",
        snapshot.len(),
        diff.get().len()
    );
}
