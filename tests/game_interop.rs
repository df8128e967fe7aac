//! Interop: the official EdgeBase Rust SDK (`edgebase-core` 0.2.9, `room::RoomClient`) against
//! the real `weft` binary serving the shipped `battle` namespace (the server guide's "Full
//! Example") and, for timers, `tictactoe`. Each test starts its own server (tokens are HS256 JWTs
//! signed with a test secret given in `WEFT_EDGEBASE_SECRET`) and waits for what it expects with a
//! deadline, never a bare sleep. Negative checks ("B never got X") are made after a fence: an
//! action of B's own whose result the server sends after everything an earlier action queued
//! for B.
//!
//! The SDK's `join()` returns before the room answers (it connects in a background task), so
//! every join here waits for `connection_state() == "connected"`, which the SDK sets on `sync`.
//! Two helpers go where the SDK cannot: a raw WebSocket client (join `options`, every frame as
//! received) and a TCP relay whose connections can be cut (a socket drop without a restart).
//! The whole file takes about 4 s; the two ignored tests are a 30 s timer and a known weft bug.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgebase_core::error::Error as SdkError;
use edgebase_core::room::{RoomClient, RoomOptions, Subscription};
use serde_json::{json, Value};
use tempfile::TempDir;

/// The EdgeBase user secret the servers verify tokens with.
const SECRET: &str = "weft-game-interop-secret";
const NS: &str = "battle";
/// How long any single expectation may take to come true.
const DEADLINE: Duration = Duration::from_secs(10);
/// The SDK's first reconnect delay in these tests (it doubles per failed attempt).
const RECONNECT_DELAY_MS: u64 = 200;

// ── The server process ──────────────────────────────────────────────────────────────────────────

/// A `weft serve` process, killed when dropped. Its log goes to a file that is printed when the
/// test fails.
struct Server {
    child: Child,
    addr: String,
    log: PathBuf,
}

static SERVERS_STARTED: AtomicUsize = AtomicUsize::new(0);

