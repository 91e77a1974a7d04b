#!/usr/bin/env bash
# Benchmark: N items end to end through a Python `exec` handler (python/orch_handler.py,
# `@handler`), side by side in one run with four peers applying the same function to the same
# file, each with 2 worker processes:
#
#   orch:      orch run job.yaml   (handler.exec python3 bench/handlers/orch_score.py, batch.size
#                                   BATCH, executor.local.parallelism 2, handler.concurrency C,
#                                   Parquet out)
#   parallel:  parallel --pipe --block 10M -j2 python3 bench/handlers/peer_score.py < data.jsonl
#              > out.jsonl
#   pool:      python3 bench/handlers/pool_score.py data.jsonl out.jsonl 2   (multiprocessing.Pool,
#              imap with chunksize 2000, JSON lines out)
#   dask:      python bench/handlers/dask_score.py data.jsonl outdir 2   (dask.bag read_text ->
#              map -> to_textfiles, processes scheduler, 2 workers)
#   ray:       python bench/handlers/ray_score.py data.jsonl outdir 2   (ray.init(num_cpus=2),
#              ray.data.read_json -> map_batches -> write_parquet)
#
# All apply bench/handlers/score.py (parse the record, compute a score, return a dict). orch,
# parallel and pool run `python3` as found on PATH; Dask and Ray come from a venv of this
# benchmark's own (below), and so does the interpreter of the final checks. Each side runs RUNS
# times (default 3), alternating (every peer, then orch at each concurrency, then again); the
# figures are medians of wall time, and of the CPU time (user + sys) and context switches of the
# whole process tree per item, from /usr/bin/time (less noisy than wall time on a shared
# machine: voluntary switches are waits on pipes and locks, involuntary ones are preemption by
# other load). Every side runs under bench/handlers/reap_tree.py, a subreaper, so that processes
# a side leaves behind (Ray's workers, outliving the raylet that started them) are counted too.
# Peak RSS is that of the largest single process of the tree (ru_maxrss), the maximum over runs.
# Ray's and Dask's start-up (imports, ray.init, the scheduler's processes) is in their wall time:
# that is what a user pays; Ray's wall time without ray.init is shown as an extra column. The
# script checks that orch wrote N rows and no errors, that every peer wrote N rows, that each
# side has N distinct ids, and that every sum of `score` agrees with orch's.
#
#   bench/python_exec.sh [N] [BATCH] [CONCURRENCY]   default 1000000 items, batches of 50000,
#                                                    concurrency 1; a list such as 1,16 runs each
#   RUNS=3 bench/python_exec.sh ...                  runs per side
#   PEERS=parallel,pool,dask,ray bench/python_exec.sh ...   the peers (default all four; any
#                                                    subset, in the order given)
#   HANDLER=sleep1ms bench/python_exec.sh ...        every side's function sleeps 1 ms per item
#                                                    first (bench/handlers/sleep_score.py); the
#                                                    table then shows each side's overhead over
#                                                    the ideal N x 1 ms / 2 (parallelism 2 on
#                                                    every side: orch's handler is sequential)
#   ORCH_BIN=DIR bench/python_exec.sh ...            orch and orch-worker from DIR (another build
#                                                    of this checkout) instead of building here
#   ORCH_BEFORE=DIR bench/python_exec.sh ...         also run the orch and orch-worker in DIR
#                                                    (another commit's build) at each concurrency,
#                                                    alternating with this one: before and after
#                                                    in the same run
#   ORCH_BENCH_VENV=DIR                              the peers' venv (default
#                                                    ${XDG_CACHE_HOME:-~/.cache}/orch-bench/venv)
#
# The venv is created on first use with pinned pyarrow, and dask[bag] / ray[data] only when
# PEERS names them (ray[data] with its dependencies is about 0.6 GB). Nothing is installed into
# the system Python or CI's venv.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
BATCH=${2:-50000}
CONCURRENCY=${3:-1}
RUNS=${RUNS:-3}
PEERS=${PEERS:-parallel,pool,dask,ray}
HANDLER=${HANDLER:-score}
root=$(pwd)
handlers=$root/bench/handlers

IFS=, read -ra peers <<< "$PEERS"
for p in "${peers[@]}"; do
    case $p in parallel | pool | dask | ray) ;; *)
        echo "PEERS: unknown peer '$p' (known: parallel, pool, dask, ray)" >&2
        exit 2
        ;;
    esac
done
case $HANDLER in
    score) prefix=() ;;
    # sleep_score.py runs the existing handler scripts with itself standing in for score.py.
    sleep1ms) prefix=("$handlers/sleep_score.py") ;;
    *)
        echo "HANDLER: unknown handler '$HANDLER' (known: score, sleep1ms)" >&2
        exit 2
        ;;
