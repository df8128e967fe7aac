//! The canvas-store v2 wire contract, frame by frame (shared/reference/canvas-store-protocol.md).

use serde_json::{json, Value};

use crate::helpers::{ack, count, doc_patch, reconnect, spawn_app, synced, QUIET};

/// A newcomer first gets the merged presence of the others (clientId "", no timestamp), then
/// everyone gets the new `clientCount`.
#[tokio::test]
async fn newcomer_gets_others_presence_before_the_client_count() {
    let app = spawn_app().await;
    let (mut a, _) = app.join("p-presence-join", "a").await;
    let (mut b, _) = app.join("p-presence-join", "b").await;
    assert_eq!(a.recv().await, count(2));
    a.send(json!({"type": "patch", "messageId": "e1", "ephemeralPatches": [{"cursor/a": {"_exists": true, "x": 1}}]}))
        .await;
    assert_eq!(a.recv().await, ack("e1", 0));
    assert_eq!(b.recv().await["clientId"], "a");
    b.send(json!({"type": "patch", "messageId": "e2", "ephemeralPatches": [{"cursor/b": {"_exists": true, "x": 2}}]}))
        .await;
    assert_eq!(b.recv().await, ack("e2", 0));
    assert_eq!(a.recv().await["clientId"], "b");

    let mut c = app.connect("p-presence-join", "c").await;
    assert_eq!(
        c.recv_n(2).await,
        vec![
            json!({"type": "patch", "ephemeralPatches": [{"cursor/a": {"_exists": true, "x": 1}, "cursor/b": {"_exists": true, "x": 2}}], "clientId": ""}),
            count(3),
        ]
    );
    assert_eq!(a.recv().await, count(3));
    assert_eq!(b.recv().await, count(3));
}

/// Without presence in the room, a newcomer's first frame is the `clientCount`.
#[tokio::test]
async fn newcomer_to_a_room_without_presence_gets_only_the_client_count() {
    let app = spawn_app().await;
    let (_a, _) = app.join("p-no-presence", "a").await;
    let mut b = app.connect("p-no-presence", "b").await;
    assert_eq!(b.recv().await, count(2));
    assert!(b.silent_for(QUIET).await);
}

/// A document patch is acked with the clock it was assigned, and every other client gets exactly
/// one broadcast with the sender's clientId, the patches as sent and the same timestamp; the
/// sender gets no echo.
#[tokio::test]
async fn document_patch_is_acked_with_its_clock_and_broadcast_once_to_the_others() {
    let app = spawn_app().await;
    let room = "p-doc-patch";
    let (mut a, _) = app.join(room, "a").await;
    let (mut b, _) = app.join(room, "b").await;
    let (mut c, _) = app.join(room, "c").await;
    assert_eq!(a.recv_n(2).await, vec![count(2), count(3)]);
    assert_eq!(b.recv().await, count(3));

    let patches = json!([{"e1/Pos": {"_exists": true, "x": 1, "y": 2}}]);
    a.send(doc_patch("m1", patches.clone())).await;
    assert_eq!(a.recv().await, ack("m1", 1));
    let broadcast =
        json!({"type": "patch", "documentPatches": patches, "clientId": "a", "timestamp": 1});
    assert_eq!(b.recv().await, broadcast);
    assert_eq!(c.recv().await, broadcast);

    let second = json!([{"e1/Pos": {"x": 5}}]);
    b.send(doc_patch("m2", second.clone())).await;
    assert_eq!(b.recv().await, ack("m2", 2));
    let broadcast =
        json!({"type": "patch", "documentPatches": second, "clientId": "b", "timestamp": 2});
    assert_eq!(a.recv().await, broadcast);
    assert_eq!(c.recv().await, broadcast);
    for client in [&mut a, &mut b, &mut c] {
        assert!(client.silent_for(QUIET).await, "one frame per client");
    }
    assert_eq!(
        app.document(room).await,
        json!({"timestamp": 2, "state": {"e1/Pos": {"_exists": true, "x": 5, "y": 2}},
               "timestamps": {"e1/Pos": {"_exists": 1, "x": 2, "y": 1}}})
    );
}