impl Server {
    /// Starts `weft serve` with `storage` in `dir/data`, listening on `addr`; waits (blocking) for
    /// `listening on ADDR`.
    fn start_blocking(storage: &str, dir: &Path, addr: &str) -> Server {
        let n = SERVERS_STARTED.fetch_add(1, Ordering::Relaxed);
        let log = dir.join(format!("weft-{n}.log"));
        let log_file = std::fs::File::create(&log).expect("server log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["serve", "--storage", storage, "--addr", addr, "--data-dir"])
            .arg(dir.join("data"))
            .env("WEFT_EDGEBASE_SECRET", SECRET)
            .env("RUST_LOG", "info,weft=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("the weft binary starts");
        let lines = common::stdout_lines(&mut child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        break addr.trim().to_owned();
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "weft did not print `listening on` ({e}); its log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.into_iter().for_each(drop));
        Server { child, addr, log }
    }

    async fn start(storage: &str, dir: &Path, addr: &str) -> Server {
        let (storage, dir, addr) = (storage.to_owned(), dir.to_owned(), addr.to_owned());
        tokio::task::spawn_blocking(move || Server::start_blocking(&storage, &dir, &addr))
            .await
            .expect("server start task")
    }

    /// A server with in-memory storage on a free port.
    async fn memory(dir: &TempDir) -> Server {
        Server::start("memory", dir.path(), "127.0.0.1:0").await
    }

    fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL: no shutdown hook runs, nothing is saved that was not saved already.
    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL the server");
        let _ = common::wait_with_deadline(&mut self.child, Duration::from_secs(10));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!(
                "---- weft log ({}), last {} lines ----",
                self.addr,
                tail.len()
            );
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

// ── Tokens ──────────────────────────────────────────────────────────────────────────────────────

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// An EdgeBase access token for `user` (with `role` if given), signed with `secret`.
fn token_signed(user: &str, role: Option<&str>, secret: &str) -> String {
    let now = unix_now();
    let mut claims = json!({
        "sub": user,
        "iss": "edgebase:user",
        "iat": now,
        "exp": now + 3600,
        "jti": uuid::Uuid::new_v4().to_string(),
    });
    if let Some(role) = role {
        claims["role"] = json!(role);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token signs")
}

fn token(user: &str, role: Option<&str>) -> String {
    token_signed(user, role, SECRET)
}

// ── Waiting ─────────────────────────────────────────────────────────────────────────────────────

/// Polls `check` until it returns `Ok`, or panics after `limit` with what it last saw.
async fn eventually_within<T>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(value) => return value,
            Err(seen) if Instant::now() >= deadline => {
                panic!("timed out after {limit:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn eventually<T>(what: &str, check: impl FnMut() -> Result<T, String>) -> T {
    eventually_within(DEADLINE, what, check).await
}

/// `Ok` when `cond`, else `Err(seen)`: the building block of `eventually` checks.
fn check(cond: bool, seen: impl std::fmt::Display) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(seen.to_string())
    }
}

// ── SDK clients ─────────────────────────────────────────────────────────────────────────────────

/// Everything an SDK client's subscriptions saw, in order.
#[derive(Debug, Default)]
struct Seen {
    /// `(full state, changes)` per shared-state callback (a sync passes the state as changes).
    shared: Vec<(Value, Value)>,
    /// `(full state, changes)` per player-state callback.
    player: Vec<(Value, Value)>,
    /// `(messageType, data)`.
    messages: Vec<(String, Value)>,
    /// `(code, message)` of `error` frames.
    errors: Vec<(String, String)>,
    kicked: usize,
    /// `on_reconnect` payloads (fired on the sync that follows a reconnect).
    reconnects: Vec<Value>,
    /// Connection state changes.
    states: Vec<String>,
}

/// The message types the battle and tictactoe namespaces send (the SDK subscribes per type).
const MESSAGE_TYPES: [&str; 5] = [
    "player_attacked",
    "turn_ended",
    "game_started",
    "turn_timeout",
    "opponent_left",
];

/// One SDK `RoomClient` with every subscription recording into `seen`.
struct Client {
    user: String,
    room: Arc<RoomClient>,
    seen: Arc<Mutex<Seen>>,
    _subscriptions: Vec<Subscription>,
}

fn options(auto_reconnect: bool) -> RoomOptions {
    RoomOptions {
        auto_reconnect,
        reconnect_base_delay_ms: RECONNECT_DELAY_MS,
        send_timeout_ms: 8_000,
        connection_timeout_ms: 5_000,
        ..RoomOptions::default()
    }
}

impl Client {
    /// A client of room `room_id` in `namespace` at `base_url`, subscribed but not joined.
    fn new(
        base_url: &str,
        namespace: &str,
        room_id: &str,
        user: &str,
        role: Option<&str>,
        opts: RoomOptions,
    ) -> Client {
        let token = token(user, role);
        let room = RoomClient::new(
            base_url,
            namespace,
            room_id,
            move || token.clone(),
            Some(opts),
        );
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut subscriptions = Vec::new();
        let s = seen.clone();
        subscriptions.push(room.on_shared_state(move |state, changes| {
            s.lock()
                .unwrap()
                .shared
                .push((state.clone(), changes.clone()))
        }));
        let s = seen.clone();
        subscriptions.push(room.on_player_state(move |state, changes| {
            s.lock()
                .unwrap()
                .player
                .push((state.clone(), changes.clone()))
        }));
        for kind in MESSAGE_TYPES {
            let s = seen.clone();
            subscriptions.push(room.on_message(kind, move |data| {
                s.lock()
                    .unwrap()
                    .messages
                    .push((kind.to_owned(), data.clone()))
            }));
        }
        let s = seen.clone();
        subscriptions.push(room.on_error(move |code, message| {
            s.lock()
                .unwrap()
                .errors
                .push((code.to_owned(), message.to_owned()))
        }));
        let s = seen.clone();
        subscriptions.push(room.on_kicked(move || s.lock().unwrap().kicked += 1));
        let s = seen.clone();
        subscriptions
            .push(room.on_reconnect(move |info| s.lock().unwrap().reconnects.push(info.clone())));
        let s = seen.clone();
        subscriptions.push(room.on_connection_state_change(move |state| {
            s.lock().unwrap().states.push(state.to_owned())
        }));
        Client {
            user: user.to_owned(),
            room,
            seen,
            _subscriptions: subscriptions,
        }
    }

    /// Joins a `battle` room and waits for its `sync` (the SDK reports "connected" only then).
    async fn join(base_url: &str, room_id: &str, user: &str, role: Option<&str>) -> Client {
        Client::join_in(base_url, NS, room_id, user, role).await
    }

    /// Joins a room of `namespace` and waits for its `sync`.
    async fn join_in(
        base_url: &str,
        namespace: &str,
        room_id: &str,
        user: &str,
        role: Option<&str>,
    ) -> Client {
        let client = Client::new(base_url, namespace, room_id, user, role, options(true));
        client.room.join().await.expect("join() starts");
        client.wait_connected().await;
        client
    }

    async fn wait_connected(&self) {
        let room = self.room.clone();
        let seen = self.seen.clone();
        eventually(&format!("{} to be connected", self.user), || {
            let state = room.connection_state();
            check(
                state == "connected",
                format!("state {state}, history {:?}", seen.lock().unwrap().states),
            )
        })
        .await;
    }

    fn shared(&self) -> Value {
        self.room.get_shared_state()
    }

    fn player(&self) -> Value {
        self.room.get_player_state()
    }

    /// The ids in the shared state's `players` list, in order.
    fn players(&self) -> Vec<String> {
        player_ids(&self.shared())
    }

    /// The messages of `kind` received so far.
    fn messages(&self, kind: &str) -> Vec<Value> {
        let seen = self.seen.lock().unwrap();
        seen.messages
            .iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, d)| d.clone())
            .collect()
    }

    /// Round-trips an action the room has no handler for: when its error arrives, every frame
    /// the room queued for this client before it has been handled by the SDK.
    async fn fence(&self) {
        let err = self
            .room
            .send("FENCE", None)
            .await
            .expect_err("FENCE has no handler");
        assert!(
            matches!(&err, SdkError::Room(m) if m.contains("FENCE")),
            "fence error: {err:?}"
        );
    }

    /// Waits until the shared state satisfies `pred`.
    async fn shared_until(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let room = self.room.clone();
        eventually(&format!("{what} in {}'s shared state", self.user), || {
            let state = room.get_shared_state();
            if pred(&state) {
                Ok(state)
            } else {
                Err(state.to_string())
            }
        })
        .await
    }

    /// Waits until the player state satisfies `pred`.
    async fn player_until(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let room = self.room.clone();
        eventually(&format!("{what} in {}'s player state", self.user), || {
            let state = room.get_player_state();
            if pred(&state) {
                Ok(state)
            } else {
                Err(state.to_string())
            }
        })
        .await
    }

    /// Waits until `n` messages of `kind` arrived; returns them.
    async fn messages_until(&self, kind: &str, n: usize) -> Vec<Value> {
        let seen = self.seen.clone();
        eventually(&format!("{n} {kind} message(s) at {}", self.user), || {
            let seen = seen.lock().unwrap();
            let got: Vec<Value> = seen
                .messages
                .iter()
                .filter(|(k, _)| k == kind)
                .map(|(_, d)| d.clone())
                .collect();
            if got.len() >= n {
                Ok(got)
            } else {
                Err(format!("{:?}", seen.messages))
            }
        })
        .await
    }
}

/// A plain WebSocket client speaking the protocol by hand: it can send what the SDK cannot (join
/// `options`) and records every frame it receives, as received.
struct RawClient {
    frames: Arc<Mutex<Vec<String>>>,
    sink: futures_util::stream::SplitSink<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        tokio_tungstenite::tungstenite::Message,
    >,
    reader: tokio::task::JoinHandle<()>,
}

impl RawClient {
    /// Connects to room `id` of `namespace`, authenticates as `user`, sends `join` (a whole join
    /// frame) and waits for the `sync`.
    async fn join(addr: &str, namespace: &str, id: &str, user: &str, join: Value) -> RawClient {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let url = format!("ws://{addr}/api/room?namespace={namespace}&id={id}");
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("raw client connects");
        let (sink, mut stream) = ws.split();
        let frames = Arc::new(Mutex::new(Vec::<String>::new()));
        let recorded = frames.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let text = match msg {
                    Message::Text(text) => text.to_string(),
                    other => format!("<non-text {other:?}>"),
                };
                recorded.lock().unwrap().push(text);
            }
        });
        let mut raw = RawClient {
            frames,
            sink,
            reader,
        };
        raw.send(json!({"type": "auth", "token": token(user, None)}))
            .await;
        raw.send(join).await;
        raw.until(&format!("{user}'s sync"), |text| {
            text.contains("\"type\":\"sync\"")
        })
        .await;
        raw
    }

    async fn send(&mut self, frame: Value) {
        use futures_util::SinkExt;
        self.sink
            .send(tokio_tungstenite::tungstenite::Message::text(
                frame.to_string(),
            ))
            .await
            .expect("raw client sends");
    }

    /// Every frame received so far, one per line.
    fn text(&self) -> String {
        self.frames.lock().unwrap().join("\n")
    }

    /// The received frames of `kind`, parsed.
    fn frames_of(&self, kind: &str) -> Vec<Value> {
        self.frames
            .lock()
            .unwrap()
            .iter()
            .filter_map(|f| serde_json::from_str::<Value>(f).ok())
            .filter(|f| f["type"] == json!(kind))
            .collect()
    }

    /// Waits until the received frames (one per line) satisfy `pred`; returns them.
    async fn until(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        eventually(&format!("{what} at the raw client"), || {
            let text = self.text();
            if pred(&text) {
                Ok(text)
            } else {
                Err(text)
            }
        })
        .await
    }
}

