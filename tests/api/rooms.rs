//! Rooms through the real server: idle eviction, persistence in the reference file format,
//! reloading, and the manager's room API.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use weft::ids::RoomId;
use weft::rooms::CloseReason;

use crate::helpers::{
    ack, count, doc_patch, eventually, file_settings, read_json, reconnect, spawn_app_with, synced,
    within,
};

fn id(room: &str) -> RoomId {
    RoomId::parse(room).expect("valid room id")
}

/// After the last client leaves, the room is evicted once `idle_timeout` passes; its file holds
/// the document in the reference format with tombstones kept, and a new client sees it all.
#[tokio::test]
async fn idle_room_is_evicted_saved_and_reloaded() {
    let (mut settings, dir) = file_settings();
    settings.rooms.idle_timeout_ms = 200;
    settings.rooms.fold_interval_ms = 60_000;
    let app = spawn_app_with(settings).await;
    let room = "r-idle";
    let (mut a, _) = app.join(room, "a").await;
    a.send(doc_patch(
        "m1",
        json!([{"e1/S": {"_exists": true, "x": 1, "y": [1, 2]}, "e2/S": {"_exists": true, "v": 1}}]),
    ))
    .await;
    a.send(doc_patch("m2", json!([{"e2/S": {"_exists": false}}])))
        .await;
    a.send(doc_patch("m3", json!([{"e1/S": {"x": 2}}]))).await;
    assert_eq!(
        a.recv_n(3).await,
        vec![ack("m1", 1), ack("m2", 2), ack("m3", 3)]
    );
    assert!(!dir.path().join("r-idle.json").exists(), "throttled");
    a.leave().await;

    let canvas = &app.canvas;
    let saved = dir.path().join("r-idle.json");
    let log = dir.path().join("r-idle.log");
    // An evicted room leaves the open rooms first, then finishes its last fold: the snapshot
    // is written, then the log it covers removed.
    eventually("the idle room is evicted and folded", || {
        let (saved, log) = (saved.clone(), log.clone());
        async move { !canvas.room_ids().contains(&id(room)) && saved.exists() && !log.exists() }
    })
    .await;
    assert_eq!(
        read_json(&saved),
        json!({"timestamp": 3,
               "state": {"e1/S": {"_exists": true, "x": 2, "y": [1, 2]}, "e2/S": {"_exists": false}},
               "timestamps": {"e1/S": {"_exists": 1, "x": 3, "y": 1}, "e2/S": {"_exists": 2}}})
    );
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .expect("data dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    assert_eq!(files, vec!["r-idle.json".to_owned()], "no temp files left");

    let (mut b, frames) = app.join(room, "b").await;
    assert_eq!(
        frames,
        vec![
            count(1),
            json!({"type": "patch", "documentPatches": [{"e1/S": {"_exists": true, "x": 2, "y": [1, 2]}, "e2/S": {"_exists": false}}], "clientId": "", "timestamp": 3}),
            synced(3),
        ]
    );
    assert_eq!(app.canvas.room_ids(), vec![id(room)]);
    let mut c = app.connect(room, "c").await;
    assert_eq!(c.recv().await, count(2));
    c.send(reconnect(2)).await;
    assert_eq!(
        c.recv_n(2).await,
        vec![
            json!({"type": "patch", "documentPatches": [{"e1/S": {"x": 2}}], "clientId": "", "timestamp": 3}),
            synced(3),
        ]
    );
    b.send(doc_patch("m4", json!([{"e1/S": {"x": 3}}]))).await;
    assert_eq!(b.recv_n(2).await, vec![count(2), ack("m4", 4)]);
}

/// A client joining before the idle timeout keeps the room alive: no eviction, no close.
#[tokio::test]
async fn room_rejoined_before_the_idle_timeout_stays_live() {
    let (mut settings, _dir) = file_settings();
    settings.rooms.idle_timeout_ms = 300;
    let app = spawn_app_with(settings).await;
    let room = "r-rejoin";
    let (mut a, _) = app.join(room, "a").await;
    a.send(doc_patch("m1", json!([{"e/S": {"_exists": true}}])))
        .await;
    assert_eq!(a.recv().await, ack("m1", 1));
    a.leave().await;
    let (mut b, frames) = app.join(room, "b").await;
    assert_eq!(frames.last(), Some(&synced(1)));
    assert!(b.silent_for(Duration::from_millis(700)).await);
    assert_eq!(app.canvas.room_ids(), vec![id(room)]);
    b.send(doc_patch("m2", json!([{"e/S": {"x": 1}}]))).await;
    assert_eq!(b.recv().await, ack("m2", 2));
}

/// With a short save throttle, a live room's changes reach its file without any eviction.
#[tokio::test]
async fn live_room_is_saved_after_the_throttle() {
    let (mut settings, dir) = file_settings();
    settings.rooms.fold_interval_ms = 50;
    let app = spawn_app_with(settings).await;
    let room = "r-throttle";
    let path = dir.path().join("r-throttle.json");
    let (mut a, _) = app.join(room, "a").await;
    for (i, clock) in [("m1", 1u64), ("m2", 2)] {
        a.send(doc_patch(
            i,
            json!([{"e/S": {"_exists": true, "n": clock}}]),
        ))
        .await;
        assert_eq!(a.recv().await, ack(i, clock));
        let path = &path;
        eventually("the write is saved", || async move {
            path.exists() && read_json(path)["timestamp"] == clock
        })
        .await;
    }
    assert_eq!(read_json(&path)["state"]["e/S"]["n"], 2);
    assert_eq!(app.canvas.room_ids(), vec![id(room)]);
}

/// A snapshot written by the reference server (no tombstones) is served, and the clock continues
/// from it; stamps above the snapshot's `timestamp` raise the clock so values are never reused.
#[tokio::test]
async fn reference_snapshot_is_loaded_and_the_clock_continues() {
    let (settings, dir) = file_settings();
    std::fs::write(
        dir.path().join("r-ref.json"),
        r#"{"timestamp":5,"state":{"a/S":{"_exists":true,"x":1}},"timestamps":{"a/S":{"_exists":2,"x":5}}}"#,
    )
    .expect("write");
    std::fs::write(
        dir.path().join("r-skew.json"),
        r#"{"timestamp":2,"state":{"a/S":{"_exists":true,"x":1}},"timestamps":{"a/S":{"_exists":2,"x":7}}}"#,
    )
    .expect("write");
    let app = spawn_app_with(settings).await;
    let mut c = app.connect("r-ref", "c").await;
    assert_eq!(c.recv().await, count(1));
    c.send(reconnect(4)).await;
    assert_eq!(
        c.recv_n(2).await,
        vec![
            json!({"type": "patch", "documentPatches": [{"a/S": {"x": 1}}], "clientId": "", "timestamp": 5}),
            synced(5),
        ]
    );
    c.send(doc_patch("m1", json!([{"a/S": {"x": 2}}]))).await;
    assert_eq!(c.recv().await, ack("m1", 6));

    let (mut d, frames) = app.join("r-skew", "d").await;
    assert_eq!(frames.last(), Some(&synced(7)));
    d.send(doc_patch("m1", json!([{"a/S": {"x": 2}}]))).await;
    assert_eq!(d.recv().await, ack("m1", 8));
}

/// A room whose file cannot be read is not served (the client is closed with 1011) and the file
/// is left as it was.
#[tokio::test]
async fn unreadable_snapshot_refuses_the_room_and_keeps_the_file() {
    let (settings, dir) = file_settings();
    let path = dir.path().join("r-corrupt.json");
    std::fs::write(&path, "{not json").expect("write");
    let app = spawn_app_with(settings).await;
    let mut c = app.connect("r-corrupt", "c").await;
    assert_eq!(
        c.closed().await,
        (
            CloseCode::Error,
            "room storage unavailable, retry later".to_owned()
        )
    );
    assert_eq!(std::fs::read(&path).expect("file"), b"{not json");
    assert!(app.metric("weft_storage_errors").await >= 1);
}

/// With file storage a write whose log append fails (a directory holds the log's name, as an
/// unwritable disk would) is never acked: the room's clients are closed with 1011, and once
/// the disk is back the room reloads without that write.
#[tokio::test]
async fn a_failed_file_append_is_never_acked() {
    let (settings, dir) = file_settings();
    let app = spawn_app_with(settings).await;
    let (mut a, _) = app.join("r-nolog", "a").await;
    let log = dir.path().join("r-nolog.log");
    std::fs::create_dir(&log).expect("block the log");
    a.send(doc_patch("m1", json!([{"e/S": {"_exists": true}}])))
        .await;
    let closed = loop {
        match a.ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).expect("json");
                assert_ne!(frame["type"], "ack", "a write that is not stored was acked");
            }
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("connection ended without a close: {other:?}"),
        }
    };
    assert_eq!(closed, Some(1011));
    std::fs::remove_dir(&log).expect("unblock");
    let (mut b, _) = app.join("r-nolog", "b").await;
    b.send(reconnect(0)).await;
    assert_eq!(b.recv_until("synced").await.last(), Some(&synced(0)));
}

