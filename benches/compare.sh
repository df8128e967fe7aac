#!/usr/bin/env bash
# Benchmarks weft against the npm reference server (@woven-ecs/canvas-store-server) and a bare
# WebSocket broadcast server (weft-ceiling), all driven by weft-load on this machine, and prints
# every result as a ratio to its baseline from the same run.
#
#   benches/compare.sh            # full run, ~30 min (each editing point 3 times)
#   benches/compare.sh --repeat 1 # full run, ~12 min, noisier on a busy machine
#   benches/compare.sh --quick    # smoke run, ~1-2 min: 2 rates, short points, small scenarios
#
# Options:
#   --quick             short smoke run
#   --repeat N          run each editing point N times and keep the run with the median p99
#                       (default 3 for a full run, 1 for --quick; file backends run once): other
#                       work on the machine shows up as outliers, rarely in two runs of three
#   --pin               pin each server to CPU 1 and weft-load to CPU 0 (needs 2+ CPUs): steadier
#                       numbers, but every server then gets exactly one core
#   --servers "A B ..." run only these servers, in every scenario (ceiling ref-memory ref-file
#                       weft-memory weft-rocksdb weft-file); default: all
#   --out DIR           where results go (default benches/results)
#   --no-chart          skip the matplotlib chart (and the venv it needs)
#
# Writes DIR/<date>.json (every weft-load report plus a summary) and DIR/throughput-p99.png.
# Set CARGO_TARGET_DIR to reuse a build directory.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
QUICK=0
REPEAT=""
PIN=0
CHART=1
OUT="$ROOT/benches/results"
ALL_SERVERS="ceiling ref-memory ref-file weft-memory weft-rocksdb weft-file"
SERVERS=$ALL_SERVERS
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --pin) PIN=1 ;;
        --no-chart) CHART=0 ;;
        --servers) SERVERS=$2; shift ;;
        --repeat) REPEAT=$2; shift ;;
        --out) OUT=$2; shift ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

if [ "$QUICK" = 1 ]; then
    RATES="1000 5000"
    POINT_SECS=2
    IDLE_ROOMS=100          # x 10 clients
    STORM_ROOMS=2           # x 100 clients
    DOC_COMPONENTS=10000
    MANY_SMALL_ROOMS=100
    REPEAT=${REPEAT:-1}
else
    RATES="1000 2500 5000 7500 10000 15000 20000 30000 40000 50000 60000 75000 100000 125000 150000"
    POINT_SECS=5
    IDLE_ROOMS=1000         # 10,000 idle connections
    STORM_ROOMS=10          # 1,000 clients
    DOC_COMPONENTS=100000
    MANY_SMALL_ROOMS=1000
    REPEAT=${REPEAT:-3}
fi
# A sweep stops after this many points with broadcast p99 above 100 ms.
MAX_BAD_POINTS=2
# weft's edge limits protect production servers from abusive clients; a benchmark drives
# clients far faster than 100 messages/s, and the reference server has no such limits.
WEFT_LIMITS=(--messages-per-second 10000000 --message-burst 10000000
    --max-connections 1000000 --max-connections-per-ip 1000000 --outbound-queue-bytes 1073741824)

log() { printf '\n== %s\n' "$*" >&2; }

# --- Setup --------------------------------------------------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/weft-bench.XXXXXX")
POINTS="$WORK/points"
mkdir -p "$POINTS" "$OUT"
SERVER_PID=""
cleanup() {
    stop_server
    rm -rf "$WORK/data"
}
trap cleanup EXIT

log "building release binaries"
(cd "$ROOT" && cargo build --release -p weft -p weft-load)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
# Copies, so a rebuild during the run cannot swap a binary under it.
mkdir -p "$WORK/bin"
cp "$TARGET_DIR/release/weft" "$TARGET_DIR/release/weft-load" "$TARGET_DIR/release/weft-ceiling" "$WORK/bin/"
WEFT="$WORK/bin/weft"
LOAD="$WORK/bin/weft-load"
CEILING="$WORK/bin/weft-ceiling"

INTEROP="$ROOT/tests/interop"
if [ ! -d "$INTEROP/node_modules/@woven-ecs/canvas-store-server" ]; then
    log "installing the reference server (npm ci in tests/interop)"
    (cd "$INTEROP" && npm ci --no-audit --no-fund)
fi

# Thousands of sockets on each side: the servers started below inherit this limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 25000 ]; then
    echo "compare.sh: open-files limit is $(ulimit -n); the idle scenario needs ~10,100 per process" >&2
fi

if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ]; then
    SERVER_CPU=(taskset -c 1)
    LOAD_CPU=(taskset -c 0)
else
    SERVER_CPU=()
    LOAD_CPU=()
fi

