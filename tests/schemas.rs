//! The JSON Schemas in `schemas/canvas/` checked against the code, so they cannot drift apart:
//! every example validates against its schema; client examples decode with
//! `weft::protocols::canvas::wire::decode`; server examples equal what `ServerFrame::encode` produces for
//! the same values; frames and snapshots the engine makes validate; snapshot examples round-trip;
//! and counter-examples are refused by the schemas and by the decoder alike.
//!
//! The game room schemas in `schemas/game/` are checked the same way against
//! `weft::protocols::game::wire`, in the `game` module at the end of this file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use jsonschema::{Registry, Validator};
use serde_json::value::{to_raw_value, RawValue};
use serde_json::{json, Map, Value};
use weft::engine::{Document, Ephemeral, Limits};
use weft::protocols::canvas::wire::{
    self as canvas, ClientFrame, DecodeError, ServerFrame, PROTOCOL_VERSION,
};

/// Base URI the schema files are registered under; their `$ref`s are relative, so any base works.
/// `.invalid` can never resolve: nothing is fetched, everything comes from the registry.
const BASE: &str = "https://weft.invalid/schemas/canvas/";

/// Client-to-server message schemas (extra members allowed).
const CLIENT: [&str; 3] = ["reconnect", "patch-request", "auth-refresh"];
/// Server-to-client message schemas (exact).
const SERVER: [&str; 6] = [
    "ack",
    "patch-broadcast",
    "client-count",
    "version-mismatch",
    "resync",
    "synced",
];
/// Every schema file of `schemas/canvas/`, by name without `.schema.json`.
const ALL: [&str; 11] = [
    "reconnect",
    "patch-request",
    "auth-refresh",
    "ack",
    "patch-broadcast",
    "client-count",
    "version-mismatch",
    "resync",
    "synced",
    "snapshot",
    "common",
];

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas/canvas")
}

/// All schema files of one directory, parsed, with the registry that resolves `$ref`s between
/// them offline.
struct Schemas {
    docs: BTreeMap<String, Value>,
    registry: Registry<'static>,
    /// The URI prefix the schemas' `$id`s and `$ref`s use.
    base: &'static str,
}

impl Schemas {
    /// The canvas-store schemas.
    fn load() -> Schemas {
        Schemas::load_from(&schema_dir(), BASE)
    }

    fn load_from(dir: &std::path::Path, base: &'static str) -> Schemas {
        let mut docs = BTreeMap::new();
        for entry in std::fs::read_dir(dir).expect("schema directory exists") {
            let path = entry.expect("directory entry").path();
            let file = path
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or_default();
            let Some(name) = file.strip_suffix(".schema.json") else {
                panic!("unexpected file {}", path.display());
            };
            let text = std::fs::read_to_string(&path).expect("readable schema");
            let doc: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{file} is not valid JSON: {e}"));
            docs.insert(name.to_owned(), doc);
        }
        let uri = |name: &str| format!("{base}{name}.schema.json");
        let mut builder = Registry::new();
        for (name, doc) in &docs {
            builder = builder
                .add(uri(name), doc.clone())
                .unwrap_or_else(|e| panic!("{name}: cannot register: {e}"));
        }
        let registry = builder.prepare().expect("registry resolves");
        Schemas {
            docs,
            registry,
            base,
        }
    }

    fn uri(&self, name: &str) -> String {
        format!("{}{name}.schema.json", self.base)
    }

    fn doc(&self, name: &str) -> &Value {
        self.docs
            .get(name)
            .unwrap_or_else(|| panic!("no schema {name}"))
    }

    /// A validator for `schema` (a `$ref` into the registry), with no network or file access.
    fn validator_for(&self, schema: &Value) -> Validator {
        jsonschema::options()
            .offline()
            .with_registry(&self.registry)
            .build(schema)
            .unwrap_or_else(|e| panic!("schema {schema} does not build: {e}"))
    }

    fn validator(&self, name: &str) -> Validator {
        self.validator_for(&json!({ "$ref": self.uri(name) }))
    }

    /// Validates every example of every `common.schema.json` definition; returns how many.
    fn check_common_examples(&self) -> usize {
        let defs = self.doc("common")["$defs"]
            .as_object()
            .expect("common has $defs");
        let mut checked = 0;
        for (def, body) in defs {
            let validator = self.def(def);
            for example in body["examples"].as_array().into_iter().flatten() {
                assert_valid(&validator, def, example);
                checked += 1;
            }
        }
        checked
    }

    /// A validator for one definition of `common.schema.json`.
    fn def(&self, def: &str) -> Validator {
        self.validator_for(&json!({ "$ref": format!("{}#/$defs/{def}", self.uri("common")) }))
    }

    fn examples(&self, name: &str) -> Vec<Value> {
        self.doc(name)["examples"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} has no examples array"))
            .clone()
    }
}

fn assert_valid(validator: &Validator, name: &str, instance: &Value) {
    if let Err(e) = validator.validate(instance) {
        panic!("{name}: {instance} should be valid: {e}");
    }
}

fn assert_invalid(validator: &Validator, name: &str, instance: &Value) {
    assert!(
        !validator.is_valid(instance),
        "{name}: {instance} should be rejected"
    );
}

fn decode(text: &str) -> Result<ClientFrame, DecodeError> {
    canvas::decode(text, &Limits::default())
}

fn patches_value(patches: &Option<canvas::Patches>) -> Option<Value> {
    patches.as_ref().map(|p| Value::Array(p.parsed.clone()))
}

