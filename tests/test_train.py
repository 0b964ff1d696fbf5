"""The training loop in-process: evaluation counts every image once, workdir mismatch, non-finite loss,
evaluation on held-out training images, cutout inside the step."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import signal
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import scipy.special
from PIL import Image
from test_train_torch import RECIPE_SGD  # each recipe's optimizer, written out by hand

from conftest import (
    LEARNING_SETTINGS,
    OPERATIONAL_SETTINGS,
    START_SETTINGS,
    TINY_TEST_PER_CLASS,
    TINY_TRAIN_PER_CLASS,
    make_image_folder,
)
from flax_resnet import data as data_lib
from flax_resnet.checkpoint import Checkpointer
from flax_resnet.config import Config, make_config
from flax_resnet.distributed import make_mesh, put_replicated
from flax_resnet.models import predict
from flax_resnet.packing import StatePacking
from flax_resnet.train import (
    CUTOUT_STREAM,
    RunError,
    apply_model,
    build_state,
    check_workdir,
    cross_entropy,
    evaluate,
    load_run,
    make_eval_fn,
    make_train_step,
    merge_model,
    train,
)

REPO = Path(__file__).resolve().parents[1]


def _config(tiny_data: Path, tmp_path: Path, **kw):
    values = dict(
        arch="resnet18",
        variant="imagenet",
        batch_size=16,
        lr=0.05,
        epochs=2,
        progress=False,
        data=str(tiny_data),
        data_dir=str(tmp_path / "cache"),
        workdir=str(tmp_path / "run"),
    )
    values.update(kw)
    return make_config("default", **values)


def test_eval_counts_every_test_image_once(tiny_data: Path, tmp_path: Path) -> None:
    dataset = data_lib.load_dataset(tiny_data, tmp_path / "cache")
    n = len(dataset.test_labels)
    assert n == 3 * TINY_TEST_PER_CLASS and n % 16 != 0
    config = _config(tiny_data, tmp_path, num_classes=3)
    graphdef, state, _, _ = build_state(config)
    mesh = make_mesh()
    packing = StatePacking(state)
    ev = evaluate(
        make_eval_fn(graphdef, packing),
        packing.pack_jit(put_replicated(state, mesh)),
        put_replicated(dataset.test_images, mesh),
        put_replicated(dataset.test_labels, mesh),
        16,
        mesh,
        keep_logits=True,
    )
    # Hand count from per-image predictions of the same weights (no batching, no padding).
    logits = np.asarray(predict(merge_model(graphdef, state), data_lib.normalize(dataset.test_images), jit=False))
    correct = int(np.sum(np.argmax(logits, -1) == dataset.test_labels))
    z = logits - logits.max(-1, keepdims=True)
    nll = np.log(np.exp(z).sum(-1)) - z[np.arange(n), dataset.test_labels]
    assert ev["count"] == n
    assert ev["accuracy"] == correct / n
    np.testing.assert_allclose(ev["loss"], nll.mean(), rtol=1e-5)
    np.testing.assert_allclose(ev["logits"], logits, rtol=1e-4, atol=1e-4)
    # The first batch (predictions.png) mixes the classes of this class-by-class test set; its logits are those
    # of the images it names.
    first = ev["first_indices"]
    assert len(first) == 16 and len(set(first)) == 16 and len(set(dataset.test_labels[first])) == 3
    np.testing.assert_array_equal(ev["first_logits"], ev["logits"][first])


def test_the_donating_step_leaves_the_split_model_and_a_merged_model_usable() -> None:
    # The step donates its state's buffers; a state that shared them with the model (nnx.split does not copy)
    # left the model's arrays deleted: predict and export failed with "Array has been deleted".
    from flax_resnet.models import create_model
    from flax_resnet.train import init_state, make_optimizer

    model = create_model("resnet18", "imagenet", 10, seed=0)
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    x = data_lib.normalize(images)
    before = np.asarray(predict(model, x))
    tx = make_optimizer(0.1, 0.9, True, 5e-4)
    graphdef, state = init_state(model, tx)
    step = make_train_step(graphdef, tx, make_config(batch_size=4, dtype="float32"))
    batch = {"image": jax.numpy.asarray(images), "label": jax.numpy.arange(4)}
    state, _ = step(state, batch, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(predict(model, x)), before)  # usable, and not trained in place
    merged = merge_model(graphdef, state)
    trained = np.asarray(predict(merged, x))
    assert not np.array_equal(trained, before)
    state, _ = step(state, batch, jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(predict(merged, x)), trained)


def test_resume_refuses_other_settings_and_a_run_without_checkpoints_starts_afresh(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A run that stopped before its first checkpoint left only its config: nothing to resume, so another model
    # may start there (it was refused as "another model").
    (tmp_path / "run").mkdir()
    _config(tiny_data, tmp_path, arch="resnet34", variant="cifar").save(tmp_path / "run" / "config.json")
    assert train(_config(tiny_data, tmp_path, max_steps=1))["step"] == 1
    assert Config.from_json((tmp_path / "run" / "config.json").read_text()).arch == "resnet18"
    # With a checkpoint, every setting that changes what the run learns must be the run's own; config.json would
    # otherwise describe steps the run did not take (e.g. a finished seed-0 run relabelled seed 1).
    refusals = [
        (dict(arch="resnet34", variant="cifar"), r"arch 'resnet34' \(this run: 'resnet18'\).*refusing to resume"),
        (dict(seed=1), r"seed 1 \(this run: 0\)"),
        (dict(epochs=3), r"epochs 3 \(this run: 2\)"),
        (dict(lr=0.1, cutout=8), r"lr 0.1 \(this run: 0.05\), cutout 8 \(this run: 0\)"),
        (dict(num_classes=10), r"holds a run on 10 classes; this data has 3 \(cat, dog, frog\): resume with"),
        # A GPU run (--dtype auto: bfloat16 there) resumed on a CPU (auto: float32): the refusal says why.
        (dict(dtype="bfloat16"), r"dtype 'bfloat16' \(this run: 'float32'\) \(--dtype auto is bfloat16 on a GPU/TPU, "
                                 r"float32 on a CPU\); refusing"),
        # Another held-out split would move images between training and evaluation.
        (dict(holdout=12), r"holdout 12 \(this run: 0\)"),
    ]
    mine = (tmp_path / "run" / "config.json").read_text()
    for changes, message in refusals:
        saved = _config(tiny_data, tmp_path, **{"num_classes": 3, "dtype": "float32", **changes})
        saved.save(tmp_path / "run" / "config.json")
        with pytest.raises(RunError, match=message):
            train(_config(tiny_data, tmp_path, max_steps=1))
    (tmp_path / "run" / "config.json").write_text(mine)
    # Where things are, how often to save, and where the run stops may change: it resumes, with a note.
    capsys.readouterr()
    result = train(_config(tiny_data, tmp_path, max_steps=2, data_dir=str(tmp_path / "cache2"), checkpoint_every=1))
    assert result["step"] == 2
    err = capsys.readouterr().err
    assert "note: resuming with changed settings: data_dir" in err and "max_steps 1 -> 2" in err


def test_both_trainers_train_on_a_train_folder_alone_with_holdout(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # train/ alone: --holdout's images are its evaluation images (12 of its 96: 4 per class); without --holdout
    # there is nothing to evaluate on, which each trainer says before writing anything.
    from torch_ref.train import TorchOptions, TrainError
    from torch_ref.train import train as torch_train

    alone = tmp_path / "alone"
    shutil.copytree(tiny_data / "train", alone / "train")
    for name, run in (("jax", train), ("torch", lambda c: torch_train(c, TorchOptions())[-1])):
        workdir = tmp_path / name
        with pytest.raises(data_lib.DataError, match=r"^the data has no test split"):
            run(_config(alone, tmp_path, workdir=str(workdir), max_steps=2))
        assert not workdir.exists()
        capsys.readouterr()
        assert run(_config(alone, tmp_path, workdir=str(workdir), max_steps=2, holdout=12))["step"] == 2
        assert "final: step 2, holdout (12 training images) accuracy " in capsys.readouterr().out, name
    # test/ alone has nothing to train on: one line (it read as "--batch-size 16 is larger than the 0 images").
    shutil.copytree(tiny_data / "test", tmp_path / "test_alone" / "test")
    for name, run, error in (("jax", train, RunError), ("torch", lambda c: torch_train(c, TorchOptions()), TrainError)):
        with pytest.raises(error, match=r"^the data has no training split \(its folder holds test/ alone\); "):
            run(_config(tmp_path / "test_alone", tmp_path, workdir=str(tmp_path / name / "none")))
        assert not (tmp_path / name / "none").exists()


def test_settings_the_data_cannot_take_are_run_errors_before_any_file(tiny_data: Path, tmp_path: Path) -> None:
    # A cutout wider than the 32x32 images would erase them whole (train loss ln 10, exit 0 before).
    with pytest.raises(RunError, match=r"^--cutout 33 is larger than the 32x32 images"):
        train(_config(tiny_data, tmp_path, cutout=33))
    assert not (tmp_path / "run").exists()
    (tmp_path / "run").write_text("")
    with pytest.raises(RunError, match=r"^--workdir .*run is a file, not a directory$"):
        train(_config(tiny_data, tmp_path))


def test_schedule_too_short_to_decay_is_a_run_error_before_any_file(tiny_data: Path, tmp_path: Path) -> None:
    # 96 training images at batch 64: one step in all, which is the cosine schedule's one warm-up step.
    message = r"^the cosine schedule needs more than its 1 warm-up step\(s\); this run has 1$"
    with pytest.raises(RunError, match=message):
        train(_config(tiny_data, tmp_path, schedule="cosine", epochs=1, batch_size=64))
    assert not (tmp_path / "run").exists()


def test_cosine_run_loads_and_refuses_a_resume_with_another_batch_size(tiny_data: Path, tmp_path: Path) -> None:
    # 96 training images at batch 16: 6 steps per epoch, so a one-epoch cosine run is valid (6 steps > its 1
    # warm-up step); loading it must not rebuild the schedule with one step per epoch, where it is not.
    n_train = 3 * TINY_TRAIN_PER_CLASS
    assert n_train == 96
    config = _config(tiny_data, tmp_path, schedule="cosine", epochs=1, max_steps=2, checkpoint_every=1)
    assert train(config)["step"] == 2
    run = load_run(tmp_path / "run")
    assert run.step == 2 and run.config.schedule == "cosine" and run.config.epochs == 1
    # At batch 32 (3 steps per epoch) saved step 2 would be most of an epoch, not a third of one.
    metrics = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    message = (
        r"/run/checkpoints/2 was made with batch size 16 over 96 training images \(6 steps per epoch\); "
        r"this run has batch size 32 over 96 \(3\)"
    )
    with pytest.raises(RunError, match=r"batch_size 16 \(this run: 32\)"):  # its config.json says so first
        train(_config(tiny_data, tmp_path, schedule="cosine", epochs=1, batch_size=32))
    config_file = tmp_path / "run" / "config.json"
    config_file.rename(tmp_path / "config.json")  # without it, the checkpoint's own record refuses
    with pytest.raises(RunError, match=message):
        train(_config(tiny_data, tmp_path, schedule="cosine", epochs=1, batch_size=32))
    (tmp_path / "config.json").rename(config_file)
    # Fewer steps than the checkpoint holds: nothing to train, and the saved config must keep the run's own.
    with pytest.raises(RunError, match=r"checkpoints/2 is past this run's end \(step 1: --epochs 1, --max-steps 1\)"):
        train(_config(tiny_data, tmp_path, schedule="cosine", epochs=1, max_steps=1))
    assert Checkpointer(tmp_path / "run" / "checkpoints").all_steps() == [1, 2]
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == metrics
    assert json.loads((tmp_path / "run" / "config.json").read_text())["batch_size"] == 16
    # Other data of the same size: a class renamed so that the label order changes (it resumed, training label
    # 0 as another class, with only a note about the path), and the same classes with one training or test
    # image replaced (the run's numbers would mix two data sets).
    renamed = tmp_path / "renamed"
    shutil.copytree(tiny_data, renamed)
    for split in ("train", "test"):
        (renamed / split / "cat").rename(renamed / split / "zcat")
    cases = [(renamed, "classes cat, dog, frog; this data's: dog, frog, zcat")]
    for split in ("train", "test"):
        changed = tmp_path / f"changed_{split}"
        shutil.copytree(tiny_data, changed)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(next((changed / split / "dog").iterdir()), format="PNG")
        cases.append((changed, f"other {split} images or labels"))
    # One training image more: its other size said "batch size 16 over 96 training images (6 steps per epoch);
    # this run has batch size 16 over 97 (6): its saved step would mean another epoch", which was not why.
    grown = tmp_path / "grown"
    shutil.copytree(tiny_data, grown)
    shutil.copy(next((grown / "train" / "dog").iterdir()), grown / "train" / "dog" / "extra.png")
    cases.append((grown, "other train images or labels"))
    for source, why in cases:
        with pytest.raises(RunError, match=re.escape(f"checkpoints/2 was trained on other data ({why}); resume")):
            train(_config(source, tmp_path, schedule="cosine", epochs=1, max_steps=3))
    # A class folder more: it said "other settings: num_classes 3 (this run: 4)", a setting no flag sets.
    kiwi = tmp_path / "kiwi"
    shutil.copytree(tiny_data, kiwi)
    for split in ("train", "test"):
        shutil.copytree(kiwi / split / "dog", kiwi / split / "kiwi")
    message = "/run holds a run on 3 classes; this data has 4 (cat, dog, frog, kiwi): resume with the run's own data"
    with pytest.raises(RunError, match=re.escape(message)):
        train(_config(kiwi, tmp_path, schedule="cosine", epochs=1, max_steps=3))
    assert Checkpointer(tmp_path / "run" / "checkpoints").all_steps() == [1, 2]
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == metrics
    # Metadata that is sound JSON but names no model (damaged) is skipped like unreadable metadata: one warning,
    # then the older step, not a traceback from building the model.
    meta_file = tmp_path / "run" / "checkpoints" / "2" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["config"]["arch"] = "resnet99"
    meta_file.write_text(json.dumps(meta))
    warnings: list[str] = []
    assert load_run(tmp_path / "run", warn=warnings.append).step == 1
    assert len(warnings) == 1 and "checkpoints/2: metadata holds an unusable config" in warnings[0]
    assert "falling back to step 1" in warnings[0]


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tiny_data, tmp_path, max_steps=4, checkpoint_every=2)
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    result = train(config)
    assert result["step"] == 4
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers  # put back after a run
    ckpt = Checkpointer(tmp_path / "run" / "checkpoints")
    assert ckpt.all_steps() == [2, 4]

    # Hook: the resumed state gets one NaN weight, as after an overflow; the next loss is NaN.
    original = Checkpointer.restore_latest

    def poisoned(self, target, warn, **kw):
        state, meta = original(self, target, warn, **kw)
        params = jax.tree.map(lambda x: x, state.params)
        leaf = params["fc"]["kernel"]
        leaf[...] = leaf[...].at[0, 0].set(np.nan)
        return state.replace(params=params), meta

    monkeypatch.setattr(Checkpointer, "restore_latest", poisoned)
    # No timed fetches: the sums are read first at step 6 (a checkpoint), after two NaN steps; the first is named.
    monkeypatch.setattr("flax_resnet.train.FETCH_SECONDS", 1e9)
    with pytest.raises(RunError, match=r"not finite \(nan/inf\) at step 5 .*last good checkpoint: step 4"):
        train(_config(tiny_data, tmp_path, max_steps=8, checkpoint_every=2))
    monkeypatch.undo()
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers  # also after an error
    assert Checkpointer(tmp_path / "run" / "checkpoints").all_steps() == [2, 4]
    _graphdef, state, _, _ = build_state(_config(tiny_data, tmp_path, num_classes=3))
    restored, _meta = Checkpointer(tmp_path / "run" / "checkpoints").restore(4, state)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored.params))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["step"] <= 4 for r in records)  # nothing was logged from the non-finite steps


def test_holdout_trains_on_the_rest_and_evaluates_on_the_held_out_images(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n_train = 3 * TINY_TRAIN_PER_CLASS
    result = train(_config(tiny_data, tmp_path, epochs=1, holdout=30))
    # 96 - 30 = 66 training images: 4 steps of 16 (the 96 images alone would give 6).
    assert n_train == 96 and result["step"] == 66 // 16
    out = capsys.readouterr().out
    assert "final: step 4, holdout (30 training images) accuracy" in out
    assert re.search(r"^epoch 1 step 4 .* \| holdout loss [\d.]+ acc [\d.]+% \|", out, re.M)
    held = data_lib.hold_out(data_lib.load_dataset(tiny_data, tmp_path / "cache"), 30)
    run = load_run(tmp_path / "run")
    logits = np.asarray(predict(run.model(), data_lib.normalize(held.test_images), jit=False))
    assert len(held.test_labels) == 30
    assert result["test_acc"] == np.mean(np.argmax(logits, -1) == held.test_labels)
    # The run's end also measures flip TTA: the mean of the logits of each image and its mirror (width flipped).
    mirrored = np.asarray(predict(run.model(), data_lib.normalize(held.test_images[:, :, ::-1]), jit=False))
    tta = (logits + mirrored) / 2
    assert result["test_acc_flip"] == np.mean(np.argmax(tta, -1) == held.test_labels)
    log_p = scipy.special.log_softmax(tta.astype(np.float64), -1)
    assert result["test_loss_flip"] == pytest.approx(-np.mean(log_p[np.arange(30), held.test_labels]), rel=1e-5)
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert (last["test_acc_flip"], last["test_loss_flip"]) == (result["test_acc_flip"], result["test_loss_flip"])
    # scripts/evaluate.py scores such a run on the same held-out images, not on the test set.
    spec = importlib.util.spec_from_file_location("evaluate_cli", REPO / "scripts" / "evaluate.py")
    evaluate_cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate_cli)
    assert evaluate_cli.main([str(tmp_path / "run"), "--out", str(tmp_path / "cm.png")]) == 0
    out = capsys.readouterr().out
    scores = f"loss: {result['test_loss']:.4f}  accuracy: {100 * result['test_acc']:.2f}%"
    assert f"holdout (30 training images) {scores}" in out
    # Exported, the weights file alone is scored on the same held-out images (its metadata record them).
    spec = importlib.util.spec_from_file_location("export_cli", REPO / "scripts" / "export.py")
    export_cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export_cli)
    assert export_cli.main([str(tmp_path / "run"), str(tmp_path / "run.safetensors")]) == 0
    capsys.readouterr()
    assert evaluate_cli.main([str(tmp_path / "run.safetensors"), "--data", str(tiny_data)]) == 0
    assert f"holdout (30 training images) {scores}" in capsys.readouterr().out
    # Other images under the same classes: their held-out 30 are not the run's, so evaluate.py and a resume
    # refuse them (scoring or training on them would mix trained and held-out images).
    other = make_image_folder(tmp_path / "other", seed=1)
    assert evaluate_cli.main([str(tmp_path / "run"), "--data", str(other), "--out", str(tmp_path / "cm2.png")]) == 1
    assert "its 30 held-out images are not the ones the run held out (this data holds other images)" in (
        capsys.readouterr().err
    )
    assert evaluate_cli.main([str(tmp_path / "run.safetensors"), "--data", str(other)]) == 1
    assert "held-out images are not the ones the run held out (this data holds other images)" in capsys.readouterr().err
    with pytest.raises(RunError, match=r"held out other training images than this run would \(this data holds"):
        train(_config(other, tmp_path, epochs=1, holdout=30))


def test_epoch_seconds_leave_out_checkpoints_saved_inside_the_epoch(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 6 steps per epoch, a checkpoint every 2 steps: steps 2 and 4 are saved inside the epoch, each made to take
    # 2.5 s more here; epoch_seconds (and so img/s) must time the steps alone (~0.4 s), wall_seconds everything.
    original = Checkpointer.save

    def slow(self, step, state, meta):
        time.sleep(2.5)
        return original(self, step, state, meta)

    monkeypatch.setattr(Checkpointer, "save", slow)
    train(_config(tiny_data, tmp_path, epochs=1, checkpoint_every=2, checkpoint_seconds=0))
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert record["wall_seconds"] > 5.0
    assert record["epoch_seconds"] < 2.5
    assert record["images_per_second"] == pytest.approx(5 * 16 / record["epoch_seconds"])  # the first step: compile


def test_cutout_key_is_neither_the_crop_nor_the_flip_key() -> None:
    # data.augment splits the step's key into the crop and flip keys; the cutout key must be a third one.
    for seed in range(4):
        rng = jax.random.fold_in(jax.random.key(seed), 7)
        used = {tuple(np.asarray(jax.random.key_data(k)).ravel()) for k in jax.random.split(rng)}
        cutout_key = tuple(np.asarray(jax.random.key_data(jax.random.fold_in(rng, CUTOUT_STREAM))).ravel())
        assert len(used) == 2 and cutout_key not in used


def test_cutout_covering_the_whole_image_makes_the_step_blind_to_pixels(tiny_data: Path, tmp_path: Path) -> None:
    # A 64-pixel square erases all of a 32x32 image wherever its center falls, so the step's input is all
    # zeros: two batches with the same labels and different pixels must give the same new state.
    config = _config(tiny_data, tmp_path, num_classes=3, cutout=64)
    graphdef, state, tx, _ = build_state(config)
    step = make_train_step(graphdef, tx, config)
    rng = np.random.default_rng(0)
    labels = jax.numpy.asarray(rng.integers(0, 3, 16), jax.numpy.int32)
    outs = []
    for seed in (1, 2):
        images = np.random.default_rng(seed).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
        new, metrics = step(jax.tree.map(jax.numpy.copy, state), {"image": images, "label": labels}, jax.random.key(0))
        outs.append((jax.tree.leaves(new), metrics["loss"]))
    for a, b in zip(outs[0][0], outs[1][0], strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(outs[0][1]) == float(outs[1][1])
    # Without cutout the same two batches give different losses (the check above can fail).
    plain = make_train_step(graphdef, tx, _config(tiny_data, tmp_path, num_classes=3))
    losses = [
        float(plain(jax.tree.map(jax.numpy.copy, state), {"image": np.random.default_rng(s).integers(
            0, 256, (16, 32, 32, 3), dtype=np.uint8), "label": labels}, jax.random.key(0))[1]["loss"])
        for s in (1, 2)
    ]
    assert losses[0] != losses[1]


def test_the_step_cuts_the_square_out_of_the_normalized_crop(tiny_data: Path, tmp_path: Path) -> None:
    """The step's input, rebuilt by hand in the documented order: crop and flip the pixels, normalize, then zero
    the square, so that it takes the dataset's mean colour (DeVries & Taylor). Cut from the raw pixels first,
    the square would be (0 - mean) / std, about -2, and the loss another (a whole-image square cannot show it:
    a batch of identical images leaves nothing to the imagenet stem's 1x1 train-mode BatchNorm at layer4)."""
    config = _config(tiny_data, tmp_path, num_classes=3, cutout=12)
    graphdef, state, tx, _ = build_state(config)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, 16).astype(np.int32)
    key = jax.random.key(3)
    x = data_lib.normalize(data_lib.augment(key, images))
    x = data_lib.cutout(jax.random.fold_in(key, CUTOUT_STREAM), x, config.cutout)
    assert 0 < float((x == 0).all(-1).mean()) < 0.5  # the squares are there, and all zeros
    logits, _ = apply_model(graphdef, state.params, state.batch_stats, x, train=True)
    want = float(cross_entropy(logits, labels, config.label_smoothing).mean())
    step = make_train_step(graphdef, tx, config)
    _, metrics = step(state, {"image": images, "label": labels}, key)
    assert float(metrics["loss"]) == pytest.approx(want, rel=1e-6)


