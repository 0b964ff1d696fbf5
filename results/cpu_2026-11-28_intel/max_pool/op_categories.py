"""Sum a jax.profiler trace's XLA:CPU op events by op kind (name without its .N suffix), per step.

Usage: python op_categories.py TRACE_DIR STEPS [TOP]. Events nest and run on two threads, so the sums are
thread time, not wall time; they say which kinds of op take the time, not how long the step is.
"""

from __future__ import annotations

import collections
import gzip
import json
import re
import sys
from pathlib import Path


def main(trace_dir: str, steps: int, top: int = 30) -> None:
    path = next(Path(trace_dir).rglob("*.trace.json.gz"))
    with gzip.open(path, "rt") as f:
        events = json.load(f)["traceEvents"]
    spans = [e for e in events if e.get("ph") == "X" and not e["name"].startswith("$") and "::" not in e["name"]]
    total: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    for e in spans:
        kind = re.sub(r"\.\d+$", "", e["name"])
        total[kind] += e.get("dur", 0)
        count[kind] += 1
    for kind, us in total.most_common(top):
        print(f"{us / 1000 / steps:8.2f} ms  x{count[kind] / steps:6.1f}  {kind}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *(int(a) for a in sys.argv[3:4]))
