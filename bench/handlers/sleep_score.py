#!/usr/bin/env python3
"""The "1 ms handler" of bench/python_exec.sh (HANDLER=sleep1ms): sleep 1 ms, then score.score.

Imported (`BENCH_HANDLER=sleep_score` for pool_score.py, dask_score.py and ray_score.py) it is a
drop-in for score.py. Run as a launcher, `python3 sleep_score.py SCRIPT ARGS...`, it runs SCRIPT
(orch_score.py, peer_score.py: they do `from score import score`) with this module standing in
for `score`, so the existing handlers need no change for this mode.
"""

import runpy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import score as _score  # noqa: E402

SLEEP_S = 0.001


def score(rec):
    time.sleep(SLEEP_S)
    return _score.score(rec)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(f"usage: {sys.argv[0]} SCRIPT [ARGS...]")
    this = sys.modules["__main__"]
    sys.modules["score"] = this  # `from score import score` in SCRIPT finds the sleeping score
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
