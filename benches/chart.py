#!/usr/bin/env python3
"""Draws throughput, broadcast p99 and server CPU against offered load from a compare.sh
results file.

    python benches/chart.py benches/results/DATE.json benches/results/throughput-p99.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402

SERIES = [
    # label, legend, style
    ("weft-memory", "weft (memory)", {"color": "tab:blue", "marker": "o"}),
    ("weft-rocksdb", "weft (RocksDB, WAL before ack)", {"color": "tab:green", "marker": "s"}),
    ("weft-file", "weft (file)", {"color": "tab:olive", "marker": "^", "linestyle": "--"}),
    ("ref-memory", "reference (memory)", {"color": "tab:red", "marker": "o"}),
    ("ref-file", "reference (file)", {"color": "tab:orange", "marker": "^", "linestyle": "--"}),
    ("ceiling", "bare broadcast ceiling", {"color": "tab:gray", "marker": "x"}),
]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        results = json.load(f)
    servers = results["summary"]["servers"]
    limit = results["summary"].get("p99_limit_ms", 20)
    fig, (ax_tp, ax_p99, ax_cpu) = plt.subplots(1, 3, figsize=(18, 5.2))
    top = 0
    for label, legend, style in SERIES:
        sweep = (servers.get(label) or {}).get("sweep") or []
        if not sweep:
            continue
        offered = [p["offered"] for p in sweep]
        top = max(top, *offered)
        ax_tp.plot(offered, [p["acked"] or 0 for p in sweep], label=legend, **style)
        ax_p99.plot(offered, [p["bc_p99"] for p in sweep], label=legend, **style)
        ax_cpu.plot(offered, [p.get("cpu") for p in sweep], label=legend, **style)
    ax_tp.plot([0, top], [0, top], color="black", linewidth=0.6, linestyle=":", label="offered")
    ax_tp.set_xlabel("offered patches/s (10 rooms x 10 editors)")
    ax_tp.set_ylabel("acked patches/s")
    ax_tp.set_title("Throughput")
    ax_tp.grid(alpha=0.3)
    ax_tp.legend(fontsize=8)
    ax_p99.axhline(limit, color="black", linewidth=0.8, linestyle="--", label=f"{limit:g} ms")
    ax_p99.set_yscale("log")
    ax_p99.set_xlabel("offered patches/s (10 rooms x 10 editors)")
    ax_p99.set_ylabel("sender -> peer broadcast p99 (ms, log)")
    ax_p99.set_title("Broadcast latency p99")
    ax_p99.grid(alpha=0.3, which="both")
    ax_p99.legend(fontsize=8)
    # In open loop every server acks everything eventually; what it costs shows here.
    ax_cpu.set_xlabel("offered patches/s (10 rooms x 10 editors)")
    ax_cpu.set_ylabel("server CPU (% of one core)")
    ax_cpu.set_title("Server CPU")
    ax_cpu.grid(alpha=0.3)
    ax_cpu.legend(fontsize=8)
    m = results.get("machine", {})
    note = f"{m.get('cpu', '?')}, {m.get('nproc', '?')} CPUs; load avg before {m.get('loadavg_before')}, after {m.get('loadavg_after')}"
    fig.suptitle(f"weft vs reference canvas-store server vs bare ceiling\n{note}", fontsize=9)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
