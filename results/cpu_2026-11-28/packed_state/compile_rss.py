"""Process peak RSS (MiB) through the phases of the trainer's loop step, resnet18 article variant, fp32, batch 128:
the state packed (46 arrays) or as its 227 leaves (the call before flax_resnet/packing.py).

    python compile_rss.py leaves; python compile_rss.py packed
"""

import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import jax
import jax.numpy as jnp
import numpy as np

from flax_resnet import config as config_lib
from flax_resnet import data as data_lib
from flax_resnet import train
from flax_resnet.packing import StatePacking


def rss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


bs, n = 128, 512
config = config_lib.make_config("article", arch="resnet18", variant="article", batch_size=bs)
graphdef, state, tx, _ = train.build_state(config, n // bs)
images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
labels = jnp.asarray(np.random.default_rng(0).integers(0, 10, (n,), dtype=np.int32))
order = jnp.asarray(data_lib.train_batch_indices(0, 0, n, bs))
packing = StatePacking(state)
if sys.argv[1] == "leaves":  # every leaf passed as itself: no buffers
    packing.small = [False] * len(packing.small)
    packing.buffer_dtypes = []
print("start", rss())
loop = train.make_loop_step(train.make_train_step(graphdef, tx, config), n // bs, packing)
packed = packing.pack_jit(jax.tree.map(jnp.copy, state))
print("packed", len(packed), rss())
sums = jax.tree.map(jnp.asarray, train.loop_sums())
compiled = loop.lower(packed, sums, images, labels, order, jax.random.key(0)).compile()
print("compiled", rss())
for _ in range(3):
    packed, sums = compiled(packed, sums, images, labels, order, jax.random.key(0))
jax.block_until_ready(sums)
print("ran", rss())
