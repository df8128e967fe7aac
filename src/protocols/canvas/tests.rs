//! Runtime tests without a network: sessions are outboxes read directly.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use serde_json::{json, Value};

use super::wire::{decode, ClientFrame};
use super::*;
use crate::auth::Permission;
use crate::engine::Limits;
use crate::ids::{ClientId, RoomId, RoomKey, SessionId};
use crate::metrics::Metrics;
use crate::rooms::{
    CloseReason, Delivery, JoinError, JournalConfig, LinkEvent, NewSession, Outbox, RoomManager,
    SessionLink, Tasks,
};
use crate::storage::{
    load_document, AppendDone, Appends, GatedStorage, MemoryStorage, Storage, StorageError, Stored,
    WriteBudget, DEFAULT_STORAGE_QUEUE_BYTES,
};

/// Memory storage that counts loads and can be slow to save.
#[derive(Default)]
struct ProbeStorage {
    inner: MemoryStorage,
    loads: AtomicUsize,
    save_delay: Duration,
}

impl Storage for ProbeStorage {
    fn name(&self) -> &'static str {
        "probe"
    }
    fn load(&self, key: &RoomKey) -> Result<Option<Stored>, StorageError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.inner.load(key)
    }
    fn append(&self, key: &RoomKey, seq: u64, bytes: Vec<u8>, done: AppendDone) {
        self.inner.append(key, seq, bytes, done);
    }
    fn fold(&self, key: &RoomKey, seq: u64, snapshot: &[u8]) -> Result<(), StorageError> {
        std::thread::sleep(self.save_delay);
        self.inner.fold(key, seq, snapshot)
    }
    fn delete(&self, key: &RoomKey) -> Result<(), StorageError> {
        self.inner.delete(key)
    }
    fn list(&self) -> Result<Vec<RoomKey>, StorageError> {
        self.inner.list()
    }
}

/// An outbox cap no test here reaches.
const ROOMY: usize = 1 << 20;

fn manager(storage: Arc<ProbeStorage>, config: RoomConfig) -> CanvasRooms {
    budgeted(
        storage,
        config,
        WriteBudget::new(DEFAULT_STORAGE_QUEUE_BYTES),
    )
}

/// Canvas rooms of a fresh manager whose rooms share `budget`.
fn budgeted(storage: Arc<dyn Storage>, config: RoomConfig, budget: WriteBudget) -> CanvasRooms {
    let journal = JournalConfig {
        storage,
        budget,
        metrics: Arc::new(Metrics::default()),
    };
    CanvasRooms::new(RoomManager::new(journal, Tasks::current()), config)
}

fn room(id: &str) -> RoomId {
    RoomId::parse(id).expect("valid room id")
}

struct TestSession {
    id: SessionId,
    handle: RoomHandle,
    link: SessionLink,
}

impl TestSession {
    async fn join(
        manager: &CanvasRooms,
        room_id: &str,
        client: &str,
        max_bytes: usize,
    ) -> TestSession {
        let (outbox, link) = Outbox::new(max_bytes);
        let new = NewSession {
            client: ClientId::parse(client).expect("client id"),
            permission: Permission::Readwrite,
            metadata: Value::Null,
            outbox,
        };
        let (handle, id) = manager.join(&room(room_id), new).await.expect("joins");
        TestSession { id, handle, link }
    }

    async fn send(&self, frame: Value) {
        let frame: ClientFrame =
            decode(&frame.to_string(), &Default::default()).expect("valid frame");
        self.handle.frame(self.id, frame).await.expect("room alive");
    }

    async fn recv(&mut self) -> Value {
        let event = tokio::time::timeout(Duration::from_secs(5), self.link.next())
            .await
            .expect("a frame in time");
        match event {
            LinkEvent::Frame(frame) => serde_json::from_str(&frame).expect("json"),
            LinkEvent::Closed(reason) => panic!("closed: {reason:?}"),
        }
    }

    /// The close reason, after whatever frames are still queued.
    async fn closed(&mut self) -> CloseReason {
        loop {
            let event = tokio::time::timeout(Duration::from_secs(5), self.link.next())
                .await
                .expect("closed in time");
            if let LinkEvent::Closed(reason) = event {
                return reason;
            }
        }
    }

    /// Frames up to and including the first of type `kind`.
    async fn recv_until(&mut self, kind: &str) -> Vec<Value> {
        let mut frames = vec![];
        loop {
            let frame = self.recv().await;
            let done = frame["type"] == kind;
            frames.push(frame);
            if done {
                return frames;
            }
        }
    }
}

