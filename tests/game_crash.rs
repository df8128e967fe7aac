//! Game rooms across `kill -9` of the real `weft` binary: every action whose `action_result` a
//! client received is in the state after the restart, no version ever names two different
//! states, and a turn timer pending at the crash still fires.
//!
//! Each test runs the binary on one data directory for ten rounds. In a round, six players of one
//! `battle` room send actions as fast as their results come back (a few in flight): `MOVE` with a
//! strictly increasing `x`, now and then `NEXT_ROUND` (the shared `round` plus one),
//! `CRITICAL_UPDATE` (a score of the player's own in the shared state) and `ATTACK` (another
//! player's `hp` minus 10). The process is killed at a random moment, restarted on the same
//! directory, and the players reconnect; each one's `sync` must hold every action it was acked,
//! and versions at least those any client saw. Every state a client held (from `sync` and
//! deltas, applied as the SDKs do) is recorded under its version: one version naming two states
//! is a failure. In every other round a fresh `tictactoe` room gets a 2-3 s turn timer re-armed
//! by an acked `MOVE` just before the kill; after the restart the move must be on the board and
//! the timer must fire (the player to move loses). One round plays past the `battle` room's 30 s
//! `stateSaveInterval`, so that its log is folded into a snapshot before the kill.
//!
//! The seed is printed; `WEFT_GAME_CRASH_SEED=N` replays its choices (not the timing). The server
//! log (stderr) of every incarnation goes to one file whose tail is part of any failure.

mod common;
#[path = "common/crash_harness.rs"]
mod crash_harness;
#[path = "common/raw_http.rs"]
mod raw_http;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use weft::engine::tree::apply_delta;

use crash_harness::{runtime, serial, Harness, Rng, Weft};
use raw_http::metric;

/// The environment variable that replays a seed.
const SEED_VAR: &str = "WEFT_GAME_CRASH_SEED";
const ROUNDS: u32 = 10;
/// The round that plays past `battle`'s `stateSaveInterval` (30 s), so that the room folds its
/// log into a snapshot before the kill and the restart loads a snapshot and a log tail.
const LONG_ROUND: u32 = 6;
const PLAYERS: usize = 6;
/// The `battle` room the players share.
const BATTLE: &str = "crash";
/// Actions a player has in flight at once.
const WINDOW: usize = 3;
/// The least time between two actions of a player: `battle` allows 20 per second and connection.
const PACE: Duration = Duration::from_millis(60);
/// How long a client waits for a frame that should come (the machine is small and busy).
const WAIT: Duration = Duration::from_secs(20);
/// How long after its deadline a turn timer may fire (a restart lies in between).
const TIMER_SLACK: Duration = Duration::from_secs(15);

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

// --- What clients saw -------------------------------------------------------------------------

/// Every state clients held, by the version it came with, across all incarnations.
#[derive(Default)]
struct Seen {
    /// (state, version) -> (the value, who saw it). A state is `<room> shared` or
    /// `<room> player <user>`.
    named: HashMap<(String, u64), (Value, String)>,
    /// The highest version of each state a client saw.
    highest: HashMap<String, u64>,
    /// States with a version that named two values (each is reported once).
    reused: HashSet<String>,
    /// Versions that named two states, and frames that broke the protocol.
    errors: Vec<String>,
}

type SharedSeen = Arc<Mutex<Seen>>;

fn lock(shared: &SharedSeen) -> MutexGuard<'_, Seen> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl Seen {
    fn record(&mut self, state: &str, version: u64, value: &Value, by: &str) {
        let highest = self.highest.entry(state.to_owned()).or_default();
        *highest = (*highest).max(version);
        match self.named.entry((state.to_owned(), version)) {
            Entry::Vacant(e) => {
                e.insert((value.clone(), by.to_owned()));
            }
            Entry::Occupied(e) if e.get().0 != *value => {
                if self.reused.insert(state.to_owned()) {
                    self.errors.push(format!(
                        "REUSED VERSION: {state} version {version} named {} (seen by {}) and {value} (seen by {by}) (later reuses of this state not listed)",
                        e.get().0,
                        e.get().1
                    ));
                }
            }
            Entry::Occupied(_) => {}
        }
    }
}

/// The highest version of each state clients saw, at one moment.
struct Versions(HashMap<String, u64>);

