"""Every train-mode BatchNorm implementation (models.BATCH_NORMS) against torch.nn.BatchNorm2d: output,
gradients w.r.t. input, scale and bias, and running statistics; then a whole train step against `autodiff`."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from flax_resnet import config as config_lib
from flax_resnet import models, train


def _torch_reference(x: np.ndarray, g: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> dict[str, np.ndarray]:
    bn = torch.nn.BatchNorm2d(x.shape[-1]).double()
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(weight))
        bn.bias.copy_(torch.from_numpy(bias))
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    y = bn(xt)
    y.backward(torch.from_numpy(g.transpose(0, 3, 1, 2).copy()))
    nhwc = (0, 2, 3, 1)
    return {
        "y": y.detach().numpy().transpose(nhwc),
        "dx": xt.grad.numpy().transpose(nhwc),
        "dscale": bn.weight.grad.numpy(),
        "dbias": bn.bias.grad.numpy(),
        "mean": bn.running_mean.numpy(),
        "var": bn.running_var.numpy(),
    }


def _ours(impl: str, x: jax.Array, g: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> dict[str, np.ndarray]:
    bn = models.BatchNorm(x.shape[-1], impl=impl)
    bn.scale.set_value(jnp.asarray(weight, jnp.float32))
    bn.bias.set_value(jnp.asarray(bias, jnp.float32))
    if x.dtype == jnp.float64:  # parameters in float64 too, so the comparison is not limited by their rounding
        bn.scale.set_value(jnp.asarray(weight))
        bn.bias.set_value(jnp.asarray(bias))
    graphdef, params, rest = nnx.split(bn, nnx.Param, ...)

    def loss(params, x):
        module = nnx.merge(graphdef, params, rest, copy=True)
        y = module(x)
        return jnp.sum(y.astype(jnp.float64) * g), (y, nnx.state(module, nnx.BatchStat))

    (_, (y, stats)), (dparams, dx) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
    return {
        "y": np.asarray(y, np.float64),
        "dx": np.asarray(dx, np.float64),
        "dscale": np.asarray(dparams["scale"][...], np.float64),
        "dbias": np.asarray(dparams["bias"][...], np.float64),
        "mean": np.asarray(stats["mean"][...], np.float64),
        "var": np.asarray(stats["var"][...], np.float64),
    }


# float64: the functions agree to rounding (1e-12), except the running statistics, which BatchNorm keeps in
# float32 like every other buffer (2^-24 relative storage rounding, 1e-6 with margin). float32: rounding of
# sums over 200 values per channel (and for `onepass` about its sampled shift): bound 1e-5, the parity
# suite's train-mode tolerance.
@pytest.mark.parametrize("impl", models.BATCH_NORMS)
@pytest.mark.parametrize(("dtype", "tol", "stats_tol"), [("float64", 1e-12, 1e-6), ("float32", 1e-5, 1e-5)])
def test_matches_torch_batchnorm2d(impl: str, dtype: str, tol: float, stats_tol: float) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (8, 5, 5, 16))
    g = rng.normal(size=x.shape)
    weight, bias = rng.normal(1.0, 0.1, 16), rng.normal(0.0, 0.1, 16)
    ref = _torch_reference(x, g, weight, bias)
    with jax.enable_x64(True):
        ours = _ours(impl, jnp.asarray(x, dtype), g, weight, bias)
    for key in ref:
        err = np.abs(ours[key] - ref[key]).max() / np.abs(ref[key]).max()
        assert err <= (stats_tol if key in ("mean", "var") else tol), (key, err)


@pytest.mark.parametrize("impl", models.BATCH_NORMS)
def test_gradients_have_the_parameters_dtype(impl: str) -> None:
    # A float64 model keeps float32 parameters and computes in float64: each gradient must come back in its
    # parameter's dtype (a float64 bias gradient would change the optimizer state's dtypes after one step).
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 3, 3, 8)), jnp.float64)
        bn = models.BatchNorm(8, impl=impl)
        graphdef, params, rest = nnx.split(bn, nnx.Param, ...)
        grads = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p, rest, copy=True)(x) ** 2))(params)
        assert {k: grads[k][...].dtype for k in ("scale", "bias")} == {"scale": jnp.float32, "bias": jnp.float32}


@pytest.mark.parametrize("impl", models.BATCH_NORMS)
def test_float32_statistics_of_data_far_from_zero(impl: str) -> None:
    # Conv outputs whose mean is 100 standard deviations from 0, at the first call (running mean still 0).
    # E[x^2] - E[x]^2 about 0 would lose log2(1 + 100^2) ~ 13 of float32's 24 bits (~1e-3 relative error in
    # the variance); every implementation must give float64's statistics to fp32 rounding of the sums.
    rng = np.random.default_rng(1)
    x = rng.normal(100.0, 1.0, (32, 6, 6, 8)) * rng.uniform(0.5, 2.0, 8)  # channels at different scales
    ref_mean, ref_var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    ones, zeros = jnp.ones(8, jnp.float32), jnp.zeros(8, jnp.float32)
    x32 = jnp.asarray(x, jnp.float32)
    if impl == "autodiff":
        mean, var = models._batch_stats(x32, one_pass=False)
    else:
        _, mean, var = models.batch_norm_train(x32, ones, zeros, 1e-5, impl == "onepass")
    assert np.abs(np.asarray(mean, np.float64) / ref_mean - 1).max() <= 1e-6
    assert np.abs(np.asarray(var, np.float64) / ref_var - 1).max() <= 1e-5


def test_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="valid choices: autodiff, fused, onepass"):
        models.create_model("resnet18", batch_norm="cudnn")


def test_trainer_and_models_default_to_the_same_batch_norm() -> None:
    assert config_lib.Config().batch_norm == models.DEFAULT_BATCH_NORM == "onepass"


@pytest.mark.parametrize("impl", ["fused", "onepass"])
def test_train_step_matches_autodiff(impl: str) -> None:
    # One SGD step of a whole ResNet-18 (imagenet stem: cheap at 32x32), float32: the loss and every parameter
    # and running statistic after the step agree with the autodiff BatchNorm's to fp32 rounding (1e-5).
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)),
        "label": jnp.asarray(rng.integers(0, 10, (16,), dtype=np.int32)),
    }
    base = config_lib.make_config("article", arch="resnet18", variant="imagenet", batch_size=16)
    out = {}
    for name in ("autodiff", impl):
        config = dataclasses.replace(base, batch_norm=name)
        graphdef, state, tx, _ = train.build_state(config)
        step = train.make_train_step(graphdef, tx, config, augment=False)
        out[name] = step(state, batch, jax.random.key(0))
    (ref, ref_m), (got, got_m) = out["autodiff"], out[impl]
    assert abs(float(got_m["loss"]) - float(ref_m["loss"])) <= 1e-5 * abs(float(ref_m["loss"]))
    for a, b in zip(jax.tree.leaves((got.params, got.batch_stats)), jax.tree.leaves((ref.params, ref.batch_stats)),
                    strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert np.linalg.norm(a - b) <= 1e-5 * max(np.linalg.norm(b), 1e-12)
