//! Rooms: join and `sync`, deltas and versions, player and server state, messages, leave, kick,
//! reconnect within the grace period, eviction and restore, timers.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{access_token, GameApp, GRACE, QUIET, WAIT};
use weft::engine::tree::apply_delta;
use weft::protocols::game::{MAX_RECORD_DEPTH, MAX_STATE_DEPTH};

fn sync(shared: Value, shared_version: u64, player: Value, player_version: u64) -> Value {
    json!({
        "type": "sync",
        "sharedState": shared,
        "sharedVersion": shared_version,
        "playerState": player,
        "playerVersion": player_version,
    })
}

fn shared_delta(delta: Value, version: u64) -> Value {
    json!({"type": "shared_delta", "delta": delta, "version": version})
}

fn player_delta(delta: Value, version: u64) -> Value {
    json!({"type": "player_delta", "delta": delta, "version": version})
}

fn result(request_id: &str, action: &str) -> Value {
    json!({"type": "action_result", "requestId": request_id, "actionType": action, "result": null})
}

/// `join` is answered with a full `sync` of exactly the five members: the shared state after the
/// `onCreate` and `onJoin` of the first player (one version step for both), the player's own
/// state. A second player's join reaches the first as one `shared_delta`; the `last*` members a
/// client sends are not adopted.
#[tokio::test]
async fn join_answers_with_sync_and_versions() {
    let app = GameApp::start().await;
    let (mut a, first) = app.joined("arena", "sync", "alice").await;
    assert_eq!(
        first,
        sync(json!({"players": ["alice"]}), 1, json!({"hp": 100}), 1)
    );
    let (mut b, second) = app.authed("arena", "sync", "bob").await;
    let second_sync = b
        .join_with(json!({
            "type": "join",
            "lastSharedState": {"hacked": true, "players": []},
            "lastSharedVersion": 99,
            "lastPlayerState": {"hp": 1_000_000},
            "lastPlayerVersion": 50,
        }))
        .await;
    assert_eq!(second["userId"], "bob");
    assert_eq!(
        second_sync,
        sync(
            json!({"players": ["alice", "bob"]}),
            2,
            json!({"hp": 100}),
            1
        )
    );
    assert_eq!(
        a.recv().await,
        shared_delta(json!({"players": ["alice", "bob"]}), 2)
    );
    assert!(
        a.silent_for(QUIET).await,
        "no player delta for another's join"
    );
    assert_eq!(
        app.hooks.of("sync"),
        vec!["create", "join alice", "join bob"]
    );
}

