//! weft's own WebSocket over a raw TCP socket: the upgrade handshake and its HTTP refusals,
//! frames as the bytes a client writes (masked, fragmented, pipelined with the upgrade request,
//! malformed), and the close codes the server answers them with.
//!
//! The other modules talk through tungstenite, which only writes well-formed frames; here every
//! byte is written by hand.

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{ack, doc_patch, reconnect, spawn_app, TestApp, WAIT};

/// The sample key of RFC 6455 §1.3 and its `Sec-WebSocket-Accept`.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

#[path = "../common/client_frames.rs"]
mod client_frames;
use client_frames::{client_frame, client_header, CLOSE, CONTINUE, PING, PONG, TEXT};

/// A whole text frame holding `value` as JSON.
fn json_frame(value: &Value) -> Vec<u8> {
    client_frame(true, TEXT, value.to_string().as_bytes())
}

/// An upgrade request for `target` (path and query) with the given method and
/// `Sec-WebSocket-Version`.
fn upgrade_request(app: &TestApp, method: &str, target: &str, version: &str) -> String {
    format!(
        "{method} {target} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: {version}\r\n\r\n",
        app.addr
    )
}

/// A frame from the server (servers do not mask).
#[derive(Debug)]
struct ServerFrame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

impl ServerFrame {
    /// The status code and reason of a close frame.
    fn close(&self) -> (u16, String) {
        assert_eq!(self.opcode, CLOSE, "a close frame: {self:?}");
        assert!(self.payload.len() >= 2, "a close frame with a code");
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        let reason = String::from_utf8(self.payload[2..].to_vec()).expect("utf-8 reason");
        (code, reason)
    }
}

/// A complete server frame at the start of `buf`, and its length.
fn parse_server_frame(buf: &[u8]) -> Option<(ServerFrame, usize)> {
    let (&first, rest) = buf.split_first()?;
    let (&second, rest) = rest.split_first()?;
    assert_eq!(second & 0x80, 0, "server frames are not masked");
    let (len, rest) = match second & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)),
            &rest[2..],
        ),
        127 => (
            u64::from_be_bytes(rest.get(..8)?.try_into().ok()?),
            &rest[8..],
        ),
        len => (u64::from(len), rest),
    };
    let len = usize::try_from(len).expect("frame length fits");
    let payload = rest.get(..len)?.to_vec();
    let used = buf.len() - rest.len() + len;
    let frame = ServerFrame {
        fin: first & 0x80 != 0,
        opcode: first & 0x0f,
        payload,
    };
    Some((frame, used))
}

/// A raw client socket and the bytes read from it but not consumed yet.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Connects and writes `bytes` in one write.
    async fn send_first(app: &TestApp, bytes: &[u8]) -> Raw {
        let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(app.addr))
            .await
            .expect("connects within the wait")
            .expect("tcp connects");
        stream.write_all(bytes).await.expect("request sent");
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    /// Upgrades to the canvas endpoint of `room` as `client`, writing `then` in the same write
    /// as the request; returns after the 101 response.
    async fn open_with(app: &TestApp, room: &str, client: &str, then: &[u8]) -> Raw {
        let target = format!("/?roomId={room}&clientId={client}");
        let mut bytes = upgrade_request(app, "GET", &target, "13").into_bytes();
        bytes.extend_from_slice(then);
        let mut raw = Raw::send_first(app, &bytes).await;
        let head = raw.head().await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        let accept = header(&head, "sec-websocket-accept");
        assert_eq!(accept.as_deref(), Some(ACCEPT), "{head}");
        raw
    }

    async fn open(app: &TestApp, room: &str, client: &str) -> Raw {
        Raw::open_with(app, room, client, b"").await
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("frame sent");
    }

    /// Reads more bytes; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let read = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
            .await
            .expect("bytes or the end of the stream within the wait")
            .expect("the socket reads");
        read > 0
    }

    /// The HTTP response head (through its blank line); what follows stays buffered.
    async fn head(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return String::from_utf8(head).expect("utf-8 head");
            }
            assert!(
                self.fill().await,
                "the connection ended inside the response head"
            );
        }
    }

    /// The next frame, or `None` when the server closed the TCP connection.
    async fn frame(&mut self) -> Option<ServerFrame> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            if !self.fill().await {
                assert!(self.buf.is_empty(), "the connection ended inside a frame");
                return None;
            }
        }
    }

    /// Text frames (as JSON) up to and including the first of type `kind`; pings are skipped.
    async fn json_until(&mut self, kind: &str) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let frame = self.frame().await.expect("a frame before the end");
            match frame.opcode {
                PING => continue,
                TEXT => {
                    assert!(frame.fin, "the server does not fragment");
                    let value: Value = serde_json::from_slice(&frame.payload).expect("json");
                    let done = value["type"] == kind;
                    frames.push(value);
                    if done {
                        return frames;
                    }
                }
                _ => panic!("expected a text frame, got {frame:?}"),
            }
        }
    }

    /// The close frame the server sends next (text frames and pings before it are skipped),
    /// then the end of the TCP connection, with nothing in between.
    async fn close_then_eof(&mut self) -> (u16, String) {
        let close = loop {
            let frame = self.frame().await.expect("a close frame before the end");
            if frame.opcode == CLOSE {
                break frame.close();
            }
        };
        let after = self.frame().await;
        assert!(after.is_none(), "nothing after the close frame: {after:?}");
        close
    }
}

