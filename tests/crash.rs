//! Durability of the real `weft` binary: once a client has its `ack`, no crash (`kill -9`),
//! restart or graceful shutdown loses that write.
//!
//! Each test runs the binary on one data directory, has raw WebSocket writers (or the npm client)
//! write while the process is killed or stopped, restarts it on the same directory and checks what
//! a fresh client sees. Every acknowledged write is recorded (key, value, ack timestamp); after a
//! restart every one of them must be back with its value, the room's clock must not have gone
//! backwards, and nothing may be duplicated, garbled or invented.
//!
//! Randomized tests print their seed; `WEFT_CRASH_SEED=N` replays one. The server's log (stderr)
//! of every incarnation goes to one file whose tail is part of any failure message. The tests run
//! one at a time: they measure recovery and drive timing-bounded clients on a small machine.

mod common;
#[path = "common/crash_harness.rs"]
mod crash_harness;
use common::{interop_dir, wait_with_deadline};
use crash_harness::{runtime, serial, Harness, Rng, Weft};

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio_tungstenite::tungstenite::Message;

/// The environment variable that replays a seed.
const SEED_VAR: &str = "WEFT_CRASH_SEED";

/// How long a client waits for a frame that should come (the machine is small and busy).
const WAIT: Duration = Duration::from_secs(20);

// --- Writers ----------------------------------------------------------------------------------

/// An acknowledged write.
#[derive(Debug, Clone)]
struct Acked {
    room: String,
    key: String,
    value: u64,
    message_id: String,
    timestamp: u64,
}

/// Everything written so far, across rounds.
#[derive(Default)]
struct Ledger {
    /// Every write sent: key -> (room, value). Sent but unacked writes may or may not survive.
    sent: HashMap<String, (String, u64)>,
    acked: Vec<Acked>,
    /// Writes other clients' broadcasts showed a writer (`message_id` names who saw it): a
    /// broadcast is a promise too, its write must survive like an acked one.
    seen: Vec<Acked>,
    /// Protocol violations the writers saw.
    errors: Vec<String>,
}

type Shared = Arc<Mutex<Ledger>>;

fn ledger(shared: &Shared) -> std::sync::MutexGuard<'_, Ledger> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// The value every write stores: `{"_exists":true,"v":seq}`.
fn record(value: u64) -> Value {
    json!({"_exists": true, "v": value})
}

/// How a writer's connection ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Ended {
    /// Could not connect or never got `synced` (the server went away first).
    NotConnected,
    /// A close frame with this code.
    Closed(Option<u16>),
    /// The connection broke without a close frame (the process was killed).
    Dropped,
    /// Wrote its limit and got every ack.
    Done,
    /// No frame within [`WAIT`] while writes were in flight.
    Stalled,
}

struct Writer {
    addr: String,
    room: String,
    client: String,
    /// `lastTimestamp` of its `reconnect`: a clock it saw before (a short reply).
    since: u64,
    /// Writes in flight at once.
    window: usize,
    /// Stop after this many writes (all acked); `None`: until the connection ends.
    limit: Option<u64>,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: &str, room: &str, client: &str) -> Option<Ws> {
    let url = format!("ws://{addr}/?roomId={room}&clientId={client}");
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await {
        Ok(Ok((ws, _))) => Some(ws),
        _ => None,
    }
}

/// The next frame: `Ok(text)`, or how the connection ended.
async fn next_text(ws: &mut Ws) -> Result<String, Ended> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Err(_) => return Err(Ended::Stalled),
            Ok(None) | Ok(Some(Err(_))) => return Err(Ended::Dropped),
            Ok(Some(Ok(Message::Text(text)))) => return Ok(text.to_string()),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return Err(Ended::Closed(frame.map(|f| u16::from(f.code))))
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

