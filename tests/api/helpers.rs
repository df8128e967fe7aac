//! Starting a server and talking raw protocol to it.
//!
//! The server runs in process: its rooms on the test's runtime, its connections on actix worker
//! threads. Because those threads keep real time, tests here cannot pause tokio time; they bound
//! every wait with [`WAIT`] instead and wait for events (a frame, a metric) rather than sleeping.

use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use weft::app::{Application, ShutdownHandle};
use weft::config::{AuthMode, Settings};
use weft::ids::RoomId;
use weft::protocols::canvas::{CanvasRooms, RoomHandle};
use weft::rooms::SessionInfo;
use weft::storage::StorageKind;

#[path = "../common/raw_http.rs"]
mod raw_http;

/// How long a test waits for a frame that should come.
pub const WAIT: Duration = Duration::from_secs(5);

/// How long a test listens to conclude that nothing more comes.
pub const QUIET: Duration = Duration::from_millis(200);

/// A running server.
pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub shutdown: ShutdownHandle,
    /// The canvas rooms of the server's one room manager.
    pub canvas: CanvasRooms,
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Settings for tests: memory storage, any free port.
pub fn test_settings() -> Settings {
    Settings {
        addr: "127.0.0.1:0".parse().expect("addr"),
        storage: StorageKind::Memory,
        ..Settings::default()
    }
}

/// The token table of the auth and session tests: `rw` and `ro` open every room, `team` only
/// rooms starting with `team-`. `rw` and `ro` carry metadata.
pub const TOKENS: &str = r#"{"tokens":[
    {"token":"rw","permission":"readwrite","rooms":["*"],"metadata":{"user":"ann"}},
    {"token":"ro","permission":"readonly","rooms":["*"],"metadata":{"user":"bob"}},
    {"token":"team","permission":"readwrite","rooms":["team-*"]}
]}"#;

/// Test settings with token auth over [`TOKENS`], written to a temporary directory that lives as
/// long as the returned guard.
pub fn tokens_settings() -> (Settings, TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tokens.json");
    std::fs::write(&path, TOKENS).expect("write tokens file");
    let mut settings = test_settings();
    settings.auth.mode = AuthMode::Tokens;
    settings.auth.tokens_file = Some(path);
    (settings, dir)
}

/// Test settings with file storage in a fresh temporary directory.
pub fn file_settings() -> (Settings, TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = test_settings();
    settings.storage = StorageKind::File;
    settings.data_dir = dir.path().to_path_buf();
    (settings, dir)
}

/// Starts a server with `settings`.
pub async fn spawn_app_with(settings: Settings) -> TestApp {
    let app = Application::build(&settings).expect("server builds");
    TestApp {
        addr: app.addr(),
        shutdown: app.shutdown_handle(),
        canvas: app.canvas(),
        server: tokio::spawn(app.run()),
    }
}

/// Starts a server with test settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(test_settings()).await
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw WebSocket client.
pub struct Client {
    pub ws: Ws,
}

/// The `reconnect` frame of a client that has seen clock `last`.
pub fn reconnect(last: u64) -> Value {
    json!({"type": "reconnect", "lastTimestamp": last, "protocolVersion": 2})
}

/// A `patch` frame with document patches only.
pub fn doc_patch(id: &str, patches: Value) -> Value {
    json!({"type": "patch", "messageId": id, "documentPatches": patches})
}

/// An `ack` frame.
pub fn ack(id: &str, timestamp: u64) -> Value {
    json!({"type": "ack", "messageId": id, "timestamp": timestamp})
}

/// A `clientCount` frame.
pub fn count(n: usize) -> Value {
    json!({"type": "clientCount", "count": n})
}

/// A `synced` frame.
pub fn synced(timestamp: u64) -> Value {
    json!({"type": "synced", "timestamp": timestamp})
}

/// Calls `check` until it returns true; panics if it does not within [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits `fut`, panicking if it takes longer than [`WAIT`]: keeps calls into the server's API
/// bounded like the frames are.
pub async fn within<F: std::future::Future>(fut: F) -> F::Output {
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("the server answers within the wait")
}

/// Reads a JSON file written by the server.
pub fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).expect("file holds JSON")
}

/// Connects to a full `ws://` URL (a server that is not a [`TestApp`], e.g. the binary).
pub async fn connect_url(url: &str) -> Client {
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake within the wait")
        .expect("websocket connects");
    Client { ws }
}

impl TestApp {
    pub fn url(&self, query: &str) -> String {
        format!("ws://{}/?{}", self.addr, query)
    }

    /// Connects to `room` as `client` (no token).
    pub async fn connect(&self, room: &str, client: &str) -> Client {
        self.connect_query(&format!("roomId={room}&clientId={client}"))
            .await
    }

    /// Connects to `room` as `client` with `token`.
    pub async fn connect_token(&self, room: &str, client: &str, token: &str) -> Client {
        self.connect_query(&format!("roomId={room}&clientId={client}&token={token}"))
            .await
    }

    pub async fn connect_query(&self, query: &str) -> Client {
        self.try_connect(query).await.expect("websocket connects")
    }

