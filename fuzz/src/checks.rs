//! The checks the fuzz targets run, kept free of fuzzing crates (only `weft` and `serde_json`) so
//! that `tests/fuzz_regressions.rs` replays every saved input through exactly the same code on the
//! stable toolchain (`#[path = "../fuzz/src/checks.rs"] mod checks;`).
//!
//! Each `check_*` function panics when a property is broken; a panic in weft itself is a finding too.
//!
//! - [`check_frame`]: bytes -> `canvas::decode`, then the room's handling of the decoded frame.
//! - [`check_engine`]: bytes -> a [`Program`] of requests (see [`Program::decode`]) -> the engine,
//!   with the diff invariant of `diff_since_brings_a_replica_up_to_date` (src/engine/document.rs).
//! - [`check_snapshot`]: bytes -> `Document::decode_snapshot`, then an encode/decode round trip.
//! - [`check_limits`]: bytes -> heavy requests (many fields, long buffer deltas, literal arrays)
//!   -> check and apply under small limits: size within the limits, work linear in the input.
//! - [`check_ws_frames`]: bytes -> a client's WebSocket byte stream, read by the server's
//!   `FrameReader` in chunks.

use std::collections::HashSet;

use serde_json::{json, Map, Value};
use weft::engine::work::steps;
use weft::engine::{validate_patches, Document, Ephemeral, Limits};
use weft::protocols::canvas::wire::{self as canvas, ClientFrame, Patches, ServerFrame};
use weft::transport::{AssemblyBudget, FrameReader, WsError, WsMessage};

/// Limits for decoded frames: a small buffer cap keeps each run fast; the rules do not depend on it.
pub const FRAME_LIMITS: Limits = Limits {
    max_buffer_len: 1024,
    ..Limits::UNBOUNDED
};

/// Limits for engine programs: small, so generated lengths land on both sides of the cap.
pub const ENGINE_LIMITS: Limits = Limits {
    max_buffer_len: 8,
    ..Limits::UNBOUNDED
};

/// The session whose frames `check_frame` applies.
const FUZZ_SESSION: u64 = 1;

/// Component keys of engine programs: few, so writes collide.
pub const KEYS: [&str; 4] = ["a/Shape", "b/Shape", "c/Shape", "SINGLETON/Camera"];

/// Field names of engine programs (`_exists` is written by the [`Kind`] of a write).
pub const FIELDS: [&str; 4] = ["x", "y", "pts", "label"];

// --- decode_frame ----------------------------------------------------------------------------------

/// Decodes `data` as a client text frame (if it is UTF-8); decoding must not panic, and a frame that
/// decodes must survive everything the room does with it: apply, relay, ack, reconnect diff, and a
/// client-side re-encoding that decodes back to the same frame.
pub fn check_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let frame = match canvas::decode(text, &FRAME_LIMITS) {
        Ok(frame) => frame,
        Err(e) => {
            // What the connection does with a refused frame: classify, count, close with the text.
            let _ = (e.is_ignored(), e.label(), e.to_string());
            return;
        }
    };
    let again = reencode(&frame);
    let redecoded = canvas::decode(&again, &FRAME_LIMITS)
        .unwrap_or_else(|e| panic!("re-encoded frame {again} does not decode: {e}"));
    // The server's own behaviour first, so a failure names the server invariant it breaks.
    handle(frame.clone());
    assert_same_frame(&frame, &redecoded, &again);
}

/// The frame as a client would write it, from the decoded values.
fn reencode(frame: &ClientFrame) -> String {
    let mut out = Map::new();
    let mut patches = |name: &str, p: &Option<Patches>| {
        if let Some(p) = p {
            out.insert(name.to_owned(), Value::Array(p.parsed.clone()));
        }
    };
    match frame {
        ClientFrame::Patch {
            message_id,
            document,
            ephemeral,
        } => {
            patches("documentPatches", document);
            patches("ephemeralPatches", ephemeral);
            out.insert("type".into(), json!("patch"));
            out.insert("messageId".into(), json!(message_id));
        }
        ClientFrame::Reconnect {
            last_timestamp,
            protocol_version,
            document,
            ephemeral,
        } => {
            patches("documentPatches", document);
            patches("ephemeralPatches", ephemeral);
            out.insert("type".into(), json!("reconnect"));
            out.insert("lastTimestamp".into(), json!(last_timestamp));
            if let Some(v) = protocol_version {
                out.insert("protocolVersion".into(), json!(v));
            }
        }
        ClientFrame::AuthRefresh { token } => {
            out.insert("type".into(), json!("auth-refresh"));
            out.insert("token".into(), json!(token));
        }
    }
    Value::Object(out).to_string()
}

fn parsed(p: &Option<Patches>) -> Option<&Vec<Value>> {
    p.as_ref().map(|p| &p.parsed)
}