impl Drop for RawClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The `data` of the `message` frames of `message_type` a raw client received.
fn message_data(raw: &RawClient, message_type: &str) -> Vec<Value> {
    raw.frames_of("message")
        .into_iter()
        .filter(|m| m["messageType"] == json!(message_type))
        .map(|m| m["data"].clone())
        .collect()
}

fn player_ids(shared: &Value) -> Vec<String> {
    shared["players"]
        .as_array()
        .map(|players| {
            players
                .iter()
                .map(|p| p["id"].as_str().unwrap_or("<no id>").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn fresh_player() -> Value {
    json!({"hp": 100, "position": {"x": 0, "y": 0}})
}

/// A room id no other test uses.
fn room_id(test: &str) -> String {
    format!("{test}-{}", uuid::Uuid::new_v4().simple())
}

fn room_error(err: &SdkError) -> &str {
    match err {
        SdkError::Room(message) => message,
        other => panic!("expected a room error, got {other:?}"),
    }
}

// ── Tests ───────────────────────────────────────────────────────────────────────────────────────

/// `join()` ends with the battle's shared state (round 0, waiting, this player listed), the
/// player's own state from `onJoin`, and "connected".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_sync() {
    let dir = TempDir::new().unwrap();
    let server = Server::memory(&dir).await;
    let id = room_id("join");
    let alice = Client::join(&server.base_url(), &id, "alice", None).await;

    assert_eq!(alice.room.connection_state(), "connected");
    assert_eq!(
        alice.shared(),
        json!({"round": 0, "phase": "waiting", "players": [{"id": "alice"}]})
    );
    assert_eq!(alice.player(), fresh_player());
    let seen = alice.seen.lock().unwrap();
    // The sync reached the subscriptions too: full state as the changes.
    assert_eq!(seen.shared.len(), 1, "{:?}", seen.shared);
    assert_eq!(seen.shared[0].0, seen.shared[0].1);
    assert_eq!(seen.player.len(), 1, "{:?}", seen.player);
    assert_eq!(seen.player[0].0, fresh_player());
    assert_eq!(seen.states, ["connecting", "connected"]);
    assert!(seen.errors.is_empty(), "{:?}", seen.errors);
    assert!(seen.reconnects.is_empty());
}

/// Refused identities never get "connected": a token signed with another secret fails auth, a
/// `banned` role is refused by `onJoin` with the server's message in an `error` frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_do_not_connect() {
    let dir = TempDir::new().unwrap();
    let server = Server::memory(&dir).await;
    let id = room_id("refused");

    let forged = token_signed("mallory", None, "not-the-server-secret");
    let intruder = RoomClient::new(
        &server.base_url(),
        NS,
        &id,
        move || forged.clone(),
        Some(options(false)),
    );
    intruder.join().await.expect("join() starts");
    eventually("the forged token's client to give up", || {
        let state = intruder.connection_state();
        check(state == "disconnected", state)
    })
    .await;

    let banned = Client::new(
        &server.base_url(),
        NS,
        &id,
        "bad",
        Some("banned"),
        options(false),
    );
    banned.room.join().await.expect("join() starts");
    eventually("the banned client to give up", || {
        let state = banned.room.connection_state();
        check(state == "disconnected", state)
    })
    .await;
    {
        let seen = banned.seen.lock().unwrap();
        assert_eq!(
            seen.errors,
            [("JOIN_DENIED".to_owned(), "You are banned".to_owned())]
        );
        assert!(seen.shared.is_empty() && seen.player.is_empty(), "{seen:?}");
    }

    // Neither left a trace in the room.
    let meta = RoomClient::get_metadata_static(&server.base_url(), NS, &id)
        .await
        .expect("metadata");
    assert!(
        meta == json!({}) || meta["playerCount"] == json!(0),
        "metadata after refused joins: {meta}"
    );
}

/// `send()` resolves with the handler's result and rejects with the server's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_results_and_errors() {
    let dir = TempDir::new().unwrap();
    let server = Server::memory(&dir).await;
    let id = room_id("actions");
    let alice = Client::join(&server.base_url(), &id, "alice", None).await;

    let moved = alice
        .room
        .send("MOVE", Some(json!({"x": 5, "y": 7})))
        .await
        .expect("MOVE succeeds");
    assert_eq!(moved, json!({"moved": true}));
    // The action's delta precedes its result: the state is already updated.
    assert_eq!(
        alice.player(),
        json!({"hp": 100, "position": {"x": 5, "y": 7}})
    );

    let err = alice
        .room
        .send("DANCE", Some(json!({})))
        .await
        .expect_err("no DANCE handler");
    assert_eq!(room_error(&err), "no handler for action \"DANCE\"");

    let err = alice
        .room
        .send("KICK_PLAYER", Some(json!({"userId": "alice"})))
        .await
        .expect_err("only admins kick");
    assert_eq!(room_error(&err), "Not authorized");

    let err = alice
        .room
        .send("ATTACK", Some(json!({})))
        .await
        .expect_err("ATTACK needs a target");
    assert_eq!(room_error(&err), "ATTACK needs a targetId");

    let err = alice
        .room
        .send("CRITICAL_UPDATE", Some(json!(3)))
        .await
        .expect_err("CRITICAL_UPDATE needs an object");
    assert_eq!(room_error(&err), "CRITICAL_UPDATE needs an object payload");

    // Failed actions changed nothing, and the connection is still usable.
    assert_eq!(
        alice.player(),
        json!({"hp": 100, "position": {"x": 5, "y": 7}})
    );
    assert_eq!(alice.room.connection_state(), "connected");
    assert_eq!(
        alice
            .room
            .send("NEXT_ROUND", None)
            .await
            .expect("NEXT_ROUND"),
        Value::Null
    );
    assert_eq!(alice.shared()["round"], json!(1));
    assert_eq!(alice.shared()["phase"], json!("playing"));
}

/// Shared deltas reach everyone; player deltas only the player they belong to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_and_player_deltas() {
    let dir = TempDir::new().unwrap();
    let server = Server::memory(&dir).await;
    let id = room_id("deltas");
    let alice = Client::join(&server.base_url(), &id, "alice", None).await;
    let bob = Client::join(&server.base_url(), &id, "bob", None).await;

    // Bob's join reached Alice as a shared delta; Bob got it in his sync.
    assert_eq!(bob.players(), ["alice", "bob"]);
    alice
        .shared_until("bob in players", |s| player_ids(s) == ["alice", "bob"])
        .await;
    {
        let seen = alice.seen.lock().unwrap();
        assert!(seen.shared.len() >= 2, "{:?}", seen.shared);
        let (_, changes) = seen.shared.last().unwrap();
        assert!(
            changes.get("players").is_some(),
            "the delta names players: {changes}"
        );
    }

    // Alice moves: her state changes, Bob's player state does not (and he gets no player delta).
    let moved = alice
        .room
        .send("MOVE", Some(json!({"x": 1, "y": 2})))
        .await
        .unwrap();
    assert_eq!(moved, json!({"moved": true}));
    assert_eq!(
        alice.player(),
        json!({"hp": 100, "position": {"x": 1, "y": 2}})
    );
    bob.fence().await;
    assert_eq!(bob.player(), fresh_player());
    assert_eq!(
        bob.seen.lock().unwrap().player.len(),
        1,
        "bob got only his sync's player state: {:?}",
        bob.seen.lock().unwrap().player
    );
    // A player's position is not in the shared state either.
    assert_eq!(bob.shared(), alice.shared());
    assert!(!bob.shared().to_string().contains("position"));

    // Alice attacks Bob: Bob's hp drops, as only Bob sees.
    let attacked = alice
        .room
        .send("ATTACK", Some(json!({"targetId": "bob"})))
        .await
        .unwrap();
    assert_eq!(attacked, json!({"damage": 10}));
    bob.player_until("hp 90", |p| p["hp"] == json!(90)).await;
    assert_eq!(
        bob.player(),
        json!({"hp": 90, "position": {"x": 0, "y": 0}})
    );
    alice.fence().await;
    assert_eq!(
        alice.player(),
        json!({"hp": 100, "position": {"x": 1, "y": 2}})
    );
    let alice_player_events = alice.seen.lock().unwrap().player.clone();
    assert_eq!(
        alice_player_events.len(),
        2,
        "alice saw her sync and her MOVE only: {alice_player_events:?}"
    );
    assert!(
        !alice_player_events
            .iter()
            .any(|(_, changes)| changes.to_string().contains("\"hp\":90")),
        "bob's hp leaked to alice: {alice_player_events:?}"
    );
}

