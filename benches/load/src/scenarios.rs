//! The scenarios: editing traffic (busy rooms, one large room, many small rooms), idle
//! connections, a reconnect storm and a large document.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{watch, Barrier, Semaphore};
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, classify, Incoming, Ws};
use crate::stats::{self, num, Batch, Latency};
use crate::traffic::{Editor, Kind, Rng, Traffic};

/// How long a connect plus `reconnect`/`synced` may take before the client counts as failed.
const SYNC_LIMIT: Duration = Duration::from_secs(60);

/// Settings every scenario shares.
#[derive(Clone)]
pub struct Target {
    pub url: String,
    pub token: String,
    /// Room id prefix, unique per run so runs against one server never share rooms.
    pub rooms: String,
    /// Connects (and syncs) in progress at once while setting up.
    pub connect_concurrency: usize,
    pub server_pid: Option<u32>,
}

impl Target {
    fn room(&self, room: usize) -> String {
        format!("{}-{room}", self.rooms)
    }

    fn url(&self, room: &str, client: &str) -> String {
        client::room_url(&self.url, room, client, &self.token)
    }

    fn server(&self) -> Option<stats::Usage> {
        self.server_pid.and_then(stats::usage)
    }

    /// Connects and syncs with a fresh cursor, with at most `connect_concurrency` doing so at once.
    async fn join(&self, gate: &Semaphore, room: &str, client: &str) -> Result<Ws, String> {
        let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
        let mut ws = client::connect(&self.url(room, client)).await?;
        client::sync(&mut ws, 0, SYNC_LIMIT).await?;
        Ok(ws)
    }
}

// --- Editing traffic ----------------------------------------------------------------------------

/// An editing run: `rooms x clients` editors sending `traffic`.
#[derive(Clone)]
pub struct TrafficSpec {
    pub rooms: usize,
    pub clients: usize,
    /// Offered patches per second over all editors (open loop); 0 for closed loop.
    pub rate: f64,
    /// Closed loop: patches in flight per editor.
    pub window: usize,
    pub traffic: Traffic,
    pub warmup: Duration,
    pub duration: Duration,
    /// After the window, how long to wait for outstanding acks.
    pub drain: Duration,
}

/// The measured window, fixed once every editor is synced.
#[derive(Clone, Copy)]
struct Window {
    /// Sending starts here; measuring at `from`, after the warm-up; sending stops at `until`.
    start: Instant,
    from: Instant,
    until: Instant,
}

/// What the editors add up.
#[derive(Default)]
struct Totals {
    sent: u64,
    acked: u64,
    unacked: u64,
    broadcasts: u64,
    kinds: [u64; Kind::ALL.len()],
    connect_errors: u64,
    disconnects: u64,
    /// The first few reasons connections ended early (close frames, errors).
    reasons: Vec<String>,
}

impl Totals {
    fn note(&mut self, reason: String) {
        if self.reasons.len() < 5 && !self.reasons.contains(&reason) {
            self.reasons.push(reason);
        }
    }
}

struct Shared {
    target: Target,
    spec: TrafficSpec,
    /// Stamps are microseconds since this instant.
    origin: Instant,
    gate: Semaphore,
    ready: Barrier,
    window: watch::Receiver<Option<Window>>,
    stop: watch::Receiver<bool>,
    /// Patches sent inside the window and not yet acked, over all editors.
    outstanding: AtomicI64,
    totals: Mutex<Totals>,
    /// Ack and sender-to-peer latency, and how late the open-loop writers sent (their lag).
    ack: Mutex<Latency>,
    broadcast: Mutex<Latency>,
    lag: Mutex<Latency>,
}

impl Shared {
    fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_micros() as u64
    }

    fn totals(&self) -> std::sync::MutexGuard<'_, Totals> {
        self.totals.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Sent and not yet acked requests of one editor, in order (servers ack in order).
#[derive(Default)]
struct Pending {
    queue: VecDeque<Sent>,
    sent: u64,
    kinds: [u64; Kind::ALL.len()],
}

