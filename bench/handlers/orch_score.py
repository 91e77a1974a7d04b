#!/usr/bin/env python3
"""orch side of bench/python_exec.sh: score.score behind python/orch_handler.py's @handler.

orch runs it as `python3 orch_score.py` (spec.handler.exec); sequential unless ORCH_BENCH_THREADS
is set to a number > 1 (then @handler(concurrency=N), a thread pool).
"""

import os
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here))
sys.path.insert(0, str(here.parents[1] / "python"))

from orch_handler import handler  # noqa: E402
from score import score  # noqa: E402

threads = int(os.environ.get("ORCH_BENCH_THREADS", "1"))


@handler(concurrency=threads)
def orch_score(item):
    return score(item)