/// Deltas are dot-paths down to depth 5 (arrays, deeper objects and members whose name contains
/// `.` are sent whole at the nearest safe path), `null` deletes, all changes of one action make
/// one delta and one version step, flushed before the action's result; a no-op sends nothing and
/// does not step the version. Applying the deltas the SDK way gives what a new joiner's `sync`
/// shows.
#[tokio::test]
async fn deltas_are_dot_paths_and_versions_step_once_per_flush() {
    let app = GameApp::start().await;
    let room = "deltas";
    let (mut a, sync_a) = app.joined("arena", room, "alice").await;
    let (mut b, sync_b) = app.joined("arena", room, "bob").await;
    let mut model_a = sync_a["sharedState"].clone();
    let mut model_b = sync_b["sharedState"].clone();
    let joined = a.recv_type("shared_delta").await;
    apply_delta(&mut model_a, joined["delta"].as_object().unwrap());
    // Every delta alice gets with her result, bob gets alone, identical.
    let mut both = |a_frames: &[Value], b_frame: Value| {
        assert_eq!(a_frames[0], b_frame);
        apply_delta(&mut model_a, a_frames[0]["delta"].as_object().unwrap());
        apply_delta(&mut model_b, b_frame["delta"].as_object().unwrap());
    };

    let first = json!({
        "board": {"a": {"x": 1, "y": 2}, "b": {"x": 0}},
        "list": [1, 2],
        "deep": {"l1": {"l2": {"l3": {"l4": {"l5": {"x": 1}}}}}},
        "dotted": {"k.1": 1, "k2": 1},
        "gone": true,
    });
    let frames = a.action("REPLACE", first.clone(), "d1").await;
    let mut expected = first.as_object().unwrap().clone();
    expected.insert("players".into(), Value::Null);
    assert_eq!(
        frames,
        vec![
            shared_delta(Value::Object(expected), 3),
            result("d1", "REPLACE")
        ]
    );
    both(&frames, b.recv().await);

    let second = json!({
        "board": {"a": {"x": 5, "y": 2}, "b": {"x": 0}},
        "list": [1, 2, 3],
        "deep": {"l1": {"l2": {"l3": {"l4": {"l5": {"x": 2}}}}}},
        "dotted": {"k.1": 2, "k2": 1},
        "fresh": {"n": 1},
    });
    let frames = a.action("REPLACE", second.clone(), "d2").await;
    let delta = json!({
        "board.a.x": 5,
        "list": [1, 2, 3],
        "deep.l1.l2.l3.l4": {"l5": {"x": 2}},
        "dotted": {"k.1": 2, "k2": 1},
        "gone": null,
        "fresh": {"n": 1},
    });
    assert_eq!(
        frames,
        vec![shared_delta(delta, 4), result("d2", "REPLACE")]
    );
    both(&frames, b.recv().await);

    // No-ops: the same state again, and an empty merge.
    assert_eq!(
        a.action("REPLACE", second.clone(), "d3").await,
        vec![result("d3", "REPLACE")]
    );
    assert_eq!(
        a.action("MERGE", json!({}), "d4").await,
        vec![result("d4", "MERGE")]
    );
    assert!(b.silent_for(QUIET).await, "a no-op sends nothing");

    // Several changes in one action: one delta, one version step (5, not 7).
    let frames = a
        .action("MERGE", json!({"fresh": {"n": 2, "m": 1}, "z": 0}), "d5")
        .await;
    assert_eq!(
        frames,
        vec![
            shared_delta(json!({"fresh.n": 2, "fresh.m": 1, "z": 0}), 5),
            result("d5", "MERGE")
        ]
    );
    both(&frames, b.recv().await);
    // Deleting a nested member: a null at its path.
    let frames = a
        .action("REPLACE", json!({"board": {"a": {"x": 5}}}), "d6")
        .await;
    assert_eq!(
        frames[0],
        shared_delta(
            json!({"board.a.y": null, "board.b": null, "list": null, "deep": null, "dotted": null, "fresh": null, "z": null}),
            6
        )
    );
    both(&frames, b.recv().await);

    let (_c, late) = app.joined("arena", room, "carol").await;
    let after_carol = a.recv_type("shared_delta").await;
    assert_eq!(b.recv().await, after_carol);
    assert_eq!(after_carol["version"], 7);
    apply_delta(&mut model_a, after_carol["delta"].as_object().unwrap());
    apply_delta(&mut model_b, after_carol["delta"].as_object().unwrap());
    assert_eq!(late["sharedVersion"], 7);
    assert_eq!(
        late["sharedState"],
        json!({"board": {"a": {"x": 5}}, "players": ["carol"]})
    );
    assert_eq!(model_a, late["sharedState"]);
    assert_eq!(model_b, late["sharedState"]);
}

/// A change to a top-level member whose name contains `.` cannot be a dot-path delta; every
/// client gets a whole `sync` instead, with the new state and the next version.
#[tokio::test]
async fn unsafe_top_level_key_is_sent_as_a_whole_sync() {
    let app = GameApp::start().await;
    let room = "whole";
    let (mut a, _) = app.joined("arena", room, "alice").await;
    let (mut b, _) = app.joined("arena", room, "bob").await;
    a.recv_type("shared_delta").await;
    let state = json!({"a.b": 1, "players": ["alice", "bob"]});
    let frames = a.action("REPLACE", state.clone(), "w1").await;
    assert_eq!(
        frames,
        vec![
            sync(state.clone(), 3, json!({"hp": 100}), 1),
            result("w1", "REPLACE")
        ]
    );
    assert_eq!(
        b.recv().await,
        sync(state.clone(), 3, json!({"hp": 100}), 1)
    );
    let (_c, late) = app.joined("arena", room, "carol").await;
    assert_eq!(late["sharedVersion"], 4);
    assert_eq!(
        late["sharedState"],
        json!({"a.b": 1, "players": ["alice", "bob", "carol"]})
    );
}

