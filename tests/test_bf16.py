"""bfloat16 compute: convs/matmuls in bf16, params, BN statistics and the loss in float32; it still learns."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flax_resnet import config as config_lib
from flax_resnet import models, train


def _tiny_batch(n: int = 16, size: int = 8, seed: int = 0) -> dict[str, jax.Array]:
    # 8x8 images keep the test cheap; the cifar variant (global average pooling) accepts any size.
    rng = np.random.default_rng(seed)
    return {
        "image": jnp.asarray(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)),
        "label": jnp.asarray(rng.integers(0, 10, (n,), dtype=np.int32)),
    }


def test_bf16_convs_run_in_bf16_and_params_stay_fp32() -> None:
    model = models.create_model("resnet18", "cifar", dtype="bfloat16")
    x = jnp.zeros((2, 32, 32, 3), jnp.float32)
    # The conv's output dtype is its compute dtype (the model's BN then works in float32 and casts back).
    assert model.conv1(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16
    hlo = jax.jit(lambda m, v: m(v)).lower(nnx.view(model, use_running_average=True), x).as_text()
    # Whatever the lowering (XLA convolution, or patches + dot on CPU), every conv/matmul op computes in bf16.
    ops = [line for line in hlo.splitlines() if "stablehlo.convolution" in line or "stablehlo.dot_general" in line]
    assert len(ops) >= 20 and all("xbf16>" in line and "xf32>" not in line for line in ops), ops
    for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)) + jax.tree.leaves(nnx.state(model, nnx.BatchStat)):
        assert leaf.dtype in (jnp.float32, jnp.int32)


def test_bf16_logits_close_to_fp32() -> None:
    # Same weights (same seed), eval mode. bf16 keeps 8 mantissa bits: each rounding is <= 2^-9 relative, and
    # through ~20 layers with BN re-normalizing in fp32 the errors add up to a few percent of the logit scale.
    # Tolerance: max |diff| <= 5% of the largest fp32 |logit|, and the logits strongly correlated (>= 0.99).
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 16, 16, 3)), jnp.float32)
    fp32 = np.asarray(models.predict(models.create_model("resnet18", "cifar", seed=3), x))
    bf16_model = models.create_model("resnet18", "cifar", seed=3, dtype="bfloat16")
    bf16 = np.asarray(models.predict(bf16_model, x))
    assert bf16.dtype == np.float32
    scale = np.max(np.abs(fp32))
    assert np.max(np.abs(bf16 - fp32)) <= 0.05 * scale, (np.max(np.abs(bf16 - fp32)), scale)
    assert np.corrcoef(bf16.ravel(), fp32.ravel())[0, 1] >= 0.99
    assert not np.array_equal(bf16, fp32)  # it really computed in lower precision


def test_bf16_training_learns_and_keeps_fp32_state() -> None:
    config = config_lib.make_config("article", arch="resnet18", dtype="bfloat16", lr=0.05)
    model = models.create_model("resnet18", "cifar", dtype="bfloat16")
    tx = train.make_optimizer(config.lr, config.momentum, config.nesterov, config.weight_decay)
    graphdef, state = train.init_state(model, tx)
    step = train.make_train_step(graphdef, tx, config, augment=False)
    batch = _tiny_batch()
    key = jax.random.key(0)
    losses = []
    for _ in range(30):
        state, metrics = step(state, batch, key)
        losses.append(float(metrics["loss"]))
        assert metrics["loss"].dtype == jnp.float32
    # Memorizing 16 fixed examples: from ~ln(10) = 2.3 to well below it.
    assert losses[0] > 1.5
    assert np.mean(losses[-3:]) < 0.5 * losses[0], losses
    for leaf in jax.tree.leaves(state.params) + jax.tree.leaves(state.opt_state):
        assert leaf.dtype == jnp.float32
    for leaf in jax.tree.leaves(state.batch_stats):
        assert leaf.dtype in (jnp.float32, jnp.int32)