/// Closing a room through the manager closes its clients with the given reason and saves it.
#[tokio::test]
async fn close_room_closes_its_clients_and_saves() {
    let (settings, dir) = file_settings();
    let app = spawn_app_with(settings).await;
    let room = "r-close";
    let (mut a, _) = app.join(room, "a").await;
    a.send(doc_patch("m1", json!([{"e/S": {"_exists": true}}])))
        .await;
    assert_eq!(a.recv().await, ack("m1", 1));
    let room_id = id(room);
    let (closed, result) = tokio::join!(
        a.closed(),
        within(
            app.canvas
                .close_room(&room_id, CloseReason::new(4000, "room archived"))
        )
    );
    result.expect("saved");
    assert_eq!(closed, (CloseCode::from(4000), "room archived".to_owned()));
    assert_eq!(read_json(&dir.path().join("r-close.json"))["timestamp"], 1);
    assert!(app.canvas.existing(&id(room)).is_none());
}

/// Concurrent first connects to a room that is not loaded share one room (one load): all are in
/// its session list and all get each other's writes.
#[tokio::test]
async fn concurrent_first_connects_share_one_room() {
    let (settings, dir) = file_settings();
    std::fs::write(
        dir.path().join("r-race.json"),
        r#"{"timestamp":1,"state":{"a/S":{"_exists":true}},"timestamps":{"a/S":{"_exists":1}}}"#,
    )
    .expect("write");
    let app = spawn_app_with(settings).await;
    let names: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
    let joined = futures_util::future::join_all(names.iter().map(|n| app.join("r-race", n))).await;
    let mut clients = Vec::new();
    for (c, frames) in joined {
        assert_eq!(frames.last(), Some(&synced(1)));
        clients.push(c);
    }
    assert_eq!(app.canvas.room_ids(), vec![id("r-race")]);
    assert_eq!(app.sessions("r-race").await.len(), 8);
    clients[0]
        .send(doc_patch("m1", json!([{"b/S": {"_exists": true}}])))
        .await;
    for (i, c) in clients.iter_mut().enumerate() {
        let kind = if i == 0 { "ack" } else { "patch" };
        let frames = c.recv_until(kind).await;
        assert_eq!(frames.last().expect("a frame")["timestamp"], 2, "c{i}");
    }
}