esac
# pool_score.py, dask_score.py and ray_score.py import the module that this names.
BENCH_HANDLER=score
[ "$HANDLER" != sleep1ms ] || BENCH_HANDLER=sleep_score
export BENCH_HANDLER

if [[ ,$PEERS, == *,parallel,* ]] && ! command -v parallel >/dev/null; then
    echo "installing GNU parallel (apt-get)" >&2
    apt-get install -y -q parallel >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null && apt-get install -y -q parallel >/dev/null; }
fi
if [ -n "${ORCH_BIN:-}" ]; then
    bin=$(cd "$ORCH_BIN" && pwd)
else
    cargo build --release -q -p orch-cli -p orch-worker
    bin="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release"
fi
before=
[ -z "${ORCH_BEFORE:-}" ] || before=$(cd "$ORCH_BEFORE" && pwd)

# The peers' Python packages live in a venv of the benchmark's own: pinned, created on first use,
# given only what PEERS needs. pyarrow is also the reader of all outputs in the checks.
venv=${ORCH_BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/orch-bench/venv}
pins=(pyarrow==26.0.1)
[[ ,$PEERS, != *,dask,* ]] || pins+=("dask[bag]==2026.11.0")
[[ ,$PEERS, != *,ray,* ]] || pins+=("ray[data]==2.60.0")
mkdir -p "$(dirname "$venv")"
exec 8>"$venv.lock"
flock 8
if [ ! -x "$venv/bin/python3" ]; then
    echo "creating the benchmark's venv $venv" >&2
    python3 -m venv "$venv" 2>/dev/null || {
        # Debian/Ubuntu split venv (ensurepip) into python3-venv.
        rm -rf "$venv"
        echo "installing python3-venv (apt-get)" >&2
        apt-get install -y -q python3-venv >/dev/null 2>&1 ||
            { apt-get update -q >/dev/null && apt-get install -y -q python3-venv >/dev/null; }
        python3 -m venv "$venv"
    }
fi
missing=()
for p in "${pins[@]}"; do grep -qxF "$p" "$venv/.orch-bench-pins" 2>/dev/null || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    avail() { df -h --output=avail "$venv" | tail -1 | tr -d ' '; }
    echo "installing into $venv: ${missing[*]} ($(avail) free on its disk)" >&2
    "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check --no-cache-dir "${pins[@]}"
    printf '%s\n' "${missing[@]}" >> "$venv/.orch-bench-pins"
    echo "installed: $venv is $(du -sh "$venv" | cut -f1), $(avail) free on its disk" >&2
fi
exec 8>&-
py=$venv/bin/python3

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 examples/identity-bench/make_data.py "$N" 2>/dev/null
cp examples/identity-bench/data.jsonl "$work/data.jsonl"
bytes=$(stat -c %s "$work/data.jsonl")
now() { date +%s.%N; }
# Ray: no usage-stats report, and its session files (logs, sockets) under the work directory.
export RAY_USAGE_STATS_ENABLED=0 RAY_TMPDIR="$work/ray"
# /usr/bin/time around the subreaper (the venv's interpreter: a binary, not a pyenv shim).
timed=(/usr/bin/time -f "%M %U %S %w %c" -o "$work/rusage" "$py" -S "$handlers/reap_tree.py")

# One fresh directory per orch run: its own .orch state, so that no run resumes another.
run_orch() { # concurrency run [side: orch, or before]
    local side=${3:-orch} dir="$work/${3:-orch}-c$1-r$2" cmd orch=$bin/orch
    [ "$side" = orch ] || orch=$before/orch
    mkdir -p "$dir"
    cmd=$(printf '"%s", ' python3 "${prefix[@]}" "$handlers/orch_score.py")
    cat > "$dir/job.yaml" <<YAML
apiVersion: orch.dev/v1alpha1
kind: OrchJob
metadata: {name: python-exec-bench}
spec:
  input: {uri: $work/data.jsonl}
  batch: {size: $BATCH}
  handler:
    exec: {command: [${cmd%, }]}
    concurrency: $1
    timeout: 60s
  output: {uri: out}
  executor: {local: {parallelism: 2}}
YAML
    local t0 t1
    t0=$(now)
    (cd "$dir" && "${timed[@]}" "$orch" run --no-progress job.yaml >/dev/null)
    t1=$(now)
    echo "$side c=$1 $(awk "BEGIN{printf \"%.3f\", $t1 - $t0}") $(cat "$work/rusage") -" >> "$work/times"
}