fn write(message_id: &str, key: &str, x: i64) -> Value {
    json!({"type": "patch", "messageId": message_id, "documentPatches": [{key: {"_exists": true, "x": x}}]})
}

/// Many concurrent first connects to a room that is not loaded share one room and one load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_connects_share_one_load() {
    let storage = Arc::new(ProbeStorage::default());
    let manager = manager(storage.clone(), RoomConfig::default());
    let joins = (0..50).map(|i| {
        let manager = manager.clone();
        tokio::spawn(
            async move { TestSession::join(&manager, "race", &format!("c{i}"), ROOMY).await },
        )
    });
    let mut sessions = vec![];
    for join in joins {
        sessions.push(join.await.expect("task"));
    }
    assert_eq!(storage.loads.load(Ordering::SeqCst), 1);
    assert_eq!(manager.room_ids(), vec![room("race")]);
    let first = &sessions[0].handle.tx;
    assert!(
        sessions.iter().all(|s| s.handle.tx.same_channel(first)),
        "every session is in the same room"
    );
}

/// An emptied room is saved and evicted after the idle timeout (30 s by default); a join before
/// then keeps it; a later join loads what was saved.
#[tokio::test(start_paused = true)]
async fn idle_rooms_are_evicted_after_the_timeout() {
    let storage = Arc::new(ProbeStorage::default());
    let config = RoomConfig::default();
    assert_eq!(config.idle_timeout, Duration::from_secs(30));
    let manager = manager(storage.clone(), config);
    let mut a = TestSession::join(&manager, "idle", "a", ROOMY).await;
    a.send(write("m1", "e/S", 1)).await;
    a.recv_until("ack").await;
    a.handle.leave(a.id).await;

    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(
        manager.room_ids(),
        vec![room("idle")],
        "still there before the timeout"
    );
    let b = TestSession::join(&manager, "idle", "b", ROOMY).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        manager.room_ids(),
        vec![room("idle")],
        "a join cancels the eviction"
    );
    b.handle.leave(b.id).await;

    tokio::time::sleep(Duration::from_secs(31)).await;
    assert!(manager.room_ids().is_empty(), "evicted");
    assert_eq!(storage.loads.load(Ordering::SeqCst), 1);

    let mut c = TestSession::join(&manager, "idle", "c", ROOMY).await;
    c.send(json!({"type": "reconnect", "lastTimestamp": 0, "protocolVersion": 2}))
        .await;
    let frames = c.recv_until("synced").await;
    assert_eq!(
        frames.last(),
        Some(&json!({"type": "synced", "timestamp": 1})),
        "reloaded from storage"
    );
    assert_eq!(storage.loads.load(Ordering::SeqCst), 2);
}

