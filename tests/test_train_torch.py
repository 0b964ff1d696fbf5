"""The PyTorch reference trainer: its schedule equals make_schedule, its augmentation is RandomCrop + flip,
and scripts/train_torch.py trains end to end into a checkpoint that both frameworks load."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from augment_reference import assert_uniform_draws, recover_windows
from flax import nnx
from PIL import Image
from safetensors.torch import load_file
from test_data import CUTOUT_CENTERS, cutout_keep_reference

import flax_resnet
from conftest import LEARNING_SETTINGS, OPERATIONAL_SETTINGS, START_SETTINGS, cpu_run_device
from flax_resnet import data as data_lib
from flax_resnet.config import Config, make_config
from flax_resnet.data import CIFAR10_MEAN, CIFAR10_STD
from flax_resnet.reporting import METRIC_KEYS
from flax_resnet.train import make_schedule
from torch_ref import data as tdata
from torch_ref.models import create_model
from torch_ref.train import TorchOptions, TrainError, lr_at, total_steps
from torch_ref.train import train as torch_train

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_torch.py"


# ------------------------------------------------------------------------------------------- schedule

SCHEDULE_CASES = [
    # (config, steps_per_epoch)
    (make_config("default"), 97),  # onecycle, 40 epochs
    (make_config("default", schedule="cosine", epochs=13), 37),
    (make_config("article"), 390),  # piecewise at 150/270 and 210/270 of 270 epochs
    (make_config("default", schedule="piecewise", epochs=3, piecewise_boundaries=(0.5, 0.5, 0.9)), 11),
    (make_config("default", epochs=1), 5),  # warm-up round(0.75) = 1 step
    (make_config("default", epochs=1), 3),  # warm-up round(0.45) = 0 steps: decay from the first step
    (make_config("default", schedule="cosine", epochs=1, warmup_fraction=0.0), 3),
    (make_config("default", schedule="onecycle", epochs=2, warmup_fraction=0.5, lr=0.05), 10),
]


@pytest.mark.parametrize(("config", "steps_per_epoch"), SCHEDULE_CASES)
def test_lr_at_equals_make_schedule(config: Config, steps_per_epoch: int) -> None:
    total = total_steps(config, steps_per_epoch)
    steps = np.arange(total + 5)  # past the end too: the schedules hold their last value
    # optax evaluates in float32 by default, whose cos() near pi loses the tiny tail of the cosine schedule;
    # in float64 the two implementations must agree to rounding.
    with jax.enable_x64(True):
        expected = np.asarray(make_schedule(config, steps_per_epoch)(jnp.asarray(steps)), np.float64)
    ours = np.array([lr_at(config, steps_per_epoch, int(s)) for s in steps])
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=0)
    assert ours[-1] == expected[-1]


def test_lr_at_hand_values() -> None:
    # Independent of optax: values worked out by hand from the recipe definitions.
    article = make_config("article")  # 270 epochs x 10 steps: boundaries at steps 1500 and 2100
    assert [lr_at(article, 10, s) for s in (0, 1499, 1500, 2099, 2100, 2699)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rel=1e-12
    )
    onecycle = make_config("default", epochs=2, lr=0.25)  # 20 steps, warm-up round(3.0) = 3
    assert [lr_at(onecycle, 10, s) for s in (0, 1, 3, 10, 20)] == pytest.approx(
        [0.01, 0.01 + 0.24 / 3, 0.25, 0.25 * 10 / 17, 0.0], rel=1e-12
    )
    cosine = make_config("default", schedule="cosine", epochs=1, lr=0.25)  # 23 steps, warm-up round(3.45) = 3
    want = [0.01, 0.25, 0.125 * (1 + np.sqrt(0.5)), 0.125, 0.0]  # then 20 steps of half a cosine: t = 0, 5, 10, 20
    assert [lr_at(cosine, 23, s) for s in (0, 3, 8, 13, 23)] == pytest.approx(want, rel=1e-12, abs=1e-15)
    with jax.enable_x64(True):  # and the JAX schedule, at the same steps
        jax_lr = make_schedule(cosine, 23)(jnp.asarray([0, 3, 8, 13, 23]))
    np.testing.assert_allclose(np.asarray(jax_lr, np.float64), want, rtol=1e-6, atol=1e-12)


# --------------------------------------------------------------------------------------- augmentation


def test_augment_is_a_shifted_window_of_the_zero_padded_image_then_maybe_flipped() -> None:
    rng = np.random.default_rng(0)
    n, pad = 2048, 4
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    out = tdata.augment(torch.from_numpy(images), torch.Generator().manual_seed(1), pad=pad).numpy()
    assert out.dtype == np.uint8 and out.shape == images.shape

    assert_uniform_draws(*recover_windows(images.transpose(0, 2, 3, 1), out.transpose(0, 2, 3, 1), pad), pad)


def test_normalize_matches_torchvision() -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    ours = tdata.normalize(tdata.to_device(images, "cpu"))
    ref = torch.stack([TF.normalize(TF.to_tensor(im), CIFAR10_MEAN, CIFAR10_STD) for im in images])
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_both_normalizes_are_torchvisions_to_the_bit_in_any_program() -> None:
    # Every level of every channel: torch_ref's and flax_resnet's (eager, and jitted inside other arithmetic,
    # where XLA's rewrites of the arithmetic form rounded 1 ulp apart) equal torchvision's bitwise.
    levels = np.repeat(np.arange(256, dtype=np.uint8), 3).reshape(1, 16, 16, 3)
    ref = TF.normalize(TF.to_tensor(levels[0]), CIFAR10_MEAN, CIFAR10_STD).permute(1, 2, 0).numpy()[None]
    theirs = tdata.normalize(tdata.to_device(levels, "cpu")).permute(0, 2, 3, 1).numpy()
    eager = np.asarray(flax_resnet.normalize(levels))
    fused = np.asarray(jax.jit(lambda u: flax_resnet.normalize(u) * 2.0)(levels))  # exact: a power of 2
    for got in (theirs, eager, fused / 2.0):
        assert got.dtype == np.float32 and np.array_equal(got, ref)


@pytest.mark.parametrize("size", [16, 7])
def test_cutout_keep_matches_pixelwise_reference(size: int) -> None:  # the reference the JAX mask also meets
    got = tdata.cutout_keep(torch.from_numpy(CUTOUT_CENTERS), size, 32, 32).numpy()
    np.testing.assert_array_equal(got, cutout_keep_reference(CUTOUT_CENTERS, size, 32, 32))


def test_cutout_erases_one_clipped_square_per_image_at_uniform_centers() -> None:
    x = torch.ones((20000, 3, 32, 32))
    out = tdata.cutout(x, torch.Generator().manual_seed(0), 16).numpy()
    assert set(np.unique(out)) == {0.0, 1.0}
    erased = out[:, 0] == 0
    assert (erased == (out == 0).all(1)).all()
    # As for the JAX cutout (tests/test_data.py): E[erased rows]^2 / 32^2 with E = 14 for centers uniform on 0..31.
    np.testing.assert_allclose(erased.mean(), 14.0**2 / 1024, rtol=0.01)
    assert {int(c) for c in np.argmax(erased.any(1), 1)} == set(range(24))


# ------------------------------------------------------------------------------------------ the script


def _make_image_folder(root: Path, n_train: int = 8, n_test: int = 4, n_classes: int = 10) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", n_train), ("test", n_test)):
        for c in range(n_classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                pixels[..., c % 3] = np.clip(pixels[..., c % 3].astype(int) + 25 * c, 0, 255)  # a class signal
                Image.fromarray(pixels).save(folder / f"{i}.png")


def _run(*args: str | Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    # One intra-op thread: under pytest-xdist the workers already fill the cores, and OpenMP threads that
    # spin at barriers on an oversubscribed machine make each step 5-10x slower.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def _script_main() -> Callable[[list[str]], int]:
    spec = importlib.util.spec_from_file_location("train_torch_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_script_trains_and_writes_a_checkpoint_both_frameworks_load(tmp_path: Path) -> None:
    data, workdir = tmp_path / "data", tmp_path / "run"
    _make_image_folder(data)
    proc = _run(
        "--variant", "imagenet", "--arch", "resnet18", "--batch-size", "16", "--max-steps", "3", "--epochs", "1",
        "--lr", "0.01", "--no-progress", "--device", "cpu",
        "--data", data, "--data-dir", tmp_path / "cache", "--workdir", workdir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1 (partial) step 3 " in proc.stdout  # 3 of the 5 steps of an epoch
    assert proc.stdout.rstrip().splitlines()[-1].startswith("final: step 3, test accuracy ")  # as train.py says it

    config = Config.from_json((workdir / "config.json").read_text())
    assert (config.arch, config.variant, config.batch_size, config.epochs, config.max_steps) == (
        "resnet18", "imagenet", 16, 1, 3,
    )  # fmt: skip
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and set(rows[0]) == {*METRIC_KEYS, "complete", "wall_seconds", "device"}
    assert rows[0]["device"] == cpu_run_device()  # the same words as the JAX trainer's, for the results table
    row = rows[0]
    assert row["wall_seconds"] > row["epoch_seconds"]  # the epoch and the warm-up step and evaluation around it
    assert (row["epoch"], row["step"], row["complete"]) == (1, 3, False)
    # The lr of the last step taken (step index 2) of the 5-step run (80 images / 16), from optax.
    assert row["lr"] == pytest.approx(float(make_schedule(config, 5)(2)), rel=1e-6)
    assert 0 <= row["train_acc"] <= 1 and row["train_loss"] > 0 and row["images_per_second"] > 0

    state = load_file(str(workdir / "model.safetensors"))
    model = create_model("resnet18", "imagenet", 10)
    model.load_state_dict(state, strict=True)
    assert int(state["bn1.num_batches_tracked"]) == 3  # three training steps, no more
    model.eval()

    # Test metrics recomputed independently: every test image once, torchvision normalization.
    files = sorted((data / "test").glob("*/*.png"))
    labels = torch.tensor([int(f.parent.name.removeprefix("class")) for f in files])
    x = torch.stack([TF.normalize(TF.to_tensor(Image.open(f)), CIFAR10_MEAN, CIFAR10_STD) for f in files])
    with torch.no_grad():
        logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    acc = int((logits.argmax(1) == labels).sum()) / len(labels)
    assert row["test_loss"] == pytest.approx(loss, rel=1e-5)
    assert row["test_acc"] == pytest.approx(acc, abs=1e-9)

    # The Flax model's structure without running its initializers (which compile one XLA program per conv
    # shape); the strict, all-or-nothing load below must then fill every variable.
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: flax_resnet.create_model("resnet18", "imagenet", 10)))

    def poison(a: jax.ShapeDtypeStruct) -> np.ndarray:  # NaN (or -1): anything left unloaded would show
        return np.full(a.shape, np.nan if np.issubdtype(a.dtype, np.floating) else -1, a.dtype)

    flax_model = nnx.merge(graphdef, jax.tree.map(poison, abstract))
    flax_resnet.load_torch_state_dict(flax_model, flax_resnet.load_weights_file(workdir / "model.safetensors"))
    flax_logits = flax_resnet.predict(flax_model, x[:4].permute(0, 2, 3, 1).numpy(), jit=False)
    np.testing.assert_allclose(np.asarray(flax_logits), logits[:4].numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_script_stopped_by_a_signal_says_so_and_keeps_the_last_epoch(tmp_path: Path, signum: int) -> None:
    # A cluster's SIGTERM used to end the run without a word (exit -15); now it is Ctrl-C's one line, 128 + the
    # signal, and the last epoch's weights file intact, with no temporary file left beside it.
    data, workdir = tmp_path / "data", tmp_path / "run"
    _make_image_folder(data)
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--variant", "imagenet", "--batch-size", "16", "--epochs", "200", "--no-progress",
         "--device", "cpu", "--data", str(data), "--data-dir", str(tmp_path / "cache"), "--workdir", str(workdir)],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 240
    while not (workdir / "model.safetensors").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert err.strip().splitlines()[-1].startswith(f"error: stopped by signal {signum} (this trainer does not resume")
    assert "Traceback" not in err
    assert sorted(p.name for p in workdir.iterdir() if "tmp" in p.name) == []
    steps = int(load_file(str(workdir / "model.safetensors"))["bn1.num_batches_tracked"])
    assert steps >= 5 and steps % 5 == 0  # a whole file, written after an epoch (5 steps of 16 of the 80 images)


def test_holdout_trains_on_the_rest_and_evaluates_on_the_held_out_images(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _make_image_folder(data)  # 80 training images, 8 per class
    config = make_config(
        "default", arch="resnet18", variant="imagenet", batch_size=16, epochs=1, lr=0.01, holdout=20, cutout=8,
        progress=False, data=str(data), data_dir=str(tmp_path / "cache"), workdir=str(tmp_path / "run"),
    )  # fmt: skip
    torch.set_num_threads(1)
    out = io.StringIO()
    (row,) = torch_train(config, TorchOptions(device="cpu"), out=out)
    assert row["step"] == (80 - 20) // 16  # 3 steps; the 80 images alone would give 5
    assert re.search(r"^epoch 1 step 3 .* \| holdout loss [\d.]+ acc [\d.]+% \|", out.getvalue(), re.M)
    assert out.getvalue().rstrip().splitlines()[-1] == (  # the JAX trainer's last line, word for word
        f"final: step 3, holdout (20 training images) accuracy {100 * row['test_acc']:.2f}% (final epoch, not "
        f"best-of); with flip TTA {100 * row['test_acc_flip']:.2f}%"
    )

    held = data_lib.hold_out(data_lib.load_dataset(data, tmp_path / "cache"), 20)
    assert np.bincount(held.test_labels).tolist() == [2] * 10
    model = create_model("resnet18", "imagenet", 10)
    model.load_state_dict(load_file(str(tmp_path / "run" / "model.safetensors")), strict=True)
    model.eval()
    x = torch.stack([TF.normalize(TF.to_tensor(im), CIFAR10_MEAN, CIFAR10_STD) for im in held.test_images])
    with torch.no_grad():
        logits = model(x)
        tta = (logits + model(TF.hflip(x))) / 2  # flip TTA, measured at the run's end
    assert row["test_acc"] == pytest.approx(float((logits.argmax(1).numpy() == held.test_labels).mean()), abs=1e-9)
    assert row["test_acc_flip"] == pytest.approx(float((tta.argmax(1).numpy() == held.test_labels).mean()), abs=1e-9)
    y = torch.from_numpy(held.test_labels.astype("int64"))
    assert row["test_loss_flip"] == pytest.approx(torch.nn.functional.cross_entropy(tta, y).item(), rel=1e-5)


def test_cutout_wider_than_the_images_is_refused_before_any_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _make_image_folder(data, n_train=2, n_test=1)
    config = make_config(
        "default", arch="resnet18", variant="imagenet", batch_size=16, epochs=1, cutout=40, progress=False,
        data=str(data), data_dir=str(tmp_path / "cache"), workdir=str(tmp_path / "run"),
    )  # fmt: skip
    with pytest.raises(TrainError, match=r"^--cutout 40 is larger than the 32x32 images"):
        torch_train(config, TorchOptions(device="cpu"), out=io.StringIO())
    assert not (tmp_path / "run").exists()


def test_nonfinite_loss_stops_and_keeps_the_last_good_weights(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _make_image_folder(data, n_train=2, n_test=1)  # 20 training images: one step of 16 per epoch
    values = dict(
        arch="resnet18", variant="imagenet", batch_size=16, epochs=3, lr=0.01, progress=False, data=str(data),
        data_dir=str(tmp_path / "cache"), workdir=str(tmp_path / "run"),
    )  # fmt: skip
    torch.set_num_threads(1)
    calls = {"n": 0}
    original = tdata.augment

    def poisoned(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:  # the second step's images: NaN
        calls["n"] += 1
        y = original(x, generator)
        return y.float().fill_(float("nan")) if calls["n"] == 2 else y

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tdata, "augment", poisoned)
        with pytest.raises(TrainError, match=r"^loss is not finite \(nan/inf\) in epoch 2 \(steps 2-2\); stopping; "
                           r"model.safetensors holds epoch 1's weights$"):  # fmt: skip
            torch_train(make_config("default", **values), TorchOptions(device="cpu"), out=io.StringIO())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1]  # nothing logged from the non-finite epoch
    weights = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert all(torch.isfinite(w.float()).all() for w in weights.values())


@pytest.mark.parametrize(
    "flags", [["--arch", "resnet19"], ["--batch-size", "0"], ["--lr", "fast"], ["--seed", "-1"], ["--cutout", "-2"]]
)
def test_script_bad_flag_exits_2(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # In-process (the parser is the same code the CLI runs; the subprocess path is covered below).
    with pytest.raises(SystemExit) as exit_info:
        _script_main()([*flags, "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert flags[0] in err and "Traceback" not in err


def test_script_missing_data_is_one_line_exit_1(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_cifar.tar.gz"
    proc = _run("--data", missing, "--device", "cpu", "--workdir", tmp_path / "run", "--no-progress", timeout=120)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(missing) in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_script_refuses_a_jax_workdir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    workdir = tmp_path / "jax_run"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "metrics.jsonl").write_text('{"epoch": 1}\n')
    assert _script_main()(["--workdir", str(workdir), "--device", "cpu", "--data", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds a JAX run" in err
    assert (workdir / "metrics.jsonl").read_text() == '{"epoch": 1}\n'  # untouched


def test_script_keeps_a_finished_run_and_replaces_a_run_only_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, workdir = tmp_path / "data", tmp_path / "run"
    _make_image_folder(data, n_train=2, n_test=1)  # 20 training images: one step of 16 per epoch
    args = [
        "--variant", "imagenet", "--batch-size", "16", "--epochs", "1", "--lr", "0.01", "--no-progress",
        "--device", "cpu", "--data", str(data), "--data-dir", str(tmp_path / "cache"), "--workdir", str(workdir),
    ]  # fmt: skip
    torch.set_num_threads(1)
    main = _script_main()
    assert main(args) == 0
    files = {name: (workdir / name).read_bytes() for name in ("config.json", "metrics.jsonl", "model.safetensors")}
    assert len(list((workdir / "tensorboard").iterdir())) == 1  # one event file
    capsys.readouterr()

    assert main(args) == 0  # the same finished command again: nothing to do, nothing touched
    assert "holds this run, finished at step 1: nothing to do" in capsys.readouterr().out
    assert all((workdir / name).read_bytes() == content for name, content in files.items())
    assert main([*args, "--data-dir", str(tmp_path / "cache2")]) == 0  # only where the cache is differs: this run
    assert "holds this run, finished at step 1: nothing to do" in capsys.readouterr().out
    assert all((workdir / name).read_bytes() == content for name, content in files.items())

    # A --epochs 2 run killed after epoch 1 leaves these files with epochs 2 in its config.json: unfinished, and
    # the same command again is refused (this trainer does not resume), not taken as finished.
    (workdir / "config.json").write_text(json.dumps({**json.loads(files["config.json"]), "epochs": 2}))
    two = [*args]
    two[two.index("--epochs") + 1] = "2"
    assert main(two) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds this run, unfinished, with 1 epochs logged, and this trainer" in err
    (workdir / "config.json").write_bytes(files["config.json"])

    assert main([*args, "--arch", "resnet34"]) == 1  # another run in the same workdir: refused, nothing touched
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "holds another torch run (settings: arch 'resnet18' (this run: 'resnet34')) with 1 epochs logged" in err
    assert all((workdir / name).read_bytes() == content for name, content in files.items())
    other = tmp_path / "other"
    _make_image_folder(other, n_train=4, n_test=1)  # the same flags over 40 training images: 2 steps per epoch
    assert main([*args, "--data", str(other)]) == 1  # it said "this run, unfinished": the data is another
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert ("holds another torch run (settings: steps per epoch 1 (this run: 2; other training data)) with 1 epochs "
            "logged") in err  # fmt: skip
    assert all((workdir / name).read_bytes() == content for name, content in files.items())
    # The same step count over other data was "this run, finished: nothing to do" (exit 0, the stale model kept):
    # a class renamed so that the label order changes, and the same classes with one image replaced.
    renamed = tmp_path / "renamed"
    shutil.copytree(data, renamed)
    for split in ("train", "test"):
        (renamed / split / "class0").rename(renamed / split / "zclass0")  # now label 9, every other one shifts
    new_names = ", ".join([*(f"class{c}" for c in range(1, 10)), "zclass0"])
    cases = [(renamed, f"classes {', '.join(f'class{c}' for c in range(10))}; this data's: {new_names}")]
    for split in ("train", "test"):
        changed = tmp_path / f"changed_{split}"
        shutil.copytree(data, changed)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(changed / split / "class3/0.png")
        cases.append((changed, f"other {split} images or labels"))
    for source, why in cases:
        assert main([*args, "--data", str(source)]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert f"holds another torch run (settings: data: {why}) with 1 epochs logged" in err
        assert all((workdir / name).read_bytes() == content for name, content in files.items())

    # Files it cannot read: nothing is known of the run, so it is refused, whatever is saved.
    (workdir / "metrics.jsonl").write_text("{not json\n")
    (workdir / "model.safetensors").unlink()
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("holds a torch run whose config.json or metrics.jsonl cannot be read, and this trainer does "
                        "not resume; pass --overwrite to replace it, or give a new --workdir")  # fmt: skip
    # Stopped inside its first epoch: no epoch logged, no model saved, nothing to lose; the run starts afresh.
    (workdir / "metrics.jsonl").write_text("")
    assert main(args) == 0
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 1 and (workdir / "model.safetensors").exists()
    files = {name: (workdir / name).read_bytes() for name in ("config.json", "metrics.jsonl", "model.safetensors")}

    (workdir / "tensorboard" / "old-run-marker").write_text("")
    assert main([*args, "--arch", "resnet34", "--overwrite"]) == 0  # replaced, old files first removed
    assert "layer3.5.conv1.weight" in load_file(str(workdir / "model.safetensors"))  # resnet34 has 6 blocks there
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (workdir / "tensorboard" / "old-run-marker").exists()


# ------------------------------------------------------------------------------------------ the optimizer

# Each recipe's SGD as its definition states it (flax_resnet/config.py docstrings, README): hand-written here,
# not read from the Config, so that the trainer's wiring is checked against the recipe rather than itself.
# (recipe, lr, momentum, nesterov, weight_decay, label_smoothing)
RECIPE_SGD = [("default", 0.2, 0.9, True, 5e-4, 0.1), ("article", 0.1, 0.9, False, 5e-4, 0.0)]
# The rest of each recipe as the README states it: the article's (batch 128; lr 0.1 for 150 epochs, 0.01 for 60,
# 0.001 for 60; crop + flip only; float32), the default's (batch 512, 40 epochs, one-cycle with 15%
# warm-up; bf16 where there is an accelerator). The results table's numbers were measured with these.
RECIPE_RUN = {
    "article": dict(batch_size=128, epochs=270, schedule="piecewise", cutout=0, dtype="float32"),
    "default": dict(batch_size=512, epochs=40, schedule="onecycle", warmup_fraction=0.15, cutout=0, dtype="auto"),
}


@pytest.mark.parametrize(("recipe", "lr", "momentum", "nesterov", "wd", "smoothing"), RECIPE_SGD)
def test_recipes_are_the_stated_ones(
    recipe: str, lr: float, momentum: float, nesterov: bool, wd: float, smoothing: float
) -> None:
    config = make_config(recipe)
    stated = dict(RECIPE_RUN[recipe], lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd,
                  label_smoothing=smoothing)  # fmt: skip
    assert {key: getattr(config, key) for key in stated} == stated
    if recipe == "article":  # the hand-stepped lr at the real step count: 50,000 // 128 = 390 steps an epoch
        steps = [0, 150 * 390 - 1, 150 * 390, 210 * 390 - 1, 210 * 390, 270 * 390 - 1]
        want = [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
        assert [lr_at(config, 390, s) for s in steps] == pytest.approx(want, rel=1e-12)
        schedule = make_schedule(config, 390)
        assert [float(schedule(s)) for s in steps] == pytest.approx(want, rel=1e-6)


def _hand_sgd_step(
    p: np.ndarray, g: np.ndarray, buf: np.ndarray | None, lr: float, momentum: float, nesterov: bool, wd: float
) -> tuple[np.ndarray, np.ndarray]:
    """torch.optim.SGD's documented update, in float64: returns (new parameter, new momentum buffer)."""
    d = g + wd * p
    buf = d.copy() if buf is None else momentum * buf + d
    d = d + momentum * buf if nesterov else buf
    return p - lr * d, buf