impl Versions {
    fn now(shared: &SharedSeen) -> Versions {
        Versions(lock(shared).highest.clone())
    }

    fn of(&self, state: &str) -> u64 {
        self.0.get(state).copied().unwrap_or(0)
    }
}

// --- A game client ----------------------------------------------------------------------------

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Why no frame came.
enum NoFrame {
    /// Nothing within the wait.
    Timeout,
    /// The connection ended (the server was killed).
    Gone,
}

/// One connection of a player to a room, holding the state it was sent the way the SDKs do.
struct Conn {
    ws: Ws,
    /// `namespace/id`.
    room: String,
    user: String,
    /// The user and the server start it talks to, for messages.
    who: String,
    shared: Value,
    shared_version: u64,
    player: Value,
    seen: SharedSeen,
}

impl Conn {
    /// Connects as `user` (`--auth none`: the token is the user id) and joins with `options`;
    /// returns the connection and its `sync`.
    async fn join(
        server: &Weft,
        start: u32,
        (namespace, id): (&str, &str),
        user: &str,
        options: Value,
        seen: &SharedSeen,
    ) -> Result<(Conn, Value), String> {
        let who = format!("{user} (start #{start})");
        let url = format!(
            "ws://{}/api/room?namespace={namespace}&id={id}",
            server.addr
        );
        let (ws, _) = match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(&url)).await
        {
            Ok(Ok(connected)) => connected,
            Ok(Err(e)) => return Err(format!("{who}: cannot connect to {url}: {e}")),
            Err(_) => return Err(format!("{who}: no handshake with {url} within {WAIT:?}")),
        };
        let mut conn = Conn {
            ws,
            room: format!("{namespace}/{id}"),
            user: user.to_owned(),
            who,
            shared: json!({}),
            shared_version: 0,
            player: json!({}),
            seen: seen.clone(),
        };
        conn.send(json!({"type": "auth", "token": user})).await?;
        let auth = conn.expect("auth_success").await?;
        conn.send(json!({"type": "join", "options": options}))
            .await
            .map_err(|_| format!("{}: the connection ended after {auth}", conn.who))?;
        let sync = conn.expect("sync").await?;
        Ok((conn, sync))
    }

    async fn send(&mut self, frame: Value) -> Result<(), String> {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .map_err(|e| format!("{}: sending {frame}: {e}", self.who))
    }

    /// The next frame of type `kind`; any `error` frame first fails.
    async fn expect(&mut self, kind: &str) -> Result<Value, String> {
        loop {
            let frame = match self.next(WAIT).await {
                Ok(frame) => frame,
                Err(NoFrame::Timeout) => {
                    return Err(format!("{}: no `{kind}` within {WAIT:?}", self.who))
                }
                Err(NoFrame::Gone) => {
                    return Err(format!(
                        "{}: the connection ended before `{kind}`",
                        self.who
                    ))
                }
            };
            if frame["type"] == kind {
                return Ok(frame);
            }
            if frame["type"] == "error" {
                return Err(format!("{}: {frame} instead of `{kind}`", self.who));
            }
        }
    }

    /// The next frame within `wait`, applied to the state this client holds.
    async fn next(&mut self, wait: Duration) -> Result<Value, NoFrame> {
        loop {
            let text = match tokio::time::timeout(wait, self.ws.next()).await {
                Err(_) => return Err(NoFrame::Timeout),
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => {
                    return Err(NoFrame::Gone)
                }
                Ok(Some(Ok(_))) => continue,
            };
            match serde_json::from_str(&text) {
                Ok(frame) => {
                    self.apply(&frame);
                    return Ok(frame);
                }
                Err(e) => lock(&self.seen)
                    .errors
                    .push(format!("{}: a frame is not JSON ({e}): {text}", self.who)),
            }
        }
    }

    /// Applies `sync` and deltas, and records each state with its version.
    fn apply(&mut self, frame: &Value) {
        let shared = format!("{} shared", self.room);
        let player = format!("{} player {}", self.room, self.user);
        let kind = frame["type"].as_str().unwrap_or_default();
        let mut seen = lock(&self.seen);
        let version = |field: &str| frame[field].as_u64();
        let by = format!("{} in its {kind}", self.who);
        match (kind, version("version"), frame["delta"].as_object()) {
            ("sync", _, _) => {
                let (Some(shared_version), Some(player_version)) =
                    (version("sharedVersion"), version("playerVersion"))
                else {
                    seen.errors
                        .push(format!("{}: sync without versions: {frame}", self.who));
                    return;
                };
                self.shared = frame["sharedState"].clone();
                self.shared_version = shared_version;
                self.player = frame["playerState"].clone();
                seen.record(&shared, shared_version, &self.shared, &by);
                seen.record(&player, player_version, &self.player, &by);
            }
            ("shared_delta", Some(version), Some(delta)) => {
                apply_delta(&mut self.shared, delta);
                self.shared_version = version;
                seen.record(&shared, version, &self.shared, &by);
            }
            ("player_delta", Some(version), Some(delta)) => {
                apply_delta(&mut self.player, delta);
                seen.record(&player, version, &self.player, &by);
            }
            ("shared_delta" | "player_delta", _, _) => seen.errors.push(format!(
                "{}: a delta without version or delta: {frame}",
                self.who
            )),
            _ => {}
        }
    }

    /// Sends an action and waits for its answer: the result, or the `action_error` as an error.
    async fn act(&mut self, action: &str, payload: Value, id: &str) -> Result<Value, String> {
        let frame =
            json!({"type": "send", "actionType": action, "payload": payload, "requestId": id});
        self.send(frame).await?;
        loop {
            let Ok(frame) = self.next(WAIT).await else {
                return Err(format!(
                    "{}: no answer to {action} within {WAIT:?}",
                    self.who
                ));
            };
            if frame["requestId"] == id {
                return match frame["type"].as_str() {
                    Some("action_result") => Ok(frame),
                    _ => Err(format!("{}: {action} {payload} got {frame}", self.who)),
                };
            }
        }
    }
}