/// The value of header `name` in a response head.
fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

/// Sends `request` and reads the whole response: status, head, JSON body.
async fn http_refusal(app: &TestApp, request: &str) -> (u16, String, Value) {
    let mut raw = Raw::send_first(app, request.as_bytes()).await;
    let head = raw.head().await;
    while raw.fill().await {}
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let body = serde_json::from_slice(&raw.buf).expect("json body");
    (status, head, body)
}

/// A text frame split into three fragments (Text, Continue, Continue+fin), each in its own TCP
/// write, is handled as one protocol frame: the patch it carries is applied and acked.
#[tokio::test]
async fn text_frame_in_three_fragments_is_one_protocol_frame() {
    let app = spawn_app().await;
    let mut a = Raw::open(&app, "ws-fragments", "a").await;
    let text = doc_patch("m1", json!([{"s/Shape": {"_exists": true, "x": 1}}])).to_string();
    let bytes = text.as_bytes();
    let (first, rest) = bytes.split_at(10);
    let (second, third) = rest.split_at(rest.len() / 2);
    a.send(&client_frame(false, TEXT, first)).await;
    a.send(&client_frame(false, CONTINUE, second)).await;
    a.send(&client_frame(true, CONTINUE, third)).await;
    let frames = a.json_until("ack").await;
    assert_eq!(frames.last(), Some(&ack("m1", 1)));
    assert_eq!(app.metric("weft_frames_received").await, 1);
}

/// A ping between the fragments of a message is answered with a pong carrying the same payload
/// at once, before the message is complete, and the message is still handled.
#[tokio::test]
async fn ping_between_fragments_gets_its_pong_at_once() {
    let app = spawn_app().await;
    let mut a = Raw::open(&app, "ws-ping", "a").await;
    let text = doc_patch("m1", json!([{"s/Shape": {"_exists": true}}])).to_string();
    let (first, second) = text.as_bytes().split_at(7);
    a.send(&client_frame(false, TEXT, first)).await;
    a.send(&client_frame(true, PING, b"still there?")).await;
    let pong = loop {
        let frame = a.frame().await.expect("a pong before the end");
        if frame.opcode != TEXT {
            break frame;
        }
    };
    assert_eq!(pong.opcode, PONG, "{pong:?}");
    assert!(pong.fin);
    assert_eq!(pong.payload, b"still there?");
    a.send(&client_frame(true, CONTINUE, second)).await;
    assert_eq!(a.json_until("ack").await.last(), Some(&ack("m1", 1)));
}

