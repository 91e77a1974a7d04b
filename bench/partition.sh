#!/usr/bin/env bash
# Benchmark: partitioning a large JSONL file (docs/benchmarks.md: "faster than `split -l` on the same
# file"). orch's partitioner makes one `memchr` pass and writes a manifest of byte ranges
# (docs/job-spec.md, "Storage layout": nothing is copied); the peer, GNU `split -l`, copies the data into one file per
# batch. Both run on the same file in the same run, alternating, 3 times each; the figures are
# the medians. The main figures are with the file in the page cache (warm); when
# /proc/sys/vm/drop_caches is writable, one extra cold run of each follows.
#
#   bench/partition.sh [N] [BATCH]     default 5000000 records (~1 GB), batches of 1000
#
# Generated files live in a temporary directory under /tmp, removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-5000000}
BATCH=${2:-1000}
RUNS=3
work=$(mktemp -d /tmp/orch-bench-partition.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/^Mem:/{print $2}') GiB RAM, load average$(cut -d' ' -f1-3 /proc/loadavg | sed 's/^/ /')"
echo "split: $(split --version | head -1)"

cargo build --release -q -p orch-core -p orch-data --examples
bench_bin="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release/examples/partition_bench"

# N records of about 200 bytes each: the identity-bench shape plus a padding string.
python3 - "$N" "$work/data.jsonl" <<'PY'
import sys
n, path = int(sys.argv[1]), sys.argv[2]
pad = "x" * 200
with open(path, "w", encoding="ascii", newline="\n", buffering=1 << 22) as f:
    chunk = []
    for i in range(n):
        value = (i * 7919) % 1000003 / 1000003
        line = f'{{"id":{i},"key":"k{i:08d}","group":{i % 97},"value":{value:.6f},"pad":"'
        # Pad so that the line (with '"}' and the newline) is 200 bytes.
        chunk.append(f'{line}{pad[: max(0, 197 - len(line))]}"}}\n')
        if len(chunk) == 100_000:
            f.write("".join(chunk))
            chunk.clear()
    f.write("".join(chunk))
PY
bytes=$(stat -c %s "$work/data.jsonl")
echo "input: $N records, $bytes bytes, batch $BATCH -> $(( (N + BATCH - 1) / BATCH )) batches"

now() { date +%s.%N; }

# run_orch LABEL: one timed partitioning; appends "seconds rss batches items" to $work/LABEL.
run_orch() {
    rm -f "$work/manifest.jsonl"
    local t0 t1 out
    t0=$(now)
    out=$(/usr/bin/time -f "%M" -o "$work/rss" "$bench_bin" "$work/data.jsonl" "$BATCH" "$work/manifest.jsonl")
    t1=$(now)
    local batches items
    batches=$(sed -n 's/.*batches=\([0-9]*\).*/\1/p' <<<"$out")
    items=$(sed -n 's/.*items=\([0-9]*\).*/\1/p' <<<"$out")
    echo "$t0 $t1 $(cat "$work/rss") $batches $items" >>"$work/$1"
}

# run_split LABEL: one timed `split -l`; appends "t0 t1 rss files" to $work/LABEL.
run_split() {
    rm -rf "$work/x"
    mkdir "$work/x"
    local t0 t1
    t0=$(now)
    # -a 6: enough suffix letters for any N/BATCH up to 26^6 files.
    /usr/bin/time -f "%M" -o "$work/rss" split -a 6 -l "$BATCH" "$work/data.jsonl" "$work/x/part-"
    t1=$(now)
    echo "$t0 $t1 $(cat "$work/rss") $(find "$work/x" -type f | wc -l)" >>"$work/$1"
    rm -rf "$work/x"
}

cat "$work/data.jsonl" >/dev/null # warm the page cache for both sides
for _ in $(seq "$RUNS"); do
    run_orch orch.warm
    run_split split.warm
done

drop_caches() { sync && { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; }
cold=no
if drop_caches; then
    cold=yes
    run_orch orch.cold
    drop_caches
    run_split split.cold
fi

python3 - "$N" "$BATCH" "$bytes" "$work" "$cold" <<'PY'
import statistics, sys
n, batch, size, work, cold = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5] == "yes"
expect = (n + batch - 1) // batch

def load(name):
    rows = [line.split() for line in open(f"{work}/{name}")]
    return [(float(r[1]) - float(r[0]), int(r[2]), [int(x) for x in r[3:]]) for r in rows]

def check(name, runs):
    for _, _, counts in runs:
        if name.startswith("orch"):
            assert counts == [expect, n], f"orch made {counts[0]} batches of {counts[1]} items, expected {expect} of {n}"
        else:
            assert counts == [expect], f"split made {counts[0]} files, expected {expect}"

def row(label, runs):
    secs = [s for s, _, _ in runs]
    med = statistics.median(secs)
    rss = max(r for _, r, _ in runs) / 1024
    every = " ".join(f"{s:.2f}" for s in secs)
    print(f"{label:34}{med:8.2f}{size / 1e6 / med:9.0f}{rss:10.1f}   {every}")
    return med

print(f"\n{'':34}{'wall s':>8}{'MB/s':>9}{'RSS MiB':>10}   runs (s)")
o = load("orch.warm"); s = load("split.warm")
check("orch", o); check("split", s)
mo = row(f"orch partition_bench (median of {len(o)})", o)
ms = row(f"split -l {batch} (median of {len(s)})", s)
print(f"warm page cache: orch / split wall time = {mo / ms:.3f} (split takes {ms / mo:.1f}x orch's time)")
if cold:
    oc = load("orch.cold"); sc = load("split.cold")
    check("orch", oc); check("split", sc)
    mo = row("orch partition_bench (cold, 1 run)", oc)
    ms = row(f"split -l {batch} (cold, 1 run)", sc)
    print(f"cold page cache: orch / split wall time = {mo / ms:.3f}")
else:
    print("cold page cache: not measured (/proc/sys/vm/drop_caches is not writable)")
PY