// --- The battle players -----------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Action {
    /// `MOVE {x, y}`: `y` is the round it was sent in.
    Move(u64),
    NextRound,
    /// `CRITICAL_UPDATE {"score_<user>": n}`.
    Critical(u64),
    /// `ATTACK {targetId}`: another player's `hp` minus 10 (down to 0).
    Attack(String),
}

/// A `battle` player and everything it was acked, across incarnations.
struct Bot {
    user: String,
    rng: Rng,
    /// `x` -> `y` of every MOVE sent.
    moves: HashMap<u64, u64>,
    next_x: u64,
    /// The highest `x` of an acked MOVE.
    acked_x: u64,
    /// NEXT_ROUNDs acked.
    acked_rounds: u64,
    /// ATTACKs acked, by target.
    acked_attacks: HashMap<String, u64>,
    next_score: u64,
    /// The highest score of an acked CRITICAL_UPDATE.
    acked_score: u64,
    /// Actions acked in the current round.
    acked: u64,
    /// `action_error` and `error` codes got in the current round.
    refused: HashMap<String, u64>,
}

impl Bot {
    fn new(user: String, seed: u64) -> Bot {
        Bot {
            user,
            rng: Rng::new(seed),
            moves: HashMap::new(),
            next_x: 1,
            acked_x: 0,
            acked_rounds: 0,
            acked_attacks: HashMap::new(),
            next_score: 1,
            acked_score: 0,
            acked: 0,
            refused: HashMap::new(),
        }
    }

    fn score_field(&self) -> String {
        format!("score_{}", self.user)
    }

    /// The next action: mostly MOVE, some NEXT_ROUND, a few CRITICAL_UPDATE (it saves the room
    /// before its result: kept rare, so that most kills follow actions acked without it).
    fn pick(&mut self, round: u32) -> (Action, &'static str, Value) {
        match self.rng.range(1, 40) {
            1 => {
                let n = self.next_score;
                self.next_score += 1;
                let payload = json!({ self.score_field(): n });
                (Action::Critical(n), "CRITICAL_UPDATE", payload)
            }
            2..=4 => (Action::NextRound, "NEXT_ROUND", json!({})),
            5 => {
                let others: Vec<String> = (0..PLAYERS)
                    .map(player_name)
                    .filter(|p| *p != self.user)
                    .collect();
                let target = self.rng.pick(&others).clone();
                let payload = json!({"targetId": target});
                (Action::Attack(target), "ATTACK", payload)
            }
            _ => {
                let x = self.next_x;
                self.next_x += 1;
                self.moves.insert(x, u64::from(round));
                (Action::Move(x), "MOVE", json!({"x": x, "y": round}))
            }
        }
    }