def test_a_resume_from_an_older_checkpoint_rewrites_the_later_epochs_once(tiny_data: Path, tmp_path: Path) -> None:
    """The newest checkpoint lost (here deleted; in practice damaged and quarantined): the run resumes from
    epoch 1's and redoes epoch 2, whose metrics line must then appear once, not twice. Before the run, the
    trimming rule by hand: complete epochs up to the step kept; a partial record only where the run ends."""
    import shutil

    from flax_resnet.reporting import read_metrics, truncate_metrics

    path = tmp_path / "metrics.jsonl"
    records = [{"step": 6}, {"step": 9, "complete": False}, {"step": 12}, {"step": 15, "complete": False}]
    for max_step, finished, want in ((9, False, [6]), (9, True, [6, 9]), (12, False, [6, 12]), (0, False, [])):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        kept = truncate_metrics(path, max_step, finished)
        assert [r["step"] for r in kept] == want, (max_step, finished)
        assert [r["step"] for r in read_metrics(path)] == want

    config = _config(tiny_data, tmp_path, checkpoint_seconds=0)  # a checkpoint at each epoch end: steps 6, 12
    train(config)
    first = read_metrics(tmp_path / "run" / "metrics.jsonl")
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "12")
    assert train(config)["step"] == 12
    again = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [(r["epoch"], r["step"]) for r in again] == [(1, 6), (2, 12)]
    assert again[0] == first[0] and again[1]["test_acc"] == first[1]["test_acc"]  # epoch 2 redone, bitwise


