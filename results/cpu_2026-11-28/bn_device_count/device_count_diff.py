"""How far 2 devices drift from 1 after N steps of tests/test_sharding.py's tiny problem, per train-mode BatchNorm.

XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu \
    python device_count_diff.py autodiff,fused,onepass 2
"""

import ast
import sys
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
# The test's own problem: its COMMON source (the string inside textwrap.dedent), run here in this process.
tree = ast.parse((ROOT / "tests" / "test_sharding.py").read_text())
common = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "COMMON")
source = textwrap.dedent(common.func.value.args[0].value).format(root=str(ROOT))  # COMMON = dedent(...).format(...)
scope: dict = {}
exec(source, scope)  # defines run(steps, mesh, batch, size, batch_norm, lr)
jax, distributed, run = scope["jax"], scope["distributed"], scope["run"]

# lr 0.1: the test's problem as it was when output*.txt were measured (the test now uses 0.01, see its comment)
for impl in sys.argv[1].split(","):  # whole-state relative L2 difference, the test's measure
    one, two = (
        np.concatenate([x.ravel().astype(np.float64) for x in run(int(sys.argv[2]), mesh, batch_norm=impl, lr=0.1)])
        for mesh in (distributed.make_mesh(jax.devices()[:1]), distributed.make_mesh(jax.devices()[:2]))
    )
    print(impl, "rel diff 1 vs 2 devices:", np.linalg.norm(one - two) / np.linalg.norm(one), flush=True)
