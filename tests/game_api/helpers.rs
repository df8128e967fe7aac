//! An in-process server with test namespaces, raw WebSocket clients that speak the EdgeBase Rooms
//! v2 protocol frame by frame, and plain HTTP.
//!
//! Every frame a client receives is validated against its JSON Schema in `schemas/game/`, so the
//! schemas are checked against what the server really sends, in every test.
//!
//! The server's connections run on actix worker threads that keep real time, so nothing here
//! pauses tokio time: every wait is bounded by [`WAIT`], and tests wait for events (a frame, a
//! hook call) rather than sleeping where they can.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use jsonschema::{Registry, Validator};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use weft::app::{ServerBuilder, ShutdownHandle};
use weft::config::Settings;
use weft::ids::{RecordKey, RoomId};
use weft::protocols::game::{
    GameRooms, HandlerError, HandlerResult, NamespaceOptions, RoomBuilder, RoomContext, RoomLogic,
    Sender,
};
use weft::rooms::RoomManager;
use weft::storage::StorageKind;

#[path = "../common/raw_http.rs"]
mod raw_http;

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);

/// How long a test listens to conclude that nothing more comes.
pub const QUIET: Duration = Duration::from_millis(250);

/// The reconnect grace period of the test namespaces.
pub const GRACE: Duration = Duration::from_millis(2000);

/// The handler timeout of the `slow` namespace.
pub const HANDLER_TIMEOUT: Duration = Duration::from_millis(300);

/// The EdgeBase secret of [`secret_settings`].
pub const SECRET: &str = "weft-test-edgebase-secret";

// --- Hooks ------------------------------------------------------------------------------------

/// Every hook call of a server's rooms, in order: `"<room> create"`, `"<room> join <user>"`,
/// `"<room> leave <user> <reason>"`, `"<room> destroy"`, `"<room> timer <name>"`.
#[derive(Clone, Default)]
pub struct Hooks(Arc<Mutex<Vec<String>>>);

impl Hooks {
    fn push(&self, room: &RoomContext, what: String) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{} {what}", room.room_id()));
    }

    /// The calls of one room, without the room id.
    pub fn of(&self, room: &str) -> Vec<String> {
        let prefix = format!("{room} ");
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|h| h.strip_prefix(&prefix).map(str::to_owned))
            .collect()
    }

    /// Waits until the room's calls include `call`.
    pub async fn wait_for(&self, room: &str, call: &str) {
        eventually(
            &format!("{room}: hook `{call}` in {:?}", self.of(room)),
            || {
                let seen = self.of(room).iter().any(|h| h == call);
                async move { seen }
            },
        )
        .await;
    }
}

// --- The test namespaces ----------------------------------------------------------------------

fn users(state: &Value) -> Vec<Value> {
    state["players"].as_array().cloned().unwrap_or_default()
}

fn text(payload: &Value, key: &str) -> HandlerResult<String> {
    payload[key]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| HandlerError::new(format!("payload needs a string {key}")))
}

/// `value` := itself wrapped in `levels` objects `{"inner": ...}`.
fn wrap(value: &mut Value, levels: u64) {
    for _ in 0..levels {
        *value = json!({"inner": value.take()});
    }
}

