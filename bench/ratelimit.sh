#!/usr/bin/env bash
# Benchmark: orch's shared rate limit against the two usual alternatives, in one run, judged by
# the API itself. The referee is the `limited-api` test server with the limit's own rate and
# burst: it answers 429 to every call over its bucket and records when each accepted call
# arrived. The clients (worker/examples/ratelimit_bench.rs) are PROCESSES processes with 4
# calls in flight each, calling as fast as their limiter allows for SECONDS:
#
#   orch      orch's bucket (SQLite under a storage directory) leased by every process
#   split     the per-worker split: each process limited to rate/PROCESSES (governor)
#   governor  one process, every caller behind one in-process governor limiter (the ideal)
#
# Each runs twice: all processes for the whole time, and "uneven", where half of them stop
# halfway (a per-worker split cannot give their share to the others).
#
#   bench/ratelimit.sh [RATE] [BURST] [PROCESSES] [SECONDS]     default 50 20 4 30
#
# Prints a Markdown table for docs/benchmarks.md. Needs python3 (stdlib).
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-50}
BURST=${2:-20}
PROCESSES=${3:-4}
SECONDS_=${4:-30}

cargo build --release -q -p orch-testkit --bin limited-api
cargo build --release -q -p orch-worker --example ratelimit_bench
release="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release"

work=$(mktemp -d)
api_pid=
cleanup() {
    if [ -n "$api_pid" ]; then kill "$api_pid" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$release/limited-api" --rate "$RATE" --burst "$BURST" > "$work/api.out" &
api_pid=$!
for _ in $(seq 100); do [ -s "$work/api.out" ] && break; sleep 0.05; done
url=$(head -1 "$work/api.out")

echo "| limiter | load | calls/s accepted (target $RATE) | accuracy | refused (429) | most in 1 s (limit $((RATE + BURST))) | bucket writes per 100 calls |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for uneven in "" "--uneven"; do
    for mode in orch split governor; do
        curl -s -X POST "$url/_reset" > /dev/null
        rm -rf "$work/storage"
        client=$("$release/examples/ratelimit_bench" --mode "$mode" --url "$url" \
            --rate "$RATE" --burst "$BURST" --processes "$PROCESSES" \
            --seconds "$SECONDS_" --storage "$work/storage" $uneven)
        curl -s "$url/_stats" > "$work/stats.json"
        python3 - "$work/stats.json" "$client" "$RATE" "$mode" "${uneven:+uneven}" <<'PY'
import json, sys
stats = json.load(open(sys.argv[1]))
client = json.loads(sys.argv[2])
rate, mode, load = float(sys.argv[3]), sys.argv[4], sys.argv[5] or "even"
arrivals = stats["arrivals"]
# The steady part: from 5 s after the first call to the last one.
first, last = arrivals[0], arrivals[-1]
steady = [t for t in arrivals if t >= first + 5]
accepted = len(steady) / (last - first - 5)
most, start = 0, 0
for end, t in enumerate(arrivals):
    while arrivals[start] + 1.0 <= t:
        start += 1
    most = max(most, end + 1 - start)
writes = "%.2f" % (100.0 * client["writes"] / max(1, stats["accepted"])) if mode == "orch" else "–"
print(f"| {mode} | {load} | {accepted:.1f} | {100 * accepted / rate:.1f} % | {stats['rejected']} | {most} | {writes} |")
PY
    done
done
