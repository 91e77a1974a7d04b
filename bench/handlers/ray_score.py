#!/usr/bin/env python3
"""Ray Data peer of bench/python_exec.sh: score.score over a JSON-lines file, Parquet out.

    python ray_score.py IN.jsonl OUTDIR [CPUS]     (default 2 CPUs)

The Ray Data way, reasonably tuned rather than a strawman: a local Ray of CPUS CPUs (`ray.init(
num_cpus=CPUS, include_dashboard=False, log_to_driver=False)`), `read_json` -> `map_batches`
applying score row by row over each Arrow batch (to_pylist -> score -> Table.from_pylist) ->
`write_parquet`. Ray Data cuts the one input file into blocks by itself (ReadArrowJSON ->
SplitBlocks: up to 200 blocks, none below its minimum block size, at least two per CPU), so both
CPUs get work without `override_num_blocks`; batch_size is a few thousand rows (Ray's default of
1024 costs more per-batch overhead). The workers import score.py because Ray puts the driver
script's directory on their sys.path. ray.init and ray.shutdown are part of the run, as for a
user; the seconds spent in ray.init are written to $RAY_INIT_SECONDS_FILE when that is set, so
that the benchmark can show the time without them too. BENCH_HANDLER names the module whose
`score` is applied (default score; sleep_score for HANDLER=sleep1ms).
"""

import importlib
import os
import sys
import time
from pathlib import Path

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here))

import pyarrow as pa  # noqa: E402
import ray  # noqa: E402

handler_module = os.environ.get("BENCH_HANDLER", "score")
score = importlib.import_module(handler_module).score
BATCH_SIZE = 4096


def score_batch(batch: pa.Table) -> pa.Table:
    return pa.Table.from_pylist([score(rec) for rec in batch.to_pylist()])


def main():
    src, dst = sys.argv[1], sys.argv[2]
    cpus = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    t0 = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - t0
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ds = ray.data.read_json(src)
    ds = ds.map_batches(score_batch, batch_format="pyarrow", batch_size=BATCH_SIZE)
    ds.write_parquet(dst)
    ray.shutdown()
    if os.environ.get("RAY_INIT_SECONDS_FILE"):
        Path(os.environ["RAY_INIT_SECONDS_FILE"]).write_text(f"{init_s:.3f}\n")


if __name__ == "__main__":
    main()
