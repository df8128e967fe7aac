//! One canvas-store connection: connecting, syncing, and reading server frames cheaply.
//!
//! Incoming frames are classified by scanning for a few keys instead of parsing them: at tens
//! of thousands of broadcasts per second, full JSON parsing would make the load generator, not
//! the server, the bottleneck. The servers under test write compact JSON (`"key":value`).

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The connect URL of `client` in `room`.
pub fn room_url(base: &str, room: &str, client: &str, token: &str) -> String {
    format!(
        "{}/?roomId={room}&clientId={client}&token={token}",
        base.trim_end_matches('/')
    )
}

/// Opens a WebSocket with TCP_NODELAY (small frames must not wait for Nagle).
pub async fn connect(url: &str) -> Result<Ws, String> {
    // A 16 KiB read buffer instead of tungstenite's 128 KiB: 10,000 idle sockets would otherwise
    // take over a GiB here. It grows for larger frames (a large document's first sync).
    let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
    match tokio_tungstenite::connect_async_with_config(url, Some(config), true).await {
        Ok((ws, _)) => Ok(ws),
        Err(e) => Err(format!("connect: {e}")),
    }
}

/// A server frame, as far as the load generator cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    Ack {
        message_id: &'a str,
        timestamp: Option<u64>,
    },
    /// Another client's patch, relayed: `stamp` is its send time (field `t`).
    Broadcast {
        stamp: Option<u64>,
        timestamp: Option<u64>,
    },
    /// A server-made patch (clientId ""): the reconnect diff or others' presence.
    Reply {
        timestamp: Option<u64>,
    },
    Synced {
        timestamp: Option<u64>,
    },
    Other,
}

/// Classifies a text frame without parsing it.
pub fn classify(text: &str) -> Incoming<'_> {
    match frame_type(text) {
        Some("ack") => Incoming::Ack {
            message_id: string_after(text, "\"messageId\":\"").unwrap_or(""),
            timestamp: number_after_last(text, "\"timestamp\":"),
        },
        Some("patch") if text.contains("\"clientId\":\"\"") => Incoming::Reply {
            timestamp: number_after_last(text, "\"timestamp\":"),
        },
        Some("patch") => Incoming::Broadcast {
            stamp: stamp_of(text),
            timestamp: number_after_last(text, "\"timestamp\":"),
        },
        Some("synced") => Incoming::Synced {
            timestamp: number_after_last(text, "\"timestamp\":"),
        },
        _ => Incoming::Other,
    }
}

/// The frame's `type` (the first `"type":"..."` in it: servers write it first).
fn frame_type(text: &str) -> Option<&str> {
    string_after(text, "\"type\":\"")
}

/// The send time carried in a patch: the first `"t":` number.
pub fn stamp_of(text: &str) -> Option<u64> {
    let at = text.find("\"t\":")? + 4;
    leading_number(&text[at..])
}

fn string_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

/// The number after the last `key`: the frame-level `timestamp` follows the patches.
fn number_after_last(text: &str, key: &str) -> Option<u64> {
    let at = text.rfind(key)? + key.len();
    leading_number(&text[at..])
}

fn leading_number(s: &str) -> Option<u64> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    s[..digits].parse().ok()
}

/// What a `reconnect` got back.
#[derive(Debug, Clone, Copy)]
pub struct Synced {
    /// The room clock in `synced`: the client's next `lastTimestamp`.
    pub timestamp: u64,
    /// A diff patch (clientId "" with a `timestamp`) came before `synced`.
    pub got_diff: bool,
    /// Bytes of text received up to and including `synced`.
    pub bytes: usize,
}

/// Sends `reconnect` with `last_timestamp` and reads until `synced` (or `limit` passes).
pub async fn sync(ws: &mut Ws, last_timestamp: u64, limit: Duration) -> Result<Synced, String> {
    let started = Instant::now();
    let hello =
        format!(r#"{{"type":"reconnect","lastTimestamp":{last_timestamp},"protocolVersion":2}}"#);
    ws.send(Message::text(hello))
        .await
        .map_err(|e| format!("send reconnect: {e}"))?;
    let mut got_diff = false;
    let mut bytes = 0;
    let deadline = tokio::time::Instant::from_std(started + limit);
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err("timed out waiting for synced".into()),
            Ok(None) => return Err("closed before synced".into()),
            Ok(Some(Err(e))) => return Err(format!("read before synced: {e}")),
            Ok(Some(Ok(msg))) => msg,
        };
        match msg {
            Message::Text(text) => {
                bytes += text.len();
                match classify(&text) {
                    Incoming::Synced { timestamp } => {
                        return Ok(Synced {
                            timestamp: timestamp.unwrap_or(0),
                            got_diff,
                            bytes,
                        })
                    }
                    Incoming::Reply { timestamp: Some(_) } => got_diff = true,
                    _ => {}
                }
            }
            Message::Close(frame) => return Err(format!("closed before synced: {frame:?}")),
            _ => {}
        }
    }
}

/// A close frame's code and reason, for reports.
pub fn close_reason(msg: &Message) -> Option<String> {
    match msg {
        Message::Close(Some(frame)) => Some(format!("{} {}", u16::from(frame.code), frame.reason)),
        Message::Close(None) => Some("close without code".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames of weft's and the reference server's shapes are classified right.
    #[test]
    fn classifies_server_frames() {
        assert_eq!(
            classify(r#"{"type":"ack","messageId":"17","timestamp":42}"#),
            Incoming::Ack {
                message_id: "17",
                timestamp: Some(42)
            }
        );
        assert_eq!(
            classify(
                r#"{"type":"patch","documentPatches":[{"c-s0/Position":{"t":123,"x":1.5}}],"clientId":"c","timestamp":9}"#
            ),
            Incoming::Broadcast {
                stamp: Some(123),
                timestamp: Some(9)
            }
        );
        assert_eq!(
            classify(
                r#"{"type":"patch","ephemeralPatches":[{"c/Cursor":{"t":5}}],"clientId":"c"}"#
            ),
            Incoming::Broadcast {
                stamp: Some(5),
                timestamp: None
            }
        );
        assert_eq!(
            classify(r#"{"type":"patch","documentPatches":[{}],"clientId":"","timestamp":3}"#),
            Incoming::Reply { timestamp: Some(3) }
        );
        assert_eq!(
            classify(r#"{"type":"synced","timestamp":0}"#),
            Incoming::Synced { timestamp: Some(0) }
        );
        assert_eq!(
            classify(r#"{"type":"clientCount","count":2}"#),
            Incoming::Other
        );
    }
}
