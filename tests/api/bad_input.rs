//! Hostile and broken input: what is ignored, what closes the socket and with which code, and
//! that the server, the room's document and the other clients are unaffected either way.

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{
    ack, count, doc_patch, file_settings, spawn_app, spawn_app_with, test_settings, Client,
    TestApp, QUIET,
};

/// The longest close reason a WebSocket close frame can carry (RFC 6455 §5.5).
const MAX_REASON: usize = 123;

/// A room with one write (clock 1) by `a`, and `a` ready to receive.
async fn room_with_a_write(app: &TestApp, room: &str) -> (Client, Value) {
    let (mut a, _) = app.join(room, "a").await;
    a.send(doc_patch(
        "w1",
        json!([{"e/S": {"_exists": true, "x": 1}, "gone/S": {"_exists": false}}]),
    ))
    .await;
    assert_eq!(a.recv().await, ack("w1", 1));
    let doc = app.document(room).await;
    (a, doc)
}

/// `a` can still write (its next write gets clock `next`), and a newcomer sees the document.
async fn room_still_works(app: &TestApp, room: &str, a: &mut Client, next: u64) {
    a.send(doc_patch("after", json!([{"e/S": {"x": 2}}]))).await;
    assert_eq!(a.recv_until("ack").await.last(), Some(&ack("after", next)));
    let (_n, frames) = app.join(room, "newcomer").await;
    assert_eq!(
        frames.last(),
        Some(&json!({"type": "synced", "timestamp": next}))
    );
    let (status, _) = app.http_get("/healthz").await;
    assert_eq!(status, 200);
}

/// Frames that are not JSON objects with a string `type`, or have an unknown `type`, are ignored
/// and counted; the connection stays open and its next frame works.
#[tokio::test]
async fn garbage_frames_are_ignored_and_counted() {
    let app = spawn_app().await;
    let room = "b-garbage";
    let (mut a, before) = room_with_a_write(&app, room).await;
    let (mut b, _) = app.join(room, "b").await;
    assert_eq!(a.recv().await, count(2));
    let ignored_before = app.metric("weft_frames_ignored").await;
    let garbage = [
        "",
        "not json",
        "{",
        "null",
        "true",
        "42",
        "\"patch\"",
        "[]",
        "[1,2,3]",
        "{}",
        r#"{"type":5}"#,
        r#"{"type":null,"messageId":"m"}"#,
        r#"{"type":"hello","messageId":"m"}"#,
        r#"{"type":"PATCH","messageId":"m","documentPatches":[{"e/S":{"x":9}}]}"#,
        r#"{"type":"ack","messageId":"m","timestamp":99}"#,
    ];
    for frame in garbage {
        b.send_text(frame.to_owned()).await;
    }
    b.send(doc_patch("ok", json!([{"f/S": {"_exists": true}}])))
        .await;
    assert_eq!(b.recv().await, ack("ok", 2));
    assert_eq!(
        app.metric("weft_frames_ignored").await,
        ignored_before + garbage.len() as u64
    );
    let mut want = before;
    want["timestamp"] = json!(2);
    want["state"]["f/S"] = json!({"_exists": true});
    want["timestamps"]["f/S"] = json!({"_exists": 2});
    assert_eq!(app.document(room).await, want);
    assert_eq!(a.recv().await["clientId"], "b");
    room_still_works(&app, room, &mut a, 3).await;
}

/// A JSON array is not a frame, even when its elements line up with a frame's fields: it is
/// ignored like the reference server ignores it (`msg.type` of an array is undefined).
#[tokio::test]
async fn array_frames_are_ignored_even_when_shaped_like_a_frame() {
    let app = spawn_app().await;
    let room = "b-array";
    let (mut a, before) = room_with_a_write(&app, room).await;
    let (mut b, _) = app.join(room, "b").await;
    assert_eq!(a.recv().await, count(2));
    let ignored_before = app.metric("weft_frames_ignored").await;
    let shaped = [
        r#"["patch","m1",null,null,[{"e/S":{"x":66}}]]"#,
        r#"["reconnect",null,0,2]"#,
        r#"["patch","m2"]"#,
    ];
    for frame in shaped {
        b.send_text(frame.to_owned()).await;
    }
    b.send(doc_patch("ok", json!([{"e/S": {"x": 3}}]))).await;
    assert_eq!(
        b.recv().await,
        ack("ok", 2),
        "the array frames must produce nothing"
    );
    assert_eq!(
        app.metric("weft_frames_ignored").await,
        ignored_before + shaped.len() as u64
    );
    let mut want = before;
    want["timestamp"] = json!(2);
    want["state"]["e/S"]["x"] = json!(3);
    want["timestamps"]["e/S"]["x"] = json!(2);
    assert_eq!(app.document(room).await, want);
}