/// Every schema file is a valid draft 2020-12 schema with a title and description; every message
/// and snapshot schema has at least two examples and the deliberate `additionalProperties` policy
/// (client frames open, server frames and snapshots closed); the README lists every file.
#[test]
fn schemas_are_valid_documented_and_listed() {
    let schemas = Schemas::load();
    let names: Vec<&str> = schemas.docs.keys().map(String::as_str).collect();
    let mut want = ALL.to_vec();
    want.sort_unstable();
    assert_eq!(
        names, want,
        "schemas/canvas holds exactly the expected files"
    );
    let readme = std::fs::read_to_string(schema_dir().join("../README.md")).expect("README.md");
    for (name, doc) in &schemas.docs {
        if let Err(e) = jsonschema::meta::validate(doc) {
            panic!("{name} is not a valid schema: {e}");
        }
        assert_eq!(
            doc["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{name}"
        );
        for key in ["title", "description"] {
            assert!(
                doc[key].as_str().is_some_and(|s| !s.is_empty()),
                "{name} lacks {key}"
            );
        }
        assert!(
            readme.contains(&format!("canvas/{name}.schema.json")),
            "README lacks {name}"
        );
        if name != "common" {
            assert!(
                schemas.examples(name).len() >= 2,
                "{name}: too few examples"
            );
            let open = CLIENT.contains(&name.as_str());
            assert_eq!(
                doc["additionalProperties"],
                Value::Bool(open),
                "{name}: additionalProperties policy"
            );
        }
    }
}

/// Every example validates against its schema, including the examples of the shared definitions.
#[test]
fn examples_validate_against_their_schema() {
    let schemas = Schemas::load();
    let mut checked = 0;
    for name in ALL.iter().filter(|n| **n != "common") {
        let validator = schemas.validator(name);
        for example in schemas.examples(name) {
            assert_valid(&validator, name, &example);
            checked += 1;
        }
    }
    checked += schemas.check_common_examples();
    assert!(checked > 40, "only {checked} examples checked");
}

/// Every client example decodes with `decode` to the frame it describes, with equal values, and
/// still does with an unknown extra member (clients may add fields; the schemas allow it too).
#[test]
fn client_examples_decode() {
    let schemas = Schemas::load();
    for name in CLIENT {
        let validator = schemas.validator(name);
        for example in schemas.examples(name) {
            let mut extended = example.clone();
            extended["clientVersion"] = json!("2.1.0");
            assert_valid(&validator, name, &extended);
            for instance in [&example, &extended] {
                let text = instance.to_string();
                let frame = decode(&text).unwrap_or_else(|e| panic!("{name}: {text}: {e}"));
                check_decoded(name, instance, &frame);
            }
        }
    }
}

fn check_decoded(name: &str, example: &Value, frame: &ClientFrame) {
    match (name, frame) {
        (
            "patch-request",
            ClientFrame::Patch {
                message_id,
                document,
                ephemeral,
            },
        ) => {
            assert_eq!(example["messageId"], json!(message_id), "{example}");
            assert_eq!(
                patches_value(document),
                example.get("documentPatches").cloned()
            );
            assert_eq!(
                patches_value(ephemeral),
                example.get("ephemeralPatches").cloned()
            );
            // What is relayed is exactly what was received.
            for (patches, key) in [
                (document, "documentPatches"),
                (ephemeral, "ephemeralPatches"),
            ] {
                if let Some(p) = patches {
                    let raw: Value = serde_json::from_str(p.raw.get()).expect("raw is JSON");
                    assert_eq!(raw, example[key]);
                }
            }
        }
        (
            "reconnect",
            ClientFrame::Reconnect {
                last_timestamp,
                protocol_version,
                document,
                ephemeral,
            },
        ) => {
            assert_eq!(Some(*last_timestamp), example["lastTimestamp"].as_u64());
            assert_eq!(*protocol_version, example["protocolVersion"].as_f64());
            assert_eq!(
                patches_value(document),
                example.get("documentPatches").cloned()
            );
            assert_eq!(
                patches_value(ephemeral),
                example.get("ephemeralPatches").cloned()
            );
        }
        ("auth-refresh", ClientFrame::AuthRefresh { token }) => {
            assert_eq!(example["token"], json!(token));
        }
        _ => panic!("{name}: {example} decoded as {frame:?}"),
    }
}

/// Builds, from a server example's values, the `ServerFrame` the server would send and returns
/// what `encode` makes of it.
fn encode_like(example: &Value) -> Value {
    let text = |key: &str| {
        example[key]
            .as_str()
            .unwrap_or_else(|| panic!("{example}: `{key}` is not a string"))
    };
    let number = |key: &str| {
        example[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{example}: `{key}` is not a u64"))
    };
    let raw = |key: &str| -> Option<Box<RawValue>> {
        example
            .get(key)
            .map(|v| to_raw_value(v).expect("patches serialize"))
    };
    let (document, ephemeral) = (raw("documentPatches"), raw("ephemeralPatches"));
    let frame = match example["type"].as_str() {
        Some("ack") => ServerFrame::Ack {
            message_id: text("messageId"),
            timestamp: number("timestamp"),
        },
        Some("patch") => ServerFrame::Patch {
            document_patches: document.as_deref(),
            ephemeral_patches: ephemeral.as_deref(),
            client_id: text("clientId"),
            timestamp: example.get("timestamp").and_then(Value::as_u64),
        },
        Some("clientCount") => ServerFrame::ClientCount {
            count: usize::try_from(number("count")).expect("count fits usize"),
        },
        Some("version-mismatch") => ServerFrame::VersionMismatch {
            server_protocol_version: number("serverProtocolVersion"),
        },
        Some("resync") => ServerFrame::Resync {
            since: number("since"),
        },
        Some("synced") => ServerFrame::Synced {
            timestamp: number("timestamp"),
        },
        _ => panic!("{example}: not a server frame type"),
    };
    serde_json::from_str(&frame.encode()).expect("encoded frame is JSON")
}

/// Every server example is exactly what `ServerFrame::encode` produces for the same values (no
/// member more or less), and each server schema refuses an extra member and a missing one.
#[test]
fn server_examples_match_encoded_frames() {
    let schemas = Schemas::load();
    for name in SERVER {
        let validator = schemas.validator(name);
        for example in schemas.examples(name) {
            assert_eq!(encode_like(&example), example, "{name}");
            let mut extended = example.clone();
            extended["extra"] = json!(true);
            assert_invalid(&validator, name, &extended);
            for key in example.as_object().expect("frame is an object").keys() {
                let mut missing = example.clone();
                missing.as_object_mut().expect("object").remove(key);
                if key == "ephemeralPatches" && example.get("documentPatches").is_some() {
                    // A broadcast with document patches only is another valid frame.
                    continue;
                }
                assert_invalid(&validator, name, &missing);
            }
        }
    }
}

/// Broadcast frames that break the rules the server keeps are refused: `timestamp` exactly with
/// `documentPatches`, at least one non-empty list, and no buffer deltas or extra patches in the
/// frames the server builds itself (`clientId` "").
#[test]
fn server_patch_counter_examples_are_rejected() {
    let schemas = Schemas::load();
    let validator = schemas.validator("patch-broadcast");
    let delta = json!({"__buf": 1, "len": 2, "runs": [[0, [1]]]});
    for bad in [
        json!({"type": "patch", "documentPatches": [{"a/B": {"x": 1}}], "clientId": "c"}),
        json!({"type": "patch", "ephemeralPatches": [{"a/B": {"x": 1}}], "clientId": "c", "timestamp": 3}),
        json!({"type": "patch", "clientId": "c"}),
        json!({"type": "patch", "documentPatches": [], "clientId": "c", "timestamp": 3}),
        json!({"type": "patch", "documentPatches": [{"a/B": null}], "clientId": "c", "timestamp": 3}),
        json!({"type": "patch", "documentPatches": [{"a/B": {"p": delta}}], "clientId": "", "timestamp": 3}),
        json!({"type": "patch", "ephemeralPatches": [{}, {}], "clientId": ""}),
        json!({"type": "patch", "ephemeralPatches": [{"a/B": {"_exists": false, "x": 1}}], "clientId": ""}),
        json!({"type": "patch", "ephemeralPatches": [{"a/B": {"x": 1}}], "clientId": 7}),
        json!({"type": "patch", "documentPatches": [{"a/B": {"x": 1}}], "clientId": "c", "timestamp": -1}),
    ] {
        assert_invalid(&validator, "patch-broadcast", &bad);
    }
    // The same buffer delta relayed from a client is fine.
    assert_valid(
        &validator,
        "patch-broadcast",
        &json!({"type": "patch", "documentPatches": [{"a/B": {"p": delta}}], "clientId": "c", "timestamp": 3}),
    );
}

/// Frames and snapshots built from real engine output (a document fed the client examples'
/// patches, presence state, its diffs and tombstones) validate against the server schemas: the
/// schemas accept what the code sends, not only the hand-written examples.
#[test]
fn engine_made_frames_validate() {
    let schemas = Schemas::load();
    let limits = Limits::default();
    let mut doc = Document::default();
    let mut presence = Ephemeral::default();
    let mut relays = Vec::new();
    // The client examples in order, as a room would apply them (a version mismatch applies nothing).
    let requests: Vec<ClientFrame> = ["reconnect", "patch-request"]
        .into_iter()
        .flat_map(|name| schemas.examples(name))
        .map(|ex| decode(&ex.to_string()).expect("client example decodes"))
        .filter(|frame| {
            !matches!(frame, ClientFrame::Reconnect { protocol_version, .. }
                if *protocol_version != Some(PROTOCOL_VERSION as f64))
        })
        .collect();
    // Create every component the examples touch, so their partial writes and deltas apply.
    let mut creates = Map::new();
    for frame in &requests {
        let (ClientFrame::Patch { document, .. } | ClientFrame::Reconnect { document, .. }) = frame
        else {
            continue;
        };
        for patch in document.iter().flat_map(|p| &p.parsed) {
            for key in patch.as_object().expect("patch").keys() {
                creates.insert(
                    key.clone(),
                    json!({"_exists": true, "_version": null, "points": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}),
                );
            }
        }
    }
    doc.apply(&[Value::Object(creates)], &limits);
    let first = doc.clock();
    // The examples are all written by one client, whose presence keys they use.
    let client = "f47ac10b-58cc-4372-a567-0e02b2c3d479";
    // Presence belongs to a session: the writer's and a newcomer's.
    const WRITER: u64 = 1;
    const NEWCOMER: u64 = 2;
    for frame in &requests {
        let (ClientFrame::Patch {
            document,
            ephemeral,
            ..
        }
        | ClientFrame::Reconnect {
            document,
            ephemeral,
            ..
        }) = frame
        else {
            continue;
        };
        let document = document.as_ref().filter(|p| !p.is_empty());
        let ephemeral = ephemeral.as_ref().filter(|p| !p.is_empty());
        let timestamp = document.map(|d| doc.apply(&d.parsed, &limits));
        if let Some(e) = ephemeral {
            presence.apply(WRITER, &e.parsed, &limits);
        }
        if document.is_some() || ephemeral.is_some() {
            let relay = ServerFrame::Patch {
                document_patches: document.map(|d| d.raw.as_ref()),
                ephemeral_patches: ephemeral.map(|e| e.raw.as_ref()),
                client_id: client,
                timestamp,
            };
            relays.push(relay.encode());
        }
    }
    let mut frames: Vec<(&str, Value)> = relays
        .iter()
        .map(|f| ("patch-broadcast", serde_json::from_str(f).expect("JSON")))
        .collect();
    let mut push = |name, frame: ServerFrame<'_>| {
        frames.push((name, serde_json::from_str(&frame.encode()).expect("JSON")));
    };
    // Reconnect replies, built as the room builds them: each list only when it is not empty.
    let non_empty =
        |v: Value| (v.as_object().is_some_and(|o| !o.is_empty())).then(|| canvas::single_patch(&v));
    for (since, reader) in [(0, NEWCOMER), (first, NEWCOMER), (doc.clock() - 1, WRITER)] {
        let diff = non_empty(doc.diff_since(since));
        let others = non_empty(presence.merged_except(reader));
        push(
            "patch-broadcast",
            ServerFrame::Patch {
                document_patches: diff.as_deref(),
                ephemeral_patches: others.as_deref(),
                client_id: "",
                timestamp: diff.as_ref().map(|_| doc.clock()),
            },
        );
    }
    let joined = canvas::single_patch(&presence.merged_except(NEWCOMER));
    push(
        "patch-broadcast",
        ServerFrame::Patch {
            document_patches: None,
            ephemeral_patches: Some(&joined),
            client_id: "",
            timestamp: None,
        },
    );
    let left = presence.remove(WRITER).expect("the client had presence");
    let left = canvas::single_patch(&left);
    push(
        "patch-broadcast",
        ServerFrame::Patch {
            document_patches: None,
            ephemeral_patches: Some(&left),
            client_id: client,
            timestamp: None,
        },
    );
    push(
        "ack",
        ServerFrame::Ack {
            message_id: "m-1",
            timestamp: doc.clock(),
        },
    );
    push("client-count", ServerFrame::ClientCount { count: 2 });
    push(
        "version-mismatch",
        ServerFrame::VersionMismatch {
            server_protocol_version: PROTOCOL_VERSION,
        },
    );
    push("resync", ServerFrame::Resync { since: first });
    push(
        "synced",
        ServerFrame::Synced {
            timestamp: doc.clock(),
        },
    );
    assert!(frames.len() > 10, "only {} frames were built", frames.len());
    for (name, frame) in &frames {
        assert_valid(&schemas.validator(name), name, frame);
    }
    // The run really exercised deltas and deletes: stored state holds the materialized array.
    let stroke = "3a7e1f02-9b4c-4d8a-8f61-2c5e9d0b7a13/Stroke";
    assert_eq!(
        doc.get(stroke).and_then(|f| f.get("points")),
        Some(&json!([1, 2, 3, 4, 5, 6, 311.5, 207.25, 318, 214.5]))
    );
    assert_eq!(doc.diff_since(first)[stroke]["points"][9], json!(214.5));
    assert!(doc.tombstones() > 0, "the examples delete something");
    let snapshot: Value = serde_json::from_slice(&doc.encode_snapshot()).expect("JSON snapshot");
    assert_valid(&schemas.validator("snapshot"), "snapshot", &snapshot);
}

/// Every snapshot example decodes with `Document::decode_snapshot` and re-encodes to an equal
/// value; snapshots the schema refuses for a wrong shape are refused by the decoder too.
#[test]
fn snapshot_examples_round_trip() {
    let schemas = Schemas::load();
    let validator = schemas.validator("snapshot");
    for example in schemas.examples("snapshot") {
        let bytes = serde_json::to_vec(&example).expect("serializes");
        let doc = Document::decode_snapshot(&bytes)
            .unwrap_or_else(|e| panic!("{example} does not decode: {e}"));
        assert_eq!(Some(doc.clock()), example["timestamp"].as_u64());
        let back: Value = serde_json::from_slice(&doc.encode_snapshot()).expect("JSON");
        assert_eq!(back, example);
    }
    for bad in [
        json!({"state": {}, "timestamps": {}}),
        json!({"timestamp": -1, "state": {}, "timestamps": {}}),
        json!({"timestamp": "3", "state": {}, "timestamps": {}}),
        json!({"timestamp": 3, "state": {"a/B": 1}, "timestamps": {}}),
        json!({"timestamp": 3, "state": {"a/B": null}, "timestamps": {}}),
        json!({"timestamp": 3, "state": [], "timestamps": {}}),
        json!({"timestamp": 3, "state": {}, "timestamps": {"a/B": {"x": "1"}}}),
        json!({"timestamp": 3, "state": {}, "timestamps": {"a/B": {"x": -1}}}),
        json!(null),
    ] {
        assert_invalid(&validator, "snapshot", &bad);
        let bytes = serde_json::to_vec(&bad).expect("serializes");
        assert!(
            Document::decode_snapshot(&bytes).is_err(),
            "decode_snapshot accepted {bad}"
        );
    }
}

/// Counter-examples for each client schema (wrong types, missing required members, malformed
/// patches and buffer deltas): the schema rejects each one AND `decode` returns `Err`, so these
/// tests can fail and the schemas are no more lenient than the decoder here.
#[test]
fn client_counter_examples_are_rejected_by_schema_and_decode() {
    let schemas = Schemas::load();
    let over = Limits::default().max_buffer_len + 1;
    let patch =
        |patches: Value| json!({"type": "patch", "messageId": "m-1", "documentPatches": patches});
    let eph =
        |patches: Value| json!({"type": "patch", "messageId": "m-1", "ephemeralPatches": patches});
    let delta = |delta: Value| patch(json!([{"a/Stroke": {"points": delta}}]));
    let cases: Vec<(&str, Value)> = vec![
        ("patch-request", json!({"type": "patch"})),
        ("patch-request", json!({"type": "patch", "messageId": 7})),
        ("patch-request", json!({"type": "patch", "messageId": null})),
        (
            "patch-request",
            json!({"messageId": "m-1", "documentPatches": []}),
        ),
        (
            "patch-request",
            json!({"type": "Patch", "messageId": "m-1"}),
        ),
        ("patch-request", patch(json!({"a/B": {"x": 1}}))),
        ("patch-request", patch(json!("abc"))),
        ("patch-request", patch(json!(["a/B"]))),
        ("patch-request", patch(json!([{"a/B": null}]))),
        ("patch-request", patch(json!([{"a/B": [1, 2]}]))),
        (
            "patch-request",
            patch(json!([{"a/B": {"_exists": "false"}}])),
        ),
        ("patch-request", eph(json!([[1, 2]]))),
        ("patch-request", eph(json!([{"a/Cursor": 5}]))),
        (
            "patch-request",
            delta(json!({"__buf": 1, "len": -1, "runs": []})),
        ),
        (
            "patch-request",
            delta(json!({"__buf": 1, "len": 1.5, "runs": []})),
        ),
        (
            "patch-request",
            delta(json!({"__buf": 1, "len": "4", "runs": []})),
        ),
        (
            "patch-request",
            delta(json!({"__buf": 1, "len": over, "runs": []})),
        ),
        ("patch-request", delta(json!({"__buf": 1, "runs": []}))),
        ("patch-request", delta(json!({"__buf": 1, "len": 4}))),
        (
            "patch-request",
            delta(json!({"__buf": 1, "len": 4, "runs": {}})),
        ),
        (
            "patch-request",
            delta(json!({"__buf": 1, "len": 4, "runs": [[0]]})),
        ),
        (
            "patch-request",
            delta(json!({"__buf": 1, "len": 4, "runs": [[0, [1], 2]]})),
        ),
        (
            "patch-request",
            delta(json!({"__buf": 1, "len": 4, "runs": [[0.5, [1]]]})),
        ),
        (
            "patch-request",
            delta(json!({"__buf": 1, "len": 4, "runs": [[0, ["x"]]]})),
        ),
        (
            "patch-request",
            delta(json!({"__buf": 1, "len": 4, "runs": [[0, 1]]})),
        ),
        (
            "reconnect",
            json!({"lastTimestamp": 0, "protocolVersion": 2}),
        ),
        (
            "reconnect",
            json!({"type": "reconnect", "lastTimestamp": -1, "protocolVersion": 2}),
        ),
        (
            "reconnect",
            json!({"type": "reconnect", "lastTimestamp": "5", "protocolVersion": 2}),
        ),
        (
            "reconnect",
            json!({"type": "reconnect", "lastTimestamp": 1.5, "protocolVersion": 2}),
        ),
        (
            "reconnect",
            json!({"type": "reconnect", "lastTimestamp": 9_007_199_254_740_992u64, "protocolVersion": 2}),
        ),
        (
            "reconnect",
            json!({"type": "reconnect", "lastTimestamp": 0, "protocolVersion": 2, "documentPatches": "abc"}),
        ),
        (
            "reconnect",
            json!({"type": "reconnect", "lastTimestamp": 0, "protocolVersion": 2, "documentPatches": [{"a/B": true}]}),
        ),
        (
            "reconnect",
            json!({"type": "reconnect", "lastTimestamp": 0, "protocolVersion": 2, "ephemeralPatches": [{"a/B": {"_exists": 0}}]}),
        ),
        (
            "reconnect",
            json!({"type": "reconnect", "lastTimestamp": 0, "protocolVersion": 2, "ephemeralPatches": [{"a/B": {"p": {"__buf": 1, "len": 2, "runs": [["0", [1]]]}}}]}),
        ),
        ("auth-refresh", json!({"type": "auth-refresh"})),
        ("auth-refresh", json!({"type": "auth-refresh", "token": 42})),
        (
            "auth-refresh",
            json!({"type": "auth-refresh", "token": null}),
        ),
        (
            "auth-refresh",
            json!({"type": "auth-refresh", "token": ["a", "b"]}),
        ),
        ("auth-refresh", json!({"token": "t"})),
    ];
    for name in CLIENT {
        assert!(
            cases.iter().filter(|(n, _)| *n == name).count() >= 3,
            "{name}: too few counter-examples"
        );
    }
    for (name, bad) in &cases {
        assert_invalid(&schemas.validator(name), name, bad);
        let text = bad.to_string();
        match decode(&text) {
            Ok(frame) => panic!("{name}: decode accepted {text} as {frame:?}"),
            // A frame without a known `type` is ignored; a known one with bad members closes.
            Err(e) => assert_eq!(
                e.is_ignored(),
                !["patch", "reconnect", "auth-refresh"]
                    .contains(&bad["type"].as_str().unwrap_or("")),
                "{name}: {text}: {e}"
            ),
        }
    }
}

/// Where the decoder is deliberately more lenient than the client contract the schemas state
/// (each case named in the schema's description), it still is: these frames decode to the
/// documented values while the schema rejects them. If either side changes, this fails.
#[test]
fn documented_leniencies_of_the_decoder() {
    let schemas = Schemas::load();
    let reconnect = schemas.validator("reconnect");
    let patch = schemas.validator("patch-request");
    for (bad, want_last, want_version) in [
        (
            json!({"type": "reconnect", "protocolVersion": 2}),
            0,
            Some(2.0),
        ),
        (
            json!({"type": "reconnect", "lastTimestamp": null, "protocolVersion": 2}),
            0,
            Some(2.0),
        ),
        // Decoded, then answered with version-mismatch by the room.
        (json!({"type": "reconnect", "lastTimestamp": 3}), 3, None),
        (
            json!({"type": "reconnect", "lastTimestamp": 3, "protocolVersion": "2"}),
            3,
            None,
        ),
    ] {
        assert_invalid(&reconnect, "reconnect", &bad);
        match decode(&bad.to_string()) {
            Ok(ClientFrame::Reconnect {
                last_timestamp,
                protocol_version,
                ..
            }) => assert_eq!(
                (last_timestamp, protocol_version),
                (want_last, want_version)
            ),
            other => panic!("{bad}: {other:?}"),
        }
    }
    let null_list = json!({"type": "reconnect", "lastTimestamp": 0, "protocolVersion": 2, "documentPatches": null});
    assert_invalid(&reconnect, "reconnect", &null_list);
    assert!(matches!(
        decode(&null_list.to_string()),
        Ok(ClientFrame::Reconnect { document: None, .. })
    ));
    let null_list = json!({"type": "patch", "messageId": "m", "ephemeralPatches": null});
    assert_invalid(&patch, "patch-request", &null_list);
    assert!(matches!(
        decode(&null_list.to_string()),
        Ok(ClientFrame::Patch {
            ephemeral: None,
            ..
        })
    ));
}

/// Numbers written into the schemas are the code's: the protocol version, the buffer-delta length
/// limit, the JavaScript-safe timestamp bound and the longest client id.
#[test]
fn schema_constants_match_the_code() {
    let schemas = Schemas::load();
    let vm = schemas.doc("version-mismatch");
    assert_eq!(
        vm["properties"]["serverProtocolVersion"]["const"],
        json!(PROTOCOL_VERSION)
    );
    let defs = &schemas.doc("common")["$defs"];
    assert_eq!(
        defs["BufferDelta"]["properties"]["len"]["maximum"],
        json!(Limits::default().max_buffer_len)
    );
    let max_safe = (1u64 << 53) - 1;
    assert_eq!(defs["Timestamp"]["maximum"], json!(max_safe));
    let at_limit = json!({"type": "reconnect", "lastTimestamp": max_safe, "protocolVersion": 2});
    assert!(decode(&at_limit.to_string()).is_ok());
    assert_valid(&schemas.validator("reconnect"), "reconnect", &at_limit);
    assert_eq!(
        schemas.doc("patch-broadcast")["properties"]["clientId"]["maxLength"],
        json!(weft::ids::MAX_CLIENT_ID_LEN)
    );
}

/// Whole numbers written as floats (`5.0`, as a Python client's `json.dumps` may) are accepted by
/// the schema's `integer` and by `decode` alike, for `lastTimestamp`, buffer-delta `len` and run
/// offsets; a real fraction is refused by both.
#[test]
fn integral_floats_are_whole_numbers() {
    let schemas = Schemas::load();
    for (name, text) in [
        (
            "reconnect",
            r#"{"type":"reconnect","lastTimestamp":5.0,"protocolVersion":2}"#,
        ),
        (
            "patch-request",
            r#"{"type":"patch","messageId":"m","documentPatches":[{"a/B":{"p":{"__buf":1,"len":4.0,"runs":[]}}}]}"#,
        ),
        (
            "patch-request",
            r#"{"type":"patch","messageId":"m","documentPatches":[{"a/B":{"p":{"__buf":1,"len":4,"runs":[[0.0,[1]]]}}}]}"#,
        ),
    ] {
        let value: Value = serde_json::from_str(text).expect("JSON");
        assert_valid(&schemas.validator(name), name, &value);
        assert!(decode(text).is_ok(), "{text} is refused");
        let fractional = text
            .replace("5.0", "5.5")
            .replace("4.0", "4.5")
            .replace("0.0", "0.5");
        assert!(decode(&fractional).is_err(), "{fractional} decodes");
    }
}

/// The game room schemas in `schemas/game/` (EdgeBase Rooms v2) checked against
/// `weft::protocols::game::wire`: every example validates; client examples decode with
/// `ClientFrame::decode` to the frame they describe; server examples equal what `ServerFrame`
/// encodes for the same values; frames built from every error code validate; counter-examples
/// are refused. (tests/game_api also validates every frame the running server sends.)
mod game {
    use std::path::PathBuf;

    use jsonschema::Validator;
    use serde_json::{json, Map, Value};
    use weft::protocols::game::wire::{
        error_frame, ClientFrame, DecodeError, ErrorCode, ServerFrame,
    };

    use super::{assert_invalid, assert_valid, Schemas};

    const BASE: &str = "https://weft.invalid/schemas/game/";

    /// Client-to-server message schemas (extra members allowed), by file name.
    const CLIENT: [&str; 5] = ["auth", "join", "send", "ping", "leave"];
    /// Server-to-client message schemas (exact), by file name.
    const SERVER: [&str; 11] = [
        "auth-success",
        "auth-refreshed",
        "sync",
        "shared-delta",
        "player-delta",
        "action-result",
        "action-error",
        "message",
        "kicked",
        "error",
        "pong",
    ];

    /// Every error code, in declaration order.
    const CODES: [ErrorCode; 18] = [
        ErrorCode::AuthFailed,
        ErrorCode::AuthRefreshFailed,
        ErrorCode::AuthTimeout,
        ErrorCode::InvalidJson,
        ErrorCode::NotAuthenticated,
        ErrorCode::RateLimited,
        ErrorCode::InvalidAction,
        ErrorCode::NoHandler,
        ErrorCode::Unauthenticated,
        ErrorCode::JoinDenied,
        ErrorCode::RoomFull,
        ErrorCode::UnknownType,
        ErrorCode::InvalidMessage,
        ErrorCode::NotJoined,
        ErrorCode::StateTooLarge,
        ErrorCode::ActionFailed,
        ErrorCode::ActionTimeout,
        ErrorCode::RoomUnavailable,
    ];

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas/game")
    }

    /// The wire `type` of a message schema: its file name with `_` for `-`.
    fn wire_type(name: &str) -> String {
        name.replace('-', "_")
    }

    fn load() -> Schemas {
        Schemas::load_from(&dir(), BASE)
    }

    /// What only the game tests ask of the schemas.
    trait GameSchemas {
        fn server_validator(&self, frame: &Value) -> Validator;
    }

    impl GameSchemas for Schemas {
        /// The schema of a server frame, by its wire `type`.
        fn server_validator(&self, frame: &Value) -> Validator {
            let kind = frame["type"].as_str().expect("a type");
            let name = SERVER
                .iter()
                .find(|n| wire_type(n) == kind)
                .unwrap_or_else(|| panic!("no server schema for {kind}"));
            self.validator(name)
        }
    }

    /// Every file is a valid 2020-12 schema with a title and description, listed in the README;
    /// each message schema pins its wire `type`, has examples and the `additionalProperties`
    /// policy of its direction (client frames open, server frames closed).
    #[test]
    fn game_schemas_are_valid_documented_and_listed() {
        let schemas = load();
        let names: Vec<&str> = schemas.docs.keys().map(String::as_str).collect();
        let mut want: Vec<&str> = CLIENT.iter().chain(&SERVER).copied().collect();
        want.push("common");
        want.sort_unstable();
        assert_eq!(names, want, "schemas/game holds exactly the expected files");
        let readme = std::fs::read_to_string(dir().join("../README.md")).expect("README.md");
        for (name, doc) in &schemas.docs {
            if let Err(e) = jsonschema::meta::validate(doc) {
                panic!("{name} is not a valid schema: {e}");
            }
            assert_eq!(
                doc["$schema"], "https://json-schema.org/draft/2020-12/schema",
                "{name}"
            );
            for key in ["title", "description"] {
                assert!(
                    doc[key].as_str().is_some_and(|s| !s.is_empty()),
                    "{name} lacks {key}"
                );
            }
            assert!(
                readme.contains(&format!("(game/{name}.schema.json)")),
                "README lacks game/{name}"
            );
            if name == "common" {
                continue;
            }
            assert_eq!(
                doc["properties"]["type"]["const"],
                json!(wire_type(name)),
                "{name}: wire type"
            );
            let fields = doc["required"].as_array().map_or(0, Vec::len);
            let wanted = if fields > 1 { 2 } else { 1 };
            assert!(
                schemas.examples(name).len() >= wanted,
                "{name}: too few examples"
            );
            assert_eq!(
                doc["additionalProperties"],
                Value::Bool(CLIENT.contains(&name.as_str())),
                "{name}: additionalProperties policy"
            );
        }
    }

    /// Every example validates against its schema, the shared definitions' examples included.
    #[test]
    fn game_examples_validate_against_their_schema() {
        let schemas = load();
        let mut checked = 0;
        for name in CLIENT.iter().chain(&SERVER) {
            let validator = schemas.validator(name);
            for example in schemas.examples(name) {
                assert_valid(&validator, name, &example);
                assert_eq!(example["type"], json!(wire_type(name)), "{name}");
                checked += 1;
            }
        }
        checked += schemas.check_common_examples();
        assert!(checked > 40, "only {checked} examples checked");
    }

    /// Every client example decodes to the frame it describes, also with an unknown extra member.
    #[test]
    fn game_client_examples_decode() {
        let schemas = load();
        for name in CLIENT {
            let validator = schemas.validator(name);
            for example in schemas.examples(name) {
                let mut extended = example.clone();
                extended["clientVersion"] = json!("0.2.9");
                assert_valid(&validator, name, &extended);
                for instance in [&example, &extended] {
                    let text = instance.to_string();
                    let frame = ClientFrame::decode(&text)
                        .unwrap_or_else(|e| panic!("{name}: {text}: {e}"));
                    let expected = match name {
                        "auth" => ClientFrame::Auth {
                            token: instance["token"].as_str().expect("token").to_owned(),
                        },
                        "join" => ClientFrame::Join {
                            options: instance.get("options").cloned().unwrap_or(Value::Null),
                        },
                        "send" => ClientFrame::Send {
                            action_type: instance["actionType"].as_str().map(str::to_owned),
                            payload: match instance.get("payload") {
                                None | Some(Value::Null) => json!({}),
                                Some(p) => p.clone(),
                            },
                            request_id: instance["requestId"]
                                .as_str()
                                .expect("requestId")
                                .to_owned(),
                        },
                        "ping" => ClientFrame::Ping,
                        "leave" => ClientFrame::Leave,
                        other => panic!("{other}"),
                    };
                    assert_eq!(frame, expected, "{name}: {text}");
                }
            }
        }
    }

    /// The `ServerFrame` the server builds from an example's values, encoded.
    fn encode_like(example: &Value) -> Value {
        let text = |key: &str| {
            example[key]
                .as_str()
                .unwrap_or_else(|| panic!("{example}: `{key}` is not a string"))
        };
        let number = |key: &str| {
            example[key]
                .as_u64()
                .unwrap_or_else(|| panic!("{example}: `{key}` is not a u64"))
        };
        let object = |key: &str| -> &Map<String, Value> {
            example[key]
                .as_object()
                .unwrap_or_else(|| panic!("{example}: `{key}` is not an object"))
        };
        let frame = match example["type"].as_str() {
            Some("auth_success") => ServerFrame::AuthSuccess {
                user_id: text("userId"),
                connection_id: text("connectionId"),
            },
            Some("auth_refreshed") => ServerFrame::AuthRefreshed {
                user_id: text("userId"),
                connection_id: text("connectionId"),
            },
            Some("sync") => ServerFrame::Sync {
                shared_state: &example["sharedState"],
                shared_version: number("sharedVersion"),
                player_state: &example["playerState"],
                player_version: number("playerVersion"),
            },
            Some("shared_delta") => ServerFrame::SharedDelta {
                delta: object("delta"),
                version: number("version"),
            },
            Some("player_delta") => ServerFrame::PlayerDelta {
                delta: object("delta"),
                version: number("version"),
            },
            Some("action_result") => ServerFrame::ActionResult {
                request_id: text("requestId"),
                action_type: text("actionType"),
                result: &example["result"],
            },
            Some("action_error") => ServerFrame::ActionError {
                request_id: text("requestId"),
                action_type: text("actionType"),
                code: text("code"),
                message: text("message"),
            },
            Some("message") => ServerFrame::Message {
                message_type: text("messageType"),
                data: &example["data"],
            },
            Some("kicked") => ServerFrame::Kicked,
            Some("error") => ServerFrame::Error {
                code: text("code"),
                message: text("message"),
            },
            Some("pong") => ServerFrame::Pong,
            _ => panic!("{example}: not a server frame type"),
        };
        serde_json::from_str(&frame.encode()).expect("encoded frame is JSON")
    }

    /// Every server example is exactly what `ServerFrame::encode` makes of its values; each
    /// server schema refuses an extra member and a missing one.
    #[test]
    fn game_server_examples_match_encoded_frames() {
        let schemas = load();
        for name in SERVER {
            let validator = schemas.validator(name);
            for example in schemas.examples(name) {
                assert_eq!(encode_like(&example), example, "{name}");
                let mut extended = example.clone();
                extended["extra"] = json!(true);
                assert_invalid(&validator, name, &extended);
                for key in example.as_object().expect("frame is an object").keys() {
                    let mut missing = example.clone();
                    missing.as_object_mut().expect("object").remove(key);
                    assert_invalid(&validator, name, &missing);
                }
            }
        }
    }

    /// The error codes of the schema are exactly the code's, spelled as it serializes them; an
    /// `error` and an `action_error` of every code validate.
    #[test]
    fn game_error_codes_match_the_code() {
        let schemas = load();
        let listed = schemas.doc("common")["$defs"]["ErrorCode"]["enum"].clone();
        let codes: Vec<Value> = CODES.iter().map(|c| json!(c.as_str())).collect();
        assert_eq!(listed, Value::Array(codes));
        for code in CODES {
            assert_eq!(
                serde_json::to_value(code).expect("serializes"),
                json!(code.as_str())
            );
            let error: Value = serde_json::from_str(&error_frame(code, "why")).expect("json");
            assert_valid(&schemas.validator("error"), "error", &error);
            let refused: Value = serde_json::from_str(
                &ServerFrame::ActionError {
                    request_id: "r",
                    action_type: "",
                    code: code.as_str(),
                    message: "why",
                }
                .encode(),
            )
            .expect("json");
            assert_valid(&schemas.validator("action-error"), "action-error", &refused);
        }
        assert_invalid(
            &schemas.validator("error"),
            "error",
            &json!({"type": "error", "code": "NOT_A_CODE", "message": "m"}),
        );
    }

    /// Frames of the shapes the room runtime builds (deltas down to depth 5, `null` deletions,
    /// whole arrays, empty states, any result and data values) validate against their schemas.
    #[test]
    fn game_frames_the_server_builds_validate() {
        let schemas = load();
        let delta = json!({
            "a": 1,
            "b.c": null,
            "l1.l2.l3.l4.l5": {"deeper": {"x": 1}},
            "list": [1, {"k.with.dots": 2}],
            "dotted": {"k.1": 2},
        });
        let empty = json!({});
        let frames = [
            ServerFrame::AuthSuccess {
                user_id: "user_123",
                connection_id: "conn_0123456789abcdef0123456789abcdef",
            }
            .encode(),
            ServerFrame::Sync {
                shared_state: &empty,
                shared_version: 0,
                player_state: &empty,
                player_version: 0,
            }
            .encode(),
            ServerFrame::SharedDelta {
                delta: delta.as_object().expect("object"),
                version: 1,
            }
            .encode(),
            ServerFrame::PlayerDelta {
                delta: delta.as_object().expect("object"),
                version: u64::from(u32::MAX),
            }
            .encode(),
            ServerFrame::ActionResult {
                request_id: "",
                action_type: "X",
                result: &Value::Null,
            }
            .encode(),
            ServerFrame::Message {
                message_type: "",
                data: &Value::Null,
            }
            .encode(),
            ServerFrame::Kicked.encode(),
            ServerFrame::Pong.encode(),
        ];
        for text in frames {
            let frame: Value = serde_json::from_str(&text).expect("json");
            assert_valid(&schemas.server_validator(&frame), &text, &frame);
        }
    }

    /// What the schemas refuse: bad deltas (an empty one, an empty or sixth path segment),
    /// negative or fractional versions, connection ids not in weft's form; client frames with a
    /// field of the wrong kind, refused by `ClientFrame::decode` too.
    #[test]
    fn game_counter_examples_are_rejected() {
        let schemas = load();
        let shared = schemas.validator("shared-delta");
        for bad in [
            json!({"type": "shared_delta", "delta": {}, "version": 1}),
            json!({"type": "shared_delta", "delta": {"a..b": 1}, "version": 1}),
            json!({"type": "shared_delta", "delta": {".a": 1}, "version": 1}),
            json!({"type": "shared_delta", "delta": {"a.": 1}, "version": 1}),
            json!({"type": "shared_delta", "delta": {"": 1}, "version": 1}),
            json!({"type": "shared_delta", "delta": {"a.b.c.d.e.f": 1}, "version": 1}),
            json!({"type": "shared_delta", "delta": {"a": 1}, "version": 0}),
            json!({"type": "shared_delta", "delta": {"a": 1}, "version": -1}),
            json!({"type": "shared_delta", "delta": {"a": 1}, "version": 1.5}),
            json!({"type": "shared_delta", "delta": [1], "version": 1}),
        ] {
            assert_invalid(&shared, "shared-delta", &bad);
        }
        let sync = schemas.validator("sync");
        assert_invalid(
            &sync,
            "sync",
            &json!({"type": "sync", "sharedState": [], "sharedVersion": 0, "playerState": {}, "playerVersion": 0}),
        );
        let success = schemas.validator("auth-success");
        for id in ["conn_abc", "conn_0123456789ABCDEF0123456789ABCDEF", ""] {
            assert_invalid(
                &success,
                "auth-success",
                &json!({"type": "auth_success", "userId": "u", "connectionId": id}),
            );
        }
        // Client frames: the schema and the decoder refuse the same wrong kinds.
        for (name, bad) in [
            ("auth", json!({"type": "auth", "token": 5})),
            ("auth", json!({"type": "auth"})),
            (
                "send",
                json!({"type": "send", "actionType": "A", "requestId": {"id": 1}}),
            ),
        ] {
            assert_invalid(&schemas.validator(name), name, &bad);
            assert!(
                matches!(
                    ClientFrame::decode(&bad.to_string()),
                    Err(DecodeError::Invalid { .. })
                ),
                "{bad}"
            );
        }
        for bad in [json!({"token": "t"}), json!({"type": 1})] {
            for name in CLIENT {
                assert_invalid(&schemas.validator(name), name, &bad);
            }
            assert!(matches!(
                ClientFrame::decode(&bad.to_string()),
                Err(DecodeError::InvalidJson(_))
            ));
        }
    }

    /// Where the decoder is more lenient than the schema's contract (documented in the schema
    /// descriptions): a `send` without `actionType` decodes (it is answered with `INVALID_ACTION`),
    /// one without `requestId` is answered with "" and a numeric one with its text.
    #[test]
    fn game_documented_leniencies_of_the_decoder() {
        let schemas = load();
        let send = schemas.validator("send");
        for (frame, action_type, request_id) in [
            (json!({"type": "send", "requestId": "r"}), None, "r"),
            (json!({"type": "send", "actionType": "A"}), Some("A"), ""),
            (
                json!({"type": "send", "actionType": "A", "requestId": 7}),
                Some("A"),
                "7",
            ),
        ] {
            assert_invalid(&send, "send", &frame);
            assert_eq!(
                ClientFrame::decode(&frame.to_string()),
                Ok(ClientFrame::Send {
                    action_type: action_type.map(str::to_owned),
                    payload: json!({}),
                    request_id: request_id.to_owned(),
                })
            );
        }
    }
}