fn assert_same_frame(a: &ClientFrame, b: &ClientFrame, text: &str) {
    let same = match (a, b) {
        (
            ClientFrame::Patch {
                message_id: m1,
                document: d1,
                ephemeral: e1,
            },
            ClientFrame::Patch {
                message_id: m2,
                document: d2,
                ephemeral: e2,
            },
        ) => m1 == m2 && parsed(d1) == parsed(d2) && parsed(e1) == parsed(e2),
        (
            ClientFrame::Reconnect {
                last_timestamp: t1,
                protocol_version: v1,
                document: d1,
                ephemeral: e1,
            },
            ClientFrame::Reconnect {
                last_timestamp: t2,
                protocol_version: v2,
                document: d2,
                ephemeral: e2,
            },
        ) => t1 == t2 && v1 == v2 && parsed(d1) == parsed(d2) && parsed(e1) == parsed(e2),
        (ClientFrame::AuthRefresh { token: t1 }, ClientFrame::AuthRefresh { token: t2 }) => {
            t1 == t2
        }
        _ => false,
    };
    assert!(
        same,
        "re-encoded frame {text} decodes differently:\n{a:?}\nvs\n{b:?}"
    );
}

/// Checks one accepted patch list: its raw text (relayed as is) parses to the values the engine
/// applies, and those values still pass validation.
fn check_patches(p: &Patches) {
    let raw: Value = serde_json::from_str(p.raw.get()).expect("raw patches are JSON");
    let list = Value::Array(p.parsed.clone());
    assert_eq!(
        raw, list,
        "relayed raw text differs from the applied patches"
    );
    validate_patches(&list, &FRAME_LIMITS).expect("accepted patches validate");
}

/// Parses an encoded server frame and checks its `type`.
fn server_frame(frame: &ServerFrame<'_>, kind: &str) -> Value {
    let text = frame.encode();
    let value: Value = serde_json::from_str(&text).expect("server frames are JSON");
    assert_eq!(value["type"], json!(kind), "{text}");
    value
}

/// What the room does with a decoded frame (src/protocols/canvas/room.rs), on a fresh room.
fn handle(frame: ClientFrame) {
    let mut doc = Document::default();
    let mut eph = Ephemeral::default();
    match frame {
        ClientFrame::Patch {
            message_id,
            document,
            ephemeral,
        } => {
            apply_and_relay(&mut doc, &mut eph, document, ephemeral);
            let ack = ServerFrame::Ack {
                message_id: &message_id,
                timestamp: doc.clock(),
            };
            let ack = server_frame(&ack, "ack");
            assert_eq!(ack["messageId"], json!(message_id));
        }
        ClientFrame::Reconnect {
            last_timestamp,
            protocol_version,
            document,
            ephemeral,
        } => {
            if protocol_version != Some(canvas::PROTOCOL_VERSION as f64) {
                let frame = ServerFrame::VersionMismatch {
                    server_protocol_version: canvas::PROTOCOL_VERSION,
                };
                server_frame(&frame, "version-mismatch");
                return;
            }
            let since = doc.clock();
            apply_and_relay(&mut doc, &mut eph, document, ephemeral);
            if last_timestamp > since {
                server_frame(&ServerFrame::Resync { since }, "resync");
            }
            let diff = doc.diff_since(last_timestamp);
            let others = eph.merged_except(FUZZ_SESSION);
            for patch in [&diff, &others] {
                validate_patches(&json!([patch]), &FRAME_LIMITS).expect("server patches validate");
            }
            let (d, e) = (canvas::single_patch(&diff), canvas::single_patch(&others));
            let frame = ServerFrame::Patch {
                document_patches: Some(&d),
                ephemeral_patches: Some(&e),
                client_id: "",
                timestamp: Some(doc.clock()),
            };
            let sent = server_frame(&frame, "patch");
            assert_eq!(sent["documentPatches"], json!([diff]));
            // The room writes its reply straight from the document: the same bytes as the frame
            // built from the diff's value, each list present only when it has an entry.
            let has = |p: &Value| p.as_object().is_some_and(|m| !m.is_empty());
            let built = (has(&diff) || has(&others)).then(|| {
                ServerFrame::Patch {
                    document_patches: has(&diff).then_some(&*d),
                    ephemeral_patches: has(&others).then_some(&*e),
                    client_id: "",
                    timestamp: has(&diff).then(|| doc.clock()),
                }
                .encode()
            });
            let reply = canvas::encode_reconnect_patch(&doc, last_timestamp, &others);
            assert_eq!(reply, built, "reconnect reply written from the document");
            let synced = ServerFrame::Synced {
                timestamp: doc.clock(),
            };
            server_frame(&synced, "synced");
        }
        ClientFrame::AuthRefresh { token } => {
            let _ = token.len();
        }
    }
    // The document the frame produced saves and reloads, and a newcomer catches up from zero.
    check_snapshot_round_trip(&doc);
    let mut fresh = Document::default();
    fresh.apply(&[doc.diff_since(0)], &FRAME_LIMITS);
    if let Some(deletions) = eph.remove(FUZZ_SESSION) {
        validate_patches(&json!([deletions]), &FRAME_LIMITS).expect("leave patch validates");
    }
}