/// The logic of most test namespaces. Shared state starts as `{"players": []}`; each joiner is
/// appended (and removed on leave) and gets player state `{"hp": 100}`. Join options
/// `{"deny": MSG}` refuse the join with MSG; `{"greet": true}` makes `on_join` send a `welcome`
/// message to everyone after its changes. Actions:
/// - `REPLACE` / `MERGE`: shared state := payload / top-level members of payload merged in;
/// - `PLAYER`: the sender's player state := payload; `PLAYER_OF {userId, state}`: another's;
/// - `SERVER`: server-only state := payload;
/// - `ECHO` returns the payload; `WHOAMI` the sender; `FAIL {message}` fails with it;
/// - `MSG {type, data?, exclude?}`, `MSG_TO {userId, type, data?}`, `MERGE_THEN_MSG`;
/// - `KICK {userId}`, `META` (metadata := payload), `LOCK`, `UNLOCK`, `PRIVATE`;
/// - `GROW {key, size}`: shared[key] := a string of `size` bytes;
/// - `TIMER {name, ms, data}`: a named timer whose handler sets shared.ticked := data;
/// - `WRAP {levels}` / `WRAP_SERVER {levels}`: the shared / server-only state := itself wrapped
///   in `levels` objects `{"inner": ...}` (a handler that nests what it stores).
pub fn arena(hooks: &Hooks) -> RoomBuilder {
    let (h1, h2, h3, h4, h5) = (
        hooks.clone(),
        hooks.clone(),
        hooks.clone(),
        hooks.clone(),
        hooks.clone(),
    );
    RoomBuilder::new()
        .on_create(move |room, _options| {
            h1.push(room, "create".into());
            room.set_shared(|s| *s = json!({"players": []}))?;
            Ok(())
        })
        .on_join(move |room, sender, options| {
            if let Some(message) = options["deny"].as_str() {
                h2.push(room, format!("deny {}", sender.user_id));
                return Err(HandlerError::new(message));
            }
            h2.push(room, format!("join {}", sender.user_id));
            let id = sender.user_id.clone();
            room.set_shared(|s| {
                let mut players = users(s);
                players.push(json!(id));
                s["players"] = Value::Array(players);
            })?;
            room.set_player(&sender.user_id, |p| *p = json!({"hp": 100}))?;
            if options["greet"] == json!(true) {
                room.send_message("welcome", json!({"user": sender.user_id}), &[]);
            }
            Ok(())
        })
        .on_leave(move |room, sender, reason| {
            h3.push(
                room,
                format!("leave {} {}", sender.user_id, reason.as_str()),
            );
            let id = json!(sender.user_id);
            room.set_shared(|s| {
                let players: Vec<Value> = users(s).into_iter().filter(|p| *p != id).collect();
                s["players"] = Value::Array(players);
            })?;
            Ok(())
        })
        .on_destroy(move |room| {
            h4.push(room, "destroy".into());
            Ok(())
        })
        .on_timer("tick", move |room, data| {
            h5.push(room, "timer tick".into());
            room.set_shared(|s| s["ticked"] = data)?;
            Ok(())
        })
        .on_action("REPLACE", |room, _, payload| {
            room.set_shared(|s| *s = payload)?;
            Ok(Value::Null)
        })
        .on_action("MERGE", |room, _, payload| {
            let Value::Object(fields) = payload else {
                return Err("MERGE needs an object".into());
            };
            room.set_shared(|s| {
                if let Value::Object(state) = s {
                    state.extend(fields);
                }
            })?;
            Ok(Value::Null)
        })
        .on_action("PLAYER", |room, sender, payload| {
            room.set_player(&sender.user_id, |p| *p = payload)?;
            Ok(Value::Null)
        })
        .on_action("PLAYER_OF", |room, _, payload| {
            let user = text(&payload, "userId")?;
            let state = payload["state"].clone();
            room.set_player(&user, |p| *p = state)?;
            Ok(Value::Null)
        })
        .on_action("SERVER", |room, _, payload| {
            room.set_server_state(|s| *s = payload)?;
            Ok(Value::Null)
        })
        .on_action("WRAP", |room, _, payload| {
            let levels = payload["levels"].as_u64().unwrap_or(1);
            room.set_shared(|s| wrap(s, levels))?;
            Ok(Value::Null)
        })
        .on_action("WRAP_SERVER", |room, _, payload| {
            let levels = payload["levels"].as_u64().unwrap_or(1);
            room.set_server_state(|s| wrap(s, levels))?;
            Ok(Value::Null)
        })
        .on_action("ECHO", |_, _, payload| Ok(payload))
        .on_action("WHOAMI", |_, sender, _| {
            Ok(json!({
                "userId": sender.user_id,
                "connectionId": sender.connection_id,
                "role": sender.role,
            }))
        })
        .on_action("FAIL", |_, _, payload| {
            Err(HandlerError::new(text(&payload, "message")?))
        })
        .on_action("MSG", |room, _, payload| {
            let kind = text(&payload, "type")?;
            let exclude: Vec<String> = payload["exclude"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect();
            let exclude: Vec<&str> = exclude.iter().map(String::as_str).collect();
            let data = payload.get("data").cloned().unwrap_or(Value::Null);
            room.send_message(&kind, data, &exclude);
            Ok(Value::Null)
        })
        .on_action("MSG_TO", |room, _, payload| {
            let (user, kind) = (text(&payload, "userId")?, text(&payload, "type")?);
            let data = payload.get("data").cloned().unwrap_or(Value::Null);
            room.send_message_to(&user, &kind, data);
            Ok(Value::Null)
        })
        .on_action("MERGE_THEN_MSG", |room, _, payload| {
            room.set_shared(|s| s["before"] = payload.clone())?;
            room.send_message("after", payload.clone(), &[]);
            room.set_shared(|s| s["later"] = payload)?;
            Ok(Value::Null)
        })
        .on_action("KICK", |room, _, payload| {
            room.kick(&text(&payload, "userId")?);
            Ok(Value::Null)
        })
        .on_action("ELAPSED", |room, _, _| {
            Ok(json!(room.elapsed().as_millis() as u64))
        })
        .on_action("META", |room, _, payload| {
            room.set_metadata(payload)?;
            Ok(Value::Null)
        })
        .on_action("LOCK", |room, _, _| {
            room.lock();
            Ok(Value::Null)
        })
        .on_action("UNLOCK", |room, _, _| {
            room.unlock();
            Ok(Value::Null)
        })
        .on_action("PRIVATE", |room, _, _| {
            room.set_private(true);
            Ok(Value::Null)
        })
        .on_action("GROW", |room, _, payload| {
            let key = text(&payload, "key")?;
            let size = payload["size"].as_u64().unwrap_or(0) as usize;
            room.set_shared(|s| s[key.as_str()] = json!("x".repeat(size)))?;
            Ok(json!(room.state_size()))
        })
        .on_action("TIMER", |room, _, payload| {
            let name = text(&payload, "name")?;
            let ms = payload["ms"].as_u64().unwrap_or(0);
            room.set_timer(&name, Duration::from_millis(ms), payload["data"].clone())?;
            Ok(Value::Null)
        })
}

/// A gate a handler can wait at, holding its thread, until the test opens it.
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    /// Blocks the calling thread until the gate is open (at most 10 s: a bound for a failed test).
    fn pass(&self) {
        let (open, changed) = &*self.0;
        let open = open.lock().unwrap_or_else(|e| e.into_inner());
        let _ = changed.wait_timeout_while(open, Duration::from_secs(10), |open| !*open);
    }

    pub fn open(&self) {
        let (open, changed) = &*self.0;
        *open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        changed.notify_all();
    }
}

