//! The server end of a WebSocket (RFC 6455) on an upgraded TCP socket.
//!
//! weft speaks WebSocket itself instead of through actix-ws because actix-ws runs the socket
//! through actix-http's HTTP/1 dispatcher for the socket's whole life, and that dispatcher keeps
//! two 8 KiB buffers per connection: most of the memory an idle connection costs. This socket
//! holds no buffer while idle (bytes are read into a stack chunk and kept only while a frame is
//! incomplete; the write buffer is released once flushed), and it is driven by the connection's
//! own task, so a frame from a room reaches the kernel without another hop (BENCHMARKS.md: 4.13
//! KiB per idle connection, against 20.1 KiB through actix-ws). Frame parsing and
//! encoding are actix-http's (`ws::Parser`); this module adds reading, writing, joining
//! continuation frames and the limits on unfinished messages: the size limit, a deadline for
//! completing a message ([`WebSocket`]), and one byte budget for all unfinished messages of all
//! connections together ([`AssemblyBudget`]), charged before their bytes are buffered.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_http::ws::{CloseCode, OpCode, Parser, ProtocolError};
use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::rooms::CloseReason;

/// Bytes read per system call when no frame is in progress (a stack buffer, not kept).
const READ_CHUNK: usize = 8 * 1024;

/// A complete message from the client.
#[derive(Debug, PartialEq)]
pub enum Message {
    Text(ByteString),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    /// The client's closing handshake, with its status code (1000 when it gave none).
    Close(u16),
}

/// Why reading stopped.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// The peer closed the TCP connection (or it broke): there is nobody left to tell.
    #[error("connection closed by the peer")]
    Gone,
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A message (after continuation frames are joined) above the limit.
    #[error("message too big: limit is {0} bytes")]
    TooBig(usize),
    #[error("text frame is not valid UTF-8")]
    InvalidUtf8,
    #[error("websocket protocol error: {0}")]
    Protocol(String),
    /// A message still unfinished this long after its first bytes arrived.
    #[error("message not completed within {} ms", .0.as_millis())]
    AssemblyTimeout(Duration),
    /// The server-wide budget for unfinished messages has no room for this one's bytes.
    #[error("server busy: no room for unfinished messages, retry later")]
    AssemblyBudget,
}

impl WsError {
    /// The close frame that answers this error; `None` when the peer is gone.
    pub fn close_reason(&self) -> Option<CloseReason> {
        let code = match self {
            WsError::Gone | WsError::Io(_) => return None,
            WsError::TooBig(_) => 1009,
            WsError::InvalidUtf8 => 1007,
            WsError::Protocol(_) => 1002,
            // The client broke the rules: policy violation.
            WsError::AssemblyTimeout(_) => 1008,
            // Not the client's fault: the server is short of memory for now; try again later.
            WsError::AssemblyBudget => 1013,
        };
        Some(CloseReason::new(code, self.to_string()))
    }
}

/// A message being joined from continuation frames.
struct Fragments {
    opcode: OpCode,
    data: BytesMut,
}

/// The bytes every connection together may hold for messages not yet complete (a frame whose
/// payload is still arriving, fragments waiting for their continuation). A reader takes its
/// share before buffering, and gives it back when the message is complete or the reader dropped.
pub struct AssemblyBudget {
    limit: usize,
    used: AtomicUsize,
}