/// Player deltas go only to the player's own connections (all of them), whoever's action made
/// the change; the player version steps once per flush.
#[tokio::test]
async fn player_deltas_go_only_to_their_owner() {
    let app = GameApp::start().await;
    let room = "private";
    let (mut a, _) = app.joined("arena", room, "alice").await;
    let (mut b, _) = app.joined("arena", room, "bob").await;
    a.recv_type("shared_delta").await;
    let (mut a2, second) = app.joined("arena", room, "alice").await;
    assert_eq!(
        second,
        sync(
            json!({"players": ["alice", "bob"]}),
            2,
            json!({"hp": 100}),
            1
        ),
        "a second connection of a seated player resumes the seat"
    );
    let frames = a
        .action("PLAYER", json!({"hp": 90, "inv": {"sword": 1}}), "p1")
        .await;
    let delta = player_delta(json!({"hp": 90, "inv": {"sword": 1}}), 2);
    assert_eq!(frames, vec![delta.clone(), result("p1", "PLAYER")]);
    assert_eq!(a2.recv().await, delta);
    let frames = b
        .action(
            "PLAYER_OF",
            json!({"userId": "alice", "state": {"hp": 80, "inv": {"sword": 2}}}),
            "p2",
        )
        .await;
    assert_eq!(frames, vec![result("p2", "PLAYER_OF")]);
    let delta = player_delta(json!({"hp": 80, "inv.sword": 2}), 3);
    assert_eq!(a.recv().await, delta);
    assert_eq!(a2.recv().await, delta);
    assert!(b.silent_for(QUIET).await);
    // A player state member with `.` in its name: the player gets a whole `sync`.
    let frames = a.action("PLAYER", json!({"x.y": 1}), "p3").await;
    let whole = sync(
        json!({"players": ["alice", "bob"]}),
        2,
        json!({"x.y": 1}),
        4,
    );
    assert_eq!(frames, vec![whole.clone(), result("p3", "PLAYER")]);
    assert_eq!(a2.recv().await, whole);
    assert!(b.silent_for(QUIET).await);
    // Bob's own state was never touched.
    let (_b2, bob) = app.joined("arena", room, "bob").await;
    assert_eq!(bob["playerState"], json!({"hp": 100}));
    assert_eq!(bob["playerVersion"], 1);
}

/// Server-only state never reaches the wire: no delta, not in any `sync`.
#[tokio::test]
async fn server_state_is_never_sent() {
    let app = GameApp::start().await;
    let room = "secrets";
    let (mut a, _) = app.joined("arena", room, "alice").await;
    let (mut b, _) = app.joined("arena", room, "bob").await;
    a.recv_type("shared_delta").await;
    let frames = a
        .action(
            "SERVER",
            json!({"secret": "s3cr3t-value", "seed": 42}),
            "s1",
        )
        .await;
    assert_eq!(frames, vec![result("s1", "SERVER")]);
    assert!(b.silent_for(QUIET).await);
    let frames = a.action("MERGE", json!({"visible": 1}), "s2").await;
    assert_eq!(frames[0], shared_delta(json!({"visible": 1}), 3));
    let (_c, late) = app.joined("arena", room, "carol").await;
    let seen = format!("{frames:?} {late}");
    assert!(!seen.contains("s3cr3t"), "{seen}");
    assert_eq!(
        late["sharedState"],
        json!({"players": ["alice", "bob", "carol"], "visible": 1})
    );
}

/// `send_message` reaches every joined connection but the excluded users', `send_message_to`
/// only one user's; a message flushes the changes made before it, so deltas and messages arrive
/// in the order the handler made them.
#[tokio::test]
async fn messages_honour_exclude_and_order() {
    let app = GameApp::start().await;
    let room = "messages";
    let (mut a, _) = app.joined("arena", room, "alice").await;
    let (mut b, _) = app.joined("arena", room, "bob").await;
    let (mut c, _) = app.joined("arena", room, "carol").await;
    a.recv_type("shared_delta").await;
    a.recv_type("shared_delta").await;
    b.recv_type("shared_delta").await;
    let hello = json!({"type": "message", "messageType": "hello", "data": {"n": 1}});
    let frames = a
        .action(
            "MSG",
            json!({"type": "hello", "data": {"n": 1}, "exclude": ["bob"]}),
            "m1",
        )
        .await;
    assert_eq!(frames, vec![hello.clone(), result("m1", "MSG")]);
    assert_eq!(c.recv().await, hello);
    assert!(b.silent_for(QUIET).await, "bob is excluded");

    let frames = a
        .action(
            "MSG_TO",
            json!({"userId": "bob", "type": "psst", "data": [1]}),
            "m2",
        )
        .await;
    assert_eq!(frames, vec![result("m2", "MSG_TO")]);
    assert_eq!(
        b.recv().await,
        json!({"type": "message", "messageType": "psst", "data": [1]})
    );
    assert!(c.silent_for(QUIET).await);

    let frames = a.action("MERGE_THEN_MSG", json!(7), "m3").await;
    let expected = vec![
        shared_delta(json!({"before": 7}), 4),
        json!({"type": "message", "messageType": "after", "data": 7}),
        shared_delta(json!({"later": 7}), 5),
    ];
    assert_eq!(frames[..3], expected[..]);
    assert_eq!(frames[3], result("m3", "MERGE_THEN_MSG"));
    for client in [&mut b, &mut c] {
        for frame in &expected {
            assert_eq!(&client.recv().await, frame);
        }
    }
}

