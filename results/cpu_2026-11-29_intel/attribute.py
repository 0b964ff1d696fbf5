"""Profile the fixed-batch ResNet-18 train step on XLA:CPU and sum its kernels' time by model part.

Usage: python attribute.py VARIANT [BATCH] [STEPS]

Each conv, BatchNorm and max-pool call is traced inside a jax.named_scope (CONV_<lowering>_<map>_k<k>,
BNORM, MAXPOOL), so each compiled kernel's op_name metadata says which part it came from and whether it is
in the backward pass (`transpose(...)`). Kernel events of the jax.profiler trace are summed per part. The
sums are thread time (two threads, and matmuls split across both), not wall time: they say which parts are
large, not how long the step is. Events that enclose others (loops, calls) are dropped so nothing counts
twice. Unattributed kernels are listed by op name, kernel kind and result shape.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import gzip
import json
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
import jax
from ab_step import build  # this folder's A/B script (the script's folder is on sys.path)

from flax_resnet import conv, models

PARTS = re.compile(r"(CONV_\w+|BNORM|MAXPOOL)")


def scoped(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with jax.named_scope(name):
            return fn(*args, **kwargs)

    return wrapper


def install_scopes() -> None:
    conv2d = models.conv2d

    def conv_scoped(x, kernel, stride, padding, lowering="auto"):
        chosen = lowering
        if lowering == "auto":
            chosen = conv.choose_lowering(x.shape, kernel.shape, stride, padding, x.dtype)
        with jax.named_scope(f"CONV_{chosen}_{x.shape[1]}x{x.shape[2]}x{x.shape[3]}_k{kernel.shape[0]}"):
            return conv2d(x, kernel, stride, padding, lowering)

    models.conv2d = conv_scoped
    models.batch_norm_train = scoped("BNORM", models.batch_norm_train)
    models.max_pool_3x3_s2 = scoped("MAXPOOL", models.max_pool_3x3_s2)


def leaf_events(events: list[dict]) -> list[dict]:
    """Kernel events that enclose no other event on their thread."""
    by_thread: dict[tuple, list[dict]] = collections.defaultdict(list)
    for e in events:
        by_thread[(e["pid"], e["tid"])].append(e)
    leaves = []
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        for i, e in enumerate(evs):
            nxt = evs[i + 1] if i + 1 < len(evs) else None
            if nxt is None or nxt["ts"] >= e["ts"] + e["dur"]:
                leaves.append(e)
    return leaves


def main(variant: str, batch_size: int = 128, steps: int = 5) -> None:
    install_scopes()
    compiled, state, batch, key = build(variant, batch_size, contextlib.nullcontext())  # the A/B's fixed step
    op_names, shapes = {}, {}
    for line in compiled.as_text().splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\w+\[[\d,]*\])", line)
        if m:
            shapes[m.group(1)] = m.group(2)
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{op_name=\"([^\"]*)\"", line)
        if m:
            op_names[m.group(1)] = m.group(2)
    for _ in range(3):
        state, _ = compiled(state, batch, key)
    jax.block_until_ready(state)
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        for _ in range(steps):
            state, _ = compiled(state, batch, key)
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        path = next(Path(trace_dir).rglob("*.trace.json.gz"))
        with gzip.open(path, "rt") as f:
            events = json.load(f)["traceEvents"]
    kernels = [
        e for e in events
        if e.get("ph") == "X" and not e["name"].startswith(("$", "end:")) and "::" not in e["name"]
        and "Pjit" not in e["name"]
    ]
    total: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    other: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for e in leaf_events(kernels):
        op_name = op_names.get(e["name"], "?")
        m = PARTS.search(op_name)
        if m:
            before = op_name.split(m.group(1))[0]
            part = m.group(1) + (" bwd" if "transpose(" in before else " fwd")
        else:
            part = "other"
            other[(op_name[:80], re.sub(r"\.\d+$", "", e["name"]), shapes.get(e["name"], "?"))] += e["dur"]
        total[part] += e["dur"]
        count[part] += 1
    print(f"resnet18 {variant}, batch {batch_size}, {steps} profiled steps; thread time per step")
    for part, us in total.most_common():
        print(f"{us / 1000 / steps:9.1f} ms  {count[part] / steps:6.0f} kernels  {part}")
    print("unattributed, largest (op name, kernel kind, result shape):")
    for (op_name, kind, shape), us in other.most_common(16):
        print(f"{us / 1000 / steps:9.1f} ms  {kind:28} {shape:24} {op_name}")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:4]))