machine_json() {
    local when=$1
    python3 - "$when" <<'PY'
import json, os, platform, subprocess, sys
def first(path, key):
    try:
        for line in open(path):
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
print(json.dumps({
    "when": sys.argv[1],
    "nproc": os.cpu_count(),
    "cpu": first("/proc/cpuinfo", "model name"),
    "mem_total": first("/proc/meminfo", "MemTotal"),
    "kernel": platform.release(),
    "loadavg": open("/proc/loadavg").read().split()[:3],
    "node": subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip(),
    # The weft measured: its commit, and whether the work tree had changes on top of it.
    "commit": subprocess.run(["git", "-C", os.environ["ROOT"], "describe", "--always", "--dirty"],
                             capture_output=True, text=True).stdout.strip(),
}))
PY
}
export ROOT
LOAD_BEFORE=$(machine_json before)
echo "machine: $LOAD_BEFORE" >&2

# --- Servers ------------------------------------------------------------------------------------

# start_server NAME: starts a fresh server (empty data directory); sets SERVER_PID and SERVER_URL.
start_server() {
    local name=$1 data="$WORK/data/$1" out="$WORK/$1.out" err="$WORK/$1.err"
    rm -rf "$data"
    mkdir -p "$data"
    # A stale `listening on` line from an earlier start must not be read before the new
    # process truncates the file.
    rm -f "$out"
    case "$name" in
        ceiling) "${SERVER_CPU[@]}" "$CEILING" --addr 127.0.0.1:0 >"$out" 2>"$err" & ;;
        ref-memory) (cd "$INTEROP" && exec "${SERVER_CPU[@]}" node reference-server.mjs --port 0 --storage memory) >"$out" 2>"$err" & ;;
        ref-file) (cd "$INTEROP" && exec "${SERVER_CPU[@]}" node reference-server.mjs --port 0 --storage file --data-dir "$data") >"$out" 2>"$err" & ;;
        weft-memory) "${SERVER_CPU[@]}" "$WEFT" serve --storage memory --data-dir "$data" --addr 127.0.0.1:0 --auth none "${WEFT_LIMITS[@]}" >"$out" 2>"$err" & ;;
        weft-rocksdb) "${SERVER_CPU[@]}" "$WEFT" serve --storage rocksdb --durability process-crash --data-dir "$data" --addr 127.0.0.1:0 --auth none "${WEFT_LIMITS[@]}" >"$out" 2>"$err" & ;;
        weft-file) "${SERVER_CPU[@]}" "$WEFT" serve --storage file --data-dir "$data" --addr 127.0.0.1:0 --auth none "${WEFT_LIMITS[@]}" >"$out" 2>"$err" & ;;
        *) echo "compare.sh: unknown server $name" >&2; return 1 ;;
    esac
    SERVER_PID=$!
    local addr=""
    for _ in $(seq 1 300); do
        addr=$(awk '/^listening on /{print $3; exit}' "$out" 2>/dev/null || true)
        [ -n "$addr" ] && break
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
        sleep 0.1
    done
    if [ -z "$addr" ]; then
        echo "compare.sh: $name did not start:" >&2
        tail -n 20 "$err" >&2 || true
        SERVER_PID=""
        return 1
    fi
    SERVER_URL="ws://$addr"
}