fn apply_and_relay(
    doc: &mut Document,
    eph: &mut Ephemeral,
    document: Option<Patches>,
    ephemeral: Option<Patches>,
) {
    let document = document.filter(|p| !p.is_empty());
    let ephemeral = ephemeral.filter(|p| !p.is_empty());
    let timestamp = document.as_ref().map(|d| {
        check_patches(d);
        let before = doc.clock();
        let clock = doc.apply(&d.parsed, &FRAME_LIMITS);
        assert_eq!(clock, before + 1, "one request advances the clock once");
        clock
    });
    if let Some(e) = &ephemeral {
        check_patches(e);
        eph.apply(FUZZ_SESSION, &e.parsed, &FRAME_LIMITS);
    }
    if document.is_none() && ephemeral.is_none() {
        return;
    }
    let frame = ServerFrame::Patch {
        document_patches: document.as_ref().map(|d| d.raw.as_ref()),
        ephemeral_patches: ephemeral.as_ref().map(|e| e.raw.as_ref()),
        client_id: "fuzz-client",
        timestamp,
    };
    let relayed = server_frame(&frame, "patch");
    if let Some(d) = &document {
        assert_eq!(relayed["documentPatches"], Value::Array(d.parsed.clone()));
        assert_eq!(relayed["timestamp"], json!(timestamp));
    }
    if let Some(e) = &ephemeral {
        assert_eq!(relayed["ephemeralPatches"], Value::Array(e.parsed.clone()));
    }
}

// --- snapshot_load ---------------------------------------------------------------------------------

/// Reads `data` as a snapshot: must not panic; a snapshot that loads must save and load back equal.
pub fn check_snapshot(data: &[u8]) {
    if let Ok(doc) = Document::decode_snapshot(data) {
        check_snapshot_round_trip(&doc);
        // A loaded document is usable: a newcomer's diff applies.
        let mut fresh = Document::default();
        fresh.apply(&[doc.diff_since(0)], &FRAME_LIMITS);
    }
}

fn check_snapshot_round_trip(doc: &Document) {
    let bytes = doc.encode_snapshot();
    let back = Document::decode_snapshot(&bytes).unwrap_or_else(|e| {
        panic!(
            "snapshot {} does not load: {e}",
            String::from_utf8_lossy(&bytes)
        )
    });
    assert!(
        back == *doc,
        "snapshot {} loads as a different document:\n{doc:?}\nvs\n{back:?}",
        String::from_utf8_lossy(&bytes)
    );
}

// --- engine_apply ----------------------------------------------------------------------------------

/// Runs the [`Program`] that `data` decodes to (see [`Program::decode`]) and checks the engine.
pub fn check_engine(data: &[u8]) {
    run_program(&Program::decode(data));
}

/// A sequence of requests and the cut point of the replica.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    /// Taken modulo (number of valid requests + 1).
    pub cut: usize,
    pub requests: Vec<Request>,
}

/// One request of one client: its document patches (also applied as that client's ephemeral ones).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub client: usize,
    /// Each patch is a list of component writes (a later write to the same key in one patch
    /// replaces the earlier one, as in a JSON object).
    pub patches: Vec<Vec<Write>>,
}

/// One component write: `KEYS[key]: {...}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub key: usize,
    pub kind: Kind,
    /// `(FIELDS[i], value)`.
    pub fields: Vec<(usize, Val)>,
}

/// The shape of a component value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No `_exists`: a partial write.
    Edit,
    /// `"_exists": true` plus the fields.
    Create,
    /// `"_exists": false` plus the fields.
    Delete,
    /// `"_exists": 1`: refused by validation.
    BadExists,
    /// The component is `null`: refused by validation.
    NotObject,
}

/// A field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Int(i64),
    /// `n + 0.25`.
    Frac(i64),
    /// `n` written as a float (`5.0`).
    WholeFloat(i64),
    Str(u8),
    Bool(bool),
    Null,
    Array(Vec<i64>),
    /// `{"k": value}`.
    Nested(Box<Val>),
    Buf(Buf),
}

/// A buffer delta, well formed or not: `{"__buf": marker, "len": len, "runs": [...]}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Buf {
    /// 0: `1`, 1: `1.0`, 2: `2` (not a buffer delta at all, a plain object).
    pub marker: u8,
    pub len: i64,
    /// 0: integer, 1: whole float, 2: `len + 0.5` (refused).
    pub len_style: u8,
    pub runs: Vec<Run>,
}

