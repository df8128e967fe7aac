//! The HTTP edge: plain requests to the WebSocket endpoint, health, metrics, and the WebSocket
//! closing handshake.

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{count, eventually, spawn_app, WAIT};

/// A plain `GET /` without an upgrade gets 426 with a JSON body explaining how to connect.
#[tokio::test]
async fn plain_get_of_the_websocket_endpoint_gets_426_with_json() {
    let app = spawn_app().await;
    let (status, body) = app.http_get("/?roomId=r&clientId=c").await;
    assert_eq!(status, 426);
    let body: Value = serde_json::from_str(&body).expect("json body");
    let error = body["error"].as_str().expect("error text");
    assert!(error.contains("WebSocket"), "{error}");
    assert!(error.contains("roomId"), "{error}");
}

/// `/healthz` reports status, live rooms and open connections.
#[tokio::test]
async fn healthz_reports_rooms_and_connections() {
    let app = spawn_app().await;
    let (status, body) = app.http_get("/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json"),
        json!({"status": "ok", "rooms": 0, "game_rooms": 0, "connections": 0})
    );
    let (_a, _) = app.join("e-health-1", "a").await;
    let (_b, _) = app.join("e-health-2", "b").await;
    let (_, body) = app.http_get("/healthz").await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json"),
        json!({"status": "ok", "rooms": 2, "game_rooms": 0, "connections": 2})
    );
}

/// `/metrics` is Prometheus text: every metric has HELP and TYPE lines and counts what happened.
#[tokio::test]
async fn metrics_are_prometheus_text_and_count() {
    let app = spawn_app().await;
    let (mut a, _) = app.join("e-metrics", "a").await;
    a.send(
        json!({"type": "patch", "messageId": "m", "documentPatches": [{"e/S": {"_exists": true}}]}),
    )
    .await;
    a.recv().await;
    let (status, body) = app.http_get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "connections_active",
        "connections_total",
        "frames_received",
        "frames_ignored",
        "patches_applied",
        "heartbeat_timeouts",
        "slow_clients_disconnected",
    ] {
        assert!(body.contains(&format!("# TYPE weft_{name} ")), "{name}");
        assert!(body.contains(&format!("# HELP weft_{name} ")), "{name}");
    }
    assert_eq!(app.metric("weft_connections_active").await, 1);
    assert_eq!(app.metric("weft_sessions_active").await, 1);
    assert_eq!(app.metric("weft_frames_received").await, 2);
    assert_eq!(app.metric("weft_patches_applied").await, 1);
    a.leave().await;
    let app = &app;
    eventually("the connection is gone", || async move {
        app.metric("weft_connections_active").await == 0
    })
    .await;
    assert_eq!(app.metric("weft_sessions_active").await, 0);
}

/// Unknown paths are 404.
#[tokio::test]
async fn unknown_paths_are_404() {
    let app = spawn_app().await;
    assert_eq!(app.http_get("/nope").await.0, 404);
}

/// A client's close frame is answered with a close frame (RFC 6455 §5.5.1), and the others see
/// the count drop.
#[tokio::test]
async fn client_close_is_answered_with_a_close_frame() {
    let app = spawn_app().await;
    let (mut a, _) = app.join("e-close", "a").await;
    let (mut b, _) = app.join("e-close", "b").await;
    assert_eq!(a.recv().await, count(2));
    b.ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .expect("close sent");
    let answer = b.close_or_error().await;
    assert!(
        matches!(answer, Ok((CloseCode::Normal, _))),
        "the server answers with a 1000 close frame, got {answer:?}"
    );
    assert_eq!(a.recv().await, count(1));
}

/// A client's ping is answered with a pong carrying the same payload.
#[tokio::test]
async fn client_ping_is_answered_with_a_pong() {
    let app = spawn_app().await;
    let (mut a, _) = app.join("e-ping", "a").await;
    a.send_message(Message::Ping(b"are you there".to_vec().into()))
        .await;
    let pong = tokio::time::timeout(WAIT, a.ws.next())
        .await
        .expect("pong within the wait")
        .expect("open")
        .expect("no error");
    assert_eq!(pong, Message::Pong(b"are you there".to_vec().into()));
}

/// A text frame whose payload is not UTF-8 fails the connection with 1007 (RFC 6455 §8.1, §7.4.1).
#[tokio::test]
async fn text_frame_with_invalid_utf8_closes_with_1007() {
    let app = spawn_app().await;
    let (mut a, _) = app.join("e-utf8", "a").await;
    a.send_message(Message::Frame(Frame::message(
        vec![b'{', 0xff, 0xfe, b'}'],
        OpCode::Data(Data::Text),
        true,
    )))
    .await;
    let (code, reason) = a.close_or_error().await.expect("a close frame");
    assert_eq!(code, CloseCode::Invalid, "{reason}");
}
