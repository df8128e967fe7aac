//! HTTP and WebSocket edge: actix-web routes for plain HTTP; WebSocket upgrades leave actix-http
//! (`upgrade`) for weft's own socket (`websocket`) and ONE session loop (`session`: limits,
//! heartbeat, rate, delivery) shared by both endpoints, which only decode and act on their
//! protocol's frames (`canvas_ws`, `game_ws`).

mod accept;
mod canvas_ws;
mod game_http;
mod game_ws;
mod limits;
mod liveness;
mod session;
mod upgrade;
mod websocket;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde_json::json;

pub use accept::Admitted;
pub(crate) use accept::{serve as serve_connection, within_request_deadline, LINGER};
pub use limits::{ConnectionLimiter, LimitError, RateLimiter};
pub use liveness::Liveness;
pub(crate) use upgrade::hand_off;
pub use websocket::{AssemblyBudget, FrameReader, Message as WsMessage, WsError};

use crate::auth::{Authorizer, GameAuth};
use crate::engine::Limits;
use crate::metrics::Metrics;
use crate::protocols::canvas::CanvasRooms;
use crate::protocols::game::GameRooms;
use crate::rooms::{RoomManager, Tasks};

/// Settings of the WebSocket edge.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Largest accepted frame (after continuation frames are joined); larger closes with 1009.
    pub max_frame_bytes: usize,
    /// A message (all its fragments) must be complete this long after its first bytes arrived;
    /// else the connection is closed with 1008.
    pub message_assembly_timeout: Duration,
    /// Plain HTTP: the request head must arrive within this (408).
    pub http_head_timeout: Duration,
    /// Plain HTTP: the body must arrive and the answer be ready within this after the head
    /// (408, connection closed).
    pub http_request_timeout: Duration,
    /// Bytes of frames waiting for one connection (held until durable or queued) beyond which it
    /// counts as too slow and is closed with 1013 (see [`crate::rooms::Outbox`]).
    pub outbound_queue_bytes: usize,
    /// Messages per second a connection may send on average, and its burst.
    pub messages_per_second: f64,
    pub message_burst: u32,
    /// A ping goes out this often; a connection silent for `heartbeat_timeout` is closed.
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub limits: Limits,
    /// Game rooms: the `auth` frame must arrive within this long (close 4001).
    pub game_auth_timeout: Duration,
    /// Game rooms: a connection silent this long is closed (4007). The SDKs ping every 30 s.
    pub game_stale_timeout: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_frame_bytes: 1 << 20,
            message_assembly_timeout: Duration::from_secs(10),
            http_head_timeout: Duration::from_secs(5),
            http_request_timeout: Duration::from_secs(10),
            // Eight frames of the largest size a client may send, relayed, before a reader is too
            // slow. A larger single frame (a reconnect reply of a large document) still goes to
            // a reader that keeps up: the cap is checked before a frame is added.
            outbound_queue_bytes: 8 << 20,
            messages_per_second: 100.0,
            message_burst: 200,
            heartbeat_interval: Duration::from_secs(15),
            heartbeat_timeout: Duration::from_secs(45),
            limits: Limits::default(),
            game_auth_timeout: Duration::from_secs(5),
            game_stale_timeout: Duration::from_secs(75),
        }
    }
}

/// Frames a connection takes from its outbound queue for one socket write, up to this many bytes.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// A live WebSocket connection: holds its connection permit and counts it in the metrics.
struct LiveConnection {
    metrics: Arc<Metrics>,
    _permit: limits::ConnectionPermit,
}

impl LiveConnection {
    fn new(metrics: Arc<Metrics>, permit: limits::ConnectionPermit) -> LiveConnection {
        Metrics::inc(&metrics.connections_total);
        Metrics::inc(&metrics.connections_active);
        LiveConnection {
            metrics,
            _permit: permit,
        }
    }
}

impl Drop for LiveConnection {
    fn drop(&mut self) {
        Metrics::dec(&self.metrics.connections_active);
    }
}