/// A frame written one byte per TCP write (each its own segment) is put back together.
#[tokio::test]
async fn frame_written_one_byte_at_a_time_is_handled() {
    let app = spawn_app().await;
    let mut a = Raw::open(&app, "ws-bytewise", "a").await;
    a.stream.set_nodelay(true).expect("nodelay");
    let patch = doc_patch("m1", json!([{"s/Shape": {"_exists": true}}]));
    for byte in json_frame(&patch) {
        a.send(&[byte]).await;
    }
    assert_eq!(a.json_until("ack").await.last(), Some(&ack("m1", 1)));
}

/// Frames written in the same TCP write as the upgrade request, right after its blank line, are
/// not lost: they are read after the 101 and handled in order.
#[tokio::test]
async fn frames_sent_with_the_upgrade_request_are_not_lost() {
    let app = spawn_app().await;
    let patch = doc_patch("m1", json!([{"s/Shape": {"_exists": true}}]));
    let mut then = json_frame(&reconnect(0));
    then.extend(json_frame(&patch));
    let mut a = Raw::open_with(&app, "ws-pipelined", "a", &then).await;
    let frames = a.json_until("ack").await;
    let kinds: Vec<&str> = frames.iter().filter_map(|f| f["type"].as_str()).collect();
    assert!(kinds.contains(&"synced"), "{frames:?}");
    assert_eq!(frames.last(), Some(&ack("m1", 1)));
}

/// A frame announcing 2^40 bytes is refused with close 1009 from its header alone: the client
/// never sends the payload, and the server closes the TCP connection after the close frame.
#[tokio::test]
async fn frame_announcing_2_pow_40_bytes_closes_with_1009_before_its_payload() {
    let app = spawn_app().await;
    let mut a = Raw::open(&app, "ws-huge", "a").await;
    a.send(&client_header(true, TEXT, 1 << 40)).await;
    let (code, reason) = a.close_then_eof().await;
    assert_eq!(code, 1009, "{reason}");
    assert!(
        reason.contains("limit"),
        "the reason gives the limit: {reason}"
    );
}

/// An unmasked client frame (RFC 6455 §5.1) gets close 1002.
#[tokio::test]
async fn unmasked_frame_closes_with_1002() {
    let app = spawn_app().await;
    let mut a = Raw::open(&app, "ws-unmasked", "a").await;
    let text = doc_patch("m1", json!([{"s/Shape": {"_exists": true}}])).to_string();
    let mut frame = vec![0x81, text.len() as u8];
    frame.extend_from_slice(text.as_bytes());
    a.send(&frame).await;
    let (code, reason) = a.close_then_eof().await;
    assert_eq!(code, 1002, "{reason}");
    assert_eq!(app.metric("weft_patches_applied").await, 0);
}

/// A text message whose invalid UTF-8 sequence is split across two fragments (a lead byte at
/// the end of one, a byte that cannot follow it at the start of the next) gets close 1007.
#[tokio::test]
async fn invalid_utf8_split_across_fragments_closes_with_1007() {
    let app = spawn_app().await;
    let mut a = Raw::open(&app, "ws-utf8", "a").await;
    a.send(&client_frame(false, TEXT, b"{\"type\":\"patch\xc3"))
        .await;
    a.send(&client_frame(true, CONTINUE, b"(\"}")).await;
    let (code, reason) = a.close_then_eof().await;
    assert_eq!(code, 1007, "{reason}");
}

/// The client's close with code 4000 is answered with a close frame carrying 4000, then the
/// server closes the TCP connection: the close frame arrives before the end of the stream.
#[tokio::test]
async fn client_close_4000_is_echoed_then_tcp_is_closed() {
    let app = spawn_app().await;
    let mut a = Raw::open(&app, "ws-close", "a").await;
    a.send(&json_frame(&reconnect(0))).await;
    a.json_until("synced").await;
    let mut payload = 4000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"going away");
    a.send(&client_frame(true, CLOSE, &payload)).await;
    let (code, _) = a.close_then_eof().await;
    assert_eq!(code, 4000);
}