    fn acked(&mut self, action: Action) {
        self.acked += 1;
        match action {
            Action::Move(x) => self.acked_x = self.acked_x.max(x),
            Action::NextRound => self.acked_rounds += 1,
            Action::Critical(n) => self.acked_score = self.acked_score.max(n),
            Action::Attack(target) => *self.acked_attacks.entry(target).or_default() += 1,
        }
    }

    /// Sends actions as fast as results come back (`WINDOW` in flight, at most one per `PACE`)
    /// until the connection ends; returns itself, and an error if the server stopped answering.
    async fn play(mut self, mut conn: Conn, round: u32) -> (Bot, Option<String>) {
        self.acked = 0;
        self.refused.clear();
        let mut in_flight: HashMap<String, (Action, Instant)> = HashMap::new();
        let mut sent = 0u64;
        let mut next_send = Instant::now();
        loop {
            let now = Instant::now();
            if let Some((id, (_, at))) = in_flight.iter().min_by_key(|(_, (_, at))| *at) {
                if now.duration_since(*at) > WAIT {
                    let stalled = format!(
                        "{}: no answer to action {id} for {WAIT:?} ({} in flight)",
                        conn.who,
                        in_flight.len()
                    );
                    return (self, Some(stalled));
                }
            }
            if in_flight.len() < WINDOW && now >= next_send {
                let (action, kind, payload) = self.pick(round);
                sent += 1;
                let id = format!("r{round}-{sent}");
                let frame = json!({"type": "send", "actionType": kind, "payload": payload, "requestId": id});
                if conn.send(frame).await.is_err() {
                    return (self, None);
                }
                in_flight.insert(id, (action, now));
                next_send = now + PACE;
                continue;
            }
            let wait = if in_flight.len() < WINDOW {
                next_send.saturating_duration_since(now)
            } else {
                WAIT
            };
            let frame = match conn.next(wait).await {
                Ok(frame) => frame,
                Err(NoFrame::Timeout) => continue,
                Err(NoFrame::Gone) => return (self, None),
            };
            let id = frame["requestId"].as_str().unwrap_or_default();
            match frame["type"].as_str() {
                Some("action_result") => match in_flight.remove(id) {
                    Some((action, _)) => self.acked(action),
                    None => {
                        return (
                            self,
                            Some(format!(
                                "{}: a result of nothing in flight: {frame}",
                                conn.who
                            )),
                        )
                    }
                },
                Some("action_error") => {
                    in_flight.remove(id);
                    let code = frame["code"].as_str().unwrap_or("?").to_owned();
                    *self.refused.entry(code).or_default() += 1;
                }
                Some("error") => {
                    let code = format!("error {}", frame["code"].as_str().unwrap_or("?"));
                    *self.refused.entry(code).or_default() += 1;
                }
                _ => {}
            }
        }
    }

