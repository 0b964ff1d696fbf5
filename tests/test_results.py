"""The results table: final-epoch accuracy over seeds, unfinished runs flagged, plans well-formed."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_TRAIN_PER_CLASS
from flax_resnet import results
from flax_resnet.config import Config, make_config

ROOT = Path(__file__).resolve().parents[1]


def _fake_run(
    path: Path, seed: int, accs: list[float], epochs: int, torch: bool = False, flip: float | None = None,
    devices: list[str] | None = None, **kw,
) -> Path:
    """A workdir whose metrics have `accs` per epoch and, with `flip`, a flip-TTA accuracy in the last record;
    `devices`: each epoch's recorded device (runs from before 2026-12-06 record none)."""
    path.mkdir(parents=True)
    config = make_config("default", epochs=epochs, seed=seed, data="/x/cifar10-jpeg.tar.gz", workdir=str(path), **kw)
    config.save(path / "config.json")
    records = [
        {"epoch": i + 1, "step": 10 * (i + 1), "test_acc": a, "epoch_seconds": 30.0, "complete": True}
        for i, a in enumerate(accs)
    ]
    if flip is not None:
        records[-1]["test_acc_flip"] = flip
    for record, device in zip(records, devices or [], strict=bool(devices)):
        record["device"] = device
    lines = [json.dumps(r) for r in records]
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if torch:
        (path / "torch_options.json").write_text("{}")
    return path


def test_table_mean_std_of_final_epoch(tmp_path: Path) -> None:
    # The best epoch (0.95) must not be reported: final-epoch accuracies are 0.90, 0.92, 0.94.
    runs = [
        _fake_run(tmp_path / "a", 0, [0.5, 0.95, 0.90], 3, flip=0.91),
        _fake_run(tmp_path / "b", 1, [0.5, 0.6, 0.92], 3, flip=0.93),
        _fake_run(tmp_path / "c", 2, [0.5, 0.6, 0.94], 3, flip=0.95),
        _fake_run(tmp_path / "t", 0, [0.5, 0.6, 0.91], 3, torch=True),
        _fake_run(tmp_path / "u", 5, [0.5, 0.99], 3),  # stopped after epoch 2 of 3: its 0.99 is no final accuracy
    ]
    text = results.results_table([results.summarize_run(r) for r in runs], "cpu")
    lines = text.strip().splitlines()
    assert len(lines) == 4  # header, rule, jax row, torch row
    jax_row, torch_row = lines[2], lines[3]
    # mean 92.00, sample std of (90, 92, 94) = 2.00; with flip TTA (91, 93, 95): 93.00 ± 2.00; minutes per run,
    # of the finished runs (the stopped one's 60 s is not what a run takes): (90 + 90 + 90) s / 3 / 60 = 1.50
    assert "| 0,1,2,5 | 92.00 ± 2.00 (1 of 4 unfinished) | 93.00 ± 2.00 | 1.50 | cpu | cifar10-jpeg.tar.gz |" in jax_row
    assert torch_row.startswith("| torch |") and "| 91.00 | not measured |" in torch_row