def test_a_resume_refuses_every_learning_setting_and_only_those(tmp_path: Path) -> None:
    """Each setting that changes what a run learns, changed on its own, is refused by name; where files are,
    how often to save, and the start-only settings are not. Caught before: a resume with another --weight-decay."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(Config)}
    assert fields == {*LEARNING_SETTINGS, *OPERATIONAL_SETTINGS, *START_SETTINGS}, "classify the new Config field"
    base = make_config("default", arch="resnet18", variant="imagenet", batch_size=16, progress=False,
                       workdir=str(tmp_path))  # fmt: skip
    base.save(tmp_path / "config.json")
    for key, value in LEARNING_SETTINGS.items():
        assert getattr(base, key) != value, key
        with pytest.raises(RunError, match=rf"holds a run with other settings: {key} .*\(this run: "):
            check_workdir(tmp_path, dataclasses.replace(base, **{key: value}))
    for key, value in {**OPERATIONAL_SETTINGS, **START_SETTINGS}.items():
        assert getattr(base, key) != value, key
        assert check_workdir(tmp_path, dataclasses.replace(base, **{key: value})) == base, key


def test_signal_flag_first_stops_second_aborts_but_not_mid_save() -> None:
    import os
    import threading

    from flax_resnet.train import _stop_on_signals

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed from the main thread")
    before = signal.getsignal(signal.SIGINT)
    with _stop_on_signals() as flag:
        os.kill(os.getpid(), signal.SIGINT)  # the first: a request to stop with a checkpoint
        assert flag["signal"] == signal.SIGINT and not flag["abort"]
        flag["saving"] = True
        os.kill(os.getpid(), signal.SIGTERM)  # the second, during a save: remembered, the save goes on
        assert flag["abort"] and flag["signal"] == signal.SIGINT
        flag["saving"] = False
        with pytest.raises(KeyboardInterrupt):  # the second outside a save: at once
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_one_sigterm_to_a_group_is_one_request_and_a_later_one_stops_at_once_as_sigterm() -> None:
    # A job's SIGTERM reaches every process of its group, and scripts/reproduce.py passes it on as well: the
    # trainer got it twice within milliseconds and stopped at once, without a checkpoint. A second SIGTERM after
    # SAME_REQUEST_SECONDS stops at once, as 143 (it raised KeyboardInterrupt, which exited as signal 2).
    import os
    import threading

    from flax_resnet.errors import SAME_REQUEST_SECONDS, Terminated, exit_signal, terminate_as_interrupt
    from flax_resnet.train import _stop_on_signals

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed from the main thread")
    with _stop_on_signals() as flag:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # the same request
        assert flag["signal"] == signal.SIGTERM and flag["abort"] is None
        flag["at"] -= SAME_REQUEST_SECONDS
        flag["saving"] = True
        os.kill(os.getpid(), signal.SIGTERM)  # a second request, during a save: remembered as SIGTERM
        assert flag["abort"] == signal.SIGTERM
        flag["saving"] = False
        with pytest.raises(Terminated) as stopped:
            os.kill(os.getpid(), signal.SIGTERM)
        assert exit_signal(stopped.value) == signal.SIGTERM
    # The scripts' handler outside the loop: once per request too, and put back afterwards.
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated), terminate_as_interrupt():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except Terminated:
            os.kill(os.getpid(), signal.SIGTERM)  # the same request, while the first unwinds: no second raise
            raise
    assert signal.getsignal(signal.SIGTERM) is before


def _record_saves_and_plots(monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], list[int]]:
    """Hooks: the steps of every checkpoint save and the record count of every curves.png redraw."""
    from flax_resnet import reporting

    saves: list[int] = []
    plots: list[int] = []
    save, plot = Checkpointer.save, reporting.plot_curves

    def recording_save(self, step, state, meta):
        saves.append(step)
        return save(self, step, state, meta)

    def recording_plot(records, path, evaluated="test"):
        plots.append(len(records))
        return plot(records, path, evaluated)

    monkeypatch.setattr(Checkpointer, "save", recording_save)
    monkeypatch.setattr(reporting, "plot_curves", recording_plot)
    return saves, plots


def test_throttled_checkpoints_and_plots_still_cover_a_stop_and_the_end(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import threading

    from flax_resnet import reporting
    from flax_resnet import train as train_mod

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed from the main thread")
    saves, plots = _record_saves_and_plots(monkeypatch)
    monkeypatch.setattr(reporting, "PLOT_SECONDS", 1e6)
    config = _config(tiny_data, tmp_path, epochs=3, checkpoint_seconds=1e6)  # 6 steps per epoch
    evaluate_calls = []

    def evaluate_then_signal(*args, **kw):  # SIGTERM during epoch 2's evaluation, after its metrics were due
        evaluate_calls.append(1)
        if len(evaluate_calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(*args, **kw)

    monkeypatch.setattr(train_mod, "evaluate", evaluate_then_signal)
    result = train(config)
    # Epoch ends inside the interval are not saved and not plotted, but the stop saves and plots what it has.
    assert (result["stopped"], result["step"]) == ("signal 15", 12)
    assert saves == [12] and plots == [2]
    assert Checkpointer(tmp_path / "run" / "checkpoints").all_steps() == [12]
    assert (tmp_path / "run" / "predictions.png").stat().st_size > 0

    monkeypatch.setattr(train_mod, "evaluate", evaluate)
    saves.clear(), plots.clear()
    result = train(config)  # resumes at step 12; the run's last epoch is always saved and plotted
    assert (result["stopped"], result["step"]) == ("done", 18)
    assert saves == [18] and plots == [3]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [6, 12, 18]


def test_checkpoint_every_is_kept_inside_the_throttle_interval(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flax_resnet import reporting
    from flax_resnet import train as train_mod

    saves, plots = _record_saves_and_plots(monkeypatch)
    monkeypatch.setattr(reporting, "PLOT_SECONDS", 0.0)
    loop_steps = []
    make_loop_step = train_mod.make_loop_step

    def recording_make_loop_step(*args):
        loop_steps.append(make_loop_step(*args))
        return loop_steps[-1]

    monkeypatch.setattr(train_mod, "make_loop_step", recording_make_loop_step)
    result = train(_config(tiny_data, tmp_path, epochs=3, checkpoint_every=4, checkpoint_seconds=1e6))
    assert result["step"] == 18
    assert saves == [4, 8, 12, 16, 18]  # every 4th step, epoch end 12 among them, and the last one
    assert plots == [1, 2, 3]  # PLOT_SECONDS 0: every epoch
    # The state is packed once, unpacked for each save, and carried across epoch boundaries; the packed arrays
    # each step returns must match the compiled step's shapes and shardings, or later steps would compile it
    # again.
    assert len(loop_steps) == 1 and loop_steps[0]._cache_size() == 1


def test_the_loop_feeds_each_epochs_batch_order_cropped_and_flipped(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the jitted step trains on: epoch e's batches in `train_batch_indices(seed, e)` order (a new order
    each epoch), each image cropped at a random one of the 9x9 offsets of its zero-padded copy and mirrored
    about half the time (recovered by brute force from the images the step's augmentation returned)."""
    from augment_reference import recover_windows

    seen: list[tuple[np.ndarray, np.ndarray]] = []
    real_augment = data_lib.augment

    def spy(rng: jax.Array, images: jax.Array, *args, **kwargs) -> jax.Array:
        out = real_augment(rng, images, *args, **kwargs)
        jax.debug.callback(lambda i, o: seen.append((np.asarray(i), np.asarray(o))), images, out, ordered=True)
        return out

    monkeypatch.setattr(data_lib, "augment", spy)
    config = _config(tiny_data, tmp_path, epochs=2)
    train(config)
    dataset = data_lib.load_dataset(tiny_data, tmp_path / "cache")
    position = {image.tobytes(): i for i, image in enumerate(dataset.train_images)}
    assert len(position) == len(dataset.train_images) == 96 and len(seen) == 2 * 6  # 6 steps of 16 per epoch
    for k, (images, _) in enumerate(seen):
        epoch, row = divmod(k, 6)
        want = data_lib.train_batch_indices(config.seed, epoch, 96, 16)[row]
        assert [position[image.tobytes()] for image in images] == want.tolist(), (epoch, row)
    assert not np.array_equal(*(data_lib.train_batch_indices(config.seed, e, 96, 16) for e in (0, 1)))
    dy, dx, flipped = recover_windows(np.concatenate([i for i, _ in seen]), np.concatenate([o for _, o in seen]), 4)
    assert set(dy) == set(range(9)) == set(dx)
    assert 0.3 < flipped.mean() < 0.7  # 192 fair coins: 0.5 +- 0.036
    # Fresh draws each step: a key that repeated every epoch gave each batch slot the same window and flip.
    # Fresh, a slot repeats its (dy, dx, flip) with probability 1/162: ~0.6 of the 96 slots.
    repeats = (dy[:96] == dy[96:]) & (dx[:96] == dx[96:]) & (flipped[:96] == flipped[96:])
    assert repeats.sum() <= 6, repeats.sum()


