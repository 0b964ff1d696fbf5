"""The parity table from a pytest JUnit XML file: what the suite itself measured, in the run that was timed.

`python -m pytest -n 2 parity_tests --junitxml=results/parity.xml` records each test's largest difference
(`record_property("max_diff", ...)`); this module turns that file into the README's table: per check, its
tolerance, how many configurations ran and passed, the largest difference and where, and the suite's wall time.
"""

from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import NamedTuple

# Test function -> (what it checks, tolerance). Keep in step with parity_tests/test_*.py and harness.TOL_*.
CHECKS: dict[str, tuple[str, str]] = {
    "test_param_count": ("parameter count = torch_ref = published (harness.PUBLISHED_COUNTS)", "exact"),
    "test_eval_logits_and_stage_shapes": (
        "eval logits (random weights + random BN stats; 32/33/64 px, article 32, +224 for imagenet 18/50; "
        "batch 1 and 4), float64; stage output shapes",
        "max abs diff <= 1e-4 max(1, max abs logits); shapes exact",
    ),
    "test_train_forward": (
        "train-mode logits, BN running mean/var after 1 and 3 updates, float64",
        "<= 1e-5 relative",
    ),
    "test_gradients": ("gradients of mean cross-entropy, every parameter, float64", "relative L2 <= 1e-4"),
    "test_optimizer_matches_torch_sgd": ("optax optimizer vs torch.optim.SGD, 5 steps, fp32", "<= 1e-5 relative"),
    "test_training_trajectory": (
        "20-step training with the default recipe's optimizer and label smoothing, same batches and weights, "
        "float64 (loss per step; final parameters and BN statistics)",
        "loss abs diff <= 1e-3; params, BN statistics <= 1e-3 relative; BN batch counts exact",
    ),
    "test_roundtrip_bitwise": ("round trip torch -> Flax -> torch", "bitwise"),
    "test_imagenet_export_loads_into_torchvision": (
        "imagenet weights exported from Flax, strict into torchvision resnetN, logits",
        "max abs diff <= 1e-4 max(1, max abs logits)",
    ),
    "test_init_std": ("fresh-init per-layer weight std, Flax vs torch", "within 10% (reported as a fraction)"),
    "test_init_distributions_match_torch": (
        "fresh-init distribution of every tensor vs torch's init rules (KS test, uniform range); torch_ref too",
        "p >= 1e-4 per tensor",
    ),
    "test_loaded_weights_do_not_alias_torch_memory": ("loaded weights do not alias torch memory", "no aliasing"),
    "test_torch_ref_imagenet_is_a_drop_in_for_torchvision_feature_extraction": (
        "torch_ref imagenet = torchvision resnet18: same keys, logits and feature-extraction node names",
        "strict load; logits bitwise",
    ),
    "test_backbone_with_another_head_loads_with_skip": (
        "torchvision's 1000-class resnet18 into a 10-class Flax model with skip='fc': weights, head, logits",
        "weights bitwise; logits <= 1e-4 max(1, max abs logits)",
    ),
    "test_torchvision_weights_load_into_an_abstract_model": (
        "torchvision resnet18 into an nnx.eval_shape model (no init): values, logits; export/partial load refused",
        "weights bitwise; logits <= 1e-4 max(1, max abs logits)",
    ),
}


@dataclasses.dataclass
class CheckRow:
    """One table row: a test function over all its parametrizations."""

    name: str
    ran: int = 0
    passed: int = 0
    worst: float | None = None
    worst_where: str = ""
    extra: float | None = None  # test_gradients: torch's own fp32-vs-fp64 error, for scale
    seconds: float = 0.0  # summed test durations (worker-seconds)


class JunitRun(NamedTuple):
    """What a JUnit file says of a parity run: its rows, wall seconds, tests outside CHECKS, and the day it
    started (pytest's `timestamp`, as recorded; None in files without one)."""

    rows: list[CheckRow]
    seconds: float
    unknown: int
    day: str | None


def parse_junit(path: str | Path) -> JunitRun:
    """The run in a pytest JUnit file; raises ValueError if the file holds no parity tests."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    seconds = sum(float(s.get("time", 0)) for s in suites)
    starts = sorted(s.get("timestamp", "") for s in suites if s.get("timestamp"))
    rows: dict[str, CheckRow] = {}
    unknown = 0
    for case in root.iter("testcase"):
        match = re.match(r"(test_\w+)(?:\[(.*)\])?$", case.get("name", ""))
        if not match or match.group(1) not in CHECKS:
            unknown += 1
            continue
        name, params = match.group(1), match.group(2) or ""
        row = rows.setdefault(name, CheckRow(name))
        if case.find("skipped") is not None:
            continue
        row.ran += 1
        row.seconds += float(case.get("time", 0))
        row.passed += case.find("failure") is None and case.find("error") is None
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        if "max_diff" in props:
            value = float(props["max_diff"])
            if row.worst is None or value >= row.worst:
                row.worst, row.worst_where = value, params
        if "torch_fp32_vs_fp64" in props:
            row.extra = max(row.extra or 0.0, float(props["torch_fp32_vs_fp64"]))
    if not rows:
        raise ValueError("no parity test results in this JUnit file")  # the caller names the file
    return JunitRun([rows[n] for n in CHECKS if n in rows], seconds, unknown, starts[0][:10] if starts else None)


def markdown(rows: list[CheckRow]) -> str:
    """The table: check, tolerance, configurations passed/ran, largest difference measured (where)."""
    lines = ["| check | tolerance | passed / ran | largest difference measured |", "|---|---|---|---|"]
    for r in rows:
        what, tol = CHECKS[r.name]
        largest = "-" if r.worst is None else f"{r.worst:.2e}" + (f" ({r.worst_where})" if r.worst_where else "")
        if r.extra is not None:
            largest += f"; torch fp32 vs torch fp64 itself: up to {r.extra:.1e}"
        lines.append(f"| {what} | {tol} | {r.passed} / {r.ran} | {largest} |")
    return "\n".join(lines) + "\n"