/// The `seed` battle keeps in server state reaches no client: neither the SDK clients' state
/// and callbacks nor any raw frame of a plain WebSocket client, nor the metadata endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_state_is_never_sent() {
    let dir = TempDir::new().unwrap();
    let server = Server::memory(&dir).await;
    let id = room_id("server-state");
    let alice = Client::join(&server.base_url(), &id, "alice", None).await;
    // A raw client records every frame the server sends it.
    let mut raw = RawClient::join(&server.addr, NS, &id, "raw", json!({"type": "join"})).await;
    let bob = Client::join(&server.base_url(), &id, "bob", None).await;

    alice
        .room
        .send("MOVE", Some(json!({"x": 3, "y": 3})))
        .await
        .unwrap();
    bob.room
        .send("ATTACK", Some(json!({"targetId": "raw"})))
        .await
        .unwrap();
    alice.room.send("NEXT_ROUND", None).await.unwrap();
    // CRITICAL_UPDATE saves the whole room (server state included) and sends a shared delta.
    alice
        .room
        .send("CRITICAL_UPDATE", Some(json!({"score": 7})))
        .await
        .unwrap();
    raw.send(json!({
        "type": "send", "actionType": "MOVE", "payload": {"x": 1, "y": 1}, "requestId": "r1",
    }))
    .await;
    bob.room.leave().await;
    alice
        .shared_until("bob's leave", |s| s["lastLeave"]["userId"] == json!("bob"))
        .await;
    let all_seen = raw
        .until("score, bob's leave and r1's result", |text| {
            text.contains("\"score\":7")
                && text.contains("\"lastLeave\"")
                && text.contains("\"requestId\":\"r1\"")
        })
        .await;

    // What the raw client saw is the whole protocol, not just a sync.
    for kind in [
        "auth_success",
        "sync",
        "shared_delta",
        "player_delta",
        "message",
        "action_result",
    ] {
        assert!(
            all_seen.contains(&format!("\"type\":\"{kind}\"")),
            "no {kind} frame in: {all_seen}"
        );
    }
    assert!(
        !all_seen.contains("seed"),
        "server state leaked: {all_seen}"
    );
    assert!(!all_seen.contains("<non-text"), "{all_seen}");

    for client in [&alice, &bob] {
        let held = format!(
            "{} {} {:?}",
            client.shared(),
            client.player(),
            client.seen.lock().unwrap()
        );
        assert!(
            !held.contains("seed"),
            "server state reached {}: {held}",
            client.user
        );
    }
    assert_eq!(alice.shared()["score"], json!(7));
    let meta = alice.room.get_metadata().await.unwrap();
    assert!(!meta.to_string().contains("seed"), "{meta}");
}

