"""Shared fixtures: a tiny synthetic image-folder dataset, CLI runners, and one trained run to reuse.

XLA compilations are cached on disk (JAX's persistent cache, set up in the root conftest.py) for this
process and every CLI subprocess, so a ResNet train step is compiled once per machine rather than once per test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.tar.gz"
# The persistent compilation cache is set up by the repository's root conftest.py; CLI subprocesses get
# the same settings.
CACHE_ENV = {
    k: os.environ[k]
    for k in (
        "JAX_COMPILATION_CACHE_DIR",
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES",
    )
}

TINY_CLASSES = ("cat", "dog", "frog")
TINY_TRAIN_PER_CLASS = 32  # 96 images: 6 steps of 16 per epoch
TINY_TEST_PER_CLASS = 7  # 21 images: not a multiple of the batch size
# Every Config field that changes what a run learns, or the steps it takes, with another valid value: a resume,
# or a torch rerun, must refuse a workdir whose config differs in any of them. Written out here, not read from
# config.py, so a new field has to be placed on one side or the other (tests check the split covers Config).
LEARNING_SETTINGS = dict(
    arch="resnet34", variant="cifar", num_classes=5, recipe="article", epochs=7, batch_size=32, lr=0.3,
    momentum=0.8, nesterov=False, weight_decay=1e-3, schedule="cosine", warmup_fraction=0.2,
    piecewise_boundaries=(0.5,), piecewise_factor=0.2, label_smoothing=0.0, cutout=8, dtype="bfloat16",
    holdout=10, seed=1,
)  # fmt: skip
# Where files are, how often to report or save, which implementation computes the same function: a resume
# may change them.
OPERATIONAL_SETTINGS = dict(
    workdir="elsewhere", data="other.tar", data_dir="cache2", progress=True, checkpoint_every=3,
    checkpoint_seconds=5.0, conv_lowering="xla", batch_norm="fused",
)  # fmt: skip
# Read only by a fresh run (the JAX trainer keeps the first run's), and where a run stops.
START_SETTINGS = dict(init_weights="w.safetensors", init_skip=("fc",), max_steps=5)
# The smallest model/settings that exercise the whole loop on CPU: the imagenet stem shrinks 32x32 to 8x8 early.
TINY_FLAGS = ("--arch", "resnet18", "--variant", "imagenet", "--batch-size", "16", "--no-progress")


def cpu_model_name() -> str:
    """The first 'model name' of /proc/cpuinfo, where there is one: which CPU a record says it ran on."""
    info = Path("/proc/cpuinfo")
    found = re.search(r"^model name\s*:\s*(.+?)\s*$", info.read_text(), re.M) if info.exists() else None
    return found.group(1) if found else ""


def cpu_run_device() -> str:
    """What a run on this machine's CPU must record as its device: the model (AVX-512 where its first processor
    has it) and the CPUs this process may use."""
    info = Path("/proc/cpuinfo")
    first = info.read_text().split("\n\n")[0] if info.exists() else ""
    avx512 = ", AVX-512" if re.search(r"^flags\s*:.*\bavx512f\b", first, re.M) else ""
    return f"CPU {cpu_model_name()}{avx512}, {len(os.sched_getaffinity(0))} CPUs"


def make_image_folder(root: Path, seed: int = 0) -> Path:
    """Write <root>/{train,test}/<class>/*.png of random 32x32 RGB images whose mean color depends on the class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, per_class in (("train", TINY_TRAIN_PER_CLASS), ("test", TINY_TEST_PER_CLASS)):
        for c, name in enumerate(TINY_CLASSES):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                base = np.zeros(3) + 60
                base[c] = 190
                img = np.clip(rng.normal(base, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


def _shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory shared by all xdist workers of this session."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic image-folder dataset (created once per session, whatever the number of workers)."""
    from filelock import FileLock

    shared = _shared_dir(tmp_path_factory)
    root = shared / "tiny_data"
    with FileLock(str(shared / "tiny_data.lock")):
        if not (root / "done").exists():
            make_image_folder(root)
            (root / "done").write_text("ok")
    return root


def run_cli(
    script: str, *args: str, timeout: float = 300, check: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run `python scripts/<script> args...` from the repo root with the shared compilation cache (and `env`'s
    variables on top of this process's)."""
    env = dict(os.environ, **CACHE_ENV, PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def cli_env() -> dict[str, str]:
    """Environment for CLI subprocesses started by hand (Popen)."""
    return dict(os.environ, **CACHE_ENV, PYTHONUNBUFFERED="1")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """One finished CLI training run on the tiny data (2 epochs, 12 steps), shared by the companion-CLI tests."""
    from filelock import FileLock

    shared = _shared_dir(tmp_path_factory)
    workdir = shared / "trained_run"
    with FileLock(str(shared / "trained_run.lock")):
        if not (workdir / "done").exists():
            run_cli(
                "train.py",
                *TINY_FLAGS,
                "--data",
                str(tiny_data),
                "--data-dir",
                str(shared / "data_cache"),
                "--epochs",
                "2",
                "--lr",
                "0.05",
                "--checkpoint-seconds",  # a checkpoint at every epoch end, whatever the epochs take
                "0",
                "--workdir",
                str(workdir),
                check=True,
            )
            (workdir / "done").write_text(json.dumps({"ok": True}))
    return workdir
