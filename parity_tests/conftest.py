"""Parity-suite setup: one torch thread per xdist worker, fp32 settings, and tests of one (arch, variant)
pair kept on one worker so its cached models are built once."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from parity_tests import harness

torch.set_num_threads(1)
harness.configure()


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Under plain `-n N` (dist=load), honour xdist_group marks so a pair's tests share one worker's cache."""
    if config.getvalue("dist") == "load":
        from xdist.scheduler import LoadGroupScheduling

        return LoadGroupScheduling(config, log)
    return None


def pair_param(arch: str, variant: str) -> object:
    """A pytest param for one pair, grouped onto one xdist worker."""
    return pytest.param(arch, variant, id=f"{arch}-{variant}", marks=pytest.mark.xdist_group(f"{arch}-{variant}"))


PAIR_PARAMS = [pair_param(a, v) for a, v in harness.PAIRS]