/// A message sent by `on_join` reaches everyone, the joiner included: the earlier players after
/// the join's delta (flushed first), the joiner right after its `sync`.
#[tokio::test]
async fn message_sent_by_on_join_reaches_the_joiner_after_its_sync() {
    let app = GameApp::start().await;
    let (mut a, _) = app.joined("arena", "greet", "alice").await;
    let (mut b, _) = app.authed("arena", "greet", "bob").await;
    let sync_b = b
        .join_with(json!({"type": "join", "options": {"greet": true}}))
        .await;
    assert_eq!(sync_b["sharedState"], json!({"players": ["alice", "bob"]}));
    let welcome = json!({"type": "message", "messageType": "welcome", "data": {"user": "bob"}});
    assert_eq!(b.recv().await, welcome);
    assert_eq!(
        a.recv().await,
        shared_delta(json!({"players": ["alice", "bob"]}), 2)
    );
    assert_eq!(a.recv().await, welcome);
    assert!(b.silent_for(QUIET).await);
}

/// A message sent without data carries `data: {}` (the SDKs read `data` as an object).
#[tokio::test]
async fn message_without_data_carries_an_empty_object() {
    let app = GameApp::start().await;
    let (mut a, _) = app.joined("arena", "no-data", "alice").await;
    let frames = a.action("MSG", json!({"type": "bare"}), "m").await;
    assert_eq!(
        frames[0],
        json!({"type": "message", "messageType": "bare", "data": {}})
    );
}

/// `leave`: `onLeave` with reason `leave` at once (no grace period), the player state is dropped,
/// the others get the delta, the socket is closed with 4005; the last one out runs `onDestroy`.
/// Before join, `leave` just closes with 4005.
#[tokio::test]
async fn leave_runs_on_leave_and_closes_with_4005() {
    let app = GameApp::start().await;
    let room = "leaving";
    let (mut a, _) = app.joined("arena", room, "alice").await;
    let (mut b, _) = app.joined("arena", room, "bob").await;
    a.recv_type("shared_delta").await;
    b.send(json!({"type": "leave"})).await;
    assert_eq!(b.closed().await, (4005, "left the room".to_owned()));
    // The room closes the socket, then runs onLeave.
    app.hooks.wait_for(room, "leave bob leave").await;
    assert_eq!(
        app.hooks.of(room),
        vec!["create", "join alice", "join bob", "leave bob leave"]
    );
    assert_eq!(
        a.recv().await,
        shared_delta(json!({"players": ["alice"]}), 3)
    );
    // Bob's player state is gone: coming back is a new join with a fresh state.
    let (mut b, again) = app.joined("arena", room, "bob").await;
    assert_eq!(again["playerState"], json!({"hp": 100}));
    assert_eq!(a.recv().await["version"], 4);
    b.send(json!({"type": "leave"})).await;
    assert_eq!(b.closed().await.0, 4005);
    a.send(json!({"type": "leave"})).await;
    let (frames, close) = a.frames_until_close().await;
    assert_eq!(close, (4005, "left the room".to_owned()));
    assert!(frames.len() <= 1, "{frames:?}");
    app.hooks.wait_for(room, "destroy").await;
    assert_eq!(
        app.hooks.of(room)[4..],
        [
            "join bob",
            "leave bob leave",
            "leave alice leave",
            "destroy"
        ]
    );

    let (mut c, _) = app.authed("arena", "leave-early", "carol").await;
    c.send(json!({"type": "leave"})).await;
    assert_eq!(c.closed().await, (4005, "left".to_owned()));
    assert!(app.hooks.of("leave-early").is_empty());
}