/// Binary frames holding JSON text are handled like text frames; binary frames that are not
/// UTF-8 are ignored and counted.
#[tokio::test]
async fn binary_frames_holding_json_are_handled_like_text() {
    let app = spawn_app().await;
    let room = "b-binary";
    let (mut a, _) = app.join(room, "a").await;
    let (mut b, _) = app.join(room, "b").await;
    assert_eq!(a.recv().await, count(2));
    let ignored_before = app.metric("weft_frames_ignored").await;
    b.send_message(Message::binary(vec![0xff, 0xfe, b'{', 0x80]))
        .await;
    let frame = doc_patch("bin", json!([{"e/S": {"_exists": true}}]));
    b.send_message(Message::binary(frame.to_string().into_bytes()))
        .await;
    assert_eq!(b.recv().await, ack("bin", 1));
    assert_eq!(
        a.recv().await,
        json!({"type": "patch", "documentPatches": [{"e/S": {"_exists": true}}], "clientId": "b", "timestamp": 1})
    );
    assert_eq!(app.metric("weft_frames_ignored").await, ignored_before + 1);
}

/// Deeply nested JSON (100 000 levels) that is not a frame is ignored without harm: no stack
/// overflow, the connection stays usable.
#[tokio::test]
async fn deeply_nested_json_is_ignored() {
    let app = spawn_app().await;
    let room = "b-deep";
    let (mut a, before) = room_with_a_write(&app, room).await;
    let (mut b, _) = app.join(room, "b").await;
    assert_eq!(a.recv().await, count(2));
    let ignored_before = app.metric("weft_frames_ignored").await;
    let deep = [
        "[".repeat(100_000),
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
        r#"{"a":"#.repeat(50_000),
        format!(r#"{{"x":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000)),
        format!(
            r#"{{"type":"hello","x":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        ),
    ];
    for frame in &deep {
        b.send_text(frame.clone()).await;
    }
    b.send(json!({"type": "patch", "messageId": "ok", "ephemeralPatches": [{"c/b": {"_exists": true}}]}))
        .await;
    assert_eq!(b.recv().await, ack("ok", 1));
    assert_eq!(
        app.metric("weft_frames_ignored").await,
        ignored_before + deep.len() as u64
    );
    assert_eq!(app.document(room).await, before);
    a.recv().await;
    room_still_works(&app, room, &mut a, 2).await;
}

/// Deep nesting inside the patches of a known frame is a malformed field: the socket is closed
/// with 1007 and the server stays healthy.
#[tokio::test]
async fn deep_nesting_inside_patches_closes_with_1007() {
    let app = spawn_app().await;
    let room = "b-deep-patch";
    let (mut a, before) = room_with_a_write(&app, room).await;
    let (mut b, _) = app.join(room, "b").await;
    assert_eq!(a.recv().await, count(2));
    b.send_text(format!(
        r#"{{"type":"patch","messageId":"m","documentPatches":[{{"e/S":{{"x":{}{}}}}}]}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    ))
    .await;
    let (code, reason) = b.closed().await;
    assert_eq!(code, CloseCode::Invalid);
    assert!(
        reason.starts_with("invalid patch frame: `documentPatches`: recursion limit exceeded"),
        "{reason}"
    );
    assert_eq!(a.recv().await, count(1));
    assert_eq!(app.document(room).await, before);
    room_still_works(&app, room, &mut a, 2).await;
}

/// A known frame with a field of the wrong shape closes the socket with 1007 and a reason naming
/// the problem; nothing of the frame is applied (not even its valid parts), others are unaffected.
#[tokio::test]
async fn malformed_fields_close_with_1007_and_apply_nothing() {
    let mut settings = test_settings();
    settings.limits.max_buffer_len = 1000;
    let app = spawn_app_with(settings).await;
    let room = "b-invalid";
    let (mut a, before) = room_with_a_write(&app, room).await;
    let good = r#"[{"e/S":{"x":77},"new/S":{"_exists":true}}]"#;
    let cases: Vec<(String, &str)> = vec![
        (
            format!(r#"{{"type":"patch","messageId":1,"documentPatches":{good}}}"#),
            "invalid patch frame: `messageId` must be a string",
        ),
        (
            format!(r#"{{"type":"patch","documentPatches":{good}}}"#),
            "invalid patch frame: `messageId` must be a string",
        ),
        (
            r#"{"type":"patch","messageId":"m","documentPatches":"abc"}"#.into(),
            "invalid patch frame: `documentPatches`: patches must be an array of objects",
        ),
        (
            r#"{"type":"patch","messageId":"m","documentPatches":{"e/S":{"x":1}}}"#.into(),
            "invalid patch frame: `documentPatches`: patches must be an array of objects",
        ),
        (
            r#"{"type":"patch","messageId":"m","documentPatches":[5]}"#.into(),
            "invalid patch frame: `documentPatches`: patch 0 must be an object",
        ),
        (
            r#"{"type":"patch","messageId":"m","documentPatches":[{"e/S":{"x":1}},{"e/S":null}]}"#
                .into(),
            "invalid patch frame: `documentPatches`: component \"e/S\" must be an object",
        ),
        (
            r#"{"type":"patch","messageId":"m","documentPatches":[{"e/S":[1]}]}"#.into(),
            "invalid patch frame: `documentPatches`: component \"e/S\" must be an object",
        ),
        (
            r#"{"type":"patch","messageId":"m","documentPatches":[{"e/S":{"_exists":"no"}}]}"#
                .into(),
            "invalid patch frame: `documentPatches`: component \"e/S\": `_exists` must be a boolean",
        ),
        (
            r#"{"type":"patch","messageId":"m","documentPatches":[{"e/S":{"pts":{"__buf":1,"len":-1,"runs":[]}}}]}"#.into(),
            "invalid patch frame: `documentPatches`: component \"e/S\" field \"pts\": buffer delta `len` must be a non-negative integer",
        ),
        (
            r#"{"type":"patch","messageId":"m","documentPatches":[{"e/S":{"p":{"__buf":1,"len":1001,"runs":[]}}}]}"#.into(),
            "invalid patch frame: `documentPatches`: component \"e/S\" field \"p\": buffer delta `len` 1001 exceeds the limit of 1000",
        ),
        (
            r#"{"type":"patch","messageId":"m","documentPatches":[{"e/S":{"p":{"__buf":1,"len":2,"runs":[[0,["a"]]]}}}]}"#.into(),
            "invalid patch frame: `documentPatches`: component \"e/S\" field \"p\": buffer delta `runs` must be an array of [offset, [numbers]] pairs",
        ),
        (
            format!(r#"{{"type":"patch","messageId":"m","documentPatches":{good},"ephemeralPatches":[[1]]}}"#),
            "invalid patch frame: `ephemeralPatches`: patch 0 must be an object",
        ),
        (
            format!(r#"{{"type":"patch","messageId":"m","documentPatches":{good},"ephemeralPatches":[{{"c/a":null}}]}}"#),
            "invalid patch frame: `ephemeralPatches`: component \"c/a\" must be an object",
        ),
        (
            format!(r#"{{"type":"reconnect","lastTimestamp":-1,"protocolVersion":2,"documentPatches":{good}}}"#),
            "invalid reconnect frame: `lastTimestamp` must be a non-negative integer",
        ),
        (
            r#"{"type":"reconnect","lastTimestamp":"5","protocolVersion":2}"#.into(),
            "invalid reconnect frame: `lastTimestamp` must be a non-negative integer",
        ),
        (
            r#"{"type":"reconnect","lastTimestamp":1.5,"protocolVersion":2}"#.into(),
            "invalid reconnect frame: `lastTimestamp` must be a non-negative integer",
        ),
        (
            r#"{"type":"reconnect","lastTimestamp":0,"protocolVersion":2,"documentPatches":[{"e/S":3}]}"#.into(),
            "invalid reconnect frame: `documentPatches`: component \"e/S\" must be an object",
        ),
        (
            r#"{"type":"auth-refresh"}"#.into(),
            "invalid auth-refresh frame: `token` must be a string",
        ),
        (
            r#"{"type":"auth-refresh","token":5}"#.into(),
            "invalid auth-refresh frame: `token` must be a string",
        ),
    ];
    let invalid_before = app.metric("weft_frames_invalid").await;
    for (frame, reason) in &cases {
        let (mut v, _) = app.join(room, "v").await;
        assert_eq!(a.recv().await, count(2));
        v.send_text(frame.clone()).await;
        let want = &reason[..reason.len().min(MAX_REASON)];
        assert_eq!(
            v.closed().await,
            (CloseCode::Invalid, want.to_owned()),
            "{frame}"
        );
        assert_eq!(a.recv().await, count(1), "{frame}");
    }
    assert_eq!(
        app.metric("weft_frames_invalid").await,
        invalid_before + cases.len() as u64
    );
    assert_eq!(app.document(room).await, before);
    assert!(a.silent_for(QUIET).await);
    room_still_works(&app, room, &mut a, 2).await;
}

/// A close reason that would exceed a close frame's 123 bytes (it quotes a long client-chosen
/// key) is cut to fit, so the client still gets a valid close frame with 1007.
#[tokio::test]
async fn overlong_close_reason_is_cut_to_a_valid_close_frame() {
    let app = spawn_app().await;
    let room = "b-long-reason";
    let (mut a, _) = app.join(room, "a").await;
    let (mut b, _) = app.join(room, "b").await;
    assert_eq!(a.recv().await, count(2));
    let key = "é".repeat(150);
    b.send_text(format!(
        r#"{{"type":"patch","messageId":"m","documentPatches":[{{"{key}":null}}]}}"#
    ))
    .await;
    let (code, reason) = b.close_or_error().await.expect("a clean close frame");
    assert_eq!(code, CloseCode::Invalid);
    assert!(reason.len() <= MAX_REASON, "{} bytes", reason.len());
    assert!(
        reason.starts_with("invalid patch frame: `documentPatches`: component \"éé"),
        "{reason}"
    );
    assert_eq!(a.recv().await, count(1));
}

/// Missing ids and hostile room ids (path traversal, separators, overlong, hidden, percent
/// encoded) are refused with 1008 and a reason naming the parameter; no room is created and no
/// file is written.
#[tokio::test]
async fn missing_or_hostile_ids_are_refused_with_1008() {
    let (settings, dir) = file_settings();
    let app = spawn_app_with(settings).await;
    let chars = "invalid roomId: room id may contain only A-Z, a-z, 0-9, '_', '-', '.' and must not start with '.'";
    let long = "x".repeat(200);
    let client = "invalid clientId: client id must be 1 to 256 bytes without control characters";
    let long_client = "c".repeat(257);
    let cases = [
        (String::new(), "missing roomId query parameter"),
        ("clientId=c".into(), "missing roomId query parameter"),
        ("roomId=r".into(), "missing clientId query parameter"),
        ("roomId=../x&clientId=c".into(), chars),
        ("roomId=..&clientId=c".into(), chars),
        ("roomId=a/b&clientId=c".into(), chars),
        ("roomId=a%2Fb&clientId=c".into(), chars),
        ("roomId=%2e%2e%2f&clientId=c".into(), chars),
        ("roomId=%2e%2e%2fetc%2fpasswd&clientId=c".into(), chars),
        ("roomId=.hidden&clientId=c".into(), chars),
        ("roomId=a%00b&clientId=c".into(), chars),
        ("roomId=a%5Cb&clientId=c".into(), chars),
        ("roomId=a+b&clientId=c".into(), chars),
        (
            format!("roomId={long}&clientId=c"),
            "invalid roomId: room id is longer than 128 bytes",
        ),
        (
            "roomId=&clientId=c".into(),
            "invalid roomId: room id must not be empty",
        ),
        ("roomId=r&clientId=".into(), client),
        ("roomId=r&clientId=a%0Ab".into(), client),
        (format!("roomId=r&clientId={long_client}"), client),
    ];
    let denied_before = app.metric("weft_connects_denied").await;
    for (query, reason) in &cases {
        let mut c = app.connect_query(query).await;
        assert_eq!(
            c.closed().await,
            (CloseCode::Policy, (*reason).to_owned()),
            "{query}"
        );
    }
    assert_eq!(
        app.metric("weft_connects_denied").await,
        denied_before + cases.len() as u64
    );
    assert!(app.canvas.room_ids().is_empty());
    let entries: Vec<_> = std::fs::read_dir(dir.path()).expect("data dir").collect();
    assert!(entries.is_empty(), "{entries:?}");
    // A room id of exactly 128 allowed characters is fine.
    let ok = "y".repeat(128);
    let (_c, frames) = app.join(&ok, "c").await;
    assert_eq!(
        frames,
        vec![count(1), json!({"type": "synced", "timestamp": 0})]
    );
}

/// Bad input on one socket does not reach the other rooms.
#[tokio::test]
async fn invalid_frame_in_one_room_leaves_other_rooms_alone() {
    let app = spawn_app().await;
    let (mut a, _) = app.join("b-iso-1", "a").await;
    let (mut b, _) = app.join("b-iso-2", "b").await;
    b.send_text(r#"{"type":"patch","messageId":"m","documentPatches":[{"e/S":null}]}"#.into())
        .await;
    assert_eq!(b.closed().await.0, CloseCode::Invalid);
    a.send(doc_patch("m1", json!([{"e/S": {"_exists": true}}])))
        .await;
    assert_eq!(a.recv().await, ack("m1", 1));
    assert!(a.silent_for(QUIET).await);
}
