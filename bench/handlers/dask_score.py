#!/usr/bin/env python3
"""Dask bag peer of bench/python_exec.sh: score.score over a JSON-lines file.

    python dask_score.py IN.jsonl OUTDIR [WORKERS]     (default 2 worker processes)

The dask.bag way, reasonably tuned rather than a strawman: `read_text` cut into byte blocks (about
four partitions per worker, at least 64 KiB each, so that both workers stay busy and no partition
is huge), `map(json.loads).map(score).map(json.dumps)` (fused into one task per partition by
dask), `to_textfiles` writing one JSON-lines file per partition from inside the worker (nothing
but the file name comes back to the driver), the multiprocessing scheduler with WORKERS
processes (`scheduler="processes"`: pure-Python work needs processes, not threads). The
scheduler's start-up is part of the run, as for a user. BENCH_HANDLER names the module whose
`score` is applied (default score; sleep_score for HANDLER=sleep1ms).
"""

import importlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dask  # noqa: E402
import dask.bag as db  # noqa: E402

score = importlib.import_module(os.environ.get("BENCH_HANDLER", "score")).score
dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def main():
    src, dst = sys.argv[1], sys.argv[2]
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    blocksize = max(1 << 16, os.path.getsize(src) // (4 * workers) + 1)
    bag = db.read_text(src, blocksize=blocksize).map(json.loads).map(score).map(dumps)
    with dask.config.set(scheduler="processes", num_workers=workers):
        bag.to_textfiles(os.path.join(dst, "part-*.jsonl"))


if __name__ == "__main__":
    main()