def test_table_separates_every_setting_that_changes_the_result(tmp_path: Path) -> None:
    runs = [
        _fake_run(tmp_path / "a", 0, [0.90], 1),
        _fake_run(tmp_path / "b", 1, [0.92], 1, conv_lowering="xla", progress=True),  # same setting
        _fake_run(tmp_path / "c", 0, [0.80], 1, cutout=16, weight_decay=1e-3),
        _fake_run(tmp_path / "d", 0, [0.70], 1, holdout=5000),
        _fake_run(tmp_path / "e", 0, [0.60], 1, warmup_fraction=0.3),
        _fake_run(tmp_path / "g", 0, [0.50], 1, init_weights="/data/w/resnet18-f37072fd.pth", init_skip=("fc",)),
        # the same file at another place (another machine): the same setting, one row
        _fake_run(tmp_path / "h", 1, [0.52], 1, init_weights="/mnt/resnet18-f37072fd.pth", init_skip=("fc",)),
    ]
    # A run made before Config had `cutout`, `holdout`, `batch_norm` and the init fields used their defaults:
    # same setting as "a".
    old = json.loads((tmp_path / "a" / "config.json").read_text())
    for key in ("cutout", "holdout", "batch_norm", "init_weights", "init_skip"):
        del old[key]
    old["seed"] = 2
    _fake_run(tmp_path / "f", 2, [0.94], 1)
    (tmp_path / "f" / "config.json").write_text(json.dumps(old))
    runs.append(tmp_path / "f")
    rows = results.results_table([results.summarize_run(r) for r in runs], "cpu").strip().splitlines()[2:]
    assert len(rows) == 5
    assert "| init_skip=fc init_weights=resnet18-f37072fd.pth | 0,1 | 51.00 ± 1.41 |" in rows.pop()
    assert "| - | 0,1,2 | 92.00 ± 2.00 |" in rows[0]
    assert "| cutout=16 weight_decay=0.001 | 0 | 80.00 |" in rows[1]
    held = "cifar10-jpeg.tar.gz, evaluated on 5000 held-out train images"
    assert rows[2].endswith(f"| - | 0 | 70.00 | not measured | 0.50 | cpu | {held} |")
    assert "| warmup_fraction=0.3 | 0 | 60.00 |" in rows[3]


def test_configs_saved_before_batch_norm_existed_ran_autodiff(tmp_path: Path) -> None:
    # batch_norm's default became "fused" on 2026-11-28 ("onepass" on 2026-12-04); a config.json without the
    # key was saved before either and ran "autodiff".
    run = _fake_run(tmp_path / "a", 0, [0.90], 1)
    old = json.loads((run / "config.json").read_text())
    del old["batch_norm"]
    (run / "config.json").write_text(json.dumps(old))
    assert Config().batch_norm == "onepass"
    assert Config.from_json(json.dumps(old)).batch_norm == "autodiff"
    assert results.summarize_run(run).config["batch_norm"] == "autodiff"
    old["batch_norm"] = "fused"  # a saved key wins
    assert Config.from_json(json.dumps(old)).batch_norm == "fused"