/// The `slow` namespace: `SLEEP {ms}` awaits that long (past the handler timeout), `BLOCK` holds
/// its thread (never yields) until the server's [`Gate`] opens, `FAST` answers at once.
struct Slow {
    gate: Gate,
}

#[async_trait]
impl RoomLogic for Slow {
    async fn on_action(
        &mut self,
        _room: &mut RoomContext,
        _sender: &Sender,
        action: &str,
        payload: Value,
    ) -> HandlerResult<Value> {
        match action {
            "SLEEP" => {
                let ms = payload["ms"].as_u64().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(json!({"slept": ms}))
            }
            "BLOCK" => {
                self.gate.pass();
                Ok(json!("unblocked"))
            }
            "FAST" => Ok(json!("fast")),
            other => Err(HandlerError::no_handler(other)),
        }
    }
}

/// Options of the test namespaces: the defaults with a short reconnect grace period.
fn base() -> NamespaceOptions {
    NamespaceOptions {
        reconnect_timeout: GRACE,
        ..NamespaceOptions::default()
    }
}

/// Registers the test namespaces:
/// - `arena`: [`arena`] with the default options (grace [`GRACE`]);
/// - `duo`: `max_players: 2`; `limited`: `actions_per_second: 2`; `tiny`: `max_state_size: 1024`;
/// - `guarded`: the metadata endpoint needs a token; `shortttl`: `state_ttl` 300 ms;
/// - `slow`: `handler_timeout` [`HANDLER_TIMEOUT`]; its `BLOCK` action waits at `gate`.
fn with_namespaces(builder: ServerBuilder, hooks: &Hooks, gate: &Gate) -> ServerBuilder {
    let factory = || arena(hooks).into_factory();
    let list = [
        ("arena", base()),
        (
            "duo",
            NamespaceOptions {
                max_players: 2,
                ..base()
            },
        ),
        (
            "limited",
            NamespaceOptions {
                actions_per_second: 2,
                ..base()
            },
        ),
        (
            "tiny",
            NamespaceOptions {
                max_state_size: 1024,
                ..base()
            },
        ),
        (
            "guarded",
            NamespaceOptions {
                metadata_requires_auth: true,
                ..base()
            },
        ),
        (
            "shortttl",
            NamespaceOptions {
                state_ttl: Duration::from_millis(300),
                ..base()
            },
        ),
    ];
    let mut builder = builder;
    for (name, options) in list {
        builder = builder
            .namespace(name, options, factory())
            .expect("namespace registers");
    }
    builder
        .namespace(
            "slow",
            NamespaceOptions {
                handler_timeout: HANDLER_TIMEOUT,
                ..base()
            },
            {
                let gate = gate.clone();
                Arc::new(move || Box::new(Slow { gate: gate.clone() }) as Box<dyn RoomLogic>)
            },
        )
        .expect("namespace registers")
}