/// What every request handler shares.
pub struct AppState {
    /// Every live room, canvas and game.
    pub manager: RoomManager,
    pub canvas: CanvasRooms,
    pub games: GameRooms,
    pub game_auth: Arc<GameAuth>,
    pub authorizer: Arc<dyn Authorizer>,
    pub limiter: Arc<ConnectionLimiter>,
    pub metrics: Arc<Metrics>,
    pub config: TransportConfig,
    /// Bytes of unfinished WebSocket messages, all connections together.
    pub assembly: Arc<AssemblyBudget>,
    /// Whether the main runtime still makes progress (`/healthz`).
    pub liveness: Arc<Liveness>,
    /// Flips to `true` when shutdown begins (see [`AppState::shutting_down`]).
    pub closing: tokio::sync::watch::Sender<bool>,
    /// Every task the server spawns, on its main runtime, where rooms and WebSocket connections
    /// run (HTTP requests are served on actix's worker threads).
    pub tasks: Tasks,
}

impl AppState {
    pub fn shutting_down(&self) -> bool {
        *self.closing.borrow()
    }
}

/// An HTTP error answer: a status and a JSON body. Routes return it as an [`HttpResponse`]; the
/// WebSocket upgrade path writes it to the socket itself.
#[derive(Debug)]
pub(crate) struct HttpError {
    status: StatusCode,
    body: serde_json::Value,
}

impl HttpError {
    pub fn new(status: StatusCode, body: serde_json::Value) -> HttpError {
        HttpError { status, body }
    }

    /// The shape the EdgeBase SDKs read: `{"code", "message"}`.
    pub fn coded(status: StatusCode, code: &str, message: &str) -> HttpError {
        HttpError::new(status, json!({ "code": code, "message": message }))
    }

    /// The whole HTTP/1.1 response, closing the connection.
    fn http1(&self) -> Vec<u8> {
        let body = self.body.to_string();
        let mut response = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(""),
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(body.as_bytes());
        response
    }
}

impl From<HttpError> for HttpResponse {
    fn from(error: HttpError) -> HttpResponse {
        HttpResponse::build(error.status).json(error.body)
    }
}

/// Registers weft's routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    // WebSocket upgrades on these paths never reach the routes (see `upgrade`): these answer
    // plain requests that forgot to upgrade.
    cfg.route("/", web::get().to(canvas_ws::not_upgraded))
        .route("/api/room", web::get().to(game_ws::not_upgraded))
        .route("/api/room/metadata", web::get().to(game_http::metadata))
        .route("/api/room/matchmake", web::post().to(game_http::matchmake))
        .route("/healthz", web::get().to(healthz))
        .route("/metrics", web::get().to(metrics));
}

/// 200 while the server serves; 503 when it is shutting down, or when the main runtime (where
/// rooms run) has a worker stuck for longer than `limits.liveness_timeout_ms`.
async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    if state.shutting_down() {
        return HttpResponse::ServiceUnavailable().json(json!({"status": "shutting_down"}));
    }
    let mut body = json!({
        "status": "ok",
        "rooms": state.metrics.rooms_active.load(Ordering::Relaxed),
        "game_rooms": state.games.live_rooms(),
        "connections": state.metrics.connections_active.load(Ordering::Relaxed),
    });
    match state.liveness.stalled_for() {
        None => HttpResponse::Ok().json(body),
        Some(stalled) => {
            body["status"] = json!("stalled");
            body["stalled_ms"] = json!(stalled.as_millis() as u64);
            HttpResponse::ServiceUnavailable().json(body)
        }
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let mut body = state.metrics.render();
    // Game rooms are counted where they live (the room manager), not in a counter.
    body.push_str(&format!(
        "# HELP weft_game_rooms_active Game rooms loaded in memory.\n# TYPE weft_game_rooms_active gauge\nweft_game_rooms_active {}\n",
        state.games.live_rooms()
    ));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(body)
}