def test_summarize_rejects_non_run(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unusable run files"):
        results.summarize_run(tmp_path)
    run = _fake_run(tmp_path / "a", 0, [0.9], 1)
    (run / "config.json").write_text("[1]")  # JSON, but not a config: a ValueError the table can leave out
    with pytest.raises(ValueError, match=r"unusable run files \(config.json holds a list"):
        results.summarize_run(run)
    run = _fake_run(tmp_path / "b", 0, [0.9], 1)
    (run / "metrics.jsonl").write_text("[1]\n")
    with pytest.raises(ValueError, match=r"unusable run files \(metrics.jsonl line 1 is not an epoch record"):
        results.summarize_run(run)


def test_plans_are_valid_cli_invocations() -> None:
    # Every plan's command parses with the real CLI parsers (no typo'd flag can hide in a plan).
    parsers = {}
    for name in ("train.py", "train_torch.py"):
        spec = importlib.util.spec_from_file_location(f"cli_{name[:-3]}", ROOT / "scripts" / name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        parsers[name] = module.build_parser()
    for plan in results.PLANS:
        for cmd in results.plan_commands(plan, "runs/x", "data.tar.gz"):
            parsers[Path(cmd[0]).name].parse_args(cmd[1:])
    for plan in results.SIZED_PLANS:
        for cmd in results.plan_commands(plan, "runs/x", "data.tar.gz", epochs={"jax": 3, "torch": 2}):
            parsed = parsers[Path(cmd[0]).name].parse_args(cmd[1:])
            assert parsed.epochs == (2 if cmd[0].endswith("train_torch.py") else 3)
    with pytest.raises(ValueError, match="valid choices"):
        results.plan_commands("nope", "r", "d")
    # What each plan runs, as its issue asks (hand-written, not read from PLANS).
    def settings(plan: str) -> list[tuple]:
        out = []
        sized = {"jax": 3, "torch": 2} if plan in results.SIZED_PLANS else None
        for cmd in results.plan_commands(plan, "runs/x", "data.tar.gz", epochs=sized):
            a = parsers[Path(cmd[0]).name].parse_args(cmd[1:])
            out.append((Path(cmd[0]).name, a.arch, a.variant, a.recipe, a.epochs, a.batch_size, a.seed))
        return out

    assert settings("cpu-realdata") == [("train.py", "resnet18", "imagenet", "default", 2, 128, None),
                                        ("train_torch.py", "resnet18", "imagenet", "default", 2, 128, None)]
    assert settings("cpu-budget") == [("train.py", "resnet18", "imagenet", "default", 3, 128, None),
                                      ("train_torch.py", "resnet18", "imagenet", "default", 2, 128, None)]
    # None: not given, so the recipe's own (the default recipe: 40 epochs of 512; the cifar variant)
    assert (Config().variant, make_config("default").epochs, make_config("default").batch_size) == ("cifar", 40, 512)
    assert settings("gpu") == [*[("train.py", "resnet18", None, "default", None, None, s) for s in (0, 1, 2)],
                               *[("train_torch.py", "resnet18", None, "default", None, None, s) for s in (0, 1, 2)],
                               ("train.py", "resnet18", "article", "article", None, None, None)]  # fmt: skip


def test_cli_table_and_errors(tmp_path: Path) -> None:
    _fake_run(tmp_path / "a", 0, [0.9], 1)
    script = str(ROOT / "scripts" / "reproduce.py")
    ok = subprocess.run([sys.executable, script, "table", str(tmp_path / "a"), "--device", "cpu"],
                        capture_output=True, text=True, check=True)
    assert "| 90.00 |" in ok.stdout
    bad = subprocess.run([sys.executable, script, "table", str(tmp_path), "--device", "cpu"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "error:" in bad.stderr
    # A run killed before its first metrics line (only config.json written) is in its row, unfinished: it used to
    # be left out of the mean with a warning on stderr only.
    (tmp_path / "b").mkdir()
    make_config("default", epochs=1, seed=1, data="/x/cifar10-jpeg.tar.gz").save(tmp_path / "b" / "config.json")
    both = subprocess.run([sys.executable, script, "table", str(tmp_path / "a"), str(tmp_path / "b"), "--device",
                           "cpu"], capture_output=True, text=True, check=True)  # fmt: skip
    assert "| 0,1 | 90.00 (1 of 2 unfinished) |" in both.stdout and both.stderr == ""
    # Damaged metrics are an error naming the file, not a run quietly left out of the mean.
    (tmp_path / "b" / "metrics.jsonl").write_text('{"epoch": 1, "epoch_s\n{"epoch": 1}\n')
    damaged = subprocess.run([sys.executable, script, "table", str(tmp_path / "a"), str(tmp_path / "b"), "--device",
                              "cpu"], capture_output=True, text=True)  # fmt: skip
    assert damaged.returncode == 1 and damaged.stdout == "" and damaged.stderr == (
        f"error: {tmp_path / 'b'}: unusable run files (metrics.jsonl line 1 is not JSON); mend it or leave that "
        "workdir out\n"
    )
    out = tmp_path / "missing" / "table.md"
    unwritable = subprocess.run([sys.executable, script, "table", str(tmp_path / "a"), "--device", "cpu", "--out",
                                 str(out)], capture_output=True, text=True)  # fmt: skip
    assert unwritable.returncode == 1 and unwritable.stderr.count("\n") == 1
    assert "cannot write the table" in unwritable.stderr


def test_cli_table_counts_a_run_once_and_refuses_a_seed_twice_or_a_missing_path(tmp_path: Path) -> None:
    """A workdir named twice made two replicates ("seeds 2,2 | 15.50 ± 0.00"), so did a copied workdir, and a
    mistyped path quietly left its run out."""
    a = _fake_run(tmp_path / "a", 2, [0.9], 1)
    script = str(ROOT / "scripts" / "reproduce.py")

    def table(*paths: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, script, "table", *paths, "--device", "cpu"], capture_output=True,
                              text=True)  # fmt: skip

    twice = table(str(a), str(a) + "/", str(tmp_path / "a" / ".." / "a"))
    assert twice.returncode == 0 and "| 2 | 90.00 |" in twice.stdout and twice.stderr == ""
    shutil.copytree(a, tmp_path / "copy")
    copied = table(str(a), str(tmp_path / "copy"))
    assert copied.returncode == 1 and copied.stdout == "" and copied.stderr.count("\n") == 1
    assert f"error: seed 2 is in {a} and {tmp_path / 'copy'}, runs of the same setting" in copied.stderr
    typo = table(str(a), str(tmp_path / "b"))
    assert typo.returncode == 1 and typo.stderr == f"error: no such workdir: {tmp_path / 'b'}\n"
    (tmp_path / "a.log").write_text("log")  # what a glob such as runs/* catches beside the workdirs: left out
    (tmp_path / "empty").mkdir()  # a folder is meant as a run: said
    globbed = table(str(a), str(tmp_path / "a.log"), str(tmp_path / "empty"))
    assert globbed.returncode == 0 and "| 90.00 |" in globbed.stdout
    assert globbed.stderr == f"note: folders without a run (no config.json), left out: {tmp_path / 'empty'}\n"


def test_rerun_of_a_plan_restarts_an_unfinished_torch_run_and_keeps_a_finished_one(tmp_path: Path) -> None:
    # The torch trainer does not resume and refuses an unfinished run's workdir without --overwrite: a rerun of
    # the plan (after Ctrl-C, say) must restart that run, and must never pass --overwrite over a finished one.
    root = tmp_path / "r"
    root.mkdir()
    (root / "sized_epochs.json").write_text('{"jax": 3, "torch": 3}')
    script = str(ROOT / "scripts" / "reproduce.py")
    base = [sys.executable, script, "run", "cpu-budget", "--root", str(root), "--dry-run"]
    _fake_run(root / "torch_r18_imagenet_budget20", 0, [0.5], 3, torch=True)  # stopped after epoch 1 of 3
    _fake_run(root / "jax_r18_imagenet_budget20", 0, [0.5], 3)  # the JAX trainer resumes it: no --overwrite
    dry = subprocess.run(base, capture_output=True, text=True, check=True)
    commands = [line for line in dry.stdout.splitlines() if line.startswith("$ python")]
    assert "--overwrite" not in commands[0] and commands[1].endswith("--overwrite")
    assert "holds an unfinished torch run; training it again" in dry.stdout
    done = _fake_run(tmp_path / "done", 0, [0.5, 0.6, 0.7], 3, torch=True)
    (root / "torch_r18_imagenet_budget20" / "metrics.jsonl").write_bytes((done / "metrics.jsonl").read_bytes())
    dry = subprocess.run(base, capture_output=True, text=True, check=True)
    assert "--overwrite" not in dry.stdout and "unfinished" not in dry.stdout
    (root / "torch_r18_imagenet_budget20" / "metrics.jsonl").unlink()  # stopped before its first epoch ended
    dry = subprocess.run(base, capture_output=True, text=True, check=True)
    commands = [line for line in dry.stdout.splitlines() if line.startswith("$ python")]
    assert "--overwrite" not in commands[0] and commands[1].endswith("--overwrite")
    # A finished run whose metrics were damaged afterwards is not retrained over: the trainer's refusal says why.
    lines = (done / "metrics.jsonl").read_text().splitlines()
    (root / "torch_r18_imagenet_budget20" / "metrics.jsonl").write_text("\n".join([lines[0][:9], *lines[1:]]) + "\n")
    dry = subprocess.run(base, capture_output=True, text=True, check=True)
    assert "--overwrite" not in dry.stdout


def test_budget_epochs_hand_computed() -> None:
    # By hand: an epoch is 390 full batches of 128 = 49,920 images; 20 min less 10% = 1,080 s.
    # JAX at 800 img/s: 62.4 s per epoch, 1080 / 62.4 = 17.3 -> 17. Torch at 500: 99.84 s, 10.8 -> 10.
    budgets = results.budget_epochs({"jax": 800, "torch": 500}, 128, 1200, margin=0.1)
    assert budgets["jax"].epoch_seconds == pytest.approx(62.4)
    assert budgets["torch"].epoch_seconds == pytest.approx(99.84)
    assert (budgets["jax"].epochs, budgets["torch"].epochs) == (17, 10)
    # No margin: 1200 / 62.4 = 19.2 -> 19; 1200 / 99.84 = 12.02 -> 12.
    assert {k: b.epochs for k, b in results.budget_epochs({"jax": 800, "torch": 500}, 128, 1200, 0).items()} == {
        "jax": 19, "torch": 12}
    with pytest.raises(ValueError, match="one jax epoch takes ~62 s"):
        results.budget_epochs({"jax": 800}, 128, 60)
    assert results.plan_batch_size("cpu-budget") == 128
    assert results.plan_frameworks("cpu-budget") == {"jax", "torch"}
    with pytest.raises(ValueError, match="no single --batch-size"):
        results.plan_batch_size("gpu")


def test_cli_sizes_a_plan_from_given_rates(tmp_path: Path) -> None:
    script = str(ROOT / "scripts" / "reproduce.py")
    base = [sys.executable, script, "run", "cpu-budget", "--dry-run", "--root", str(tmp_path / "r")]
    ok = subprocess.run([*base, "--rates", "jax=800,torch=500", "--margin", "0.1"], capture_output=True, text=True,
                        check=True)
    commands = [line for line in ok.stdout.splitlines() if line.startswith("$ python")]
    assert len(commands) == 2
    assert "train.py" in commands[0] and "--epochs 17 " in commands[0]
    assert "train_torch.py" in commands[1] and "--epochs 10 " in commands[1]
    assert "jax: 800 img/s -> 62.4 s per epoch -> 17 epochs" in ok.stdout
    # Without rates a dry run shows the calibration runs (60 steps each) and sizes nothing.
    dry = subprocess.run(base, capture_output=True, text=True, check=True)
    assert dry.stdout.count("--max-steps 60") == 2 and "--epochs 1 " in dry.stdout
    for bad_rates in ("jax=800", "jax=x,torch=500", "tf=3", "jax=inf,torch=500", "jax=8,torch=5,jax=9"):
        bad = subprocess.run([*base, "--rates", bad_rates], capture_output=True, text=True)
        assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "cannot size the plan" in bad.stderr
    flag = subprocess.run([*base, "--margin", "1"], capture_output=True, text=True)
    assert flag.returncode == 2 and "--margin" in flag.stderr
    flag = subprocess.run([*base, "--budget-minutes", "inf"], capture_output=True, text=True)
    assert flag.returncode == 2 and "--budget-minutes must be in (0, 10080]" in flag.stderr
    (tmp_path / "file").write_text("")
    flag = subprocess.run([*base[:-2], "--root", str(tmp_path / "file")], capture_output=True, text=True)
    assert flag.returncode == 2 and "is a file, not a directory" in flag.stderr


def test_cli_saves_the_sized_epochs_and_a_rerun_reuses_them(tmp_path: Path) -> None:
    script = str(ROOT / "scripts" / "reproduce.py")
    root = tmp_path / "r"
    base = [sys.executable, script, "run", "cpu-budget", "--root", str(root)]
    # A real (not dry) run whose first command fails at once (no data): the counts are saved before it starts.
    failed = subprocess.run([*base, "--rates", "jax=800,torch=500", "--margin", "0.1", "--data",
                             str(tmp_path / "missing")], capture_output=True, text=True)
    assert failed.returncode == 1 and "command failed" in failed.stderr
    assert json.loads((root / "sized_epochs.json").read_text()) == {
        "jax": 17, "torch": 10, "budget_minutes": 20.0, "margin": 0.1,
    }  # fmt: skip
    # Rerun: the same counts, no calibration, so the JAX run resumes rather than changing its schedule.
    rerun = subprocess.run([*base, "--dry-run"], capture_output=True, text=True, check=True)
    commands = [line for line in rerun.stdout.splitlines() if line.startswith("$ python")]
    assert len(commands) == 2 and "--epochs 17 " in commands[0] and "--epochs 10 " in commands[1]
    assert "--max-steps" not in rerun.stdout
    new_rates = subprocess.run([*base, "--dry-run", "--rates", "jax=1,torch=1"], capture_output=True, text=True)
    assert new_rates.returncode == 1 and "use another --root" in new_rates.stderr
    # Another budget or margin for the same root was quietly ignored; the same values, or none, are fine.
    again = subprocess.run([*base, "--dry-run", "--budget-minutes", "20", "--margin", "0.1"], capture_output=True,
                           text=True, check=True)  # fmt: skip
    assert "--epochs 17 " in again.stdout
    other = subprocess.run([*base, "--dry-run", "--budget-minutes", "5", "--margin", "0.1"], capture_output=True,
                           text=True)  # fmt: skip
    assert other.returncode == 1 and other.stderr == (
        f"error: {root / 'sized_epochs.json'} sized the runs of this root for --budget-minutes 20; use another "
        "--root for another budget\n"
    )
    (root / "sized_epochs.json").write_text('{"jax": 3}')
    partial = subprocess.run([*base, "--dry-run"], capture_output=True, text=True)
    assert partial.returncode == 1 and partial.stderr.count("\n") == 1 and "unusable" in partial.stderr


def test_calibration_runs_both_trainers_afresh(tmp_path: Path, tiny_data: Path) -> None:
    # The real trainers on the tiny data, cut to 3 steps of 16; a second calibration measures again rather than
    # resuming (JAX) or refusing (torch) the first one's workdirs.
    spec = importlib.util.spec_from_file_location("reproduce_cli", ROOT / "scripts" / "reproduce.py")
    reproduce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reproduce)
    extra = ["--batch-size", "16", "--max-steps", "3", "--data-dir", str(tmp_path / "cache")]
    for _ in range(2):
        rates, batch, train_images = reproduce.calibrate("cpu-budget", tmp_path, str(tiny_data), extra)
        assert set(rates) == {"jax", "torch"} and all(r > 0 for r in rates.values()) and batch == 16
        assert train_images == 3 * TINY_TRAIN_PER_CLASS  # the data's, not CIFAR-10's 50,000
        for name in ("jax_r18_imagenet_budget20", "torch_r18_imagenet_budget20"):
            lines = (tmp_path / "calibrate" / name / "metrics.jsonl").read_text().splitlines()
            assert len(lines) == 1 and json.loads(lines[0])["step"] == 3


def test_a_partial_last_epoch_is_unfinished_and_flip_needs_every_seed(tmp_path: Path) -> None:
    # A run stopped inside its last epoch (a torch --max-steps run) logs that epoch with complete: false; its
    # accuracy is no final-epoch accuracy. The flip column averages only when every finished seed has a flip.
    stopped = _fake_run(tmp_path / "s", 3, [0.5, 0.6, 0.97], 3)
    records = [json.loads(line) for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    records[-1]["complete"] = False
    (stopped / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert results.summarize_run(stopped).final_test_acc is None
    runs = [
        _fake_run(tmp_path / "a", 0, [0.90], 1, flip=0.91),
        _fake_run(tmp_path / "b", 1, [0.92], 1, flip=0.93),
        _fake_run(tmp_path / "c", 2, [0.94], 1),  # evaluated without flip TTA
    ]
    (row,) = results.results_table([results.summarize_run(r) for r in runs], "cpu").strip().splitlines()[2:]
    assert "| 0,1,2 | 92.00 ± 2.00 | not measured |" in row


def test_the_device_column_is_what_the_runs_recorded(tmp_path: Path) -> None:
    # The device column said the --device label for every run, wherever each ran. Now each run's own records
    # name it; the label stands only for runs that record none.
    h200 = _fake_run(tmp_path / "a", 0, [0.5, 0.9], 2, devices=["NVIDIA H200"] * 2)
    moved = _fake_run(tmp_path / "b", 1, [0.5, 0.92], 2, devices=["NVIDIA H100 80GB HBM3", "NVIDIA H200"])
    old = _fake_run(tmp_path / "c", 2, [0.5, 0.94], 2)
    summaries = [results.summarize_run(r) for r in (h200, moved, old)]
    assert [s.devices for s in summaries] == [("NVIDIA H200",), ("NVIDIA H100 80GB HBM3", "NVIDIA H200"), (None,)]
    (row,) = results.results_table(summaries, "GPU of 2026-11").strip().splitlines()[2:]
    assert "| 92.00 ± 2.00 | not measured | 1.00 | NVIDIA H200, NVIDIA H100 80GB HBM3 then NVIDIA H200, GPU of " \
           "2026-11 | cifar10-jpeg.tar.gz |" in row
    (row,) = results.results_table(summaries[2:]).strip().splitlines()[2:]
    assert "| 1.00 | not recorded | cifar10-jpeg.tar.gz |" in row
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "reproduce.py"), "table", str(h200)],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0 and "| 1.00 | NVIDIA H200 | cifar10-jpeg.tar.gz |" in proc.stdout, proc.stderr
    # Back and forth (A, B, A) is three stretches; epochs from before devices were recorded take the label.
    back = _fake_run(tmp_path / "e", 3, [0.1, 0.2, 0.3, 0.4], 4, devices=["A", "B", "B", "A"])
    older = _fake_run(tmp_path / "f", 4, [0.1, 0.2], 2)
    records = (older / "metrics.jsonl").read_text().splitlines()
    (older / "metrics.jsonl").write_text(records[0] + "\n" + records[1][:-1] + ', "device": "B"}\n')
    rows = results.results_table([results.summarize_run(r) for r in (back, older)], "A").strip().splitlines()[2:]
    assert "| A then B then A |" in rows[0] and "| A then B |" in rows[1], rows
    bad = _fake_run(tmp_path / "d", 0, [0.9], 1, devices=[0])
    with pytest.raises(ValueError, match=r"metrics.jsonl line 1's device is 0, not a string"):
        results.summarize_run(bad)


def test_the_final_epoch_is_the_last_of_one_run_in_order(tmp_path: Path) -> None:
    # The table's accuracy is the last line's: a line appended out of order (epoch 1 after epoch 3) made epoch 1's
    # accuracy the "final-epoch" one. A torn last line, from a run killed while writing it, is left out.
    run = _fake_run(tmp_path / "a", 0, [0.5, 0.6, 0.9], 3)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([*lines, lines[0]]) + "\n")
    with pytest.raises(ValueError, match=r"line 4 is epoch 1 after epoch 3 of a 3-epoch run: not one run's epochs"):
        results.summarize_run(run)
    (run / "metrics.jsonl").write_text("\n".join([lines[0], lines[2]]) + "\n")  # an epoch missing is still in order
    assert results.summarize_run(run).final_test_acc == 0.9
    (run / "metrics.jsonl").write_text("\n".join([*lines, lines[2].replace('"epoch": 3', '"epoch": 4')]) + "\n")
    with pytest.raises(ValueError, match=r"line 4 is epoch 4 after epoch 3 of a 3-epoch run"):
        results.summarize_run(run)
    (run / "metrics.jsonl").write_text("\n".join([*lines[:2], lines[2][:20]]) + "\n")  # torn: stopped at epoch 2
    summary = results.summarize_run(run)
    assert (summary.epochs_done, summary.final_test_acc) == (2, None)
    (run / "metrics.jsonl").write_text("\n".join([lines[0][:20], *lines[1:]]) + "\n")  # damaged, not torn
    with pytest.raises(ValueError, match=r"metrics.jsonl line 1 is not JSON"):
        results.summarize_run(run)
    last = json.loads(lines[2])
    del last["test_acc"]  # a traceback (KeyError) in the table before
    (run / "metrics.jsonl").write_text("\n".join([*lines[:2], json.dumps(last)]) + "\n")
    with pytest.raises(ValueError, match=r"line 3 is not an epoch record \(epoch, epoch_seconds, test_acc\)"):
        results.summarize_run(run)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("epochs", None, "config.json's epochs is None, not an integer"),
        ("epochs", "2", "config.json's epochs is '2', not an integer"),
        ("lr", "0.2", "config.json's lr is '0.2', not a number"),
        ("seed", [0], "config.json's seed is [0], not an integer"),
        ("seed", True, "config.json's seed is True, not an integer"),
        ("recipe", "Default", "config.json's recipe 'Default' is none of default, article"),
        ("epochs", 0, "config.json's epochs is 0"),
        ("colour", "red", "unknown config keys: colour"),  # as the trainers refuse it
    ],
)
def test_a_config_the_table_cannot_read_is_one_line(tmp_path: Path, key: str, value: object, message: str) -> None:
    # Each was a traceback from the table (TypeError, ValueError from a format code, an unhashable seed).
    run = _fake_run(tmp_path / "a", 0, [0.9], 1)
    config = json.loads((run / "config.json").read_text())
    config[key] = value
    (run / "config.json").write_text(json.dumps(config))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "reproduce.py"), "table", str(run), "--device",
                           "cpu"], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert f"unusable run files ({message})" in proc.stderr


