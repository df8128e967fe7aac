//! The `game` scenario: the EdgeBase Rooms protocol against weft's shipped `battle` namespace.
//!
//! `rooms x players` clients authenticate (the server must accept any token: `--auth none` and no
//! EdgeBase secret, so the token is the user id), join, then each sends actions at a fixed
//! offered rate (open loop), one of ([`GameAction`]):
//! - `ATTACK` on the next player of its room: a `player_attacked` message to the 9 others and the
//!   `action_result`; the target's `hp` drops by 10 (a `player_delta` to it and a log entry) until
//!   it is 0, which takes 10 attacks (2 s at 5 actions/s per player): after that an attack
//!   changes no state.
//! - `NEXT_ROUND`: the shared state's `round` steps and the turn timer is set again, every time:
//!   a log entry, a `shared_delta` to all 10 players and the `action_result` (the game's
//!   counterpart of a canvas patch: a stored write shown to the 9 peers).
//!
//! Measured: action latency (send -> `action_result` on the sender) and, for `ATTACK`, broadcast
//! latency (send -> the `player_attacked` message at every other player; a sender's messages
//! arrive in order, so a peer matches the n-th message of an attacker with that attacker's n-th
//! send). A `shared_delta` names no sender, so `NEXT_ROUND` counts its broadcasts only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::Message;

use crate::client;
use crate::scenarios::Target;
use crate::stats::{self, Latency};

/// The action every player sends (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GameAction {
    Attack,
    NextRound,
}

impl GameAction {
    fn name(self) -> &'static str {
        match self {
            GameAction::Attack => "ATTACK",
            GameAction::NextRound => "NEXT_ROUND",
        }
    }
}

/// What the scenario is asked to do.
pub struct GameSpec {
    pub action: GameAction,
    pub rooms: usize,
    pub players: usize,
    /// Actions per second, all players together.
    pub rate: f64,
    pub warmup: Duration,
    pub duration: Duration,
    pub drain: Duration,
}

#[derive(Default)]
struct Totals {
    actions: Latency,
    broadcasts: Latency,
    /// `shared_delta` frames received (the broadcasts of `NEXT_ROUND`).
    shared_deltas: u64,
    errors: HashMap<String, u64>,
    failed_connects: u64,
}

struct Shared {
    spec: GameSpec,
    stop: AtomicBool,
    /// Send times of every attacker's actions, in order; `None` for warm-up sends.
    sends: Mutex<HashMap<String, Vec<Option<Instant>>>>,
    sent: AtomicU64,
    totals: Mutex<Totals>,
    ready: Barrier,
    /// When sending starts, the same instant for every player (the first to pass the barrier
    /// sets it), so that their phases hold exactly as in the editing scenarios.
    start: OnceLock<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub async fn game(target: &Target, spec: GameSpec) -> Value {
    let clients = spec.rooms * spec.players;
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        sends: Mutex::new(HashMap::new()),
        sent: AtomicU64::new(0),
        totals: Mutex::new(Totals::default()),
        ready: Barrier::new(clients + 1),
        start: OnceLock::new(),
        spec,
    });
    let mut tasks = Vec::new();
    for room in 0..shared.spec.rooms {
        for index in 0..shared.spec.players {
            let (shared, target) = (shared.clone(), target.clone());
            tasks.push(tokio::spawn(async move {
                player(&shared, &target, room, index).await
            }));
        }
    }
    shared.ready.wait().await;
    let measured_from = *shared.start.get_or_init(Instant::now) + shared.spec.warmup;
    // CPU over the measured window only, as the editing scenarios measure it (not the warm-up).
    tokio::time::sleep_until(measured_from.into()).await;
    let before = target.server_pid.and_then(stats::usage);
    let own_before = stats::own_usage();
    tokio::time::sleep_until((measured_from + shared.spec.duration).into()).await;
    let after = target.server_pid.and_then(stats::usage);
    let own_after = stats::own_usage();
    let seconds = measured_from.elapsed().as_secs_f64();
    shared.stop.store(true, Ordering::SeqCst);
    tokio::time::sleep(shared.spec.drain).await;
    for task in tasks {
        task.abort();
    }
    let totals = lock(&shared.totals);
    let window = shared.spec.duration.as_secs_f64();
    json!({
        "rooms": shared.spec.rooms,
        "clients_per_room": shared.spec.players,
        "namespace": "battle",
        "action": shared.spec.action.name(),
        "mode": "open",
        "offered_per_sec": shared.spec.rate,
        "seconds": window,
        "sent": shared.sent.load(Ordering::Relaxed),
        "acked_per_sec": stats::num(totals.actions.count() as f64 / window),
        "ack_ms": totals.actions.summary(),
        "broadcast_ms": totals.broadcasts.summary(),
        "broadcasts_per_sec": stats::num(
            (totals.broadcasts.count() + totals.shared_deltas) as f64 / window
        ),
        "errors": totals.errors,
        "connect_errors": totals.failed_connects,
        "server": stats::cpu_between(before, after, seconds),
        "load_generator": stats::cpu_between(own_before, own_after, seconds),
    })
}