// --- The server -------------------------------------------------------------------------------

/// Settings for tests: memory storage, any free port, `--auth none` (any token; the token is the
/// user id).
pub fn test_settings() -> Settings {
    Settings {
        addr: "127.0.0.1:0".parse().expect("addr"),
        storage: StorageKind::Memory,
        ..Settings::default()
    }
}

/// Test settings with the EdgeBase secret [`SECRET`]: tokens must be signed with it.
pub fn secret_settings() -> Settings {
    let mut settings = test_settings();
    settings.auth.edgebase_secret = Some(SECRET.into());
    settings
}

/// A running server.
pub struct GameApp {
    pub addr: std::net::SocketAddr,
    pub shutdown: ShutdownHandle,
    /// The server's one room manager (canvas and game rooms).
    pub manager: RoomManager,
    pub games: GameRooms,
    pub hooks: Hooks,
    /// Where the `slow` namespace's `BLOCK` action waits.
    pub gate: Gate,
    _server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl GameApp {
    pub async fn start() -> GameApp {
        GameApp::start_with(test_settings()).await
    }

    pub async fn start_with(settings: Settings) -> GameApp {
        GameApp::start_builder(ServerBuilder::new(settings)).await
    }

    /// A server on `storage` (a test double standing in for a backend).
    pub async fn start_on(storage: Arc<dyn weft::storage::Storage>) -> GameApp {
        GameApp::start_builder(ServerBuilder::new(test_settings()).storage(storage)).await
    }

    async fn start_builder(builder: ServerBuilder) -> GameApp {
        let (hooks, gate) = (Hooks::default(), Gate::default());
        let app = with_namespaces(builder, &hooks, &gate)
            .build()
            .expect("server builds");
        GameApp {
            addr: app.addr(),
            shutdown: app.shutdown_handle(),
            manager: app.manager(),
            games: app.games(),
            hooks,
            gate,
            _server: tokio::spawn(app.run()),
        }
    }

    pub fn url(&self, namespace: &str, id: &str) -> String {
        format!("ws://{}/api/room?namespace={namespace}&id={id}", self.addr)
    }

    /// Opens a WebSocket to a room (not authenticated yet).
    pub async fn connect(&self, namespace: &str, id: &str) -> GameClient {
        match self.try_connect(namespace, id).await {
            Ok(client) => client,
            Err((status, body)) => panic!("upgrade refused: {status} {body}"),
        }
    }

    /// Opens a WebSocket, or returns the HTTP refusal: its status and JSON body.
    pub async fn try_connect(&self, namespace: &str, id: &str) -> Result<GameClient, (u16, Value)> {
        connect_url(&self.url(namespace, id)).await
    }

    /// Connects and authenticates with `token`; returns the client and its `auth_success`.
    pub async fn authed(&self, namespace: &str, id: &str, token: &str) -> (GameClient, Value) {
        let mut c = self.connect(namespace, id).await;
        let success = c.auth(token).await;
        (c, success)
    }

    /// Connects as `user` (`--auth none`: the token is the user id), joins, returns the `sync`.
    pub async fn joined(&self, namespace: &str, id: &str, user: &str) -> (GameClient, Value) {
        let (mut c, _) = self.authed(namespace, id, user).await;
        let sync = c.join().await;
        (c, sync)
    }

    /// The key of a room of a namespace.
    pub fn key(namespace: &str, id: &str) -> RecordKey {
        RecordKey::new(
            RoomId::parse(namespace).expect("namespace"),
            RoomId::parse(id).expect("room id"),
        )
    }

    /// Whether the room is loaded.
    pub fn is_live(&self, namespace: &str, id: &str) -> bool {
        self.games.status(&GameApp::key(namespace, id)).is_some()
    }

    /// Waits until the live room counts `n` players with a joined connection (what the upgrade's
    /// ROOM_FULL check reads; the room updates it after the socket's close went out).
    pub async fn wait_connected(&self, namespace: &str, id: &str, n: usize) {
        let key = GameApp::key(namespace, id);
        eventually(
            &format!("{namespace}/{id} has {n} connected players"),
            || {
                let connected = self
                    .games
                    .status(&key)
                    .map(|s| s.connected.load(std::sync::atomic::Ordering::Relaxed));
                async move { connected == Some(n) }
            },
        )
        .await;
    }

    /// `GET path`: the status and the JSON body.
    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        self.http(&format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\n{auth}Connection: close\r\n\r\n",
            self.addr
        ))
        .await
    }

    /// `POST path` with a JSON body: the status and the JSON body.
    pub async fn post(&self, path: &str, body: &Value, token: Option<&str>) -> (u16, Value) {
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let body = body.to_string();
        self.http(&format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        ))
        .await
    }

    /// `POST /api/room/matchmake {"namespace": ns}` with a token.
    pub async fn matchmake(&self, namespace: &str) -> Value {
        let (status, body) = self
            .post(
                "/api/room/matchmake",
                &json!({"namespace": namespace}),
                Some("matcher"),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// The value of a metric at `GET /metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        raw_http::metric(self.addr, name, WAIT).await
    }

    async fn http(&self, request: &str) -> (u16, Value) {
        let (status, body) = raw_http::exchange(self.addr, request, WAIT).await;
        let json = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: body {body:?}"))
        };
        (status, json)
    }
}