    /// What a reconnect's `sync` must hold: this player's last acked MOVE (or a later one it
    /// sent), its last acked score, every NEXT_ROUND and every ATTACK on it any player was acked,
    /// and versions at least those clients saw before the kill.
    fn check(&self, sync: &Value, before: &Versions, all: &AllAcked, kill: u32) -> Vec<String> {
        let mut errors = Vec::new();
        let user = &self.user;
        let position = &sync["playerState"]["position"];
        let (x, y) = (position["x"].as_u64(), position["y"].as_u64());
        let sent = x.and_then(|x| self.moves.get(&x)).copied();
        let initial = x == Some(0) && y == Some(0);
        if x.unwrap_or(0) < self.acked_x {
            errors.push(format!(
                "LOST after kill #{kill}: {user}'s acked MOVE x={} (and every later one): its position is {position}",
                self.acked_x
            ));
        } else if !(initial || (sent.is_some() && sent == y)) {
            errors.push(format!(
                "{user}'s position after kill #{kill} is {position}: never sent"
            ));
        }
        let score = sync["sharedState"][self.score_field()].as_u64();
        if self.acked_score > 0 && score.unwrap_or(0) < self.acked_score {
            errors.push(format!(
                "LOST after kill #{kill}: {user}'s acked CRITICAL_UPDATE {}={}: it is {score:?}",
                self.score_field(),
                self.acked_score
            ));
        }
        let round = sync["sharedState"]["round"].as_u64().unwrap_or(0);
        if round < all.rounds {
            errors.push(format!(
                "LOST after kill #{kill}: {} NEXT_ROUNDs were acked, but {user}'s sync says round {round}",
                all.rounds
            ));
        }
        let attacks = all.attacks.get(user).copied().unwrap_or(0);
        let hp = &sync["playerState"]["hp"];
        let most = 100u64.saturating_sub(10 * attacks);
        if hp.as_u64().is_none_or(|hp| hp > most) {
            errors.push(format!(
                "LOST after kill #{kill}: {attacks} ATTACKs on {user} were acked (hp at most {most}), but its hp is {hp}"
            ));
        }
        let room = format!("battle/{BATTLE}");
        for (state, field) in [
            (format!("{room} shared"), "sharedVersion"),
            (format!("{room} player {user}"), "playerVersion"),
        ] {
            let (had, has) = (before.of(&state), sync[field].as_u64().unwrap_or(0));
            if has < had {
                errors.push(format!(
                    "VERSION WENT BACK after kill #{kill}: {state} is at {has} in {user}'s sync, but a client saw {had}"
                ));
            }
        }
        errors
    }
}

/// What all players were acked that shows in the shared state or in others' player states.
struct AllAcked {
    rounds: u64,
    /// ATTACKs by target.
    attacks: HashMap<String, u64>,
}

impl AllAcked {
    fn of(bots: &[Bot]) -> AllAcked {
        let mut attacks: HashMap<String, u64> = HashMap::new();
        for (target, n) in bots.iter().flat_map(|b| &b.acked_attacks) {
            *attacks.entry(target.clone()).or_default() += n;
        }
        AllAcked {
            rounds: bots.iter().map(|b| b.acked_rounds).sum(),
            attacks,
        }
    }
}

fn player_name(i: usize) -> String {
    format!("p{i}")
}

// --- The turn timer ---------------------------------------------------------------------------

/// A `tictactoe` game whose turn timer was pending when the server was killed.
struct PendingTimer {
    room: String,
    x: String,
    o: String,
    /// The cell of X's acked MOVE; O is to move and loses when the timer fires.
    cell: usize,
    /// The deadline in Unix milliseconds.
    deadline: u64,
}

/// Two players start a `tictactoe` game with `secs`-second turns, X makes an acked MOVE (which
/// re-arms the timer); returns the game and the open connections (to be cut by the kill).
async fn arm_timer(
    server: &Weft,
    start: u32,
    round: u32,
    secs: u64,
    cell: usize,
    seen: &SharedSeen,
) -> Result<(PendingTimer, Vec<Conn>), String> {
    let room = format!("t{round}");
    let (x, o) = (format!("x{round}"), format!("o{round}"));
    let ttt = ("tictactoe", room.as_str());
    let (mut xc, _) =
        Conn::join(server, start, ttt, &x, json!({"turnSeconds": secs}), seen).await?;
    let (oc, _) = Conn::join(server, start, ttt, &o, Value::Null, seen).await?;
    let started = xc.expect("message").await?;
    if started["messageType"] != "game_started" || xc.shared["turn"] != "X" {
        return Err(format!(
            "{room}: expected X to start: {started}, state {}",
            xc.shared
        ));
    }
    xc.act("MOVE", json!({"cell": cell}), "move").await?;
    let deadline = xc.shared["turnDeadline"]
        .as_u64()
        .ok_or_else(|| format!("{room}: no turnDeadline after X's move: {}", xc.shared))?;
    let timer = PendingTimer {
        room: format!("tictactoe/{room}"),
        x,
        o,
        cell,
        deadline,
    };
    Ok((timer, vec![xc, oc]))
}

