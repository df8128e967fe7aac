//! Starting a server and talking raw protocol to it.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use weft::app::{Application, ShutdownHandle};
use weft::config::Settings;
use weft::rooms::RoomManager;
use weft::storage::StorageKind;

/// How long a test waits for a frame that should come.
pub const WAIT: Duration = Duration::from_secs(5);

/// A running server.
pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub shutdown: ShutdownHandle,
    pub manager: RoomManager,
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Settings for tests: memory storage, any free port.
pub fn test_settings() -> Settings {
    let mut settings = Settings::default();
    settings.addr = "127.0.0.1:0".parse().expect("addr");
    settings.storage = StorageKind::Memory;
    settings
}

/// Starts a server with `settings`.
pub async fn spawn_app_with(settings: Settings) -> TestApp {
    let app = Application::build(&settings).expect("server builds");
    TestApp {
        addr: app.addr(),
        shutdown: app.shutdown_handle(),
        manager: app.manager(),
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

impl TestApp {
    pub fn url(&self, query: &str) -> String {
        format!("ws://{}/?{}", self.addr, query)
    }

    /// Connects to `room` as `client` (no token).
    pub async fn connect(&self, room: &str, client: &str) -> Client {
        self.connect_query(&format!("roomId={room}&clientId={client}"))
            .await
    }

    pub async fn connect_query(&self, query: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(self.url(query))
            .await
            .expect("websocket connects");
        Client { ws }
    }

    /// Connects and completes the reconnect handshake from clock 0; returns the client after
    /// its `synced`, with the frames received on the way.
    pub async fn join(&self, room: &str, client: &str) -> (Client, Vec<Value>) {
        let mut c = self.connect(room, client).await;
        c.send(json!({"type": "reconnect", "lastTimestamp": 0, "protocolVersion": 2}))
            .await;
        let frames = c.recv_until("synced").await;
        (c, frames)
    }
}

impl Client {
    pub async fn send(&mut self, frame: Value) {
        self.send_text(frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.expect("frame sent");
    }

    /// The next text frame as JSON; panics on timeout or close.
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame within the wait")
                .expect("connection open")
                .expect("no websocket error");
            match msg {
                Message::Text(text) => return serde_json::from_str(&text).expect("json frame"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
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
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("close within the wait");
            match msg {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (frame.code, frame.reason.to_string())
                }
                Some(Ok(Message::Close(None))) | None => return (CloseCode::Status, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection error instead of a close: {e}"),
            }
        }
    }

    /// True if no frame arrives within `wait`.
    pub async fn silent_for(&mut self, wait: Duration) -> bool {
        loop {
            match tokio::time::timeout(wait, self.ws.next()).await {
                Err(_) => return true,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(_) => return false,
            }
        }
    }
}
