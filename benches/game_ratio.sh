#!/usr/bin/env bash
# Server CPU of a game action against a canvas patch, each shown to 9 peers (issue 11), for two
# weft release binaries in the same run, interleaved: 100 rooms x 10 clients at 5,000 requests/s
# of canvas `busy` patches, battle ATTACK actions and battle NEXT_ROUND actions, with memory and
# RocksDB storage, ROUNDS times. One JSON report per run in OUTDIR; then a summary table.
#
# usage: benches/game_ratio.sh OUTDIR ROUNDS WEFT_BASE WEFT_NEW [WEFT_LOAD]
# Copy the binaries out of the target directory first, so that a rebuild cannot swap them.
set -u
OUT=$1; ROUNDS=$2; BASE=$3; NEW=$4; LOAD=${5:-weft-load}
mkdir -p "$OUT"
LIMITS=(--messages-per-second 10000000 --message-burst 10000000 --max-connections 1000000
    --max-connections-per-ip 1000000 --outbound-queue-bytes 1073741824)
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
CASES=(
    "canvas:--scenario busy --rooms 100 --clients 10 --rate 5000"
    "attack:--scenario game --rooms 100 --rate 5000"
    "nextround:--scenario game --rooms 100 --rate 5000 --game-action next-round"
)
start() { # binary storage -> PID URL DATA
    DATA=$(mktemp -d /tmp/weft-ratio.XXXX)
    "$1" serve --storage "$2" --data-dir "$DATA" --addr 127.0.0.1:0 --auth none "${LIMITS[@]}" \
        >"$DATA/out" 2>"$DATA/err" &
    PID=$!
    local addr=""
    for _ in $(seq 1 300); do
        addr=$(awk '/^listening on /{print $3; exit}' "$DATA/out" 2>/dev/null)
        [ -n "$addr" ] && break
        sleep 0.1
    done
    URL="ws://$addr"
}
stop() { kill -TERM "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; rm -rf "$DATA"; }
for round in $(seq 1 "$ROUNDS"); do
    for storage in memory rocksdb; do
        for which in base new; do
            if [ "$which" = base ]; then bin=$BASE; else bin=$NEW; fi
            for case in "${CASES[@]}"; do
                name=${case%%:*}; args=${case#*:}
                start "$bin" "$storage"
                # shellcheck disable=SC2086
                "$LOAD" --url "$URL" $args --duration-secs 5 --server-pid "$PID" \
                    --label "$which-$storage" --json-out "$OUT/$name-$storage-$which-$round.json" \
                    >/dev/null 2>"$OUT/$name-$storage-$which-$round.err"
                stop
            done
        done
    done
done
python3 - "$OUT" <<'EOF'
import collections, glob, json, os, sys
runs = collections.defaultdict(list)
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    case, storage, which, _ = os.path.basename(path)[:-5].split("-")
    report = json.load(open(path))
    runs[(case, storage, which)].append((report["server"]["cpu_percent"], report["ack_ms"]["p99"]))
def mean(xs): return sum(xs) / len(xs)
print("| scenario | storage | build | server CPU (runs) | CPU per request | / canvas | ack p99 ms (runs) |")
print("|---|---|---|---|---|---|---|")
for storage in ("memory", "rocksdb"):
    for which in ("base", "new"):
        canvas = mean([c for c, _ in runs[("canvas", storage, which)]])
        for case in ("canvas", "attack", "nextround"):
            v = runs[(case, storage, which)]
            cpu = mean([c for c, _ in v])
            print(f"| {case} | {storage} | {which} | {cpu:.1f}% ({', '.join(f'{c:.1f}' for c, _ in v)})"
                  f" | {cpu / 100 / 5000 * 1e6:.0f} µs | {cpu / canvas:.2f}"
                  f" | {', '.join(f'{p:.1f}' for _, p in v)} |")
EOF
