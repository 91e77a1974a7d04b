#!/usr/bin/env bash
# Benchmark: merging many small result files (docs/benchmarks.md: "merge 10,000 result files (5M rows):
# no slower than DuckDB `COPY (SELECT * FROM read_parquet(...))`, peak memory ≤ 512 MiB").
# orch's side is the aggregation step of `orch run` alone (`data/examples/merge_bench.rs`:
# `merge_results` into part-*.parquet, then `merge_errors`); the peer is DuckDB's COPY of all
# files into one Parquet file, through its Python package. Both read the same files in the same
# run, alternating, 3 times each; the figures are medians (wall time) and the largest peak RSS.
#
#   bench/merge.sh [FILES] [ROWS]     default 10000 files of 500 rows (5M rows)
#
# The inputs have the shape orch's task results have: `_item` uint64 (not null) first, then
# id int64, key string, value float64 (nullable), Snappy-compressed, one row group each.
# Generated files live in a temporary directory under /tmp, removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${1:-10000}
ROWS=${2:-500}
RUNS=3
work=$(mktemp -d /tmp/orch-bench-merge.XXXXXX)
trap 'rm -rf "$work"' EXIT

python3 -c "import pyarrow" 2>/dev/null || python3 -m pip install --quiet pyarrow
python3 -c "import duckdb" 2>/dev/null || python3 -m pip install --quiet duckdb

echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/^Mem:/{print $2}') GiB RAM, load average$(cut -d' ' -f1-3 /proc/loadavg | sed 's/^/ /')"
echo "peer: duckdb $(python3 -c 'import duckdb; print(duckdb.__version__)'), pyarrow $(python3 -c 'import pyarrow; print(pyarrow.__version__)')"

cargo build --release -q -p orch-core -p orch-data --examples
bench_bin="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release/examples/merge_bench"

mkdir "$work/in"
python3 - "$FILES" "$ROWS" "$work/in" <<'PY'
import sys
import pyarrow as pa, pyarrow.parquet as pq
files, rows, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
schema = pa.schema([
    pa.field("_item", pa.uint64(), nullable=False),
    pa.field("id", pa.int64()),
    pa.field("key", pa.string()),
    pa.field("value", pa.float64()),
])
for f in range(files):
    first = f * rows
    items = range(first, first + rows)
    table = pa.table({
        "_item": pa.array(items, pa.uint64()),
        "id": pa.array(items, pa.int64()),
        "key": pa.array([f"k{i:08d}" for i in items], pa.string()),
        "value": pa.array([(i * 7919) % 1000003 / 1000003 for i in items], pa.float64()),
    }, schema=schema)
    pq.write_table(table, f"{out}/task-{f:06d}.parquet", compression="snappy")
PY
in_bytes=$(du -sb "$work/in" | cut -f1)
echo "input: $FILES files x $ROWS rows = $((FILES * ROWS)) rows, $in_bytes bytes"

cat > "$work/duck.py" <<'PY'
import sys, time, duckdb
indir, out = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
duckdb.sql(f"COPY (SELECT * FROM read_parquet('{indir}/*.parquet')) TO '{out}' (FORMAT parquet)")
print(f"seconds={time.perf_counter() - t0:.3f}")
PY

now() { date +%s.%N; }

run_orch() {
    rm -rf "$work/orch-out"
    local t0 t1 out
    t0=$(now)
    out=$(/usr/bin/time -f "%M" -o "$work/rss" "$bench_bin" "$work/in" "$work/orch-out")
    t1=$(now)
    echo "$t0 $t1 $(cat "$work/rss") $(sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' <<<"$out")" >>"$work/orch.runs"
}

run_duck() {
    rm -f "$work/duck.parquet"
    local t0 t1 out
    t0=$(now)
    out=$(/usr/bin/time -f "%M" -o "$work/rss" python3 "$work/duck.py" "$work/in" "$work/duck.parquet")
    t1=$(now)
    echo "$t0 $t1 $(cat "$work/rss") $(sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' <<<"$out")" >>"$work/duck.runs"
}

find "$work/in" -type f -exec cat {} + >/dev/null # warm the page cache for both sides
for _ in $(seq "$RUNS"); do
    run_orch
    run_duck
done

python3 - "$FILES" "$ROWS" "$in_bytes" "$work" <<'PY'
import glob, os, statistics, sys
import pyarrow.parquet as pq
files, rows, in_bytes, work = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
expect = files * rows
columns = ["_item", "id", "key", "value"]

def count(paths):
    n = 0
    for p in paths:
        meta = pq.ParquetFile(p)
        assert meta.schema_arrow.names == columns, f"{p}: columns {meta.schema_arrow.names}"
        n += meta.metadata.num_rows
    return n

orch_parts = sorted(glob.glob(f"{work}/orch-out/part-*.parquet"))
orch_rows, duck_rows = count(orch_parts), count([f"{work}/duck.parquet"])
assert orch_rows == expect, f"orch output has {orch_rows} rows, expected {expect}"
assert duck_rows == expect, f"DuckDB output has {duck_rows} rows, expected {expect}"
orch_bytes = sum(os.path.getsize(p) for p in orch_parts)
duck_bytes = os.path.getsize(f"{work}/duck.parquet")

def load(name):
    # (process wall seconds, peak RSS KiB, seconds of the merge call alone, timed inside)
    return [(float(t1) - float(t0), int(rss), float(inner))
            for t0, t1, rss, inner in (line.split() for line in open(f"{work}/{name}"))]

print(f"\nrows: orch {orch_rows:,} in {len(orch_parts)} part file(s), {orch_bytes / 2**20:.0f} MiB; "
      f"DuckDB {duck_rows:,} in 1 file, {duck_bytes / 2**20:.0f} MiB (both as expected)")
print(f"{'':34}{'wall s':>8}{'rows/s':>12}{'files/s':>9}{'peak RSS MiB':>14}{'call s':>8}   runs (s)")
med = {}
for label, name in [("orch merge_bench", "orch.runs"), ("DuckDB COPY (python)", "duck.runs")]:
    runs = load(name)
    secs = [s for s, _, _ in runs]
    m = med[name] = statistics.median(secs)
    inner = med[name + ".call"] = statistics.median(c for _, _, c in runs)
    rss = max(r for _, r, _ in runs) / 1024
    med[name + ".rss"] = rss
    every = " ".join(f"{s:.2f}" for s in secs)
    print(f"{label + f' (median of {len(runs)})':34}{m:8.2f}{expect / m:12,.0f}{files / m:9,.0f}{rss:14.0f}{inner:8.2f}   {every}")
print("wall s: the whole process (DuckDB's includes starting Python and importing duckdb); "
      "call s: the merge call alone, timed inside the process")
print(f"orch / DuckDB wall time = {med['orch.runs'] / med['duck.runs']:.2f}, "
      f"call time = {med['orch.runs.call'] / med['duck.runs.call']:.2f}  (target: <= 1)")
print(f"orch / DuckDB peak RSS  = {med['orch.runs.rss'] / med['duck.runs.rss']:.2f}  "
      f"(orch peak {med['orch.runs.rss']:.0f} MiB; target: <= 512 MiB)")
PY