/// `sendMessage(..., exclude)`: the attacker is excluded, everyone else gets the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_honour_exclude() {
    let dir = TempDir::new().unwrap();
    let server = Server::memory(&dir).await;
    let id = room_id("messages");
    let alice = Client::join(&server.base_url(), &id, "alice", None).await;
    let bob = Client::join(&server.base_url(), &id, "bob", None).await;
    let carol = Client::join(&server.base_url(), &id, "carol", None).await;

    alice
        .room
        .send("ATTACK", Some(json!({"targetId": "bob"})))
        .await
        .unwrap();
    let expected = json!({"attacker": "alice", "target": "bob", "damage": 10});
    for client in [&bob, &carol] {
        let got = client.messages_until("player_attacked", 1).await;
        assert_eq!(got, std::slice::from_ref(&expected), "at {}", client.user);
    }
    // The room sends a handler's messages before its result: Alice would have it by now.
    alice.fence().await;
    assert!(
        alice.messages("player_attacked").is_empty(),
        "the attacker was excluded: {:?}",
        alice.seen.lock().unwrap().messages
    );
    // Exactly one each.
    bob.fence().await;
    carol.fence().await;
    assert_eq!(bob.messages("player_attacked").len(), 1);
    assert_eq!(carol.messages("player_attacked").len(), 1);
}

