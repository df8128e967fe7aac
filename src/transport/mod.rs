//! HTTP and WebSocket edge: actix-web routes, and one session loop per WebSocket connection.

mod canvas_ws;
mod game_http;
mod game_ws;
mod limits;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::json;

pub use limits::{ConnectionLimiter, LimitError, RateLimiter};

use crate::auth::{Authorizer, GameAuth};
use crate::engine::Limits;
use crate::game::GameRooms;
use crate::metrics::Metrics;
use crate::rooms::RoomManager;

/// Settings of the WebSocket edge.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Largest accepted frame (after continuation frames are joined); larger closes with 1009.
    pub max_frame_bytes: usize,
    /// Frames queued for one connection before it counts as too slow and is closed with 1013.
    pub outbound_queue: usize,
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
            outbound_queue: 1024,
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

/// What every request handler shares.
pub struct AppState {
    pub manager: RoomManager,
    pub games: GameRooms,
    pub game_auth: Arc<GameAuth>,
    pub authorizer: Arc<dyn Authorizer>,
    pub limiter: Arc<ConnectionLimiter>,
    pub metrics: Arc<Metrics>,
    pub config: TransportConfig,
    pub shutting_down: std::sync::atomic::AtomicBool,
}

/// The frame limits of both WebSocket endpoints: frames above `max` (after continuation frames
/// are joined) end the stream with an overflow error.
fn limit_frames(stream: actix_ws::MessageStream, max: usize) -> actix_ws::AggregatedMessageStream {
    stream
        .max_frame_size(max)
        .aggregate_continuations()
        .max_continuation_size(max)
}

/// Sends a close frame; a peer that does not take it in time is dropped all the same.
async fn close(session: actix_ws::Session, reason: crate::rooms::CloseReason) {
    let reason = actix_ws::CloseReason {
        code: actix_ws::CloseCode::from(reason.code),
        description: Some(reason.reason),
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), session.close(Some(reason))).await;
}

/// Registers weft's routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(canvas_ws::connect))
        .route("/api/room", web::get().to(game_ws::connect))
        .route("/api/room/metadata", web::get().to(game_http::metadata))
        .route("/api/room/matchmake", web::post().to(game_http::matchmake))
        .route("/healthz", web::get().to(healthz))
        .route("/metrics", web::get().to(metrics));
}

async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    if state.shutting_down.load(Ordering::SeqCst) {
        return HttpResponse::ServiceUnavailable().json(json!({"status": "shutting_down"}));
    }
    HttpResponse::Ok().json(json!({
        "status": "ok",
        "rooms": state.metrics.rooms_active.load(Ordering::Relaxed),
        "game_rooms": state.games.live_rooms(),
        "connections": state.metrics.connections_active.load(Ordering::Relaxed),
    }))
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let mut body = state.metrics.render();
    // Game rooms are counted where they live (the game room map), not in a counter.
    body.push_str(&format!(
        "# HELP weft_game_rooms_active Game rooms loaded in memory.\n# TYPE weft_game_rooms_active gauge\nweft_game_rooms_active {}\n",
        state.games.live_rooms()
    ));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(body)
}
