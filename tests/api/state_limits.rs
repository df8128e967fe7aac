//! Limits on what a room holds (document size and values, values per request, fields per
//! component, presence per session), and presence that belongs to a session.

use serde_json::{json, Map, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::helpers::{
    ack, count, doc_patch, spawn_app, spawn_app_with, synced, test_settings, within, Client,
    TestApp,
};
use weft::config::Settings;
use weft::storage::StorageKind;

/// The report's 142-byte frame: a buffer delta asking for an array of 2^20 zeros.
fn amplification_frame(key: &str) -> String {
    format!(
        r#"{{"type":"patch","messageId":"m","documentPatches":[{{"{key}":{{"_exists":true,"pts":{{"__buf":1,"len":1048576,"runs":[]}}}}}}]}}"#
    )
}

fn too_big(reason: &str) -> (CloseCode, String) {
    (CloseCode::Size, reason.to_owned())
}

/// Settings with file storage in a fresh temporary directory, so a server can be restarted in
/// process (an in-process RocksDB is not released by shutdown; the log replay's refusal is
/// tested in `storage::rocks`).
fn file_settings() -> (Settings, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = test_settings();
    settings.storage = StorageKind::File;
    settings.data_dir = dir.path().to_path_buf();
    (settings, dir)
}

async fn stop(app: TestApp) {
    assert!(within(app.shutdown.shutdown()).await, "saved on shutdown");
    within(app.server)
        .await
        .expect("server task")
        .expect("server ran cleanly");
}

/// The 142-byte buffer frame, sent 32 times on fresh sockets with different keys, is refused
/// each time with 1009 naming `max_request_values`, before anything is applied: no ack, no
/// relay, the document unchanged, nothing saved (a restart finds only the watcher's write).
#[tokio::test]
async fn buffer_amplification_frames_are_refused_and_never_stored() {
    let (settings, _dir) = file_settings();
    let app = spawn_app_with(settings.clone()).await;
    let room = "s-amplify";
    let (mut watcher, _) = app.join(room, "w").await;
    for n in 0..32 {
        let (mut c, _) = app.join(room, &format!("c{n}")).await;
        c.send_text(amplification_frame(&format!("s{n}/Stroke")))
            .await;
        let (frames, close) = c.frames_until_close().await;
        assert_eq!(
            close,
            too_big("request would create more than max_request_values (524288) values")
        );
        assert!(
            frames.iter().all(|f| f["type"] == "clientCount"),
            "no ack: {frames:?}"
        );
    }
    assert_eq!(app.metric("weft_requests_over_limit").await, 32);
    let doc = app.document(room).await;
    assert_eq!(
        (doc["timestamp"].clone(), doc["state"].clone()),
        (json!(0), json!({}))
    );
    // The watcher saw only the others come and go.
    watcher.send(json!({"type": "patch", "messageId": "w1", "documentPatches": [{"w/S": {"_exists": true}}]})).await;
    let mut frames = watcher.recv_until("ack").await;
    assert_eq!(frames.pop(), Some(ack("w1", 1)));
    assert!(
        frames.iter().all(|f| f["type"] == "clientCount"),
        "nothing relayed: {frames:?}"
    );
    stop(app).await;
    let app = spawn_app_with(settings).await;
    let (_c, frames) = app.join(room, "again").await;
    assert_eq!(
        frames.last(),
        Some(&synced(1)),
        "only the watcher's write was stored"
    );
}

/// A room stored before the limits existed, bigger than they now allow, is refused alone with
/// 1009 naming the setting (the process and another room keep working), and loads again once
/// the operator raises the limit.
#[tokio::test]
async fn a_stored_room_over_the_limits_is_refused_alone() {
    let (mut settings, _dir) = file_settings();
    let app = spawn_app_with(settings.clone()).await;
    let room = "s-stored-big";
    let (mut c, _) = app.join(room, "c").await;
    for n in 1..=3u64 {
        // Three strokes of 1000 points each (~3000 values).
        let frame = amplification_frame(&format!("s{n}/Stroke"))
            .replace("1048576", "1000")
            .replace("\"m\"", &format!("\"m{n}\""));
        c.send_text(frame).await;
        let frames = c.recv_until("ack").await;
        assert_eq!(frames.last(), Some(&ack(&format!("m{n}"), n)));
    }
    stop(app).await;
    drop(c);

    settings.limits.max_document_values = 2000;
    let app = spawn_app_with(settings.clone()).await;
    let mut c = app.connect(room, "c").await;
    assert_eq!(
        c.closed().await,
        too_big("room is over its limits: document would exceed max_document_values (2000)")
    );
    let (mut other, _) = app.join("s-stored-small", "o").await;
    other
        .send(doc_patch("o1", json!([{"o/S": {"_exists": true}}])))
        .await;
    assert_eq!(other.recv().await, ack("o1", 1));
    stop(app).await;
    drop(other);

    settings.limits.max_document_values = 4000;
    let app = spawn_app_with(settings).await;
    let (c, frames) = app.join(room, "c").await;
    assert_eq!(frames.last(), Some(&synced(3)));
    stop(app).await;
    drop(c);
}

/// One ~1 MiB frame writing a component with 90k fields is refused with 1009 naming
/// `max_fields_per_component`, and nothing of it is applied.
#[tokio::test]
async fn a_component_with_90k_fields_is_refused() {
    let app = spawn_app().await;
    let room = "s-fields";
    let (mut c, _) = app.join(room, "c").await;
    let mut fields = Map::new();
    fields.insert("_exists".into(), Value::Bool(true));
    for i in 0..90_000 {
        fields.insert(format!("f{i}"), json!(1));
    }
    let frame = doc_patch("m", json!([{ "a/S": fields }]));
    assert!(frame.to_string().len() < 1 << 20);
    c.send(frame).await;
    let (_, close) = c.frames_until_close().await;
    assert_eq!(
        close,
        too_big("a component would exceed max_fields_per_component (1024)")
    );
    let doc = app.document(room).await;
    assert_eq!(doc["state"], json!({}));
}

/// Presence past `max_presence_bytes` (here 10k keys in one frame) is refused with 1009 and
/// never relayed; the other sessions see only the leave's client count.
#[tokio::test]
async fn a_presence_flood_is_refused() {
    let app = spawn_app().await;
    let room = "s-presence-flood";
    let (mut watcher, _) = app.join(room, "w").await;
    let (mut c, _) = app.join(room, "c").await;
    assert_eq!(watcher.recv().await, count(2));
    let mut keys = Map::new();
    for i in 0..10_000 {
        keys.insert(format!("k{i}/Cursor"), json!({"_exists": true}));
    }
    c.send(json!({"type": "patch", "messageId": "e", "ephemeralPatches": [keys]}))
        .await;
    let (_, close) = c.frames_until_close().await;
    assert_eq!(
        close,
        too_big("presence would exceed max_presence_bytes (65536)")
    );
    assert_eq!(watcher.recv().await, count(1));
}

/// Sends a presence patch and waits for its ack.
async fn presence(c: &mut Client, id: &str, patch: Value) {
    c.send(json!({"type": "patch", "messageId": id, "ephemeralPatches": [patch]}))
        .await;
    let frames = c.recv_until("ack").await;
    assert_eq!(
        frames.last().map(|f| f["messageId"].clone()),
        Some(json!(id))
    );
}

/// A client reconnects on a new socket and sets its cursor again; when its old socket finally
/// goes (as after the heartbeat timeout), the others are shown the new session's cursor, not a
/// deletion, and a newcomer still gets it.
#[tokio::test]
async fn presence_survives_the_old_socket_leaving_after_a_reconnect() {
    let app = spawn_app().await;
    let room = "s-presence-reconnect";
    let (mut watcher, _) = app.join(room, "w").await;
    let (mut old, _) = app.join(room, "alice").await;
    presence(
        &mut old,
        "e1",
        json!({"alice/Cursor": {"_exists": true, "x": 1}}),
    )
    .await;
    let (mut new, _) = app.join(room, "alice").await;
    presence(
        &mut new,
        "e2",
        json!({"alice/Cursor": {"_exists": true, "x": 2}}),
    )
    .await;
    let seen = watcher.recv_until("patch").await;
    assert_eq!(
        seen.last().map(|f| f["ephemeralPatches"][0].clone()),
        Some(json!({"alice/Cursor": {"_exists": true, "x": 1}}))
    );
    let seen = watcher.recv_until("patch").await;
    assert_eq!(
        seen.last().map(|f| f["ephemeralPatches"][0].clone()),
        Some(json!({"alice/Cursor": {"_exists": true, "x": 2}}))
    );
    old.leave().await;
    let seen = watcher.recv_until("patch").await;
    assert_eq!(
        seen.last().map(|f| f["ephemeralPatches"][0].clone()),
        Some(json!({"alice/Cursor": {"_exists": true, "x": 2}})),
        "the leave keeps the new session's cursor"
    );
    let mut newcomer = app.connect(room, "n").await;
    assert_eq!(
        newcomer.recv().await,
        json!({"type": "patch", "ephemeralPatches": [{"alice/Cursor": {"_exists": true, "x": 2}}], "clientId": ""})
    );
    drop(new);
}

/// A second socket using another client's id, without presence of its own, drops: the first
/// session's presence stays, for the others and for a newcomer.
#[tokio::test]
async fn a_second_socket_with_the_same_client_id_leaving_keeps_the_first_ones_presence() {
    let app = spawn_app().await;
    let room = "s-presence-impostor";
    let (mut watcher, _) = app.join(room, "w").await;
    let (mut alice, _) = app.join(room, "alice").await;
    presence(
        &mut alice,
        "e1",
        json!({"alice/Cursor": {"_exists": true, "x": 1}}),
    )
    .await;
    let (impostor, _) = app.join(room, "alice").await;
    impostor.leave().await;
    let frames = watcher.recv_until("patch").await;
    assert_eq!(
        frames.last().map(|f| f["ephemeralPatches"][0].clone()),
        Some(json!({"alice/Cursor": {"_exists": true, "x": 1}}))
    );
    // Joined, left: two client counts and no deletion.
    assert_eq!(watcher.recv_n(2).await, vec![count(3), count(2)]);
    assert!(watcher.silent_for(crate::helpers::QUIET).await);
    let mut newcomer = app.connect(room, "n").await;
    assert_eq!(
        newcomer.recv().await,
        json!({"type": "patch", "ephemeralPatches": [{"alice/Cursor": {"_exists": true, "x": 1}}], "clientId": ""})
    );
    drop(alice);
}
