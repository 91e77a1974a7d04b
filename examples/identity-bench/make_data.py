#!/usr/bin/env python3
"""Writes data.jsonl next to this script: N small records, the same for the same N.

    python3 make_data.py 1000000      # about 60 MB

Each line: {"id": i, "key": "k00000042", "group": 0..96, "value": 0.0..1.0}.
data.jsonl is not committed (see .gitignore): generate it before `orch run`.
"""

import sys
from pathlib import Path


def main():
    if len(sys.argv) != 2 or not sys.argv[1].replace("_", "").isdigit():
        sys.exit(f"usage: {sys.argv[0]} N    (number of records, e.g. 1000000)")
    n = int(sys.argv[1])
    out = Path(__file__).resolve().parent / "data.jsonl"
    with out.open("w", encoding="ascii", newline="\n", buffering=1 << 20) as f:
        for i in range(n):
            value = (i * 7919) % 1000003 / 1000003
            f.write(f'{{"id":{i},"key":"k{i:08d}","group":{i % 97},"value":{value:.6f}}}\n')
    print(f"wrote {n} records ({out.stat().st_size:,} bytes) to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
