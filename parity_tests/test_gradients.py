"""Gradients of the mean cross-entropy for every parameter: Flax vs torch_ref (and torch float64)."""

from __future__ import annotations

import pytest

from parity_tests import harness
from parity_tests.conftest import PAIR_PARAMS


@pytest.mark.parametrize(("arch", "variant"), PAIR_PARAMS)
def test_gradients(arch: str, variant: str, record_property: pytest.RecordProperty) -> None:
    r = harness.check_gradients(arch, variant)
    record_property("max_diff", r.worst)
    record_property("floor_ratio", r.worst_floor_ratio)
    assert r.compared + r.ill_conditioned > 0
    assert r.worst <= harness.TOL_GRAD, r.worst_name
    assert r.worst_floor_ratio <= harness.GRAD_FLOOR_FACTOR
    if variant == "article":
        assert r.zero_bias_ratio <= 1e-4  # exact value 0: conv bias followed by train-mode BN


@pytest.mark.parametrize(("arch", "variant"), PAIR_PARAMS)
def test_gradients_eval_mode(arch: str, variant: str, record_property: pytest.RecordProperty) -> None:
    """BatchNorm on running statistics: every parameter's fp32 gradient is well-determined, so the issue's
    1e-4 applies to all of them with no exception (the train-mode test above explains the exceptions)."""
    r = harness.check_gradients(arch, variant, train=False)
    record_property("max_diff", r.worst)
    assert r.ill_conditioned == 0, f"{r.ill_conditioned} parameters with torch fp32 error {r.worst_fp32_floor:.1e}"
    assert r.compared > 0
    assert r.worst <= harness.TOL_GRAD, r.worst_name
