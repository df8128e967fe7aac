//! The canvas-store v2 protocol (`@woven-ecs/canvas-store`): frame decoding and encoding.
//!
//! Decoding keeps the raw JSON text of `documentPatches`/`ephemeralPatches` next to the parsed
//! value, so a broadcast relays exactly what the sender wrote (buffer deltas included) without
//! re-serializing it once per request.

use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::engine::{self, Document, Limits, PatchError};

/// The protocol version this server speaks.
pub const PROTOCOL_VERSION: u64 = 2;

/// A list of patches as received: parsed for the engine, raw for relaying.
#[derive(Debug, Clone)]
pub struct Patches {
    pub parsed: Vec<Value>,
    pub raw: Box<RawValue>,
}

impl Patches {
    pub fn is_empty(&self) -> bool {
        self.parsed.is_empty()
    }

    /// Builds patches from a value the server made (used for replies and tests).
    pub fn from_values(parsed: Vec<Value>) -> Patches {
        let raw = serde_json::value::to_raw_value(&parsed).unwrap_or_else(|_| empty_list());
        Patches { parsed, raw }
    }
}

fn empty_list() -> Box<RawValue> {
    RawValue::from_string("[]".to_owned()).unwrap_or_else(|_| unreachable!("[] is valid JSON"))
}

/// A frame from a client.
#[derive(Debug, Clone)]
pub enum ClientFrame {
    Patch {
        message_id: String,
        document: Option<Patches>,
        ephemeral: Option<Patches>,
    },
    Reconnect {
        last_timestamp: u64,
        /// `None` when absent or not a number: a version mismatch either way.
        protocol_version: Option<f64>,
        document: Option<Patches>,
        ephemeral: Option<Patches>,
    },
    AuthRefresh {
        token: String,
    },
}

/// Why a text frame was not decoded, and so how the connection reacts.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a JSON object with a string `type`: ignored and counted, as the reference does.
    #[error("frame is not a JSON object with a `type`: {0}")]
    NotAFrame(String),
    /// A `type` this protocol does not have: ignored and counted, so newer clients keep working.
    #[error("unknown frame type {0:?}")]
    UnknownType(String),
    /// A known frame with fields of the wrong shape: the connection is closed with this reason.
    #[error("invalid {kind} frame: {reason}")]
    Invalid { kind: &'static str, reason: String },
}

impl DecodeError {
    /// True when the frame is ignored (and counted) rather than ending the connection.
    pub fn is_ignored(&self) -> bool {
        !matches!(self, DecodeError::Invalid { .. })
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::NotAFrame(_) => "not_a_frame",
            DecodeError::UnknownType(_) => "unknown_type",
            DecodeError::Invalid { .. } => "invalid",
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "messageId", default)]
    message_id: Option<Value>,
    #[serde(rename = "lastTimestamp", default)]
    last_timestamp: Option<Value>,
    #[serde(rename = "protocolVersion", default)]
    protocol_version: Option<Value>,
    #[serde(rename = "documentPatches", default, borrow)]
    document_patches: Option<&'a RawValue>,
    #[serde(rename = "ephemeralPatches", default, borrow)]
    ephemeral_patches: Option<&'a RawValue>,
    #[serde(default)]
    token: Option<Value>,
}

