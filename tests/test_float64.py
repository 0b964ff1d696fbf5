"""A float64 model is float64 throughout: its variables, what it loads and exports, and its logits' accuracy."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import torchvision
from flax import nnx

import flax_resnet
from parity_tests.harness import float64_jax


def test_float64_model_holds_loads_exports_and_computes_in_float64() -> None:
    """With float32 variables (as before), float64 torch weights were rounded on load (3.7e-9), exported as
    float32, and the float64 logits were 1.6e-7 off torch's float64 forward pass."""
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=10).double().eval()
    with torch.no_grad():  # BatchNorm statistics of a trained network, not the init's 0/1
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3))
    with float64_jax():
        model = flax_resnet.create_model("resnet18", "imagenet", dtype="float64")
        assert {str(leaf.dtype) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))} == {"float64"}
        flax_resnet.load_torch_state_dict(model, reference.state_dict())
        exported = flax_resnet.to_torch_state_dict(model)
        logits = np.asarray(flax_resnet.predict(model, x))
    for key, tensor in reference.state_dict().items():
        assert exported[key].dtype == tensor.numpy().dtype and np.array_equal(exported[key], tensor.numpy()), key
    with torch.no_grad():
        want = reference(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    assert logits.dtype == np.float64
    assert np.abs(logits - want).max() <= 1e-12 * max(1.0, np.abs(want).max())


def test_float64_init_is_the_float32_init_of_the_same_seed_and_needs_64_bit_jax() -> None:
    assert not jax.config.read("jax_enable_x64")  # the tests' default: float64_jax restores it
    with pytest.raises(ValueError, match=r"float64 needs 64-bit JAX: .*jax_enable_x64"):
        flax_resnet.create_model("resnet18", "imagenet", dtype="float64")
    single = flax_resnet.create_model("resnet18", "imagenet", seed=5)
    with float64_jax():
        double = flax_resnet.create_model("resnet18", "imagenet", seed=5, dtype="float64")
        pairs = list(zip(jax.tree.leaves(nnx.state(single)), jax.tree.leaves(nnx.state(double)), strict=True))
        assert all(np.array_equal(np.asarray(a, np.float64), np.asarray(b)) for a, b in pairs)
