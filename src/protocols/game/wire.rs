//! The EdgeBase Rooms v2 protocol (`GET /api/room?namespace=&id=`): client frame decoding,
//! server frame encoding, error codes and close codes. Text frames only.
//!
//! The data a client hands to a room (a `send`'s `payload`, a `join`'s `options`) nests at most
//! [`MAX_VALUE_DEPTH`] arrays and objects. Handlers store that data in the room's state, which is
//! saved inside a record with its own nesting; a small limit keeps every saved state far from
//! any parser's recursion limit (and the SDKs echo the state back in their `join` frames).

use bytestring::ByteString;
use serde::Serialize;
use serde_json::{Map, Value};

/// How deeply a `payload` or `options` value may nest arrays and objects (`1` and `"a"` nest 0
/// levels, `[]` and `{"a": 1}` 1, `{"a": [1]}` 2). Deeper values are refused with
/// `INVALID_MESSAGE` before a handler sees them.
pub const MAX_VALUE_DEPTH: usize = 32;

/// A frame from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    /// The first frame of a connection; later ones refresh the token.
    Auth {
        token: String,
    },
    /// Join after auth. The `last*` fields are the client's local copies, which the server does
    /// not adopt (its state is authoritative); `options` is weft's extension for join gates.
    Join {
        options: Value,
    },
    /// Runs a server-side action. A missing or empty `actionType` is refused with
    /// `INVALID_ACTION`, a missing `requestId` is answered with an empty one.
    Send {
        action_type: Option<String>,
        payload: Value,
        request_id: String,
    },
    Ping,
    Leave,
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, not an object, or without a string `type`: `INVALID_JSON`, close 4000.
    #[error("message is not valid JSON: {0}")]
    InvalidJson(String),
    /// A well-formed frame of a type this server does not speak: `UNKNOWN_TYPE`, kept open.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// A known type with a field of the wrong kind: `INVALID_MESSAGE`, kept open.
    #[error("invalid {kind} message: {reason}")]
    Invalid { kind: &'static str, reason: String },
}

impl ClientFrame {
    pub fn decode(text: &str) -> Result<ClientFrame, DecodeError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
        let Value::Object(mut map) = value else {
            return Err(DecodeError::InvalidJson("expected a JSON object".into()));
        };
        let kind = match map.remove("type") {
            Some(Value::String(kind)) => kind,
            _ => {
                return Err(DecodeError::InvalidJson(
                    "missing string field `type`".into(),
                ))
            }
        };
        match kind.as_str() {
            "auth" => match map.remove("token") {
                Some(Value::String(token)) => Ok(ClientFrame::Auth { token }),
                _ => Err(invalid("auth", "`token` must be a string")),
            },
            "join" => Ok(ClientFrame::Join {
                options: within_depth("join", "options", map.remove("options"))?
                    .unwrap_or(Value::Null),
            }),
            "send" => {
                let request_id = match map.remove("requestId") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(id)) => id,
                    Some(Value::Number(n)) => n.to_string(),
                    Some(_) => return Err(invalid("send", "`requestId` must be a string")),
                };
                let action_type = match map.remove("actionType") {
                    Some(Value::String(t)) if !t.is_empty() => Some(t),
                    _ => None,
                };
                let payload = match within_depth("send", "payload", map.remove("payload"))? {
                    None | Some(Value::Null) => Value::Object(Map::new()),
                    Some(payload) => payload,
                };
                Ok(ClientFrame::Send {
                    action_type,
                    payload,
                    request_id,
                })
            }
            "ping" => Ok(ClientFrame::Ping),
            "leave" => Ok(ClientFrame::Leave),
            _ => Err(DecodeError::UnknownType(kind)),
        }
    }
}

/// `value`, unless it nests deeper than [`MAX_VALUE_DEPTH`].
fn within_depth(
    kind: &'static str,
    field: &str,
    value: Option<Value>,
) -> Result<Option<Value>, DecodeError> {
    match value.as_ref().map(depth) {
        Some(levels) if levels > MAX_VALUE_DEPTH => Err(invalid(
            kind,
            &format!(
                "`{field}` nests {levels} levels of arrays and objects; at most {MAX_VALUE_DEPTH} are allowed"
            ),
        )),
        _ => Ok(value),
    }
}

/// How many arrays and objects `value` nests (see [`MAX_VALUE_DEPTH`]); linear in its size, and
/// without recursion.
pub fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(value, 0)];
    while let Some((value, level)) = pending.pop() {
        match value {
            Value::Array(items) => pending.extend(items.iter().map(|v| (v, level + 1))),
            Value::Object(fields) => pending.extend(fields.values().map(|v| (v, level + 1))),
            _ => continue,
        }
        deepest = deepest.max(level + 1);
    }
    deepest
}

