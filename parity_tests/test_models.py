"""Parameter counts, stage shapes, eval-mode logits and train-mode forward: Flax vs torch_ref."""

from __future__ import annotations

import pytest

from parity_tests import harness
from parity_tests.conftest import PAIR_PARAMS


@pytest.mark.parametrize(("arch", "variant"), PAIR_PARAMS)
def test_param_count(arch: str, variant: str, record_property: pytest.RecordProperty) -> None:
    flax_count, torch_count, published = harness.check_param_count(arch, variant)
    record_property("flax_count", flax_count)
    assert flax_count == torch_count == published


@pytest.mark.parametrize(("arch", "variant"), PAIR_PARAMS)
def test_eval_logits_and_stage_shapes(arch: str, variant: str, record_property: pytest.RecordProperty) -> None:
    worst = 0.0
    for size in harness.eval_sizes(arch, variant):
        flax_shapes, torch_shapes = harness.check_stage_shapes(arch, variant, size)
        assert flax_shapes == torch_shapes, f"{size}px"
        for batch in harness.EVAL_BATCHES:
            d = harness.check_eval_logits(arch, variant, size, batch)
            assert d <= harness.TOL_EVAL, f"{size}px batch {batch}: {d:.3g}"
            worst = max(worst, d)
    record_property("max_diff", worst)


@pytest.mark.parametrize(("arch", "variant"), PAIR_PARAMS)
def test_train_forward(arch: str, variant: str, record_property: pytest.RecordProperty) -> None:
    r = harness.check_train_forward(arch, variant)
    record_property("max_diff", max(r.logits, r.bn_after_1, r.bn_after_3))
    assert r.logits <= harness.TOL_TRAIN
    assert r.bn_after_1 <= harness.TOL_TRAIN
    assert r.bn_after_3 <= harness.TOL_TRAIN
    assert r.num_batches_tracked_ok
