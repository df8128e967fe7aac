//! Storage failures under load: a write whose append fails is never acked, the clients of that
//! room are told (close 1011) and can reconnect, and the room recovers from what storage holds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use weft::app::Application;
use weft::config::Settings;
use weft::engine::Limits;
use weft::ids::{RoomId, RoomKey};
use weft::storage::{
    load_document, AppendDone, Durability, RocksStorage, Storage, StorageError, Stored,
};

/// RocksDB whose appends and saves fail while `failing` is set, as on a full disk.
struct FlakyDisk {
    inner: RocksStorage,
    failing: AtomicBool,
}

fn disk_full(room: &RoomKey) -> StorageError {
    StorageError::Io {
        room: room.to_string(),
        source: std::io::Error::other("No space left on device (injected)"),
    }
}

impl Storage for FlakyDisk {
    fn name(&self) -> &'static str {
        "flaky-rocksdb"
    }
    fn load(&self, key: &RoomKey) -> Result<Option<Stored>, StorageError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(disk_full(key));
        }
        self.inner.load(key)
    }
    fn append(&self, key: &RoomKey, seq: u64, bytes: Vec<u8>, done: AppendDone) {
        if self.failing.load(Ordering::SeqCst) {
            return done(Err(disk_full(key)));
        }
        self.inner.append(key, seq, bytes, done);
    }
    fn fold(&self, key: &RoomKey, seq: u64, snapshot: &[u8]) -> Result<(), StorageError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(disk_full(key));
        }
        self.inner.fold(key, seq, snapshot)
    }
    fn delete(&self, key: &RoomKey) -> Result<(), StorageError> {
        self.inner.delete(key)
    }
    fn list(&self) -> Result<Vec<RoomKey>, StorageError> {
        self.inner.list()
    }
}

/// What one writer saw: values it wrote and got acks for, and how its connections ended.
#[derive(Default)]
struct Outcome {
    acked: BTreeMap<String, i64>,
    closes: Vec<u16>,
}

/// Writes unique keys as fast as acks come back, reconnecting after every close, until `stop`.
async fn writer(url: String, name: String, stop: Arc<AtomicBool>) -> Outcome {
    let mut outcome = Outcome::default();
    let mut seq = 0i64;
    while !stop.load(Ordering::SeqCst) {
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let hello = json!({"type": "reconnect", "lastTimestamp": 0, "protocolVersion": 2});
        if ws.send(Message::text(hello.to_string())).await.is_err() {
            continue;
        }
        let mut in_flight: Option<(String, i64)> = None;
        loop {
            if in_flight.is_none() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                seq += 1;
                let key = format!("{name}-{seq}/K");
                let frame = json!({"type": "patch", "messageId": key, "documentPatches": [{&key: {"_exists": true, "v": seq}}]});
                if ws.send(Message::text(frame.to_string())).await.is_err() {
                    break;
                }
                in_flight = Some((key, seq));
            }
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    let msg: Value = serde_json::from_str(&text).expect("json");
                    if msg["type"] == "ack" {
                        let (key, v) = in_flight.take().expect("an ack answers a patch");
                        assert_eq!(msg["messageId"], json!(key));
                        outcome.acked.insert(key, v);
                    }
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    outcome
                        .closes
                        .push(frame.map(|f| u16::from(f.code)).unwrap_or(1005));
                    break;
                }
                Ok(Some(Ok(_))) => {}
                _ => break,
            }
        }
    }
    outcome
}

/// Storage fails for a while under load: every acked write is stored afterwards, clients of the
/// failed room were closed with 1011, the room served again once storage recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_write_is_acked_unless_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = Arc::new(FlakyDisk {
        inner: RocksStorage::open(dir.path(), Durability::ProcessCrash).expect("open"),
        failing: AtomicBool::new(false),
    });
    let mut settings = Settings {
        addr: "127.0.0.1:0".parse().expect("addr"),
        ..Settings::default()
    };
    settings.limits.messages_per_second = 100_000.0;
    settings.limits.message_burst = 100_000;
    let app = Application::build_with_storage(&settings, disk.clone()).expect("builds");
    let url = format!("ws://{}/?roomId=flaky&clientId=", app.addr());
    let shutdown = app.shutdown_handle();
    let server = tokio::spawn(app.run());

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|i| tokio::spawn(writer(format!("{url}w{i}"), format!("w{i}"), stop.clone())))
        .collect();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        disk.failing.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        disk.failing.store(false, Ordering::SeqCst);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let mut acked = BTreeMap::new();
    let mut closes = Vec::new();
    for w in writers {
        let outcome = w.await.expect("writer task");
        acked.extend(outcome.acked);
        closes.extend(outcome.closes);
    }
    assert!(
        shutdown.shutdown().await,
        "final saves succeed once the disk is back"
    );
    server.await.expect("server task").expect("server ran");

    assert!(
        acked.len() > 20,
        "the load got through between failures: {}",
        acked.len()
    );
    assert!(
        closes.contains(&1011),
        "clients of the failed room were closed with 1011: {closes:?}"
    );
    let stored = load_document(
        &disk.inner,
        &RoomId::parse("flaky").expect("id"),
        &Limits::default(),
    )
    .expect("loads")
    .expect("stored");
    for (key, v) in &acked {
        let fields = stored
            .get(key)
            .unwrap_or_else(|| panic!("acked write {key} was lost"));
        assert_eq!(fields["v"], json!(v), "acked value of {key}");
    }
}