def _smoothed_ce(logits: np.ndarray, y: np.ndarray, eps: float) -> tuple[float, np.ndarray]:
    """Mean cross-entropy against targets (1 - eps) one-hot + eps / K, and its gradient w.r.t. the logits."""
    n, k = logits.shape
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    q = np.full((n, k), eps / k)
    q[np.arange(n), y] += 1.0 - eps
    return float(-(q * log_p).sum() / n), (np.exp(log_p) - q) / n


@pytest.mark.parametrize(("recipe", "lr", "momentum", "nesterov", "wd"), [r[:5] for r in RECIPE_SGD])
def test_make_optimizer_is_torch_sgd_of_the_recipe(
    recipe: str, lr: float, momentum: float, nesterov: bool, wd: float
) -> None:
    """Two steps of the trainer's optimizer on fixed parameters and gradients equal the hand-written SGD."""
    from torch_ref.train import make_optimizer

    rng = np.random.default_rng(0)
    p0, grads = rng.normal(size=(2, 3)), rng.normal(size=(2, 2, 3)) * 1e-3  # decay is ~1/2 of each gradient
    param = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    module = torch.nn.Module()
    module.register_parameter("w", param)
    optimizer = make_optimizer(module, make_config(recipe))
    p, buf = p0, None
    for step, g in enumerate(grads):
        step_lr = lr if step == 0 else lr / 7  # first the lr it was built with; then one set as the trainer does
        if step > 0:
            for group in optimizer.param_groups:
                group["lr"] = step_lr
        param.grad = torch.from_numpy(g.copy())
        optimizer.step()
        p, buf = _hand_sgd_step(p, g, buf, step_lr, momentum, nesterov, wd)
        np.testing.assert_allclose(param.detach().numpy(), p, rtol=1e-12, atol=0)


