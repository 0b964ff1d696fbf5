"""How far 2 devices drift from 1 after N steps of tests/test_sharding.py's tiny problem, per train-mode BatchNorm.

XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu \
    python device_count_diff.py autodiff,fused,onepass 2
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import jax
import numpy as np

from flax_resnet import config as config_lib
from flax_resnet import distributed, models, train


def run(steps: int, mesh, impl: str, batch: int = 16, size: int = 8) -> np.ndarray:
    """The test's run(): the article recipe on random 8x8 images, batch 16; params and stats, flattened."""
    config = config_lib.make_config("article", arch="resnet18", variant="cifar", batch_size=batch)
    model = models.create_model("resnet18", "cifar", seed=0, batch_norm=impl)
    tx = train.make_optimizer(config.lr, config.momentum, config.nesterov, config.weight_decay)
    graphdef, state = train.init_state(model, tx)
    step = train.make_train_step(graphdef, tx, config, augment=True)
    state = distributed.put_replicated(jax.device_get(state), mesh)
    rng = np.random.default_rng(0)
    for i in range(steps):
        images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, (batch,), dtype=np.int32)
        b = {"image": distributed.put_batch(images, mesh), "label": distributed.put_batch(labels, mesh)}
        state, _ = step(state, b, jax.random.key(i))
    leaves = jax.tree.leaves((state.params, state.batch_stats))
    return np.concatenate([np.asarray(jax.device_get(x)).ravel().astype(np.float64) for x in leaves])


for impl in sys.argv[1].split(","):  # whole-state relative L2 difference, the test's measure
    a = run(int(sys.argv[2]), distributed.make_mesh(jax.devices()[:1]), impl)
    b = run(int(sys.argv[2]), distributed.make_mesh(jax.devices()[:2]), impl)
    print(impl, "rel diff 1 vs 2 devices:", np.linalg.norm(a - b) / np.linalg.norm(a), flush=True)
