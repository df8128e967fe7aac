//! `send`: refusals, handler errors and timeouts, the token bucket, `maxStateSize`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{send, GameApp, HANDLER_TIMEOUT, QUIET};

fn action_error(request_id: &str, action: &str, code: &str, message: &str) -> Value {
    json!({
        "type": "action_error",
        "requestId": request_id,
        "actionType": action,
        "code": code,
        "message": message,
    })
}

/// A successful action: `action_result` with the request's `requestId` and `actionType` and the
/// handler's value (`null` when it returned nothing); a missing `requestId` is answered with "".
#[tokio::test]
async fn action_result_carries_request_id_and_action_type() {
    let app = GameApp::start().await;
    let (mut c, _) = app.joined("arena", "result", "alice").await;
    assert_eq!(
        c.answer("ECHO", json!({"x": [1, 2]}), "req-1").await,
        json!({"type": "action_result", "requestId": "req-1", "actionType": "ECHO", "result": {"x": [1, 2]}})
    );
    // No payload: the handler gets {}.
    c.send(json!({"type": "send", "actionType": "ECHO", "requestId": "req-2"}))
        .await;
    assert_eq!(
        c.recv().await,
        json!({"type": "action_result", "requestId": "req-2", "actionType": "ECHO", "result": {}})
    );
    c.send(json!({"type": "send", "actionType": "ECHO", "payload": 3}))
        .await;
    assert_eq!(
        c.recv().await,
        json!({"type": "action_result", "requestId": "", "actionType": "ECHO", "result": 3})
    );
    assert_eq!(
        c.answer("LOCK", json!({}), "req-3").await,
        json!({"type": "action_result", "requestId": "req-3", "actionType": "LOCK", "result": null})
    );
}

/// `send` before `join`: `action_error NOT_JOINED` (the socket stays open and can join).
#[tokio::test]
async fn send_before_join_is_not_joined() {
    let app = GameApp::start().await;
    let (mut c, _) = app.authed("arena", "not-joined", "alice").await;
    assert_eq!(
        c.answer("ECHO", json!({}), "r1").await,
        action_error(
            "r1",
            "ECHO",
            "NOT_JOINED",
            "join the room before sending actions"
        )
    );
    c.join().await;
    assert_eq!(c.answer("ECHO", json!(1), "r2").await["result"], 1);
}

/// `send` without `actionType` (missing, empty, not a string): `action_error INVALID_ACTION` with
/// `actionType` "".
#[tokio::test]
async fn send_without_action_type_is_invalid_action() {
    let app = GameApp::start().await;
    let (mut c, _) = app.joined("arena", "no-action", "alice").await;
    for (i, frame) in [
        json!({"type": "send", "payload": {}}),
        json!({"type": "send", "actionType": ""}),
        json!({"type": "send", "actionType": 7}),
        json!({"type": "send", "actionType": null}),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("r{i}");
        let mut frame = frame;
        frame["requestId"] = json!(id);
        c.send(frame).await;
        assert_eq!(
            c.recv().await,
            action_error(
                &id,
                "",
                "INVALID_ACTION",
                "send needs a non-empty actionType"
            )
        );
    }
    c.assert_alive().await;
}

/// An action type without a handler: `action_error NO_HANDLER` with its `requestId` and
/// `actionType`.
#[tokio::test]
async fn unknown_action_is_no_handler() {
    let app = GameApp::start().await;
    let (mut c, _) = app.joined("arena", "no-handler", "alice").await;
    assert_eq!(
        c.answer("FLY", json!({"to": "moon"}), "req-fly").await,
        action_error(
            "req-fly",
            "FLY",
            "NO_HANDLER",
            "no handler for action \"FLY\""
        )
    );
    // The same through a RoomLogic implementation.
    let (mut s, _) = app.joined("slow", "no-handler", "alice").await;
    assert_eq!(
        s.answer("FLY", json!({}), "r").await,
        action_error("r", "FLY", "NO_HANDLER", "no handler for action \"FLY\"")
    );
}