class _TinyLinear(torch.nn.Module):
    """A float64 linear classifier on the flattened images that keeps its training-mode inputs (for hand
    gradients); float64 parameters make each SGD update exact enough to compare at any lr."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 32 * 32, num_classes, dtype=torch.float64)
        torch.nn.init.normal_(self.fc.weight, std=0.05)  # large enough that weight decay moves it visibly
        self.inputs: list[np.ndarray] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1).double()
        if self.training:
            self.inputs.append(x.detach().numpy().copy())
        return self.fc(x)


def _tiny_linear_factory() -> tuple[list[_TinyLinear], Callable[[str, str, int], _TinyLinear]]:
    """A stand-in for torch_ref.train.create_model and the list of the models it made (to patch it in)."""
    models: list[_TinyLinear] = []

    def tiny_model(arch: str, variant: str, num_classes: int) -> _TinyLinear:
        models.append(_TinyLinear(num_classes))
        return models[-1]

    return models, tiny_model


@pytest.mark.parametrize(("recipe", "lr", "momentum", "nesterov", "wd", "eps"), RECIPE_SGD)
def test_train_steps_are_hand_sgd_at_the_scheduled_lr_on_the_smoothed_loss(
    tmp_path: Path, recipe: str, lr: float, momentum: float, nesterov: bool, wd: float, eps: float
) -> None:
    """The trainer's own loop (optimizer built from the Config, lr set each step, its loss) on a linear model:
    every step's gradient is the hand gradient of the label-smoothed cross-entropy, every update the hand SGD
    at the schedule's lr for that step, and the logged train loss the hand loss."""
    import torch_ref.train as ttrain

    data = tmp_path / "data"
    _make_image_folder(data)  # 80 training images: 5 steps of 16 per epoch, 10 steps in all
    config = make_config(
        recipe, arch="resnet18", variant="imagenet", batch_size=16, epochs=2, progress=False, data=str(data),
        data_dir=str(tmp_path / "cache"), workdir=str(tmp_path / "run"),
    )  # fmt: skip
    assert config.lr == lr  # the recipe's base lr, from which the schedule below starts
    torch.set_num_threads(1)
    models, tiny_model = _tiny_linear_factory()
    steps: list[dict[str, list[np.ndarray]]] = []

    def spied_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
        optimizer = real_make_optimizer(model, cfg)
        real_step = optimizer.step
        params = list(model.parameters())

        def step() -> None:
            record = {
                "before": [p.detach().double().numpy().copy() for p in params],
                "grad": [p.grad.double().numpy().copy() for p in params],
            }
            real_step()
            record["after"] = [p.detach().double().numpy().copy() for p in params]
            steps.append(record)

        optimizer.step = step
        return optimizer

    real_make_optimizer = ttrain.make_optimizer
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ttrain, "create_model", tiny_model)
        mp.setattr(ttrain, "make_optimizer", spied_optimizer)
        rows = torch_train(config, TorchOptions(device="cpu"), out=io.StringIO())
    (model,) = models
    assert len(steps) == len(model.inputs) == 10

    dataset = data_lib.hold_out(data_lib.load_dataset(data, tmp_path / "cache"), 0)
    buffers: list[np.ndarray | None] = [None, None]
    losses = []
    for k, record in enumerate(steps):
        epoch, i = divmod(k, 5)
        y = dataset.train_labels[data_lib.train_batch_indices(config.seed, epoch, 80, 16)[i]].astype(np.int64)
        x = model.inputs[k]
        w, b = record["before"]
        loss, dlogits = _smoothed_ce(x @ w.T + b, y, eps)
        losses.append(loss)
        for j, want in enumerate((dlogits.T @ x, dlogits.sum(axis=0))):  # float32 sums: relative in norm
            rel = np.linalg.norm(record["grad"][j] - want) / np.linalg.norm(want)
            assert rel < 1e-5, f"step {k}, parameter {j}: gradient off by {rel:.2g} (relative)"
        step_lr = lr_at(config, 5, k)
        for j, (p, g) in enumerate(zip(record["before"], record["grad"], strict=True)):
            expected, buffers[j] = _hand_sgd_step(p, g, buffers[j], step_lr, momentum, nesterov, wd)
            update, want = record["after"][j] - p, expected - p
            rel = np.linalg.norm(update - want) / np.linalg.norm(want)
            assert rel < 1e-9, f"step {k}, parameter {j}: update off by {rel:.2g} (relative)"
    assert [r["train_loss"] for r in rows] == pytest.approx([np.mean(losses[:5]), np.mean(losses[5:])], rel=1e-5)