stop_server() {
    [ -n "${SERVER_PID:-}" ] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

# load NAME TAG ARGS...: one weft-load run against the current server; its report goes to
# $POINTS/NAME--TAG.json. Fails if the server died during the run.
load() {
    local name=$1 tag=$2
    shift 2
    local file="$POINTS/$name--$tag.json"
    if ! "${LOAD_CPU[@]}" "$LOAD" --url "$SERVER_URL" --server-pid "$SERVER_PID" --label "$name" \
        --tag "$tag" --json-out "$file" "$@" >"$WORK/last-load.out" 2>"$WORK/last-load.err"; then
        echo "compare.sh: weft-load failed ($name $tag):" >&2
        tail -n 5 "$WORK/last-load.err" >&2
        rm -f "$file"
    fi
    sed -n '1,9p' "$WORK/last-load.out" | grep -v '^{' >&2 || true
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "compare.sh: $name died during $tag" >&2
        tail -n 5 "$WORK/$name.err" >&2 || true
        SERVER_PID=""
        return 1
    fi
}

# median_p99 NAME TAG: the median broadcast p99 (ms) of the reports NAME--TAG-*.json (a
# missing report counts as 1e9).
median_p99() {
    python3 -c 'import json,sys
vals = []
for path in sys.argv[1:]:
    try: v = json.load(open(path))["broadcast_ms"]["p99"]
    except Exception: v = None
    vals.append(1e9 if v is None else v)
vals.sort()
print(vals[len(vals) // 2] if vals else 1e9)' "$POINTS/$1--$2"-*.json
}

# repeat_load COUNT NAME TAG ARGS...: COUNT runs of one point, as TAG-1, TAG-2, ...; restarts a
# server that died (fails if it cannot).
repeat_load() {
    local count=$1 name=$2 tag=$3
    shift 3
    for i in $(seq 1 "$count"); do
        load "$name" "$tag-$i" "$@" || start_server "$name" || return 1
    done
}

has() { case " $SERVERS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# --- Runs ---------------------------------------------------------------------------------------

# Busy rooms (10 x 10 editors, moves): offered load sweep until p99 stays above 100 ms.
for server in $ALL_SERVERS; do
    has "$server" || continue
    log "busy-room sweep: $server"
    start_server "$server" || continue
    bad=0
    runs=$REPEAT
    extra=()
    case "$server" in
        *-file) runs=1 ;;
    esac
    # The reference creates one room per connect when first connects to an unloaded room race
    # (async file load): clients end up in split rooms and miss broadcasts. Connecting one at a
    # time sidesteps that bug, so its numbers describe a working room.
    [ "$server" = ref-file ] && extra=(--connect-concurrency 1)
    for rate in $RATES; do
        repeat_load "$runs" "$server" "sweep-$rate" --scenario busy --rate "$rate" \
            --duration-secs "$POINT_SECS" "${extra[@]}" || break
        if python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > 100 else 1)' "$(median_p99 "$server" "sweep-$rate")"; then
            bad=$((bad + 1))
            [ "$bad" -ge "$MAX_BAD_POINTS" ] && break
        fi
    done
    # Same rooms, a realistic mix (cursors, moves, strokes as buffer deltas, creates, deletes).
    case "$server" in
        ref-memory|weft-memory|weft-rocksdb|ceiling)
            if [ -n "$SERVER_PID" ]; then
                log "busy rooms, mixed traffic at 5,000/s: $server"
                repeat_load "$REPEAT" "$server" "mixed-5000" --scenario busy --traffic mixed --rate 5000 --duration-secs "$POINT_SECS" || true
            fi ;;
    esac
    stop_server
done

# One large room (200 clients at 2 patches/s) and many small rooms, each on a fresh server.
for server in ceiling ref-memory weft-memory weft-rocksdb; do
    has "$server" || continue
    log "large room: $server"
    start_server "$server" || continue
    repeat_load "$REPEAT" "$server" large-room --scenario large-room --duration-secs "$POINT_SECS" || true
    stop_server
    [ "$server" = ceiling ] && continue
    log "many small rooms: $server"
    start_server "$server" || continue
    repeat_load "$REPEAT" "$server" many-small --scenario many-small --rooms "$MANY_SMALL_ROOMS" --duration-secs "$POINT_SECS" || true
    stop_server
done

# Idle memory per connection, on a fresh server so nothing else is in its RSS.
for server in ceiling ref-memory weft-memory; do
    has "$server" || continue
    log "idle connections: $server"
    start_server "$server" || continue
    sleep 1
    load "$server" idle --scenario idle --rooms "$IDLE_ROOMS" --clients 10 || true
    stop_server
done

# Reconnect storm and large document (document logic: not for the ceiling).
for server in ref-memory weft-memory weft-rocksdb; do
    has "$server" || continue
    log "reconnect storm: $server"
    start_server "$server" || continue
    load "$server" reconnect-storm --scenario reconnect-storm --rooms "$STORM_ROOMS" --clients 100 || true
    stop_server
    log "large document: $server"
    start_server "$server" || continue
    load "$server" large-doc --scenario large-doc --components "$DOC_COMPONENTS" || true
    stop_server
done

# --- Results ------------------------------------------------------------------------------------

LOAD_AFTER=$(machine_json after)
python3 - "$WORK/machine.json" "$LOAD_BEFORE" "$LOAD_AFTER" "$QUICK" "$PIN" "$POINT_SECS" "$REPEAT" <<'PY'
import json, sys
path, before, after, quick, pin, secs, repeat = sys.argv[1:]
m = json.loads(before)
m["loadavg_before"] = m.pop("loadavg")
m["loadavg_after"] = json.loads(after)["loadavg"]
m.update({"quick": quick == "1", "pinned": pin == "1", "point_secs": float(secs), "repeat": int(repeat)})
json.dump(m, open(path, "w"))
PY
STAMP=$(date -u +%Y-%m-%dT%H%MZ)
RESULT="$OUT/$STAMP.json"
python3 "$ROOT/benches/report.py" --points "$POINTS" --machine "$WORK/machine.json" --out "$RESULT"
echo >&2
echo "results: $RESULT" >&2
echo "load average before: $(echo "$LOAD_BEFORE" | python3 -c 'import json,sys; print(json.load(sys.stdin)["loadavg"])'), after: $(echo "$LOAD_AFTER" | python3 -c 'import json,sys; print(json.load(sys.stdin)["loadavg"])')" >&2

if [ "$CHART" = 1 ]; then
    VENV=${WEFT_BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/weft-bench-venv}
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating a Python venv for the chart in $VENV"
        if ! python3 -m venv "$VENV" 2>/dev/null; then
            # Debian/Ubuntu ship venv separately.
            if command -v apt-get >/dev/null; then
                apt-get install -y python3-venv >/dev/null || { apt-get update >/dev/null && apt-get install -y python3-venv >/dev/null; }
            fi
            python3 -m venv "$VENV"
        fi
    fi
    if ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
        "$VENV/bin/pip" install --quiet matplotlib
    fi
    "$VENV/bin/python" "$ROOT/benches/chart.py" "$RESULT" "$OUT/throughput-p99.png"
    echo "chart: $OUT/throughput-p99.png" >&2
fi
