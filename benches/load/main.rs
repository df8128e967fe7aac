//! `weft-load`: a load generator for the canvas-store protocol.
//!
//! Opens `rooms x clients` WebSocket sessions against a running server, syncs each one, then
//! has every client write small patches (moving a shape it owns) either as fast as acks come back
//! with `--window` writes in flight (closed loop) or at a fixed offered rate (open loop, so
//! latency is honest). It reports acked patches per second, ack latency and sender-to-peer
//! broadcast latency percentiles, and prints one JSON line with the same numbers.
//!
//! ```text
//! cargo run --release --bin weft-load -- --url ws://127.0.0.1:8787 --rooms 10 --clients 10 \
//!     --duration-secs 10 --rate 3000
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug, Clone)]
#[command(about = "Load generator for weft and other canvas-store servers")]
struct Args {
    /// Server base URL.
    #[arg(long, default_value = "ws://127.0.0.1:8787")]
    url: String,
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Clients per room.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Total offered patches per second (open loop). 0: closed loop, see --window.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Closed loop: writes in flight per client.
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Token query parameter, for servers that want one.
    #[arg(long, default_value = "load")]
    token: String,
    /// Room id prefix (rooms are PREFIX-0, PREFIX-1, ...).
    #[arg(long, default_value = "load")]
    room_prefix: String,
}

#[derive(Default)]
struct Stats {
    acks: Vec<u32>,
    broadcasts: Vec<u32>,
    errors: u64,
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[idx]) / 1000.0
}