/// One run of a buffer delta; `bad` writes it as `[offset]` (refused).
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub offset: i64,
    pub values: Vec<i64>,
    pub bad: bool,
}

const MAX_DEPTH: usize = 2;

/// Reads choices from bytes, one byte per choice (`byte % n`), like `arbitrary::Unstructured`:
/// every byte string is a valid program, and running out of bytes reads zeros.
struct Choices<'a> {
    data: &'a [u8],
}

impl Choices<'_> {
    fn below(&mut self, n: usize) -> usize {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b as usize % n
            }
            None => 0,
        }
    }

    fn int(&mut self, lo: i64, count: usize) -> i64 {
        lo + self.below(count) as i64
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Writes choices as printable ASCII bytes, the inverse of [`Choices`] (for seed files).
#[derive(Default)]
struct Encoder {
    out: Vec<u8>,
}

impl Encoder {
    fn below(&mut self, n: usize, choice: usize) {
        assert!(choice < n && n <= 94, "choice {choice} of {n}");
        let b = (b'!'..=b'~')
            .find(|&b| b as usize % n == choice)
            .expect("94 consecutive bytes cover every residue");
        self.out.push(b);
    }

    fn int(&mut self, lo: i64, count: usize, value: i64) {
        self.below(count, usize::try_from(value - lo).expect("value in range"));
    }
}

// The choices, in order, with their ranges; `decode` and `encode` must agree on every line.
const N_CUT: usize = 64;
const N_CLIENTS: usize = 2;
const N_PATCHES: usize = 4; // 0..=3 patches per request
const N_WRITES: usize = 4; // 0..=3 writes per patch
const N_KINDS: usize = 16;
const N_FIELDS: usize = 4; // 0..=3 fields per write
const N_VALS: usize = 16;
const INT_LO: i64 = -8;
const N_INT: usize = 64;
const N_ARRAY: usize = 6;
const N_STR: usize = 8;
const BUF_LEN_LO: i64 = -2;
const N_BUF_LEN: usize = 16; // -2..=13 against ENGINE_LIMITS.max_buffer_len = 8
const N_RUNS: usize = 4;
const OFFSET_LO: i64 = -4;
const N_OFFSET: usize = 16;
const N_RUN_VALUES: usize = 4;
const N_RUN_STYLE: usize = 8; // 0: malformed run

impl Program {
    /// The program `data` stands for. One byte per choice: the cut, then requests until the bytes
    /// run out; each request is `client, patch count, patches`; each patch `write count, writes`;
    /// each write `key, kind (0-6 edit, 7-11 create, 12-13 delete, 14 bad _exists, 15 null),
    /// field count, fields`; each field `name, value` (see [`Val`] and `decode_val`).
    pub fn decode(data: &[u8]) -> Program {
        let mut c = Choices { data };
        let cut = c.below(N_CUT);
        let mut requests = Vec::new();
        while !c.is_empty() {
            let client = c.below(N_CLIENTS);
            let patches = (0..c.below(N_PATCHES))
                .map(|_| {
                    (0..c.below(N_WRITES))
                        .map(|_| decode_write(&mut c))
                        .collect()
                })
                .collect();
            requests.push(Request { client, patches });
        }
        Program { cut, requests }
    }

    /// Bytes (printable ASCII) that [`Program::decode`] reads back as this program.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::default();
        e.below(N_CUT, self.cut);
        for r in &self.requests {
            e.below(N_CLIENTS, r.client);
            e.below(N_PATCHES, r.patches.len());
            for patch in &r.patches {
                e.below(N_WRITES, patch.len());
                for w in patch {
                    encode_write(&mut e, w);
                }
            }
        }
        e.out
    }

    /// The document patches of each request, as clients send them.
    pub fn to_json(&self) -> Vec<Vec<Value>> {
        self.requests
            .iter()
            .map(|r| r.patches.iter().map(|p| patch_json(p)).collect())
            .collect()
    }
}

fn decode_write(c: &mut Choices<'_>) -> Write {
    let key = c.below(KEYS.len());
    let kind = match c.below(N_KINDS) {
        0..=6 => Kind::Edit,
        7..=11 => Kind::Create,
        12..=13 => Kind::Delete,
        14 => Kind::BadExists,
        _ => Kind::NotObject,
    };
    let fields = if kind == Kind::NotObject {
        Vec::new()
    } else {
        (0..c.below(N_FIELDS))
            .map(|_| (c.below(FIELDS.len()), decode_val(c, 0)))
            .collect()
    };
    Write { key, kind, fields }
}