struct Sent {
    seq: u64,
    /// When it was handed to the socket; latency counts from here. Open-loop writers also
    /// record how late that was against the schedule (`send_lag_ms`): tokio's timer alone adds
    /// up to a millisecond, which is not the server's, while a lag that keeps growing means the
    /// generator or the server's TCP backpressure held writes back.
    at: Instant,
    /// Sent inside the measured window.
    measured: bool,
}

type Sink = SplitSink<Ws, Message>;

pub async fn traffic(target: &Target, spec: TrafficSpec) -> Value {
    let total = spec.rooms * spec.clients;
    let (window_tx, window_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        target: target.clone(),
        spec: spec.clone(),
        origin: Instant::now(),
        gate: Semaphore::new(target.connect_concurrency.max(1)),
        ready: Barrier::new(total + 1),
        window: window_rx,
        stop: stop_rx,
        outstanding: AtomicI64::new(0),
        totals: Mutex::default(),
        ack: Mutex::default(),
        broadcast: Mutex::default(),
        lag: Mutex::default(),
    });
    let connect_started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for room in 0..spec.rooms {
        for index in 0..spec.clients {
            let global = room * spec.clients + index;
            tasks.push(tokio::spawn(editor(shared.clone(), room, index, global)));
        }
    }
    shared.ready.wait().await;
    let connect_secs = connect_started.elapsed().as_secs_f64();
    let start = Instant::now();
    let window = Window {
        start,
        from: start + spec.warmup,
        until: start + spec.warmup + spec.duration,
    };
    let _ = window_tx.send(Some(window));

    tokio::time::sleep_until(window.from.into()).await;
    let (server_before, own_before) = (target.server(), stats::own_usage());
    tokio::time::sleep_until(window.until.into()).await;
    let (server_after, own_after) = (target.server(), stats::own_usage());
    let secs = (window.until - window.from).as_secs_f64();

    // Wait for the acks still on their way, then a little longer for the last broadcasts.
    let drain_end = window.until + spec.drain;
    while shared.outstanding.load(Ordering::Relaxed) > 0 && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }

    let (ack, broadcast, lag) = (
        lock(&shared.ack).summary(),
        lock(&shared.broadcast).summary(),
        lock(&shared.lag).summary(),
    );
    let t = shared.totals();
    let expected_broadcasts = t.sent * (spec.clients.saturating_sub(1)) as u64;
    let kinds: serde_json::Map<String, Value> = Kind::ALL
        .iter()
        .map(|k| (k.name().to_owned(), json!(t.kinds[*k as usize])))
        .collect();
    json!({
        "rooms": spec.rooms,
        "clients_per_room": spec.clients,
        "traffic": format!("{:?}", spec.traffic).to_lowercase(),
        "mode": if spec.rate > 0.0 { "open" } else { "closed" },
        "offered_per_sec": spec.rate,
        "window": spec.window,
        "seconds": num(secs),
        "connect_secs": num(connect_secs),
        "sent": t.sent,
        "acked": t.acked,
        "unacked": t.unacked,
        "sent_per_sec": num(t.sent as f64 / secs),
        "acked_per_sec": num(t.acked as f64 / secs),
        "broadcasts": t.broadcasts,
        "broadcasts_per_sec": num(t.broadcasts as f64 / secs),
        "broadcast_delivery": num(if expected_broadcasts > 0 { t.broadcasts as f64 / expected_broadcasts as f64 } else { f64::NAN }),
        "kinds": kinds,
        "ack_ms": ack,
        "broadcast_ms": broadcast,
        "send_lag_ms": lag,
        "connect_errors": t.connect_errors,
        "disconnects": t.disconnects,
        "disconnect_reasons": t.reasons,
        "server": stats::cpu_between(server_before, server_after, secs),
        "load_generator": stats::cpu_between(own_before, own_after, secs),
    })
}