def test_each_epoch_record_is_its_steps_replayed_by_hand(tiny_data: Path, tmp_path: Path) -> None:
    """metrics.jsonl's train_loss and train_acc are the means of the plain step's loss and accuracy over the epoch's
    steps, replayed here on the same batches and keys; its lr is the epoch's last step's, by torch_ref's schedule.
    (A loss divided by the images instead of the steps, or the next step's lr, passed every other test.)"""
    from torch_ref.train import lr_at

    config = _config(tiny_data, tmp_path, num_classes=3)  # 96 training images, batch 16: 6 steps an epoch
    train(config)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    dataset = data_lib.load_dataset(tiny_data, tmp_path / "cache")
    graphdef, state, tx, _ = build_state(config, steps_per_epoch=6)
    step = make_train_step(graphdef, tx, config)
    losses, accuracies = [], []
    for k in range(12):
        idx = data_lib.train_batch_indices(config.seed, k // 6, 96, 16)[k % 6]
        batch = {"image": dataset.train_images[idx], "label": dataset.train_labels[idx]}
        state, metrics = step(state, batch, jax.random.fold_in(jax.random.key(config.seed), k))
        losses.append(float(metrics["loss"]))
        accuracies.append(float(metrics["accuracy"]))
    assert [r["step"] for r in records] == [6, 12]
    for epoch, record in enumerate(records):
        assert record["train_loss"] == pytest.approx(np.mean(losses[6 * epoch : 6 * epoch + 6]), rel=1e-5)
        assert record["train_acc"] == pytest.approx(np.mean(accuracies[6 * epoch : 6 * epoch + 6]), abs=1e-6)
        assert record["lr"] == pytest.approx(lr_at(config, 6, record["step"] - 1), rel=1e-6)
    assert records[-1]["lr"] > 0  # the last step's lr, not the 0 the schedule reaches after it


def test_rerunning_a_run_that_max_steps_ended_keeps_its_partial_epoch_record(tiny_data: Path, tmp_path: Path) -> None:
    # --max-steps 3 ends the run inside epoch 1 (6 steps an epoch): its record of steps 1-3 is the run's last one,
    # and the same command again, which has nothing to train, must not drop it (the results table reads it).
    config = _config(tiny_data, tmp_path, max_steps=3)
    train(config)
    path = tmp_path / "run" / "metrics.jsonl"
    before = path.read_text()
    assert [(r["step"], r["complete"]) for r in map(json.loads, before.splitlines())] == [(3, False)]
    train(config)
    assert path.read_text() == before


def test_apply_model_is_torchvisions_forward_and_gradient_as_a_pure_function() -> None:
    """`apply_model` is what a functional user differentiates: eval logits, the running statistics a train-mode
    call leaves, and jax.grad of the loss through it all match torchvision's resnet18 holding the same weights."""
    import torch
    import torchvision
    from flax import nnx

    from flax_resnet import create_model, load_torch_state_dict, normalize

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=10)
    model = create_model("resnet18", "imagenet")
    load_torch_state_dict(model, reference.state_dict())
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    rng = np.random.default_rng(0)
    x = np.asarray(normalize(rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)))
    labels = np.array([0, 3, 9, 1, 1, 7])
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

    logits, same_stats = apply_model(graphdef, params, batch_stats, x, train=False)
    with torch.no_grad():
        np.testing.assert_allclose(np.asarray(logits), reference.eval()(tx).numpy(), rtol=1e-4, atol=1e-4)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), same_stats, batch_stats))

    def loss_fn(p):
        out, stats = apply_model(graphdef, p, batch_stats, x, train=True)
        return cross_entropy(out, labels).mean(), stats

    (loss, stats), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    reference.train()
    torch_loss = torch.nn.functional.cross_entropy(reference(tx), torch.from_numpy(labels))
    torch_loss.backward()
    assert float(loss) == pytest.approx(torch_loss.item(), rel=1e-5)
    ours = {"fc.weight": np.asarray(grads["fc"]["kernel"][...]).T, "conv1.weight": np.asarray(
        grads["conv1"]["kernel"][...]).transpose(3, 2, 0, 1), "layer4.1.bn2.weight": np.asarray(
        grads["layer4"][1]["bn2"]["scale"][...])}
    named = dict(reference.named_parameters())
    for key, grad in ours.items():
        want = named[key].grad.numpy()
        assert np.abs(grad - want).max() <= 1e-4 * max(1.0, np.abs(want).max()), key
    running = dict(reference.named_buffers())
    np.testing.assert_allclose(np.asarray(stats["bn1"]["mean"][...]), running["bn1.running_mean"].numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(stats["layer4"][1]["bn2"]["var"][...]),
                               running["layer4.1.bn2.running_var"].numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("recipe", "momentum", "nesterov", "weight_decay", "smoothing"),
                         [(r, m, n, wd, eps) for r, _, m, n, wd, eps in RECIPE_SGD])  # fmt: skip