/// Frames a client sends while its room is still loading (a large snapshot) wait and are handled
/// in order: the `reconnect` is answered first, then each patch is acked.
#[tokio::test]
async fn frames_sent_while_the_room_loads_are_handled_in_order() {
    let (settings, dir) = file_settings();
    let state: serde_json::Map<String, serde_json::Value> = (0..20_000)
        .map(|i| (format!("e{i}/S"), json!({"_exists": true, "x": i})))
        .collect();
    let timestamps: serde_json::Map<String, serde_json::Value> = (0..20_000)
        .map(|i| (format!("e{i}/S"), json!({"_exists": 1, "x": 1})))
        .collect();
    std::fs::write(
        dir.path().join("r-loading.json"),
        json!({"timestamp": 1, "state": state, "timestamps": timestamps}).to_string(),
    )
    .expect("write");
    let app = spawn_app_with(settings).await;
    let mut c = app.connect("r-loading", "c").await;
    c.send(reconnect(0)).await;
    for i in 1..=3 {
        c.send(doc_patch(&format!("m{i}"), json!([{"e0/S": {"x": -i}}])))
            .await;
    }
    let frames = c.recv_n(6).await;
    assert_eq!(frames[0], count(1));
    assert_eq!(
        (&frames[1]["type"], &frames[1]["timestamp"]),
        (&json!("patch"), &json!(1))
    );
    assert_eq!(
        frames[1]["documentPatches"][0]
            .as_object()
            .expect("diff")
            .len(),
        20_000
    );
    assert_eq!(
        frames[2..],
        [synced(1), ack("m1", 2), ack("m2", 3), ack("m3", 4)]
    );
}
