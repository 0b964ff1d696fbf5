"""The four CLIs as a user runs them: help, bad flags, a smoke run's outputs, data errors, evaluate/predict/export."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from conftest import REPO, SHARED_DATA, TINY_CLASSES, TINY_FLAGS, cpu_run_device, run_cli
from flax_resnet import data as data_lib
from flax_resnet.reporting import METRIC_KEYS
from torch_ref.models import create_model as create_torch_model


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"cli_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _one_error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_the_readme_s_first_command_without_data_is_one_line(tmp_path: Path) -> None:
    # `python scripts/train.py --arch resnet18` reads TFDS; offline and unprepared, its error came after four
    # lines TensorFlow logs as it loads (twice: the absl notice and "oneDNN custom operations are on").
    offline = {"HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}  # refused at once
    proc = run_cli("train.py", "--arch", "resnet18", "--data-dir", str(tmp_path / "tfds"), "--workdir",
                   str(tmp_path / "run"), env=offline)  # fmt: skip
    line = _one_error_line(proc)
    assert proc.returncode == 1 and line.startswith("error: tfds cifar10 is not prepared in ")
    assert "cannot be downloaded" in line and "--data PATH" in line


def test_help_and_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    proc = run_cli("train.py", "--help", check=True)
    for flag in (
        "--arch",
        "--variant",
        "--recipe",
        "--nesterov",
        "--no-nesterov",
        "--dtype",
        "--max-steps",
        "--checkpoint-every",
        "--checkpoint-seconds",
        "--no-progress",
        "--coordinator",
        "--num-processes",
        "--process-id",
        "--holdout",
        "--cutout",
    ):
        assert flag in proc.stdout
    for script in ("evaluate.py", "predict.py", "export.py"):
        assert "WORKDIR_OR_CHECKPOINT" in run_cli(script, "--help", check=True).stdout
    proc = run_cli("train.py", "--arch", "resnet19")
    assert proc.returncode == 2 and "invalid choice: 'resnet19'" in proc.stderr and proc.stderr.count("\n") == 1
    parser = _script("train").build_parser()
    for bad in (["--bogus"], ["--variant", "tiny"], ["--schedule", "linear"], ["--dtype", "fp16"], ["--recipe", "x"],
                ["--seed", "-1"], ["--holdout", "-5"], ["--cutout", "x"], ["--checkpoint-seconds", "-1"],
                ["--batch-size", "1"], ["--seed", str(2**32)], ["--lr", "0"], ["--lr", "inf"], ["--lr", "nan"],
                ["--momentum", "1"], ["--weight-decay", "inf"], ["--label-smoothing", "1"]):  # fmt: skip
        with pytest.raises(SystemExit) as info:
            parser.parse_args(bad)
        assert info.value.code == 2
    args = parser.parse_args(["--lr", "0.3", "--no-nesterov"])
    assert args.lr == 0.3 and args.nesterov is False and args.epochs is None and args.progress is None
    main = _script("train").main  # checks across flags: exit 2 before anything is imported or joined
    for bad, words in (
        (["--num-processes", "2", "--coordinator", "h:1234", "--process-id", "2"], "--process-id must be in [0, 2)"),
        (["--process-id", "-1"], "--process-id must be in [0, 1)"),
        (["--num-processes", "2", "--coordinator", "h", "--process-id", "1"], "--coordinator wants HOST:PORT"),
        (["--num-processes", "2", "--coordinator", "h:99999"], "--coordinator wants HOST:PORT"),
        # ignored before: on a cluster, every host trained a run of its own, possibly into one shared workdir
        (["--coordinator", "h:1234"], "--coordinator needs --num-processes N"),
    ):
        with pytest.raises(SystemExit) as info:
            main(bad)
        assert info.value.code == 2 and words in capsys.readouterr().err


def test_a_failed_join_is_one_line() -> None:
    # jax's own error (here an IndexError from an address without a port) becomes one DistributedError line.
    code = (
        "from flax_resnet.distributed import DistributedError, initialize\n"
        "try:\n    initialize('nohost', 2, 0)\nexcept DistributedError as e:\n    print('ERR', e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("ERR cannot join the run at nohost as process 0 of 2 (IndexError: ")


def test_smoke_run_writes_every_output(trained_run: Path) -> None:
    for name in ("config.json", "metrics.jsonl", "curves.png", "predictions.png"):
        assert (trained_run / name).is_file() and (trained_run / name).stat().st_size > 0, name
    assert list((trained_run / "tensorboard").glob("events.out.tfevents.*"))
    config = json.loads((trained_run / "config.json").read_text())
    assert (config["arch"], config["variant"], config["num_classes"], config["dtype"]) == (
        "resnet18",
        "imagenet",
        3,
        "float32",
    )
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in records] == [(1, 6), (2, 12)]
    for r in records:
        assert set(METRIC_KEYS) <= set(r)
        assert all(np.isfinite(r[k]) for k in METRIC_KEYS)
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["test_acc"] <= 1
    # img/s counts only the timed images: epoch 1's first step (compilation) is outside its epoch_seconds.
    timed = [r["images_per_second"] * r["epoch_seconds"] for r in records]
    assert timed == [pytest.approx(5 * 16, rel=1e-9), pytest.approx(6 * 16, rel=1e-9)]
    # wall_seconds adds what the epoch time leaves out: compilation, evaluation, the checkpoint and the plots.
    assert all(r["wall_seconds"] > r["epoch_seconds"] for r in records)
    # Each record names the machine, for the results table: the CPU model and this machine's CPU count.
    assert {r["device"] for r in records} == {cpu_run_device()}
    # Accuracies are counts over 96 training / 21 test images.
    assert any(abs(records[-1]["test_acc"] * 21 - k) < 1e-9 for k in range(22))
    assert sorted(int(p.name) for p in (trained_run / "checkpoints").iterdir() if p.name.isdigit()) == [6, 12]


def test_export_evaluate_predict_agree_with_torch(trained_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    run_cli("export.py", str(trained_run), str(out), check=True)
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(out), framework="pt") as f:  # the file says what it holds and how to feed it
        meta = f.metadata()
    assert (meta["arch"], meta["variant"], meta["num_classes"]) == ("resnet18", "imagenet", "3")
    assert json.loads(meta["class_names"]) == list(TINY_CLASSES) and "0.4914" in meta["input"]

    state_dict = load_file(str(out))
    ref = create_torch_model("resnet18", "imagenet", num_classes=3)
    ref.load_state_dict(state_dict, strict=True)
    tv = torchvision.models.resnet18(num_classes=3)
    tv.load_state_dict(state_dict, strict=True)
    ref.eval()
    tv.eval()

    dataset = data_lib.load_dataset(tiny_data, tmp_path / "cache")
    x = torch.from_numpy(np.array(data_lib.normalize(dataset.test_images))).permute(0, 3, 1, 2)
    with torch.no_grad():
        logits = ref(x).numpy()
        np.testing.assert_allclose(tv(x).numpy(), logits, rtol=1e-5, atol=1e-5)
        tta = (logits + tv(x.flip(3)).numpy()) / 2  # the mean logits of each image and its mirror
    preds = logits.argmax(-1)
    correct = int((preds == dataset.test_labels).sum())

    proc = run_cli("evaluate.py", str(trained_run), "--out", str(tmp_path / "cm.png"), "--flip-tta", check=True)
    assert f"test images: {len(preds)}" in proc.stdout
    accuracy = float(re.search(r"loss: [\d.]+  accuracy: ([\d.]+)%", proc.stdout).group(1))
    assert accuracy == pytest.approx(100 * correct / len(preds), abs=0.006)
    flip = re.search(r"with flip TTA:  loss: ([\d.]+)  accuracy: ([\d.]+)%", proc.stdout)
    assert float(flip.group(2)) == pytest.approx(100 * np.mean(tta.argmax(-1) == dataset.test_labels), abs=0.006)
    y = torch.from_numpy(dataset.test_labels.astype(np.int64))
    tta_loss = torch.nn.functional.cross_entropy(torch.from_numpy(tta), y).item()
    # Printed to 4 decimals; and float32 logits of two frameworks, within 1e-5 relative as above (the tiny
    # run's eval loss can be ~40, where 1e-5 is 4e-4).
    assert float(flip.group(1)) == pytest.approx(tta_loss, rel=1e-5, abs=6e-5)
    for c, name in enumerate(TINY_CLASSES):
        mask = dataset.test_labels == c
        line = proc.stdout.split(name, 1)[1].splitlines()[0]
        assert f"({int((preds[mask] == c).sum())}/{int(mask.sum())})" in line
        percent = float(re.search(r"([\d.]+)%", line).group(1))
        assert percent == pytest.approx(100 * np.mean(preds[mask] == c), abs=0.006)
    assert (tmp_path / "cm.png").stat().st_size > 0

    files = [tiny_data / "test" / name / "000.png" for name in TINY_CLASSES]
    big = tmp_path / "big.png"
    from PIL import Image

    Image.open(files[0]).resize((48, 40)).save(big)
    proc = run_cli(
        "predict.py", str(trained_run / "checkpoints" / "12"), *map(str, files), str(big), "--top-k", "2", check=True
    )
    assert "center-cropped and resized" in proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.endswith(tuple("0123456789"))]
    assert len(lines) == 4
    indices = [int(f.stem) for f in files]
    for line, c, i in zip(lines, range(3), indices, strict=False):
        k = np.flatnonzero(dataset.test_labels == c)[i]
        probs = torch.softmax(torch.from_numpy(logits[k]), -1).numpy()
        pairs = re.findall(r"(\w+) ([\d.]+)", line.split(": ", 1)[1])
        assert len(pairs) == 2
        printed = [p for _, p in pairs]
        assert [TINY_CLASSES.index(name) for name, _ in pairs] == list(np.argsort(-probs)[:2])
        np.testing.assert_allclose([float(p) for p in printed], np.sort(probs)[::-1][:2], atol=2e-4)


def test_data_and_checkpoint_errors_are_one_line(tiny_data: Path, tmp_path: Path, trained_run: Path) -> None:
    missing = tmp_path / "nowhere"
    proc = run_cli("train.py", *TINY_FLAGS, "--data", str(missing), "--workdir", str(tmp_path / "w1"))
    assert proc.returncode == 1 and str(missing) in _one_error_line(proc)

    broken = tmp_path / "broken"
    shutil.copytree(tiny_data, broken)
    bad_file = broken / "train" / "dog" / "005.png"
    bad_file.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    proc = run_cli(
        "train.py",
        *TINY_FLAGS,
        "--data",
        str(broken),
        "--data-dir",
        str(tmp_path / "c"),
        "--workdir",
        str(tmp_path / "w2"),
    )
    assert proc.returncode == 1 and str(bad_file) in _one_error_line(proc)

    proc = run_cli("train.py", "--arch", "resnet34", "--data", str(tiny_data), "--workdir", str(trained_run))
    assert proc.returncode == 1 and "refusing to resume" in _one_error_line(proc)

    for script, extra in (
        ("evaluate.py", []),
        ("predict.py", [str(tiny_data / "test" / "cat" / "000.png")]),
        ("export.py", [str(tmp_path / "o.safetensors")]),
    ):
        proc = run_cli(script, str(tmp_path / "no_run"), *extra)
        assert proc.returncode == 1 and "no_run" in _one_error_line(proc), script

    proc = run_cli("write_dataset.py", str(missing), str(tmp_path / "copy.tar.gz"))
    assert proc.returncode == 1 and str(missing) in _one_error_line(proc)
    proc = run_cli("write_dataset.py", str(tiny_data), str(tmp_path / "copy.tar.gz"), "--format", "jpeg",
                   "--quality", "0", "--data-dir", str(tmp_path / "c2"))
    assert proc.returncode == 2 and "quality" in _one_error_line(proc)
    run_cli("write_dataset.py", str(tiny_data), str(tmp_path / "copy.tar.gz"), "--data-dir", str(tmp_path / "c2"),
            check=True)
    copy = data_lib.load_dataset(tmp_path / "copy.tar.gz", tmp_path / "c3")
    want = data_lib.load_dataset(tiny_data, tmp_path / "c2")
    np.testing.assert_array_equal(copy.train_images, want.train_images)  # PNG copy: lossless


def test_mistakes_around_a_finished_run_keep_it_intact(tiny_data: Path, tmp_path: Path, trained_run: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir())
    # Resuming with other settings than the run's is refused, before its data loads; nothing is touched.
    flags = [*TINY_FLAGS, "--data", str(tiny_data), "--data-dir", str(tmp_path / "c"), "--epochs", "3", "--lr", "0.05",
             "--momentum", "0", "--workdir", str(run)]  # fmt: skip
    proc = run_cli("train.py", *flags)
    line = _one_error_line(proc)
    assert proc.returncode == 1 and "epochs 2 (this run: 3)" in line and "momentum 0.9 (this run: 0.0)" in line
    assert not (tmp_path / "c").exists()
    # Without config.json, the checkpoint refuses a state of another layout (no momentum buffers) itself.
    (run / "config.json").rename(tmp_path / "config.json")
    proc = run_cli("train.py", *flags)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "another layout (186 arrays)" in errors[0] and "(124; first difference: .opt_state" in errors[0]
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir()) == steps
    assert not (run / "checkpoints-corrupt").exists()
    assert not (run / "config.json").exists()
    (tmp_path / "config.json").rename(run / "config.json")

    # A torch run's workdir is not taken over.
    torch_run = tmp_path / "torch_run"
    torch_run.mkdir()
    (torch_run / "torch_options.json").write_text("{}")
    proc = run_cli("train.py", *TINY_FLAGS, "--data", str(tiny_data), "--workdir", str(torch_run))
    assert proc.returncode == 1 and "holds a torch run" in _one_error_line(proc)

    # Evaluating on data whose classes differ from the run's (same count) would score labels as other classes.
    renamed = tmp_path / "renamed"
    shutil.copytree(tiny_data, renamed)
    for split in ("train", "test"):
        (renamed / split / "cat").rename(renamed / split / "zebra")  # labels: dog 0, frog 1, zebra 2
    proc = run_cli("evaluate.py", str(run), "--data", str(renamed), "--data-dir", str(tmp_path / "c4"))
    line = _one_error_line(proc)
    assert proc.returncode == 1 and "classes (dog, frog, zebra) are not the checkpoint's" in line
    assert "(cat, dog, frog)" in line

    # Damaged metadata of the newest step: the companion CLIs fall back to the step before.
    newest, older = steps[-1], steps[-2]
    (run / "checkpoints" / str(newest) / "meta" / "metadata").write_text("{x")
    # A batch larger than the test set (here absurdly so) is cut to it rather than allocated.
    proc = run_cli("evaluate.py", str(run), "--batch-size", str(10**12), check=True)
    assert f"falling back to step {older}" in proc.stderr and f"(step {older}," in proc.stdout
    # The data the run recorded has moved: the error says that --data can point at another copy.
    (run / "config.json").write_text("")  # evaluate reads the config from the checkpoint, not this file
    moved = json.loads((run / "checkpoints" / str(older) / "meta" / "metadata").read_text())
    moved["config"]["data"] = str(tmp_path / "moved_away")
    (run / "checkpoints" / str(older) / "meta" / "metadata").write_text(json.dumps(moved))
    proc = run_cli("evaluate.py", str(run))
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]  # after the step-12 warning
    assert proc.returncode == 1 and "moved_away" in line and "--data points at another copy" in line
    assert "Traceback" not in proc.stderr

    # Output paths: a missing folder is one line; an export is readable as the umask allows, with no temp left.
    proc = run_cli("export.py", str(run), str(tmp_path / "missing" / "w.safetensors"))
    assert proc.returncode == 2 and "no such directory" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("evaluate.py", str(run), "--out", str(tmp_path / "missing" / "cm.png"))
    assert proc.returncode == 2 and "no such directory" in proc.stderr and "Traceback" not in proc.stderr
    for out in (tmp_path / "cm.pdf", tmp_path):  # PNG bytes under another suffix; a folder
        proc = run_cli("evaluate.py", str(run), "--out", str(out))
        assert proc.returncode == 2 and "must be a .png file path" in proc.stderr and "Traceback" not in proc.stderr
    run_cli("export.py", str(run), str(tmp_path / "w.safetensors"), check=True)
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("w.")] == ["w.safetensors"]


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.realdata
def test_realdata_smoke(tmp_path: Path) -> None:
    if not SHARED_DATA.is_file():
        pytest.skip(f"real CIFAR-10 copy not found at {SHARED_DATA}")
    workdir = tmp_path / "run"
    proc = run_cli(
        "train.py",
        "--data",
        str(SHARED_DATA),
        "--data-dir",
        str(tmp_path / "cache"),
        "--arch",
        "resnet18",
        "--variant",
        "imagenet",
        "--max-steps",
        "5",
        "--batch-size",
        "32",
        "--no-progress",
        "--workdir",
        str(workdir),
        timeout=600,
        check=True,
    )
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["step"] == 5 and set(METRIC_KEYS) <= set(records[0])
    assert json.loads((workdir / "config.json").read_text())["num_classes"] == 10
    assert "final: step 5" in proc.stdout