/// Wall-clock microseconds carried in each patch, so a peer can measure broadcast latency.
fn now_micros(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

/// What every client task shares.
struct Run {
    args: Args,
    start: Instant,
    ready: Barrier,
    stop: AtomicBool,
    /// Time between one client's writes in open loop; `None` for closed loop.
    interval: Option<Duration>,
    stats: Mutex<Stats>,
}

async fn client(run: Arc<Run>, room: usize, index: usize) {
    let Run { args, start, .. } = &*run;
    let (start, interval) = (*start, run.interval);
    let (ready, stats) = (&run.ready, &run.stats);
    let client_id = format!("c{room}-{index}");
    let url = format!(
        "{}/?roomId={}-{room}&clientId={client_id}&token={}",
        args.url.trim_end_matches('/'),
        args.room_prefix,
        args.token
    );
    let (mut ws, _) = match tokio_tungstenite::connect_async_with_config(&url, None, true).await {
        Ok(ok) => ok,
        Err(e) => {
            eprintln!("connect {url}: {e}");
            stats.lock().expect("stats").errors += 1;
            ready.wait().await;
            return;
        }
    };
    let hello = json!({"type": "reconnect", "lastTimestamp": 0, "protocolVersion": 2});
    let _ = ws.send(Message::text(hello.to_string())).await;
    // Wait for `synced`, then for everyone, so every client sees every broadcast.
    while let Some(Ok(msg)) = ws.next().await {
        if let Message::Text(t) = msg {
            if t.contains("\"synced\"") {
                break;
            }
        }
    }
    ready.wait().await;
    let key = format!("{client_id}/Shape");
    let (mut sink, mut stream) = ws.split();
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(args.window.max(1)));
    let writer = {
        let (sent, run, in_flight) = (sent.clone(), run.clone(), in_flight.clone());
        let closed_loop = interval.is_none();
        tokio::spawn(async move {
            let mut seq = 0u64;
            let first = format!(
                r#"{{"type":"patch","messageId":"0","documentPatches":[{{"{key}":{{"_exists":true,"x":0,"y":0,"t":0}}}}]}}"#
            );
            let _ = sink.send(Message::text(first)).await;
            let mut ticker = interval.map(|i| {
                let mut t = tokio::time::interval(i);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            while !run.stop.load(Ordering::Relaxed) {
                if closed_loop {
                    match in_flight.clone().acquire_owned().await {
                        Ok(permit) => permit.forget(),
                        Err(_) => break,
                    }
                } else if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                seq += 1;
                let frame = format!(
                    r#"{{"type":"patch","messageId":"{seq}","documentPatches":[{{"{key}":{{"x":{seq},"y":{},"t":{}}}}}]}}"#,
                    seq % 500,
                    now_micros(start)
                );
                sent.lock().expect("sent").insert(seq, Instant::now());
                if sink.send(Message::text(frame)).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        })
    };
    let mut local = Stats::default();
    let measuring_from = Instant::now() + Duration::from_millis(500);
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(frame) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        match frame["type"].as_str() {
            Some("ack") => {
                let seq = frame["messageId"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                if let Some(at) = sent.lock().expect("sent").remove(&seq) {
                    if at >= measuring_from {
                        local.acks.push(micros(at.elapsed()));
                    }
                }
                in_flight.add_permits(1);
            }
            Some("patch") if frame["clientId"] != "" => {
                let sent_at = frame["documentPatches"][0]
                    .as_object()
                    .and_then(|p| p.values().next())
                    .and_then(|c| c["t"].as_u64());
                if let Some(t) = sent_at.filter(|_| Instant::now() >= measuring_from) {
                    let delay = now_micros(start).saturating_sub(t);
                    local.broadcasts.push(delay.min(u32::MAX as u64) as u32);
                }
            }
            _ => {}
        }
        if run.stop.load(Ordering::Relaxed) && sent.lock().expect("sent").is_empty() {
            break;
        }
    }
    writer.abort();
    let mut stats = stats.lock().expect("stats");
    stats.acks.extend(local.acks);
    stats.broadcasts.extend(local.broadcasts);
}

fn server_usage(pid: Option<u32>) -> Option<(f64, u64)> {
    let pid = pid?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks / 100.0, rss_kib))
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let server_pid: Option<u32> = std::env::var("WEFT_LOAD_SERVER_PID")
        .ok()
        .and_then(|p| p.parse().ok());
    let total = args.rooms * args.clients;
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(total as f64 / args.rate));
    let run = Arc::new(Run {
        args: args.clone(),
        start: Instant::now(),
        ready: Barrier::new(total + 1),
        stop: AtomicBool::new(false),
        interval,
        stats: Mutex::new(Stats::default()),
    });
    let mut tasks = Vec::new();
    for room in 0..args.rooms {
        for index in 0..args.clients {
            tasks.push(tokio::spawn(client(run.clone(), room, index)));
        }
    }
    run.ready.wait().await;
    let cpu_before = server_usage(server_pid);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_millis(500) + Duration::from_secs(args.duration_secs)).await;
    let measured = t0.elapsed().saturating_sub(Duration::from_millis(500));
    let cpu_after = server_usage(server_pid);
    run.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let mut stats = run.stats.lock().expect("stats");
    stats.acks.sort_unstable();
    stats.broadcasts.sort_unstable();
    let secs = measured.as_secs_f64();
    let acked_per_sec = stats.acks.len() as f64 / secs;
    let cpu = match (cpu_before, cpu_after) {
        (Some((a, _)), Some((b, rss))) => Some(((b - a) / secs * 100.0, rss)),
        _ => None,
    };
    let report = json!({
        "rooms": args.rooms,
        "clients_per_room": args.clients,
        "mode": if interval.is_some() { "open" } else { "closed" },
        "offered_per_sec": args.rate,
        "window": args.window,
        "seconds": secs,
        "acked_per_sec": acked_per_sec,
        "ack_ms": {"p50": percentile(&stats.acks, 0.5), "p99": percentile(&stats.acks, 0.99), "p999": percentile(&stats.acks, 0.999)},
        "broadcast_ms": {"p50": percentile(&stats.broadcasts, 0.5), "p99": percentile(&stats.broadcasts, 0.99), "p999": percentile(&stats.broadcasts, 0.999)},
        "broadcasts": stats.broadcasts.len(),
        "errors": stats.errors,
        "server_cpu_percent": cpu.map(|c| c.0),
        "server_rss_kib": cpu.map(|c| c.1),
    });
    println!(
        "{:>8} {:>10} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "mode", "offered/s", "acked/s", "ack p50", "ack p99", "bc p50", "bc p99", "bc p99.9"
    );
    println!(
        "{:>8} {:>10.0} {:>12.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        report["mode"].as_str().unwrap_or(""),
        args.rate,
        acked_per_sec,
        percentile(&stats.acks, 0.5),
        percentile(&stats.acks, 0.99),
        percentile(&stats.broadcasts, 0.5),
        percentile(&stats.broadcasts, 0.99),
        percentile(&stats.broadcasts, 0.999),
    );
    println!("{report}");
}