# Every peer writes $work/<peer>.out (a file or a directory), replaced at each run.
run_peer() { # peer run
    local out="$work/$1.out" log="$work/$1.log" t0 t1 init=- status=0
    rm -rf "$out" "$work/ray.init"
    t0=$(now)
    case $1 in
        parallel)
            "${timed[@]}" parallel --pipe --block 10M -j2 python3 "${prefix[@]}" \
                "$handlers/peer_score.py" < "$work/data.jsonl" > "$out" 2> "$log" || status=$?
            ;;
        pool)
            "${timed[@]}" python3 "$handlers/pool_score.py" "$work/data.jsonl" "$out" 2 \
                2> "$log" || status=$?
            ;;
        dask)
            "${timed[@]}" "$py" "$handlers/dask_score.py" "$work/data.jsonl" "$out" 2 \
                2> "$log" || status=$?
            ;;
        ray)
            RAY_INIT_SECONDS_FILE="$work/ray.init" "${timed[@]}" "$py" "$handlers/ray_score.py" \
                "$work/data.jsonl" "$out" 2 2> "$log" || status=$?
            ;;
    esac
    t1=$(now)
    if [ "$status" -ne 0 ]; then
        echo "$1 failed (exit $status), run $2; the end of its stderr:" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
    if [ "$1" = parallel ] || [ "$1" = pool ]; then
        lines=$(wc -l < "$out")
        [ "$lines" -eq "$N" ] || { echo "$1 wrote $lines lines, expected $N" >&2; exit 1; }
    fi
    [ "$1" != ray ] || init=$(cat "$work/ray.init")
    echo "$1 - $(awk "BEGIN{printf \"%.3f\", $t1 - $t0}") $(cat "$work/rusage") $init" >> "$work/times"
}