fn encode_write(e: &mut Encoder, w: &Write) {
    e.below(KEYS.len(), w.key);
    e.below(
        N_KINDS,
        match w.kind {
            Kind::Edit => 0,
            Kind::Create => 7,
            Kind::Delete => 12,
            Kind::BadExists => 14,
            Kind::NotObject => 15,
        },
    );
    if w.kind != Kind::NotObject {
        e.below(N_FIELDS, w.fields.len());
        for (name, val) in &w.fields {
            e.below(FIELDS.len(), *name);
            encode_val(e, val);
        }
    }
}

/// Value tags: 0-2 int, 3 fraction, 4 whole float, 5 string, 6 bool, 7 null, 8 array, 9 nested
/// object (null beyond depth 2), 10-15 buffer delta.
fn decode_val(c: &mut Choices<'_>, depth: usize) -> Val {
    match c.below(N_VALS) {
        0..=2 => Val::Int(c.int(INT_LO, N_INT)),
        3 => Val::Frac(c.int(INT_LO, N_INT)),
        4 => Val::WholeFloat(c.int(INT_LO, N_INT)),
        5 => Val::Str(c.below(N_STR) as u8),
        6 => Val::Bool(c.below(2) == 1),
        7 => Val::Null,
        8 => Val::Array(
            (0..c.below(N_ARRAY))
                .map(|_| c.int(INT_LO, N_INT))
                .collect(),
        ),
        9 if depth < MAX_DEPTH => Val::Nested(Box::new(decode_val(c, depth + 1))),
        9 => Val::Null,
        _ => {
            let marker = c.below(3) as u8;
            let len = c.int(BUF_LEN_LO, N_BUF_LEN);
            let len_style = c.below(3) as u8;
            let runs = (0..c.below(N_RUNS))
                .map(|_| {
                    let offset = c.int(OFFSET_LO, N_OFFSET);
                    let values = (0..c.below(N_RUN_VALUES))
                        .map(|_| c.int(INT_LO, N_INT))
                        .collect();
                    let bad = c.below(N_RUN_STYLE) == 0;
                    Run {
                        offset,
                        values,
                        bad,
                    }
                })
                .collect();
            Val::Buf(Buf {
                marker,
                len,
                len_style,
                runs,
            })
        }
    }
}

fn encode_val(e: &mut Encoder, v: &Val) {
    match v {
        Val::Int(n) => {
            e.below(N_VALS, 0);
            e.int(INT_LO, N_INT, *n);
        }
        Val::Frac(n) => {
            e.below(N_VALS, 3);
            e.int(INT_LO, N_INT, *n);
        }
        Val::WholeFloat(n) => {
            e.below(N_VALS, 4);
            e.int(INT_LO, N_INT, *n);
        }
        Val::Str(s) => {
            e.below(N_VALS, 5);
            e.below(N_STR, *s as usize);
        }
        Val::Bool(b) => {
            e.below(N_VALS, 6);
            e.below(2, usize::from(*b));
        }
        Val::Null => e.below(N_VALS, 7),
        Val::Array(items) => {
            e.below(N_VALS, 8);
            e.below(N_ARRAY, items.len());
            for n in items {
                e.int(INT_LO, N_INT, *n);
            }
        }
        Val::Nested(inner) => {
            e.below(N_VALS, 9);
            encode_val(e, inner);
        }
        Val::Buf(b) => {
            e.below(N_VALS, 10);
            e.below(3, b.marker as usize);
            e.int(BUF_LEN_LO, N_BUF_LEN, b.len);
            e.below(3, b.len_style as usize);
            e.below(N_RUNS, b.runs.len());
            for r in &b.runs {
                e.int(OFFSET_LO, N_OFFSET, r.offset);
                e.below(N_RUN_VALUES, r.values.len());
                for n in &r.values {
                    e.int(INT_LO, N_INT, *n);
                }
                e.below(N_RUN_STYLE, if r.bad { 0 } else { 1 });
            }
        }
    }
}

fn patch_json(writes: &[Write]) -> Value {
    let mut patch = Map::new();
    for w in writes {
        let value = if w.kind == Kind::NotObject {
            Value::Null
        } else {
            let mut fields = Map::new();
            let exists = match w.kind {
                Kind::Create => Some(json!(true)),
                Kind::Delete => Some(json!(false)),
                Kind::BadExists => Some(json!(1)),
                Kind::Edit | Kind::NotObject => None,
            };
            if let Some(exists) = exists {
                fields.insert("_exists".into(), exists);
            }
            for (name, val) in &w.fields {
                fields.insert(FIELDS[*name].into(), val_json(val));
            }
            Value::Object(fields)
        };
        patch.insert(KEYS[w.key].into(), value);
    }
    Value::Object(patch)
}