fn invalid(kind: &'static str, reason: &str) -> DecodeError {
    DecodeError::Invalid {
        kind,
        reason: reason.to_owned(),
    }
}

/// The `code` of an `error` (or `action_error`) frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    AuthFailed,
    AuthRefreshFailed,
    AuthTimeout,
    InvalidJson,
    NotAuthenticated,
    RateLimited,
    InvalidAction,
    NoHandler,
    Unauthenticated,
    JoinDenied,
    RoomFull,
    // weft's additions.
    /// A frame of a type this server does not speak.
    UnknownType,
    /// A known frame with a field of the wrong kind.
    InvalidMessage,
    /// `send` before `join`.
    NotJoined,
    /// A mutation would make the room's state larger than `maxStateSize`, or nest it deeper
    /// than the game layer allows.
    StateTooLarge,
    /// An action handler failed (its own error message is in `message`).
    ActionFailed,
    /// An action handler did not finish within the namespace's action timeout.
    ActionTimeout,
    /// The room could not be loaded or saved; the client may retry.
    RoomUnavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::AuthFailed => "AUTH_FAILED",
            ErrorCode::AuthRefreshFailed => "AUTH_REFRESH_FAILED",
            ErrorCode::AuthTimeout => "AUTH_TIMEOUT",
            ErrorCode::InvalidJson => "INVALID_JSON",
            ErrorCode::NotAuthenticated => "NOT_AUTHENTICATED",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::InvalidAction => "INVALID_ACTION",
            ErrorCode::NoHandler => "NO_HANDLER",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::JoinDenied => "JOIN_DENIED",
            ErrorCode::RoomFull => "ROOM_FULL",
            ErrorCode::UnknownType => "UNKNOWN_TYPE",
            ErrorCode::InvalidMessage => "INVALID_MESSAGE",
            ErrorCode::NotJoined => "NOT_JOINED",
            ErrorCode::StateTooLarge => "STATE_TOO_LARGE",
            ErrorCode::ActionFailed => "ACTION_FAILED",
            ErrorCode::ActionTimeout => "ACTION_TIMEOUT",
            ErrorCode::RoomUnavailable => "ROOM_UNAVAILABLE",
        }
    }
}

/// WebSocket close codes of this protocol.
pub mod close {
    /// A protocol violation (invalid JSON, a frame before auth, binary frames).
    pub const PROTOCOL: u16 = 4000;
    pub const AUTH_TIMEOUT: u16 = 4001;
    pub const AUTH_FAILED: u16 = 4002;
    /// The join was refused (`JOIN_DENIED` or `ROOM_FULL`).
    pub const JOIN_DENIED: u16 = 4003;
    pub const KICKED: u16 = 4004;
    /// The client left (after its `leave` frame).
    pub const LEFT: u16 = 4005;
    /// Nothing heard from the client for the stale-socket timeout.
    pub const HEARTBEAT_TIMEOUT: u16 = 4007;
}

/// Frames the server sends, each encoded once (a broadcast shares the encoded text).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    AuthSuccess {
        #[serde(rename = "userId")]
        user_id: &'a str,
        #[serde(rename = "connectionId")]
        connection_id: &'a str,
    },
    AuthRefreshed {
        #[serde(rename = "userId")]
        user_id: &'a str,
        #[serde(rename = "connectionId")]
        connection_id: &'a str,
    },
    #[serde(rename_all = "camelCase")]
    Sync {
        shared_state: &'a Value,
        shared_version: u64,
        player_state: &'a Value,
        player_version: u64,
    },
    SharedDelta {
        delta: &'a Map<String, Value>,
        version: u64,
    },
    PlayerDelta {
        delta: &'a Map<String, Value>,
        version: u64,
    },
    #[serde(rename_all = "camelCase")]
    ActionResult {
        request_id: &'a str,
        action_type: &'a str,
        result: &'a Value,
    },
    #[serde(rename_all = "camelCase")]
    ActionError {
        request_id: &'a str,
        action_type: &'a str,
        code: &'a str,
        message: &'a str,
    },
    #[serde(rename_all = "camelCase")]
    Message {
        message_type: &'a str,
        data: &'a Value,
    },
    Kicked,
    Error {
        code: &'a str,
        message: &'a str,
    },
    Pong,
}

impl ServerFrame<'_> {
    pub fn encode(&self) -> ByteString {
        // Serializing these types (string keys, Values) cannot fail.
        ByteString::from(serde_json::to_string(self).unwrap_or_default())
    }
}

