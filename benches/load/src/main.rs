//! `weft-load`: a load generator for canvas-store servers (weft, the npm reference server,
//! `weft-ceiling`).
//!
//! Scenarios (`--scenario`):
//! - `busy`: 10 rooms x 10 editors, 3,000 patches/s offered in total (30 Hz each);
//! - `large-room`: 1 room x 200 clients at 2 patches/s each;
//! - `many-small`: 1,000 rooms x 2 clients at 1 patch/s each;
//! - `idle`: 10,000 connections that sync and then idle: server memory per connection;
//! - `reconnect-storm`: 1,000 clients go offline while others edit, then reconnect at once;
//! - `large-doc`: one room of 100,000 components: first join and reconnect-diff times;
//! - `game`: EdgeBase game rooms (`battle`), 10 rooms x 10 players, 1,000 actions/s in total;
//!   `--game-action attack` (default) or `next-round` (see `game.rs`).
//!
//! `--rooms`, `--clients` and `--rate` override a scenario's sizes. Editing scenarios run open
//! loop (a fixed offered rate; latency counts from when a patch was due, so it stays honest when
//! the server falls behind) or closed loop with `--rate 0` (`--window` patches in flight per
//! editor). `--traffic mixed` sends a realistic editing mix instead of moves only.
//!
//! ```text
//! weft-load --url ws://127.0.0.1:8787 --scenario busy --rate 5000 --duration-secs 5 \
//!     --server-pid $(pgrep -n weft) --json-out result.json
//! ```

mod client;
mod game;
mod scenarios;
mod stats;
mod traffic;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use serde_json::{json, Value};

use scenarios::{Target, TrafficSpec};
use traffic::Traffic;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Busy,
    LargeRoom,
    ManySmall,
    Idle,
    ReconnectStorm,
    LargeDoc,
    /// Game rooms (EdgeBase protocol, `battle` namespace): ATTACK actions.
    Game,
}

impl Scenario {
    /// Default (rooms, clients per room, offered patches/s).
    fn sizes(self) -> (usize, usize, f64) {
        match self {
            Scenario::Busy => (10, 10, 3000.0),
            Scenario::LargeRoom => (1, 200, 400.0),
            Scenario::ManySmall => (1000, 2, 2000.0),
            Scenario::Idle => (1000, 10, 0.0),
            Scenario::ReconnectStorm => (10, 100, 0.0),
            Scenario::LargeDoc => (1, 1, 0.0),
            Scenario::Game => (10, 10, 1000.0),
        }
    }
}

#[derive(Parser, Debug, Clone)]
#[command(about = "Load generator for weft and other canvas-store servers")]
struct Args {
    /// Server base URL.
    #[arg(long, default_value = "ws://127.0.0.1:8787")]
    url: String,
    #[arg(long, value_enum, default_value = "busy")]
    scenario: Scenario,
    /// Rooms (default: the scenario's).
    #[arg(long)]
    rooms: Option<usize>,
    /// Clients per room (default: the scenario's).
    #[arg(long)]
    clients: Option<usize>,
    /// Total offered patches per second, open loop (default: the scenario's); 0: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Closed loop: patches in flight per client.
    #[arg(long, default_value_t = 4)]
    window: usize,
    #[arg(long, value_enum, default_value = "moves")]
    traffic: Traffic,
    /// Measured seconds (editing scenarios).
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Sending before measuring starts, so connections and caches are warm.
    #[arg(long, default_value_t = 1000)]
    warmup_ms: u64,
    /// After the window, how long to wait for outstanding acks.
    #[arg(long, default_value_t = 5000)]
    drain_ms: u64,
    /// game: the action every player sends.
    #[arg(long, value_enum, default_value = "attack")]
    game_action: game::GameAction,
    /// Token query parameter, for servers that want one.
    #[arg(long, default_value = "load")]
    token: String,
    /// Room id prefix; a random suffix keeps runs against one server apart.
    #[arg(long, default_value = "load")]
    room_prefix: String,
    /// Connects (with their sync) in progress at once while setting up.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// The server's process id, for its CPU and memory (from /proc).
    #[arg(long, env = "WEFT_LOAD_SERVER_PID")]
    server_pid: Option<u32>,
    /// idle: wait this long after the last sync before reading the server's memory.
    #[arg(long, default_value_t = 3000)]
    settle_ms: u64,
    /// reconnect-storm: edits per room while the clients are offline.
    #[arg(long, default_value_t = 200)]
    offline_edits: usize,
    /// large-doc: components seeded into the room.
    #[arg(long, default_value_t = 100_000)]
    components: usize,
    /// large-doc: components per seeding request.
    #[arg(long, default_value_t = 1000)]
    seed_batch: usize,
    /// large-doc: edits between a client's leave and its reconnect.
    #[arg(long, default_value_t = 100)]
    edits: usize,
    /// large-doc: how many joins and reconnects to time.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// A label carried into the JSON report (e.g. the server's name).
    #[arg(long, default_value = "")]
    label: String,
    /// A tag carried into the JSON report (e.g. `sweep`), for scripts that collect reports.
    #[arg(long, default_value = "")]
    tag: String,
    /// Also write the JSON report to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(&args))?;
    print_table(&report);
    println!("{report}");
    if let Some(path) = &args.json_out {
        std::fs::write(path, format!("{report:#}\n"))?;
    }
    Ok(())
}

