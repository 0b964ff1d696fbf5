"""The stem's max-pool equals torch's MaxPool2d(3, 2, 1): values, and gradients routed to the same maxima."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from flax_resnet import models


def _torch_pool(x: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forward and input gradient of torch's max-pool, in NHWC."""
    xt = torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), requires_grad=True)
    y = torch.nn.functional.max_pool2d(xt, 3, stride=2, padding=1)
    y.backward(torch.tensor(np.ascontiguousarray(g.transpose(0, 3, 1, 2))))
    return y.detach().numpy().transpose(0, 2, 3, 1), xt.grad.numpy().transpose(0, 2, 3, 1)


# The CPU's own gradient, and autodiff of reduce_window (XLA's select-and-scatter), which GPU/TPU use.
@pytest.mark.parametrize("pool", [models._max_pool_first_max, models._reduce_window_max], ids=["cpu", "xla"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (7, 9), (16, 16)])
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_matches_torch(hw: tuple[int, int], dtype: type, ties: bool, pool) -> None:
    """Ties (ReLU zeros, repeated values) must send each window's gradient to the same element as torch:
    the first maximum in row-major order; overlapping windows add up."""
    rng = np.random.default_rng(hash(hw) % 2**32)
    x = rng.standard_normal((2, *hw, 3))
    if ties:
        x = np.maximum(np.round(2 * x) / 2, 0)  # values on a 0.5 grid, about half of them exactly 0
    x = x.astype(dtype)
    ho, wo = (hw[0] - 1) // 2 + 1, (hw[1] - 1) // 2 + 1
    g = rng.standard_normal((2, ho, wo, 3)).astype(dtype)
    with jax.enable_x64(dtype == np.float64):
        y, vjp = jax.vjp(pool, jax.device_put(x))
        (dx,) = vjp(jax.device_put(g))
        y, dx = np.asarray(y), np.asarray(dx)
    y_ref, dx_ref = _torch_pool(x, g)
    assert y.dtype == dx.dtype == dtype
    np.testing.assert_array_equal(y, y_ref)
    # the same elements receive gradient; sums of overlapping windows may round in another order
    np.testing.assert_array_equal(dx != 0, dx_ref != 0)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-6 if dtype == np.float32 else 1e-12, atol=0)


def test_cpu_takes_its_own_gradient() -> None:
    """On CPU the model's max-pool is the custom-gradient one: its gradient has no select-and-scatter."""
    assert jax.default_backend() == "cpu"
    x = np.zeros((1, 4, 4, 1), np.float32)
    hlo = jax.jit(jax.grad(lambda a: models.max_pool_3x3_s2(a).sum())).lower(x).as_text()
    assert "select_and_scatter" not in hlo.replace("-", "_")
    reference = jax.jit(jax.grad(lambda a: models._reduce_window_max(a).sum())).lower(x).as_text()
    assert "select_and_scatter" in reference.replace("-", "_")  # the check above can fail