/// Opens a WebSocket to a full `ws://` URL, or returns the HTTP refusal (status, JSON body).
pub async fn connect_url(url: &str) -> Result<GameClient, (u16, Value)> {
    let connected = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake within the wait");
    match connected {
        Ok((ws, _)) => Ok(GameClient { ws }),
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            Err((
                response.status().as_u16(),
                serde_json::from_slice(&body).unwrap_or(Value::Null),
            ))
        }
        Err(e) => panic!("websocket connect failed: {e}"),
    }
}

/// Calls `check` until it returns true; panics if it does not within [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// --- Tokens -----------------------------------------------------------------------------------

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// An HS256 JWT of `claims` signed with `secret`.
pub fn sign(claims: &Value, secret: &str) -> String {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token signs")
}

/// A valid EdgeBase access token for `user`, valid for an hour, with `extra` claims merged in.
pub fn access_token(user: &str, extra: Value) -> String {
    let now = now_secs();
    let mut claims = json!({
        "sub": user,
        "iss": "edgebase:user",
        "iat": now,
        "exp": now + 3600,
        "jti": uuid::Uuid::new_v4().to_string(),
    });
    if let (Value::Object(claims), Value::Object(extra)) = (&mut claims, extra) {
        claims.extend(extra);
    }
    sign(&claims, SECRET)
}

