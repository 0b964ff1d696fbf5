"""Where a training step's device time goes: a trace of a few steps, summarized per kernel, JAX and torch alike.

The benchmark says how fast a step is; this says why, in the same process and on the same batch. A JAX trace
comes from `jax.profiler.trace` (its Chrome-trace `*.trace.json.gz`, plain JSON, so no profiler plugin is
needed to read it); a torch one from `torch.profiler`. Both are reduced to the same summary: wall time per
step, the summed duration of device kernels per step, kernels per step, and the kernels with the largest
total time. A device sum far below the wall time means the device waits (host-bound or launch-bound steps).
On a CPU there is no device line: the summary then counts XLA's (or torch's) operator events on the host,
which says less (they nest and run on several threads) and is labelled as such.
"""

from __future__ import annotations

import collections
import gzip
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TOP = 25  # kernels listed per summary


def _summary(
    source: str, steps: int, wall_seconds: float, totals: dict[str, float], counts: dict[str, int], top: int = TOP
) -> dict[str, Any]:
    """The shared summary: per-step wall, device-kernel sum and count, and the `top` kernels by total time.

    `totals` holds microseconds per kernel name over all `steps`, `counts` their number of launches.
    """
    device_us = sum(totals.values())
    ranked = sorted(totals, key=lambda k: -totals[k])[:top]
    return {
        "source": source,
        "steps": steps,
        "wall_ms_per_step": 1000 * wall_seconds / steps,
        "device_ms_per_step": device_us / 1000 / steps,
        "kernels_per_step": sum(counts.values()) / steps,
        "top": [
            {
                "name": name,
                "ms_per_step": totals[name] / 1000 / steps,
                "share": totals[name] / device_us if device_us else 0.0,
                "calls_per_step": counts[name] / steps,
            }
            for name in ranked
        ],
    }


def summarize_jax_trace(path: str | Path, steps: int, wall_seconds: float) -> dict[str, Any]:
    """Summary of a `jax.profiler` Chrome trace: kernels on the device's stream lines (GPU/TPU), else the
    device's other lines ("XLA Ops"), else, on a CPU, the host's XLA op events (Python and runtime frames left
    out)."""
    with gzip.open(path, "rt") as f:
        events = json.load(f)["traceEvents"]
    process = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    thread = {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    spans = [e for e in events if e.get("ph") == "X"]
    devices = {pid for pid, name in process.items() if name.startswith("/device:")}

    def on(pick: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        return [e for e in spans if pick(e)]

    chosen = on(lambda e: e["pid"] in devices and thread.get((e["pid"], e["tid"]), "").startswith("Stream"))
    source = "device stream kernels"
    if not chosen:
        chosen = on(lambda e: e["pid"] in devices and "XLA Ops" in thread.get((e["pid"], e["tid"]), ""))
        source = "device XLA ops"
    if not chosen:
        chosen = on(lambda e: e["pid"] in devices)
        source = "device events"
    if not chosen:
        # XLA's own op events; Python frames ("$file:line") and runtime frames ("Class::method") left out
        chosen = on(lambda e: e["pid"] not in devices and not e["name"].startswith("$") and "::" not in e["name"])
        source = "host events (no device line: a CPU run; nested and multi-threaded, not a device time)"
    totals: dict[str, float] = collections.defaultdict(float)
    counts: dict[str, int] = collections.Counter()
    for e in chosen:
        totals[e["name"]] += float(e.get("dur", 0.0))
        counts[e["name"]] += 1
    return _summary(source, steps, wall_seconds, totals, counts)


def profile_jax(run: Callable[[], Any], steps: int, log_dir: str | Path) -> dict[str, Any]:
    """Trace `steps` calls of `run` (a jitted step that is already compiled) and summarize the trace."""
    import jax

    log_dir = Path(log_dir)
    jax.block_until_ready(run())  # anything queued before the trace stays out of it
    before = set(log_dir.glob("plugins/profile/*/*.trace.json.gz"))
    with jax.profiler.trace(str(log_dir)):
        start = time.perf_counter()
        out = None
        for _ in range(steps):
            out = run()
        jax.block_until_ready(out)
        wall = time.perf_counter() - start
    new = sorted(set(log_dir.glob("plugins/profile/*/*.trace.json.gz")) - before, key=lambda p: p.stat().st_mtime)
    if not new:
        raise RuntimeError(f"jax.profiler wrote no trace under {log_dir}")
    summary = summarize_jax_trace(new[-1], steps, wall)
    summary["trace"] = str(new[-1])
    return summary


def profile_torch(run: Callable[[], Any], steps: int, log_dir: str | Path, name: str) -> dict[str, Any]:
    """Trace `steps` calls of `run` with torch.profiler (CUDA kernels where there is a GPU) and summarize;
    the Chrome trace is kept as `log_dir/name.trace.json`."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    run()
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            run()
        sync()
        wall = time.perf_counter() - start
    totals: dict[str, float] = collections.defaultdict(float)
    counts: dict[str, int] = collections.Counter()
    for evt in prof.events():
        if cuda:
            if evt.device_type != torch.autograd.DeviceType.CUDA:
                continue
            dur = evt.time_range.elapsed_us()
        else:
            if evt.cpu_parent is not None:  # top-level operators only, so nested ones are not counted twice
                continue
            dur = evt.cpu_time_total
        totals[evt.name] += float(dur)
        counts[evt.name] += 1
    source = "device kernels" if cuda else "host operators (CPU run; top-level ops, not a device time)"
    summary = _summary(source, steps, wall, totals, counts)
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    trace = log_dir / f"{name}.trace.json"
    prof.export_chrome_trace(str(trace))
    summary["trace"] = str(trace)
    return summary


def format_profile(title: str, summary: dict[str, Any], top: int = 12) -> str:
    """A few lines: the per-step totals and the `top` kernels by time."""
    lines = [
        f"profile {title}: wall {summary['wall_ms_per_step']:.3f} ms/step, {summary['source']} "
        f"{summary['device_ms_per_step']:.3f} ms/step in {summary['kernels_per_step']:.0f} kernels/step"
    ]
    for k in summary["top"][:top]:
        lines.append(
            f"  {k['ms_per_step']:9.3f} ms {k['share']:6.1%} x{k['calls_per_step']:<6.1f} {k['name'][:110]}"
        )
    return "\n".join(lines)