fn val_json(v: &Val) -> Value {
    match v {
        Val::Int(n) => json!(n),
        Val::Frac(n) => json!(*n as f64 + 0.25),
        Val::WholeFloat(n) => json!(*n as f64),
        Val::Str(s) => json!(format!("s{s}")),
        Val::Bool(b) => json!(b),
        Val::Null => Value::Null,
        Val::Array(items) => json!(items),
        Val::Nested(inner) => json!({ "k": val_json(inner) }),
        Val::Buf(b) => {
            let marker = match b.marker {
                0 => json!(1),
                1 => json!(1.0),
                _ => json!(2),
            };
            let len = match b.len_style {
                0 => json!(b.len),
                1 => json!(b.len as f64),
                _ => json!(b.len as f64 + 0.5),
            };
            let runs: Vec<Value> = b
                .runs
                .iter()
                .map(|r| {
                    if r.bad {
                        json!([r.offset])
                    } else {
                        json!([r.offset, r.values])
                    }
                })
                .collect();
            json!({"__buf": marker, "len": len, "runs": runs})
        }
    }
}

fn exists(value: &Value) -> Option<bool> {
    value.get("_exists").and_then(Value::as_bool)
}

fn is_tombstone(fields: Option<&Map<String, Value>>) -> bool {
    fields.is_some_and(|f| f.get("_exists") == Some(&json!(false)))
}

/// Applies the program's valid requests to a server document, with a replica cloned at the cut,
/// and checks what `diff_since_brings_a_replica_up_to_date` (src/engine/document.rs) checks:
///
/// - the replica that applies `diff_since(cut)` has exactly the server's fields for every key,
///   except a key that was deleted and then re-created after the cut and is live: the protocol
///   cannot say "replace" (`recreate_with_fewer_fields_leaves_extra_fields_on_replicas`), so
///   there the replica holds every server field with its value, plus possibly stale extras;
/// - tombstones and absent keys match exactly;
/// - `diff_since(0)` applied to an empty document rebuilds every live component;
/// - the snapshot loads back as an equal document; each valid request moves the clock by one.
pub fn run_program(program: &Program) {
    let limits = ENGINE_LIMITS;
    // Requests the server would refuse (and close the connection for) are never applied.
    let valid: Vec<(usize, Vec<Value>)> = program
        .to_json()
        .into_iter()
        .zip(&program.requests)
        .filter(|(patches, _)| validate_patches(&json!(patches), &limits).is_ok())
        .map(|(patches, r)| (r.client, patches))
        .collect();
    let cut = program.cut % (valid.len() + 1);
    let mut server = Document::default();
    let mut eph = Ephemeral::default();
    let apply = |server: &mut Document, eph: &mut Ephemeral, client: usize, patches: &[Value]| {
        let before = server.clock();
        let clock = server.apply(patches, &limits);
        let step = u64::from(!patches.is_empty());
        assert_eq!(clock, before + step, "clock moves once per request");
        assert_eq!(server.clock(), clock);
        eph.apply(client as u64, patches, &limits);
    };
    for (client, patches) in &valid[..cut] {
        apply(&mut server, &mut eph, *client, patches);
    }
    let mut replica = server.clone();
    let seen = server.clock();
    let mut deleted = HashSet::new();
    let mut recreated = HashSet::new();
    for (client, patches) in &valid[cut..] {
        for patch in patches {
            for (key, value) in patch.as_object().into_iter().flatten() {
                match exists(value) {
                    Some(false) => {
                        deleted.insert(key.clone());
                    }
                    Some(true) if deleted.contains(key) => {
                        recreated.insert(key.clone());
                    }
                    _ => {}
                }
            }
        }
        apply(&mut server, &mut eph, *client, patches);
    }

    let diff = server.diff_since(seen);
    validate_patches(&json!([diff]), &limits).expect("a diff is a valid patch");
    assert_eq!(
        server.diff_since_raw(seen).get(),
        diff.to_string(),
        "the raw diff is the serialized diff"
    );
    assert_eq!(
        server.diff_since(server.clock()),
        json!({}),
        "nothing after now"
    );
    replica.apply(std::slice::from_ref(&diff), &limits);
    for key in KEYS {
        let (want, got) = (server.get(key), replica.get(key));
        let live = want.is_some() && !is_tombstone(want);
        if live && recreated.contains(key) {
            let (want, got) = (want.expect("live"), got.expect("replica has the key"));
            for (field, value) in want {
                assert_eq!(
                    got.get(field),
                    Some(value),
                    "key {key} field {field} (re-created after the cut); diff {diff}"
                );
            }
        } else {
            assert_eq!(got, want, "key {key}; cut at clock {seen}; diff {diff}");
        }
    }

    // The diff from zero rebuilds the whole document from nothing.
    let mut fresh = Document::default();
    fresh.apply(&[server.diff_since(0)], &limits);
    for key in KEYS {
        let live = server.get(key).filter(|f| !is_tombstone(Some(f)));
        let rebuilt = fresh.get(key).filter(|f| !is_tombstone(Some(f)));
        assert_eq!(rebuilt, live, "key {key} rebuilt from diff_since(0)");
    }
    check_snapshot_round_trip(&server);

    // Presence: what a newcomer sees and what leaving clients send are valid patches.
    validate_patches(&json!([eph.merged_except(u64::MAX)]), &limits).expect("presence validates");
    for client in 0..N_CLIENTS {
        if let Some(bye) = eph.remove(client as u64) {
            validate_patches(&json!([bye]), &limits).expect("leave patch validates");
        }
    }
}

