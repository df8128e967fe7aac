//! An ack is a promise in game rooms too: every frame a room makes (the action's deltas and
//! `action_result`, messages, a join's `sync`) waits until the log entry holding the writes made
//! before it is durable, and a write storage refuses is never acked.
//!
//! The server runs on a storage double: memory storage whose appends are held (not answered)
//! while the test says so, or refused.

use std::sync::{Arc, Mutex};

use serde_json::json;
use weft::ids::RoomKey;
use weft::storage::{AppendDone, MemoryStorage, Storage, StorageError, Stored};

use crate::helpers::{GameApp, QUIET};

/// What [`GatedStorage`] does with an append.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Appends {
    /// Written at once.
    Pass,
    /// Held until [`GatedStorage::release`].
    Hold,
    /// Refused with an IO error.
    Fail,
}

/// Memory storage whose appends pass, wait, or fail, as the test says.
struct GatedStorage {
    inner: MemoryStorage,
    mode: Mutex<Appends>,
    held: Mutex<Vec<(RoomKey, u64, Vec<u8>, AppendDone)>>,
}

impl GatedStorage {
    fn new() -> Arc<GatedStorage> {
        Arc::new(GatedStorage {
            inner: MemoryStorage::default(),
            mode: Mutex::new(Appends::Pass),
            held: Mutex::new(Vec::new()),
        })
    }

    fn set(&self, mode: Appends) {
        *self.mode.lock().expect("lock") = mode;
    }

    fn held(&self) -> usize {
        self.held.lock().expect("lock").len()
    }

    /// Writes the held appends and lets later ones pass.
    fn release(&self) {
        self.set(Appends::Pass);
        let held = std::mem::take(&mut *self.held.lock().expect("lock"));
        for (key, seq, bytes, done) in held {
            self.inner.append(&key, seq, bytes, done);
        }
    }
}

impl Storage for GatedStorage {
    fn name(&self) -> &'static str {
        "gated"
    }
    fn load(&self, key: &RoomKey) -> Result<Option<Stored>, StorageError> {
        self.inner.load(key)
    }
    fn append(&self, key: &RoomKey, seq: u64, bytes: Vec<u8>, done: AppendDone) {
        let mode = *self.mode.lock().expect("lock");
        match mode {
            Appends::Pass => self.inner.append(key, seq, bytes, done),
            Appends::Hold => self
                .held
                .lock()
                .expect("lock")
                .push((key.clone(), seq, bytes, done)),
            Appends::Fail => done(Err(StorageError::Io {
                room: key.to_string(),
                source: std::io::Error::other("disk full (test)"),
            })),
        }
    }
    fn fold(&self, key: &RoomKey, seq: u64, snapshot: &[u8]) -> Result<(), StorageError> {
        self.inner.fold(key, seq, snapshot)
    }
    fn delete(&self, key: &RoomKey) -> Result<(), StorageError> {
        self.inner.delete(key)
    }
    fn list(&self) -> Result<Vec<RoomKey>, StorageError> {
        self.inner.list()
    }
}

/// While the action's log entry is not durable, neither the acting player nor anyone else sees
/// anything of it: no `shared_delta`, no `action_result`, no message. Once storage confirms the
/// entry, they come in order.
#[tokio::test]
async fn an_actions_frames_wait_until_its_writes_are_durable() {
    let storage = GatedStorage::new();
    let app = GameApp::start_on(storage.clone()).await;
    let room = "held";
    let (mut a, _) = app.joined("arena", room, "alice").await;
    let (mut b, _) = app.joined("arena", room, "bob").await;
    a.recv_type("shared_delta").await;

    storage.set(Appends::Hold);
    a.send(json!({
        "type": "send", "actionType": "MERGE_THEN_MSG", "payload": {"score": 7}, "requestId": "m"
    }))
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

    storage.release();
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
    let storage = GatedStorage::new();
    let app = GameApp::start_on(storage.clone()).await;
    let room = "refused";
    let (mut a, _) = app.joined("arena", room, "alice").await;
    a.action("MERGE", json!({"score": 1}), "m1").await;

    storage.set(Appends::Fail);
    a.send(json!({
        "type": "send", "actionType": "MERGE", "payload": {"score": 2}, "requestId": "m2"
    }))
    .await;
    let (frames, (code, _)) = a.frames_until_close().await;
    assert!(frames.is_empty(), "frames of an unstored write: {frames:?}");
    assert_eq!(code, 1011);

    storage.set(Appends::Pass);
    let (_b, sync) = app.joined("arena", room, "bob").await;
    assert_eq!(sync["sharedState"]["score"], 1, "{sync}");
}