    /// Connects, returning the handshake error (an HTTP refusal carries its response).
    pub async fn try_connect(
        &self,
        query: &str,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(self.url(query)))
            .await
            .expect("handshake within the wait")?;
        Ok(Client { ws })
    }

    /// Connects and completes the reconnect handshake from clock 0; returns the client after
    /// its `synced`, with the frames received on the way.
    pub async fn join(&self, room: &str, client: &str) -> (Client, Vec<Value>) {
        let c = self.connect(room, client).await;
        Self::handshake(c).await
    }

    /// [`TestApp::join`] with a token.
    pub async fn join_token(&self, room: &str, client: &str, token: &str) -> (Client, Vec<Value>) {
        let c = self.connect_token(room, client, token).await;
        Self::handshake(c).await
    }

    async fn handshake(mut c: Client) -> (Client, Vec<Value>) {
        c.send(reconnect(0)).await;
        let frames = c.recv_until("synced").await;
        (c, frames)
    }

    /// The live room's handle; panics if the room is not loaded.
    pub fn room(&self, room: &str) -> RoomHandle {
        self.canvas
            .existing(&RoomId::parse(room).expect("valid room id"))
            .unwrap_or_else(|| panic!("room {room} is live"))
    }

    /// The live room's document in snapshot form: `{"timestamp","state","timestamps"}`.
    pub async fn document(&self, room: &str) -> Value {
        let doc = within(self.room(room).document())
            .await
            .expect("room answers");
        serde_json::to_value(&doc).expect("document serializes")
    }

    /// The live room's sessions, in join order.
    pub async fn sessions(&self, room: &str) -> Vec<SessionInfo> {
        within(self.room(room).sessions())
            .await
            .expect("room answers")
    }

    /// `GET path` over plain HTTP/1.1; returns the status and the body.
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        self.http(&format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        ))
        .await
    }

    /// Sends a raw HTTP request; returns the status and the body.
    pub async fn http(&self, request: &str) -> (u16, String) {
        raw_http::exchange(self.addr, request, WAIT).await
    }

    /// The value of one metric from `GET /metrics`, e.g. `weft_frames_ignored`.
    pub async fn metric(&self, name: &str) -> u64 {
        raw_http::metric(self.addr, name, WAIT).await
    }
}

impl Client {
    pub async fn send(&mut self, frame: Value) {
        self.send_text(frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: String) {
        self.send_message(Message::text(text)).await;
    }

    pub async fn send_message(&mut self, message: Message) {
        self.ws.send(message).await.expect("frame sent");
    }

    /// The next text frame as it came; panics on timeout or close.
    pub async fn recv_text(&mut self) -> String {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame within the wait")
                .expect("connection open")
                .expect("no websocket error");
            match msg {
                Message::Text(text) => return text.to_string(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next text frame as JSON; panics on timeout or close.
    pub async fn recv(&mut self) -> Value {
        let text = self.recv_text().await;
        serde_json::from_str(&text).expect("json frame")
    }

    /// The next `n` frames.
    pub async fn recv_n(&mut self, n: usize) -> Vec<Value> {
        let mut frames = Vec::with_capacity(n);
        for _ in 0..n {
            frames.push(self.recv().await);
        }
        frames
    }

    /// Frames up to and including the first of type `kind`.
    pub async fn recv_until(&mut self, kind: &str) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let frame = self.recv().await;
            let done = frame["type"] == kind;
            frames.push(frame);
            if done {
                return frames;
            }
        }
    }

    /// Waits for the server to close the connection; returns the close code and reason.
    pub async fn closed(&mut self) -> (CloseCode, String) {
        match self.close_or_error().await {
            Ok(close) => close,
            Err(e) => panic!("connection error instead of a close: {e}"),
        }
    }

    /// Waits for the connection to end: the close frame's code and reason, `CloseCode::Status`
    /// with no reason if it ended without one, or the websocket error. Panics if it has not
    /// ended within [`WAIT`] (pings and other frames do not extend the wait).
    pub async fn close_or_error(&mut self) -> Result<(CloseCode, String), String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("close within the wait");
            match msg {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Ok((frame.code, frame.reason.to_string()))
                }
                Some(Ok(Message::Close(None))) | None => {
                    return Ok((CloseCode::Status, String::new()))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.to_string()),
            }
        }
    }

    /// Every text frame (as JSON) until the server closes, and the close code and reason.
    pub async fn frames_until_close(&mut self) -> (Vec<Value>, (CloseCode, String)) {
        let mut frames = Vec::new();
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("frames or a close within the wait");
            match msg {
                Some(Ok(Message::Text(text))) => {
                    frames.push(serde_json::from_str(&text).expect("json frame"))
                }
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (frames, (frame.code, frame.reason.to_string()))
                }
                Some(Ok(Message::Close(None))) | None => {
                    return (frames, (CloseCode::Status, String::new()))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection error instead of a close: {e}"),
            }
        }
    }

    /// True if no frame arrives within `wait` (pings and pongs do not count; they are answered).
    pub async fn silent_for(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return true,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(_) => return false,
            }
        }
    }

    /// Closes the connection from the client side and waits for the server's answer.
    pub async fn leave(mut self) {
        self.ws.close(None).await.expect("close sent");
        let _ = tokio::time::timeout(WAIT, async { while self.ws.next().await.is_some() {} }).await;
    }
}
