"""The trainer's loop step (resnet18 article variant, fp32, batch 8) with the state as its 227 leaves, packed
as flax_resnet/packing.py does (vectors in one buffer per dtype, weight tensors as themselves), and with every
leaf packed, weight tensors included: host time per call (inputs ready, so the call alone) and time per step.

    python pack_everything.py
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import jax
import jax.numpy as jnp
import numpy as np

from flax_resnet import config as config_lib
from flax_resnet import data as data_lib
from flax_resnet import train
from flax_resnet.packing import StatePacking

bs, n = 8, 512
config = config_lib.make_config("article", arch="resnet18", variant="article", batch_size=bs)
graphdef, state, tx, _ = train.build_state(config, n // bs)
rng = np.random.default_rng(0)
images = jnp.asarray(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
labels = jnp.asarray(rng.integers(0, 10, (n,), dtype=np.int32))
order = jnp.asarray(data_lib.train_batch_indices(0, 0, n, bs))
key = jax.random.key(0)
train_step = train.make_train_step(graphdef, tx, config)


def packing_with(small: str) -> StatePacking:
    packing = StatePacking(state)
    if small != "vectors":  # "none": every leaf as itself; "all": weight tensors in the buffers too
        packing.small = [small == "all"] * len(packing.small)
        packing.buffer_dtypes = list(dict.fromkeys(d for d, s in zip(packing.dtypes, packing.small, strict=True) if s))
    return packing


for small in ("none", "vectors", "all", "none", "vectors", "all"):
    packing = packing_with(small)
    loop_step = train.make_loop_step(train_step, n // bs, packing)
    packed = packing.pack_jit(jax.tree.map(jnp.copy, state))
    sums = jax.tree.map(jnp.asarray, train.loop_sums())
    packed, sums = loop_step(packed, sums, images, labels, order, key)  # compile
    calls = []
    for _ in range(30):
        jax.block_until_ready((packed, sums))
        start = time.perf_counter()
        packed, sums = loop_step(packed, sums, images, labels, order, key)
        calls.append(time.perf_counter() - start)
    jax.block_until_ready(sums)
    start = time.perf_counter()
    for _ in range(30):
        packed, sums = loop_step(packed, sums, images, labels, order, key)
    jax.block_until_ready(sums)
    step_ms = 1000 * (time.perf_counter() - start) / 30
    print(f"packed {small:8s} {len(packed):3d} arrays: host per call {1000 * statistics.median(calls[5:]):.3f} ms, "
          f"step {step_ms:.2f} ms", flush=True)
