//! Sessions and permissions: readonly clients, token refresh, and the room API's session controls.

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use weft::auth::Permission;
use weft::ids::SessionId;

use crate::helpers::{
    ack, count, doc_patch, reconnect, spawn_app, spawn_app_with, synced, tokens_settings, within,
    TestApp, QUIET,
};

/// The room's sessions as `(clientId, permission, metadata)`, in join order.
async fn sessions(app: &TestApp, room: &str) -> Vec<(String, Permission, Value)> {
    app.sessions(room)
        .await
        .into_iter()
        .map(|s| (s.client.as_str().to_owned(), s.permission, s.metadata))
        .collect()
}

/// The session id of `client` in `room`.
async fn session_of(app: &TestApp, room: &str, client: &str) -> SessionId {
    app.sessions(room)
        .await
        .into_iter()
        .find(|s| s.client.as_str() == client)
        .unwrap_or_else(|| panic!("{client} has a session"))
        .id
}

/// A readonly client's patches are acked with the current clock but neither applied nor
/// broadcast, presence included.
#[tokio::test]
async fn readonly_patches_are_acked_but_not_applied_or_broadcast() {
    let (settings, _dir) = tokens_settings();
    let app = spawn_app_with(settings).await;
    let room = "s-readonly";
    let (mut w, _) = app.join_token(room, "w", "rw").await;
    w.send(doc_patch("m1", json!([{"e/S": {"_exists": true, "x": 1}}])))
        .await;
    assert_eq!(w.recv().await, ack("m1", 1));
    let before = app.document(room).await;

    let (mut r, frames) = app.join_token(room, "r", "ro").await;
    assert_eq!(frames[0], count(2));
    assert_eq!(w.recv().await, count(2));
    r.send(doc_patch(
        "r1",
        json!([{"e/S": {"x": 99}, "f/S": {"_exists": true}}]),
    ))
    .await;
    assert_eq!(r.recv().await, ack("r1", 1));
    r.send(json!({"type": "patch", "messageId": "r2", "ephemeralPatches": [{"cursor/r": {"_exists": true}}]}))
        .await;
    assert_eq!(r.recv().await, ack("r2", 1));
    assert!(w.silent_for(QUIET).await);
    assert_eq!(app.document(room).await, before);

    // Nothing of r's presence reaches a newcomer either.
    let (_n, frames) = app.join_token(room, "n", "rw").await;
    assert_eq!(frames[0], count(3));
}

/// A readonly client counts in `clientCount` and receives the others' broadcasts.
#[tokio::test]
async fn readonly_clients_are_counted_and_receive_broadcasts() {
    let (settings, _dir) = tokens_settings();
    let app = spawn_app_with(settings).await;
    let room = "s-readonly-count";
    let (mut r, frames) = app.join_token(room, "r", "ro").await;
    assert_eq!(frames, vec![count(1), synced(0)]);
    let (mut w, frames) = app.join_token(room, "w", "rw").await;
    assert_eq!(frames, vec![count(2), synced(0)]);
    assert_eq!(r.recv().await, count(2));
    w.send(doc_patch("m1", json!([{"e/S": {"_exists": true}}])))
        .await;
    assert_eq!(w.recv().await, ack("m1", 1));
    assert_eq!(
        r.recv().await,
        json!({"type": "patch", "documentPatches": [{"e/S": {"_exists": true}}], "clientId": "w", "timestamp": 1})
    );
}

/// A readonly client reconnecting ahead of the server clock is not asked to resync, and the
/// patches in its `reconnect` are dropped.
#[tokio::test]
async fn readonly_reconnect_gets_no_resync_and_its_patches_are_dropped() {
    let (settings, _dir) = tokens_settings();
    let app = spawn_app_with(settings).await;
    let room = "s-readonly-reconnect";
    let mut r = app.connect_token(room, "r", "ro").await;
    assert_eq!(r.recv().await, count(1));
    r.send(
        json!({"type": "reconnect", "lastTimestamp": 9, "protocolVersion": 2,
                  "documentPatches": [{"e/S": {"_exists": true}}]}),
    )
    .await;
    assert_eq!(r.recv().await, synced(0));
    assert!(r.silent_for(QUIET).await);
    assert_eq!(app.document(room).await["timestamp"], 0);
}