def test_the_torch_step_cuts_the_square_out_of_the_normalized_crop(tmp_path: Path) -> None:
    """As in the JAX step: the square is zeroed after normalization, so the model sees exact zeros there (the
    dataset's mean colour); cut from the raw pixels, it would see (0 - mean) / std and no zero at all."""
    import torch_ref.train as ttrain

    data = tmp_path / "data"
    _make_image_folder(data)
    config = make_config(
        "default", arch="resnet18", variant="imagenet", batch_size=16, epochs=1, cutout=12, progress=False,
        data=str(data), data_dir=str(tmp_path / "cache"), workdir=str(tmp_path / "run"),
    )  # fmt: skip
    models, tiny_model = _tiny_linear_factory()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ttrain, "create_model", tiny_model)
        torch_train(config, TorchOptions(device="cpu"), out=io.StringIO())
    (model,) = models
    assert len(model.inputs) == 5
    for x in model.inputs:
        erased = (x.reshape(16, 3, 32, 32) == 0).all(axis=1).sum(axis=(1, 2))
        # a 12-pixel square clipped at the border keeps at least 6 x 6 of its pixels
        assert erased.min() >= 36 and erased.max() <= 144, erased


def test_a_rerun_names_every_setting_it_differs_in_and_only_those(tmp_path: Path) -> None:
    """The torch trainer cannot resume, so any setting that changes the run, start-only ones included, makes
    a workdir another run's; where files are and how often to report do not."""
    import dataclasses

    from torch_ref.train import _previous_run

    base = make_config("default", arch="resnet18", variant="imagenet", batch_size=16, progress=False,
                       workdir=str(tmp_path))  # fmt: skip
    base.save(tmp_path / "config.json")
    (tmp_path / "metrics.jsonl").write_text("")
    for key, value in {**LEARNING_SETTINGS, **START_SETTINGS}.items():
        assert getattr(base, key) != value, key
        _, same, diffs = _previous_run(tmp_path, dataclasses.replace(base, **{key: value}), 5)
        assert not same and [d.split(" ")[0] for d in diffs] == [key], (key, diffs)
    for key, value in OPERATIONAL_SETTINGS.items():
        assert getattr(base, key) != value, key
        assert _previous_run(tmp_path, dataclasses.replace(base, **{key: value}), 5)[2] == [], key


