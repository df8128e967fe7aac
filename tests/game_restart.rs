//! Game rooms across restarts of the real `weft` binary (RocksDB in a temporary directory), with
//! the shipped namespaces:
//!
//! - `battle` (the server guide's full example): `CRITICAL_UPDATE` merges its payload into the
//!   shared state and calls `save_state`; `NEXT_ROUND` sets a 30 s `turnEnd` timer; `on_create`
//!   resets `round` to 0 and `players` to `[]`; `on_destroy` logs `battle finished`.
//! - `tictactoe`: the first joiner's `{"turnSeconds": N}` sets the turn timer; when it fires the
//!   player to move loses (`turn_timeout` message). Used where a short persisted timer is needed;
//!   `battle`'s 30 s timer is waited for once, in the `kill -9` test, overlapping the restart.
//!
//! What is checked: after SIGTERM (everything saved) and after `kill -9` following a save (a
//! `save_state`, or the periodic save), a reconnecting player finds the shared state, the
//! versions, its player state and its seat (no `on_join` re-run), and a timer pending before the
//! restart fires after it, on time. A room emptied runs `on_destroy`, is evicted, and a later
//! join restores it without re-running `on_create`.
//!
//! Each test runs its own server process; their logs (stderr, `RUST_LOG=info,weft::protocols::game=debug`)
//! are printed when a test fails.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use weft::engine::tree::apply_delta;

use common::wait_with_deadline;

/// How long a client waits for a frame that should come.
const WAIT: Duration = Duration::from_secs(15);

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

// --- The server process -----------------------------------------------------------------------

/// A data directory and log that outlive the server incarnations.
struct Harness {
    dir: tempfile::TempDir,
    starts: std::cell::Cell<u32>,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            dir: tempfile::tempdir().expect("tempdir"),
            starts: std::cell::Cell::new(0),
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("weft.log")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Starts `weft serve` (RocksDB, `--auth none`: the token is the user id) on a free port.
    fn start(&self) -> Server {
        self.starts.set(self.starts.get() + 1);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("log file");
        writeln!(log, "===== start #{} =====", self.starts.get()).expect("log written");
        let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .env("RUST_LOG", "info,weft::protocols::game=debug")
            .env_remove("WEFT_EDGEBASE_SECRET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("weft starts");
        match common::listening_addr(&mut child, Duration::from_secs(60)) {
            Ok(addr) => Server { child, addr },
            Err(e) => {
                let _ = child.kill();
                panic!(
                    "weft did not print `listening on` ({e})\n{}",
                    self.log_text()
                );
            }
        }
    }
}

/// Prints the server log of a failing test.
struct ShowLogOnPanic<'a>(&'a Harness);

impl Drop for ShowLogOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.0.log_text();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- the weft log (last 80 lines) ---\n{}",
                lines[lines.len().saturating_sub(80)..].join("\n")
            );
        }
    }
}

struct Server {
    child: Child,
    /// `127.0.0.1:PORT`.
    addr: String,
}

impl Server {
    /// SIGTERM; returns once the process exited, with its status.
    fn sigterm(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed");
        wait_with_deadline(&mut self.child, Duration::from_secs(30)).expect("weft exits")
    }

    /// `kill -9`; returns once the process is gone.
    fn kill9(mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -KILL failed");
        let status =
            wait_with_deadline(&mut self.child, Duration::from_secs(30)).expect("weft exits");
        assert_eq!(status.signal(), Some(9), "{status}");
    }

    /// `GET path`: the status and the JSON body.
    async fn get(&self, path: &str) -> (u16, Value) {
        let mut stream = tokio::net::TcpStream::connect(&self.addr)
            .await
            .expect("tcp connects");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("request sent");
        let mut response = Vec::new();
        tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
            .await
            .expect("response within the wait")
            .expect("response read");
        let text = String::from_utf8(response).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("http response");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        (status, serde_json::from_str(body).expect("json body"))
    }