/// `auth-refresh` with a readwrite token upgrades a readonly session: the very next patch (sent
/// right behind the refresh) is applied and broadcast, and the new token's metadata shows.
#[tokio::test]
async fn auth_refresh_with_a_readwrite_token_upgrades_the_session() {
    let (settings, _dir) = tokens_settings();
    let app = spawn_app_with(settings).await;
    let room = "s-refresh-up";
    let (mut r, _) = app.join_token(room, "r", "ro").await;
    let (mut w, _) = app.join_token(room, "w", "rw").await;
    assert_eq!(r.recv().await, count(2));
    r.send(doc_patch("before", json!([{"e/S": {"_exists": true}}])))
        .await;
    assert_eq!(r.recv().await, ack("before", 0));

    r.send(json!({"type": "auth-refresh", "token": "rw"})).await;
    r.send(doc_patch("after", json!([{"e/S": {"_exists": true}}])))
        .await;
    assert_eq!(r.recv().await, ack("after", 1));
    assert_eq!(
        w.recv().await,
        json!({"type": "patch", "documentPatches": [{"e/S": {"_exists": true}}], "clientId": "r", "timestamp": 1})
    );
    assert_eq!(
        sessions(&app, room).await,
        vec![
            ("r".into(), Permission::Readwrite, json!({"user": "ann"})),
            ("w".into(), Permission::Readwrite, json!({"user": "ann"})),
        ]
    );
}

/// `auth-refresh` with a readonly token downgrades a readwrite session for the next patch.
#[tokio::test]
async fn auth_refresh_with_a_readonly_token_downgrades_the_session() {
    let (settings, _dir) = tokens_settings();
    let app = spawn_app_with(settings).await;
    let room = "s-refresh-down";
    let (mut w, _) = app.join_token(room, "w", "rw").await;
    w.send(json!({"type": "auth-refresh", "token": "ro"})).await;
    w.send(doc_patch("m1", json!([{"e/S": {"_exists": true}}])))
        .await;
    assert_eq!(w.recv().await, ack("m1", 0));
    assert_eq!(app.document(room).await["timestamp"], 0);
    assert_eq!(
        sessions(&app, room).await,
        vec![("w".into(), Permission::Readonly, json!({"user": "bob"}))]
    );
}

/// A token refresh without metadata keeps the session's metadata.
#[tokio::test]
async fn auth_refresh_without_metadata_keeps_the_old_metadata() {
    let (settings, _dir) = tokens_settings();
    let app = spawn_app_with(settings).await;
    let room = "team-s-refresh-meta";
    let (mut w, _) = app.join_token(room, "w", "ro").await;
    w.send(json!({"type": "auth-refresh", "token": "team"}))
        .await;
    w.send(doc_patch("m1", json!([{"e/S": {"_exists": true}}])))
        .await;
    assert_eq!(w.recv().await, ack("m1", 1));
    assert_eq!(
        sessions(&app, room).await,
        vec![("w".into(), Permission::Readwrite, json!({"user": "bob"}))]
    );
}

/// `auth-refresh` with a token that is unknown or does not open the room closes that socket with
/// 1008 `auth refresh rejected: ...`; the session is gone, nothing after the refresh is applied,
/// and the others see the count drop.
#[tokio::test]
async fn auth_refresh_with_a_bad_token_closes_the_socket_with_1008() {
    let (settings, _dir) = tokens_settings();
    let app = spawn_app_with(settings).await;
    let room = "s-refresh-bad";
    let (mut w, _) = app.join_token(room, "w", "rw").await;
    for (token, reason) in [
        ("nope", "auth refresh rejected: unknown token"),
        (
            "team",
            "auth refresh rejected: token does not grant this room",
        ),
        ("", "auth refresh rejected: missing token"),
    ] {
        let (mut v, _) = app.join_token(room, "v", "rw").await;
        assert_eq!(w.recv().await, count(2));
        v.send(json!({"type": "auth-refresh", "token": token}))
            .await;
        v.send(doc_patch("late", json!([{"e/S": {"_exists": true}}])))
            .await;
        assert_eq!(
            v.closed().await,
            (CloseCode::Policy, reason.to_owned()),
            "{token}"
        );
        assert_eq!(w.recv().await, count(1));
        assert_eq!(sessions(&app, room).await.len(), 1);
    }
    assert_eq!(app.document(room).await["timestamp"], 0);
}