/// Decodes one text frame. Patches are validated against `limits` here, before anything is applied.
pub fn decode(text: &str, limits: &Limits) -> Result<ClientFrame, DecodeError> {
    // serde fills a struct from a JSON array too; a frame is an object with a `type`.
    if !text.trim_start().starts_with('{') {
        return Err(DecodeError::NotAFrame("not a JSON object".into()));
    }
    let env: Envelope<'_> =
        serde_json::from_str(text).map_err(|e| DecodeError::NotAFrame(e.to_string()))?;
    let invalid = |kind: &'static str, reason: String| DecodeError::Invalid { kind, reason };
    match env.kind.as_str() {
        "patch" => {
            let message_id = match env.message_id {
                Some(Value::String(id)) => id,
                _ => return Err(invalid("patch", "`messageId` must be a string".into())),
            };
            Ok(ClientFrame::Patch {
                message_id,
                document: patches(env.document_patches, "documentPatches", limits)
                    .map_err(|r| invalid("patch", r))?,
                ephemeral: patches(env.ephemeral_patches, "ephemeralPatches", limits)
                    .map_err(|r| invalid("patch", r))?,
            })
        }
        "reconnect" => {
            let last_timestamp = match env.last_timestamp {
                None | Some(Value::Null) => 0,
                Some(v) => engine::whole_number(&v)
                    .and_then(|t| u64::try_from(t).ok())
                    .ok_or_else(|| {
                        invalid(
                            "reconnect",
                            "`lastTimestamp` must be a non-negative integer".into(),
                        )
                    })?,
            };
            Ok(ClientFrame::Reconnect {
                last_timestamp,
                protocol_version: env.protocol_version.as_ref().and_then(Value::as_f64),
                document: patches(env.document_patches, "documentPatches", limits)
                    .map_err(|r| invalid("reconnect", r))?,
                ephemeral: patches(env.ephemeral_patches, "ephemeralPatches", limits)
                    .map_err(|r| invalid("reconnect", r))?,
            })
        }
        "auth-refresh" => match env.token {
            Some(Value::String(token)) => Ok(ClientFrame::AuthRefresh { token }),
            _ => Err(invalid("auth-refresh", "`token` must be a string".into())),
        },
        other => Err(DecodeError::UnknownType(other.to_owned())),
    }
}

fn patches(raw: Option<&RawValue>, name: &str, limits: &Limits) -> Result<Option<Patches>, String> {
    let Some(raw) = raw else { return Ok(None) };
    let value: Value = serde_json::from_str(raw.get()).map_err(|e| format!("`{name}`: {e}"))?;
    if value.is_null() {
        return Ok(None);
    }
    engine::validate_patches(&value, limits).map_err(|e: PatchError| format!("`{name}`: {e}"))?;
    let Value::Array(parsed) = value else {
        unreachable!("validate_patches accepts arrays only")
    };
    Ok(Some(Patches {
        parsed,
        raw: raw.to_owned(),
    }))
}

/// A frame to a client.
#[derive(Debug, Serialize)]
#[serde(tag = "type")]
pub enum ServerFrame<'a> {
    #[serde(rename = "ack")]
    Ack {
        #[serde(rename = "messageId")]
        message_id: &'a str,
        timestamp: u64,
    },
    #[serde(rename = "patch")]
    Patch {
        #[serde(rename = "documentPatches", skip_serializing_if = "Option::is_none")]
        document_patches: Option<&'a RawValue>,
        #[serde(rename = "ephemeralPatches", skip_serializing_if = "Option::is_none")]
        ephemeral_patches: Option<&'a RawValue>,
        #[serde(rename = "clientId")]
        client_id: &'a str,
        /// Present exactly when `documentPatches` is.
        #[serde(skip_serializing_if = "Option::is_none")]
        timestamp: Option<u64>,
    },
    #[serde(rename = "clientCount")]
    ClientCount { count: usize },
    #[serde(rename = "version-mismatch")]
    VersionMismatch {
        #[serde(rename = "serverProtocolVersion")]
        server_protocol_version: u64,
    },
    #[serde(rename = "resync")]
    Resync { since: u64 },
    #[serde(rename = "synced")]
    Synced { timestamp: u64 },
}

impl ServerFrame<'_> {
    /// Encodes the frame once; the result is shared by every session it goes to.
    pub fn encode(&self) -> ByteString {
        // Only strings, numbers and already-valid raw JSON: serialization cannot fail.
        ByteString::from(serde_json::to_string(self).unwrap_or_default())
    }
}

