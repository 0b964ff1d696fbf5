"""scripts/gpu_session.sh's CPU dry run (SMOKE=1) on the tiny data set.

A lent GPU gives a session 15 minutes in all, so the script that spends them must not have rotted since its
last run: this runs its training paths (three JAX seeds and two torch seeds of the default recipe, the
article recipe after its benchmark) and checks the logs, the results table and the archive it leaves.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

from conftest import REPO, cli_env

RUNS = ("jax_default_r18_s0", "jax_default_r18_s1", "jax_default_r18_s2", "torch_default_r18_s1",
        "torch_default_r18_s2", "jax_article_r18_s0")


def test_smoke_run_trains_every_run_and_tabulates_them(tmp_path: Path, tiny_data: Path) -> None:
    out = tmp_path / "out"
    env = dict(
        cli_env(),
        SMOKE="1", SKIP_BENCH="1", RUNS="jax_seeds torch_seeds article", BUDGET="800", DATA=str(tiny_data),
        OUT=str(out), RUNDIR=str(tmp_path / "runs"), CACHE=str(tmp_path / "cache"), WHL=str(tmp_path / "no_wheels"),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # its python3 is this Python
    )
    proc = subprocess.run(["bash", "scripts/gpu_session.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (out / "session.log").read_text()
    assert "training epochs: 1 (runs: jax_seeds torch_seeds article)" in log
    for run in RUNS:  # each run stopped at its --max-steps 2 and evaluated, on a 3-class data set
        assert re.search(rf"runs/{run}\.log: final: step 2, test accuracy \d+\.\d\d%", log), (run, log[-3000:])
    # reproduce.py's table: one row per setting, the seeds of a setting together
    rows = {tuple(c.strip() for c in line.split("|")[1:5]): line for line in log.splitlines() if line.startswith("| ")}
    assert "| 0,1,2 |" in rows[("jax", "resnet18", "cifar", "default")]
    assert "| 1,2 |" in rows[("torch", "resnet18", "cifar", "default")]
    assert "| 0 |" in rows[("jax", "resnet18", "article", "article")]
    with tarfile.open(out / "results.tar.gz") as tar:
        names = set(tar.getnames())
    for run in RUNS:
        assert {f"./runs/{run}/metrics.jsonl", f"./runs/{run}/config.json", f"./runs/{run}.log"} <= names, run
    assert "./bench_resnet18_article.json" in names  # the article run's epochs are planned from its benchmark
    assert not any("checkpoints" in n for n in names)


def test_smoke_sweep_evaluates_each_candidate_on_held_out_images(tmp_path: Path, tiny_data: Path) -> None:
    # The sweep is the next GPU session's first call: its candidates' flags must reach the trainer, and each
    # run must be scored on held-out training images, never on the test set (two candidates keep this short).
    out = tmp_path / "out"
    env = dict(
        cli_env(),
        SMOKE="1", SKIP_BENCH="1", RUNS="sweep", SWEEP="base= cutout8=--cutout,8", HOLDOUT="12", BUDGET="800",
        DATA=str(tiny_data), OUT=str(out), RUNDIR=str(tmp_path / "runs"), CACHE=str(tmp_path / "cache"),
        WHL=str(tmp_path / "no_wheels"), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )  # fmt: skip
    proc = subprocess.run(["bash", "scripts/gpu_session.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (out / "session.log").read_text()
    for name in ("sweep_base_holdout12_s0", "sweep_cutout8_holdout12_s0"):
        assert re.search(rf"runs/{name}\.log: final: step 2, holdout \(12 training images\) accuracy", log), log[-3000:]
    rows = [line for line in log.splitlines() if line.startswith("| jax |")]
    assert len(rows) == 2 and all("evaluated on 12 held-out train images" in row for row in rows), rows
    assert sum("cutout=8" in row for row in rows) == 1, rows


def _session(tmp_path: Path, **settings: str) -> str:
    """Run gpu_session.sh in SMOKE mode with `settings` (env); its session.log."""
    out = tmp_path / "out"
    env = dict(
        cli_env(), SMOKE="1", OUT=str(out), RUNDIR=str(tmp_path / "runs"), CACHE=str(tmp_path / "cache"),
        WHL=str(tmp_path / "no_wheels"), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        **settings,
    )  # fmt: skip
    proc = subprocess.run(["bash", "scripts/gpu_session.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return (out / "session.log").read_text()


def test_a_session_without_time_to_train_starts_no_run_and_says_why(tmp_path: Path, tiny_data: Path) -> None:
    # Without time left, `timeout` got a negative limit (every run died of "invalid option" while the log said
    # "training done") or 0, which means no limit. A JPEG copy that could not be written read as rc=0 (the
    # subshell ended in a bare `wait`): here the data decodes, and the copies' folder does not exist.
    log = _session(tmp_path, SKIP_BENCH="1", RUNS="jpeg_quality", BUDGET="200", RESERVE="0", FORCE_EPOCHS="0",
                   DATA=str(tiny_data), QDIR=str(tmp_path / "no_such_folder"))  # fmt: skip
    assert "data prep rc=1 " in log, log
    assert re.search(r"error: no time left to train \(\d+ s before the deadline, 0 epochs planned\): no runs", log)
    assert not list((tmp_path / "runs").glob("*.log")), "no run may start"


def test_steps_before_training_leave_its_reserve_and_say_so(tmp_path: Path) -> None:
    # Each step's limit is computed once and never eats the reserve: the fixed limits summed to 700 s, and a
    # limit computed twice could reach `timeout 0`, no limit at all. A session without training runs is not
    # told it has no time to train.
    log = _session(tmp_path, RUNS="profile", BUDGET="800", RESERVE="100000", DATA=str(tmp_path / "unused"))
    assert log.count("benchmark: skipped, no time left before the training's reserve") == 3, log  # r18 x2, article
    assert log.count("profile: skipped, no time left before the training's reserve") == 1, log  # SMOKE: no compile
    assert "no time left to train" not in log and not list((tmp_path / "out" / "r").glob("bench_*.json"))