def test_runs_of_another_class_count_say_so(tmp_path: Path) -> None:
    # Two rows that printed identically: num_classes differed and was in no column.
    runs = [_fake_run(tmp_path / "a", 0, [0.9], 1), _fake_run(tmp_path / "b", 0, [0.8], 1, num_classes=3)]
    rows = results.results_table([results.summarize_run(r) for r in runs], "cpu").strip().splitlines()[2:]
    assert "| - | 0 | 90.00 |" in rows[0] and "| num_classes=3 | 0 | 80.00 |" in rows[1]


_CHILD = """
import signal, sys, time
from pathlib import Path
log = Path(sys.argv[1])
def stop(signum, frame):  # as a trainer does: finish its checkpoint, then exit 128 + the signal
    with log.open("a") as f:
        f.write(f"child got {signum}\\n")
    time.sleep(1.0)
    with log.open("a") as f:
        f.write("child exits\\n")
    sys.exit(128 + signum)
signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)
log.write_text("ready\\n")
time.sleep(120)
"""

_DRIVER = """
import importlib.util, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("reproduce_cli", sys.argv[1])
reproduce = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reproduce)
try:
    with reproduce.terminate_as_interrupt():
        reproduce._call([sys.argv[2], sys.argv[3]])
except KeyboardInterrupt as e:
    with open(sys.argv[3], "a") as f:
        f.write(f"plan stopped by {reproduce.exit_signal(e)}\\n")
    sys.exit(128 + reproduce.exit_signal(e))
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_plan_passes_a_signal_on_once_and_waits_for_the_trainer(tmp_path: Path, signum: int) -> None:
    # SIGTERM to reproduce.py left its trainer training, orphaned; Ctrl-C (SIGINT to the whole terminal group)
    # killed the trainer 0.25 s later, while it was writing its checkpoint. Now each signal reaches the trainer
    # once (it runs in a session of its own), and the plan exits after it, with 128 + the signal.
    child, log = tmp_path / "child.py", tmp_path / "log"
    child.write_text(_CHILD)
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER, str(ROOT / "scripts" / "reproduce.py"), str(child),
                               str(log)], cwd=ROOT, start_new_session=True)  # fmt: skip
    deadline = time.time() + 60
    while not (log.exists() and log.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(driver.pid, signum)  # as a terminal's Ctrl-C reaches every process of its foreground group
    assert driver.wait(timeout=60) == 128 + signum
    assert log.read_text() == f"ready\nchild got {signum}\nchild exits\nplan stopped by {signum}\n"
