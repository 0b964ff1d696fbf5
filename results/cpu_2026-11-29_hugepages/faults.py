"""Page faults, kernel time and wall time per ResNet-18 train and eval step, with this process's malloc setting.

Usage: python results/cpu_2026-11-29_hugepages/faults.py VARIANT [STEPS]
  FLAX_RESNET_HUGEPAGES=0 python ...   the same with 4 KiB pages (no re-execution)

The fixed-batch train step of ../cpu_2026-11-29_intel/ab_step.py and the trainer's eval step, batch 128, timed
one call at a time after two warm-up calls; faults and kernel/user time from getrusage over the timed calls.
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cpu_2026-11-29_intel"))  # ab_step.build
from flax_resnet.hugepages import enabled, reexec_with_hugepages

if __name__ == "__main__":
    reexec_with_hugepages()

import jax
import numpy as np
from ab_step import build

from flax_resnet import models, train


def timed(call, steps: int) -> str:
    for _ in range(2):
        jax.block_until_ready(call())
    r0, times = resource.getrusage(resource.RUSAGE_SELF), []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - t0)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return (
        f"median {statistics.median(times) * 1e3:7.1f} ms (min {min(times) * 1e3:7.1f}), "
        f"{(r1.ru_minflt - r0.ru_minflt) / steps:9.0f} faults, kernel {(r1.ru_stime - r0.ru_stime) / steps:.3f} s, "
        f"user {(r1.ru_utime - r0.ru_utime) / steps:.3f} s per step"
    )


def main(variant: str, steps: int = 6) -> None:
    compiled, state, batch, key = build(variant, 128, contextlib.nullcontext())
    holder = {"state": state}

    def train_call():
        holder["state"], _ = compiled(holder["state"], batch, key)
        return holder["state"]

    tx = train.make_optimizer(0.1, 0.9, False, 5e-4)  # only the graph is used: the state is build()'s
    graphdef, _ = train.init_state(models.create_model("resnet18", variant), tx)
    eval_batch = {**batch, "mask": jax.device_put(np.ones(128, np.float32))}
    eval_step = train.make_eval_step(graphdef).lower(state, eval_batch).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
    print(f"resnet18 {variant}, batch 128, malloc huge pages: {'on' if enabled() else 'off'}, "
          f"train step temp buffer {temp:.0f} MiB")
    print(f"  train: {timed(train_call, steps)}")
    eval_result = timed(lambda: eval_step(holder["state"], eval_batch), steps)  # the train step donates `state`
    print(f"  eval:  {eval_result}")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
