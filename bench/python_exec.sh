#!/usr/bin/env bash
# Benchmark: N items end to end through a Python `exec` handler (python/orch_handler.py,
# `@handler`), next to GNU `parallel --pipe` running the same function over the same file:
#
#   orch:  orch run job.yaml    (handler.exec python3 bench/handlers/orch_score.py, batch.size BATCH,
#                                executor.local.parallelism 2, handler.concurrency C, Parquet out)
#   peer:  parallel --pipe --block 10M -j2 python3 bench/handlers/peer_score.py < data.jsonl > out.jsonl
#
# Both apply bench/handlers/score.py (parse the record, compute a score, return a dict). Each
# side runs RUNS times (default 3), alternating; the figures are medians of wall time, and of the
# CPU time (user + sys) and context switches of the whole process tree per item, from
# /usr/bin/time (less noisy than wall time on a shared machine: voluntary switches are waits on
# pipes and locks, involuntary ones are preemption by other load). The script checks that orch
# wrote N rows, that the peer wrote N lines, and that both sums of `score` agree.
#
#   bench/python_exec.sh [N] [BATCH] [CONCURRENCY]   default 1000000 items, batches of 50000,
#                                                    concurrency 1; a list such as 1,16 runs each
#   RUNS=3 bench/python_exec.sh ...                  runs per side
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
BATCH=${2:-50000}
CONCURRENCY=${3:-1}
RUNS=${RUNS:-3}
root=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! command -v parallel >/dev/null; then
    echo "installing GNU parallel (apt-get)" >&2
    apt-get install -y -q parallel >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null && apt-get install -y -q parallel >/dev/null; }
fi
cargo build --release -q -p orch-cli -p orch-worker
python3 -c "import pyarrow" 2>/dev/null || python3 -m pip install --quiet pyarrow

python3 examples/identity-bench/make_data.py "$N" 2>/dev/null
cp examples/identity-bench/data.jsonl "$work/data.jsonl"
bytes=$(stat -c %s "$work/data.jsonl")
orch="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release/orch"
now() { date +%s.%N; }

# One fresh directory per orch run: its own .orch state, so that no run resumes another.
run_orch() { # concurrency run
    local dir="$work/orch-c$1-r$2"
    mkdir -p "$dir"
    cat > "$dir/job.yaml" <<YAML
apiVersion: orch.dev/v1alpha1
kind: OrchJob
metadata: {name: python-exec-bench}
spec:
  input: {uri: $work/data.jsonl}
  batch: {size: $BATCH}
  handler:
    exec: {command: ["python3", "$root/bench/handlers/orch_score.py"]}
    concurrency: $1
    timeout: 60s
  output: {uri: out}
  executor: {local: {parallelism: 2}}
YAML
    local t0 t1
    t0=$(now)
    (cd "$dir" && /usr/bin/time -f "%M %U %S %w %c" -o rss "$orch" run --no-progress job.yaml >/dev/null)
    t1=$(now)
    echo "orch c=$1 $(awk "BEGIN{printf \"%.3f\", $t1 - $t0}") $(cat "$dir/rss")" >> "$work/times"
}

run_peer() { # run
    local t0 t1
    t0=$(now)
    /usr/bin/time -f "%M %U %S %w %c" -o "$work/peer.rss" \
        parallel --pipe --block 10M -j2 python3 "$root/bench/handlers/peer_score.py" \
        < "$work/data.jsonl" > "$work/peer.jsonl"
    t1=$(now)
    lines=$(wc -l < "$work/peer.jsonl")
    [ "$lines" -eq "$N" ] || { echo "peer wrote $lines lines, expected $N" >&2; exit 1; }
    echo "peer - $(awk "BEGIN{printf \"%.3f\", $t1 - $t0}") $(cat "$work/peer.rss")" >> "$work/times"
}

IFS=, read -ra concs <<< "$CONCURRENCY"
: > "$work/times"
for r in $(seq "$RUNS"); do
    run_peer "$r"
    for c in "${concs[@]}"; do
        run_orch "$c" "$r"
        [ "$r" -eq "$RUNS" ] || rm -rf "$work/orch-c$c-r$r/out" "$work/orch-c$c-r$r/.orch"
    done
    echo "run $r/$RUNS done" >&2
done

python3 - "$N" "$bytes" "$BATCH" "$RUNS" "$work" "${concs[@]}" <<'PY'
import glob, statistics, sys
import pyarrow.compute as pc, pyarrow.json as pj, pyarrow.parquet as pq

n, size, batch, runs, work = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
concs = sys.argv[6:]
rows = {}
for line in open(f"{work}/times"):
    side, c, wall, rss, user, sys_, vcs, ivcs = line.split()
    key = "peer" if side == "peer" else c.split("=")[1]
    cpu = (float(user) + float(sys_)) / n * 1e6
    rows.setdefault(key, []).append((float(wall), int(rss), cpu, int(vcs) / n, int(ivcs) / n))

# Same logic on both sides: N rows each, and the same sum of `score`.
peer_t = pj.read_json(f"{work}/peer.jsonl")
peer_sum = pc.sum(peer_t["score"]).as_py()
assert peer_t.num_rows == n, f"peer output has {peer_t.num_rows} rows, expected {n}"
for c in concs:
    out = f"{work}/orch-c{c}-r{runs}/out"
    errors = pq.read_metadata(f"{out}/errors.parquet").num_rows
    assert errors == 0, f"orch (concurrency {c}) recorded {errors} failed items"
    t = pq.ParquetDataset(sorted(glob.glob(f"{out}/part-*.parquet"))).read(columns=["score"])
    assert t.num_rows == n, f"orch (concurrency {c}) output has {t.num_rows} rows, expected {n}"
    s = pc.sum(t["score"]).as_py()
    assert abs(s - peer_sum) <= 1e-6 * max(1.0, abs(peer_sum)), f"score sums differ: orch {s}, peer {peer_sum}"

print(f"items {n:,} ({size/1e6:.0f} MB), batch.size {batch:,} -> {(n + batch - 1)//batch} tasks, "
      f"2 workers / -j2; {runs} runs each, alternating; outputs checked: {n:,} rows, equal score sums")
print(f"{'':34}{'wall s (median)':>16}{'items/s':>11}{'µs/item':>9}{'RSS MiB':>9}"
      f"{'CPU µs/item':>13}{'vol cs/item':>13}{'invol cs/item':>15}  runs (wall s)")
med = lambda samples, i: statistics.median(s[i] for s in samples)
peer_med, peer_cpu = med(rows["peer"], 0), med(rows["peer"], 2)
def line(name, samples):
    wall = med(samples, 0)
    rss = max(s[1] for s in samples) / 1024
    runs_s = ", ".join(f"{s[0]:.2f}" for s in samples)
    print(f"{name:34}{wall:16.2f}{n/wall:11,.0f}{wall/n*1e6:9.2f}{rss:9.0f}"
          f"{med(samples, 2):13.2f}{med(samples, 3):13.3f}{med(samples, 4):15.3f}  {runs_s}")
    return wall, med(samples, 2)
line("parallel --pipe --block 10M -j2", rows["peer"])
for c in concs:
    wall, cpu = line(f"orch run (exec, concurrency {c})", rows[c])
    verdict = "within" if wall / peer_med <= 1.2 else "misses"
    print(f"  ratio orch/peer (concurrency {c}): {wall/peer_med:.2f}x wall ({verdict} the 1.2x "
          f"target), {cpu/peer_cpu:.2f}x CPU per item")
PY
