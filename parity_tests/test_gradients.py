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

