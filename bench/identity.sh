#!/usr/bin/env bash
# Benchmark: `orch run` over N small JSONL records with the builtin identity handler, i.e. the
# cost of orch itself (partition, worker start, checkpoint, Parquet results, merge, _SUCCESS),
# next to the peer a researcher would otherwise write: one pyarrow process reading the JSONL
# and writing one Parquet file (C++ JSON reader, no retries, no checkpoints).
#
#   bench/identity.sh [N] [BATCH_SIZE]     default 1000000 records, batches of 50000; `auto`:
#                                          no batch.size (orch sizes batches from the input)
#   ORCH_BIN=DIR bench/identity.sh ...     orch and orch-worker from DIR instead of building here
#   ORCH_BEFORE=DIR RUNS=3 bench/identity.sh ...
#                                          also time the orch in DIR (another commit's build),
#                                          alternating with this one, RUNS times each: CPU time
#                                          (user + sys of the whole tree) per item and medians,
#                                          before and after in the same run
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
BATCH=${2:-50000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ -n "${ORCH_BIN:-}" ]; then
    bin=$(cd "$ORCH_BIN" && pwd)
else
    cargo build --release -q -p orch-cli -p orch-worker
    bin="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release"
fi
python3 -c "import pyarrow" 2>/dev/null || python3 -m pip install --quiet pyarrow

python3 examples/identity-bench/make_data.py "$N" 2>/dev/null
cp examples/identity-bench/data.jsonl "$work/data.jsonl"
bytes=$(stat -c %s "$work/data.jsonl")
if [ "$BATCH" = auto ]; then batch_line="  batch: {}"; else batch_line="  batch: {size: $BATCH}"; fi
cat > "$work/job.yaml" <<YAML
apiVersion: orch.dev/v1alpha1
kind: OrchJob
metadata: {name: identity-bench}
spec:
  input: {uri: data.jsonl}
$batch_line
  handler: {builtin: {name: identity}}
  output: {uri: out}
  executor: {local: {parallelism: 2}}
YAML

now() { date +%s.%N; }

orch=$bin/orch
t0=$(now)
(cd "$work" && /usr/bin/time -f "%M" -o orch.rss "$orch" run --no-progress -v job.yaml >/dev/null 2>orch.log)
t1=$(now)
if [ -n "${ORCH_BEFORE:-}" ]; then
    # Before and after, alternating, each in a fresh directory: wall, user and sys seconds.
    before=$(cd "$ORCH_BEFORE" && pwd)
    : > "$work/pairs"
    for r in $(seq "${RUNS:-3}"); do
        for side in after before; do
            [ "$side" = after ] && b=$bin || b=$before
            d="$work/$side-$r"
            mkdir -p "$d"
            sed "s#uri: data.jsonl#uri: $work/data.jsonl#" "$work/job.yaml" > "$d/job.yaml"
            (cd "$d" && /usr/bin/time -f "$side %e %U %S" -a -o "$work/pairs" "$b/orch" run --no-progress job.yaml >/dev/null)
            rm -rf "$d"
        done
    done
    python3 - "$N" "$work/pairs" <<'PY'
import statistics, sys
n = int(sys.argv[1])
runs = {}
for line in open(sys.argv[2]):
    side, wall, user, sys_ = line.split()
    runs.setdefault(side, []).append((float(wall), (float(user) + float(sys_)) / n * 1e6))
for side in ("after", "before"):
    walls = ", ".join(f"{w:.2f}" for w, _ in runs[side])
    print(f"{side:7} wall median {statistics.median(w for w, _ in runs[side]):6.2f} s, "
          f"CPU {statistics.median(c for _, c in runs[side]):6.2f} µs/item  (runs: {walls})")
after, before = (statistics.median(c for _, c in runs[s]) for s in ("after", "before"))
print(f"after/before CPU per item: {after / before:.2f}x")
PY
fi
# Tasks as planned (with `auto`, orch chose them).
tasks=$(cat "$work"/.orch/jobs/*/batches.jsonl | wc -l)
rows=$(python3 -c "import pyarrow.dataset as ds, sys; print(ds.dataset(sys.argv[1], format='parquet').count_rows())" "$work/out")

cat > "$work/peer.py" <<'PY'
import sys, pyarrow.json as pj, pyarrow.parquet as pq
t = pj.read_json(sys.argv[1])
pq.write_table(t, sys.argv[2])
PY
t2=$(now)
/usr/bin/time -f "%M" -o "$work/peer.rss" python3 "$work/peer.py" "$work/data.jsonl" "$work/peer.parquet"
t3=$(now)

# The driver logs how long the aggregation (discovery, merge levels, final merge) took.
agg_ms=$(grep -o ' ms=[0-9]*' <(grep ' aggregated' "$work/orch.log") | tail -1 | cut -d= -f2)
# ... and its own CPU time (without the workers'): the coordinator's cost per task.
coord_ms=$(grep -o 'coordinator_cpu_ms=[0-9]*' "$work/orch.log" | tail -1 | cut -d= -f2)
python3 - "$N" "$bytes" "$BATCH" "$t0" "$t1" "$t2" "$t3" "$rows" "$(cat "$work/orch.rss")" "$(cat "$work/peer.rss")" "${agg_ms:-0}" "${coord_ms:-0}" "$tasks" <<'PY'
import sys
n, size, batch, tasks = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[13])
t0, t1, t2, t3 = map(float, sys.argv[4:8])
rows, orch_rss, peer_rss = int(sys.argv[8]), int(sys.argv[9]), int(sys.argv[10])
agg = int(sys.argv[11]) / 1000
coord = int(sys.argv[12]) / 1000
orch, peer = t1 - t0, t3 - t2
assert rows == n, f"orch output has {rows} rows, expected {n}"
print(f"records {n:,} ({size/1e6:.0f} MB), batch.size {batch} -> {tasks} tasks, 2 workers")
print(f"{'':28}{'wall s':>8}{'items/s':>12}{'µs/item':>9}{'peak RSS MiB':>14}")
print(f"{'orch run (identity)':28}{orch:8.2f}{n/orch:12,.0f}{orch/n*1e6:9.2f}{orch_rss/1024:14.0f}")
print(f"{'pyarrow read_json+write':28}{peer:8.2f}{n/peer:12,.0f}{peer/n*1e6:9.2f}{peer_rss/1024:14.0f}")
print(f"ratio orch/peer wall time: {orch/peer:.2f}x  (peak RSS: the largest single process)")
print(f"of orch's wall time, aggregation (verify + merge {tasks} task results): {agg:.2f} s")
print(f"coordinator CPU (orch run itself, workers excluded): {coord:.2f} s = {coord / tasks * 1e6:,.0f} µs per task")
PY
