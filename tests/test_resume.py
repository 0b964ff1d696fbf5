"""Kill a training run with SIGKILL (after a checkpoint, and at a random moment) or stop it with SIGINT, resume
it with the same command, and require the final state to be bitwise equal to an uninterrupted run's."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import REPO, TINY_FLAGS, cli_env, run_cli
from flax_resnet.train import load_run

pytestmark = pytest.mark.slow


def _args(tiny_data: Path, cache: Path, workdir: Path) -> list[str]:
    return [
        *TINY_FLAGS,
        "--data",
        str(tiny_data),
        "--data-dir",
        str(cache),
        "--epochs",
        "2",
        "--max-steps",
        "10",
        "--checkpoint-every",
        "2",
        "--lr",
        "0.05",
        "--workdir",
        str(workdir),
    ]


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "train.py"), *args],
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def _steps(workdir: Path) -> list[int]:
    d = workdir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def _final(workdir: Path):
    run = load_run(workdir)
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    keys = ("epoch", "step", "lr", "train_loss", "train_acc", "test_loss", "test_acc")
    return run, [{k: r[k] for k in keys} for r in records]


def _assert_bitwise_equal(a, b, label: str) -> None:
    assert a.step == b.step == 10, label
    la, lb = jax.tree.leaves(a.state), jax.tree.leaves(b.state)
    assert jax.tree.structure(a.state) == jax.tree.structure(b.state)
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and np.array_equal(
            np.atleast_1d(x).view(np.uint8), np.atleast_1d(y).view(np.uint8)
        ), label


def test_sigkill_and_resume_is_bitwise_identical(tiny_data: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    t0 = time.time()
    run_cli("train.py", *_args(tiny_data, cache, tmp_path / "straight"), check=True)
    straight_seconds = time.time() - t0
    reference, reference_metrics = _final(tmp_path / "straight")

    # 1. Killed right after a checkpoint has appeared (mid-epoch: steps 2 or 4 of 6).
    proc = _start(_args(tiny_data, cache, tmp_path / "after_ckpt"))
    deadline = time.time() + 300
    while not _steps(tmp_path / "after_ckpt") and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    _kill(proc)
    assert _steps(tmp_path / "after_ckpt") and _steps(tmp_path / "after_ckpt")[-1] < 10
    run_cli("train.py", *_args(tiny_data, cache, tmp_path / "after_ckpt"), check=True)

    # 2. Killed at a random moment (possibly mid-save), then resumed to the end.
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    for _ in range(1):
        proc = _start(_args(tiny_data, cache, tmp_path / "random"))
        time.sleep(rng.uniform(0.3, 0.9) * straight_seconds)
        _kill(proc)
    run_cli("train.py", *_args(tiny_data, cache, tmp_path / "random"), check=True)

    # 3. Ctrl-C (SIGINT) once a checkpoint exists: a clean stop with a checkpoint, exit status 130, and a line
    # saying the run is not finished; the same command resumes.
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "train.py"), *_args(tiny_data, cache, tmp_path / "sigint")],
        cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 300
    while not _steps(tmp_path / "sigint") and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    if "final: step 10" not in out:  # the run was not already over when the signal came
        assert proc.returncode == 130, err
        assert "signal 2: stopping with a checkpoint" in err and "Traceback" not in err
        assert re.search(r"stopped by signal 2 at step \d+ of 10, checkpoint saved; the same command resumes", out)
        assert "final:" not in out
    run_cli("train.py", *_args(tiny_data, cache, tmp_path / "sigint"), check=True)

    for name in ("after_ckpt", "random", "sigint"):
        resumed, metrics = _final(tmp_path / name)
        _assert_bitwise_equal(resumed, reference, f"{name} (random seed {seed})")
        assert metrics == reference_metrics, f"{name} (random seed {seed})"