// --- Frame schemas ----------------------------------------------------------------------------

/// The validators of `schemas/game/`, by frame `type`.
struct FrameSchemas {
    by_type: BTreeMap<String, Validator>,
}

fn frame_schemas() -> &'static FrameSchemas {
    static SCHEMAS: OnceLock<FrameSchemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        const BASE: &str = "https://weft.invalid/schemas/game/";
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas/game");
        let mut docs = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("schemas/game exists") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .and_then(|f| f.to_str())
                .and_then(|f| f.strip_suffix(".schema.json"))
                .expect("a schema file")
                .to_owned();
            let doc: Value =
                serde_json::from_slice(&std::fs::read(&path).expect("readable")).expect("json");
            docs.push((name, doc));
        }
        let mut registry = Registry::new();
        for (name, doc) in &docs {
            registry = registry
                .add(format!("{BASE}{name}.schema.json"), doc.clone())
                .expect("schema registers");
        }
        let registry = registry.prepare().expect("registry resolves");
        let mut by_type = BTreeMap::new();
        for (name, _) in docs.iter().filter(|(n, _)| n != "common") {
            let validator = jsonschema::options()
                .offline()
                .with_registry(&registry)
                .build(&json!({"$ref": format!("{BASE}{name}.schema.json")}))
                .expect("validator builds");
            by_type.insert(name.replace('-', "_"), validator);
        }
        FrameSchemas { by_type }
    })
}

/// Panics unless `frame` is a server frame that validates against its schema.
pub fn check_server_frame(frame: &Value) {
    const SERVER: [&str; 11] = [
        "auth_success",
        "auth_refreshed",
        "sync",
        "shared_delta",
        "player_delta",
        "action_result",
        "action_error",
        "message",
        "kicked",
        "error",
        "pong",
    ];
    let kind = frame["type"].as_str().unwrap_or_default();
    assert!(SERVER.contains(&kind), "not a server frame type: {frame}");
    let validator = frame_schemas()
        .by_type
        .get(kind)
        .unwrap_or_else(|| panic!("no schema for {kind}"));
    if let Err(e) = validator.validate(frame) {
        panic!("server frame {frame} does not match its schema: {e}");
    }
}

// --- The client -------------------------------------------------------------------------------

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw game room client.
pub struct GameClient {
    pub ws: Ws,
}

/// A `send` frame.
pub fn send(action: &str, payload: Value, request_id: &str) -> Value {
    json!({"type": "send", "actionType": action, "payload": payload, "requestId": request_id})
}

impl GameClient {
    pub async fn send(&mut self, frame: Value) {
        self.send_message(Message::text(frame.to_string())).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_message(Message::text(text.to_owned())).await;
    }

    pub async fn send_message(&mut self, message: Message) {
        self.ws.send(message).await.expect("frame sent");
    }

    /// Sends `auth` and expects `auth_success` for that token; returns it.
    pub async fn auth(&mut self, token: &str) -> Value {
        self.send(json!({"type": "auth", "token": token})).await;
        let frame = self.recv().await;
        assert_eq!(frame["type"], "auth_success", "{frame}");
        frame
    }