/// A connect that arrives while the room is still saving on close waits, then loads the saved
/// state: a write acked before the close is never lost to a stale load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_reopened_during_its_final_save_loads_that_save() {
    let storage = Arc::new(ProbeStorage {
        save_delay: Duration::from_millis(300),
        ..ProbeStorage::default()
    });
    let manager = manager(storage.clone(), RoomConfig::default());
    let mut a = TestSession::join(&manager, "reopen", "a", ROOMY).await;
    a.send(write("m1", "e/S", 7)).await;
    a.recv_until("ack").await;

    let closing = {
        let manager = manager.clone();
        tokio::spawn(async move {
            manager
                .close_room(&room("reopen"), CloseReason::room_closed())
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut b = TestSession::join(&manager, "reopen", "b", ROOMY).await;
    b.send(json!({"type": "reconnect", "lastTimestamp": 0, "protocolVersion": 2}))
        .await;
    let frames = b.recv_until("synced").await;
    assert_eq!(
        frames.last(),
        Some(&json!({"type": "synced", "timestamp": 1}))
    );
    closing.await.expect("task").expect("saved");
}

/// A session whose queue is full is disconnected with 1013; the others keep going.
#[tokio::test]
async fn slow_sessions_are_disconnected_not_buffered() {
    let manager = manager(Arc::new(ProbeStorage::default()), RoomConfig::default());
    let mut fast = TestSession::join(&manager, "slow", "fast", ROOMY).await;
    let mut slow = TestSession::join(&manager, "slow", "slow", 512).await;
    slow.send(json!({"type": "reconnect", "lastTimestamp": 0, "protocolVersion": 2}))
        .await;
    for i in 0..10 {
        fast.send(write(&format!("m{i}"), "e/S", i)).await;
    }
    assert_eq!(slow.closed().await, CloseReason::slow_client());
    assert_eq!(fast.handle.sessions().await.expect("room alive").len(), 1);
    let mut frames = vec![];
    while frames
        .last()
        .map(|f: &Value| f["messageId"] != "m9")
        .unwrap_or(true)
    {
        frames.push(fast.recv().await);
    }
    let acks = frames.iter().filter(|f| f["type"] == "ack").count();
    assert_eq!(acks, 10, "the fast client got every ack");
    assert!(frames.contains(&json!({"type": "clientCount", "count": 1})));
}

/// Shutdown closes every session first, then saves; later joins are refused.
#[tokio::test]
async fn close_all_closes_sessions_then_saves_every_room() {
    let storage = Arc::new(ProbeStorage::default());
    let manager = manager(storage.clone(), RoomConfig::default());
    let mut sessions = vec![];
    for name in ["r1", "r2", "r3"] {
        let mut s = TestSession::join(&manager, name, "a", ROOMY).await;
        s.send(write("m", "e/S", 1)).await;
        s.recv_until("ack").await;
        sessions.push(s);
    }
    assert!(manager.manager().close_all().await.is_empty());
    for s in &mut sessions {
        assert_eq!(s.closed().await, CloseReason::shutting_down());
    }
    for name in ["r1", "r2", "r3"] {
        let doc = load_document(&storage.inner, &room(name), &Limits::default())
            .expect("load")
            .expect("saved");
        assert_eq!(doc.clock(), 1);
        assert!(
            storage
                .inner
                .load(&RoomKey::Canvas(room(name)))
                .expect("load")
                .is_some_and(|s| s.log.is_empty()),
            "folded at close"
        );
    }
    let (outbox, _link) = Outbox::new(4);
    let new = NewSession {
        client: ClientId::parse("late").expect("id"),
        permission: Permission::Readwrite,
        metadata: Value::Null,
        outbox,
    };
    assert_eq!(
        manager.join(&room("r1"), new).await.err(),
        Some(JoinError::ShuttingDown)
    );
}

/// A room whose stored state cannot be read refuses joins instead of serving (and later saving)
/// an empty document over it.
#[tokio::test]
async fn unreadable_rooms_refuse_joins_and_keep_their_data() {
    let storage = Arc::new(ProbeStorage::default());
    storage
        .inner
        .fold(&RoomKey::Canvas(room("bad")), 0, b"{not json")
        .expect("save");
    let manager = manager(storage.clone(), RoomConfig::default());
    let (outbox, _link) = Outbox::new(4);
    let new = NewSession {
        client: ClientId::parse("a").expect("id"),
        permission: Permission::Readwrite,
        metadata: Value::Null,
        outbox,
    };
    assert_eq!(
        manager.join(&room("bad"), new).await.err(),
        Some(JoinError::StorageUnavailable)
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        load_document(&storage.inner, &room("bad"), &Limits::default()).is_err(),
        "the stored bytes are untouched"
    );
}

/// A slow client's close skips the frames it could not take (it catches up on reconnect); any
/// other close comes after every frame queued before it.
#[test]
fn a_close_follows_the_queued_frames_except_for_a_slow_client() {
    use futures_util::FutureExt;
    let frame = ByteString::from_static("{}");
    let (mut outbox, mut link) = Outbox::new(4);
    assert_eq!(outbox.send(&frame, 0, 0), Delivery::Queued);
    outbox.close(CloseReason::room_closed());
    assert_eq!(
        link.next().now_or_never(),
        Some(LinkEvent::Frame(frame.clone()))
    );
    assert_eq!(
        link.next().now_or_never(),
        Some(LinkEvent::Closed(CloseReason::room_closed()))
    );

    let (mut outbox, mut link) = Outbox::new(1);
    assert_eq!(outbox.send(&frame, 0, 0), Delivery::Queued);
    assert_eq!(outbox.send(&frame, 0, 0), Delivery::Full);
    outbox.close(CloseReason::slow_client());
    assert_eq!(
        link.next().now_or_never(),
        Some(LinkEvent::Closed(CloseReason::slow_client()))
    );
}

/// A room that drops a session without a reason closes it as `room_closed`; a connection that
/// is gone makes later frames `Gone`, and an empty queue waits.
#[test]
fn dropped_ends_are_seen_by_the_other_side() {
    use futures_util::FutureExt;
    let frame = ByteString::from_static("{}");
    let (outbox, mut link) = Outbox::new(4);
    assert_eq!(link.next().now_or_never(), None, "nothing queued yet");
    drop(outbox);
    assert_eq!(
        link.next().now_or_never(),
        Some(LinkEvent::Closed(CloseReason::room_closed()))
    );

    let (mut outbox, link) = Outbox::new(4);
    drop(link);
    assert_eq!(outbox.send(&frame, 0, 0), Delivery::Gone);
}

/// Memory storage whose appends stay unconfirmed (and unwritten) until the test says.
fn gated() -> Arc<GatedStorage> {
    Arc::new(GatedStorage::new(Appends::Hold))
}

/// A session in a room of `storage` that has written `writes` patches, none of them durable yet.
async fn session_with_unconfirmed_writes(
    storage: &Arc<GatedStorage>,
    room_id: &str,
    writes: usize,
) -> (CanvasRooms, TestSession) {
    let manager = budgeted(
        storage.clone(),
        RoomConfig::default(),
        WriteBudget::new(DEFAULT_STORAGE_QUEUE_BYTES),
    );
    let mut s = TestSession::join(&manager, room_id, "a", ROOMY).await;
    assert_eq!(s.recv().await, json!({"type": "clientCount", "count": 1}));
    for i in 1..=writes {
        s.send(write(&format!("m{i}"), "e/S", i as i64)).await;
    }
    // A round trip: the room has handled every write (the sessions are asked after them).
    s.handle.sessions().await.expect("room alive");
    assert_eq!(storage.held(), writes);
    (manager, s)
}

/// The frames a link yields until its close, and the close.
async fn frames_until_closed(link: &mut SessionLink) -> (Vec<Value>, CloseReason) {
    let mut frames = vec![];
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), link.next())
            .await
            .expect("an event in time");
        match event {
            LinkEvent::Frame(frame) => frames.push(serde_json::from_str(&frame).expect("json")),
            LinkEvent::Closed(reason) => return (frames, reason),
        }
    }
}

