"""Which machine a run or a measurement ran on: the CPU's model, and a run's device as both trainers record it.

Accuracy does not depend on it, time does: the results table's device column and the benchmark's records say it.
"""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; ", AVX-512" where it has it), else what `platform` knows: CPU
    speed ratios depend on it (torch's oneDNN convolutions on an AVX-512 Xeon vs an AMD EPYC, README "Speed")."""
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
    except OSError:
        info = {}
    info = {k.strip(): v.strip() for k, v in info.items()}
    if "model name" not in info:
        return platform.processor() or platform.machine()
    return info["model name"] + (", AVX-512" if "avx512f" in info.get("flags", "").split() else "")


def usable_cpus() -> int:
    """The CPUs this process may run on (a container's or cpuset's share, not the host's count where they differ)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_device(platform_name: str, kind: str, count: int = 1) -> str:
    """A run's device as its metrics.jsonl records it: 'NVIDIA H200', '8 x TPU v4', or on a CPU the model and
    the CPUs the run may use ('CPU Intel(R) Xeon(R) ..., AVX-512, 2 CPUs'), since a CPU device is all of them.

    `platform_name` is JAX's platform ("cpu", "gpu", "tpu") or torch's device type ("cpu", "cuda")."""
    if platform_name == "cpu":
        return f"CPU {cpu_model()}, {usable_cpus()} CPUs"
    return kind if count == 1 else f"{count} x {kind}"