/// An admin's KICK_PLAYER: the kicked SDK fires `on_kicked`, goes to "kicked" and stays there;
/// the others see `lastLeave` with reason "kicked".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_kicks_a_player() {
    let dir = TempDir::new().unwrap();
    let server = Server::memory(&dir).await;
    let id = room_id("kick");
    let admin = Client::join(&server.base_url(), &id, "admin", Some("admin")).await;
    let bob = Client::join(&server.base_url(), &id, "bob", None).await;
    let carol = Client::join(&server.base_url(), &id, "carol", None).await;

    let result = admin
        .room
        .send("KICK_PLAYER", Some(json!({"userId": "bob"})))
        .await
        .expect("an admin may kick");
    assert_eq!(result, Value::Null);

    {
        let seen = bob.seen.clone();
        let room = bob.room.clone();
        eventually("bob to be kicked", || {
            let kicked = seen.lock().unwrap().kicked;
            let state = room.connection_state();
            check(
                kicked == 1 && state == "kicked",
                format!("kicked {kicked}, state {state}"),
            )
        })
        .await;
    }
    let kicked = json!({"userId": "bob", "reason": "kicked"});
    for other in [&admin, &carol] {
        let shared = other
            .shared_until("bob's kick", |s| s["lastLeave"] == kicked)
            .await;
        assert_eq!(player_ids(&shared), ["admin", "carol"]);
    }
    let meta = RoomClient::get_metadata_static(&server.base_url(), NS, &id)
        .await
        .unwrap();
    assert_eq!(meta, json!({"mode": "battle", "playerCount": 2}));

    // The SDK does not reconnect after a kick: give it several reconnect delays, then check that
    // it is still kicked and not back in the room.
    tokio::time::sleep(Duration::from_millis(RECONNECT_DELAY_MS * 5)).await;
    carol.fence().await;
    assert_eq!(bob.room.connection_state(), "kicked");
    assert_eq!(carol.players(), ["admin", "carol"]);
    let states = bob.seen.lock().unwrap().states.clone();
    assert_eq!(states, ["connecting", "connected", "kicked"]);
}

/// `leave()`: the others see the player removed with `lastLeave` reason "leave".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_removes_the_player() {
    let dir = TempDir::new().unwrap();
    let server = Server::memory(&dir).await;
    let id = room_id("leave");
    let alice = Client::join(&server.base_url(), &id, "alice", None).await;
    let bob = Client::join(&server.base_url(), &id, "bob", None).await;
    alice
        .shared_until("bob in players", |s| player_ids(s) == ["alice", "bob"])
        .await;

    bob.room.leave().await;
    assert_eq!(bob.room.connection_state(), "idle");
    let shared = alice
        .shared_until("bob's leave", |s| {
            s["lastLeave"] == json!({"userId": "bob", "reason": "leave"})
        })
        .await;
    assert_eq!(player_ids(&shared), ["alice"]);
    let meta = alice.room.get_metadata().await.unwrap();
    assert_eq!(meta, json!({"mode": "battle", "playerCount": 1}));
}

/// A TCP relay between an SDK client and the server whose connections can be cut (both sockets
/// closed, as when a network path dies), so a client's socket drops while the server runs on.
struct Relay {
    addr: String,
    links: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: String) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let links = Arc::new(Mutex::new(Vec::new()));
        let registered = links.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                registered.lock().unwrap().push(link);
            }
        });
        Relay {
            addr,
            links,
            accept,
        }
    }

    fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops every relayed connection; new ones are still accepted.
    fn cut(&self) -> usize {
        let links: Vec<_> = self.links.lock().unwrap().drain(..).collect();
        for link in &links {
            link.abort();
        }
        links.len()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// The socket drops while the server keeps running: the SDK reconnects within the grace period
/// (15 s for battle), re-joins and resumes its seat; no `onLeave`, its player state kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_after_a_dropped_socket_keeps_the_seat() {
    let dir = TempDir::new().unwrap();
    let server = Server::memory(&dir).await;
    let relay = Relay::start(server.addr.clone()).await;
    let id = room_id("drop");
    let alice = Client::join(&relay.base_url(), &id, "alice", None).await;
    let bob = Client::join(&server.base_url(), &id, "bob", None).await;
    alice
        .room
        .send("MOVE", Some(json!({"x": 6, "y": 9})))
        .await
        .unwrap();
    let shared_before = alice
        .shared_until("bob in players", |s| player_ids(s) == ["alice", "bob"])
        .await;

    assert_eq!(relay.cut(), 1, "alice's one socket was relayed");
    {
        let seen = alice.seen.clone();
        let room = alice.room.clone();
        eventually("alice to reconnect", || {
            let seen = seen.lock().unwrap();
            let state = room.connection_state();
            check(
                !seen.reconnects.is_empty() && state == "connected",
                format!("state {state}, history {:?}", seen.states),
            )
        })
        .await;
    }
    let states = alice.seen.lock().unwrap().states.clone();
    assert!(
        states.contains(&"reconnecting".to_owned()),
        "the socket really dropped: {states:?}"
    );
    assert_eq!(
        alice.player(),
        json!({"hp": 100, "position": {"x": 6, "y": 9}})
    );
    assert_eq!(alice.shared(), shared_before);
    // The seat was resumed, not re-taken: the connection works and nobody saw a leave.
    let moved = alice
        .room
        .send("MOVE", Some(json!({"x": 7, "y": 9})))
        .await
        .expect("actions work after the reconnect");
    assert_eq!(moved, json!({"moved": true}));
    bob.fence().await;
    let bob_seen = bob.seen.lock().unwrap();
    for (state, _) in &bob_seen.shared {
        assert_eq!(
            player_ids(state),
            ["alice", "bob"],
            "bob saw a player list without alice: {:?}",
            bob_seen.shared
        );
        assert!(state.get("lastLeave").is_none(), "{state}");
    }
}