// --- ws_frames -------------------------------------------------------------------------------------

/// The message size limit of `ws_frames`: small, so generated lengths land on both sides of it.
pub const WS_MAX_MESSAGE: usize = 4096;

/// Reads `data[1..]` as the bytes a client sends on a WebSocket, pushed to a [`FrameReader`] in
/// chunks of `data[0]` bytes (0: all at once), reading every message after each push until the
/// reader has none or fails; after a failure nothing more is read, as on a connection. Must not
/// panic, and:
/// - no text or binary message exceeds [`WS_MAX_MESSAGE`], no ping payload exceeds 125 bytes (a
///   control frame's), and together they never hold more bytes than the input;
/// - a close code is one a client may send (RFC 6455 §7.4: 1000-1003, 1007-1014, 3000-4999);
/// - `TooBig` names the limit;
/// - the chunking does not matter: the same bytes pushed at once give the same messages, and fail
///   (or not) alike. (Which error may differ: a header that is both unmasked and over the limit
///   is `Protocol` when its first two bytes arrive alone, `TooBig` once its length is there.)
pub fn check_ws_frames(data: &[u8]) {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = match chunk {
        0 => stream.len().max(1),
        n => usize::from(n),
    };
    let (messages, error) = read_ws_stream(stream, chunk);
    let (whole, whole_error) = read_ws_stream(stream, stream.len().max(1));
    let mut payload = 0;
    for message in &messages {
        match message {
            WsMessage::Text(text) => {
                assert!(std::str::from_utf8(text.as_bytes()).is_ok());
                assert!(text.len() <= WS_MAX_MESSAGE, "text of {} bytes", text.len());
                payload += text.len();
            }
            WsMessage::Binary(bytes) => {
                assert!(
                    bytes.len() <= WS_MAX_MESSAGE,
                    "binary of {} bytes",
                    bytes.len()
                );
                payload += bytes.len();
            }
            WsMessage::Ping(bytes) => {
                assert!(bytes.len() <= 125, "ping of {} bytes", bytes.len());
                payload += bytes.len();
            }
            WsMessage::Pong => {}
            WsMessage::Close(code) => assert!(
                matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999),
                "close code {code}"
            ),
        }
    }
    assert!(
        payload <= stream.len(),
        "{payload} payload bytes from {} input bytes",
        stream.len()
    );
    if let Some(WsError::TooBig(limit)) = &error {
        assert_eq!(*limit, WS_MAX_MESSAGE);
    }
    assert_eq!(
        messages, whole,
        "chunks of {chunk} give other messages than the whole input"
    );
    assert_eq!(
        error.is_some(),
        whole_error.is_some(),
        "chunks of {chunk}: {error:?}; whole input: {whole_error:?}"
    );
}

/// The messages `stream` pushed in chunks of `chunk` bytes gives, and the error that stopped it.
pub fn read_ws_stream(stream: &[u8], chunk: usize) -> (Vec<WsMessage>, Option<WsError>) {
    let budget = AssemblyBudget::new(usize::MAX);
    let mut reader = FrameReader::new(WS_MAX_MESSAGE, budget.clone());
    let mut messages = Vec::new();
    let mut error = None;
    'read: for piece in stream.chunks(chunk) {
        reader.push(piece);
        loop {
            match reader.next_message() {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => break,
                // The connection is closed on the first error: nothing more is read.
                Err(e) => {
                    error = Some(e);
                    break 'read;
                }
            }
        }
    }
    // What an unfinished message holds stays within the limit (plus a control frame's payload
    // between its fragments), and goes back with the reader.
    assert!(
        budget.used() <= WS_MAX_MESSAGE + 125,
        "{} bytes held",
        budget.used()
    );
    drop(reader);
    assert_eq!(budget.used(), 0, "the budget is given back");
    (messages, error)
}

// --- engine_limits ---------------------------------------------------------------------------------

/// Limits of `engine_limits` programs: small, so generated requests land on both sides of each.
pub const HEAVY_LIMITS: Limits = Limits {
    max_buffer_len: 1 << 20,
    max_document_bytes: 200_000,
    max_document_values: 50_000,
    max_request_values: 4_096,
    max_fields_per_component: 512,
    max_presence_bytes: 8_192,
};