/// The JS SDK's leave: the `leave` frame, then a client close with 4005 at once.
#[tokio::test]
async fn js_sdk_leave_then_close_4005_is_one_leave() {
    let app = GameApp::start().await;
    let room = "js-leave";
    let (mut a, _) = app.joined("arena", room, "alice").await;
    let (mut b, _) = app.joined("arena", room, "bob").await;
    a.recv_type("shared_delta").await;
    b.send(json!({"type": "leave"})).await;
    b.send_message(Message::Close(Some(CloseFrame {
        code: CloseCode::from(4005),
        reason: "".into(),
    })))
    .await;
    app.hooks.wait_for(room, "leave bob leave").await;
    assert_eq!(
        a.recv().await,
        shared_delta(json!({"players": ["alice"]}), 3)
    );
    tokio::time::sleep(GRACE + QUIET).await;
    assert_eq!(
        app.hooks.of(room),
        vec!["create", "join alice", "join bob", "leave bob leave"]
    );
}

/// A client that closes with 4005 ("client left") without sending `leave` has left on purpose:
/// `onLeave` with reason `leave` at once, not after the reconnect grace period.
#[tokio::test]
async fn client_close_4005_is_a_leave() {
    let app = GameApp::start().await;
    let room = "close-4005";
    let (_a, _) = app.joined("arena", room, "alice").await;
    let (mut b, _) = app.joined("arena", room, "bob").await;
    b.send_message(Message::Close(Some(CloseFrame {
        code: CloseCode::from(4005),
        reason: "".into(),
    })))
    .await;
    tokio::time::sleep(GRACE / 3).await;
    assert_eq!(
        app.hooks.of(room),
        vec!["create", "join alice", "join bob", "leave bob leave"],
        "close 4005 without `leave` is handled as a dropped connection"
    );
}

/// `kick`: the kicked player's connections get `kicked`, then close 4004; `onLeave` runs with
/// reason `kicked`; the kicker gets its result and the others the delta.
#[tokio::test]
async fn kick_sends_kicked_then_closes_with_4004() {
    let app = GameApp::start().await;
    let room = "kicking";
    let (mut a, _) = app.joined("arena", room, "alice").await;
    let (mut b, _) = app.joined("arena", room, "bob").await;
    let (mut b2, _) = app.joined("arena", room, "bob").await;
    a.recv_type("shared_delta").await;
    let frames = a.action("KICK", json!({"userId": "bob"}), "k1").await;
    assert_eq!(frames, vec![result("k1", "KICK")]);
    for client in [&mut b, &mut b2] {
        let (frames, close) = client.frames_until_close().await;
        assert_eq!(frames, vec![json!({"type": "kicked"})]);
        assert_eq!(close, (4004, "kicked".to_owned()));
    }
    assert_eq!(
        a.recv().await,
        shared_delta(json!({"players": ["alice"]}), 3)
    );
    assert_eq!(
        app.hooks.of(room),
        vec!["create", "join alice", "join bob", "leave bob kicked"]
    );
    // Kicking someone who is not there does nothing.
    assert_eq!(
        a.action("KICK", json!({"userId": "nobody"}), "k2").await,
        vec![result("k2", "KICK")]
    );
    tokio::time::sleep(GRACE + QUIET).await;
    assert_eq!(app.hooks.of(room).len(), 4, "{:?}", app.hooks.of(room));
}

/// A dropped connection keeps the seat for the grace period: reconnecting within it resumes the
/// seat with the player state and versions, without `onLeave`/`onJoin`; dropping again and
/// staying away runs `onLeave` with reason `disconnect` after the grace period.
#[tokio::test]
async fn reconnect_within_the_grace_period_keeps_the_seat() {
    let app = GameApp::start().await;
    let room = "grace";
    let (mut a, _) = app.joined("arena", room, "alice").await;
    let frames = a.action("PLAYER", json!({"hp": 42}), "p").await;
    assert_eq!(frames[0], player_delta(json!({"hp": 42}), 2));
    let (mut b, _) = app.joined("arena", room, "bob").await;
    a.recv_type("shared_delta").await;
    let dropped = Instant::now();
    a.drop_connection().await;
    assert!(
        b.silent_for(GRACE / 4).await,
        "no delta for a dropped connection"
    );
    let (mut a, resumed) = app.joined("arena", room, "alice").await;
    assert!(
        dropped.elapsed() < GRACE,
        "the machine is too slow for this test: the reconnect took {:?}",
        dropped.elapsed()
    );
    assert_eq!(
        resumed,
        sync(
            json!({"players": ["alice", "bob"]}),
            2,
            json!({"hp": 42}),
            2
        )
    );
    assert_eq!(app.hooks.of(room), vec!["create", "join alice", "join bob"]);
    // The resumed connection gets the room's deltas again.
    b.action("MERGE", json!({"n": 1}), "m").await;
    assert_eq!(a.recv().await, shared_delta(json!({"n": 1}), 3));

    let dropped = Instant::now();
    a.drop_connection().await;
    app.hooks.wait_for(room, "leave alice disconnect").await;
    let waited = dropped.elapsed();
    assert!(
        waited >= GRACE - Duration::from_millis(100) && waited < GRACE + WAIT,
        "onLeave after {waited:?}"
    );
    assert_eq!(b.recv().await, shared_delta(json!({"players": ["bob"]}), 4));
    // Her player state went with the seat.
    let (_a, fresh) = app.joined("arena", room, "alice").await;
    assert_eq!(fresh["playerState"], json!({"hp": 100}));
    assert_eq!(fresh["playerVersion"], 1);
}