/// An `error` frame.
pub fn error_frame(code: ErrorCode, message: &str) -> ByteString {
    ServerFrame::Error {
        code: code.as_str(),
        message,
    }
    .encode()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_what_the_sdks_send() {
        assert_eq!(
            ClientFrame::decode(r#"{"type":"auth","token":"t","sdkVersion":"0.2.9"}"#),
            Ok(ClientFrame::Auth { token: "t".into() })
        );
        assert_eq!(
            ClientFrame::decode(
                r#"{"type":"join","lastSharedState":{},"lastSharedVersion":0,"lastPlayerState":{},"lastPlayerVersion":0}"#
            ),
            Ok(ClientFrame::Join {
                options: Value::Null
            })
        );
        assert_eq!(
            ClientFrame::decode(r#"{"type":"send","actionType":"MOVE","requestId":"r1"}"#),
            Ok(ClientFrame::Send {
                action_type: Some("MOVE".into()),
                payload: json!({}),
                request_id: "r1".into()
            })
        );
        assert_eq!(
            ClientFrame::decode(r#"{"type":"send","payload":1,"requestId":"r1"}"#),
            Ok(ClientFrame::Send {
                action_type: None,
                payload: json!(1),
                request_id: "r1".into()
            })
        );
        assert_eq!(
            ClientFrame::decode(r#"{"type":"leave"}"#),
            Ok(ClientFrame::Leave)
        );
    }

    #[test]
    fn refuses_what_is_not_a_frame() {
        for bad in ["", "nope", "[]", "{}", r#"{"type":1}"#] {
            assert!(
                matches!(ClientFrame::decode(bad), Err(DecodeError::InvalidJson(_))),
                "{bad}"
            );
        }
        assert_eq!(
            ClientFrame::decode(r#"{"type":"signal"}"#),
            Err(DecodeError::UnknownType("signal".into()))
        );
        assert!(matches!(
            ClientFrame::decode(r#"{"type":"auth","token":5}"#),
            Err(DecodeError::Invalid { .. })
        ));
    }

    /// `x` wrapped in `levels` arrays.
    fn nested(levels: usize, x: Value) -> Value {
        (0..levels).fold(x, |inner, _| json!([inner]))
    }

    /// Depth counts arrays and objects on the deepest path; scalars add nothing.
    #[test]
    fn depth_counts_nested_arrays_and_objects() {
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!("a")), 0);
        assert_eq!(depth(&json!([])), 1);
        assert_eq!(depth(&json!({"a": 1, "b": [1, {"c": {}}]})), 4);
        assert_eq!(depth(&nested(200, json!({}))), 201);
    }

    /// A `payload` or `options` nesting more than [`MAX_VALUE_DEPTH`] levels is refused (with the
    /// depth and the limit in the reason); one at the limit is decoded.
    #[test]
    fn values_deeper_than_the_limit_are_refused() {
        let deepest = nested(MAX_VALUE_DEPTH - 1, json!({}));
        let too_deep = nested(MAX_VALUE_DEPTH, json!({}));
        let send = |payload: &Value| {
            ClientFrame::decode(
                &json!({"type": "send", "actionType": "MOVE", "payload": payload}).to_string(),
            )
        };
        let join = |options: &Value| {
            ClientFrame::decode(&json!({"type": "join", "options": options}).to_string())
        };
        assert!(
            matches!(send(&deepest), Ok(ClientFrame::Send { payload, .. }) if payload == deepest)
        );
        assert!(matches!(join(&deepest), Ok(ClientFrame::Join { options }) if options == deepest));
        let reason = format!(
            "nests {} levels of arrays and objects; at most {MAX_VALUE_DEPTH} are allowed",
            MAX_VALUE_DEPTH + 1
        );
        assert_eq!(
            send(&too_deep),
            Err(invalid("send", &format!("`payload` {reason}")))
        );
        assert_eq!(
            join(&too_deep),
            Err(invalid("join", &format!("`options` {reason}")))
        );
    }

    #[test]
    fn encodes_the_specified_shapes() {
        let delta = json!({"a.b": 1});
        let frame = ServerFrame::SharedDelta {
            delta: delta.as_object().unwrap(),
            version: 2,
        }
        .encode();
        assert_eq!(
            &*frame,
            r#"{"type":"shared_delta","delta":{"a.b":1},"version":2}"#
        );
        let frame = ServerFrame::Sync {
            shared_state: &json!({}),
            shared_version: 1,
            player_state: &json!({"hp": 1}),
            player_version: 3,
        }
        .encode();
        assert_eq!(
            &*frame,
            r#"{"type":"sync","sharedState":{},"sharedVersion":1,"playerState":{"hp":1},"playerVersion":3}"#
        );
        assert_eq!(&*ServerFrame::Kicked.encode(), r#"{"type":"kicked"}"#);
        assert_eq!(
            &*error_frame(ErrorCode::RoomFull, "full"),
            r#"{"type":"error","code":"ROOM_FULL","message":"full"}"#
        );
    }
}
