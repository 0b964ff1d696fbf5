"""Is the trainer's augmented step slower than the fixed-batch step? Four calls alternated step by step in
one process, so the machine's drift hits all alike:

  loop+aug   the trainer's call (flax_resnet.train.make_loop_step: packed state, gather, augment, sums)
  loop+noaug the same call with augment=False (packing, gather and sums, no crop/flip)
  step+aug   the plain train step (TrainState pytree) with augmentation, on one fixed batch
  step+fixed the plain train step without augmentation on one fixed batch (the benchmark's "fixed")

Usage: paired_input.py VARIANT [ROUNDS]. Throwaway measurement; batch 128, fp32, resnet18.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax
import jax.numpy as jnp
import numpy as np

from flax_resnet import config as config_lib
from flax_resnet import models, train
from flax_resnet.packing import StatePacking


def main() -> None:
    variant = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    bs, n = 128, 1024
    config = config_lib.make_config("article", arch="resnet18", variant=variant, batch_size=bs, dtype="float32")
    model = models.create_model("resnet18", variant, dtype="float32")
    tx = train.make_optimizer(config.lr, config.momentum, config.nesterov, config.weight_decay)
    graphdef, state0 = train.init_state(model, tx)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, (n,), dtype=np.int32))
    order = jnp.asarray(rng.integers(0, n, (rounds + 4, bs), dtype=np.int32))
    key = jax.random.key(0)
    packing = StatePacking(state0)
    batch = {"image": images[:bs], "label": labels[:bs]}

    calls = {}
    for aug in (True, False):
        ls = train.make_loop_step(train.make_train_step(graphdef, tx, config, augment=aug), len(order), packing)
        held = {"packed": packing.pack_jit(jax.tree.map(jnp.copy, state0)),
                "sums": jax.tree.map(jnp.asarray, train.loop_sums())}
        c = ls.lower(held["packed"], held["sums"], images, labels, order, key).compile()

        def run(c=c, held=held):
            held["packed"], held["sums"] = c(held["packed"], held["sums"], images, labels, order, key)
            return held["sums"]["loss"]

        calls["loop+aug" if aug else "loop+noaug"] = run
    for aug in (True, False):
        st = train.make_train_step(graphdef, tx, config, augment=aug)
        held = {"state": jax.tree.map(jnp.copy, state0)}
        c = st.lower(held["state"], batch, key).compile()

        def run(c=c, held=held):
            held["state"], m = c(held["state"], batch, key)
            return m["loss"]

        calls["step+aug" if aug else "step+fixed"] = run
    for f in calls.values():
        for _ in range(2):
            jax.block_until_ready(f())
    times = {k: [] for k in calls}
    for r in range(rounds):
        names = list(calls) if r % 2 == 0 else list(reversed(calls))
        for k in names:
            t = time.perf_counter()
            jax.block_until_ready(calls[k]())
            times[k].append(time.perf_counter() - t)
    base = np.asarray(times["step+fixed"])
    for k, ts in times.items():
        ts = np.asarray(ts)
        print(f"{variant} {k:11s} median {1000 * np.median(ts):7.1f} ms  ratio to step+fixed (per round): median "
              f"{np.median(ts / base):.3f} range {np.min(ts / base):.3f}-{np.max(ts / base):.3f}")


if __name__ == "__main__":
    main()