/// The server is SIGKILLed after CRITICAL_UPDATE saved the room (RocksDB) and restarted on the
/// same port: the SDK clients reconnect on their own, re-join within the grace period and get the
/// saved shared state and their own player states back, with no `onLeave` and no second `onJoin`.
/// A client that joins afresh after the restart (no local state to offer) gets the same state,
/// so it came from storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_after_server_restart_restores_saved_state() {
    let dir = TempDir::new().unwrap();
    let mut server = Server::start("rocksdb", dir.path(), "127.0.0.1:0").await;
    let base = server.base_url();
    let id = room_id("restart");
    let alice = Client::join(&base, &id, "alice", None).await;
    let bob = Client::join(&base, &id, "bob", None).await;
    alice
        .room
        .send("MOVE", Some(json!({"x": 3, "y": 4})))
        .await
        .unwrap();
    bob.room
        .send("ATTACK", Some(json!({"targetId": "alice"})))
        .await
        .unwrap();
    alice
        .room
        .send("CRITICAL_UPDATE", Some(json!({"score": 42})))
        .await
        .expect("CRITICAL_UPDATE saves");
    let saved_shared = json!({
        "round": 0, "phase": "waiting",
        "players": [{"id": "alice"}, {"id": "bob"}],
        "score": 42,
    });
    assert_eq!(alice.shared(), saved_shared);
    let alice_saved = json!({"hp": 90, "position": {"x": 3, "y": 4}});
    assert_eq!(alice.player(), alice_saved);

    let addr = server.addr.clone();
    server.kill9();
    for client in [&alice, &bob] {
        let room = client.room.clone();
        eventually(
            &format!("{} to notice the dead server", client.user),
            || {
                let state = room.connection_state();
                check(state == "reconnecting", state)
            },
        )
        .await;
    }
    let server = Server::start("rocksdb", dir.path(), &addr).await;
    assert_eq!(server.addr, addr);

    for client in [&alice, &bob] {
        let seen = client.seen.clone();
        let room = client.room.clone();
        eventually_within(
            Duration::from_secs(20),
            &format!("{} to reconnect to the restarted server", client.user),
            || {
                let seen = seen.lock().unwrap();
                let state = room.connection_state();
                check(
                    !seen.reconnects.is_empty() && state == "connected",
                    format!("state {state}, history {:?}", seen.states),
                )
            },
        )
        .await;
    }
    assert_eq!(alice.shared(), saved_shared);
    assert_eq!(alice.player(), alice_saved);
    assert_eq!(bob.shared(), saved_shared);
    assert_eq!(bob.player(), fresh_player());

    // A newcomer has no state to offer: what it gets comes from the server's storage.
    let carol = Client::join(&base, &id, "carol", None).await;
    let mut expected = saved_shared.clone();
    expected["players"] = json!([{"id": "alice"}, {"id": "bob"}, {"id": "carol"}]);
    assert_eq!(carol.shared(), expected);
    alice
        .shared_until("carol in players", |s| *s == expected)
        .await;
    assert_eq!(
        RoomClient::get_metadata_static(&base, NS, &id)
            .await
            .unwrap(),
        json!({"mode": "battle", "playerCount": 3})
    );
    // The restored seats work: an action of Alice's changes her restored state.
    alice
        .room
        .send("MOVE", Some(json!({"x": 5, "y": 4})))
        .await
        .expect("actions work after the restart");
    assert_eq!(
        alice.player(),
        json!({"hp": 90, "position": {"x": 5, "y": 4}})
    );
    drop(server);
}

/// Metadata over HTTP: `{}` for a room that does not exist, then the battle's `mode` and
/// `playerCount` following joins and leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_over_http() {
    let dir = TempDir::new().unwrap();
    let server = Server::memory(&dir).await;
    let base = server.base_url();
    let id = room_id("meta");

    let none = RoomClient::get_metadata_static(&base, NS, &id)
        .await
        .expect("metadata of an unknown room");
    assert_eq!(none, json!({}));

    let alice = Client::join(&base, &id, "alice", None).await;
    assert_eq!(
        RoomClient::get_metadata_static(&base, NS, &id)
            .await
            .unwrap(),
        json!({"mode": "battle", "playerCount": 1})
    );
    let bob = Client::join(&base, &id, "bob", None).await;
    assert_eq!(
        alice.room.get_metadata().await.unwrap(),
        json!({"mode": "battle", "playerCount": 2})
    );
    bob.room.leave().await;
    let room = alice.room.clone();
    alice
        .shared_until("bob's leave", |s| player_ids(s) == ["alice"])
        .await;
    assert_eq!(
        room.get_metadata().await.unwrap(),
        json!({"mode": "battle", "playerCount": 1})
    );

    // An unknown namespace is an error the SDK reports with the server's message.
    let err = RoomClient::get_metadata_static(&base, "no-such-namespace", &id)
        .await
        .expect_err("unknown namespace");
    assert!(
        room_error(&err).contains("no-such-namespace"),
        "error: {err:?}"
    );
}