async fn player(shared: &Shared, target: &Target, room: usize, index: usize) {
    let spec = &shared.spec;
    let base = target.url.trim_end_matches('/');
    let url = format!(
        "{base}/api/room?namespace=battle&id={}-{room}",
        target.rooms
    );
    let me = format!("p{room}-{index}");
    let next = format!("p{room}-{}", (index + 1) % spec.players);
    let connected = async {
        // The canvas clients' socket: TCP_NODELAY (without it Nagle holds each small action
        // back for tens of milliseconds, and the server sees bursts instead of the offered
        // rate) and a 16 KiB read buffer (tungstenite's 128 KiB one is zeroed on every read).
        let mut ws = client::connect(url.as_str()).await.ok()?;
        ws.send(Message::text(
            json!({"type": "auth", "token": me}).to_string(),
        ))
        .await
        .ok()?;
        ws.send(Message::text(json!({"type": "join"}).to_string()))
            .await
            .ok()?;
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(text) = msg {
                if text.contains("\"type\":\"sync\"") {
                    return Some(ws);
                }
                if text.contains("\"type\":\"error\"") {
                    return None;
                }
            }
        }
        None
    };
    let Some(ws) = connected.await else {
        lock(&shared.totals).failed_connects += 1;
        shared.ready.wait().await;
        return;
    };
    shared.ready.wait().await;
    let (mut sink, mut stream) = ws.split();
    let interval =
        Duration::from_secs_f64((spec.rooms * spec.players) as f64 / spec.rate.max(0.001));
    let start = *shared.start.get_or_init(Instant::now);
    let measured_from = start + spec.warmup;
    let writer = async {
        // Players are phased evenly over one interval so the offered load is smooth, in the
        // canvas scenarios' order (a room's players one after another, then the next room's),
        // so that a game action and a canvas patch meet the same arrival pattern.
        let global = room * spec.players + index;
        let phase = interval.mul_f64(global as f64 / (spec.rooms * spec.players) as f64);
        let mut ticker = tokio::time::interval_at((start + phase).into(), interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut seq = 0u64;
        while !shared.stop.load(Ordering::Relaxed) {
            ticker.tick().await;
            let now = Instant::now();
            // The window is [from, from + duration), as in the editing scenarios.
            let measured = now >= measured_from && now < measured_from + spec.duration;
            lock(&shared.sends)
                .entry(me.clone())
                .or_default()
                .push(measured.then_some(now));
            let payload = match spec.action {
                GameAction::Attack => json!({"targetId": next}),
                GameAction::NextRound => json!({}),
            };
            let frame = json!({"type": "send", "actionType": spec.action.name(),
                "payload": payload, "requestId": seq.to_string()});
            seq += 1;
            shared.sent.fetch_add(1, Ordering::Relaxed);
            if sink.send(Message::text(frame.to_string())).await.is_err() {
                return;
            }
        }
    };
    let reader = async {
        // Messages seen per attacker, to find the matching send.
        let mut seen: HashMap<String, usize> = HashMap::new();
        while let Some(Ok(msg)) = stream.next().await {
            let Message::Text(text) = msg else { continue };
            let now = Instant::now();
            let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            match frame["type"].as_str() {
                Some("action_result") => {
                    let seq: usize = frame["requestId"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(usize::MAX);
                    let sent = lock(&shared.sends)
                        .get(&me)
                        .and_then(|v| v.get(seq).copied().flatten());
                    if let Some(sent) = sent {
                        lock(&shared.totals).actions.record(now - sent);
                    }
                }
                Some("action_error") => {
                    let code = frame["code"].as_str().unwrap_or("?").to_owned();
                    *lock(&shared.totals).errors.entry(code).or_default() += 1;
                }
                Some("shared_delta") if measuring(&shared.sends, &me) => {
                    lock(&shared.totals).shared_deltas += 1;
                }
                Some("message") if frame["messageType"] == "player_attacked" => {
                    let attacker = frame["data"]["attacker"].as_str().unwrap_or("").to_owned();
                    let n = seen.entry(attacker.clone()).or_default();
                    let sent = lock(&shared.sends)
                        .get(&attacker)
                        .and_then(|v| v.get(*n).copied().flatten());
                    *n += 1;
                    if let Some(sent) = sent {
                        lock(&shared.totals).broadcasts.record(now - sent);
                    }
                }
                _ => {}
            }
        }
    };
    tokio::join!(writer, reader);
}

/// Whether the measured window has begun for this player's sends (its last send was measured).
fn measuring(sends: &Mutex<HashMap<String, Vec<Option<Instant>>>>, me: &str) -> bool {
    lock(sends)
        .get(me)
        .and_then(|v| v.last().copied().flatten())
        .is_some()
}