async fn wait_evicted(app: &GameApp, namespace: &str, room: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while app.is_live(namespace, room) {
        assert!(Instant::now() < deadline, "{room} is still live");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last player leaving runs `onDestroy`; the room is saved and evicted; a later join within
/// the state TTL restores it (state, version, metadata) without running `onCreate` again.
#[tokio::test]
async fn emptied_room_is_destroyed_evicted_and_restored() {
    let app = GameApp::start().await;
    let room = "restore";
    let (mut a, _) = app.joined("arena", room, "alice").await;
    a.action("MERGE", json!({"score": 3}), "m").await;
    a.action("META", json!({"mode": "ranked"}), "meta").await;
    a.send(json!({"type": "leave"})).await;
    let (_, close) = a.frames_until_close().await;
    assert_eq!(close.0, 4005);
    app.hooks.wait_for(room, "destroy").await;
    wait_evicted(&app, "arena", room).await;
    let (status, meta) = app
        .get(
            &format!("/api/room/metadata?namespace=arena&id={room}"),
            None,
        )
        .await;
    assert_eq!((status, meta), (200, json!({"mode": "ranked"})));
    let (_b, restored) = app.joined("arena", room, "bob").await;
    assert_eq!(
        restored,
        sync(
            json!({"players": ["bob"], "score": 3}),
            4,
            json!({"hp": 100}),
            1
        )
    );
    assert_eq!(
        app.hooks.of(room),
        vec![
            "create",
            "join alice",
            "leave alice leave",
            "destroy",
            "join bob"
        ]
    );
}

/// `value` wrapped in `levels` objects `{"inner": ...}`, as the arena's `WRAP` does it.
fn wrapped(levels: usize, value: Value) -> Value {
    (0..levels).fold(value, |inner, _| json!({"inner": inner}))
}

/// A handler that keeps nesting the shared state (`WRAP`) is stopped at `MAX_STATE_DEPTH`: the
/// change that would go deeper gets `action_error STATE_TOO_LARGE` and changes nothing; the room,
/// saved at the limit, is evicted and loads again with that state.
#[tokio::test]
async fn state_nested_past_the_depth_limit_is_refused_and_the_room_loads() {
    let app = GameApp::start().await;
    let room = "deep-state";
    let (mut a, _) = app.joined("arena", room, "alice").await;
    // `{"players": ["alice"]}` nests 2 levels.
    let levels = MAX_STATE_DEPTH - 2;
    let frames = a.action("WRAP", json!({"levels": levels}), "w1").await;
    assert_eq!(
        frames.last().map(|f| &f["type"]),
        Some(&json!("action_result"))
    );
    let refused = a.answer("WRAP", json!({"levels": 1}), "w2").await;
    assert_eq!(
        refused,
        json!({
            "type": "action_error",
            "requestId": "w2",
            "actionType": "WRAP",
            "code": "STATE_TOO_LARGE",
            "message": format!(
                "state too deep: it would nest {} levels of arrays and objects, at most {MAX_STATE_DEPTH} are allowed",
                MAX_STATE_DEPTH + 1
            ),
        })
    );
    a.send(json!({"type": "leave"})).await;
    a.frames_until_close().await;
    wait_evicted(&app, "arena", room).await;
    let (_b, restored) = app.joined("arena", room, "bob").await;
    // `on_leave` and `on_join` rewrite the top-level `players`.
    let mut expected = wrapped(levels, json!({"players": ["alice"]}));
    expected["players"] = json!(["bob"]);
    assert_eq!(restored["sharedState"], expected);
}

/// What a room could not load again is never accepted. Server-only state nested past
/// `MAX_STATE_DEPTH` (its log entries and records nest it deeper, up to what a reader reads) is
/// refused like shared state: `action_error STATE_TOO_LARGE`, nothing changed; the room keeps
/// running and stores every acked write, so after eviction it loads with all of them.
#[tokio::test]
async fn server_state_too_deep_to_load_is_refused() {
    let app = GameApp::start().await;
    let room = "deep-record";
    let (mut a, _) = app.joined("arena", room, "alice").await;
    a.action("MERGE", json!({"score": 1}), "m1").await;
    a.send(json!({"type": "leave"})).await;
    a.frames_until_close().await;
    wait_evicted(&app, "arena", room).await;
    let (mut a, _) = app.joined("arena", room, "alice").await;
    let refused = a
        .answer("WRAP_SERVER", json!({"levels": MAX_RECORD_DEPTH}), "w")
        .await;
    assert_eq!(refused["type"], "action_error", "{refused}");
    assert_eq!(refused["code"], "STATE_TOO_LARGE", "{refused}");
    a.action("MERGE", json!({"score": 2}), "m2").await;
    a.send(json!({"type": "leave"})).await;
    a.frames_until_close().await;
    wait_evicted(&app, "arena", room).await;
    let (_b, restored) = app.joined("arena", room, "bob").await;
    assert_eq!(
        restored["sharedState"],
        json!({"players": ["bob"], "score": 2})
    );
}

/// Saved state older than the namespace's state TTL is not restored: the next join starts a
/// fresh room and runs `onCreate` again.
#[tokio::test]
async fn state_past_its_ttl_is_not_restored() {
    let app = GameApp::start().await;
    let room = "expired";
    let (mut a, _) = app.joined("shortttl", room, "alice").await;
    a.action("MERGE", json!({"score": 3}), "m").await;
    a.send(json!({"type": "leave"})).await;
    a.frames_until_close().await;
    wait_evicted(&app, "shortttl", room).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_b, fresh) = app.joined("shortttl", room, "bob").await;
    assert_eq!(
        fresh,
        sync(json!({"players": ["bob"]}), 1, json!({"hp": 100}), 1)
    );
    assert_eq!(
        app.hooks.of(room),
        vec![
            "create",
            "join alice",
            "leave alice leave",
            "destroy",
            "create",
            "join bob"
        ]
    );
}

/// A named timer fires `on_timer` after its delay; its changes are flushed as one delta to every
/// player; setting a timer again under the same name replaces it.
#[tokio::test]
async fn timers_fire_and_their_changes_are_flushed() {
    let app = GameApp::start().await;
    let room = "timers";
    let (mut a, _) = app.joined("arena", room, "alice").await;
    let (mut b, _) = app.joined("arena", room, "bob").await;
    a.recv_type("shared_delta").await;
    a.action(
        "TIMER",
        json!({"name": "tick", "ms": 5000, "data": 1}),
        "t1",
    )
    .await;
    let set = Instant::now();
    a.action(
        "TIMER",
        json!({"name": "tick", "ms": 200, "data": {"n": 2}}),
        "t2",
    )
    .await;
    let delta = shared_delta(json!({"ticked": {"n": 2}}), 3);
    assert_eq!(a.recv().await, delta);
    assert_eq!(b.recv().await, delta);
    assert!(
        set.elapsed() >= Duration::from_millis(180),
        "{:?}",
        set.elapsed()
    );
    assert_eq!(app.hooks.of(room)[3..], ["timer tick"]);
    assert!(a.silent_for(QUIET).await);
}

/// Graceful shutdown: every joined connection is closed with 1001 "server shutting down" and
/// the shutdown reports every room saved.
#[tokio::test]
async fn graceful_shutdown_closes_players_with_1001() {
    let app = GameApp::start().await;
    let (mut a, _) = app.joined("arena", "going-away", "alice").await;
    let (mut b, _) = app.joined("arena", "going-away", "bob").await;
    a.recv_type("shared_delta").await;
    let saved = tokio::time::timeout(WAIT * 2, app.shutdown.shutdown())
        .await
        .expect("shutdown within the wait");
    assert!(saved, "every room saved");
    for client in [&mut a, &mut b] {
        assert_eq!(
            client.closed().await,
            (1001, "server shutting down".to_owned())
        );
    }
    // Not a leave: the seats are saved with the room for the players to come back to.
    assert_eq!(
        app.hooks.of("going-away"),
        vec!["create", "join alice", "join bob"]
    );
}

/// Canvas rooms and game rooms are live in one room manager, by one room key each, and one
/// shutdown closes both kinds: the canvas client and the players get 1001, every room is saved.
#[tokio::test]
async fn one_manager_holds_and_closes_canvas_and_game_rooms() {
    let app = GameApp::start().await;
    let (mut player, _) = app.joined("arena", "shared-manager", "alice").await;
    let canvas_url = format!("ws://{}/?roomId=canvas-next-door&clientId=c1", app.addr);
    let (mut canvas, _) = tokio_tungstenite::connect_async(canvas_url)
        .await
        .expect("canvas connects");
    let reconnect = json!({"type": "reconnect", "lastTimestamp": 0, "protocolVersion": 2});
    canvas
        .send(Message::text(reconnect.to_string()))
        .await
        .expect("sent");
    // The canvas room is live once the client is synced.
    while let Some(Ok(frame)) = canvas.next().await {
        if frame.to_text().is_ok_and(|t| t.contains("\"synced\"")) {
            break;
        }
    }
    let mut keys: Vec<String> = app
        .manager
        .room_keys()
        .iter()
        .map(|k| k.to_string())
        .collect();
    keys.sort();
    assert_eq!(keys, ["arena/shared-manager", "canvas-next-door"]);
    let saved = tokio::time::timeout(WAIT * 2, app.shutdown.shutdown())
        .await
        .expect("shutdown within the wait");
    assert!(saved, "every room saved");
    assert_eq!(
        player.closed().await,
        (1001, "server shutting down".to_owned())
    );
    let canvas_close = loop {
        match canvas.next().await {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| (u16::from(f.code), f.reason)),
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(canvas_close, Some((1001, "server shutting down".into())));
    assert!(app.manager.room_keys().is_empty(), "every room closed");
}

/// A connection that authenticated but never joined is closed with 1001 at shutdown too (no
/// room does it for it).
#[tokio::test]
async fn graceful_shutdown_closes_connections_that_never_joined() {
    let app = GameApp::start().await;
    let (mut lobby, _) = app
        .authed("arena", "lobby", &access_token("carol", json!({})))
        .await;
    let saved = tokio::time::timeout(WAIT * 2, app.shutdown.shutdown())
        .await
        .expect("shutdown within the wait");
    assert!(saved);
    assert_eq!(
        lobby.closed().await,
        (1001, "server shutting down".to_owned())
    );
}

/// A room evicted with a timer pending is loaded again when the timer falls due (the wake-up
/// scheduler), with no player asking for it, and the timer fires.
#[tokio::test]
async fn an_evicted_room_is_woken_when_its_timer_falls_due() {
    let app = GameApp::start().await;
    let room = "wake";
    let (mut a, _) = app.joined("arena", room, "alice").await;
    a.action("TIMER", json!({"name": "tick", "ms": 7000, "data": 1}), "t")
        .await;
    a.send(json!({"type": "leave"})).await;
    a.frames_until_close().await;
    app.hooks.wait_for(room, "destroy").await;
    wait_evicted(&app, "arena", room).await;
    assert!(
        !app.hooks.of(room).contains(&"timer tick".to_owned()),
        "the timer fired before the room was evicted: {:?}",
        app.hooks.of(room)
    );
    app.hooks.wait_for(room, "timer tick").await;
    assert_eq!(
        app.hooks.of(room),
        vec![
            "create",
            "join alice",
            "leave alice leave",
            "destroy",
            "timer tick"
        ]
    );
}

/// A room's clock (`elapsed`, the Colyseus `clock.elapsedTime`) goes on from its saved value
/// when the room is loaded again, instead of starting over at 0.
#[tokio::test]
async fn the_room_clock_survives_a_reload() {
    let app = GameApp::start().await;
    let room = "clock";
    let (mut a, _) = app.joined("arena", room, "alice").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = a.action("ELAPSED", json!({}), "e1").await;
    let before = before.last().expect("answer")["result"]
        .as_u64()
        .expect("elapsed ms");
    assert!(before >= 1500, "{before}");
    a.send(json!({"type": "leave"})).await;
    a.frames_until_close().await;
    wait_evicted(&app, "arena", room).await;
    let (mut b, _) = app.joined("arena", room, "bob").await;
    let after = b.action("ELAPSED", json!({}), "e2").await;
    let after = after.last().expect("answer")["result"]
        .as_u64()
        .expect("elapsed ms");
    assert!(
        after >= before,
        "the clock went back from {before} to {after} ms"
    );
}