/// One editor: joins, waits for everyone, then writes (writer task) and reads (here).
async fn editor(shared: Arc<Shared>, room: usize, index: usize, global: usize) {
    let client_id = format!("c{room}-{index}");
    let room_id = shared.target.room(room);
    let joined = shared.target.join(&shared.gate, &room_id, &client_id).await;
    shared.ready.wait().await;
    let ws = match joined {
        Ok(ws) => ws,
        Err(e) => {
            let mut t = shared.totals();
            t.connect_errors += 1;
            t.note(e);
            return;
        }
    };
    let mut window_rx = shared.window.clone();
    let window = match window_rx.wait_for(Option::is_some).await {
        Ok(w) => w.unwrap_or_else(|| unreachable!("waited for Some")),
        Err(_) => return,
    };
    let (sink, mut stream) = ws.split();
    let pending = Arc::new(Mutex::new(Pending::default()));
    let permits = Arc::new(Semaphore::new(shared.spec.window.max(1)));
    let editor = Editor::new(shared.spec.traffic, &client_id, global as u64);
    let writer = tokio::spawn(write_loop(
        shared.clone(),
        sink,
        editor,
        window,
        pending.clone(),
        permits.clone(),
        global,
    ));
    let (mut ack, mut broadcast) = (Batch::new(&shared.ack), Batch::new(&shared.broadcast));
    let (mut acked, mut broadcasts) = (0u64, 0u64);
    let (from_us, until_us) = (shared.micros(window.from), shared.micros(window.until));
    let mut stop = shared.stop.clone();
    let mut ended: Option<String> = None;
    loop {
        let msg = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            msg = stream.next() => msg,
        };
        let msg = match msg {
            None => {
                ended = Some("connection closed".into());
                break;
            }
            Some(Err(e)) => {
                ended = Some(format!("read error: {e}"));
                break;
            }
            Some(Ok(msg)) => msg,
        };
        let text = match &msg {
            Message::Text(text) => text,
            Message::Close(_) => {
                ended = client::close_reason(&msg);
                break;
            }
            _ => continue,
        };
        let now = Instant::now();
        match classify(text) {
            Incoming::Ack { message_id, .. } => {
                let Ok(seq) = message_id.parse::<u64>() else {
                    continue;
                };
                let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
                while p.queue.front().is_some_and(|s| s.seq <= seq) {
                    let Some(sent) = p.queue.pop_front() else {
                        break;
                    };
                    if sent.seq == seq && sent.measured {
                        ack.record(now - sent.at);
                        acked += 1;
                        shared.outstanding.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                permits.add_permits(1);
            }
            Incoming::Broadcast {
                stamp: Some(stamp), ..
            } if (from_us..until_us).contains(&stamp) => {
                broadcast.record_micros(shared.micros(now).saturating_sub(stamp));
                broadcasts += 1;
            }
            _ => {}
        }
    }
    // Requests never acked count with the time they waited, so a stalled server shows in p99.
    let now = Instant::now();
    let (sent, kinds, unacked) = {
        let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut unacked = 0;
        for s in p.queue.drain(..).filter(|s| s.measured) {
            ack.record(now - s.at);
            unacked += 1;
        }
        (p.sent, p.kinds, unacked)
    };
    shared
        .outstanding
        .fetch_sub(unacked as i64, Ordering::Relaxed);
    // The writer stopped at the end of the window unless the server stopped reading.
    match tokio::time::timeout(Duration::from_secs(1), writer).await {
        Ok(Ok(Some(sink))) => {
            if let Ok(mut ws) = sink.reunite(stream) {
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
            }
        }
        Ok(_) => {}
        Err(_) => {} // dropping the handle leaves a stuck writer to die with the socket
    }
    drop((ack, broadcast));
    let mut t = shared.totals();
    t.sent += sent;
    t.acked += acked;
    t.unacked += unacked;
    t.broadcasts += broadcasts;
    for (total, n) in t.kinds.iter_mut().zip(kinds) {
        *total += n;
    }
    if let Some(reason) = ended {
        t.disconnects += 1;
        t.note(reason);
    }
}

/// Sends the editor's setup frame, then its requests: on a fixed schedule (open loop) or as
/// acks free the window (closed loop). Returns the sink when the window has ended.
async fn write_loop(
    shared: Arc<Shared>,
    mut sink: Sink,
    mut editor: Editor,
    window: Window,
    pending: Arc<Mutex<Pending>>,
    permits: Arc<Semaphore>,
    global: usize,
) -> Option<Sink> {
    let spec = &shared.spec;
    // Measured by when it was sent, the same clock its broadcasts are counted by.
    let push = |seq: u64, at: Instant, kind: Option<Kind>| {
        let measured = kind.is_some() && at >= window.from && at < window.until;
        let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
        p.queue.push_back(Sent { seq, at, measured });
        if let (true, Some(kind)) = (measured, kind) {
            p.sent += 1;
            p.kinds[kind as usize] += 1;
            shared.outstanding.fetch_add(1, Ordering::Relaxed);
        }
    };
    let now = Instant::now();
    push(0, now, None);
    let setup = editor.setup_frame("0", shared.micros(now));
    sink.send(Message::text(setup)).await.ok()?;
    let total = spec.rooms * spec.clients;
    // Open loop: each editor sends every `period`, editors spread evenly over one period so the
    // server sees a steady stream rather than synchronized bursts.
    let mut ticker = (spec.rate > 0.0).then(|| {
        let period = Duration::from_secs_f64(total as f64 / spec.rate);
        let phase = period.mul_f64(global as f64 / total as f64);
        let mut t = tokio::time::interval_at((window.start + phase).into(), period);
        t.set_missed_tick_behavior(MissedTickBehavior::Burst);
        t
    });
    let mut lag = Batch::new(&shared.lag);
    let mut seq = 0u64;
    loop {
        let due = match ticker.as_mut() {
            Some(t) => t.tick().await.into_std(),
            None => {
                permits.acquire().await.ok()?.forget();
                Instant::now()
            }
        };
        if due >= window.until {
            return Some(sink);
        }
        let at = Instant::now();
        if ticker.is_some() && due >= window.from {
            lag.record(at - due);
        }
        seq += 1;
        let (frame, kind) = editor.next_frame(&seq.to_string(), shared.micros(at));
        push(seq, at, Some(kind));
        sink.send(Message::text(frame)).await.ok()?;
    }
}

// --- Idle connections ---------------------------------------------------------------------------

/// `rooms x clients` connections join, sync and then only answer pings: the server's memory per
/// idle connection is the growth of its RSS divided by the connections.
pub async fn idle(target: &Target, rooms: usize, clients: usize, settle: Duration) -> Value {
    let total = rooms * clients;
    let before = target.server();
    let gate = Arc::new(Semaphore::new(target.connect_concurrency.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for room in 0..rooms {
        for index in 0..clients {
            let (target, gate, done, mut stop) = (
                target.clone(),
                gate.clone(),
                done_tx.clone(),
                stop_rx.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let room_id = target.room(room);
                match target
                    .join(&gate, &room_id, &format!("i{room}-{index}"))
                    .await
                {
                    Ok(mut ws) => {
                        let _ = done.send(Ok(()));
                        // Keep reading so pings are answered, until told to stop.
                        loop {
                            tokio::select! {
                                _ = stop.wait_for(|s| *s) => break,
                                msg = ws.next() => if !matches!(msg, Some(Ok(_))) { break },
                            }
                        }
                        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                    }
                    Err(e) => {
                        let _ = done.send(Err(e));
                    }
                }
            }));
        }
    }
    drop(done_tx);
    let (mut ok, mut failed, mut reasons) = (0usize, 0usize, Vec::<String>::new());
    while let Some(result) = done_rx.recv().await {
        match result {
            Ok(()) => ok += 1,
            Err(e) => {
                failed += 1;
                if reasons.len() < 5 && !reasons.contains(&e) {
                    reasons.push(e);
                }
            }
        }
        if ok + failed == total {
            break;
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    // Let the server finish what the joins started (allocator, deferred frees) before reading.
    tokio::time::sleep(settle).await;
    let settled = target.server();
    // CPU of idle connections (heartbeats) over a short quiet period.
    let quiet = Duration::from_secs(2);
    tokio::time::sleep(quiet).await;
    let after = target.server();
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    let per_conn = match (before, settled) {
        (Some(b), Some(a)) if ok > 0 => (a.rss_kib as f64 - b.rss_kib as f64) / ok as f64,
        _ => f64::NAN,
    };
    json!({
        "rooms": rooms,
        "clients_per_room": clients,
        "connections": ok,
        "failed": failed,
        "failure_reasons": reasons,
        "connect_secs": num(connect_secs),
        "rss_before_kib": before.map(|u| u.rss_kib),
        "rss_after_kib": settled.map(|u| u.rss_kib),
        "kib_per_connection": num(per_conn),
        "idle": stats::cpu_between(settled, after, quiet.as_secs_f64()),
    })
}

// --- Reconnect storm ----------------------------------------------------------------------------

/// `rooms x clients` members sync and go offline; one editor per room makes `edits` changes;
/// then every member reconnects at the same moment with its `lastTimestamp`.
pub async fn reconnect_storm(
    target: &Target,
    rooms: usize,
    clients: usize,
    edits: usize,
    traffic: Traffic,
) -> Value {
    let gate = Arc::new(Semaphore::new(target.connect_concurrency.max(1)));
    // 1. Members join and remember their cursor.
    let mut joins = Vec::new();
    for room in 0..rooms {
        for index in 0..clients {
            let (target, gate) = (target.clone(), gate.clone());
            joins.push(tokio::spawn(async move {
                let (room_id, client_id) = (target.room(room), format!("m{room}-{index}"));
                let _permit = gate.acquire().await.ok();
                let mut ws = client::connect(&target.url(&room_id, &client_id)).await?;
                let synced = client::sync(&mut ws, 0, SYNC_LIMIT).await?;
                Ok::<_, String>((room, client_id, synced.timestamp, ws))
            }));
        }
    }
    let mut members = Vec::new();
    let mut failures = Vec::<String>::new();
    for join in joins {
        match join.await {
            Ok(Ok(member)) => members.push(member),
            Ok(Err(e)) => failures.push(e),
            Err(e) => failures.push(e.to_string()),
        }
    }
    // 2. Editors join; 3. members go offline.
    let mut editors = Vec::new();
    for room in 0..rooms {
        match target
            .join(&gate, &target.room(room), &format!("e{room}"))
            .await
        {
            Ok(ws) => editors.push((room, ws)),
            Err(e) => failures.push(format!("editor: {e}")),
        }
    }
    let mut offline = Vec::new();
    let closes = members
        .into_iter()
        .map(|(room, client_id, ts, mut ws)| async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
            (room, client_id, ts)
        });
    offline.extend(futures_util::future::join_all(closes).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 4. Edits while they are away.
    let edit_started = Instant::now();
    let edited = futures_util::future::join_all(
        editors
            .iter_mut()
            .map(|(room, ws)| edit(ws, traffic, format!("e{room}"), edits)),
    )
    .await;
    let edit_secs = edit_started.elapsed().as_secs_f64();
    let edit_errors: Vec<String> = edited.into_iter().filter_map(Result::err).collect();
    // 5. Everyone reconnects at once.
    let release = Arc::new(Barrier::new(offline.len() + 1));
    let mut storm = Vec::new();
    for (room, client_id, ts) in offline {
        let (target, release) = (target.clone(), release.clone());
        storm.push(tokio::spawn(async move {
            release.wait().await;
            let started = Instant::now();
            let mut ws = client::connect(&target.url(&target.room(room), &client_id)).await?;
            let synced = client::sync(&mut ws, ts, SYNC_LIMIT).await?;
            let elapsed = started.elapsed();
            let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
            Ok::<_, String>((elapsed, synced))
        }));
    }
    release.wait().await;
    let started = Instant::now();
    let mut latency = Latency::default();
    let (mut synced, mut diffs, mut last) = (0usize, 0usize, Duration::ZERO);
    let mut storm_failures = Vec::<String>::new();
    for task in storm {
        match task.await {
            Ok(Ok((elapsed, s))) => {
                latency.record(elapsed);
                synced += 1;
                diffs += usize::from(s.got_diff);
                last = last.max(elapsed);
            }
            Ok(Err(e)) => storm_failures.push(e),
            Err(e) => storm_failures.push(e.to_string()),
        }
    }
    let wall = started.elapsed();
    for (_, mut ws) in editors {
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    }
    failures.extend(storm_failures.iter().cloned());
    failures.extend(edit_errors);
    failures.truncate(5);
    json!({
        "rooms": rooms,
        "clients_per_room": clients,
        "edits_per_room": edits,
        "edit_secs": num(edit_secs),
        "reconnected": synced,
        "failed": storm_failures.len(),
        "with_diff": diffs,
        "all_synced_ms": num(last.as_secs_f64() * 1000.0),
        "storm_wall_ms": num(wall.as_secs_f64() * 1000.0),
        "reconnect_to_synced_ms": latency.summary(),
        "failure_reasons": failures,
        "server_rss_kib": target.server().map(|u| u.rss_kib),
    })
}

/// Sends `count` requests of `traffic` (pipelined, up to 32 unacked) and waits for their acks.
async fn edit(ws: &mut Ws, traffic: Traffic, client: String, count: usize) -> Result<(), String> {
    let mut editor = Editor::new(traffic, &client, client.len() as u64 ^ 0xED17);
    ws.send(Message::text(editor.setup_frame("0", 0)))
        .await
        .map_err(|e| e.to_string())?;
    let (mut sent, mut acked) = (0usize, 0usize);
    let target_acks = count + 1;
    while acked < target_acks {
        while sent < count && sent + 1 - acked < 32 {
            sent += 1;
            let (frame, _) = editor.next_frame(&sent.to_string(), 0);
            ws.send(Message::text(frame))
                .await
                .map_err(|e| e.to_string())?;
        }
        let msg = tokio::time::timeout(SYNC_LIMIT, ws.next())
            .await
            .map_err(|_| "timed out waiting for acks".to_string())?;
        match msg {
            Some(Ok(Message::Text(text))) => {
                if matches!(classify(&text), Incoming::Ack { .. }) {
                    acked += 1;
                }
            }
            Some(Ok(Message::Close(frame))) => return Err(format!("editor closed: {frame:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("editor connection ended".into()),
        }
    }
    Ok(())
}

// --- Large document -----------------------------------------------------------------------------

/// One room seeded with `components` components: how long a first join takes to be `synced`,
/// and how long a reconnect takes after `edits` changes (a diff, not the whole document).
pub async fn large_doc(
    target: &Target,
    components: usize,
    batch: usize,
    edits: usize,
    repeat: usize,
) -> Value {
    let room = target.room(0);
    let gate = Semaphore::new(1);
    let mut seeder = match target.join(&gate, &room, "seeder").await {
        Ok(ws) => ws,
        Err(e) => return json!({ "error": e }),
    };
    let mut rng = Rng::new(42);
    let batch = batch.max(1);
    let frames: Vec<String> = (0..components.div_ceil(batch))
        .map(|b| {
            let keys = (b * batch..((b + 1) * batch).min(components)).map(|j| {
                format!(
                    r##""e{j}/Shape":{{"_exists":true,"kind":"rect","x":{},"y":{},"w":{},"h":{},"fill":"#{:06x}"}}"##,
                    rng.below(4000),
                    rng.below(4000),
                    20 + rng.below(200),
                    20 + rng.below(200),
                    rng.below(0xFF_FFFF)
                )
            });
            let body: Vec<String> = keys.collect();
            format!(
                r#"{{"type":"patch","messageId":"{b}","documentPatches":[{{{}}}]}}"#,
                body.join(",")
            )
        })
        .collect();
    let seed_started = Instant::now();
    if let Err(e) = pipeline(&mut seeder, frames).await {
        return json!({ "error": format!("seeding: {e}") });
    }
    let seed_secs = seed_started.elapsed().as_secs_f64();

    let (mut join_ms, mut join_bytes, mut diff_ms, mut diff_bytes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut errors = Vec::<String>::new();
    for r in 0..repeat {
        let client_id = format!("j{r}");
        let url = target.url(&room, &client_id);
        // A first join: the whole document.
        let started = Instant::now();
        let first = async {
            let mut ws = client::connect(&url).await?;
            let synced = client::sync(&mut ws, 0, SYNC_LIMIT).await?;
            Ok::<_, String>((ws, synced))
        };
        let (mut ws, synced) = match first.await {
            Ok(ok) => ok,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        join_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        join_bytes.push(synced.bytes);
        let _ = ws.close(None).await;
        // Edits while it is away, then a reconnect with its cursor: a diff.
        let moves: Vec<String> = (0..edits)
            .map(|i| {
                let j = rng.below(components.max(1) as u64);
                format!(
                    r#"{{"type":"patch","messageId":"m{r}-{i}","documentPatches":[{{"e{j}/Shape":{{"x":{},"y":{}}}}}]}}"#,
                    rng.below(4000),
                    rng.below(4000)
                )
            })
            .collect();
        if let Err(e) = pipeline(&mut seeder, moves).await {
            errors.push(format!("edits: {e}"));
            continue;
        }
        let started = Instant::now();
        let again = async {
            let mut ws = client::connect(&url).await?;
            let s = client::sync(&mut ws, synced.timestamp, SYNC_LIMIT).await?;
            let _ = ws.close(None).await;
            Ok::<_, String>(s)
        };
        match again.await {
            Ok(s) => {
                diff_ms.push(started.elapsed().as_secs_f64() * 1000.0);
                diff_bytes.push(s.bytes);
            }
            Err(e) => errors.push(e),
        }
    }
    let _ = seeder.close(None).await;
    json!({
        "components": components,
        "seed_secs": num(seed_secs),
        "first_join_ms": summary_ms(&join_ms),
        "first_join_bytes": join_bytes.first(),
        "edits": edits,
        "reconnect_diff_ms": summary_ms(&diff_ms),
        "reconnect_diff_bytes": diff_bytes.first(),
        "errors": errors,
        "server_rss_kib": target.server().map(|u| u.rss_kib),
    })
}

/// Sends frames with up to 16 unacked and waits until every one is acked.
async fn pipeline(ws: &mut Ws, frames: Vec<String>) -> Result<(), String> {
    let count = frames.len();
    let mut frames = frames.into_iter();
    let (mut sent, mut acked) = (0usize, 0usize);
    while acked < count {
        while sent < count && sent - acked < 16 {
            let Some(frame) = frames.next() else { break };
            ws.send(Message::text(frame))
                .await
                .map_err(|e| e.to_string())?;
            sent += 1;
        }
        match tokio::time::timeout(SYNC_LIMIT, ws.next()).await {
            Err(_) => return Err("timed out waiting for acks".into()),
            Ok(Some(Ok(Message::Text(text)))) => {
                if matches!(classify(&text), Incoming::Ack { .. }) {
                    acked += 1;
                }
            }
            Ok(Some(Ok(msg @ Message::Close(_)))) => {
                return Err(client::close_reason(&msg).unwrap_or_default())
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) => return Err("connection ended".into()),
        }
    }
    Ok(())
}

/// `{"runs", "p50", "max", "all"}` of a few millisecond samples (too few for a histogram).
fn summary_ms(samples: &[f64]) -> Value {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
    json!({
        "runs": sorted.len(),
        "p50": num(median),
        "max": num(sorted.last().copied().unwrap_or(f64::NAN)),
        "all": samples.iter().map(|x| num(*x)).collect::<Vec<_>>(),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