impl AssemblyBudget {
    pub fn new(limit: usize) -> Arc<AssemblyBudget> {
        Arc::new(AssemblyBudget {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes taken now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `bytes` if they fit; false (and nothing taken) if not.
    fn try_take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Turns the bytes a client sends into messages: parses frames, joins continuation frames,
/// enforces the size limit and charges unfinished messages to the [`AssemblyBudget`]. No IO,
/// so it is unit-tested and fuzzed on its own.
pub struct FrameReader {
    /// Received bytes not yet parsed: empty (no allocation) between messages.
    buf: BytesMut,
    fragments: Option<Box<Fragments>>,
    max_message: usize,
    budget: Arc<AssemblyBudget>,
    /// Bytes of `budget` this reader holds.
    charged: usize,
}

/// An upgraded connection: reads messages, queues and flushes frames.
pub struct WebSocket {
    io: TcpStream,
    reader: FrameReader,
    /// Encoded frames not yet written: empty (no allocation) once flushed.
    write_buf: BytesMut,
    /// A message must be complete this long after its first bytes arrived.
    assembly_timeout: Duration,
    /// When the first bytes of the unfinished message arrived (`None` between messages).
    assembling_since: Option<Instant>,
}

impl WebSocket {
    /// A WebSocket on `io`, whose handshake is done; `received` holds bytes the client sent
    /// right after its upgrade request. `reader` sets the message limits; a message not
    /// complete within `assembly_timeout` of its first bytes ends the connection.
    pub fn new(
        io: TcpStream,
        received: BytesMut,
        mut reader: FrameReader,
        assembly_timeout: Duration,
    ) -> WebSocket {
        reader.push(&received);
        WebSocket {
            io,
            reader,
            write_buf: BytesMut::new(),
            assembly_timeout,
            assembling_since: None,
        }
    }

    /// The next message. Cancel-safe: bytes read before a cancellation stay buffered, and an
    /// unfinished message keeps its deadline.
    pub async fn recv(&mut self) -> Result<Message, WsError> {
        loop {
            if let Some(message) = self.reader.next_message()? {
                if matches!(message, Message::Text(_) | Message::Binary(_)) {
                    // The next message's deadline starts with its own first bytes.
                    self.assembling_since = None;
                }
                return Ok(message);
            }
            if !self.reader.in_progress() {
                self.assembling_since = None;
                self.fill().await?;
                continue;
            }
            // Pings and pongs between fragments do not extend the deadline.
            let since = *self.assembling_since.get_or_insert_with(Instant::now);
            match tokio::time::timeout_at(since + self.assembly_timeout, self.fill()).await {
                Ok(filled) => filled?,
                Err(_) => return Err(WsError::AssemblyTimeout(self.assembly_timeout)),
            }
        }
    }

    /// Queues a text frame (sent by the next [`WebSocket::flush`]).
    pub fn queue_text(&mut self, text: &str) {
        Parser::write_message(&mut self.write_buf, text, OpCode::Text, true, false);
    }

    pub fn queue_ping(&mut self) {
        Parser::write_message(&mut self.write_buf, b"", OpCode::Ping, true, false);
    }

    pub fn queue_pong(&mut self, payload: &[u8]) {
        Parser::write_message(&mut self.write_buf, payload, OpCode::Pong, true, false);
    }

    /// Bytes queued and not yet flushed.
    pub fn queued(&self) -> usize {
        self.write_buf.len()
    }

    /// Writes every queued frame. Cancel-safe: what is not written stays queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        while self.write_buf.has_remaining() {
            let written = self.io.write(&self.write_buf).await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.write_buf.advance(written);
        }
        // Hold no memory while idle; under load a fresh buffer per batch is cheap.
        self.write_buf = BytesMut::new();
        Ok(())
    }

    /// Queues a text frame and flushes, giving up on a peer that does not take it within
    /// `limit`. False when the connection is unusable.
    pub async fn send_text(&mut self, text: &str, limit: Duration) -> bool {
        self.queue_text(text);
        self.flush_within(limit).await
    }

    /// Flushes within `limit`; false when the peer did not take the bytes in time or is gone.
    pub async fn flush_within(&mut self, limit: Duration) -> bool {
        matches!(tokio::time::timeout(limit, self.flush()).await, Ok(Ok(())))
    }

    /// Sends a close frame, then waits (briefly) for the peer to finish, so that closing the
    /// socket does not reset a connection whose peer still has to read the close frame.
    pub async fn close(mut self, reason: &CloseReason) {
        let reason = actix_http::ws::CloseReason {
            code: CloseCode::from(reason.code),
            description: (!reason.reason.is_empty()).then(|| truncate(&reason.reason)),
        };
        Parser::write_close(&mut self.write_buf, Some(reason), false);
        let finish = async {
            self.flush().await?;
            self.io.shutdown().await?;
            // Discard what the peer still sends (its close frame) until it closes.
            loop {
                self.reader.buf.clear();
                if let Err(WsError::Gone) = self.fill().await {
                    return Ok::<_, io::Error>(());
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), finish).await;
    }

    /// Reads what the socket has (at least one byte), or fails with `Gone` at its end.
    async fn fill(&mut self) -> Result<(), WsError> {
        loop {
            self.io.readable().await.map_err(|_| WsError::Gone)?;
            match self.read_ready() {
                Ok(0) => return Err(WsError::Gone),
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return Err(WsError::Gone),
            }
        }
    }

    /// One non-blocking read. Not async, so the stack chunk is not part of the connection's
    /// future (which lives as long as the connection).
    fn read_ready(&mut self) -> io::Result<usize> {
        // A large frame in progress has reserved its room: read straight into it.
        let buf = &mut self.reader.buf;
        if buf.capacity() - buf.len() >= READ_CHUNK {
            return self.io.try_read_buf(buf);
        }
        let mut chunk = [0u8; READ_CHUNK];
        let read = self.io.try_read(&mut chunk)?;
        buf.extend_from_slice(&chunk[..read]);
        Ok(read)
    }
}

impl FrameReader {
    /// Messages above `max_message` bytes (after joining continuations) are refused; the bytes
    /// of unfinished messages are charged to `budget`.
    pub fn new(max_message: usize, budget: Arc<AssemblyBudget>) -> FrameReader {
        FrameReader {
            buf: BytesMut::new(),
            fragments: None,
            max_message,
            budget,
            charged: 0,
        }
    }

    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// True while bytes of an unfinished frame or message are held.
    pub fn in_progress(&self) -> bool {
        !self.buf.is_empty() || self.fragments.is_some()
    }

    /// Holds exactly `bytes` of the budget: takes more (or fails) or gives some back.
    fn hold(&mut self, bytes: usize) -> Result<(), WsError> {
        if bytes > self.charged {
            if !self.budget.try_take(bytes - self.charged) {
                return Err(WsError::AssemblyBudget);
            }
        } else {
            self.budget.give_back(self.charged - bytes);
        }
        self.charged = bytes;
        Ok(())
    }

    /// The next complete message among the received bytes, if any. After an error the stream
    /// is unusable.
    pub fn next_message(&mut self) -> Result<Option<Message>, WsError> {
        loop {
            // Checked on the header's first bytes, so the answer does not depend on how the
            // bytes arrive.
            if self.buf.get(1).is_some_and(|b| b & 0x80 == 0) {
                return Err(WsError::Protocol("client frames must be masked".into()));
            }
            // A control frame may come between the fragments of a message; it is not part of it.
            let control = self.buf.first().is_some_and(|b| b & 0x08 != 0);
            let held = self.fragments.as_ref().map_or(0, |f| f.data.len());
            let joined = if control { 0 } else { held };
            if let Some((header, announced)) = frame_header(&self.buf) {
                // Refused before its payload is buffered, whatever length it announces.
                if announced.saturating_add(joined as u64) > self.max_message as u64 {
                    return Err(WsError::TooBig(self.max_message));
                }
                if control && announced > MAX_CONTROL_PAYLOAD {
                    return Err(WsError::Protocol(
                        "control frame payload over 125 bytes".into(),
                    ));
                }
                // An incomplete frame: the parser is about to reserve room for its payload,
                // so the payload is charged first. (Below `max_message`, so it fits a usize.)
                if (self.buf.len() as u64) < header + announced {
                    self.hold(held + announced as usize)?;
                }
            }
            let parsed = Parser::parse(&mut self.buf, true, self.max_message);
            if self.buf.is_empty() {
                self.buf = BytesMut::new();
            }
            let max = self.max_message;
            let Some((fin, opcode, payload)) = parsed.map_err(|e| protocol_error(e, max))? else {
                return Ok(None);
            };
            let payload = payload.unwrap_or_default();
            if !fin && matches!(opcode, OpCode::Ping | OpCode::Pong | OpCode::Close) {
                return Err(WsError::Protocol("fragmented control frame".into()));
            }
            let data = match opcode {
                // A control frame is handed out whole: only the fragments stay charged.
                OpCode::Ping => {
                    self.hold(held)?;
                    return Ok(Some(Message::Ping(payload.freeze())));
                }
                OpCode::Pong => {
                    self.hold(held)?;
                    return Ok(Some(Message::Pong));
                }
                OpCode::Close => {
                    let reason = Parser::try_parse_close_payload(&payload)
                        .map_err(|e| protocol_error(e, max))?;
                    return Ok(Some(Message::Close(reason.map_or(1000, |r| r.code.into()))));
                }
                OpCode::Text | OpCode::Binary if self.fragments.is_some() => {
                    return Err(WsError::Protocol(
                        "a new message began before the fragmented one ended".into(),
                    ));
                }
                OpCode::Text | OpCode::Binary if !fin => {
                    self.hold(payload.len())?;
                    self.fragments = Some(Box::new(Fragments {
                        opcode,
                        data: payload,
                    }));
                    continue;
                }
                OpCode::Text | OpCode::Binary => (opcode, payload),
                OpCode::Continue => {
                    let Some(mut fragments) = self.fragments.take() else {
                        return Err(WsError::Protocol(
                            "continuation frame without a message to continue".into(),
                        ));
                    };
                    fragments.data.extend_from_slice(&payload);
                    if !fin {
                        self.hold(fragments.data.len())?;
                        self.fragments = Some(fragments);
                        continue;
                    }
                    (fragments.opcode, fragments.data)
                }
                OpCode::Bad => return Err(WsError::Protocol("unknown opcode".into())),
            };
            // The message leaves the reader: nothing of it is held any more.
            self.hold(0)?;
            return Ok(Some(match data {
                (OpCode::Text, data) => Message::Text(
                    ByteString::try_from(data.freeze()).map_err(|_| WsError::InvalidUtf8)?,
                ),
                (_, data) => Message::Binary(data.freeze()),
            }));
        }
    }
}

impl Drop for FrameReader {
    fn drop(&mut self) {
        self.budget.give_back(self.charged);
    }
}

/// Largest payload of a control frame (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// The header length (mask key included) and payload length a frame header announces, once its
/// length bytes are buffered.
fn frame_header(buf: &[u8]) -> Option<(u64, u64)> {
    // Client frames are masked: a 4-byte key follows the length.
    let short = buf.get(1)? & 0x7f;
    match short {
        126 => Some((
            2 + 2 + 4,
            u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
        )),
        127 => Some((
            2 + 8 + 4,
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?),
        )),
        len => Some((2 + 4, u64::from(len))),
    }
}

fn protocol_error(error: ProtocolError, max_message: usize) -> WsError {
    match error {
        ProtocolError::Overflow => WsError::TooBig(max_message),
        e => WsError::Protocol(e.to_string()),
    }
}

/// A close reason fits a control frame (125 bytes, 2 of them the code).
fn truncate(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

/// Masked client frames built by hand, shared with the socket tests and the fuzz seeds.
#[cfg(test)]
#[path = "../../tests/common/client_frames.rs"]
mod client_frames;

#[cfg(test)]
mod tests {
    use super::*;

    use super::client_frames::*;

    /// A reader whose budget never runs out.
    fn unlimited(max: usize) -> FrameReader {
        FrameReader::new(max, AssemblyBudget::new(usize::MAX))
    }

    /// The payload of a close frame with `code`.
    fn close_payload(code: u16) -> Vec<u8> {
        code.to_be_bytes().to_vec()
    }

    fn text(s: &str) -> Message {
        Message::Text(ByteString::from(s))
    }

    /// Every message the reader has now, up to and including the first error.
    fn drain(reader: &mut FrameReader) -> (Vec<Message>, Option<WsError>) {
        let mut messages = Vec::new();
        loop {
            match reader.next_message() {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => return (messages, None),
                Err(e) => return (messages, Some(e)),
            }
        }
    }

    /// Pushes `bytes` at once and reads every message; panics on an error.
    fn read_all(max: usize, bytes: &[u8]) -> Vec<Message> {
        let mut reader = unlimited(max);
        reader.push(bytes);
        let (messages, error) = drain(&mut reader);
        assert!(error.is_none(), "unexpected error {error:?}");
        messages
    }

    /// Pushes `bytes` at once; the error the reader fails with (after any messages before it).
    fn read_error(max: usize, bytes: &[u8]) -> WsError {
        let mut reader = unlimited(max);
        reader.push(bytes);
        drain(&mut reader).1.expect("the reader fails")
    }

    fn concat(frames: &[Vec<u8>]) -> Vec<u8> {
        frames.concat()
    }

    /// A stream mixing every kind of frame: a text, a fragmented binary with a ping in between,
    /// a pong, a 16-bit-length text, and a close.
    fn mixed_stream() -> (Vec<u8>, Vec<Message>) {
        let long = "x".repeat(300);
        let bytes = concat(&[
            client_frame(true, TEXT, b"hello"),
            client_frame(false, BINARY, b"\x00\x01"),
            client_frame(true, PING, b"p"),
            client_frame(true, CONTINUE, b"\x02"),
            client_frame(true, PONG, b""),
            client_frame(true, TEXT, long.as_bytes()),
            client_frame(true, CLOSE, &close_payload(4001)),
        ]);
        let expected = vec![
            text("hello"),
            Message::Ping(Bytes::from_static(b"p")),
            Message::Binary(Bytes::from_static(b"\x00\x01\x02")),
            Message::Pong,
            text(&long),
            Message::Close(4001),
        ];
        (bytes, expected)
    }

    /// A masked text frame is read as its text.
    #[test]
    fn text_frame_is_a_text_message() {
        assert_eq!(
            read_all(1024, &client_frame(true, TEXT, b"{\"type\":\"x\"}")),
            vec![text("{\"type\":\"x\"}")]
        );
    }

    /// A binary frame is read as its bytes, whatever they are.
    #[test]
    fn binary_frame_is_a_binary_message() {
        assert_eq!(
            read_all(1024, &client_frame(true, BINARY, b"\xff\x00\xfe")),
            vec![Message::Binary(Bytes::from_static(b"\xff\x00\xfe"))]
        );
    }

    /// A ping hands its payload over (the pong must echo it); a pong is reported.
    #[test]
    fn ping_returns_its_payload_and_pong_is_reported() {
        let bytes = concat(&[
            client_frame(true, PING, b"are you there"),
            client_frame(true, PING, b""),
            client_frame(true, PONG, b"whatever"),
        ]);
        assert_eq!(
            read_all(1024, &bytes),
            vec![
                Message::Ping(Bytes::from_static(b"are you there")),
                Message::Ping(Bytes::new()),
                Message::Pong,
            ]
        );
    }

    /// A close frame gives its status code; one without a payload counts as 1000, and a reason
    /// after the code is accepted.
    #[test]
    fn close_frame_gives_its_code_or_1000() {
        let mut with_reason = close_payload(4002);
        with_reason.extend_from_slice("bye é".as_bytes());
        let bytes = concat(&[
            client_frame(true, CLOSE, &close_payload(4005)),
            client_frame(true, CLOSE, b""),
            client_frame(true, CLOSE, &with_reason),
        ]);
        assert_eq!(
            read_all(1024, &bytes),
            vec![
                Message::Close(4005),
                Message::Close(1000),
                Message::Close(4002)
            ]
        );
    }

    /// Close payloads that RFC 6455 forbids (one byte, a reserved code, a reason that is not
    /// UTF-8) are protocol errors.
    #[test]
    fn malformed_close_payloads_are_protocol_errors() {
        let mut bad_reason = close_payload(1000);
        bad_reason.push(0xff);
        for payload in [
            vec![0x03],
            close_payload(1005),
            close_payload(999),
            bad_reason,
        ] {
            let error = read_error(1024, &client_frame(true, CLOSE, &payload));
            assert!(
                matches!(error, WsError::Protocol(_)),
                "{payload:?}: {error:?}"
            );
        }
    }

    /// Several frames pushed at once come out in order.
    #[test]
    fn several_frames_in_one_push_come_out_in_order() {
        let (bytes, expected) = mixed_stream();
        assert_eq!(read_all(1024, &bytes), expected);
    }

    /// Bytes delivered one at a time give the same messages, and the reader keeps no buffer
    /// once the last one is read.
    #[test]
    fn bytes_one_at_a_time_give_the_same_messages() {
        let (bytes, expected) = mixed_stream();
        let mut reader = unlimited(1024);
        let mut messages = Vec::new();
        for byte in &bytes {
            reader.push(std::slice::from_ref(byte));
            let (more, error) = drain(&mut reader);
            assert!(error.is_none(), "{error:?}");
            messages.extend(more);
        }
        assert_eq!(messages, expected);
        assert_eq!(reader.buf.capacity(), 0);
    }

    /// Wherever the bytes are split in two pushes, the messages are the same.
    #[test]
    fn every_split_point_gives_the_same_messages() {
        let (bytes, expected) = mixed_stream();
        for split in 0..=bytes.len() {
            let mut reader = unlimited(1024);
            reader.push(&bytes[..split]);
            let (mut messages, error) = drain(&mut reader);
            assert!(error.is_none(), "split at {split}: {error:?}");
            reader.push(&bytes[split..]);
            let (more, error) = drain(&mut reader);
            assert!(error.is_none(), "split at {split}: {error:?}");
            messages.extend(more);
            assert_eq!(messages, expected, "split at {split}");
            assert_eq!(reader.buf.capacity(), 0, "split at {split}");
        }
    }

    /// A text in three fragments (Text, Continue, Continue+fin) is one text message.
    #[test]
    fn fragmented_text_is_one_message() {
        let bytes = concat(&[
            client_frame(false, TEXT, b"{\"type\":"),
            client_frame(false, CONTINUE, b"\"pat"),
            client_frame(true, CONTINUE, b"ch\"}"),
        ]);
        assert_eq!(read_all(1024, &bytes), vec![text("{\"type\":\"patch\"}")]);
    }

    /// A ping between fragments is returned at once and the message is still joined after it.
    #[test]
    fn ping_between_fragments_comes_first_and_keeps_the_message() {
        let mut reader = unlimited(1024);
        reader.push(&client_frame(false, TEXT, b"ab"));
        reader.push(&client_frame(true, PING, b"mid"));
        assert_eq!(
            reader.next_message().expect("no error"),
            Some(Message::Ping(Bytes::from_static(b"mid")))
        );
        assert_eq!(reader.next_message().expect("no error"), None);
        reader.push(&client_frame(false, CONTINUE, b"cd"));
        reader.push(&client_frame(true, PONG, b""));
        reader.push(&client_frame(true, CONTINUE, b"ef"));
        let (messages, error) = drain(&mut reader);
        assert!(error.is_none(), "{error:?}");
        assert_eq!(messages, vec![Message::Pong, text("abcdef")]);
        assert_eq!(reader.buf.capacity(), 0);
    }

    /// A control frame between fragments does not count towards the joined message's size.
    #[test]
    fn control_frame_between_fragments_does_not_count_towards_the_limit() {
        let bytes = concat(&[
            client_frame(false, TEXT, b"12345678"),
            client_frame(true, PING, b"12345"),
            client_frame(true, CONTINUE, b"90"),
        ]);
        assert_eq!(
            read_all(10, &bytes),
            vec![
                Message::Ping(Bytes::from_static(b"12345")),
                text("1234567890")
            ]
        );
    }

    /// A frame of exactly the limit is accepted, and so are fragments that join to exactly it.
    #[test]
    fn message_of_exactly_the_limit_is_accepted() {
        assert_eq!(
            read_all(10, &client_frame(true, TEXT, b"0123456789")),
            vec![text("0123456789")]
        );
        let bytes = concat(&[
            client_frame(false, BINARY, b"01234"),
            client_frame(true, CONTINUE, b"56789"),
        ]);
        assert_eq!(
            read_all(10, &bytes),
            vec![Message::Binary(Bytes::from_static(b"0123456789"))]
        );
    }

    /// A frame announcing more than the limit is refused as soon as its length is buffered,
    /// before any of its payload arrives and without reserving room for it: with 7-bit, 16-bit
    /// and 64-bit lengths (2^40 and the largest legal one).
    #[test]
    fn oversized_frame_is_refused_from_its_header() {
        for (max, len) in [
            (100, 101),
            (100, 1000),
            (4096, 1 << 40),
            (4096, i64::MAX as u64),
        ] {
            let mut reader = unlimited(max);
            let header = client_header(true, BINARY, len);
            // Only the length bytes: the mask key is not even needed.
            reader.push(&header[..header.len() - 4]);
            let error = reader.next_message().expect_err("refused");
            assert!(
                matches!(error, WsError::TooBig(m) if m == max),
                "{len}: {error:?}"
            );
            assert!(reader.buf.capacity() < 64, "{len}: nothing reserved");
        }
    }

    /// A length with its most significant bit set (illegal in RFC 6455) is refused as too big.
    #[test]
    fn length_with_the_top_bit_set_is_refused() {
        let error = read_error(4096, &client_header(true, BINARY, u64::MAX));
        assert!(matches!(error, WsError::TooBig(4096)), "{error:?}");
    }

    /// Fragments that are each under the limit but join to more than it are refused, as soon as
    /// the header of the fragment that crosses it is buffered.
    #[test]
    fn joined_fragments_over_the_limit_are_too_big() {
        let mut reader = unlimited(10);
        reader.push(&client_frame(false, TEXT, b"012345"));
        reader.push(&client_header(true, CONTINUE, 5));
        let error = drain(&mut reader).1.expect("refused");
        assert!(matches!(error, WsError::TooBig(10)), "{error:?}");
        let bytes = concat(&[
            client_frame(false, TEXT, b"0123"),
            client_frame(false, CONTINUE, b"4567"),
            client_frame(true, CONTINUE, b"89a"),
        ]);
        assert!(matches!(read_error(10, &bytes), WsError::TooBig(10)));
    }

    /// A client frame without a mask is a protocol error (RFC 6455 §5.1).
    #[test]
    fn unmasked_frame_is_a_protocol_error() {
        let error = read_error(1024, b"\x81\x02hi");
        assert!(matches!(error, WsError::Protocol(_)), "{error:?}");
    }

    /// A continuation frame with no fragmented message to continue is a protocol error.
    #[test]
    fn continuation_without_a_start_is_a_protocol_error() {
        for fin in [true, false] {
            let error = read_error(1024, &client_frame(fin, CONTINUE, b"x"));
            assert!(matches!(error, WsError::Protocol(_)), "{error:?}");
        }
    }

    /// A new text or binary frame while a fragmented message is open is a protocol error.
    #[test]
    fn new_message_inside_a_fragmented_one_is_a_protocol_error() {
        for (fin, opcode) in [(true, TEXT), (false, TEXT), (true, BINARY)] {
            let bytes = concat(&[
                client_frame(false, TEXT, b"ab"),
                client_frame(fin, opcode, b"cd"),
            ]);
            let error = read_error(1024, &bytes);
            assert!(matches!(error, WsError::Protocol(_)), "{error:?}");
        }
    }

    /// Control frames must not be fragmented (RFC 6455 §5.5).
    #[test]
    fn fragmented_control_frame_is_a_protocol_error() {
        for opcode in [PING, PONG, CLOSE] {
            let error = read_error(1024, &client_frame(false, opcode, b""));
            assert!(matches!(error, WsError::Protocol(_)), "{opcode}: {error:?}");
        }
    }

    /// A control frame with more than 125 payload bytes is a protocol error (RFC 6455 §5.5).
    #[test]
    fn control_frame_over_125_bytes_is_a_protocol_error() {
        let error = read_error(1024, &client_frame(true, PING, &[b'p'; 126]));
        assert!(matches!(error, WsError::Protocol(_)), "{error:?}");
    }

    /// Reserved opcodes (data 3-7, control 11-15) and reserved bits are protocol errors.
    #[test]
    fn unknown_opcode_or_reserved_bits_are_protocol_errors() {
        for opcode in [3, 7, 0xb, 0xf] {
            let error = read_error(1024, &client_frame(true, opcode, b"x"));
            assert!(matches!(error, WsError::Protocol(_)), "{opcode}: {error:?}");
        }
        let mut rsv1 = client_frame(true, TEXT, b"x");
        rsv1[0] |= 0x40;
        let error = read_error(1024, &rsv1);
        assert!(matches!(error, WsError::Protocol(_)), "{error:?}");
    }

    /// A text frame that is not UTF-8 is refused with `InvalidUtf8`.
    #[test]
    fn invalid_utf8_text_is_refused() {
        let error = read_error(1024, &client_frame(true, TEXT, b"{\xff\xfe}"));
        assert!(matches!(error, WsError::InvalidUtf8), "{error:?}");
    }

    /// An invalid sequence split across fragments (a lead byte, then a byte that cannot follow
    /// it) is refused, while valid multi-byte characters split across fragments are accepted.
    #[test]
    fn utf8_is_checked_on_the_joined_message() {
        let bytes = concat(&[
            client_frame(false, TEXT, b"ok \xc3"),
            client_frame(true, CONTINUE, b"( more"),
        ]);
        assert!(matches!(read_error(1024, &bytes), WsError::InvalidUtf8));
        // A truncated character at the very end of the message.
        let bytes = concat(&[
            client_frame(false, TEXT, b"ok "),
            client_frame(true, CONTINUE, b"\xe2\x82"),
        ]);
        assert!(matches!(read_error(1024, &bytes), WsError::InvalidUtf8));
        // "é" split 1+1, "€" split 1+2 and "😀" split over three fragments.
        let smile = "😀".as_bytes();
        let bytes = concat(&[
            client_frame(false, TEXT, b"caf\xc3"),
            client_frame(false, CONTINUE, b"\xa9 \xe2"),
            client_frame(false, CONTINUE, &[0x82, 0xac, b' ', smile[0]]),
            client_frame(false, CONTINUE, &smile[1..3]),
            client_frame(true, CONTINUE, &smile[3..]),
        ]);
        assert_eq!(read_all(1024, &bytes), vec![text("café € 😀")]);
    }

    /// Between messages the reader holds no buffer, after single frames and fragmented ones.
    #[test]
    fn reader_holds_no_buffer_after_a_complete_message() {
        let mut reader = unlimited(1 << 20);
        reader.push(&client_frame(true, TEXT, "x".repeat(70_000).as_bytes()));
        assert!(matches!(reader.next_message(), Ok(Some(Message::Text(_)))));
        assert_eq!(reader.buf.capacity(), 0);
        reader.push(&client_frame(false, BINARY, b"ab"));
        reader.push(&client_frame(true, CONTINUE, b"cd"));
        assert!(matches!(
            reader.next_message(),
            Ok(Some(Message::Binary(_)))
        ));
        assert_eq!(reader.buf.capacity(), 0);
        assert!(reader.fragments.is_none());
        assert_eq!(reader.next_message().expect("no error"), None);
        assert_eq!(reader.buf.capacity(), 0);
    }

    /// Each error maps to the close code RFC 6455 §7.4.1 gives it; a vanished peer gets none.
    #[test]
    fn errors_map_to_their_close_codes() {
        let code = |e: WsError| e.close_reason().map(|r| r.code);
        assert_eq!(code(WsError::TooBig(10)), Some(1009));
        assert_eq!(code(WsError::InvalidUtf8), Some(1007));
        assert_eq!(code(WsError::Protocol("x".into())), Some(1002));
        assert_eq!(code(WsError::Gone), None);
        assert_eq!(code(WsError::Io(io::ErrorKind::BrokenPipe.into())), None);
    }

    /// A close reason longer than a control frame allows is cut at a character boundary.
    #[test]
    fn close_reason_is_cut_to_123_bytes_on_a_char_boundary() {
        assert_eq!(truncate("short"), "short");
        let long = "é".repeat(100);
        let cut = truncate(&long);
        assert_eq!(cut.len(), 122);
        assert!(long.starts_with(&cut));
    }

    /// An unfinished frame is charged to the budget as soon as its header announces its length,
    /// before its payload is buffered; held fragments stay charged; the complete message
    /// releases everything.
    #[test]
    fn unfinished_messages_are_charged_until_complete() {
        let budget = AssemblyBudget::new(1000);
        let mut reader = FrameReader::new(1000, budget.clone());
        let first = client_frame(false, TEXT, &[b'a'; 300]);
        reader.push(&first[..8]);
        assert_eq!(reader.next_message().expect("no error"), None);
        assert_eq!(budget.used(), 300, "charged from the header");
        reader.push(&first[8..]);
        assert_eq!(reader.next_message().expect("no error"), None);
        assert_eq!(budget.used(), 300, "the held fragment");
        reader.push(&client_frame(true, PING, b"p"));
        assert_eq!(
            reader.next_message().expect("no error"),
            Some(Message::Ping(Bytes::from_static(b"p")))
        );
        assert_eq!(budget.used(), 300, "a ping between fragments is not held");
        reader.push(&client_frame(true, CONTINUE, &[b'b'; 200]));
        let Some(Message::Text(text)) = reader.next_message().expect("no error") else {
            panic!("a text message");
        };
        assert_eq!(text.len(), 500);
        assert_eq!(budget.used(), 0, "released with the message");
    }

    /// With the budget taken by one connection's unfinished message, another connection's
    /// unfinished frame is refused from its header (nothing of it buffered), with close 1013;
    /// a small frame that arrives whole needs no budget. Dropping a reader gives its share back.
    #[test]
    fn an_exhausted_budget_refuses_the_next_unfinished_message() {
        let budget = AssemblyBudget::new(1000);
        let mut a = FrameReader::new(4096, budget.clone());
        a.push(&client_frame(false, BINARY, &[0; 900]));
        assert_eq!(a.next_message().expect("no error"), None);
        assert_eq!(budget.used(), 900);

        let mut b = FrameReader::new(4096, budget.clone());
        b.push(&client_frame(true, TEXT, b"small and whole"));
        assert!(matches!(b.next_message(), Ok(Some(Message::Text(_)))));
        let header = client_header(false, TEXT, 200);
        b.push(&header);
        let error = b.next_message().expect_err("no room");
        assert!(matches!(error, WsError::AssemblyBudget), "{error:?}");
        assert_eq!(error.close_reason().map(|r| r.code), Some(1013));
        assert!(
            b.buf.capacity() < 64,
            "nothing reserved for the refused frame"
        );
        assert_eq!(budget.used(), 900);

        drop(a);
        assert_eq!(budget.used(), 0);
        let mut c = FrameReader::new(4096, budget.clone());
        c.push(&header);
        assert_eq!(c.next_message().expect("room again"), None);
        assert_eq!(budget.used(), 200);
        drop(c);
        assert_eq!(budget.used(), 0);
    }

    /// A control frame announcing more than 125 bytes is refused from its header, before room
    /// for its payload is reserved.
    #[test]
    fn oversized_control_frame_is_refused_from_its_header() {
        let budget = AssemblyBudget::new(usize::MAX);
        let mut reader = FrameReader::new(1 << 20, budget.clone());
        reader.push(&client_header(true, PING, 100_000));
        let error = reader.next_message().expect_err("refused");
        assert!(matches!(error, WsError::Protocol(_)), "{error:?}");
        assert!(reader.buf.capacity() < 64);
        assert_eq!(budget.used(), 0);
    }

    /// The assembly errors close with their codes: a missed deadline is a policy violation
    /// (1008), an exhausted budget is "try again later" (1013).
    #[test]
    fn assembly_errors_map_to_their_close_codes() {
        let code = |e: WsError| e.close_reason().map(|r| r.code);
        assert_eq!(
            code(WsError::AssemblyTimeout(Duration::from_secs(1))),
            Some(1008)
        );
        assert_eq!(code(WsError::AssemblyBudget), Some(1013));
    }
}
