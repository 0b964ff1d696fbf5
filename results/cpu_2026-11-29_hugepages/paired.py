"""JAX against torch eager in one process, timed alternately: the train step's time ratio per round.

Usage: python results/cpu_2026-11-29_hugepages/paired.py VARIANT [ROUNDS] [STEPS] [PAUSE_S]
  FLAX_RESNET_HUGEPAGES=0 python ...   the same with 4 KiB pages

Each round times STEPS train steps of JAX's fixed-batch step (../cpu_2026-11-29_intel/ab_step.py's build: the
benchmark's "fixed" step), then STEPS of torch eager's (flax_resnet.benchmark.make_torch_step, the benchmark's
torch step), both ResNet-18 at batch 128 in fp32 on the same synthetic batch shape. The benchmark runs JAX
and torch minutes apart, so machine drift on this VM (10-40% between runs) lands in its ratio; here each
round's ratio (torch time / JAX time = JAX speed / torch speed) pairs measurements seconds apart. PAUSE_S
(default 0.5) seconds of sleep before each framework's steps let the other's worker threads go idle.
"""

from __future__ import annotations

import contextlib
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
from ab_step import build

from flax_resnet.benchmark import make_torch_step


def main(variant: str, rounds: int = 10, steps: int = 2, pause: float = 0.5) -> None:
    import torch

    compiled, state, batch, key = build(variant, 128, contextlib.nullcontext())
    built = make_torch_step("resnet18", variant, 128, "eager", "float32")
    built.model.train()
    holder = {"state": state}

    def jax_steps() -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            holder["state"], _ = compiled(holder["state"], batch, key)
        jax.block_until_ready(holder["state"])
        return time.perf_counter() - t0

    def torch_steps() -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            built.train_step()
        return time.perf_counter() - t0

    jax_steps(), torch_steps()  # warm-up
    print(f"resnet18 {variant}, batch 128, fp32, {steps} steps per framework per round, malloc huge pages: "
          f"{'on' if enabled() else 'off'}, jax {jax.__version__}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    ratios = []
    for r in range(rounds):
        time.sleep(pause)
        tj = jax_steps()
        time.sleep(pause)
        tt = torch_steps()
        ratios.append(tt / tj)
        print(f"round {r + 1:2d}: jax {tj / steps * 1e3:7.1f} ms/step, torch {tt / steps * 1e3:7.1f} ms/step, "
              f"jax / torch speed {tt / tj:.3f}", flush=True)
    print(f"jax / torch speed: median {statistics.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f} "
          f"over {rounds} rounds")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:4]), *(float(a) for a in sys.argv[4:5]))