async fn run(args: &Args) -> anyhow::Result<Value> {
    let (rooms, clients, rate) = args.scenario.sizes();
    let rooms = args.rooms.unwrap_or(rooms);
    let clients = args.clients.unwrap_or(clients);
    let rate = args.rate.unwrap_or(rate);
    // Every connection is a socket here; editors and the reconnect storm need a few more.
    let needed = (rooms * clients + rooms + 64) as u64;
    let fd_limit = stats::raise_fd_limit();
    if fd_limit < needed {
        eprintln!(
            "weft-load: open-files limit {fd_limit} < {needed} sockets needed; raise it (ulimit -n)"
        );
    }
    let target = Target {
        url: args.url.clone(),
        token: args.token.clone(),
        rooms: format!("{}-{}", args.room_prefix, run_nonce()),
        connect_concurrency: args.connect_concurrency,
        server_pid: args.server_pid,
    };
    let spec = TrafficSpec {
        rooms,
        clients,
        rate,
        window: args.window,
        traffic: args.traffic,
        warmup: Duration::from_millis(args.warmup_ms),
        duration: Duration::from_secs_f64(args.duration_secs),
        drain: Duration::from_millis(args.drain_ms),
    };
    let result = match args.scenario {
        Scenario::Busy | Scenario::LargeRoom | Scenario::ManySmall => {
            scenarios::traffic(&target, spec).await
        }
        Scenario::Idle => {
            scenarios::idle(
                &target,
                rooms,
                clients,
                Duration::from_millis(args.settle_ms),
            )
            .await
        }
        Scenario::ReconnectStorm => {
            scenarios::reconnect_storm(&target, rooms, clients, args.offline_edits, args.traffic)
                .await
        }
        Scenario::Game => {
            let spec = game::GameSpec {
                action: args.game_action,
                rooms,
                players: clients,
                rate,
                warmup: Duration::from_millis(args.warmup_ms),
                duration: Duration::from_secs_f64(args.duration_secs),
                drain: Duration::from_millis(args.drain_ms),
            };
            game::game(&target, spec).await
        }
        Scenario::LargeDoc => {
            scenarios::large_doc(
                &target,
                args.components,
                args.seed_batch,
                args.edits,
                args.repeat,
            )
            .await
        }
    };
    let mut report = json!({
        "scenario": args.scenario.to_possible_value().map(|v| v.get_name().to_owned()),
        "label": args.label,
        "tag": args.tag,
        "url": args.url,
        "server_pid": args.server_pid,
        "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    });
    if let (Some(out), Some(fields)) = (report.as_object_mut(), result.as_object()) {
        out.extend(fields.clone());
    }
    Ok(report)
}

/// A short random-enough suffix (time and pid) for room ids.
fn run_nonce() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mixed = traffic::Rng::new(nanos as u64 ^ u64::from(std::process::id())).next_u64();
    format!("{:06x}", mixed & 0xFF_FFFF)
}

/// A human-readable summary of the report on stdout (the JSON line follows it).
fn print_table(r: &Value) {
    let f = |v: &Value| match v.as_f64() {
        Some(x) => format!("{x:.2}"),
        None => "-".into(),
    };
    let lat = |name: &str, v: &Value| {
        println!(
            "  {name:<18} p50 {:>9}  p99 {:>9}  p99.9 {:>9}  max {:>9}  (n={})",
            f(&v["p50"]),
            f(&v["p99"]),
            f(&v["p999"]),
            f(&v["max"]),
            v["count"].as_u64().map_or("-".into(), |n| n.to_string()),
        )
    };
    println!(
        "weft-load {} {}",
        r["scenario"].as_str().unwrap_or(""),
        r["label"].as_str().unwrap_or("")
    );
    match r["scenario"].as_str() {
        Some("busy" | "large-room" | "many-small") => {
            println!(
                "  {} x {} clients, {} traffic, {} loop, {} s measured",
                r["rooms"], r["clients_per_room"], r["traffic"].as_str().unwrap_or(""),
                r["mode"].as_str().unwrap_or(""), f(&r["seconds"])
            );
            println!(
                "  offered/s {:>10}  acked/s {:>10}  unacked {}  broadcasts/s {:>10}  delivery {}",
                f(&r["offered_per_sec"]),
                f(&r["acked_per_sec"]),
                r["unacked"],
                f(&r["broadcasts_per_sec"]),
                f(&r["broadcast_delivery"]),
            );
            lat("ack ms", &r["ack_ms"]);
            lat("broadcast ms", &r["broadcast_ms"]);
            if r["mode"] == "open" {
                lat("send lag ms", &r["send_lag_ms"]);
            }
            println!(
                "  server cpu% {}  rss KiB {}  load-generator cpu% {}  connect errors {}  disconnects {} {}",
                f(&r["server"]["cpu_percent"]),
                r["server"]["rss_kib"],
                f(&r["load_generator"]["cpu_percent"]),
                r["connect_errors"],
                r["disconnects"],
                r["disconnect_reasons"],
            );
        }
        Some("game") => {
            println!(
                "  {} rooms x {} players (battle), {} actions, open loop, {} s measured",
                r["rooms"],
                r["clients_per_room"],
                r["action"].as_str().unwrap_or(""),
                f(&r["seconds"])
            );
            println!(
                "  offered/s {:>10}  results/s {:>10}  broadcasts/s {:>10}  errors {}  connect errors {}",
                f(&r["offered_per_sec"]),
                f(&r["acked_per_sec"]),
                f(&r["broadcasts_per_sec"]),
                r["errors"],
                r["connect_errors"],
            );
            lat("action ms", &r["ack_ms"]);
            lat("broadcast ms", &r["broadcast_ms"]);
            println!(
                "  server cpu% {}  rss KiB {}  load-generator cpu% {}",
                f(&r["server"]["cpu_percent"]),
                r["server"]["rss_kib"],
                f(&r["load_generator"]["cpu_percent"]),
            );
        }
        Some("idle") => println!(
            "  {} connections ({} failed) in {} s; server RSS {} -> {} KiB: {} KiB per connection; idle cpu% {}",
            r["connections"],
            r["failed"],
            f(&r["connect_secs"]),
            r["rss_before_kib"],
            r["rss_after_kib"],
            f(&r["kib_per_connection"]),
            f(&r["idle"]["cpu_percent"]),
        ),
        Some("reconnect-storm") => {
            println!(
                "  {} reconnected ({} failed, {} with a diff) after {} edits per room; all synced after {} ms",
                r["reconnected"], r["failed"], r["with_diff"], r["edits_per_room"], f(&r["all_synced_ms"])
            );
            lat("reconnect->synced", &r["reconnect_to_synced_ms"]);
        }
        Some("large-doc") => println!(
            "  {} components seeded in {} s; first join p50 {} ms ({} bytes); reconnect diff after {} edits p50 {} ms ({} bytes)",
            r["components"],
            f(&r["seed_secs"]),
            f(&r["first_join_ms"]["p50"]),
            r["first_join_bytes"],
            r["edits"],
            f(&r["reconnect_diff_ms"]["p50"]),
            r["reconnect_diff_bytes"],
        ),
        _ => {}
    }
}