/// One request advances the clock once, however many patches it holds; they apply in order.
#[tokio::test]
async fn clock_advances_once_per_request_not_per_patch() {
    let app = spawn_app().await;
    let room = "p-clock-per-request";
    let (mut a, _) = app.join(room, "a").await;
    a.send(doc_patch(
        "m1",
        json!([{"e/S": {"_exists": true, "x": 1}}, {"e/S": {"x": 2}}, {"f/S": {"_exists": true}}]),
    ))
    .await;
    assert_eq!(a.recv().await, ack("m1", 1));
    assert_eq!(
        app.document(room).await,
        json!({"timestamp": 1,
               "state": {"e/S": {"_exists": true, "x": 2}, "f/S": {"_exists": true}},
               "timestamps": {"e/S": {"_exists": 1, "x": 1}, "f/S": {"_exists": 1}}})
    );
}

/// Document and presence in one request go out as one frame holding both, with a timestamp.
#[tokio::test]
async fn document_and_presence_in_one_request_are_broadcast_as_one_frame() {
    let app = spawn_app().await;
    let (mut a, _) = app.join("p-both", "a").await;
    let (mut b, _) = app.join("p-both", "b").await;
    assert_eq!(a.recv().await, count(2));
    a.send(json!({"type": "patch", "messageId": "m1",
                  "documentPatches": [{"e/S": {"_exists": true, "v": 1}}],
                  "ephemeralPatches": [{"cursor/a": {"_exists": true, "x": 3}}]}))
        .await;
    assert_eq!(a.recv().await, ack("m1", 1));
    assert_eq!(
        b.recv().await,
        json!({"type": "patch", "documentPatches": [{"e/S": {"_exists": true, "v": 1}}],
               "ephemeralPatches": [{"cursor/a": {"_exists": true, "x": 3}}],
               "clientId": "a", "timestamp": 1})
    );
    assert!(b.silent_for(QUIET).await);
}

/// A presence-only patch is acked with the current clock, which it does not advance, and its
/// broadcast carries no timestamp.
#[tokio::test]
async fn presence_only_patch_is_acked_with_the_current_clock_and_does_not_advance_it() {
    let app = spawn_app().await;
    let room = "p-presence-only";
    let (mut a, _) = app.join(room, "a").await;
    let (mut b, _) = app.join(room, "b").await;
    assert_eq!(a.recv().await, count(2));
    a.send(doc_patch("m1", json!([{"e/S": {"_exists": true}}])))
        .await;
    assert_eq!(a.recv().await, ack("m1", 1));
    assert_eq!(b.recv().await["timestamp"], 1);

    a.send(json!({"type": "patch", "messageId": "m2", "ephemeralPatches": [{"cursor/a": {"_exists": true, "x": 1}}]}))
        .await;
    assert_eq!(a.recv().await, ack("m2", 1));
    assert_eq!(
        b.recv().await,
        json!({"type": "patch", "ephemeralPatches": [{"cursor/a": {"_exists": true, "x": 1}}], "clientId": "a"})
    );
    a.send(doc_patch("m3", json!([{"e/S": {"v": 1}}]))).await;
    assert_eq!(a.recv().await, ack("m3", 2));
    assert_eq!(app.document(room).await["timestamp"], 2);
}

/// A `patch` with no document and no presence patches (absent, null or empty) gets no ack and
/// sends nothing to anyone.
#[tokio::test]
async fn patch_without_patches_is_neither_acked_nor_broadcast() {
    let app = spawn_app().await;
    let room = "p-empty-patch";
    let (mut a, _) = app.join(room, "a").await;
    let (mut b, _) = app.join(room, "b").await;
    assert_eq!(a.recv().await, count(2));
    for frame in [
        json!({"type": "patch", "messageId": "x1"}),
        json!({"type": "patch", "messageId": "x2", "documentPatches": [], "ephemeralPatches": []}),
        json!({"type": "patch", "messageId": "x3", "documentPatches": null}),
        json!({"type": "patch", "messageId": "x4", "documentPatches": [], "ephemeralPatches": null}),
    ] {
        a.send(frame).await;
    }
    a.send(doc_patch("m1", json!([{"e/S": {"_exists": true}}])))
        .await;
    // The very next frame each client gets is about m1.
    assert_eq!(a.recv().await, ack("m1", 1));
    assert_eq!(b.recv().await["timestamp"], 1);
    assert!(a.silent_for(QUIET).await);
    assert!(b.silent_for(QUIET).await);
}

