"""The per-item work of bench/python_exec.sh, shared by both sides: a cheap but real transform.

One identity-bench record ({"id", "key", "group", "value"}) in, one dict out. Pure Python, about
a microsecond or two of arithmetic and string work, so that the benchmark measures what carries
items to and from the function (orch's exec protocol vs. GNU parallel's pipes), not the function.
"""

import math


def score(rec):
    value = float(rec["value"])
    group = int(rec["group"])
    weight = 1.0 + (group % 7) / 10.0
    s = math.sqrt(value) * weight - math.log1p(group) / 10.0
    return {
        "id": rec["id"],
        "key": rec["key"].upper(),
        "group": group,
        "score": round(s, 6),
        "band": "high" if s > 0.5 else "low",
    }