    /// `POST /api/room/matchmake` for `namespace`.
    async fn matchmake(&self, namespace: &str) -> Value {
        let body = json!({"namespace": namespace}).to_string();
        let mut stream = tokio::net::TcpStream::connect(&self.addr)
            .await
            .expect("tcp connects");
        let request = format!(
            "POST /api/room/matchmake HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer matcher\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("request sent");
        let mut response = Vec::new();
        tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
            .await
            .expect("response within the wait")
            .expect("response read");
        let text = String::from_utf8(response).expect("utf-8");
        let (_, body) = text.split_once("\r\n\r\n").expect("http response");
        serde_json::from_str(body).expect("json body")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A graceful exit: 0.
fn assert_graceful(status: ExitStatus) {
    assert!(status.success(), "after SIGTERM weft ended with {status}");
}

// --- A game client ----------------------------------------------------------------------------

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw client that keeps the state it was sent, the way the SDKs do.
struct Player {
    ws: Ws,
    shared: Value,
    shared_version: u64,
    player: Value,
    player_version: u64,
}

impl Player {
    /// Connects as `user` (`--auth none`: the token is the user id), joins with `options`.
    async fn join(
        server: &Server,
        namespace: &str,
        room: &str,
        user: &str,
        options: Value,
    ) -> (Player, Value) {
        let url = format!(
            "ws://{}/api/room?namespace={namespace}&id={room}",
            server.addr
        );
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(&url))
            .await
            .expect("handshake within the wait")
            .expect("websocket connects");
        let mut p = Player {
            ws,
            shared: json!({}),
            shared_version: 0,
            player: json!({}),
            player_version: 0,
        };
        p.send(json!({"type": "auth", "token": user})).await;
        let auth = p.recv().await;
        assert_eq!(auth["type"], "auth_success", "{auth}");
        p.send(json!({"type": "join", "options": options})).await;
        let sync = p.recv().await;
        assert_eq!(sync["type"], "sync", "{sync}");
        (p, sync)
    }

    async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .expect("frame sent");
    }

    /// The next frame, applied to the local state copies.
    async fn recv(&mut self) -> Value {
        self.recv_within(WAIT).await
    }

    async fn recv_within(&mut self, wait: Duration) -> Value {
        loop {
            let msg = tokio::time::timeout(wait, self.ws.next())
                .await
                .expect("a frame within the wait")
                .expect("connection open")
                .expect("no websocket error");
            let Message::Text(text) = msg else { continue };
            let frame: Value = serde_json::from_str(&text).expect("json frame");
            self.apply(&frame);
            return frame;
        }
    }

    fn apply(&mut self, frame: &Value) {
        match frame["type"].as_str() {
            Some("sync") => {
                self.shared = frame["sharedState"].clone();
                self.shared_version = frame["sharedVersion"].as_u64().expect("version");
                self.player = frame["playerState"].clone();
                self.player_version = frame["playerVersion"].as_u64().expect("version");
            }
            Some("shared_delta") => {
                apply_delta(&mut self.shared, frame["delta"].as_object().expect("delta"));
                self.shared_version = frame["version"].as_u64().expect("version");
            }
            Some("player_delta") => {
                apply_delta(&mut self.player, frame["delta"].as_object().expect("delta"));
                self.player_version = frame["version"].as_u64().expect("version");
            }
            _ => {}
        }
    }

    /// Sends an action; returns the frames up to its answer, which must be a result.
    async fn action(&mut self, action: &str, payload: Value, request_id: &str) -> Vec<Value> {
        self.send(json!({"type": "send", "actionType": action, "payload": payload, "requestId": request_id}))
            .await;
        let mut frames = Vec::new();
        loop {
            let frame = self.recv().await;
            let answer = frame["requestId"] == request_id;
            frames.push(frame);
            if answer {
                let last = frames.last().expect("answer");
                assert_eq!(last["type"], "action_result", "{frames:?}");
                return frames;
            }
        }
    }

    /// Frames until one of type `kind` (which is returned last), within `wait`.
    async fn until(&mut self, kind: &str, wait: Duration) -> Vec<Value> {
        let deadline = Instant::now() + wait;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = self.recv_within(left.max(Duration::from_millis(1))).await;
            let done = frame["type"] == kind;
            frames.push(frame);
            if done {
                return frames;
            }
        }
    }

