"""Where the benchmark's torch.compile train step breaks its graph and recompiles (CPU, fp32, batch 8).

Asked because resnet18's torch.compile measured 39,269 img/s on the H200 on 2026-12-04 against 56,683-60,246
in earlier sessions with the same code: does the timed loop recompile? Run from the repository root:
    TORCH_LOGS=recompiles python results/cpu_2026-12-04_epyc/compile_check.py
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from torch._dynamo.utils import counters

from flax_resnet.benchmark import make_torch_step

step = make_torch_step("resnet18", "cifar", 8, "compile", "float32")
for i in range(8):
    start = time.perf_counter()
    step.train_step()
    print(f"call {i}: {time.perf_counter() - start:.3f} s", flush=True)
print("graphs:", counters["stats"]["unique_graphs"], "captured calls:", counters["stats"]["calls_captured"])
print("graph breaks:")
for reason, n in counters["graph_break"].items():
    print(f"  {n} x {reason.splitlines()[0]}")