    /// Sends `join` and returns the `sync` that answers it.
    pub async fn join(&mut self) -> Value {
        self.join_with(json!({"type": "join"})).await
    }

    pub async fn join_with(&mut self, frame: Value) -> Value {
        self.send(frame).await;
        let sync = self.recv().await;
        assert_eq!(sync["type"], "sync", "{sync}");
        sync
    }

    /// Sends an action and returns every frame up to and including its `action_result` or
    /// `action_error` (matched by `requestId`).
    pub async fn action(&mut self, action: &str, payload: Value, request_id: &str) -> Vec<Value> {
        self.send(send(action, payload, request_id)).await;
        self.until_answer(request_id).await
    }

    /// Frames up to and including the answer to `request_id`.
    pub async fn until_answer(&mut self, request_id: &str) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let frame = self.recv().await;
            let done = matches!(
                frame["type"].as_str(),
                Some("action_result" | "action_error")
            ) && frame["requestId"] == request_id;
            frames.push(frame);
            if done {
                return frames;
            }
        }
    }

    /// An action's answer, asserting nothing else came before it.
    pub async fn answer(&mut self, action: &str, payload: Value, request_id: &str) -> Value {
        let mut frames = self.action(action, payload, request_id).await;
        assert_eq!(frames.len(), 1, "frames before the answer: {frames:?}");
        frames.remove(0)
    }

    /// The next frame (validated against its schema); panics on timeout, close or non-text.
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame within the wait")
                .expect("connection open")
                .expect("no websocket error");
            match msg {
                Message::Text(text) => {
                    let frame: Value = serde_json::from_str(&text).expect("json frame");
                    check_server_frame(&frame);
                    return frame;
                }
                Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next frame, which must be of type `kind`.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        let frame = self.recv().await;
        assert_eq!(frame["type"], kind, "{frame}");
        frame
    }

    /// Every text frame until the server closes, and the close code and reason.
    pub async fn frames_until_close(&mut self) -> (Vec<Value>, (u16, String)) {
        let mut frames = Vec::new();
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("frames or a close within the wait");
            match msg {
                Some(Ok(Message::Text(text))) => {
                    let frame: Value = serde_json::from_str(&text).expect("json frame");
                    check_server_frame(&frame);
                    frames.push(frame);
                }
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (frames, (u16::from(frame.code), frame.reason.to_string()))
                }
                Some(Ok(Message::Close(None))) | None => return (frames, (1005, String::new())),
                Some(Ok(Message::Ping(_))) => panic!("the server sent a WebSocket Ping"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection error instead of a close: {e}"),
            }
        }
    }

    /// Waits for the close, asserting no frame comes before it.
    pub async fn closed(&mut self) -> (u16, String) {
        let (frames, close) = self.frames_until_close().await;
        assert!(frames.is_empty(), "frames before the close: {frames:?}");
        close
    }

    /// True if no frame arrives within `wait`.
    pub async fn silent_for(&mut self, wait: Duration) -> bool {
        match tokio::time::timeout(wait, self.ws.next()).await {
            Err(_) => true,
            Ok(other) => {
                eprintln!("not silent: {other:?}");
                false
            }
        }
    }

    /// Sends `ping` and expects `pong`: the socket is open and the session alive.
    pub async fn assert_alive(&mut self) {
        self.send(json!({"type": "ping"})).await;
        assert_eq!(self.recv().await, json!({"type": "pong"}));
    }

    /// Drops the connection the way a vanished client does: a close frame without `leave`.
    /// Returns once the server answered the close (the server closes the TCP connection about a
    /// second later, actix's client disconnect timeout; nothing here waits for that).
    pub async fn drop_connection(mut self) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(WAIT, async {
            while let Some(Ok(msg)) = self.ws.next().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}