    /// The close the server sends (code), skipping frames.
    async fn closed(&mut self) -> u16 {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("close within the wait");
            match msg {
                Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
                Some(Ok(Message::Close(None))) | None => return 1005,
                Some(Ok(Message::Text(text))) => {
                    let frame: Value = serde_json::from_str(&text).expect("json");
                    self.apply(&frame);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) => return 1006,
            }
        }
    }

    /// What this client holds, as a `sync` would say it.
    fn as_sync(&self) -> Value {
        json!({
            "type": "sync",
            "sharedState": self.shared,
            "sharedVersion": self.shared_version,
            "playerState": self.player,
            "playerVersion": self.player_version,
        })
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

// --- The tests --------------------------------------------------------------------------------

/// SIGTERM saves everything: after the restart, each player of a `battle` room finds exactly the
/// state and versions it held (shared and its own player state, including changes made after the
/// last `save_state`), keeps its seat (`on_join` does not run again: it would append the player
/// to `players` a second time and reset its player state), and the room's metadata is back. In a
/// `tictactoe` room the turn timer armed before the shutdown fires after the restart at its
/// deadline, and the room's lock survives (matchmaking does not hand it out).
#[test]
fn sigterm_keeps_state_versions_seats_and_timers() {
    let h = Harness::new();
    let _log = ShowLogOnPanic(&h);
    let rt = runtime();
    let server = h.start();
    let (mut alice, mut bob, mut x, mut o) = rt.block_on(async {
        let (mut alice, _) = Player::join(&server, "battle", "b1", "alice", Value::Null).await;
        let (mut bob, _) = Player::join(&server, "battle", "b1", "bob", Value::Null).await;
        alice.recv().await; // bob's join
        alice.action("MOVE", json!({"x": 3, "y": 4}), "m1").await;
        alice.action("NEXT_ROUND", json!({}), "n1").await;
        bob.recv().await; // the round
        alice
            .action(
                "CRITICAL_UPDATE",
                json!({"score": 5, "boss": {"hp": 30}}),
                "c1",
            )
            .await;
        bob.recv().await;
        // After the last save_state: only the shutdown's save has these.
        bob.action("MOVE", json!({"x": 1, "y": 1}), "m2").await;
        alice
            .action("ATTACK", json!({"targetId": "bob"}), "a1")
            .await;
        let attacked = bob.until("message", WAIT).await;
        assert_eq!(
            attacked[0],
            json!({"type": "player_delta", "delta": {"hp": 90}, "version": 3})
        );

        let (mut x, _) = Player::join(
            &server,
            "tictactoe",
            "t1",
            "xavier",
            json!({"turnSeconds": 6}),
        )
        .await;
        let (o, started) = Player::join(&server, "tictactoe", "t1", "olga", Value::Null).await;
        assert_eq!(started["sharedState"]["phase"], "playing", "{started}");
        x.until("message", WAIT).await; // game_started
        (alice, bob, x, o)
    });
    let deadline = x.shared["turnDeadline"].as_u64().expect("turnDeadline");
    assert_eq!(alice.shared["round"], 1);
    assert_eq!(alice.shared, bob.shared);
    let before = [alice.as_sync(), bob.as_sync(), x.as_sync(), o.as_sync()];

    let server = rt.block_on(async {
        // Drain in parallel with the shutdown: every joined player is closed with 1001.
        let closes = async {
            let mut codes = Vec::new();
            for p in [&mut alice, &mut bob, &mut x, &mut o] {
                codes.push(p.closed().await);
            }
            codes
        };
        let stop = tokio::task::spawn_blocking(move || server.sigterm());
        let codes = closes.await;
        assert_eq!(codes, vec![1001; 4]);
        stop.await.expect("sigterm task")
    });
    assert_graceful(server);
    assert_eq!(
        before[0],
        alice.as_sync(),
        "nothing arrived after the snapshot"
    );

    let server = h.start();
    rt.block_on(async {
        let (_a, a) = Player::join(&server, "battle", "b1", "alice", Value::Null).await;
        let (_b, b) = Player::join(&server, "battle", "b1", "bob", Value::Null).await;
        assert_eq!(a, before[0]);
        assert_eq!(b, before[1]);
        assert_eq!(a["sharedState"]["players"], json!([{"id": "alice"}, {"id": "bob"}]));
        assert_eq!(a["playerState"]["position"], json!({"x": 3, "y": 4}));
        assert_eq!(
            b["playerState"],
            json!({"hp": 90, "position": {"x": 1, "y": 1}})
        );
        assert_eq!(
            server.get("/api/room/metadata?namespace=battle&id=b1").await,
            (200, json!({"mode": "battle", "playerCount": 2}))
        );

        let (mut x, xs) = Player::join(&server, "tictactoe", "t1", "xavier", Value::Null).await;
        assert_eq!(xs, before[2]);
        let (_o, os) = Player::join(&server, "tictactoe", "t1", "olga", Value::Null).await;
        assert_eq!(os, before[3]);
        // Locked (both seats taken): matchmaking makes a new room instead.
        let found = server.matchmake("tictactoe").await;
        assert_eq!(found["created"], true, "{found}");
        // The turn timer fires at its deadline: X was to move and loses.
        let frames = x.until("message", WAIT).await;
        let fired = unix_ms();
        assert_eq!(
            frames.last().expect("message"),
            &json!({"type": "message", "messageType": "turn_timeout", "data": {"mark": "X", "userId": "xavier", "winner": "O"}})
        );
        assert!(
            fired + 100 >= deadline && fired < deadline + 3000,
            "fired at {fired}, deadline {deadline}"
        );
        assert_eq!(x.shared["phase"], "finished");
        assert_eq!(x.shared["reason"], "timeout");
        assert_eq!(x.shared_version, before[2]["sharedVersion"].as_u64().unwrap() + 1);
    });
    assert_graceful(server.sigterm());
}

/// `value` wrapped in `levels` arrays.
fn nested(levels: usize, value: Value) -> Value {
    (0..levels).fold(value, |inner, _| json!([inner]))
}

/// A `battle` MOVE whose `x` nests 123 levels (issue 10: it was accepted, saved 3 levels deeper,
/// and the room answered every later join with ROOM_UNAVAILABLE) is refused with
/// INVALID_MESSAGE and changes nothing; a MOVE at the depth limit is accepted; after SIGTERM and
/// a restart the room loads, and its player finds the accepted position.
#[test]
fn too_deep_move_is_refused_and_the_room_loads_after_restart() {
    let h = Harness::new();
    let _log = ShowLogOnPanic(&h);
    let rt = runtime();
    let server = h.start();
    let deepest_x = nested(weft::protocols::game::wire::MAX_VALUE_DEPTH - 1, json!(1));
    rt.block_on(async {
        let (mut alice, _) = Player::join(&server, "battle", "deep", "alice", Value::Null).await;
        let attack = json!({"x": nested(123, json!(1)), "y": 0});
        alice
            .send(json!({"type": "send", "actionType": "MOVE", "payload": attack, "requestId": "m1"}))
            .await;
        let refused = alice.recv().await;
        assert_eq!(refused["type"], "error", "{refused}");
        assert_eq!(refused["code"], "INVALID_MESSAGE", "{refused}");
        assert_eq!(
            refused["message"],
            "invalid send message: `payload` nests 124 levels of arrays and objects; at most 32 are allowed"
        );
        alice
            .action("MOVE", json!({"x": deepest_x, "y": 2}), "m2")
            .await;
        assert_eq!(alice.player["position"], json!({"x": deepest_x, "y": 2}));
    });
    assert_graceful(server.sigterm());
    let server = h.start();
    rt.block_on(async {
        let (_alice, sync) = Player::join(&server, "battle", "deep", "alice", Value::Null).await;
        assert_eq!(
            sync["playerState"]["position"],
            json!({"x": deepest_x, "y": 2})
        );
    });
    assert_graceful(server.sigterm());
}

/// `kill -9` right after `CRITICAL_UPDATE`'s `save_state` returned: the reconnecting player finds
/// the saved shared state, its player state and version and its seat, and the 30 s `turnEnd`
/// timer set before the crash fires after the restart, on time.
#[test]
fn kill_9_after_save_state_keeps_state_seats_and_timers() {
    let h = Harness::new();
    let _log = ShowLogOnPanic(&h);
    let rt = runtime();
    let server = h.start();
    let (alice, timer_set) = rt.block_on(async {
        let (mut alice, _) = Player::join(&server, "battle", "k1", "alice", Value::Null).await;
        alice.action("MOVE", json!({"x": 3, "y": 4}), "m1").await;
        let timer_set = unix_ms();
        alice.action("NEXT_ROUND", json!({}), "n1").await;
        alice
            .action(
                "CRITICAL_UPDATE",
                json!({"score": 7, "boss": {"hp": 3}}),
                "c1",
            )
            .await;
        (alice, timer_set)
    });
    server.kill9();
    assert_eq!(alice.shared["round"], 1);
    assert_eq!(alice.shared["phase"], "playing");
    drop(alice);

    let server = h.start();
    rt.block_on(async {
        let (mut alice, sync) = Player::join(&server, "battle", "k1", "alice", Value::Null).await;
        assert_eq!(
            sync["sharedState"],
            json!({"round": 1, "phase": "playing", "players": [{"id": "alice"}], "score": 7, "boss": {"hp": 3}})
        );
        assert_eq!(sync["playerState"], json!({"hp": 100, "position": {"x": 3, "y": 4}}));
        assert_eq!(sync["playerVersion"], 2);
        let version = alice.shared_version;
        let wait = Duration::from_millis((timer_set + 30_000 + 10_000).saturating_sub(unix_ms()));
        let frames = alice.until("message", wait).await;
        let fired = unix_ms();
        assert_eq!(
            frames,
            vec![
                json!({"type": "shared_delta", "delta": {"round": 2, "phase": "waiting"}, "version": version + 1}),
                json!({"type": "message", "messageType": "turn_ended", "data": {"round": 2}}),
            ]
        );
        assert!(
            fired >= timer_set + 30_000 - 100 && fired < timer_set + 30_000 + 5_000,
            "turnEnd fired {} ms after NEXT_ROUND",
            fired - timer_set
        );
    });
    assert_graceful(server.sigterm());
}

/// The versions a client saw survive a `kill -9` after `save_state`: the `sync` after the restart
/// has the version of the state it shows (the one the client last got with that state), so a
/// version never names two different states.
#[test]
fn kill_9_after_save_state_keeps_the_versions_clients_saw() {
    let h = Harness::new();
    let _log = ShowLogOnPanic(&h);
    let rt = runtime();
    let server = h.start();
    let alice = rt.block_on(async {
        let (mut alice, _) = Player::join(&server, "battle", "v1", "alice", Value::Null).await;
        alice
            .action("CRITICAL_UPDATE", json!({"score": 1}), "c1")
            .await;
        alice
    });
    server.kill9();
    let seen = alice.as_sync();
    let server = h.start();
    rt.block_on(async {
        let (_a, sync) = Player::join(&server, "battle", "v1", "alice", Value::Null).await;
        assert_eq!(sync, seen);
    });
    assert_graceful(server.sigterm());
}

/// `kill -9` after the periodic save (`tictactoe`: every 10 s): the game in progress, the seats
/// and the turn timer are back, and the timer fires at its deadline.
#[test]
fn kill_9_after_the_periodic_save_keeps_the_turn_timer() {
    let h = Harness::new();
    let _log = ShowLogOnPanic(&h);
    let rt = runtime();
    let server = h.start();
    let (x, o, first_change) = rt.block_on(async {
        let first_change = Instant::now();
        let (mut x, _) = Player::join(
            &server,
            "tictactoe",
            "p1",
            "xavier",
            json!({"turnSeconds": 16}),
        )
        .await;
        let (o, _) = Player::join(&server, "tictactoe", "p1", "olga", Value::Null).await;
        x.until("message", WAIT).await; // game_started
        x.action("MOVE", json!({"cell": 4}), "mv").await;
        (x, o, first_change)
    });
    // The periodic save runs 10 s after the first unsaved change (the first join); wait past it.
    // The move re-armed the timer after that first change, so the saved one is the move's.
    std::thread::sleep(Duration::from_secs(11).saturating_sub(first_change.elapsed()));
    server.kill9();
    let deadline = x.shared["turnDeadline"].as_u64().expect("deadline");
    let seen = x.as_sync();
    drop((x, o));
    let server = h.start();
    rt.block_on(async {
        let (mut o, sync) = Player::join(&server, "tictactoe", "p1", "olga", Value::Null).await;
        assert_eq!(sync["sharedState"], seen["sharedState"]);
        assert_eq!(sync["sharedState"]["turn"], "O");
        assert_eq!(sync["playerState"], json!({"mark": "O"}));
        let wait = Duration::from_millis((deadline + 5_000).saturating_sub(unix_ms()));
        let frames = o.until("message", wait).await;
        let fired = unix_ms();
        assert_eq!(
            frames.last().expect("message")["data"],
            json!({"mark": "O", "userId": "olga", "winner": "X"})
        );
        assert!(
            fired + 100 >= deadline && fired < deadline + 3000,
            "fired at {fired}, deadline {deadline}"
        );
    });
    assert_graceful(server.sigterm());
}

/// Lines of the log that mention `room` and `what`.
fn log_lines(h: &Harness, room: &str, what: &str) -> Vec<String> {
    h.log_text()
        .lines()
        .filter(|l| l.contains(room) && l.contains(what))
        .map(str::to_owned)
        .collect()
}

/// Waits until the log has a line with `room` and `what`.
fn wait_for_log(h: &Harness, room: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while log_lines(h, room, what).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no log line with {room} and {what:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `battle` room whose last player leaves runs `on_destroy` (it logs the result), is saved and
/// evicted; a later join (before and after a restart) restores it without `on_create`, which
/// would reset `round` to 0 and `players` to `[]`.
#[test]
fn emptied_room_is_destroyed_evicted_and_restored_without_on_create() {
    let h = Harness::new();
    let _log = ShowLogOnPanic(&h);
    let rt = runtime();
    let server = h.start();
    rt.block_on(async {
        let (mut alice, sync) = Player::join(&server, "battle", "e1", "alice", Value::Null).await;
        assert_eq!(sync["sharedState"]["round"], 0);
        alice
            .action("CRITICAL_UPDATE", json!({"round": 4, "score": 9}), "c1")
            .await;
        alice.send(json!({"type": "leave"})).await;
        assert_eq!(alice.closed().await, 4005);
    });
    wait_for_log(&h, "battle/e1", "battle finished (game_results)");
    let finished = log_lines(&h, "battle/e1", "battle finished");
    assert!(
        finished[0].contains("round=4") && finished[0].contains("final_score=9"),
        "{finished:?}"
    );
    // Evicted after the empty room's linger (5 s).
    wait_for_log(&h, "battle/e1", "game room closed");
    assert!(log_lines(&h, "battle/e1", "restored from storage").is_empty());
    rt.block_on(async {
        assert_eq!(
            server
                .get("/api/room/metadata?namespace=battle&id=e1")
                .await,
            (200, json!({"mode": "battle", "playerCount": 0}))
        );
        let (_bob, sync) = Player::join(&server, "battle", "e1", "bob", Value::Null).await;
        assert_eq!(
            sync["sharedState"],
            json!({
                "round": 4,
                "phase": "waiting",
                "players": [{"id": "bob"}],
                "score": 9,
                "lastLeave": {"userId": "alice", "reason": "leave"},
            })
        );
    });
    assert_eq!(log_lines(&h, "battle/e1", "restored from storage").len(), 1);
    assert_graceful(server.sigterm());

    // After a restart too (bob's seat was saved at shutdown and is held for its grace period).
    let server = h.start();
    rt.block_on(async {
        let (_carol, sync) = Player::join(&server, "battle", "e1", "carol", Value::Null).await;
        assert_eq!(sync["sharedState"]["round"], 4);
        assert_eq!(sync["sharedState"]["score"], 9);
        assert_eq!(
            sync["sharedState"]["players"],
            json!([{"id": "bob"}, {"id": "carol"}])
        );
    });
    assert_graceful(server.sigterm());
}
