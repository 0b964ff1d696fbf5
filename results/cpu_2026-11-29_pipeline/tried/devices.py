"""Time the trainer's cifar/imagenet ResNet-18 step (batch 128, fp32) with the batch sharded over N host devices.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=N; usage: devices.py VARIANT NDEV [STEPS].
Throwaway measurement: does splitting the step over two XLA:CPU devices fill the single-threaded gaps?
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import jax
import jax.numpy as jnp
import numpy as np

from flax_resnet import config as config_lib
from flax_resnet import models, train
from flax_resnet.distributed import make_mesh, put_batch, put_replicated
from flax_resnet.packing import StatePacking


def main() -> None:
    variant, ndev = sys.argv[1], int(sys.argv[2])
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 6
    bs = 128
    config = config_lib.make_config("article", arch="resnet18", variant=variant, batch_size=bs, dtype="float32")
    model = models.create_model("resnet18", variant, dtype="float32")
    tx = train.make_optimizer(config.lr, config.momentum, config.nesterov, config.weight_decay)
    graphdef, state0 = train.init_state(model, tx)
    mesh = make_mesh(jax.devices()[:ndev])
    n = 1024
    rng = np.random.default_rng(0)
    images = put_replicated(jnp.asarray(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)), mesh)
    labels = put_replicated(jnp.asarray(rng.integers(0, 10, (n,), dtype=np.int32)), mesh)
    order_np = rng.integers(0, n, (steps + 2, bs), dtype=np.int32)
    packing = StatePacking(state0)
    loop_step = train.make_loop_step(train.make_train_step(graphdef, tx, config, augment=True), len(order_np), packing)
    packed = put_replicated(packing.pack_jit(state0), mesh)
    sums = put_replicated(train.loop_sums(), mesh)
    order = put_batch(order_np, mesh, axis=1)
    key = jax.random.key(0)
    compiled = loop_step.lower(packed, sums, images, labels, order, key).compile()
    for _ in range(2):
        packed, sums = compiled(packed, sums, images, labels, order, key)
    jax.block_until_ready(sums)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        packed, sums = compiled(packed, sums, images, labels, order, key)
        jax.block_until_ready(sums)
        times.append(time.perf_counter() - t)
    med = float(np.median(times))
    print(f"{variant} ndev={ndev} step median {1000 * med:.0f} ms ({bs / med:.1f} img/s); "
          f"all {[round(1000 * t) for t in times]} loss_sum {float(sums['loss']):.4f}")


if __name__ == "__main__":
    main()