fn acks(n: usize) -> Vec<Value> {
    (1..=n)
        .map(|i| json!({"type": "ack", "messageId": format!("m{i}"), "timestamp": i}))
        .collect()
}

/// A connection that ends its session (rate limit, bad frame: it closes the socket itself after
/// the frames still queued) while its writes are applied but not yet durable still gets their
/// acks, once durable, before the room lets it go.
#[tokio::test]
async fn a_session_that_leaves_gets_the_acks_of_its_applied_writes_once_durable() {
    let storage = gated();
    let (_manager, mut s) = session_with_unconfirmed_writes(&storage, "leave-held", 3).await;
    s.handle.leave(s.id).await;
    s.handle.sessions().await.expect("room alive");
    use futures_util::FutureExt;
    assert_eq!(s.link.next().now_or_never(), None, "held until durable");
    storage.confirm_held();
    let (frames, close) = frames_until_closed(&mut s.link).await;
    assert_eq!(frames, acks(3));
    assert_eq!(close, CloseReason::room_closed());
}

/// A room closed while writes are in flight sends their acks (once durable) before the close.
#[tokio::test]
async fn a_closing_room_sends_the_acks_of_applied_writes_before_the_close() {
    let storage = gated();
    let (manager, mut s) = session_with_unconfirmed_writes(&storage, "close-held", 3).await;
    let closing = tokio::spawn({
        let manager = manager.clone();
        async move {
            manager
                .close_room(&room("close-held"), CloseReason::shutting_down())
                .await
        }
    });
    // The room is closing (no longer handed out) while its appends are still unconfirmed.
    while manager.existing(&room("close-held")).is_some() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    storage.confirm_held();
    let (frames, close) = frames_until_closed(&mut s.link).await;
    assert_eq!(frames, acks(3));
    assert_eq!(close, CloseReason::shutting_down());
    closing.await.expect("task").expect("saved");
}

/// Frames queued and frames held until durable count against one byte cap; the frame that
/// reaches it is still taken, the next one is refused.
#[test]
fn the_outbox_is_bounded_by_the_bytes_it_holds() {
    let frame = ByteString::from("x".repeat(300));
    let cost = crate::rooms::frame_cost(&frame);
    let (mut outbox, _link) = Outbox::new(3 * cost);
    assert_eq!(outbox.send(&frame, 0, 0), Delivery::Queued);
    assert_eq!(outbox.send(&frame, 5, 0), Delivery::Queued, "held");
    assert_eq!(outbox.send(&frame, 5, 0), Delivery::Queued, "held");
    assert_eq!(outbox.pending_bytes(), 3 * cost);
    assert_eq!(outbox.send(&frame, 5, 0), Delivery::Full);
    assert_eq!(outbox.release(5), Delivery::Queued);
    assert_eq!(
        outbox.pending_bytes(),
        3 * cost,
        "released frames still count"
    );
    assert_eq!(outbox.send(&frame, 0, 5), Delivery::Full);
}