/// An upgrade to a path without a WebSocket endpoint gets HTTP 404 with a JSON body, and the
/// connection is closed after it.
#[tokio::test]
async fn upgrade_to_an_unknown_path_gets_404_with_json() {
    let app = spawn_app().await;
    let request = upgrade_request(&app, "GET", "/nope?roomId=r&clientId=c", "13");
    let (status, head, body) = http_refusal(&app, &request).await;
    assert_eq!(status, 404, "{head}");
    assert_eq!(
        header(&head, "content-type").as_deref(),
        Some("application/json")
    );
    let error = body["error"].as_str().expect("error text");
    assert!(error.contains("/nope"), "{error}");
}

/// An upgrade with `Sec-WebSocket-Version: 12` (only 13 is spoken), or with a key that is not
/// 16 bytes in base64, gets HTTP 400 with a JSON body and no connection.
#[tokio::test]
async fn upgrade_with_websocket_version_12_or_a_bad_key_gets_400() {
    let app = spawn_app().await;
    let version_12 = upgrade_request(&app, "GET", "/?roomId=r&clientId=c", "12");
    let bad_key =
        upgrade_request(&app, "GET", "/?roomId=r&clientId=c", "13").replace(KEY, "c2hvcnQ=");
    for request in [version_12, bad_key] {
        let (status, head, body) = http_refusal(&app, &request).await;
        assert_eq!(status, 400, "{head}");
        let error = body["error"].as_str().expect("error text");
        assert!(error.contains("handshake"), "{error}");
    }
    assert_eq!(app.metric("weft_connections_active").await, 0);
}

/// A POST carrying the upgrade headers to `/` gets HTTP 405 (a WebSocket upgrade must be a GET)
/// with a JSON body.
#[tokio::test]
async fn post_upgrade_to_the_canvas_endpoint_gets_405() {
    let app = spawn_app().await;
    let request = upgrade_request(&app, "POST", "/?roomId=r&clientId=c", "13");
    let (status, head, body) = http_refusal(&app, &request).await;
    assert_eq!(status, 405, "{head}");
    assert!(body["error"].is_string(), "{body}");
}

/// A plain `GET /api/room` without an upgrade gets 426 with the EdgeBase error shape:
/// `{"code": "UPGRADE_REQUIRED", "message": ...}`.
#[tokio::test]
async fn plain_get_of_the_game_endpoint_gets_426_upgrade_required() {
    let app = spawn_app().await;
    let (status, body) = app.http_get("/api/room?namespace=n&id=r").await;
    assert_eq!(status, 426);
    let body: Value = serde_json::from_str(&body).expect("json body");
    assert_eq!(body["code"], "UPGRADE_REQUIRED", "{body}");
    let message = body["message"].as_str().expect("message text");
    assert!(message.contains("WebSocket"), "{message}");
}

/// A plain request pipelined before the upgrade request in one TCP write is answered first,
/// then the 101, and the socket works as a WebSocket.
#[tokio::test]
async fn request_pipelined_before_the_upgrade_is_answered_first() {
    let app = spawn_app().await;
    let mut bytes = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", app.addr).into_bytes();
    bytes.extend(upgrade_request(&app, "GET", "/?roomId=ws-pipe&clientId=a", "13").into_bytes());
    let mut raw = Raw::send_first(&app, &bytes).await;
    let head = raw.head().await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let length: usize = header(&head, "content-length")
        .expect("a content length")
        .parse()
        .expect("numeric length");
    while raw.buf.len() < length {
        assert!(raw.fill().await, "the body before the end");
    }
    let body: Vec<u8> = raw.buf.drain(..length).collect();
    let health: Value = serde_json::from_slice(&body).expect("json body");
    assert_eq!(health["status"], "ok");
    let head = raw.head().await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    raw.send(&json_frame(&doc_patch(
        "m1",
        json!([{"s/Shape": {"_exists": true}}]),
    )))
    .await;
    assert_eq!(raw.json_until("ack").await.last(), Some(&ack("m1", 1)));
}
