//! Graceful shutdown: clients are closed with 1001, every acked write is saved; and the real
//! binary does the same on SIGTERM.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use weft::engine::Limits;
use weft::ids::RoomId;
use weft::storage::{load_document, Durability, RocksStorage, StorageKind};

use crate::helpers::{
    ack, connect_url, count, doc_patch, file_settings, read_json, reconnect, spawn_app,
    spawn_app_with, synced, test_settings, within, WAIT,
};

fn shutting_down() -> (CloseCode, String) {
    (CloseCode::Away, "server shutting down".to_owned())
}

/// `shutdown` closes every connected client with 1001 `server shutting down`, returns true, and
/// stops the server: new connects fail.
#[tokio::test]
async fn shutdown_closes_every_client_with_1001() {
    let app = spawn_app().await;
    let (mut a, _) = app.join("d-close-1", "a").await;
    let (mut b, _) = app.join("d-close-1", "b").await;
    let (mut c, _) = app.join("d-close-2", "c").await;
    assert_eq!(a.recv().await, count(2));
    let handle = app.shutdown.clone();
    let shutdown = tokio::spawn(async move { handle.shutdown().await });
    assert_eq!(a.closed().await, shutting_down());
    assert_eq!(b.closed().await, shutting_down());
    assert_eq!(c.closed().await, shutting_down());
    let saved = tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown within the wait")
        .expect("shutdown task");
    assert!(saved);
    let url = app.url("roomId=d-close-1&clientId=d");
    tokio::time::timeout(WAIT, app.server)
        .await
        .expect("server stops")
        .expect("server task")
        .expect("server ran cleanly");
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
}

/// `shutdown` closes the RocksDB database before it returns, though handles to the storage
/// outlive it (the room manager here; in the binary, actix-server's worker threads, which the
/// process does not join and which used to close the database during `exit`: SIGABRT). The
/// directory opens again at once, with the acked write in it.
#[tokio::test]
async fn shutdown_closes_rocksdb_before_returning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = test_settings();
    settings.storage = StorageKind::Rocksdb;
    settings.data_dir = dir.path().to_path_buf();
    let app = spawn_app_with(settings).await;
    let (mut a, _) = app.join("d-rocks", "a").await;
    a.send(doc_patch("m1", json!([{"k/S": {"_exists": true}}])))
        .await;
    assert_eq!(a.recv().await, ack("m1", 1));
    let (saved, _) = tokio::join!(within(app.shutdown.shutdown()), a.closed());
    assert!(saved);
    let still_held = app.canvas.clone();
    let reopened = RocksStorage::open(&dir.path().join("rocksdb"), Durability::ProcessCrash)
        .expect("the database is closed once shutdown returns");
    let room = RoomId::parse("d-rocks").expect("room id");
    let clock = load_document(&reopened, &room, &Limits::default())
        .expect("load")
        .map(|d| d.clock());
    assert_eq!(clock, Some(1));
    drop(still_held);
}

/// Every write acked before shutdown is in the room's file afterwards, even with a save throttle
/// far longer than the test.
#[tokio::test]
async fn shutdown_saves_every_acked_write() {
    let (mut settings, dir) = file_settings();
    settings.rooms.fold_interval_ms = 60_000;
    let app = spawn_app_with(settings).await;
    const N: u64 = 50;
    let (mut a, _) = app.join("d-save-a", "a").await;
    let (mut b, _) = app.join("d-save-b", "b").await;
    for i in 1..=N {
        a.send(doc_patch(
            &format!("a{i}"),
            json!([{format!("k{i}/S"): {"_exists": true, "i": i}}]),
        ))
        .await;
        b.send(doc_patch(
            &format!("b{i}"),
            json!([{"one/S": {"_exists": true, "i": i}}]),
        ))
        .await;
    }
    for i in 1..=N {
        assert_eq!(a.recv().await, ack(&format!("a{i}"), i));
        assert_eq!(b.recv().await, ack(&format!("b{i}"), i));
    }
    assert!(!dir.path().join("d-save-a.json").exists(), "throttled");
    let (saved, _, _) = tokio::join!(within(app.shutdown.shutdown()), a.closed(), b.closed());
    assert!(saved);

    let doc = read_json(&dir.path().join("d-save-a.json"));
    assert_eq!(doc["timestamp"], N);
    for i in 1..=N {
        assert_eq!(
            doc["state"][format!("k{i}/S")],
            json!({"_exists": true, "i": i})
        );
    }
    let doc = read_json(&dir.path().join("d-save-b.json"));
    assert_eq!(
        doc,
        json!({"timestamp": N, "state": {"one/S": {"_exists": true, "i": N}},
               "timestamps": {"one/S": {"_exists": N, "i": N}}})
    );
}