/// In `--auth none` a refresh grants readwrite and keeps the session open.
#[tokio::test]
async fn auth_refresh_without_auth_keeps_the_session_readwrite() {
    let app = spawn_app().await;
    let room = "s-refresh-none";
    let (mut a, _) = app.join(room, "a").await;
    a.send(json!({"type": "auth-refresh", "token": "anything"}))
        .await;
    a.send(doc_patch("m1", json!([{"e/S": {"_exists": true}}])))
        .await;
    assert_eq!(a.recv().await, ack("m1", 1));
}

/// The room API lists each session with its clientId, permission and the token file's metadata.
#[tokio::test]
async fn sessions_list_clients_permissions_and_token_metadata() {
    let (settings, _dir) = tokens_settings();
    let app = spawn_app_with(settings).await;
    let room = "team-s-list";
    let (_a, _) = app.join_token(room, "a", "rw").await;
    let (_b, _) = app.join_token(room, "b", "ro").await;
    let (_c, _) = app.join_token(room, "c", "team").await;
    assert_eq!(
        sessions(&app, room).await,
        vec![
            ("a".into(), Permission::Readwrite, json!({"user": "ann"})),
            ("b".into(), Permission::Readonly, json!({"user": "bob"})),
            ("c".into(), Permission::Readwrite, Value::Null),
        ]
    );
}

/// Changing a session's permission through the room API takes effect on its next patch, both ways.
#[tokio::test]
async fn permission_changed_at_runtime_applies_to_the_next_patch() {
    let (settings, _dir) = tokens_settings();
    let app = spawn_app_with(settings).await;
    let room = "s-set-permission";
    let (mut w, _) = app.join_token(room, "w", "rw").await;
    let (mut o, _) = app.join_token(room, "o", "rw").await;
    assert_eq!(w.recv().await, count(2));
    let id = session_of(&app, room, "w").await;

    assert_eq!(
        within(app.room(room).set_permission(id, Permission::Readonly)).await,
        Ok(true)
    );
    w.send(doc_patch("m1", json!([{"e/S": {"_exists": true}}])))
        .await;
    assert_eq!(w.recv().await, ack("m1", 0));
    assert!(o.silent_for(QUIET).await);

    assert_eq!(
        within(app.room(room).set_permission(id, Permission::Readwrite)).await,
        Ok(true)
    );
    w.send(doc_patch("m2", json!([{"e/S": {"_exists": true}}])))
        .await;
    assert_eq!(w.recv().await, ack("m2", 1));
    assert_eq!(o.recv().await["clientId"], "w");
}

/// Metadata set through the room API shows in the session list; unknown sessions are reported.
#[tokio::test]
async fn room_api_sets_metadata_and_refuses_unknown_sessions() {
    let app = spawn_app().await;
    let room = "s-set-metadata";
    let (_a, _) = app.join(room, "a").await;
    let id = session_of(&app, room, "a").await;
    let handle = app.room(room);
    assert_eq!(
        within(handle.set_metadata(id, json!({"team": "red"}))).await,
        Ok(true)
    );
    assert_eq!(
        sessions(&app, room).await,
        vec![("a".into(), Permission::Readwrite, json!({"team": "red"}))]
    );
    let ghost = SessionId(u64::MAX);
    assert_eq!(
        within(handle.set_metadata(ghost, Value::Null)).await,
        Ok(false)
    );
    assert_eq!(
        within(handle.set_permission(ghost, Permission::Readonly)).await,
        Ok(false)
    );
}

/// A readwrite reconnect right after a refresh to readonly is treated as readonly (no resync).
#[tokio::test]
async fn refresh_applies_to_a_reconnect_sent_right_behind_it() {
    let (settings, _dir) = tokens_settings();
    let app = spawn_app_with(settings).await;
    let room = "s-refresh-reconnect";
    let mut w = app.connect_token(room, "w", "rw").await;
    assert_eq!(w.recv().await, count(1));
    w.send(json!({"type": "auth-refresh", "token": "ro"})).await;
    w.send(reconnect(5)).await;
    assert_eq!(w.recv().await, synced(0));
}
