//! The connection: auth (success, failure, timeout, refresh), what is refused before auth,
//! invalid JSON, unknown types, pings, binary and oversized frames.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{
    access_token, now_secs, secret_settings, sign, test_settings, GameApp, GameClient, GRACE,
    QUIET, SECRET, WAIT,
};

const NOT_AUTHENTICATED: &str =
    "authenticate first: the first message must be {\"type\":\"auth\",\"token\":...}";

fn connection_id(frame: &Value) -> String {
    let id = frame["connectionId"].as_str().expect("connectionId");
    assert!(
        id.len() == 37 && id.starts_with("conn_") && id[5..].chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    id.to_owned()
}

/// `auth_success` is the first frame, with exactly `type`, `userId` (the token, with `--auth
/// none`) and a `connectionId` that is new for every connection, even of the same user.
#[tokio::test]
async fn auth_success_has_the_user_and_a_fresh_connection_id() {
    let app = GameApp::start().await;
    let (_a, first) = app.authed("arena", "auth-ok", "alice").await;
    let (_b, second) = app.authed("arena", "auth-ok", "alice").await;
    assert_eq!(
        first
            .as_object()
            .expect("object")
            .keys()
            .collect::<Vec<_>>(),
        vec!["type", "userId", "connectionId"]
    );
    assert_eq!(first["userId"], "alice");
    assert_ne!(connection_id(&first), connection_id(&second));
    // With --auth none a JWT-shaped token names its (unverified) `sub`.
    let jwt = sign(&json!({"sub": "carol", "exp": now_secs() + 60}), "any");
    let (_c, third) = app.authed("arena", "auth-ok", &jwt).await;
    assert_eq!(third["userId"], "carol");
}

/// An app-level `ping` before `auth` is answered with `pong` and does not count as the auth.
#[tokio::test]
async fn ping_before_auth_is_answered() {
    let app = GameApp::start().await;
    let mut c = app.connect("arena", "ping-early").await;
    c.assert_alive().await;
    c.auth("alice").await;
    c.assert_alive().await;
}

/// Any frame but `auth` and `ping` before `auth` gets `error NOT_AUTHENTICATED` and close 4000.
#[tokio::test]
async fn frames_before_auth_are_refused_with_4000() {
    let app = GameApp::start().await;
    for frame in [
        json!({"type": "join"}),
        json!({"type": "send", "actionType": "ECHO", "requestId": "r1"}),
        json!({"type": "leave"}),
        json!({"type": "signal", "to": "bob"}),
        json!({"type": "auth", "token": 5}),
    ] {
        let mut c = app.connect("arena", "early").await;
        c.send(frame.clone()).await;
        let (frames, close) = c.frames_until_close().await;
        assert_eq!(
            frames,
            vec![
                json!({"type": "error", "code": "NOT_AUTHENTICATED", "message": NOT_AUTHENTICATED})
            ],
            "{frame}"
        );
        assert_eq!(close, (4000, NOT_AUTHENTICATED.to_owned()), "{frame}");
    }
    assert!(app.hooks.of("early").is_empty());
}

fn assert_invalid_json(frames: &[Value], close: &(u16, String), sent: &str) {
    assert_eq!(frames.len(), 1, "{sent}: {frames:?}");
    let frame = &frames[0];
    assert_eq!(frame["type"], "error", "{sent}");
    assert_eq!(frame["code"], "INVALID_JSON", "{sent}");
    let message = frame["message"].as_str().expect("message");
    assert!(message.starts_with("Invalid JSON: "), "{sent}: {message}");
    assert_eq!(close.0, 4000, "{sent}");
    assert_eq!(close.1, message, "{sent}");
}

const NOT_FRAMES: [&str; 6] = ["nope", "", "[]", "{}", r#"{"type":1}"#, r#"{"type":"ping""#];

/// Text that is not a JSON object with a string `type` gets `error INVALID_JSON` and close 4000,
/// before auth, after auth and after join.
#[tokio::test]
async fn invalid_json_closes_with_4000_before_and_after_auth() {
    let app = GameApp::start().await;
    for text in NOT_FRAMES {
        let mut c = app.connect("arena", "bad-json").await;
        c.send_text(text).await;
        let (frames, close) = c.frames_until_close().await;
        assert_invalid_json(&frames, &close, text);

        let (mut c, _) = app.authed("arena", "bad-json", "alice").await;
        c.send_text(text).await;
        let (frames, close) = c.frames_until_close().await;
        assert_invalid_json(&frames, &close, text);
    }
    // After join: closed the same way; the player keeps its seat for the grace period, as after
    // any dropped connection, then leaves with reason `disconnect`.
    let (mut c, _) = app.joined("arena", "bad-json-joined", "alice").await;
    c.send_text("{not json").await;
    let (frames, close) = c.frames_until_close().await;
    assert_invalid_json(&frames, &close, "{not json");
    app.hooks
        .wait_for("bad-json-joined", "leave alice disconnect")
        .await;
}

/// No `auth` within `limits.game_auth_timeout_ms`: `error AUTH_TIMEOUT`, close 4001. A `ping`
/// in the meantime is answered but does not extend the deadline.
#[tokio::test]
async fn no_auth_within_the_timeout_closes_with_4001() {
    let mut settings = test_settings();
    settings.limits.game_auth_timeout_ms = 400;
    let app = GameApp::start_with(settings).await;
    let started = Instant::now();
    let mut c = app.connect("arena", "slowpoke").await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    c.assert_alive().await;
    let (frames, close) = c.frames_until_close().await;
    let elapsed = started.elapsed();
    assert_eq!(
        frames,
        vec![json!({"type": "error", "code": "AUTH_TIMEOUT", "message": "Authentication timeout"})]
    );
    assert_eq!(close, (4001, "Authentication timeout".to_owned()));
    assert!(
        elapsed >= Duration::from_millis(350) && elapsed < Duration::from_secs(3),
        "closed after {elapsed:?}"
    );
    // An authenticated connection is not timed out.
    let (mut c, _) = app.authed("arena", "slowpoke", "alice").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.assert_alive().await;
}

/// With an EdgeBase secret, bad tokens get `error AUTH_FAILED` (with why) and close 4002: a wrong
/// signature, an expired token, a refresh token, another issuer, a missing `sub`, a token that
/// is not a JWT, an empty one.
#[tokio::test]
async fn bad_tokens_fail_with_4002() {
    let app = GameApp::start_with(secret_settings()).await;
    let now = now_secs();
    let claims = |extra: Value| {
        let mut c = json!({"sub": "alice", "iss": "edgebase:user", "exp": now + 3600});
        for (k, v) in extra.as_object().expect("object") {
            if v.is_null() {
                c.as_object_mut().expect("object").remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let cases = [
        (
            sign(&claims(json!({})), "another-secret"),
            "token signature invalid",
        ),
        (
            sign(&claims(json!({"exp": now - 3600})), SECRET),
            "Invalid or expired token",
        ),
        (
            sign(&claims(json!({"type": "refresh"})), SECRET),
            "refresh tokens cannot open rooms; use an access token",
        ),
        (
            sign(&claims(json!({"iss": "someone-else"})), SECRET),
            "token is not an EdgeBase user token",
        ),
        (
            sign(&claims(json!({"sub": null})), SECRET),
            "token lacks claim sub",
        ),
        ("alice".to_owned(), "Invalid or expired token"),
        (String::new(), "missing token"),
    ];
    for (token, message) in cases {
        let mut c = app.connect("arena", "bad-token").await;
        c.send(json!({"type": "auth", "token": token})).await;
        let (frames, close) = c.frames_until_close().await;
        assert_eq!(
            frames,
            vec![json!({"type": "error", "code": "AUTH_FAILED", "message": message})],
            "{token}"
        );
        assert_eq!(close, (4002, message.to_owned()), "{token}");
    }
    // A good token, with the optional claims, opens the room.
    let token = access_token("alice", json!({"role": "admin", "email": "a@example.com"}));
    let (mut c, success) = app.authed("arena", "bad-token", &token).await;
    assert_eq!(success["userId"], "alice");
    c.join().await;
    let answer = c.answer("WHOAMI", json!({}), "w").await;
    assert_eq!(answer["result"]["role"], "admin");
    assert_eq!(answer["result"]["connectionId"], success["connectionId"]);
}

/// A second `auth` refreshes the token: `auth_refreshed` with the same `connectionId`, and the
/// new token's role applies to later actions (before and after join).
#[tokio::test]
async fn token_refresh_keeps_the_connection() {
    let app = GameApp::start_with(secret_settings()).await;
    let (mut c, success) = app
        .authed("arena", "refresh", &access_token("alice", json!({})))
        .await;
    c.send(json!({"type": "auth", "token": access_token("alice", json!({}))}))
        .await;
    assert_eq!(
        c.recv().await,
        json!({"type": "auth_refreshed", "userId": "alice", "connectionId": success["connectionId"]})
    );
    c.join().await;
    let before = c.answer("WHOAMI", json!({}), "w1").await;
    assert_eq!(before["result"]["role"], "user");
    c.send(json!({"type": "auth", "token": access_token("alice", json!({"role": "admin"}))}))
        .await;
    assert_eq!(
        c.recv().await,
        json!({"type": "auth_refreshed", "userId": "alice", "connectionId": success["connectionId"]})
    );
    let after = c.answer("WHOAMI", json!({}), "w2").await;
    assert_eq!(
        after["result"],
        json!({"userId": "alice", "connectionId": success["connectionId"], "role": "admin"})
    );
    // No second join, no leave.
    assert_eq!(app.hooks.of("refresh"), vec!["create", "join alice"]);
}

/// A failed refresh gets `error AUTH_REFRESH_FAILED`; the socket stays open with its old
/// identity: expired, refresh-type and wrongly signed tokens, and a token for another user.
#[tokio::test]
async fn failed_token_refresh_keeps_the_old_identity() {
    let app = GameApp::start_with(secret_settings()).await;
    let (mut c, success) = app
        .authed("arena", "refresh-fail", &access_token("alice", json!({})))
        .await;
    c.join().await;
    let now = now_secs();
    let expired = sign(
        &json!({"sub": "alice", "iss": "edgebase:user", "exp": now - 3600}),
        SECRET,
    );
    let cases = [
        (
            expired,
            "Invalid or expired token; the connection keeps its identity",
        ),
        (
            access_token("alice", json!({"type": "refresh", "role": "admin"})),
            "refresh tokens cannot open rooms; use an access token; the connection keeps its identity",
        ),
        (
            sign(
                &json!({"sub": "alice", "iss": "edgebase:user", "exp": now + 60, "role": "admin"}),
                "wrong",
            ),
            "token signature invalid; the connection keeps its identity",
        ),
        (
            access_token("mallory", json!({"role": "admin"})),
            "the new token is for another user; the connection keeps its identity",
        ),
    ];
    for (i, (token, message)) in cases.into_iter().enumerate() {
        c.send(json!({"type": "auth", "token": token})).await;
        assert_eq!(
            c.recv().await,
            json!({"type": "error", "code": "AUTH_REFRESH_FAILED", "message": message})
        );
        c.assert_alive().await;
        let who = c.answer("WHOAMI", json!({}), &format!("w{i}")).await;
        assert_eq!(
            who["result"],
            json!({"userId": "alice", "connectionId": success["connectionId"], "role": "user"})
        );
    }
}

/// Unknown frame types get `error UNKNOWN_TYPE`, known ones with a field of the wrong kind and a
/// second `join` get `error INVALID_MESSAGE`; the socket stays open.
#[tokio::test]
async fn unknown_and_malformed_frames_after_auth_keep_the_socket() {
    let app = GameApp::start().await;
    let (mut c, _) = app.authed("arena", "unknown", "alice").await;
    c.send(json!({"type": "signal", "to": "bob"})).await;
    assert_eq!(
        c.recv().await,
        json!({"type": "error", "code": "UNKNOWN_TYPE", "message": "unknown message type \"signal\""})
    );
    c.send(json!({"type": "auth", "token": 7})).await;
    assert_eq!(
        c.recv().await,
        json!({"type": "error", "code": "INVALID_MESSAGE", "message": "invalid auth message: `token` must be a string"})
    );
    c.send(json!({"type": "send", "actionType": "ECHO", "requestId": {"no": 1}}))
        .await;
    assert_eq!(
        c.recv().await,
        json!({"type": "error", "code": "INVALID_MESSAGE", "message": "invalid send message: `requestId` must be a string"})
    );
    c.assert_alive().await;
    c.join().await;
    c.send(json!({"type": "join"})).await;
    assert_eq!(
        c.recv().await,
        json!({"type": "error", "code": "INVALID_MESSAGE", "message": "already joined"})
    );
    c.send(json!({"type": "members"})).await;
    assert_eq!(c.recv().await["code"], "UNKNOWN_TYPE");
    c.assert_alive().await;
    assert_eq!(app.hooks.of("unknown"), vec!["create", "join alice"]);
}

/// `{"type":"ping"}` gets exactly `{"type":"pong"}`, before and after join.
#[tokio::test]
async fn app_level_ping_gets_pong() {
    let app = GameApp::start().await;
    let (mut c, _) = app.authed("arena", "pong", "alice").await;
    c.send(json!({"type": "ping"})).await;
    assert_eq!(c.recv().await, json!({"type": "pong"}));
    c.join().await;
    c.send(json!({"type": "ping", "ts": 5})).await;
    assert_eq!(c.recv().await, json!({"type": "pong"}));
}

/// The next raw message, skipping nothing.
async fn next_raw(c: &mut GameClient) -> Message {
    tokio::time::timeout(WAIT, c.ws.next())
        .await
        .expect("a message within the wait")
        .expect("open")
        .expect("no error")
}

/// WebSocket-level Pings are answered with Pongs carrying the same payload (before auth, after
/// auth, after join), and the server never sends a Ping of its own.
#[tokio::test]
async fn websocket_ping_is_answered_with_pong() {
    let app = GameApp::start().await;
    let mut c = app.connect("arena", "ws-ping").await;
    c.send_message(Message::Ping(b"early".to_vec().into()))
        .await;
    assert_eq!(
        next_raw(&mut c).await,
        Message::Pong(b"early".to_vec().into())
    );
    c.auth("alice").await;
    c.send_message(Message::Ping(b"authed".to_vec().into()))
        .await;
    assert_eq!(
        next_raw(&mut c).await,
        Message::Pong(b"authed".to_vec().into())
    );
    c.join().await;
    c.send_message(Message::Ping(Vec::new().into())).await;
    assert_eq!(next_raw(&mut c).await, Message::Pong(Vec::new().into()));
    // Nothing else comes: in particular no Ping from the server.
    assert!(c.silent_for(QUIET).await);
}

const BINARY: &str = "binary frames are not supported; send JSON text frames";

/// A binary frame gets `error INVALID_JSON` and close 4000, before auth and after join.
#[tokio::test]
async fn binary_frames_close_with_4000() {
    let app = GameApp::start().await;
    let expected = (
        vec![json!({"type": "error", "code": "INVALID_JSON", "message": BINARY})],
        (4000, BINARY.to_owned()),
    );
    let mut c = app.connect("arena", "binary").await;
    c.send_message(Message::binary(
        br#"{"type":"auth","token":"alice"}"#.to_vec(),
    ))
    .await;
    assert_eq!(c.frames_until_close().await, expected);
    let (mut c, _) = app.joined("arena", "binary", "bob").await;
    c.send_message(Message::binary(br#"{"type":"ping"}"#.to_vec()))
        .await;
    assert_eq!(c.frames_until_close().await, expected);
}

/// A frame over `limits.max_frame_bytes` closes with 1009 and the limit in the reason, before
/// auth and after join; a frame of exactly the limit is fine.
#[tokio::test]
async fn oversized_frames_close_with_1009() {
    let mut settings = test_settings();
    settings.limits.max_frame_bytes = 4096;
    let app = GameApp::start_with(settings).await;
    let frame_of = |len: usize| {
        let empty = r#"{"type":"ping","pad":""}"#;
        format!(
            r#"{{"type":"ping","pad":"{}"}}"#,
            "x".repeat(len - empty.len())
        )
    };
    let reason = (1009, "message too big: limit is 4096 bytes".to_owned());
    let mut c = app.connect("arena", "big").await;
    c.send_text(&frame_of(4097)).await;
    assert_eq!(c.closed().await, reason);

    let (mut c, _) = app.joined("arena", "big", "alice").await;
    c.send_text(&frame_of(4096)).await;
    assert_eq!(c.recv().await, json!({"type": "pong"}));
    c.send_text(&frame_of(10_000)).await;
    assert_eq!(c.closed().await, reason);
    // Not a leave: the seat is held for the grace period.
    tokio::time::sleep(GRACE / 2).await;
    assert_eq!(app.hooks.of("big"), vec!["create", "join alice"]);
}

/// A player that does not read, while another's actions broadcast large messages, is closed
/// with 1013 once `outbound_queue_bytes` wait for it: game rooms use the same byte-capped
/// outbox as canvas rooms (a few large messages, far from any frame count).
#[tokio::test]
async fn player_that_does_not_read_is_closed_once_its_queue_holds_the_byte_cap() {
    let mut settings = test_settings();
    settings.limits.outbound_queue_bytes = 256 * 1024;
    let app = GameApp::start_with(settings).await;
    // A small receive buffer, so the kernel absorbs little before the server's queue fills.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = socket.connect(app.addr).await.expect("tcp connects");
    let (ws, _) = tokio_tungstenite::client_async(
        app.url("arena", "bytes"),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .expect("upgrade");
    let mut slow = GameClient { ws };
    slow.auth("slow").await;
    slow.join().await;
    let (mut fast, _) = app.joined("arena", "bytes", "fast").await;
    let data = "x".repeat(256 * 1024);
    let started = Instant::now();
    let mut sent = 0;
    while app
        .games
        .status(&GameApp::key("arena", "bytes"))
        .map(|s| s.connected.load(std::sync::atomic::Ordering::Relaxed))
        != Some(1)
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the reader is still connected after {sent} messages"
        );
        let payload = json!({"type": "big", "data": data, "exclude": ["fast"]});
        let answer = fast.action("MSG", payload, &format!("r{sent}")).await;
        if answer.last().expect("an answer")["type"] == "action_error" {
            // Over the action rate: wait for a token.
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else {
            sent += 1;
        }
    }
    assert!(sent < 100, "closed after {sent} messages");
    let (_, close) = slow.frames_until_close().await;
    assert_eq!(
        close,
        (1013, "client too slow: outbound queue full".to_owned())
    );
}
