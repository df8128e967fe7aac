//! An ack is a promise in game rooms too: every frame a room makes (the action's deltas and
//! `action_result`, messages, a join's `sync`) waits until the log entry holding the writes made
//! before it is durable, and a write storage refuses is never acked.
//!
//! The server runs on [`GatedStorage`]: memory storage whose appends are held (not answered)
//! while the test says so, or refused.

use std::sync::Arc;

use serde_json::json;
use weft::storage::{Appends, GatedStorage};

use crate::helpers::{send, GameApp, QUIET};

/// While the action's log entry is not durable, neither the acting player nor anyone else sees
/// anything of it: no `shared_delta`, no `action_result`, no message. Once storage confirms the
/// entry, they come in order.
#[tokio::test]
async fn an_actions_frames_wait_until_its_writes_are_durable() {
    let storage = Arc::new(GatedStorage::new(Appends::Pass));
    let app = GameApp::start_on(storage.clone()).await;
    let room = "held";
    let (mut a, _) = app.joined("arena", room, "alice").await;
    let (mut b, _) = app.joined("arena", room, "bob").await;
    a.recv_type("shared_delta").await;

    storage.set(Appends::Hold);
    a.send(send("MERGE_THEN_MSG", json!({"score": 7}), "m"))
        .await;
    crate::helpers::eventually("the action's entry is appended", || {
        let held = storage.held();
        async move { held == 1 }
    })
    .await;
    assert!(
        a.silent_for(QUIET).await,
        "the actor saw its action before it was stored"
    );
    assert!(
        b.silent_for(QUIET).await,
        "a peer saw the action before it was stored"
    );

    storage.set(Appends::Pass);
    storage.confirm_held();
    let frames = a.until_answer("m").await;
    let kinds: Vec<_> = frames.iter().map(|f| f["type"].clone()).collect();
    assert_eq!(
        kinds,
        ["shared_delta", "message", "shared_delta", "action_result"],
        "{frames:?}"
    );
    assert_eq!(frames[0]["delta"]["before"]["score"], 7);
    assert_eq!(
        b.recv_type("shared_delta").await["delta"]["before"]["score"],
        7
    );
}

/// A write storage refuses is never acked: the room closes its connections with 1011 and no
/// `action_result`, and the next join finds the state as it was stored before.
#[tokio::test]
async fn a_write_storage_refuses_is_never_acked() {
    let storage = Arc::new(GatedStorage::new(Appends::Pass));
    let app = GameApp::start_on(storage.clone()).await;
    let room = "refused";
    let (mut a, _) = app.joined("arena", room, "alice").await;
    a.action("MERGE", json!({"score": 1}), "m1").await;

    storage.set(Appends::Fail);
    a.send(send("MERGE", json!({"score": 2}), "m2")).await;
    let (frames, (code, _)) = a.frames_until_close().await;
    assert!(frames.is_empty(), "frames of an unstored write: {frames:?}");
    assert_eq!(code, 1011);

    storage.set(Appends::Pass);
    let (_b, sync) = app.joined("arena", room, "bob").await;
    assert_eq!(sync["sharedState"]["score"], 1, "{sync}");
}
