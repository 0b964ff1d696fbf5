"""Gradients of the mean cross-entropy for every parameter: Flax vs torch_ref, both in float64."""

from __future__ import annotations

import pytest

from parity_tests import harness
from parity_tests.conftest import PAIR_PARAMS


@pytest.mark.parametrize(("arch", "variant"), PAIR_PARAMS)
def test_gradients(arch: str, variant: str, record_property: pytest.RecordProperty) -> None:
    r = harness.check_gradients(arch, variant)
    record_property("max_diff", r.worst)
    record_property("torch_fp32_vs_fp64", r.worst_fp32_floor)
    assert r.compared > 0
    assert r.loss <= 1e-10
    assert r.worst <= harness.TOL_GRAD, r.worst_name
    if variant == "article":
        assert r.zero_bias_ratio <= 1e-8  # exact value 0: conv bias followed by train-mode BN