/// Timers on `tictactoe`, whose first joiner's join options set the turn length
/// (`{"turnSeconds": 1}`). The SDK's `join()` sends no options, so X joins with a raw WebSocket
/// client and O is the SDK client observing: the game starts when O joins, X does not move and
/// loses on time after 1 s (`turn_timeout` to both, the shared state finished). Then the SDK's
/// RESTART re-arms the timer with O to move first, and O times out in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tictactoe_turn_timer_fires() {
    let dir = TempDir::new().unwrap();
    let server = Server::memory(&dir).await;
    let id = room_id("ttt");
    let xavier = RawClient::join(
        &server.addr,
        "tictactoe",
        &id,
        "xavier",
        json!({"type": "join", "options": {"turnSeconds": 1}}),
    )
    .await;
    let started = Instant::now();
    let olive = Client::join_in(&server.base_url(), "tictactoe", &id, "olive", None).await;
    let now_ms = unix_now() * 1000 + 999;

    assert_eq!(olive.player(), json!({"mark": "O"}));
    let shared = olive.shared();
    assert_eq!(shared["players"], json!({"X": "xavier", "O": "olive"}));
    assert_eq!(
        (&shared["phase"], &shared["turn"]),
        (&json!("playing"), &json!("X"))
    );
    // The deadline is 1 s out (the join option), not the default 30 s.
    let deadline = shared["turnDeadline"].as_u64().expect("a turnDeadline");
    assert!(
        deadline <= now_ms + 1_000,
        "turnDeadline {deadline} is more than 1 s after {now_ms}"
    );
    // X hears the game start (O too: see `a_message_sent_in_on_join_reaches_the_joiner`).
    xavier
        .until("game_started", |text| text.contains("game_started"))
        .await;
    assert_eq!(
        message_data(&xavier, "game_started"),
        [json!({"first": "X"})]
    );

    let expired = olive.messages_until("turn_timeout", 1).await;
    let elapsed = started.elapsed();
    assert_eq!(
        expired,
        [json!({"mark": "X", "userId": "xavier", "winner": "O"})]
    );
    assert!(
        elapsed >= Duration::from_millis(950) && elapsed < Duration::from_secs(8),
        "a 1 s turn timed out after {elapsed:?}"
    );
    let shared = olive
        .shared_until("the game finished", |s| s["phase"] == json!("finished"))
        .await;
    assert_eq!(
        (&shared["winner"], &shared["reason"]),
        (&json!("O"), &json!("timeout"))
    );
    assert!(shared.get("turnDeadline").is_none(), "{shared}");
    xavier
        .until("turn_timeout", |text| text.contains("turn_timeout"))
        .await;
    assert_eq!(
        message_data(&xavier, "turn_timeout"),
        [json!({"mark": "X", "userId": "xavier", "winner": "O"})]
    );
    assert_eq!(
        olive.room.get_metadata().await.unwrap(),
        json!({"mode": "tictactoe", "players": 2, "phase": "finished", "turnSeconds": 1})
    );

    // An SDK action re-arms the timer: RESTART, O moves first (the first mover alternates).
    let restarted = olive.room.send("RESTART", None).await.expect("RESTART");
    assert_eq!(restarted, json!({"first": "O"}));
    assert_eq!(
        olive.messages("game_started").last(),
        Some(&json!({"first": "O"}))
    );
    let expired = olive.messages_until("turn_timeout", 2).await;
    assert_eq!(
        expired[1],
        json!({"mark": "O", "userId": "olive", "winner": "X"})
    );
    let shared = olive
        .shared_until("the second game finished", |s| {
            s["phase"] == json!("finished") && s["winner"] == json!("X")
        })
        .await;
    assert_eq!(shared["reason"], json!("timeout"));
}

/// `room.sendMessage` in `onJoin` broadcasts "to all connected clients" (server guide), and the
/// joining client is connected: in tictactoe the second joiner's `onJoin` starts the game and
/// sends `game_started`, which should reach both players.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_in_on_join_reaches_the_joiner() {
    let dir = TempDir::new().unwrap();
    let server = Server::memory(&dir).await;
    let id = room_id("join-message");
    let xavier = Client::join_in(&server.base_url(), "tictactoe", &id, "xavier", None).await;
    let olive = Client::join_in(&server.base_url(), "tictactoe", &id, "olive", None).await;
    assert_eq!(
        xavier.messages_until("game_started", 1).await,
        [json!({"first": "X"})]
    );
    assert_eq!(olive.shared()["phase"], json!("playing"));
    // The room queued the message before olive's sync; a fence makes sure it was not just late.
    olive
        .room
        .send("MOVE", Some(json!({"cell": 9})))
        .await
        .expect_err("cell 9 is off the board");
    assert_eq!(
        olive.messages("game_started"),
        [json!({"first": "X"})],
        "the joiner whose join started the game did not get game_started"
    );
}

/// Timers on `battle`: NEXT_ROUND starts a fixed 30 s `turnEnd` timer; when it fires the round
/// advances, the phase goes back to "waiting" and `turn_ended` reaches every client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: waits for battle's fixed 30 s turn timer; tictactoe_turn_timer_fires covers timers in about 2 s"]
async fn battle_turn_timer_fires() {
    let dir = TempDir::new().unwrap();
    let server = Server::memory(&dir).await;
    let id = room_id("timer");
    let alice = Client::join(&server.base_url(), &id, "alice", None).await;
    let bob = Client::join(&server.base_url(), &id, "bob", None).await;

    let started = Instant::now();
    alice.room.send("NEXT_ROUND", None).await.unwrap();
    assert_eq!(alice.shared()["round"], json!(1));
    assert_eq!(alice.shared()["phase"], json!("playing"));

    let limit = Duration::from_secs(45);
    for client in [&alice, &bob] {
        let seen = client.seen.clone();
        let got = eventually_within(limit, &format!("turn_ended at {}", client.user), || {
            let seen = seen.lock().unwrap();
            let got: Vec<Value> = seen
                .messages
                .iter()
                .filter(|(k, _)| k == "turn_ended")
                .map(|(_, d)| d.clone())
                .collect();
            check(!got.is_empty(), format!("{:?}", seen.messages)).map(|()| got)
        })
        .await;
        assert_eq!(got, [json!({"round": 2})]);
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(29),
        "the 30 s timer fired after {elapsed:?}"
    );
    for client in [&alice, &bob] {
        let shared = client
            .shared_until("round 2", |s| s["round"] == json!(2))
            .await;
        assert_eq!(shared["phase"], json!("waiting"));
    }
}