def test_torch_to_device_refuses_float_images() -> None:
    from torch_ref import data as tdata

    for bad in (np.zeros((2, 8, 8, 3), np.float32), np.zeros((8, 8, 3), np.uint8)):
        with pytest.raises(ValueError, match="expected uint8 NHWC images"):
            tdata.to_device(bad, "cpu")
    with pytest.raises(ValueError, match="expected NCHW images"):
        tdata.augment(torch.zeros((3, 8, 8), dtype=torch.uint8), torch.Generator().manual_seed(0))


def test_torch_cutout_centres_lie_inside_non_square_images() -> None:
    # The centre pixel of the square is always inside the image, so every image loses at least one pixel;
    # along the short side (4 rows) a square of 2 is never clipped to nothing.
    from torch_ref import data as tdata

    out = tdata.cutout(torch.ones((2000, 1, 4, 32)), torch.Generator().manual_seed(0), 2).numpy()
    assert (out == 0).any(axis=(1, 2, 3)).all()
    out = tdata.cutout(torch.ones((2000, 1, 32, 4)), torch.Generator().manual_seed(0), 2).numpy()
    assert (out == 0).any(axis=(1, 2, 3)).all()


def test_torch_train_acc_is_over_the_images_the_epoch_trained_on(tmp_path: Path) -> None:
    # 80 images in batches of 32: 2 steps of 64 images per epoch, 16 left out; train_acc is the fraction of
    # those 64 that the training-mode logits got right (recomputed here from the logits and the batch order).
    import torch_ref.train as ttrain

    class Recorder(_TinyLinear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = super().forward(x)
            if self.training:
                self.logits.append(out.detach().numpy().copy())
            return out

    data = tmp_path / "data"
    _make_image_folder(data)
    config = make_config(
        "default", arch="resnet18", variant="imagenet", batch_size=32, epochs=2, progress=False, data=str(data),
        data_dir=str(tmp_path / "cache"), workdir=str(tmp_path / "run"),
    )  # fmt: skip
    models: list[Recorder] = []

    def tiny(arch: str, variant: str, num_classes: int) -> Recorder:
        models.append(Recorder(num_classes))
        models[-1].logits = []
        return models[-1]

    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ttrain, "create_model", tiny)
        rows = ttrain.train(config, ttrain.TorchOptions(device="cpu"), out=io.StringIO())
    labels = data_lib.hold_out(data_lib.load_dataset(data, tmp_path / "cache"), 0).train_labels
    (model,) = models
    assert len(model.logits) == 4 and len(rows) == 2
    for epoch, row in enumerate(rows):
        order = data_lib.train_batch_indices(config.seed, epoch, 80, 32)
        right = [np.argmax(model.logits[2 * epoch + i], 1) == labels[order[i]] for i in range(2)]
        assert row["train_acc"] == pytest.approx(np.concatenate(right).mean(), abs=1e-12)