/// One frame larger than the cap goes to a reader that has nothing waiting (a reconnect reply
/// of a large document), and so does the frame right after it; then the reader is too slow.
#[test]
fn one_frame_larger_than_the_cap_goes_to_a_reader_that_keeps_up() {
    use futures_util::FutureExt;
    let big = ByteString::from("x".repeat(10_000));
    let small = ByteString::from_static("{}");
    let (mut outbox, mut link) = Outbox::new(1000);
    assert_eq!(outbox.send(&big, 0, 0), Delivery::Queued);
    assert_eq!(outbox.send(&small, 0, 0), Delivery::Full);
    assert_eq!(link.next().now_or_never(), Some(LinkEvent::Frame(big)));
    assert_eq!(outbox.pending_bytes(), 0);
    assert_eq!(outbox.send(&small, 0, 0), Delivery::Queued);
}

/// Repeated `reconnect`s on one socket queue the document once: each later one from the same
/// or a later timestamp is answered with `synced` alone (the session has been sent every write
/// since its first diff), and the client ends with the whole document and every `synced`.
#[tokio::test]
async fn repeated_reconnects_queue_the_diff_once() {
    let manager = manager(Arc::new(ProbeStorage::default()), RoomConfig::default());
    let mut writer = TestSession::join(&manager, "reconnects", "w", ROOMY).await;
    let blob = "b".repeat(50_000);
    writer
        .send(json!({"type": "patch", "messageId": "big", "documentPatches": [{"e/S": {"_exists": true, "blob": blob}}]}))
        .await;
    writer.recv_until("ack").await;
    let mut s = TestSession::join(&manager, "reconnects", "r", ROOMY).await;
    for last in [0, 0, 0, 1, 0] {
        s.send(json!({"type": "reconnect", "lastTimestamp": last, "protocolVersion": 2}))
            .await;
    }
    writer.send(write("after", "e/T", 7)).await;
    s.send(json!({"type": "reconnect", "lastTimestamp": 0, "protocolVersion": 2}))
        .await;
    let mut frames = vec![];
    while frames
        .iter()
        .filter(|f: &&Value| f["type"] == "synced")
        .count()
        < 6
    {
        frames.push(s.recv().await);
    }
    let kinds: Vec<_> = frames
        .iter()
        .filter(|f| f["type"] != "clientCount")
        .map(|f| match (f["type"].as_str(), f["timestamp"].as_u64()) {
            (Some(kind), Some(t)) => format!("{kind}@{t}"),
            (kind, _) => format!("{kind:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "patch@1", "synced@1", "synced@1", "synced@1", "synced@1", "synced@1", "patch@2",
            "synced@2"
        ]
    );
    let diff = &frames
        .iter()
        .find(|f| f["type"] == "patch")
        .expect("a diff")["documentPatches"];
    assert_eq!(diff[0]["e/S"]["blob"], json!(blob));
}

/// With a write budget that holds two batches, a room with five writes appends two, waits (it
/// reads no further command) until they are written, then appends the rest: storage gets them
/// in order and the acks leave in order, each once its write is durable.
#[tokio::test]
async fn appends_wait_for_the_write_budget_and_keep_their_order() {
    let storage = gated();
    let batch = json!([{"e/S": {"_exists": true, "x": 1}}])
        .to_string()
        .len();
    let manager = budgeted(
        storage.clone(),
        RoomConfig::default(),
        WriteBudget::new(2 * batch),
    );
    let mut s = TestSession::join(&manager, "budget", "a", ROOMY).await;
    assert_eq!(s.recv().await, json!({"type": "clientCount", "count": 1}));
    for i in 1..=5 {
        s.send(write(&format!("m{i}"), "e/S", i)).await;
    }
    let mut acked = Vec::new();
    while acked.len() < 5 {
        let fit = (5 - acked.len()).min(2);
        for _ in 0..10_000 {
            if storage.held() >= fit {
                break;
            }
            tokio::task::yield_now().await;
        }
        // Time for the room to append more, would the budget let it.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(storage.held(), fit, "the budget holds two batches");
        storage.confirm_held();
        for _ in 0..fit {
            acked.push(s.recv_until("ack").await.pop().expect("an ack"));
        }
    }
    let expected: Vec<Value> = (1..=5)
        .map(|i| json!({"type": "ack", "messageId": format!("m{i}"), "timestamp": i}))
        .collect();
    assert_eq!(acked, expected);
    assert_eq!(storage.written(), vec![1, 2, 3, 4, 5]);
}