/// Engine steps allowed per byte received and per value a request may create (see
/// [`check_limits`]); the old quadratic stamping took ~n/2 steps per field of an n-field write.
pub const STEPS_PER_UNIT: u64 = 8;

/// One request of an `engine_limits` program (see [`heavy_requests`]).
fn heavy_request(c: &mut Choices<'_>) -> Value {
    let key = format!("k{}/Shape", c.below(4));
    let value = match c.below(5) {
        // Up to 4080 fields (the cap is 512), half the time creating the component.
        0 => {
            let n = c.below(256) * 16;
            let mut fields = Map::new();
            if c.below(2) == 0 {
                fields.insert("_exists".into(), Value::Bool(true));
            }
            for i in 0..n {
                fields.insert(format!("f{i}"), json!(i));
            }
            Value::Object(fields)
        }
        // A buffer delta of up to ~1M values, with a run of up to 7 values.
        1 => {
            let len = (c.below(256) * 256 + c.below(256)) * 16;
            let at = (c.below(256) * 256) as i64;
            let values: Vec<i64> = (0..c.below(8) as i64).collect();
            json!({"_exists": true, "pts": {"__buf": 1, "len": len, "runs": [[at, values]]}})
        }
        // A literal array of up to 2040 values and a string as long.
        2 => {
            let n = c.below(256) * 8;
            json!({"_exists": true, "arr": vec![1.5; n], "label": "x".repeat(n)})
        }
        3 => json!({"_exists": false}),
        // Two patches of one request on one field: shrink to nothing, then grow back.
        _ => {
            let len = c.below(256) * 64;
            return json!([
                { key.clone(): {"pts": {"__buf": 1, "len": 0, "runs": []}} },
                { key: {"pts": {"__buf": 1, "len": len, "runs": []}} }
            ]);
        }
    };
    json!([{ key: value }])
}

/// The requests `data` stands for: one [`heavy_request`] per group of choices until the bytes
/// run out.
pub fn heavy_requests(data: &[u8]) -> Vec<Value> {
    let mut c = Choices { data };
    let mut requests = Vec::new();
    while !c.is_empty() {
        requests.push(heavy_request(&mut c));
    }
    requests
}

/// Amplification and complexity of apply, load and diff: each request of the program is
/// checked against [`HEAVY_LIMITS`] and applied only when the check passes (as a room does).
/// The document stays within the limits and a refused request changes nothing; the engine's
/// counted work (`engine::work::steps`) over the program stays within [`STEPS_PER_UNIT`] times
/// the bytes of the requests plus the values they may create; the kept size is the measured size
/// of the document's JSON; and loading the snapshot and diffing from zero cost steps linear in
/// the snapshot's length.
pub fn check_limits(data: &[u8]) {
    let mut doc = Document::default();
    let mut units = 0u64;
    let start = steps();
    for request in heavy_requests(data) {
        let bytes = serde_json::to_vec(&request).expect("json").len() as u64;
        units += bytes + HEAVY_LIMITS.max_request_values as u64;
        let patches = request.as_array().expect("an array of patches");
        validate_patches(&request, &HEAVY_LIMITS).expect("heavy requests are well formed");
        let (size, clock) = (doc.size(), doc.clock());
        match doc.check(patches, &HEAVY_LIMITS) {
            Ok(()) => {
                doc.apply(patches, &HEAVY_LIMITS);
                let size = doc.size();
                assert!(
                    size.bytes <= HEAVY_LIMITS.max_document_bytes
                        && size.values <= HEAVY_LIMITS.max_document_values,
                    "an accepted request took the document to {size:?}"
                );
            }
            Err(_) => assert_eq!(
                (doc.size(), doc.clock()),
                (size, clock),
                "refused, yet changed"
            ),
        }
    }
    let work = steps() - start;
    assert!(
        work <= STEPS_PER_UNIT * units,
        "{work} engine steps for {units} units of input"
    );
    let bytes = doc.encode_snapshot();
    let snapshot: Value = serde_json::from_slice(&bytes).expect("json");
    let state = serde_json::to_vec(&snapshot["state"]).expect("json").len();
    assert_eq!(doc.size().bytes, state, "kept size vs measured");
    let start = steps();
    let back = Document::decode_snapshot_within(&bytes, &HEAVY_LIMITS).expect("within the limits");
    let diff = back.diff_since_raw(0);
    let work = steps() - start;
    assert!(
        work <= 2 * bytes.len() as u64,
        "load and diff: {work} steps for {} bytes",
        bytes.len()
    );
    assert_eq!(back.size(), doc.size());
    assert!(diff.get().len() <= state);
}