/// After the restart X reconnects: its move is on the board, and the timer has fired or fires
/// (O, to move, loses: `turn_timeout`) by its deadline plus [`TIMER_SLACK`].
async fn check_timer(
    server: &Weft,
    start: u32,
    timer: &PendingTimer,
    before: &Versions,
    seen: &SharedSeen,
) -> Vec<String> {
    let id = timer.room.trim_start_matches("tictactoe/");
    let (mut xc, sync) = match Conn::join(
        server,
        start,
        ("tictactoe", id),
        &timer.x,
        Value::Null,
        seen,
    )
    .await
    {
        Ok(joined) => joined,
        Err(e) => return vec![e],
    };
    let kill = start - 1;
    let room = &timer.room;
    let state = &sync["sharedState"];
    let mut errors = Vec::new();
    if state["board"][timer.cell] != "X" {
        errors.push(format!(
            "LOST after kill #{kill}: {room}: X's acked MOVE on cell {}: the state is {state}",
            timer.cell
        ));
    }
    let shared = format!("{room} shared");
    let (had, has) = (before.of(&shared), xc.shared_version);
    if has < had {
        errors.push(format!(
            "VERSION WENT BACK after kill #{kill}: {shared} is at {has}, but a client saw {had}"
        ));
    }
    let fired = json!({"mark": "O", "userId": timer.o, "winner": "X"});
    match state["phase"].as_str() {
        Some("finished") => {}
        Some("playing") if state["turn"] == "O" => {
            let limit =
                Duration::from_millis(timer.deadline.saturating_sub(unix_ms())) + TIMER_SLACK;
            let until = Instant::now() + limit;
            loop {
                let left = until.saturating_duration_since(Instant::now());
                match xc.next(left).await {
                    Ok(frame) if frame["messageType"] == "turn_timeout" => {
                        if frame["data"] != fired {
                            errors.push(format!("{room}: {frame}, expected data {fired}"));
                        }
                        break;
                    }
                    Ok(_) => continue,
                    Err(_) => {
                        errors.push(format!(
                            "TIMER LOST after kill #{kill}: {room}: the turn timer due at {} (Unix ms) did not fire within {limit:?} of the reconnect",
                            timer.deadline
                        ));
                        return errors;
                    }
                }
            }
        }
        _ => {
            errors.push(format!(
                "TIMER LOST after kill #{kill}: {room}: the game left with O to move and its turn timer pending is not there: {state}"
            ));
            return errors;
        }
    }
    let end = (
        &xc.shared["phase"],
        &xc.shared["winner"],
        &xc.shared["reason"],
    );
    if end != (&json!("finished"), &json!("X"), &json!("timeout")) {
        errors.push(format!(
            "{room}: after the turn timer the state is {}, not finished with X winning by timeout",
            xc.shared
        ));
    }
    errors
}

// --- The crash loop ---------------------------------------------------------------------------

/// The players reconnect one by one (at the first start: join) and each `sync` is checked
/// against what they were acked and the versions clients saw before (`before`).
fn reconnect(
    rt: &tokio::runtime::Runtime,
    server: &Weft,
    h: &Harness,
    bots: &[Bot],
    before: &Versions,
    seen: &SharedSeen,
) -> (Vec<Conn>, Vec<String>) {
    let all = AllAcked::of(bots);
    let mut conns = Vec::new();
    let mut errors = Vec::new();
    for bot in bots {
        let battle = ("battle", BATTLE);
        match rt.block_on(Conn::join(
            server,
            h.starts,
            battle,
            &bot.user,
            Value::Null,
            seen,
        )) {
            Ok((conn, sync)) => {
                errors.extend(bot.check(&sync, before, &all, h.starts - 1));
                conns.push(conn);
            }
            Err(e) => errors.push(e),
        }
    }
    errors.append(&mut lock(seen).errors);
    (conns, errors)
}

/// The flags of one start: `storage`, and a durability picked at random (both promise that a
/// `kill -9` loses no acked write).
fn server_flags(storage: &str, rng: &mut Rng) -> Vec<String> {
    let durability = *rng.pick(&["process-crash", "power-loss"]);
    [
        "--storage",
        storage,
        "--durability",
        durability,
        "--auth",
        "none",
    ]
    .map(String::from)
    .into()
}

