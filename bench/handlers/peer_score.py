#!/usr/bin/env python3
"""Peer side of bench/python_exec.sh: score.score over JSON lines on stdin, JSON lines on stdout.

What a researcher writes for `parallel --pipe`: parse each line, apply the function, write one
compact JSON line per result (block-buffered stdout, as Python does for a pipe).
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from score import score  # noqa: E402

dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
out = sys.stdout
for line in sys.stdin.buffer:
    if line.strip():
        out.write(dumps(score(json.loads(line))))
        out.write("\n")