/// Buffer deltas are relayed to the others byte for byte as sent, and stored materialized: the
/// stored state and a late joiner's diff hold whole arrays.
#[tokio::test]
async fn buffer_deltas_are_relayed_raw_and_stored_materialized() {
    let app = spawn_app().await;
    let room = "p-buffers";
    let (mut a, _) = app.join(room, "a").await;
    let (mut b, _) = app.join(room, "b").await;
    assert_eq!(a.recv().await, count(2));
    a.send(doc_patch(
        "m1",
        json!([{"s/Stroke": {"_exists": true, "pts": [1, 2, 3]}}]),
    ))
    .await;
    assert_eq!(a.recv().await, ack("m1", 1));
    b.recv().await;

    // Odd spacing and number forms are kept as written in the relay.
    let patches = r#"[{"s/Stroke" : {"pts":{"__buf":1,"len":5,"runs":[[3,[9, 8.50]]]}}}]"#;
    a.send_text(format!(
        r#"{{"type":"patch","messageId":"m2","documentPatches":{patches}}}"#
    ))
    .await;
    assert_eq!(a.recv().await, ack("m2", 2));
    assert_eq!(
        b.recv_text().await,
        format!(r#"{{"type":"patch","documentPatches":{patches},"clientId":"a","timestamp":2}}"#)
    );
    let doc = app.document(room).await;
    assert_eq!(doc["state"]["s/Stroke"]["pts"], json!([1, 2, 3, 9, 8.5]));

    let (_c, frames) = app.join(room, "c").await;
    assert_eq!(
        frames[1..],
        [
            json!({"type": "patch", "documentPatches": [{"s/Stroke": {"_exists": true, "pts": [1, 2, 3, 9, 8.5]}}], "clientId": "", "timestamp": 2}),
            synced(2),
        ]
    );
}

/// A buffer delta for a field that does not exist yet materializes against nothing: zero-filled.
#[tokio::test]
async fn buffer_delta_on_a_new_component_materializes_against_nothing() {
    let app = spawn_app().await;
    let room = "p-buffer-new";
    let (mut a, _) = app.join(room, "a").await;
    a.send(doc_patch(
        "m1",
        json!([{"s/Stroke": {"_exists": true, "pts": {"__buf": 1, "len": 4, "runs": [[1, [7, 7]], [9, [1]]]}}}]),
    ))
    .await;
    assert_eq!(a.recv().await, ack("m1", 1));
    assert_eq!(
        app.document(room).await["state"]["s/Stroke"],
        json!({"_exists": true, "pts": [0, 7, 7, 0]})
    );
}

/// A `reconnect` with a protocol version other than 2 (or none) gets only `version-mismatch`; its
/// patches are not applied and nobody hears of them.
#[tokio::test]
async fn reconnect_with_another_protocol_version_gets_only_version_mismatch() {
    let app = spawn_app().await;
    let room = "p-version";
    let (mut a, _) = app.join(room, "a").await;
    let mut b = app.connect(room, "b").await;
    assert_eq!(b.recv().await, count(2));
    assert_eq!(a.recv().await, count(2));
    let versions = [json!(1), json!(3), json!("2"), Value::Null, json!(2.5)];
    for version in versions {
        b.send(
            json!({"type": "reconnect", "lastTimestamp": 0, "protocolVersion": version,
                      "documentPatches": [{"e/S": {"_exists": true}}],
                      "ephemeralPatches": [{"cursor/b": {"_exists": true}}]}),
        )
        .await;
        assert_eq!(
            b.recv().await,
            json!({"type": "version-mismatch", "serverProtocolVersion": 2}),
            "version {version}"
        );
    }
    b.send(json!({"type": "reconnect", "lastTimestamp": 0, "documentPatches": [{"e/S": {"_exists": true}}]}))
        .await;
    assert_eq!(
        b.recv().await,
        json!({"type": "version-mismatch", "serverProtocolVersion": 2})
    );
    assert!(b.silent_for(QUIET).await);
    assert!(a.silent_for(QUIET).await);
    assert_eq!(
        app.document(room).await,
        json!({"timestamp": 0, "state": {}, "timestamps": {}})
    );
}

/// A socket whose `reconnect` was refused for its version is not synced: document broadcasts
/// skip it.
#[tokio::test]
async fn socket_refused_for_its_version_gets_no_document_broadcasts() {
    let app = spawn_app().await;
    let room = "p-version-not-live";
    let (mut a, _) = app.join(room, "a").await;
    let mut b = app.connect(room, "b").await;
    assert_eq!(b.recv().await, count(2));
    assert_eq!(a.recv().await, count(2));
    b.send(json!({"type": "reconnect", "lastTimestamp": 0, "protocolVersion": 1}))
        .await;
    assert_eq!(b.recv().await["type"], "version-mismatch");
    a.send(doc_patch("m1", json!([{"e/S": {"_exists": true}}])))
        .await;
    assert_eq!(a.recv().await, ack("m1", 1));
    assert!(b.silent_for(QUIET).await);
}

/// A `reconnect`'s patches (the client's offline buffer) are applied and broadcast but not acked;
/// the reply is the diff (holding them) and `synced`.
#[tokio::test]
async fn reconnect_patches_are_applied_and_broadcast_but_not_acked() {
    let app = spawn_app().await;
    let room = "p-reconnect-apply";
    let (mut a, _) = app.join(room, "a").await;
    let mut b = app.connect(room, "b").await;
    assert_eq!(b.recv().await, count(2));
    assert_eq!(a.recv().await, count(2));
    b.send(
        json!({"type": "reconnect", "lastTimestamp": 0, "protocolVersion": 2,
                  "documentPatches": [{"e/S": {"_exists": true, "x": 1}}],
                  "ephemeralPatches": [{"cursor/b": {"_exists": true, "x": 9}}]}),
    )
    .await;
    assert_eq!(
        a.recv().await,
        json!({"type": "patch", "documentPatches": [{"e/S": {"_exists": true, "x": 1}}],
               "ephemeralPatches": [{"cursor/b": {"_exists": true, "x": 9}}],
               "clientId": "b", "timestamp": 1})
    );
    // b's own presence is not echoed back in its reconnect reply.
    assert_eq!(
        b.recv_n(2).await,
        vec![
            json!({"type": "patch", "documentPatches": [{"e/S": {"_exists": true, "x": 1}}], "clientId": "", "timestamp": 1}),
            synced(1),
        ]
    );
    assert!(b.silent_for(QUIET).await, "no ack for reconnect patches");
}

/// A readwrite client that saw a later clock than the server's gets `resync` with the clock from
/// before its own patches were applied, then (no diff is newer than its cursor) only `synced`.
#[tokio::test]
async fn reconnect_ahead_of_the_server_clock_is_asked_to_resync() {
    let app = spawn_app().await;
    let room = "p-resync";
    let (mut a, _) = app.join(room, "a").await;
    a.send(doc_patch("m1", json!([{"e/S": {"_exists": true}}])))
        .await;
    assert_eq!(a.recv().await, ack("m1", 1));

    let mut b = app.connect(room, "b").await;
    assert_eq!(b.recv().await, count(2));
    b.send(
        json!({"type": "reconnect", "lastTimestamp": 7, "protocolVersion": 2,
                  "documentPatches": [{"f/S": {"_exists": true}}]}),
    )
    .await;
    assert_eq!(
        b.recv_n(2).await,
        vec![json!({"type": "resync", "since": 1}), synced(2)]
    );
    assert_eq!(a.recv().await, count(2));
    assert_eq!(a.recv().await["timestamp"], 2);
}

/// A client exactly at the server's clock is not asked to resync and gets only `synced`.
#[tokio::test]
async fn reconnect_at_the_server_clock_gets_only_synced() {
    let app = spawn_app().await;
    let room = "p-at-clock";
    let (mut a, _) = app.join(room, "a").await;
    a.send(doc_patch("m1", json!([{"e/S": {"_exists": true}}])))
        .await;
    assert_eq!(a.recv().await, ack("m1", 1));
    a.send(reconnect(1)).await;
    assert_eq!(a.recv().await, synced(1));
    assert!(a.silent_for(QUIET).await);
}

/// The reconnect diff holds, for each key, the fields written after `lastTimestamp` with their
/// current values, tombstones included.
#[tokio::test]
async fn reconnect_diff_holds_fields_newer_than_the_cursor_and_tombstones() {
    let app = spawn_app().await;
    let room = "p-diff";
    let (mut a, _) = app.join(room, "a").await;
    a.send(doc_patch(
        "m1",
        json!([{"e1/S": {"_exists": true, "x": 1, "y": 1}, "e2/S": {"_exists": true, "v": 1}}]),
    ))
    .await;
    a.send(doc_patch("m2", json!([{"e1/S": {"x": 2}}]))).await;
    a.send(doc_patch("m3", json!([{"e2/S": {"_exists": false}}])))
        .await;
    assert_eq!(
        a.recv_n(3).await,
        vec![ack("m1", 1), ack("m2", 2), ack("m3", 3)]
    );

    let mut b = app.connect(room, "b").await;
    assert_eq!(b.recv().await, count(2));
    b.send(reconnect(1)).await;
    assert_eq!(
        b.recv_n(2).await,
        vec![
            json!({"type": "patch", "documentPatches": [{"e1/S": {"x": 2}, "e2/S": {"_exists": false}}], "clientId": "", "timestamp": 3}),
            synced(3),
        ]
    );
    // Each cursor on its own socket: a socket that was sent a diff is not sent one again.
    let mut c = app.connect(room, "c").await;
    assert_eq!(c.recv().await, count(3));
    c.send(reconnect(2)).await;
    assert_eq!(
        c.recv_n(2).await,
        vec![
            json!({"type": "patch", "documentPatches": [{"e2/S": {"_exists": false}}], "clientId": "", "timestamp": 3}),
            synced(3),
        ]
    );
    let mut d = app.connect(room, "d").await;
    assert_eq!(d.recv().await, count(4));
    d.send(reconnect(0)).await;
    assert_eq!(
        d.recv_n(2).await,
        vec![
            json!({"type": "patch", "documentPatches": [{"e1/S": {"_exists": true, "x": 2, "y": 1}, "e2/S": {"_exists": false}}], "clientId": "", "timestamp": 3}),
            synced(3),
        ]
    );
}

/// The reconnect reply carries the others' merged presence (without the client's own), with a
/// document diff in the same frame when there is one.
#[tokio::test]
async fn reconnect_reply_carries_the_others_presence() {
    let app = spawn_app().await;
    let room = "p-reconnect-presence";
    let (mut a, _) = app.join(room, "a").await;
    a.send(json!({"type": "patch", "messageId": "e1", "ephemeralPatches": [{"cursor/a": {"_exists": true, "x": 1}}]}))
        .await;
    assert_eq!(a.recv().await, ack("e1", 0));

    let mut b = app.connect(room, "b").await;
    assert_eq!(
        b.recv_n(2).await,
        vec![
            json!({"type": "patch", "ephemeralPatches": [{"cursor/a": {"_exists": true, "x": 1}}], "clientId": ""}),
            count(2),
        ]
    );
    b.send(
        json!({"type": "reconnect", "lastTimestamp": 0, "protocolVersion": 2,
                  "ephemeralPatches": [{"cursor/b": {"_exists": true, "x": 2}}]}),
    )
    .await;
    assert_eq!(
        b.recv_n(2).await,
        vec![
            json!({"type": "patch", "ephemeralPatches": [{"cursor/a": {"_exists": true, "x": 1}}], "clientId": ""}),
            synced(0),
        ]
    );

    a.send(doc_patch("m1", json!([{"e/S": {"_exists": true}}])))
        .await;
    assert_eq!(
        a.recv_n(3).await,
        vec![
            count(2),
            json!({"type": "patch", "ephemeralPatches": [{"cursor/b": {"_exists": true, "x": 2}}], "clientId": "b"}),
            ack("m1", 1),
        ]
    );
    // b was sent every change since its first reconnect: a second one is answered without a diff.
    b.send(reconnect(0)).await;
    assert_eq!(
        b.recv_n(2).await,
        vec![
            json!({"type": "patch", "documentPatches": [{"e/S": {"_exists": true}}], "clientId": "a", "timestamp": 1}),
            synced(1),
        ]
    );
    // A new socket's reconnect reply carries the document and both others' presence.
    let mut c = app.connect(room, "c").await;
    c.recv_n(2).await;
    c.send(reconnect(0)).await;
    assert_eq!(
        c.recv_n(2).await,
        vec![
            json!({"type": "patch", "documentPatches": [{"e/S": {"_exists": true}}],
                   "ephemeralPatches": [{"cursor/a": {"_exists": true, "x": 1}, "cursor/b": {"_exists": true, "x": 2}}],
                   "clientId": "", "timestamp": 1}),
            synced(1),
        ]
    );
}

/// A partial patch to a key that does not exist is relayed as sent, but not stored: it appears
/// in no diff.
#[tokio::test]
async fn partial_patch_to_an_absent_key_is_relayed_but_not_stored() {
    let app = spawn_app().await;
    let room = "p-partial";
    let (mut a, _) = app.join(room, "a").await;
    let (mut b, _) = app.join(room, "b").await;
    assert_eq!(a.recv().await, count(2));
    a.send(doc_patch("m1", json!([{"ghost/S": {"x": 1}}])))
        .await;
    assert_eq!(a.recv().await, ack("m1", 1));
    assert_eq!(
        b.recv().await,
        json!({"type": "patch", "documentPatches": [{"ghost/S": {"x": 1}}], "clientId": "a", "timestamp": 1})
    );
    assert_eq!(
        app.document(room).await,
        json!({"timestamp": 1, "state": {}, "timestamps": {}})
    );
    let (_c, frames) = app.join(room, "c").await;
    assert_eq!(frames, vec![count(3), synced(1)]);
}

/// A deleted component is recreated only by a value with `_exists: true`; a partial write to the
/// tombstone is dropped.
#[tokio::test]
async fn tombstone_is_revived_only_by_exists_true() {
    let app = spawn_app().await;
    let room = "p-revive";
    let (mut a, _) = app.join(room, "a").await;
    a.send(doc_patch(
        "m1",
        json!([{"e/S": {"_exists": true, "x": 1, "y": 1}}]),
    ))
    .await;
    a.send(doc_patch("m2", json!([{"e/S": {"_exists": false}}])))
        .await;
    a.send(doc_patch("m3", json!([{"e/S": {"x": 2}}]))).await;
    assert_eq!(
        a.recv_n(3).await,
        vec![ack("m1", 1), ack("m2", 2), ack("m3", 3)]
    );
    assert_eq!(
        app.document(room).await["state"]["e/S"],
        json!({"_exists": false})
    );
    a.send(doc_patch("m4", json!([{"e/S": {"_exists": true, "x": 3}}])))
        .await;
    assert_eq!(a.recv().await, ack("m4", 4));
    assert_eq!(
        app.document(room).await,
        json!({"timestamp": 4, "state": {"e/S": {"_exists": true, "x": 3}},
               "timestamps": {"e/S": {"_exists": 4, "x": 4}}})
    );
}

/// Document broadcasts do not reach a socket that has not yet sent `reconnect` or a `patch`;
/// its reconnect reply brings it up to date, and broadcasts flow after that.
#[tokio::test]
async fn document_broadcasts_wait_for_the_reconnect() {
    let app = spawn_app().await;
    let room = "p-not-live";
    let (mut a, _) = app.join(room, "a").await;
    let mut b = app.connect(room, "b").await;
    assert_eq!(b.recv().await, count(2));
    assert_eq!(a.recv().await, count(2));
    a.send(doc_patch("m1", json!([{"e/S": {"_exists": true}}])))
        .await;
    assert_eq!(a.recv().await, ack("m1", 1));
    assert!(b.silent_for(QUIET).await);

    b.send(reconnect(0)).await;
    assert_eq!(
        b.recv_n(2).await,
        vec![
            json!({"type": "patch", "documentPatches": [{"e/S": {"_exists": true}}], "clientId": "", "timestamp": 1}),
            synced(1),
        ]
    );
    a.send(doc_patch("m2", json!([{"e/S": {"x": 1}}]))).await;
    assert_eq!(
        b.recv().await,
        json!({"type": "patch", "documentPatches": [{"e/S": {"x": 1}}], "clientId": "a", "timestamp": 2})
    );
}

/// A socket that sends a `patch` before any `reconnect` receives broadcasts from then on.
#[tokio::test]
async fn a_patch_makes_a_socket_receive_broadcasts() {
    let app = spawn_app().await;
    let room = "p-live-by-patch";
    let (mut a, _) = app.join(room, "a").await;
    let mut b = app.connect(room, "b").await;
    assert_eq!(b.recv().await, count(2));
    assert_eq!(a.recv().await, count(2));
    b.send(json!({"type": "patch", "messageId": "e1", "ephemeralPatches": [{"cursor/b": {"_exists": true}}]}))
        .await;
    assert_eq!(b.recv().await, ack("e1", 0));
    assert_eq!(a.recv().await["clientId"], "b");
    a.send(doc_patch("m1", json!([{"e/S": {"_exists": true}}])))
        .await;
    assert_eq!(b.recv().await["timestamp"], 1);
}

/// A client that leaves with presence makes the others delete each of its keys (one frame, with
/// the leaver's clientId), then the count drops; a client without presence causes only the count.
#[tokio::test]
async fn leaving_deletes_the_leavers_presence_then_updates_the_count() {
    let app = spawn_app().await;
    let room = "p-leave";
    let (mut a, _) = app.join(room, "a").await;
    let (mut b, _) = app.join(room, "b").await;
    let (c, _) = app.join(room, "c").await;
    assert_eq!(a.recv_n(2).await, vec![count(2), count(3)]);
    assert_eq!(b.recv().await, count(3));
    a.send(
        json!({"type": "patch", "messageId": "e1", "ephemeralPatches": [
        {"cursor/a": {"_exists": true, "x": 1}, "sel/a": {"_exists": true, "ids": [1]}}]}),
    )
    .await;
    assert_eq!(a.recv().await, ack("e1", 0));
    b.recv().await;

    c.leave().await;
    assert_eq!(a.recv().await, count(2));
    assert_eq!(b.recv().await, count(2));

    a.leave().await;
    assert_eq!(
        b.recv_n(2).await,
        vec![
            json!({"type": "patch", "ephemeralPatches": [{"cursor/a": {"_exists": false}, "sel/a": {"_exists": false}}], "clientId": "a"}),
            count(1),
        ]
    );
    assert!(b.silent_for(QUIET).await);
}

/// Each socket sees one total order: two clients writing concurrently both see every clock value
/// 1..=N exactly once and in order, through their own acks and the other's broadcasts.
#[tokio::test]
async fn acks_and_broadcasts_reach_each_socket_in_room_order() {
    let app = spawn_app().await;
    let room = "p-order";
    let (mut a, _) = app.join(room, "a").await;
    let (mut b, _) = app.join(room, "b").await;
    assert_eq!(a.recv().await, count(2));
    const EACH: u64 = 25;
    let write = |who: &str, i: u64| {
        doc_patch(
            &format!("{who}{i}"),
            json!([{format!("{who}/S"): {"_exists": true, "i": i}}]),
        )
    };
    let (sa, sb) = tokio::join!(
        async {
            for i in 0..EACH {
                a.send(write("a", i)).await;
            }
            a.recv_n(2 * EACH as usize).await
        },
        async {
            for i in 0..EACH {
                b.send(write("b", i)).await;
            }
            b.recv_n(2 * EACH as usize).await
        }
    );
    for (who, frames) in [("a", sa), ("b", sb)] {
        let clocks: Vec<u64> = frames
            .iter()
            .map(|f| f["timestamp"].as_u64().expect("timestamp"))
            .collect();
        assert_eq!(clocks, (1..=2 * EACH).collect::<Vec<_>>(), "{who}");
        let acks: Vec<&str> = frames
            .iter()
            .filter(|f| f["type"] == "ack")
            .map(|f| f["messageId"].as_str().expect("id"))
            .collect();
        let want: Vec<String> = (0..EACH).map(|i| format!("{who}{i}")).collect();
        assert_eq!(acks, want, "{who}: own acks in order");
    }
}
