#!/usr/bin/env python3
"""multiprocessing.Pool peer of bench/python_exec.sh: score.score over a JSON-lines file.

    python3 pool_score.py IN.jsonl OUT.jsonl [PROCESSES]     (default 2 processes)

The way a researcher parallelises a per-record function with the standard library, reasonably
tuned rather than a strawman: one Pool of PROCESSES forked workers, `imap` over the file's lines
with a large chunksize (so each pickle round trip carries thousands of items, not one), each
worker parsing, scoring and encoding its line, and the parent writing the encoded lines in input
order through a block-buffered file. BENCH_HANDLER names the module whose `score` is applied
(default score; sleep_score for HANDLER=sleep1ms).
"""

import importlib
import json
import os
import sys
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

score = importlib.import_module(os.environ.get("BENCH_HANDLER", "score")).score
dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
CHUNKSIZE = 2000


def work(line):
    return dumps(score(json.loads(line)))


def main():
    src, dst = sys.argv[1], sys.argv[2]
    processes = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    with open(src, "rb") as f, open(dst, "w", buffering=1 << 20) as out, Pool(processes) as pool:
        for encoded in pool.imap(work, f, chunksize=CHUNKSIZE):
            out.write(encoded)
            out.write("\n")
        pool.close()  # let the workers exit by themselves (leaving the block would kill them)
        pool.join()


if __name__ == "__main__":
    main()