/// A client writing as fast as it can while the server shuts down: every ack it got before the
/// close is for a write that is in the file (acks and saved clock agree).
#[tokio::test]
async fn writes_racing_shutdown_are_saved_if_acked() {
    let (mut settings, dir) = file_settings();
    settings.rooms.fold_interval_ms = 60_000;
    settings.limits.message_burst = 10_000;
    settings.limits.messages_per_second = 10_000.0;
    let app = spawn_app_with(settings).await;
    let (mut a, _) = app.join("d-race", "a").await;
    const N: u64 = 300;
    for i in 1..=N {
        a.send(doc_patch(
            &format!("m{i}"),
            json!([{format!("k{i}/S"): {"_exists": true}}]),
        ))
        .await;
    }
    // Shut down once the first ack is in, while the rest are still being applied.
    assert_eq!(a.recv().await, ack("m1", 1));
    let handle = app.shutdown.clone();
    let shutdown = tokio::spawn(async move { handle.shutdown().await });
    let mut last_acked = 1;
    loop {
        match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut a.ws))
            .await
            .expect("frames or close within the wait")
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).expect("json");
                last_acked += 1;
                assert_eq!(frame, ack(&format!("m{last_acked}"), last_acked));
            }
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(close)))) => {
                assert_eq!(close.code, CloseCode::Away);
                break;
            }
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(within(shutdown).await.expect("shutdown task"));
    let doc = read_json(&dir.path().join("d-race.json"));
    let saved = doc["timestamp"].as_u64().expect("timestamp");
    assert!(saved >= last_acked, "saved {saved} < acked {last_acked}");
    for i in 1..=last_acked {
        assert_eq!(doc["state"][format!("k{i}/S")], json!({"_exists": true}));
    }
}

/// The `weft` binary, started on a data directory; stopped with SIGTERM.
struct Binary {
    child: Child,
    addr: String,
}

impl Binary {
    async fn start(dir: &Path) -> Binary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["serve", "--addr", "127.0.0.1:0", "--storage", "file"])
            .arg("--data-dir")
            .arg(dir)
            .args(["--fold-interval-ms", "60000"])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("weft starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        tokio::time::timeout(WAIT, BufReader::new(stdout).read_line(&mut line))
            .await
            .expect("listening line within the wait")
            .expect("stdout readable");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Binary { child, addr }
    }

    fn url(&self, room: &str, client: &str) -> String {
        format!("ws://{}/?roomId={room}&clientId={client}", self.addr)
    }

    fn sigterm(&self) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    async fn exit_code(mut self) -> Option<i32> {
        tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("exits after SIGTERM")
            .expect("wait works")
            .code()
    }
}

/// The real binary: acked writes survive SIGTERM (exit code 0, throttle far away, so only the
/// shutdown flush can have saved them), and a restart on the same directory serves them.
#[tokio::test]
async fn binary_saves_acked_writes_on_sigterm_and_serves_them_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Binary::start(dir.path()).await;
    let mut a = connect_url(&server.url("d-bin", "a")).await;
    a.send(reconnect(0)).await;
    assert_eq!(a.recv_until("synced").await, vec![count(1), synced(0)]);
    const N: u64 = 20;
    for i in 1..=N {
        a.send(doc_patch(
            &format!("m{i}"),
            json!([{format!("k{i}/S"): {"_exists": true, "i": i}}]),
        ))
        .await;
    }
    for i in 1..=N {
        assert_eq!(a.recv().await, ack(&format!("m{i}"), i));
    }
    a.send(doc_patch("del", json!([{"k1/S": {"_exists": false}}])))
        .await;
    assert_eq!(a.recv().await, ack("del", N + 1));
    assert!(!dir.path().join("d-bin.json").exists(), "throttled");

    server.sigterm();
    assert_eq!(a.closed().await, shutting_down());
    assert_eq!(server.exit_code().await, Some(0));
    let doc = read_json(&dir.path().join("d-bin.json"));
    assert_eq!(doc["timestamp"], N + 1);
    assert_eq!(doc["state"]["k1/S"], json!({"_exists": false}));
    for i in 2..=N {
        assert_eq!(
            doc["state"][format!("k{i}/S")],
            json!({"_exists": true, "i": i})
        );
    }

    let server = Binary::start(dir.path()).await;
    let mut b = connect_url(&server.url("d-bin", "b")).await;
    b.send(reconnect(N)).await;
    assert_eq!(
        b.recv_until("synced").await,
        vec![
            count(1),
            json!({"type": "patch", "documentPatches": [{"k1/S": {"_exists": false}}], "clientId": "", "timestamp": N + 1}),
            synced(N + 1),
        ]
    );
    b.send(reconnect(0)).await;
    let frames = b.recv_until("synced").await;
    assert_eq!(
        frames[0]["documentPatches"][0]
            .as_object()
            .expect("diff")
            .len(),
        N as usize
    );
    server.sigterm();
    assert_eq!(b.closed().await, shutting_down());
    assert_eq!(server.exit_code().await, Some(0));
}

/// While snapshot saves (folds) fail, clients are still served and acked (their writes are in
/// the room's log); shutdown then reports the room it could not save by returning false (and
/// still closes the clients with 1001).
#[tokio::test]
async fn shutdown_reports_a_room_it_could_not_save() {
    let (mut settings, dir) = file_settings();
    let data = dir.path().join("data");
    settings.data_dir = data.clone();
    settings.rooms.fold_interval_ms = 20;
    let app = spawn_app_with(settings).await;
    let (mut a, _) = app.join("d-broken", "a").await;
    // Once the room is loaded, a directory takes the snapshot's name: every save fails.
    std::fs::create_dir_all(data.join("d-broken.json")).expect("block the snapshot");
    a.send(doc_patch("m1", json!([{"e/S": {"_exists": true}}])))
        .await;
    assert_eq!(a.recv().await, ack("m1", 1));
    let app_ref = &app;
    crate::helpers::eventually("a save fails", || async move {
        app_ref.metric("weft_storage_errors").await >= 1
    })
    .await;
    a.send(doc_patch("m2", json!([{"e/S": {"x": 1}}]))).await;
    assert_eq!(a.recv().await, ack("m2", 2));
    let (saved, closed) = tokio::join!(within(app.shutdown.shutdown()), a.closed());
    assert_eq!(closed, shutting_down());
    assert!(!saved, "shutdown must report the unsaved room");
}