/// Wraps one patch object as a one-element patch list for a server-made `patch` frame.
pub fn single_patch(patch: &Value) -> Box<RawValue> {
    serde_json::value::to_raw_value(&[patch]).unwrap_or_else(|_| empty_list())
}

/// The `patch` frame of a reconnect reply: the document's diff since `since` (with the document's
/// clock as `timestamp`) and the presence of the other clients (`others`, one patch object), each
/// present only when it has an entry; `None` when neither has. The bytes are exactly those of
/// [`ServerFrame::Patch`] with `client_id: ""` over [`single_patch`] of
/// [`Document::diff_since`] and of `others`, but the diff is serialized straight from the document
/// into the frame, without building a copy of it (see [`Document::diff_view`]).
pub fn encode_reconnect_patch(doc: &Document, since: u64, others: &Value) -> Option<ByteString> {
    /// The fields of `ServerFrame::Patch`, in its order, with the diff as a view.
    #[derive(Serialize)]
    struct ReconnectPatch<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(rename = "documentPatches", skip_serializing_if = "Option::is_none")]
        document_patches: Option<&'a [engine::DiffView<'a>]>,
        #[serde(rename = "ephemeralPatches", skip_serializing_if = "Option::is_none")]
        ephemeral_patches: Option<&'a [Value]>,
        #[serde(rename = "clientId")]
        client_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        timestamp: Option<u64>,
    }
    let diff = doc.diff_view(since);
    let has_diff = !diff.is_empty();
    let has_others = others.as_object().is_some_and(|m| !m.is_empty());
    if !has_diff && !has_others {
        return None;
    }
    let frame = ReconnectPatch {
        kind: "patch",
        document_patches: has_diff.then_some(std::slice::from_ref(&diff)),
        ephemeral_patches: has_others.then_some(std::slice::from_ref(others)),
        client_id: "",
        timestamp: has_diff.then(|| doc.clock()),
    };
    // Only strings, numbers and JSON values: serialization cannot fail.
    Some(ByteString::from(
        serde_json::to_string(&frame).unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Ephemeral;
    use proptest::prelude::*;
    use serde_json::json;

    fn limits() -> Limits {
        Limits::default()
    }

    /// Client frames decode with their exact wire names, keeping the raw patch text for relaying.
    #[test]
    fn decodes_every_client_frame() {
        let text = r#"{"type":"patch","messageId":"c-1","documentPatches":[{"a/S":{"x": 1.50}}]}"#;
        match decode(text, &limits()).expect("decodes") {
            ClientFrame::Patch {
                message_id,
                document: Some(doc),
                ephemeral: None,
            } => {
                assert_eq!(message_id, "c-1");
                assert_eq!(doc.raw.get(), r#"[{"a/S":{"x": 1.50}}]"#);
                assert_eq!(doc.parsed, vec![json!({"a/S": {"x": 1.5}})]);
            }
            other => panic!("unexpected {other:?}"),
        }
        let text =
            r#"{"type":"reconnect","lastTimestamp":7,"protocolVersion":2,"ephemeralPatches":[]}"#;
        assert!(matches!(
            decode(text, &limits()),
            Ok(ClientFrame::Reconnect { last_timestamp: 7, protocol_version: Some(v), document: None, ephemeral: Some(e) }) if v == 2.0 && e.is_empty()
        ));
        assert!(matches!(
            decode(r#"{"type":"auth-refresh","token":"t"}"#, &limits()),
            Ok(ClientFrame::AuthRefresh { token }) if token == "t"
        ));
    }

    /// Garbage and unknown types are ignored; known frames with bad fields are invalid.
    #[test]
    fn classifies_bad_frames() {
        for text in [
            "",
            "null",
            "[]",
            "42",
            r#"{"no":"type"}"#,
            r#"{"type":5}"#,
            "{",
        ] {
            let err = decode(text, &limits()).unwrap_err();
            assert!(matches!(err, DecodeError::NotAFrame(_)), "{text}: {err}");
            assert!(err.is_ignored());
        }
        assert!(matches!(
            decode(r#"{"type":"hello"}"#, &limits()),
            Err(DecodeError::UnknownType(t)) if t == "hello"
        ));
        let invalid = [
            r#"{"type":"patch"}"#,
            r#"{"type":"patch","messageId":1}"#,
            r#"{"type":"patch","messageId":"m","documentPatches":"abc"}"#,
            r#"{"type":"patch","messageId":"m","documentPatches":[{"k":null}]}"#,
            r#"{"type":"patch","messageId":"m","ephemeralPatches":[[1]]}"#,
            r#"{"type":"reconnect","lastTimestamp":-1,"protocolVersion":2}"#,
            r#"{"type":"reconnect","lastTimestamp":"5","protocolVersion":2}"#,
            r#"{"type":"auth-refresh"}"#,
        ];
        for text in invalid {
            let err = decode(text, &limits()).unwrap_err();
            assert!(!err.is_ignored(), "{text}: {err}");
        }
    }

    /// Deep nesting is refused by the parser's depth limit instead of exhausting the stack.
    #[test]
    fn deep_nesting_is_refused() {
        let deep = format!(
            r#"{{"type":"patch","messageId":"m","documentPatches":[{{"k":{{"f":{}{}}}}}]}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert!(decode(&deep, &limits()).is_err());
    }

    /// The deepest field value a `patch` frame can carry still loads back: from a snapshot and
    /// from the write-ahead log (which stores the raw `documentPatches`). Both nest a value less
    /// deeply than the frame the parser already accepted.
    #[test]
    fn the_deepest_accepted_patch_loads_back() {
        let frame = |levels: usize| {
            format!(
                r#"{{"type":"patch","messageId":"m","documentPatches":[{{"k/S":{{"_exists":true,"f":{}1{}}}}}]}}"#,
                "[".repeat(levels),
                "]".repeat(levels)
            )
        };
        let deepest = (0..200)
            .take_while(|&levels| decode(&frame(levels), &limits()).is_ok())
            .last()
            .expect("a flat patch decodes");
        assert!(deepest < 199, "the parser's depth limit applies");
        let Ok(ClientFrame::Patch {
            document: Some(patches),
            ..
        }) = decode(&frame(deepest), &limits())
        else {
            panic!("the deepest patch decodes");
        };
        let logged: Vec<Value> =
            serde_json::from_str(patches.raw.get()).expect("the logged patches parse");
        assert_eq!(logged, patches.parsed);
        let mut doc = Document::default();
        doc.apply(&patches.parsed, &limits());
        let loaded = Document::decode_snapshot(&doc.encode_snapshot()).expect("snapshot loads");
        assert_eq!(loaded, doc);
    }

    /// Server frames encode with the exact wire names; `timestamp` only with document patches.
    #[test]
    fn encodes_server_frames() {
        let doc = single_patch(&json!({"a/S": {"x": 1}}));
        let cases = [
            (
                ServerFrame::Ack {
                    message_id: "m",
                    timestamp: 3,
                },
                json!({"type": "ack", "messageId": "m", "timestamp": 3}),
            ),
            (
                ServerFrame::Patch {
                    document_patches: Some(&doc),
                    ephemeral_patches: None,
                    client_id: "c",
                    timestamp: Some(4),
                },
                json!({"type": "patch", "documentPatches": [{"a/S": {"x": 1}}], "clientId": "c", "timestamp": 4}),
            ),
            (
                ServerFrame::ClientCount { count: 2 },
                json!({"type": "clientCount", "count": 2}),
            ),
            (
                ServerFrame::VersionMismatch {
                    server_protocol_version: 2,
                },
                json!({"type": "version-mismatch", "serverProtocolVersion": 2}),
            ),
            (
                ServerFrame::Resync { since: 5 },
                json!({"type": "resync", "since": 5}),
            ),
            (
                ServerFrame::Synced { timestamp: 6 },
                json!({"type": "synced", "timestamp": 6}),
            ),
        ];
        for (frame, want) in cases {
            let got: Value = serde_json::from_str(&frame.encode()).expect("valid json");
            assert_eq!(got, want);
        }
    }

    /// The reconnect reply as the room built it before `encode_reconnect_patch`: the diff as a
    /// `Value`, then `single_patch` of it and of the presence, in a `ServerFrame::Patch`.
    fn reconnect_patch_from_values(
        doc: &Document,
        since: u64,
        others: &Value,
    ) -> Option<ByteString> {
        let has_entries = |patch: &Value| patch.as_object().is_some_and(|m| !m.is_empty());
        let diff = doc.diff_since(since);
        let (doc_raw, eph_raw) = (
            has_entries(&diff).then(|| single_patch(&diff)),
            has_entries(others).then(|| single_patch(others)),
        );
        (doc_raw.is_some() || eph_raw.is_some()).then(|| {
            ServerFrame::Patch {
                document_patches: doc_raw.as_deref(),
                ephemeral_patches: eph_raw.as_deref(),
                client_id: "",
                timestamp: doc_raw.as_ref().map(|_| doc.clock()),
            }
            .encode()
        })
    }

    fn arb_field_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            "[a-z\"\\\n\t\u{1}\u{e9}\u{2028}\u{1F600}]{0,8}".prop_map(Value::String),
            any::<bool>().prop_map(Value::Bool),
            Just(Value::Null),
            proptest::collection::vec(-1e3..1e3f64, 0..5).prop_map(|v| json!(v)),
            Just(json!({"nested": {"a": [1, "b", null]}})),
        ]
    }

    /// One request's patch over 30 keys (key names that JSON escapes included): edits, creates,
    /// deletes that name extra fields, buffer deltas.
    fn arb_patch() -> impl Strategy<Value = Value> {
        let field = prop_oneof![
            Just("x"),
            Just("y"),
            Just("pts"),
            Just("lab\"el"),
            Just("_version")
        ];
        let fields = proptest::collection::vec((field, arb_field_value()), 0..5);
        let write = (0..30usize, prop::option::of(any::<bool>()), fields, 0..10u8).prop_map(
            |(k, exists, fields, buf)| {
                let mut map = serde_json::Map::new();
                if let Some(e) = exists {
                    map.insert("_exists".to_owned(), Value::Bool(e));
                }
                for (f, v) in fields {
                    map.insert(f.to_owned(), v);
                }
                if buf < 3 {
                    let len = usize::from(buf) * 3;
                    map.insert(
                        "pts".to_owned(),
                        json!({"__buf": 1, "len": len, "runs": [[1, [2.5, 3]]]}),
                    );
                }
                (format!("{k:02}-\u{e9}\"/Shape"), Value::Object(map))
            },
        );
        proptest::collection::vec(write, 1..6)
            .prop_map(|writes| Value::Object(writes.into_iter().collect()))
    }

    proptest! {
        /// The reconnect `patch` frame written straight from the document is byte for byte the
        /// frame built from `diff_since` values, for every clock a client may come back with,
        /// with and without the presence of other clients.
        #[test]
        fn reconnect_patch_matches_the_value_construction(
            requests in proptest::collection::vec(arb_patch(), 0..50),
            presence in proptest::collection::vec((0..3usize, arb_patch()), 0..4),
        ) {
            let limits = Limits::default();
            let mut doc = Document::default();
            for patch in &requests {
                doc.apply(std::slice::from_ref(patch), &limits);
            }
            let mut eph = Ephemeral::default();
            for (client, patch) in &presence {
                eph.apply(*client as u64, std::slice::from_ref(patch), &limits);
            }
            for me in [0, 99] {
                let others = eph.merged_except(me);
                for since in 0..=doc.clock() + 1 {
                    let new = encode_reconnect_patch(&doc, since, &others);
                    let old = reconnect_patch_from_values(&doc, since, &others);
                    prop_assert_eq!(new, old, "since {}", since);
                }
            }
        }
    }
}
