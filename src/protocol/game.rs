//! The EdgeBase Rooms v2 protocol (`GET /api/room?namespace=&id=`): client frame decoding,
//! server frame encoding, error codes and close codes. Text frames only.

use bytestring::ByteString;
use serde::Serialize;
use serde_json::{Map, Value};

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
        let kind = match map.get("type") {
            Some(Value::String(kind)) => kind.clone(),
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
                options: map.remove("options").unwrap_or(Value::Null),
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
                let payload = match map.remove("payload") {
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
    /// A mutation would make the room's state larger than `maxStateSize`.
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