def test_the_recipes_train_step_is_torch_sgd_on_torchvision(
    recipe: str, momentum: float, nesterov: bool, weight_decay: float, smoothing: float
) -> None:
    """The whole train step as the trainer builds it from a recipe (`build_state`, `make_train_step`), two
    steps on one batch without augmentation, against torchvision's resnet18 with the same weights under
    torch.optim.SGD configured by hand: the step's loss and accuracy metrics, then each weight's update. A step
    that ignored the recipe's Nesterov flag, or counted accuracy on the wrong logits, passed every other test.

    In float64 on both sides: in float32 one ReLU input of this batch lies 2.6e-6 from 0 after the first step
    (layer2.1, measured in float64), inside float32's rounding of it, so which side it falls on depends on the
    order of the sums (torch, and JAX's BatchNorm variants, split both ways; XLA's order differs between CPUs),
    and one flipped mask moved layer2.1.conv2's gradient by 3% (0.2% of conv1's update after two steps on a
    Xeon, 3e-5 on an EPYC). Float64 leaves the discrete decisions to the data. Peak lr 0.01: at the recipes'
    own rates a batch of 8 moves conv1 by several times its size in one step. Nesterov or not changes the
    first update by 90%. Measured (2026-12-05): `article` 3e-14 of each update, 2e-14 in loss; `default` 1.2e-6
    and 3e-8, the float32 arithmetic of optax's one-cycle schedule inside the step (its first lr is 1.7e-6
    below lr/25, which torch gets exactly), hence the bounds 1e-5 and 1e-6."""
    import copy

    import torch
    import torchvision

    from flax_resnet import to_torch_state_dict
    from parity_tests.harness import float64_jax
    from torch_ref.train import lr_at

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=10).double()
    keys = ("conv1.weight", "layer2.0.downsample.0.weight", "layer4.1.conv2.weight", "fc.weight", "fc.bias")
    start = {key: reference.state_dict()[key].numpy().copy() for key in keys}
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    # the images as the step normalizes them (float32, the same bits in any program), widened by the first conv
    x = torch.from_numpy(np.asarray(data_lib.normalize(images)).transpose(0, 3, 1, 2).copy()).double()
    with torch.no_grad():  # labels: the train-mode argmax for 5 images, another class for 3: accuracy 5/8
        predicted = copy.deepcopy(reference).train()(x).argmax(1).numpy()
    labels = np.where(np.arange(8) < 5, predicted, (predicted + 1) % 10)

    with float64_jax():
        config = make_config(recipe, arch="resnet18", variant="imagenet", batch_size=8, lr=0.01, dtype="float64")
        graphdef, state, tx, _ = build_state(config, steps_per_epoch=1, weights=reference.state_dict())
        step = make_train_step(graphdef, tx, config, augment=False)
        batch = {"image": images, "label": labels.astype(np.int32)}
        reference.train()
        opt = torch.optim.SGD(reference.parameters(), lr=0.0, momentum=momentum, nesterov=nesterov,
                              weight_decay=weight_decay)  # fmt: skip
        for i in range(2):
            state, metrics = step(state, batch, jax.random.key(i))
            for group in opt.param_groups:
                group["lr"] = lr_at(config, 1, i)
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(reference(x), torch.from_numpy(labels),
                                                     label_smoothing=smoothing)  # fmt: skip
            loss.backward()
            opt.step()
            assert float(metrics["loss"]) == pytest.approx(loss.item(), rel=1e-6), i
            if i == 0:
                assert float(metrics["accuracy"]) == 5 / 8
        ours = to_torch_state_dict(merge_model(graphdef, state))
    for key in keys:
        want = reference.state_dict()[key].numpy() - start[key]
        got = np.asarray(ours[key]) - start[key]
        assert got.dtype == np.float64
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), key