fn game_crash(test: &'static str, storage: &str) {
    let _serial = serial();
    let mut h = Harness::new(test, SEED_VAR);
    let mut rng = Rng::new(h.seed);
    let rt = runtime();
    let seen: SharedSeen = Arc::default();
    let mut bots: Vec<Bot> = (0..PLAYERS)
        .map(|i| Bot::new(player_name(i), rng.next()))
        .collect();
    let mut pending: Option<PendingTimer> = None;
    let (mut timers, mut acked) = (0, 0);
    let mut server = h.start("127.0.0.1:0", &server_flags(storage, &mut rng));
    // Each pass: the players reconnect and are checked, they play while the pending timer (if
    // any) is checked, then the kill and the restart; the last pass only checks.
    for round in 1..=ROUNDS + 1 {
        let before = Versions::now(&seen);
        let (conns, errors) = reconnect(&rt, &server, &h, &bots, &before, &seen);
        if !errors.is_empty() {
            h.fail(&errors);
        }
        let playing = Instant::now();
        let players: Vec<_> = if round <= ROUNDS {
            let playing = bots.drain(..).zip(conns);
            playing
                .map(|(bot, conn)| rt.spawn(bot.play(conn, round)))
                .collect()
        } else {
            Vec::new()
        };
        if let Some(timer) = pending.take() {
            let errors = rt.block_on(check_timer(&server, h.starts, &timer, &before, &seen));
            if !errors.is_empty() {
                h.fail(&errors);
            }
            timers += 1;
        }
        if round > ROUNDS {
            break;
        }
        let play_ms = match round {
            LONG_ROUND => rng.range(30_500, 33_000),
            _ => rng.range(200, 1500),
        };
        std::thread::sleep(Duration::from_millis(play_ms).saturating_sub(playing.elapsed()));
        let mut cut = Vec::new();
        if round % 2 == 1 {
            let (secs, cell) = (rng.range(2, 3), rng.range(0, 8) as usize);
            let armed = rt.block_on(arm_timer(&server, h.starts, round, secs, cell, &seen));
            let (timer, conns) = armed.unwrap_or_else(|e| h.fail(&[e]));
            pending = Some(timer);
            cut = conns;
        }
        let played = playing.elapsed();
        let addr = server.addr.parse().expect("weft prints IP:PORT");
        let folds = rt.block_on(metric(addr, "weft_snapshots_saved", WAIT));
        let killed_at = unix_ms();
        server.kill9().unwrap_or_else(|e| h.fail(&[e]));
        drop(cut);
        let mut errors = Vec::new();
        let mut refused: HashMap<String, u64> = HashMap::new();
        for player in players {
            match rt.block_on(async { tokio::time::timeout(WAIT * 2, player).await }) {
                Ok(Ok((bot, error))) => {
                    errors.extend(error);
                    for (code, n) in &bot.refused {
                        *refused.entry(code.clone()).or_default() += n;
                    }
                    bots.push(bot);
                }
                _ => h.fail(&[format!(
                    "round {round}: a player did not end after the kill"
                )]),
            }
        }
        let this_round: u64 = bots.iter().map(|b| b.acked).sum();
        if this_round == 0 {
            errors.push(format!(
                "round {round}: no action was acked in {played:?} of play"
            ));
        }
        errors.append(&mut lock(&seen).errors);
        if !errors.is_empty() {
            h.fail(&errors);
        }
        acked += this_round;
        let timer = match &pending {
            Some(t) => format!(
                ", a turn timer due {} ms after the kill",
                t.deadline as i64 - killed_at as i64
            ),
            None => String::new(),
        };
        eprintln!(
            "{test}: round {round}: kill -9 after {} ms of play ({folds} snapshots saved): {this_round} actions acked, refused {refused:?}{timer}",
            played.as_millis(),
        );
        server = h.start("127.0.0.1:0", &server_flags(storage, &mut rng));
    }
    let versions = lock(&seen).named.len();
    eprintln!(
        "{test}: {ROUNDS} kills, {acked} actions acked and found after each restart, {versions} (state, version) pairs seen without reuse, {timers} turn timers fired after a restart"
    );
}

/// `kill -9` at random moments while 6 players act in a `battle` room (RocksDB): after each of
/// 10 restarts every acked action is in the state, no version names two states or goes back
/// below what a client saw, and a `tictactoe` turn timer pending at the kill fires.
#[test]
fn kill_9_loses_no_acked_game_action_rocksdb() {
    game_crash("kill_9_loses_no_acked_game_action_rocksdb", "rocksdb");
}

/// The game crash loop on file storage (`<roomId>.json` and its log): the same promises.
#[test]
fn kill_9_loses_no_acked_game_action_file() {
    game_crash("kill_9_loses_no_acked_game_action_file", "file");
}