impl Writer {
    /// Writes unique keys `<client>-<seq>/K` -> `{"_exists":true,"v":seq}` as fast as acks come
    /// back, with `window` writes in flight, recording every send and every ack in the ledger.
    async fn run(self, shared: Shared) -> Ended {
        let Some(mut ws) = connect(&self.addr, &self.room, &self.client).await else {
            return Ended::NotConnected;
        };
        let hello = json!({"type": "reconnect", "lastTimestamp": self.since, "protocolVersion": 2});
        if ws.send(Message::text(hello.to_string())).await.is_err() {
            return Ended::NotConnected;
        }
        let violation = |e: String| ledger(&shared).errors.push(e);
        loop {
            match next_text(&mut ws).await {
                Ok(text)
                    if text.contains("\"synced\"")
                        && serde_json::from_str::<Value>(&text)
                            .is_ok_and(|frame| frame["type"] == "synced") =>
                {
                    break
                }
                Ok(text) if text.contains("\"resync\"") => violation(format!(
                    "{}: resync after reconnecting from clock {} (the server is behind a clock it sent): {text}",
                    self.client, self.since
                )),
                Ok(_) => {}
                Err(Ended::Stalled) => {
                    violation(format!("{}: no `synced` within {WAIT:?}", self.client));
                    return Ended::Stalled;
                }
                Err(_) => return Ended::NotConnected,
            }
        }
        let mut in_flight: VecDeque<(String, String, u64)> = VecDeque::new();
        let (mut seq, mut last_ack) = (0u64, 0u64);
        loop {
            while in_flight.len() < self.window && self.limit.is_none_or(|l| seq < l) {
                seq += 1;
                let key = format!("{}-{seq}/K", self.client);
                let message_id = format!("m{seq}");
                ledger(&shared)
                    .sent
                    .insert(key.clone(), (self.room.clone(), seq));
                let frame = json!({
                    "type": "patch",
                    "messageId": message_id,
                    "documentPatches": [{key.clone(): record(seq)}],
                });
                in_flight.push_back((message_id, key, seq));
                if ws.send(Message::text(frame.to_string())).await.is_err() {
                    return Ended::Dropped;
                }
            }
            if in_flight.is_empty() {
                let _ = ws.close(None).await;
                return Ended::Done;
            }
            let text = match next_text(&mut ws).await {
                Ok(text) => text,
                Err(Ended::Stalled) => {
                    violation(format!(
                        "{}: no frame for {WAIT:?} with {} write(s) in flight (first: {})",
                        self.client,
                        in_flight.len(),
                        in_flight[0].0
                    ));
                    return Ended::Stalled;
                }
                Err(end) => return end,
            };
            let frame: Value = match serde_json::from_str(&text) {
                Ok(frame) => frame,
                Err(e) => {
                    violation(format!("{}: frame is not JSON ({e}): {text}", self.client));
                    continue;
                }
            };
            match frame["type"].as_str() {
                Some("ack") => {
                    let (id, timestamp) =
                        (frame["messageId"].as_str(), frame["timestamp"].as_u64());
                    let Some((message_id, key, value)) = in_flight.pop_front() else {
                        violation(format!(
                            "{}: ack with nothing in flight: {text}",
                            self.client
                        ));
                        continue;
                    };
                    if id != Some(message_id.as_str()) {
                        violation(format!(
                            "{}: acks out of order: expected {message_id}, got {text}",
                            self.client
                        ));
                    }
                    let Some(timestamp) = timestamp else {
                        violation(format!("{}: ack without timestamp: {text}", self.client));
                        continue;
                    };
                    if timestamp <= last_ack {
                        violation(format!(
                            "{}: ack timestamp {timestamp} of {message_id} not above the previous ack's {last_ack}",
                            self.client
                        ));
                    }
                    last_ack = last_ack.max(timestamp);
                    ledger(&shared).acked.push(Acked {
                        room: self.room.clone(),
                        key,
                        value,
                        message_id,
                        timestamp,
                    });
                }
                Some("patch") if frame["clientId"] == self.client.as_str() => {
                    violation(format!("{}: own write echoed back: {text}", self.client));
                }
                Some("patch") => {
                    let (Some(timestamp), Some(patches)) = (
                        frame["timestamp"].as_u64(),
                        frame["documentPatches"].as_array(),
                    ) else {
                        continue;
                    };
                    let mut l = ledger(&shared);
                    for (key, value) in patches.iter().filter_map(Value::as_object).flatten() {
                        match l.sent.get(key) {
                            Some((room, v)) if *room == self.room && *value == record(*v) => {
                                let seen = Acked {
                                    room: self.room.clone(),
                                    key: key.clone(),
                                    value: *v,
                                    message_id: format!("broadcast to {}", self.client),
                                    timestamp,
                                };
                                l.seen.push(seen);
                            }
                            _ => l.errors.push(format!(
                                "{}: broadcast of a write never sent to this room: {key} = {value}",
                                self.client
                            )),
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

// --- Reading a room back ----------------------------------------------------------------------

/// What a fresh client gets for `reconnect` from `since`.
struct RoomView {
    /// The reply's document patches, merged.
    doc: Map<String, Value>,
    /// Keys as they occur in the raw reply (a key sent twice counts twice).
    key_occurrences: usize,
    /// The reply patch's `timestamp`, if a patch came.
    patch_timestamp: Option<u64>,
    synced: u64,
    reply_bytes: usize,
}

async fn read_room(addr: &str, room: &str, client: &str, since: u64) -> Result<RoomView, String> {
    let mut ws = connect(addr, room, client)
        .await
        .ok_or_else(|| format!("{client}: cannot connect to {addr} room {room}"))?;
    let hello = json!({"type": "reconnect", "lastTimestamp": since, "protocolVersion": 2});
    ws.send(Message::text(hello.to_string()))
        .await
        .map_err(|e| format!("{client}: sending reconnect: {e}"))?;
    let mut view = RoomView {
        doc: Map::new(),
        key_occurrences: 0,
        patch_timestamp: None,
        synced: 0,
        reply_bytes: 0,
    };
    loop {
        let text = next_text(&mut ws)
            .await
            .map_err(|end| format!("{client}: room {room} never sent `synced` ({end:?})"))?;
        let frame: Value =
            serde_json::from_str(&text).map_err(|e| format!("{client}: not JSON ({e})"))?;
        match frame["type"].as_str() {
            Some("patch") if frame["clientId"] == "" => {
                let Some(patches) = frame["documentPatches"].as_array() else {
                    continue;
                };
                if view.patch_timestamp.is_some() {
                    return Err(format!("{client}: two reply patches before `synced`"));
                }
                view.patch_timestamp = Some(frame["timestamp"].as_u64().ok_or_else(|| {
                    format!("{client}: reply patch without a timestamp (clients ignore it)")
                })?);
                view.reply_bytes = text.len();
                view.key_occurrences = text.matches("/K\":").count();
                for patch in patches {
                    let Some(patch) = patch.as_object() else {
                        return Err(format!("{client}: a document patch is not an object"));
                    };
                    for (key, value) in patch {
                        view.doc.insert(key.clone(), value.clone());
                    }
                }
            }
            Some("synced") => {
                view.synced = frame["timestamp"]
                    .as_u64()
                    .ok_or_else(|| format!("{client}: `synced` without a timestamp"))?;
                let _ = ws.close(None).await;
                return Ok(view);
            }
            _ => {}
        }
    }
}

/// How much a verification checked.
#[derive(Default)]
struct Checked {
    acked: usize,
    clocks: Vec<(String, u64)>,
}

/// A fresh client per room must see every acked write, and every write a broadcast showed, with
/// its value; nothing else but sent writes; each key once; a clock at least every timestamp a
/// client saw and equal to the number of writes (each write is one request); no clock value
/// acked twice; and a diff from a random acked clock must hold exactly the acked writes stamped
/// after it.
async fn verify(
    addr: &str,
    shared: &Shared,
    rooms: &[&str],
    rng: &mut Rng,
    tag: &str,
) -> Result<Checked, Vec<String>> {
    let (sent, acked, seen) = {
        let l = ledger(shared);
        (l.sent.clone(), l.acked.clone(), l.seen.clone())
    };
    let mut errors = Vec::new();
    let mut checked = Checked::default();
    for room in rooms {
        let acked: Vec<&Acked> = acked.iter().filter(|a| a.room == *room).collect();
        let view = match read_room(addr, room, &format!("check-{tag}-{room}"), 0).await {
            Ok(view) => view,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        checked.acked += acked.len();
        checked.clocks.push((room.to_string(), view.synced));
        let seen: Vec<&Acked> = seen.iter().filter(|a| a.room == *room).collect();
        for (kind, promised) in [("acked", &acked), ("broadcast", &seen)] {
            let mut lost = Vec::new();
            for a in promised {
                match view.doc.get(&a.key) {
                    Some(v) if *v == record(a.value) => {}
                    Some(v) => errors.push(format!(
                        "room {room}: {kind} write {} = v{} ({} ts {}) reads back as {v}",
                        a.key, a.value, a.message_id, a.timestamp
                    )),
                    None => lost.push(*a),
                }
            }
            if lost.is_empty() {
                continue;
            }
            let stamps = lost.iter().map(|a| a.timestamp);
            let (lo, hi) = (stamps.clone().min(), stamps.max());
            let first: Vec<String> = lost
                .iter()
                .take(5)
                .map(|a| {
                    format!(
                        "{} = v{} ({} ts {})",
                        a.key, a.value, a.message_id, a.timestamp
                    )
                })
                .collect();
            errors.push(format!(
                "room {room}: {} of {} {kind} writes are LOST after the restart (ts {lo:?}..={hi:?}; clock now {}), e.g. {}",
                lost.len(),
                promised.len(),
                view.synced,
                first.join(", ")
            ));
        }
        for (key, value) in &view.doc {
            match sent.get(key) {
                Some((r, v)) if r == room && *value == record(*v) => {}
                Some((r, v)) => errors.push(format!(
                    "room {room}: {key} = {value}, but v{v} was written to room {r}"
                )),
                None => errors.push(format!("room {room}: {key} = {value} was never written")),
            }
        }
        if view.key_occurrences != view.doc.len() {
            errors.push(format!(
                "room {room}: the reply names {} keys but holds {} distinct ones (duplicated keys)",
                view.key_occurrences,
                view.doc.len()
            ));
        }
        if let Some(ts) = view.patch_timestamp {
            if ts != view.synced {
                errors.push(format!(
                    "room {room}: reply patch timestamp {ts} but synced {}",
                    view.synced
                ));
            }
        } else if !view.doc.is_empty() {
            errors.push(format!("room {room}: no reply patch"));
        }
        if let Some(max) = acked.iter().chain(&seen).map(|a| a.timestamp).max() {
            if view.synced < max {
                errors.push(format!(
                    "room {room}: the clock went backwards: synced {} after a client saw {max}",
                    view.synced
                ));
            }
        }
        if view.synced != view.doc.len() as u64 {
            errors.push(format!(
                "room {room}: clock {} but {} writes survive (every write is one request on a new key: a write was replayed twice or a hole was skipped)",
                view.synced,
                view.doc.len()
            ));
        }
        let mut stamps: HashMap<u64, &str> = HashMap::new();
        for a in &acked {
            if let Some(other) = stamps.insert(a.timestamp, &a.key) {
                errors.push(format!(
                    "room {room}: clock value {} acked twice ({other} and {}): the clock was reused after a restart",
                    a.timestamp, a.key
                ));
            }
        }
        if acked.is_empty() {
            continue;
        }
        let since = rng.pick(&acked).timestamp;
        match read_room(addr, room, &format!("check-{tag}-{room}-since"), since).await {
            Err(e) => errors.push(e),
            Ok(diff) => {
                if diff.synced != view.synced {
                    errors.push(format!(
                        "room {room}: synced {} then {} with no writes in between",
                        view.synced, diff.synced
                    ));
                }
                for a in &acked {
                    let (got, want) = (diff.doc.contains_key(&a.key), a.timestamp > since);
                    if got != want {
                        errors.push(format!(
                            "room {room}: the diff since {since} {} {} (acked at {}): its stamp changed in recovery",
                            if got { "holds" } else { "lacks" },
                            a.key,
                            a.timestamp
                        ));
                    }
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(checked)
    } else {
        Err(errors)
    }
}

// --- The crash loop ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stop {
    /// `kill -9`; one round in four SIGTERM first and `kill -9` 0-30 ms later, in the middle of
    /// the graceful shutdown (while it closes sessions and saves rooms).
    Kill,
    /// SIGTERM (one round in four SIGINT), which must exit 0.
    Term,
}

struct Plan {
    test: &'static str,
    /// Storage flags (`--storage ...`, `--durability ...`).
    storage: &'static [&'static str],
    /// Flags with a value picked at random for every start (`--fold-interval-ms`,
    /// `--idle-timeout-ms`).
    varied: &'static [(&'static str, &'static [u64])],
    rounds: u32,
    stop: Stop,
    /// After a restart, check the rooms (false: memory storage, nothing survives).
    persists: bool,
}

const ROOMS: [&str; 2] = ["crash-a", "crash-b"];
const WRITERS_PER_ROOM: usize = 2;

fn server_flags(plan: &Plan, rng: &mut Rng) -> Vec<String> {
    let mut flags: Vec<String> = plan.storage.iter().map(|s| s.to_string()).collect();
    for (flag, choices) in plan.varied {
        flags.push(flag.to_string());
        flags.push(rng.pick(choices).to_string());
    }
    flags
}

/// Rounds of: writers on every room, a stop after 100-700 ms, a restart on the same directory,
/// then (when the storage persists) the full check of every write acked so far. After the last
/// round a graceful stop, one more restart and check.
fn crash_loop(plan: Plan) {
    let _serial = serial();
    let mut h = Harness::new(plan.test, SEED_VAR);
    let mut rng = Rng::new(h.seed);
    let shared: Shared = Arc::default();
    let rt = runtime();
    let mut flags = server_flags(&plan, &mut rng);
    let mut server = h.start("127.0.0.1:0", &flags);
    let mut ends: HashMap<Ended, usize> = HashMap::new();
    let mut checks = 0usize;
    for round in 1..=plan.rounds {
        let (before, since) = {
            let l = ledger(&shared);
            let since: HashMap<&str, u64> = ROOMS
                .iter()
                .map(|room| {
                    let seen = l.acked.iter().chain(&l.seen).filter(|a| a.room == *room);
                    (*room, seen.map(|a| a.timestamp).max().unwrap_or(0))
                })
                .collect();
            (l.acked.len(), since)
        };
        let writers: Vec<_> = (0..ROOMS.len() * WRITERS_PER_ROOM)
            .map(|i| {
                let room = ROOMS[i % ROOMS.len()];
                let writer = Writer {
                    addr: server.addr.clone(),
                    room: room.to_owned(),
                    client: format!("c{round}x{i}"),
                    // Memory storage forgets: there a known clock would rightly get a resync.
                    since: if plan.persists { since[room] } else { 0 },
                    window: rng.range(1, 8) as usize,
                    limit: None,
                };
                rt.spawn(writer.run(shared.clone()))
            })
            .collect();
        let after_ms = rng.range(100, 700);
        std::thread::sleep(Duration::from_millis(after_ms));
        let stopped = match plan.stop {
            Stop::Kill if rng.range(1, 4) == 1 => {
                let grace = Duration::from_millis(rng.range(0, 30));
                server.term_then_kill(grace)
            }
            Stop::Kill => server.kill9().map(|()| "kill -9".to_owned()),
            Stop::Term => {
                let signal = if rng.range(1, 4) == 1 { "INT" } else { "TERM" };
                match server.signal(signal) {
                    Ok(status) if status.success() => Ok(format!("SIG{signal}, {status}")),
                    Ok(status) => Err(format!("SIG{signal}: weft exited with {status}, not 0")),
                    Err(e) => Err(e),
                }
            }
        };
        let stopped = stopped.unwrap_or_else(|e| h.fail(&[format!("round {round}: {e}")]));
        for writer in writers {
            match rt.block_on(async { tokio::time::timeout(WAIT * 2, writer).await }) {
                Ok(Ok(end)) => *ends.entry(end).or_default() += 1,
                _ => h.fail(&[format!("round {round}: a writer did not end")]),
            }
        }
        let errors = std::mem::take(&mut ledger(&shared).errors);
        if !errors.is_empty() {
            h.fail(&errors);
        }
        let (total, this_round) = {
            let l = ledger(&shared);
            (l.acked.len(), l.acked.len() - before)
        };
        flags = server_flags(&plan, &mut rng);
        server = h.start("127.0.0.1:0", &flags);
        let mut clocks = String::new();
        if plan.persists {
            let tag = format!("r{round}");
            match rt.block_on(verify(&server.addr, &shared, &ROOMS, &mut rng, &tag)) {
                Ok(checked) => {
                    checks += checked.acked;
                    clocks = format!(" clocks {:?}", checked.clocks);
                }
                Err(errors) => h.fail(&errors),
            }
        }
        eprintln!(
            "{}: round {round}: {after_ms} ms in, {stopped}: {this_round} writes acked ({total} in all){clocks}; next start {flags:?}",
            plan.test
        );
    }
    match server.terminate() {
        Ok(status) if status.success() => {}
        other => h.fail(&[format!("final SIGTERM: {other:?}, not exit 0")]),
    }
    if plan.persists {
        let server = h.start("127.0.0.1:0", &flags);
        match rt.block_on(verify(&server.addr, &shared, &ROOMS, &mut rng, "final")) {
            Ok(checked) => checks += checked.acked,
            Err(errors) => h.fail(&errors),
        }
        match server.terminate() {
            Ok(status) if status.success() => {}
            other => h.fail(&[format!("last SIGTERM: {other:?}, not exit 0")]),
        }
    }
    let acked = ledger(&shared).acked.len();
    let sent = ledger(&shared).sent.len();
    eprintln!(
        "{}: {} rounds, {acked} writes acked of {sent} sent, {checks} acked-write checks, {} server starts; writer endings {ends:?}",
        plan.test, plan.rounds, h.starts
    );
    assert!(acked > 0, "no write was ever acked");
}

/// `kill -9` at random moments (one round in four in the middle of a graceful shutdown) while 4
/// clients write to 2 rooms (RocksDB, default durability, fold intervals from 20 ms to never, idle
/// eviction at 50 ms or 30 s): after each restart every acked or broadcast write is back with its
/// value, the clock is not behind anything a client saw and counts exactly the surviving writes,
/// and no clock value is acked twice across the crashes.
#[test]
fn kill_9_loses_no_acked_write_rocksdb() {
    crash_loop(Plan {
        test: "kill_9_loses_no_acked_write_rocksdb",
        storage: &["--storage", "rocksdb"],
        varied: &[
            ("--fold-interval-ms", &[20, 150, 1_000, 3_600_000]),
            ("--idle-timeout-ms", &[50, 30_000]),
        ],
        rounds: 15,
        stop: Stop::Kill,
        persists: true,
    });
}

/// The `kill -9` loop with `--durability power-loss` (fsync per group commit): the same promise.
#[test]
fn kill_9_loses_no_acked_write_rocksdb_power_loss() {
    crash_loop(Plan {
        test: "kill_9_loses_no_acked_write_rocksdb_power_loss",
        storage: &["--storage", "rocksdb", "--durability", "power-loss"],
        varied: &[("--fold-interval-ms", &[20, 150, 3_600_000])],
        rounds: 6,
        stop: Stop::Kill,
        persists: true,
    });
}

/// SIGTERM (or SIGINT) while 4 clients write to 2 rooms (RocksDB): exit 0, and every acked write
/// is back after a restart, with the checks of the `kill -9` loop.
#[test]
fn sigterm_loses_no_acked_write_rocksdb() {
    crash_loop(Plan {
        test: "sigterm_loses_no_acked_write_rocksdb",
        storage: &["--storage", "rocksdb"],
        varied: &[
            ("--fold-interval-ms", &[20, 3_600_000]),
            ("--idle-timeout-ms", &[50, 30_000]),
        ],
        rounds: 5,
        stop: Stop::Term,
        persists: true,
    });
}

/// The `kill -9` loop on file storage (`<roomId>.json` + `<roomId>.log`, default durability,
/// fold intervals from 20 ms to never): every acked or broadcast write is back with its value,
/// no clock value is acked twice, and each round's writers reconnect from the last clock any
/// client saw before the crash.
#[test]
fn kill_9_loses_no_acked_write_file() {
    crash_loop(Plan {
        test: "kill_9_loses_no_acked_write_file",
        storage: &["--storage", "file"],
        varied: &[
            ("--fold-interval-ms", &[20, 150, 1_000, 3_600_000]),
            ("--idle-timeout-ms", &[50, 30_000]),
        ],
        rounds: 12,
        stop: Stop::Kill,
        persists: true,
    });
}

/// SIGTERM (or SIGINT) while 4 clients write to 2 rooms (file storage, fold intervals from 20 ms
/// to an hour): exit 0, and every acked write is back after a restart.
#[test]
fn sigterm_loses_no_acked_write_file() {
    crash_loop(Plan {
        test: "sigterm_loses_no_acked_write_file",
        storage: &["--storage", "file"],
        varied: &[
            ("--fold-interval-ms", &[20, 1_000, 3_600_000]),
            ("--idle-timeout-ms", &[50, 30_000]),
        ],
        rounds: 5,
        stop: Stop::Term,
        persists: true,
    });
}

/// SIGTERM (or SIGINT) while 4 clients write (memory storage): weft exits 0 every time.
#[test]
fn sigterm_exits_0_memory() {
    crash_loop(Plan {
        test: "sigterm_exits_0_memory",
        storage: &["--storage", "memory"],
        varied: &[],
        rounds: 3,
        stop: Stop::Term,
        persists: false,
    });
}

/// Start, write, SIGTERM or SIGINT, many times over on one RocksDB directory: every graceful stop
/// under load exits 0. (The database used to be closed by whichever thread dropped the storage
/// last, now and then an actix-server worker the process does not join, racing `exit`: SIGABRT.
/// `shutdown_closes_rocksdb_before_returning` in tests/api is the deterministic check; this is
/// the end-to-end one.) `WEFT_SHUTDOWN_CYCLES` sets the count.
#[test]
fn sigterm_under_load_exits_0_every_time() {
    let _serial = serial();
    let test = "sigterm_under_load_exits_0_every_time";
    let cycles: u32 = std::env::var("WEFT_SHUTDOWN_CYCLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(30);
    let mut h = Harness::new(test, SEED_VAR);
    let mut rng = Rng::new(h.seed);
    let shared: Shared = Arc::default();
    let rt = runtime();
    let plan = Plan {
        test,
        storage: &["--storage", "rocksdb"],
        varied: &[
            ("--fold-interval-ms", &[20, 150, 3_600_000]),
            ("--idle-timeout-ms", &[50, 30_000]),
        ],
        rounds: cycles,
        stop: Stop::Term,
        persists: false,
    };
    let mut failures = Vec::new();
    for cycle in 1..=cycles {
        let flags = server_flags(&plan, &mut rng);
        let server = h.start("127.0.0.1:0", &flags);
        let writers: Vec<_> = (0..ROOMS.len() * WRITERS_PER_ROOM)
            .map(|i| {
                let writer = Writer {
                    addr: server.addr.clone(),
                    room: ROOMS[i % ROOMS.len()].to_owned(),
                    client: format!("s{cycle}x{i}"),
                    since: 0,
                    window: rng.range(1, 8) as usize,
                    limit: None,
                };
                rt.spawn(writer.run(shared.clone()))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.range(50, 400)));
        let signal = if rng.range(1, 4) == 1 { "INT" } else { "TERM" };
        match server.signal(signal) {
            Ok(status) if status.success() => {}
            Ok(status) => failures.push(format!("cycle {cycle}: SIG{signal}, exit {status}")),
            Err(e) => failures.push(format!("cycle {cycle}: {e}")),
        }
        for writer in writers {
            let _ = rt.block_on(async { tokio::time::timeout(WAIT * 2, writer).await });
        }
    }
    if !failures.is_empty() {
        h.fail(&failures);
    }
    let acked = ledger(&shared).acked.len();
    assert!(acked > 0, "no write was ever acked: no load");
    eprintln!(
        "{test}: {cycles} graceful stops under load ({acked} writes acked), every one exit 0"
    );
}

// --- A long log -------------------------------------------------------------------------------

fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// How long a restart took until a fresh client of room `long` had its `synced`.
struct Recovery {
    listening: Duration,
    synced: Duration,
    /// A second fresh client's connect to `synced`, the room already loaded: the reply's cost.
    loaded: Duration,
    reply_bytes: usize,
    keys: usize,
}

/// Starts weft and times it: spawn to `listening on`, spawn to a fresh client's `synced`, and a
/// second fresh client once the room is loaded.
fn timed_restart(
    h: &mut Harness,
    rt: &tokio::runtime::Runtime,
    flags: &[String],
    client: &str,
) -> (Weft, Recovery) {
    let server = h.start("127.0.0.1:0", flags);
    let view = rt
        .block_on(read_room(&server.addr, "long", client, 0))
        .unwrap_or_else(|e| h.fail(&[e]));
    let synced = server.spawned.elapsed();
    let again = Instant::now();
    rt.block_on(read_room(
        &server.addr,
        "long",
        &format!("{client}-again"),
        0,
    ))
    .unwrap_or_else(|e| h.fail(&[e]));
    let recovery = Recovery {
        listening: server.listening - server.spawned,
        synced,
        loaded: again.elapsed(),
        reply_bytes: view.reply_bytes,
        keys: view.doc.len(),
    };
    (server, recovery)
}

/// 20,000 writes to one room with folding off all stay in the write-ahead log; after `kill -9`
/// the replay brings back every one with its value and stamp and an exact clock. Prints the
/// recovery time (spawn to a fresh client's `synced`), and for comparison the time after a
/// graceful stop that folds the log into a snapshot. Only correctness is asserted.
#[test]
fn a_long_unfolded_log_recovers_completely_after_kill_9() {
    const TEST: &str = "a_long_unfolded_log_recovers_completely_after_kill_9";
    const WRITES: u64 = 20_000;
    const WRITERS: u64 = 2;
    let _serial = serial();
    let mut h = Harness::new(TEST, SEED_VAR);
    let mut rng = Rng::new(h.seed);
    let shared: Shared = Arc::default();
    let rt = runtime();
    let flags: Vec<String> = ["--storage", "rocksdb", "--fold-interval-ms", "3600000"]
        .map(String::from)
        .into();
    let server = h.start("127.0.0.1:0", &flags);
    let writing = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let writer = Writer {
                addr: server.addr.clone(),
                room: "long".to_owned(),
                client: format!("long{i}"),
                since: 0,
                window: 32,
                limit: Some(WRITES / WRITERS),
            };
            rt.spawn(writer.run(shared.clone()))
        })
        .collect();
    for writer in writers {
        match rt.block_on(async { tokio::time::timeout(Duration::from_secs(300), writer).await }) {
            Ok(Ok(Ended::Done)) => {}
            other => {
                let mut errors = std::mem::take(&mut ledger(&shared).errors);
                errors.push(format!("a writer ended with {other:?} before its last ack"));
                h.fail(&errors);
            }
        }
    }
    let write_time = writing.elapsed();
    let errors = std::mem::take(&mut ledger(&shared).errors);
    if !errors.is_empty() {
        h.fail(&errors);
    }
    assert_eq!(
        ledger(&shared).acked.len() as u64,
        WRITES,
        "every write acked"
    );
    if let Err(e) = server.kill9() {
        h.fail(&[e]);
    }
    let log_bytes = dir_bytes(&h.data_dir().join("rocksdb"));

    let (server, replayed) = timed_restart(&mut h, &rt, &flags, "timer-1");
    if let Err(errors) = rt.block_on(verify(&server.addr, &shared, &["long"], &mut rng, "long")) {
        h.fail(&errors);
    }
    eprintln!(
        "{TEST}: {WRITES} writes ({WRITERS} clients, 32 in flight each) acked in {} ms; after kill -9: {log_bytes} bytes in <data>/rocksdb (unfolded log), recovery {} ms (listening after {} ms; a second client with the room loaded: {} ms), {} keys, reply {} bytes",
        write_time.as_millis(),
        replayed.synced.as_millis(),
        replayed.listening.as_millis(),
        replayed.loaded.as_millis(),
        replayed.keys,
        replayed.reply_bytes,
    );

    // One more write makes the room dirty, so the graceful stop folds the log into a snapshot.
    let one = Writer {
        addr: server.addr.clone(),
        room: "long".to_owned(),
        client: "fold".to_owned(),
        since: WRITES,
        window: 1,
        limit: Some(1),
    };
    let end = rt.block_on(one.run(shared.clone()));
    if end != Ended::Done {
        h.fail(&[format!("the folding write ended with {end:?}")]);
    }
    match server.terminate() {
        Ok(status) if status.success() => {}
        other => h.fail(&[format!("SIGTERM: {other:?}, not exit 0")]),
    }
    let folded_bytes = dir_bytes(&h.data_dir().join("rocksdb"));
    let (server, folded) = timed_restart(&mut h, &rt, &flags, "timer-2");
    if let Err(errors) = rt.block_on(verify(&server.addr, &shared, &["long"], &mut rng, "folded")) {
        h.fail(&errors);
    }
    eprintln!(
        "{TEST}: after a graceful stop (log folded): {folded_bytes} bytes in <data>/rocksdb, recovery {} ms (listening after {} ms; a second client with the room loaded: {} ms), {} keys",
        folded.synced.as_millis(),
        folded.listening.as_millis(),
        folded.loaded.as_millis(),
        folded.keys,
    );
    match server.terminate() {
        Ok(status) if status.success() => {}
        other => h.fail(&[format!("last SIGTERM: {other:?}, not exit 0")]),
    }
}

// --- The npm client across crashes ------------------------------------------------------------

/// The Node script, driven line by line over stdin/stdout.
struct Script {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    transcript: Vec<String>,
}

impl Script {
    fn spawn(args: &[&str]) -> Script {
        let mut child = Command::new("node")
            .current_dir(interop_dir())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node runs (Node.js is needed for this test)");
        let lines = common::stdout_lines(&mut child);
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr piped");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Script {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
            transcript: Vec::new(),
        }
    }

    fn send(&mut self, line: &str) -> Result<(), String> {
        self.transcript.push(format!("> {line}"));
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("writing `{line}` to the script: {e}"))
    }

    /// Waits for a line starting with `want`; progress lines are kept for the transcript.
    fn expect(&mut self, want: &str, limit: Duration) -> Result<String, String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if line != "sent" {
                        self.transcript.push(line.clone());
                    }
                    if line.starts_with(want) {
                        return Ok(line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!("no `{want}` from the script within {limit:?}"))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!("the script ended before `{want}`"))
                }
            }
        }
    }

    /// Waits for the next `sent`: a client sent a patch just now, its ack is not back yet.
    fn next_send(&mut self, limit: Duration) -> Result<String, String> {
        while let Ok(line) = self.lines.try_recv() {
            if line != "sent" {
                self.transcript.push(line);
            }
        }
        self.expect("sent", limit)
    }

    /// Everything said both ways, and the script's stderr.
    fn report(&mut self) -> String {
        if matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(200));
        }
        let stderr = self
            .stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        format!(
            "script transcript:\n    {}\nscript stderr:\n{stderr}",
            self.transcript.join("\n    ")
        )
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The line a step returned, or the test fails with the script's transcript and the weft log.
fn step(script: &mut Script, h: &Harness, result: Result<String, String>) -> String {
    result.unwrap_or_else(|e| {
        let report = script.report();
        h.fail(&[e, report])
    })
}

/// Three real npm clients (`WebsocketAdapter`, ticking pull/push every 16 ms) edit the same keys
/// and create their own while weft (RocksDB) is killed with -9 and restarted on the same port
/// three times; they reconnect by themselves. Once the edits stop, every client and a late joiner
/// hold the same document, no client was ever asked to resync (weft never forgot a write a client
/// had seen), and the late joiner's clock is not behind any client's.
///
/// It was ignored while it failed now and then (shared keys left with one client's own last edit
/// after the restarts): a client bug, worked around in the driver (`crash-converge.mjs` header:
/// the adapter's `pull()` strips broadcasts against an offline buffer that has already reached the
/// server). The seed it prints replays the edit choices.
#[test]
fn npm_clients_converge_across_kill_9_restarts() {
    npm_clients_converge("npm_clients_converge_across_kill_9_restarts", "rocksdb");
}

/// The npm convergence test on file storage (a log per room, written before the ack): clients
/// offline across each kill reconnect with their lastTimestamp, are never asked to resync (no
/// acked write was lost, no clock reused) and converge.
#[test]
fn npm_clients_converge_across_kill_9_restarts_file() {
    npm_clients_converge("npm_clients_converge_across_kill_9_restarts_file", "file");
}

fn npm_clients_converge(test: &'static str, storage: &str) {
    const KILLS: u32 = 3;
    let _serial = serial();
    assert!(
        interop_dir()
            .join("node_modules/@woven-ecs/canvas-store")
            .is_dir(),
        "npm packages missing: run `npm ci` in tests/interop (scripts/test does it)"
    );
    let mut h = Harness::new(test, SEED_VAR);
    let mut rng = Rng::new(h.seed);
    let flags: Vec<String> = ["--storage", storage].map(String::from).into();
    let mut server = h.start("127.0.0.1:0", &flags);
    let addr = format!("127.0.0.1:{}", server.port());
    let url = format!("ws://{addr}");
    let js_seed = (h.seed % (1 << 32)).to_string();
    let mut script = Script::spawn(&["crash-converge.mjs", "--url", &url, "--seed", &js_seed]);
    let started = Instant::now();
    let r = script.expect("ready", Duration::from_secs(30));
    step(&mut script, &h, r);
    for kill in 1..=KILLS {
        let r = script
            .send("online?")
            .and_then(|()| script.expect("online", Duration::from_secs(30)));
        step(&mut script, &h, r);
        let after_ms = rng.range(200, 900);
        std::thread::sleep(Duration::from_millis(after_ms));
        let r = script.next_send(Duration::from_secs(10));
        step(&mut script, &h, r);
        let r = server.kill9().map(|()| String::new());
        step(&mut script, &h, r);
        server = h.start(&addr, &flags);
        eprintln!(
            "{test}: kill -9 #{kill} after {after_ms} ms of edits, restarted on {addr} ({} ms in)",
            started.elapsed().as_millis()
        );
    }
    let r = script
        .send("online?")
        .and_then(|()| script.expect("online", Duration::from_secs(30)));
    step(&mut script, &h, r);
    std::thread::sleep(Duration::from_millis(500));
    let r = script
        .send("done")
        .and_then(|()| script.expect("converged", Duration::from_secs(45)));
    let converged = step(&mut script, &h, r);
    let r = wait_with_deadline(&mut script.child, Duration::from_secs(10)).and_then(|status| {
        if status.success() {
            Ok(String::new())
        } else {
            Err(format!("the script exited with {status}"))
        }
    });
    step(&mut script, &h, r);
    eprintln!(
        "{test}: {converged} ({} ms in all)",
        started.elapsed().as_millis()
    );
    match server.terminate() {
        Ok(status) if status.success() => {}
        other => h.fail(&[format!("SIGTERM: {other:?}, not exit 0")]),
    }
}
