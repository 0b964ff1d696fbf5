"""The packed training state (flax_resnet/packing.py): exact round trips, the argument count it promises for a
ResNet-18, and the trainer's packed loop step against plain train steps on the same batches and keys."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_resnet import config as config_lib
from flax_resnet import data as data_lib
from flax_resnet import train
from flax_resnet.packing import StatePacking

# Weight tensors (ndim >= 2) of a ResNet-18, counted from the architecture: a stem conv, 2 convs in each of
# 8 basic blocks, the 1x1 projections (cifar/imagenet: the 3 stages that change shape; article: the first
# block of all 4 stages) and the fc weight. Each has an SGD momentum buffer of its shape.
WEIGHT_TENSORS = {"cifar": 1 + 16 + 3 + 1, "article": 1 + 16 + 4 + 1}


def _state(variant: str, batch_size: int = 8) -> tuple:
    config = config_lib.make_config("article", arch="resnet18", variant=variant, batch_size=batch_size)
    graphdef, state, tx, _ = train.build_state(config)
    return config, graphdef, state, tx


@pytest.mark.parametrize("variant", sorted(WEIGHT_TENSORS))
def test_round_trip_is_exact_and_packs_every_vector(variant: str) -> None:
    _, _, state, _ = _state(variant)
    # Distinct values in every leaf: a fresh state's BatchNorm vectors are all 0 or all 1, so leaves of one shape
    # swapped by unpack would round-trip unnoticed.
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda x: jnp.asarray(rng.integers(0, 2**20, x.shape).astype(x.dtype)), state)
    packing = StatePacking(state)
    packed = packing.pack(state)
    # one int32 buffer (step and counters), one float32 buffer (BatchNorm vectors, biases, their momentum),
    # then the weight tensors and their momentum buffers, passed through without a copy
    assert {x.dtype for x in packed[:2]} == {jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}
    assert all(x.ndim == 1 for x in packed[:2])
    assert len(packed) == len(packing) == 2 + 2 * WEIGHT_TENSORS[variant]
    large = [x for x in jax.tree.leaves(state) if x.ndim >= 2]
    assert all(a is b for a, b in zip(packed[2:], large, strict=True))
    for unpack in (packing.unpack, packing.unpack_jit):
        back = unpack(packing.pack_jit(state))
        assert jax.tree.structure(back) == jax.tree.structure(state)
        for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(state), strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_packed_loop_step_equals_plain_train_steps() -> None:
    # The trainer's call (packed state, batch gathered by the step's own row of `order`, key folded from the
    # step) against the plain pytree train step given those batches and keys: the same program up to the
    # gather and the packing, so the same numbers.
    config, graphdef, state, tx = _state("imagenet")
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, (32,), dtype=np.int32))
    order_np = data_lib.train_batch_indices(0, 0, 32, 8)
    order, key = jnp.asarray(order_np), jax.random.key(3)
    train_step = train.make_train_step(graphdef, tx, config)
    packing = StatePacking(state)
    loop_step = train.make_loop_step(train_step, len(order_np), packing)

    packed, sums = packing.pack_jit(jax.tree.map(jnp.copy, state)), jax.tree.map(jnp.asarray, train.loop_sums())
    plain, losses = state, []
    for i in range(2):
        packed, sums = loop_step(packed, sums, images, labels, order, key)
        batch = {"image": images[order_np[i]], "label": labels[order_np[i]]}
        plain, metrics = train_step(plain, batch, jax.random.fold_in(key, i))
        losses.append(float(metrics["loss"]))
    got = packing.unpack_jit(packed)
    assert int(got.step) == 2
    assert float(sums["loss"]) == pytest.approx(sum(losses), rel=1e-6)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(plain), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert np.linalg.norm(a - b) <= 1e-6 * max(np.linalg.norm(b), 1e-12)