/// A handler's error reaches the client as `action_error ACTION_FAILED` with its own message.
#[tokio::test]
async fn handler_error_message_reaches_the_client() {
    let app = GameApp::start().await;
    let (mut c, _) = app.joined("arena", "fail", "alice").await;
    assert_eq!(
        c.answer("FAIL", json!({"message": "Invalid move"}), "m1")
            .await,
        action_error("m1", "FAIL", "ACTION_FAILED", "Invalid move")
    );
    // A player-state update for a user who is not in the room fails the same way.
    assert_eq!(
        c.answer("PLAYER_OF", json!({"userId": "ghost", "state": {}}), "m2")
            .await,
        action_error(
            "m2",
            "PLAYER_OF",
            "ACTION_FAILED",
            "no player \"ghost\" in this room"
        )
    );
    assert_eq!(c.answer("ECHO", json!(1), "m3").await["result"], 1);
}

/// A handler that runs past the namespace's `handler_timeout` is cut off: `action_error
/// ACTION_TIMEOUT` at about the timeout, and the room keeps serving.
#[tokio::test]
async fn slow_handler_times_out() {
    let app = GameApp::start().await;
    let (mut c, _) = app.joined("slow", "timeout", "alice").await;
    let started = Instant::now();
    let answer = c.answer("SLEEP", json!({"ms": 3000}), "s1").await;
    let elapsed = started.elapsed();
    assert_eq!(
        answer,
        action_error(
            "s1",
            "SLEEP",
            "ACTION_TIMEOUT",
            &format!(
                "handler did not finish within {} ms",
                HANDLER_TIMEOUT.as_millis()
            )
        )
    );
    assert!(
        elapsed >= HANDLER_TIMEOUT - Duration::from_millis(20) && elapsed < Duration::from_secs(2),
        "answered after {elapsed:?}"
    );
    assert_eq!(
        c.answer("FAST", json!({}), "s2").await,
        json!({"type": "action_result", "requestId": "s2", "actionType": "FAST", "result": "fast"})
    );
    // A handler that finishes within the timeout is fine.
    assert_eq!(
        c.answer("SLEEP", json!({"ms": 50}), "s3").await["result"],
        json!({"slept": 50})
    );
}

/// The token bucket (`actions_per_second: 2`: capacity 2, refilled at 2 per second): a burst of 4
/// gets 2 results and 2 `RATE_LIMITED` action errors; after a refill, actions pass again. Other
/// frames (ping) are not limited by it.
#[tokio::test]
async fn actions_are_rate_limited_per_connection() {
    let app = GameApp::start().await;
    let (mut c, _) = app.joined("limited", "bucket", "alice").await;
    let burst = Instant::now();
    for i in 0..4 {
        c.send(send("ECHO", json!(i), &format!("b{i}"))).await;
    }
    let mut answers = BTreeMap::new();
    while answers.len() < 4 {
        let frame = c.recv().await;
        answers.insert(frame["requestId"].as_str().expect("id").to_owned(), frame);
    }
    let limited: Vec<&String> = answers
        .iter()
        .filter(|(_, f)| f["type"] == "action_error")
        .map(|(id, _)| id)
        .collect();
    assert_eq!(limited, vec!["b2", "b3"], "{answers:?}");
    assert_eq!(
        answers["b3"],
        action_error(
            "b3",
            "ECHO",
            "RATE_LIMITED",
            "Too many actions: rate limit exceeded"
        )
    );
    assert_eq!(answers["b0"]["result"], 0);
    assert_eq!(answers["b1"]["result"], 1);
    // Other frames are not actions.
    c.assert_alive().await;
    // Another connection has its own bucket.
    let (mut d, _) = app.joined("limited", "bucket", "bob").await;
    assert_eq!(d.answer("ECHO", json!("d"), "d1").await["result"], "d");
    // 2 tokens per second: one is back after 500 ms.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let frames = c.action("ECHO", json!("again"), "b4").await;
    assert_eq!(frames.last().expect("answer")["type"], "action_result");
    let more = c.answer("ECHO", json!("more"), "b5").await;
    // Less than a second after the burst only one token has come back.
    if burst.elapsed() < Duration::from_millis(950) {
        assert_eq!(more["code"], "RATE_LIMITED", "{more}");
    }
    // A full second refills the bucket to its capacity (2), not more.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    for i in 6..9 {
        c.send(send("ECHO", json!(i), &format!("b{i}"))).await;
    }
    let mut kinds = BTreeMap::new();
    while kinds.len() < 3 {
        let frame = c.recv().await;
        kinds.insert(
            frame["requestId"].as_str().expect("id").to_owned(),
            frame["type"].as_str().expect("type").to_owned(),
        );
    }
    assert_eq!(
        kinds.values().filter(|k| *k == "action_error").count(),
        1,
        "{kinds:?}"
    );
}