IFS=, read -ra concs <<< "$CONCURRENCY"
: > "$work/times"
for r in $(seq "$RUNS"); do
    for p in "${peers[@]}"; do run_peer "$p" "$r"; done
    for c in "${concs[@]}"; do
        run_orch "$c" "$r"
        [ -z "$before" ] || run_orch "$c" "$r" before
        [ "$r" -eq "$RUNS" ] || rm -rf "$work"/*-c"$c-r$r"/{out,.orch}
    done
    echo "run $r/$RUNS done" >&2
done

"$py" - "$N" "$bytes" "$BATCH" "$RUNS" "$work" "$HANDLER" "$PEERS" "${concs[@]}" <<'PY'
import glob, os, statistics, sys, time
import pyarrow as pa, pyarrow.compute as pc, pyarrow.json as pj, pyarrow.parquet as pq

n, size, batch, runs, work = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
handler, peers, concs = sys.argv[6], sys.argv[7].split(","), sys.argv[8:]
rows = {}
for line in open(f"{work}/times"):
    side, c, wall, rss, user, sys_, vcs, ivcs, init = line.split()
    key = {"orch": "", "before": "before "}.get(side, side) + (c.split("=")[1] if side in ("orch", "before") else "")
    cpu = (float(user) + float(sys_)) / n * 1e6
    init = None if init == "-" else float(init)
    rows.setdefault(key, []).append((float(wall), int(rss), cpu, int(vcs) / n, int(ivcs) / n, init))

# Same logic on every side: N rows each, N distinct ids, and the same sum of `score`.
def jsonl(paths):
    return pa.concat_tables([pj.read_json(p) for p in paths]).select(["id", "score"])
def check(name, t):
    assert t.num_rows == n, f"{name} output has {t.num_rows} rows, expected {n}"
    ids = pc.count_distinct(t["id"]).as_py()
    assert ids == n, f"{name} output has {ids} distinct ids, expected {n}"
    return pc.sum(t["score"]).as_py()
sums = {}
befores = [c for c in concs if f"before {c}" in rows]
for side, c in [("orch", c) for c in concs] + [("before", c) for c in befores]:
    out = f"{work}/{side}-c{c}-r{runs}/out"
    name = f"{side} (concurrency {c})"
    # (N rows with N distinct ids below already rule out failed items; errors.parquet may be absent)
    errors = pq.read_metadata(f"{out}/errors.parquet").num_rows if os.path.exists(f"{out}/errors.parquet") else 0
    assert errors == 0, f"{name} recorded {errors} failed items"
    t = pq.ParquetDataset(sorted(glob.glob(f"{out}/part-*.parquet"))).read(columns=["id", "score"])
    sums[name] = check(name, t)
for p in peers:
    out = f"{work}/{p}.out"
    if p in ("parallel", "pool"):
        t = jsonl([out])
    elif p == "dask":  # one JSON-lines file per partition (the last line of each without "\n")
        t = jsonl(sorted(glob.glob(f"{out}/part-*.jsonl")))
    else:  # ray: Parquet files named by Ray, rows in no particular order
        t = pq.ParquetDataset(sorted(glob.glob(f"{out}/*.parquet"))).read(columns=["id", "score"])
    sums[p] = check(p, t)
ref_name = f"orch (concurrency {concs[0]})"
ref = sums[ref_name]
for name, s in sums.items():
    assert abs(s - ref) <= 1e-6 * max(1.0, abs(ref)), f"score sums differ: {ref_name} {ref}, {name} {s}"

labels = {
    "parallel": "parallel --pipe --block 10M -j2",
    "pool": "multiprocessing.Pool(2) imap",
    "dask": "dask.bag, processes scheduler, 2",
    "ray": "ray.data, num_cpus=2",
}
print(f"items {n:,} ({size/1e6:.0f} MB), batch.size {batch:,} -> {(n + batch - 1)//batch} tasks, "
      f"2 workers / 2 processes on every side; handler {handler}; {runs} runs each, alternating; "
      f"outputs checked: {n:,} rows, {n:,} distinct ids, equal score sums")
ideal = None
if handler == "sleep1ms":
    t0 = time.perf_counter()
    for _ in range(500):
        time.sleep(0.001)
    slept = (time.perf_counter() - t0) / 500
    ideal = n * 0.001 / 2
    print(f"ideal wall: N x 1 ms / 2 = {ideal:.2f} s (time.sleep(0.001) takes {slept*1e3:.3f} ms "
          f"here: {n * slept / 2:.2f} s at the measured sleep); 'over ideal' is wall / ideal - 1")
med = lambda samples, i: statistics.median(s[i] for s in samples)
extra = f"{'over ideal':>11}" if ideal else ""
extra += f"{'wall w/o ray.init':>19}" if "ray" in peers else ""
print(f"{'':34}{'wall s (median)':>16}{'items/s':>11}{'µs/item':>9}{'RSS MiB':>9}"
      f"{'CPU µs/item':>13}{'vol cs/item':>13}{'invol cs/item':>15}{extra}  runs (wall s)")
def line(name, samples):
    wall = med(samples, 0)
    rss = max(s[1] for s in samples) / 1024
    runs_s = ", ".join(f"{s[0]:.2f}" for s in samples)
    inits = [s[0] - s[5] for s in samples if s[5] is not None]
    no_init = f"{statistics.median(inits):19.2f}" if inits else f"{'':19}" if "ray" in peers else ""
    over = f"{(wall / ideal - 1) * 100:10.1f}%" if ideal else ""
    print(f"{name:34}{wall:16.2f}{n/wall:11,.0f}{wall/n*1e6:9.2f}{rss:9.0f}"
          f"{med(samples, 2):13.2f}{med(samples, 3):13.3f}{med(samples, 4):15.3f}{over}{no_init}"
          f"  {runs_s}")
for p in peers:
    line(labels[p], rows[p])
for c in concs:
    line(f"orch run (exec, concurrency {c})", rows[c])
for c in befores:
    line(f"  before: ORCH_BEFORE, concurrency {c}", rows[f"before {c}"])
if "ray" in peers:
    print(f"  (wall w/o ray.init: Ray's wall time less the seconds spent in ray.init(), median "
          f"{med([(s[5],) for s in rows['ray']], 0):.2f} s; imports and ray.shutdown() stay in)")

if "parallel" in peers:
    peer_med, peer_cpu = med(rows["parallel"], 0), med(rows["parallel"], 2)
    for c in concs:
        wall, cpu = med(rows[c], 0), med(rows[c], 2)
        verdict = "within" if wall / peer_med <= 1.2 else "misses"
        print(f"  ratio orch/peer (concurrency {c}): {wall/peer_med:.2f}x wall ({verdict} the 1.2x "
              f"target), {cpu/peer_cpu:.2f}x CPU per item")
for c in befores:
    b = rows[f"before {c}"]
    print(f"  after/before (concurrency {c}): {med(rows[c], 0)/med(b, 0):.2f}x wall, "
          f"{med(rows[c], 2)/med(b, 2):.2f}x CPU per item")
best = min(concs, key=lambda c: med(rows[c], 0))
bw, bc = med(rows[best], 0), med(rows[best], 2)
print(f"orch at its best concurrency ({best}: {bw:.2f} s) / each peer "
      "(below 1: orch is faster or cheaper):")
for p in peers:
    print(f"  {'orch/' + p:14} {bw/med(rows[p], 0):6.2f}x wall, {bc/med(rows[p], 2):6.2f}x CPU per item")
PY