@pytest.mark.parametrize("bound", [True, False], ids=["bounded", "unbounded"])
def test_the_host_queues_at_most_max_in_flight_steps(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bound: bool
) -> None:
    """Unbounded, the host queued a whole epoch within a second (dispatch is far faster than a CPU step), and a
    Ctrl-C or NaN was acted on only after the device ran all of it. Before each step's dispatch, count the
    dispatched steps whose outputs are not ready yet; unbounded (the control) they pile up, so the count sees it."""
    import flax_resnet.train as train_module

    limit = train_module.MAX_IN_FLIGHT
    if not bound:
        monkeypatch.setattr(train_module, "MAX_IN_FLIGHT", 10**6)
    make = train_module.make_loop_step
    outputs: list = []
    queued: list[int] = []

    def counting_loop_step(*args, **kwargs):
        step = make(*args, **kwargs)

        def run(*a):
            queued.append(sum(not leaf.is_ready() for leaf in outputs))
            out = step(*a)
            outputs.append(out[1]["loss"])
            return out

        return run

    monkeypatch.setattr(train_module, "make_loop_step", counting_loop_step)
    train(_config(tiny_data, tmp_path, batch_size=4, epochs=2))
    assert len(queued) == 2 * 96 // 4
    if bound:
        assert max(queued) <= limit
    else:  # measured: 23, the epoch's whole remainder
        assert max(queued) > 2 * limit


def test_the_last_line_names_a_partial_epoch_as_such() -> None:
    """A --max-steps run that stops inside an epoch called that epoch's accuracy '(final epoch, not best-of)'."""
    from flax_resnet.reporting import format_final

    record = {"step": 57, "test_acc": 0.155, "complete": False}
    assert format_final(record) == "final: step 57, test accuracy 15.50% (after a partial epoch, at --max-steps)"
    whole = {**record, "complete": True, "test_acc_flip": 0.16}
    assert format_final(whole, holdout=500) == (
        "final: step 57, holdout (500 training images) accuracy 15.50% (final epoch, not best-of); with flip TTA 16.00%"
    )