/// `maxStateSize` (1024 bytes): the mutation that would exceed it is refused with `action_error
/// STATE_TOO_LARGE`, nothing is sent and the state is unchanged (a later `sync` shows it); a
/// mutation that fits still works.
#[tokio::test]
async fn state_over_max_state_size_is_refused() {
    let app = GameApp::start().await;
    let (mut a, sync) = app.joined("tiny", "big-state", "alice").await;
    assert_eq!(sync["sharedVersion"], 1);
    let (mut b, _) = app.joined("tiny", "big-state", "bob").await;
    let joined = a.recv_type("shared_delta").await;
    assert_eq!(joined["version"], 2);
    let frames = a
        .action("GROW", json!({"key": "a", "size": 600}), "g1")
        .await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(
        frames[0],
        json!({"type": "shared_delta", "delta": {"a": "x".repeat(600)}, "version": 3})
    );
    assert_eq!(frames[1]["type"], "action_result");
    assert_eq!(b.recv().await, frames[0]);
    let refused = a
        .answer("GROW", json!({"key": "b", "size": 600}), "g2")
        .await;
    assert_eq!(refused["type"], "action_error", "{refused}");
    assert_eq!(refused["code"], "STATE_TOO_LARGE");
    let message = refused["message"].as_str().expect("message");
    assert!(
        message.starts_with("state too large: ") && message.ends_with("exceed maxStateSize 1024"),
        "{message}"
    );
    assert!(b.silent_for(QUIET).await, "nothing is sent for a refusal");
    // Replacing the same member with a value that fits works.
    let frames = a
        .action("GROW", json!({"key": "a", "size": 10}), "g3")
        .await;
    assert_eq!(
        frames[0],
        json!({"type": "shared_delta", "delta": {"a": "x".repeat(10)}, "version": 4})
    );
    assert_eq!(b.recv().await, frames[0]);
    let (_c, sync) = app.joined("tiny", "big-state", "carol").await;
    assert_eq!(
        sync["sharedState"],
        json!({"players": ["alice", "bob", "carol"], "a": "x".repeat(10)})
    );
    assert_eq!(sync["sharedVersion"], 5);
}

/// Player states count towards `maxStateSize` too.
#[tokio::test]
async fn player_state_counts_towards_max_state_size() {
    let app = GameApp::start().await;
    let (mut a, _) = app.joined("tiny", "big-player", "alice").await;
    let refused = a
        .answer("PLAYER", json!({"blob": "y".repeat(1000)}), "p1")
        .await;
    assert_eq!(refused["code"], "STATE_TOO_LARGE", "{refused}");
    let (_b, sync) = app.joined("tiny", "big-player", "bob").await;
    assert_eq!(sync["playerState"], json!({"hp": 100}));
    let (_a2, again) = app.joined("tiny", "big-player", "alice").await;
    assert_eq!(again["playerState"], json!({"hp": 100}));
    assert_eq!(again["playerVersion"], 1);
}
