"""The optimizer and a 20-step training trajectory: flax_resnet.train vs torch SGD on torch_ref."""

from __future__ import annotations

import numpy as np
import pytest

from parity_tests import harness


@pytest.mark.parametrize("schedule", [False, True], ids=["constant-lr", "piecewise-lr"])
@pytest.mark.parametrize("nesterov", [False, True], ids=["momentum", "nesterov"])
def test_optimizer_matches_torch_sgd(nesterov: bool, schedule: bool, record_property: pytest.RecordProperty) -> None:
    d = harness.check_optimizer(nesterov, schedule)
    record_property("max_diff", d)
    assert d <= harness.TOL_OPT


TRAJ_PARAMS = [pytest.param(a, marks=pytest.mark.xdist_group(f"traj-{a}")) for a in harness.TRAJ_ARCHS]


@pytest.mark.parametrize("arch", TRAJ_PARAMS)
def test_training_trajectory(arch: str, record_property: pytest.RecordProperty) -> None:
    r = harness.check_trajectory(arch)
    record_property("max_diff", max(r.loss, r.params, r.bn_stats))
    assert all(np.isfinite(r.losses))
    assert r.loss <= harness.TOL_TRAJ_LOSS
    assert r.params <= harness.TOL_TRAJ_PARAM
    assert r.bn_stats <= harness.TOL_TRAJ_PARAM and r.num_batches_tracked_ok
