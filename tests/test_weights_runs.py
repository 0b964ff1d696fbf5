"""The companion CLIs on runs held as weights files: a torch_ref run's workdir (its model.safetensors) and a
file from scripts/export.py. The references are independent of the loader: the torch trainer's own final
evaluation, and the same CLIs on the JAX checkpoint the file was exported from."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from conftest import REPO, TINY_CLASSES, TINY_TEST_PER_CLASS, run_cli
from flax_resnet import convert, reporting
from flax_resnet.config import make_config
from flax_resnet.train import load_run
from torch_ref.train import TorchOptions, save_state_dict
from torch_ref.train import train as torch_train


def _main(name: str):
    spec = importlib.util.spec_from_file_location(f"weights_runs_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _scores(text: str) -> dict[str, float]:
    plain = re.search(r"loss: ([\d.]+)  accuracy: ([\d.]+)%", text)
    flip = re.search(r"with flip TTA:  loss: ([\d.]+)  accuracy: ([\d.]+)%", text)
    return {"loss": float(plain[1]), "acc": float(plain[2]), "loss_flip": float(flip[1]), "acc_flip": float(flip[2])}


@pytest.mark.parametrize("holdout", [0, 30])
def test_a_torch_run_scores_in_jax_as_it_scored_itself(
    tiny_data: Path, tmp_path: Path, holdout: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """`evaluate.py <torch workdir>`: the JAX model built from the run's config.json and model.safetensors
    scores the run's own final evaluation (test images, or its held-out ones), with flip TTA too."""
    workdir = tmp_path / "torch_run"
    config = make_config(
        arch="resnet18", variant="imagenet", batch_size=16, epochs=1, lr=0.05, progress=False, holdout=holdout,
        data=str(tiny_data), data_dir=str(tmp_path / "cache"), workdir=str(workdir),
    )  # fmt: skip
    last = torch_train(config, TorchOptions())[-1]
    capsys.readouterr()
    from safetensors import safe_open

    with safe_open(str(workdir / "model.safetensors"), "np") as f:
        meta = f.metadata()
    assert (meta["arch"], meta["variant"], json.loads(meta["class_names"])) == ("resnet18", "imagenet", [*TINY_CLASSES])
    assert int(meta["step"]) == last["step"] and ("holdout_digest" in meta) == bool(holdout)

    assert _main("evaluate")([str(workdir), "--flip-tta"]) == 0
    out = capsys.readouterr().out
    scored = _scores(out)
    assert f"{'holdout (' if holdout else 'test images: '}{holdout or 3 * 7}" in out
    assert scored["acc"] == pytest.approx(100 * last["test_acc"], abs=0.006)
    assert scored["acc_flip"] == pytest.approx(100 * last["test_acc_flip"], abs=0.006)
    # Printed to 4 decimals; two frameworks' float32 logits, within 1e-5 relative (as tests/test_cli.py).
    assert scored["loss"] == pytest.approx(last["test_loss"], rel=1e-5, abs=6e-5)
    assert scored["loss_flip"] == pytest.approx(last["test_loss_flip"], rel=1e-5, abs=6e-5)
    assert (workdir / "confusion_matrix.png").stat().st_size > 0

    # The file alone (its metadata) is scored the same way: on the held-out images of a --holdout run.
    alone = tmp_path / "alone.safetensors"
    alone.write_bytes((workdir / "model.safetensors").read_bytes())
    assert _main("evaluate")([str(alone), "--flip-tta", "--data", str(tiny_data)]) == 0
    assert capsys.readouterr().out.splitlines()[1:-1] == out.splitlines()[1:-1]  # all but the paths


def test_a_torch_run_saved_without_metadata_loads_from_its_config_and_metrics(
    tiny_data: Path, tmp_path: Path
) -> None:
    """model.safetensors files written before they carried metadata: the step from metrics.jsonl, classes unnamed."""
    workdir = tmp_path / "old"
    workdir.mkdir()
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    save_state_dict(model, workdir / "model.safetensors")  # no metadata
    config = make_config(arch="resnet18", variant="imagenet", num_classes=3, dtype="bfloat16", workdir=str(workdir))
    config.save(workdir / "config.json")
    (workdir / "torch_options.json").write_text("{}")
    (workdir / "metrics.jsonl").write_text('{"epoch": 1, "step": 6}\n{"epoch": 2, "step": 12}\n')
    run = load_run(workdir)
    assert (run.step, run.class_names, run.config.dtype, run.path) == (
        12, ("0", "1", "2"), "float32", workdir / "model.safetensors"
    )
    ours = convert.to_torch_state_dict(run.model())
    for key, value in model.state_dict().items():
        assert np.array_equal(ours[key], value.numpy()), key


def test_an_exported_file_evaluates_and_predicts_as_its_checkpoint(
    trained_run: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exported = tmp_path / "r18.safetensors"
    run_cli("export.py", str(trained_run), str(exported), check=True)
    evaluate, predict = _main("evaluate"), _main("predict")
    outputs = []
    for source in (trained_run, exported):
        assert evaluate([str(source), "--data", str(tiny_data), "--flip-tta", "--out", str(tmp_path / "cm.png")]) == 0
        outputs.append(capsys.readouterr().out.splitlines())
    assert outputs[0][0].startswith(f"checkpoint: {trained_run / 'checkpoints/12'} (step 12, resnet18/imagenet)")
    assert outputs[1][0] == f"checkpoint: {exported} (step 12, resnet18/imagenet)"
    assert outputs[0][1:] == outputs[1][1:]  # the same numbers, the same per-class lines
    assert evaluate([str(exported), "--data", str(tiny_data)]) == 0
    assert (tmp_path / "r18.confusion_matrix.png").stat().st_size > 0  # beside the file, named after it
    capsys.readouterr()
    # A torch run's model.safetensors given itself knows no data source either (its config.json is not read).
    torch_file = tmp_path / "torch_run" / "model.safetensors"
    torch_file.parent.mkdir()
    torch_file.write_bytes(exported.read_bytes())
    (torch_file.parent / "torch_options.json").write_text("{}")
    assert evaluate([str(torch_file)]) == 1
    assert _one_error_line(capsys).startswith(f"error: {torch_file} records no data source, and its 3 classes")
    # Without --data: a file records no data source, and these classes are not CIFAR-10's (it tried TFDS's
    # CIFAR-10, 16 s of TensorFlow, and said that was not prepared).
    assert evaluate([str(exported)]) == 1
    assert _one_error_line(capsys) == (f"error: {exported} records no data source, and its 3 classes (cat, dog, "
                                       "frog) are not CIFAR-10's: pass --data with their images")  # fmt: skip

    images = [str(tiny_data / "test" / name / "001.png") for name in TINY_CLASSES]
    printed = []
    for source in (trained_run, exported):
        assert predict([str(source), *images]) == 0
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1] and printed[0].count("\n") == 3


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_an_exported_file_of_unnamed_classes_is_scored_on_cifar10(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A checkpoint saved before class names were recorded exports classes "0".."9": no refusal, it goes on to
    # tfds's CIFAR-10, as before (here a stand-in loader says where it was asked to read).
    from flax_resnet import data as data_lib

    def where(source: str, data_dir: str | None = None) -> None:
        raise data_lib.DataError(f"asked for {source}")

    monkeypatch.setattr(data_lib, "load_dataset", where)
    path = tmp_path / "old.safetensors"
    model = torchvision.models.resnet18(num_classes=10)
    names = [str(i) for i in range(10)]
    convert.save_safetensors(model.state_dict(), path, convert.weights_metadata("resnet18", "imagenet", names, 1))
    assert _main("evaluate")([str(path)]) == 1
    assert _one_error_line(capsys).startswith("error: asked for tfds (the data the run trained on, by its config, ")


def test_per_class_rows_name_their_own_class(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model that answers "cat" for every image (head weights 0, bias on class 0): by hand, cat 7/7, dog and
    frog 0/7 each. The tiny trained run's rows for cat and frog are alike, so rows printed under each
    other's names passed there."""
    model = torchvision.models.resnet18(num_classes=3)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([3.0, 0.0, 0.0]))
    path = tmp_path / "always_cat.safetensors"
    convert.save_safetensors(
        model.state_dict(), path, convert.weights_metadata("resnet18", "imagenet", TINY_CLASSES, 1)
    )
    cache, png = tmp_path / "cache", tmp_path / "cm.png"
    assert _main("evaluate")([str(path), "--data", str(tiny_data), "--data-dir", str(cache), "--out", str(png)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    n = TINY_TEST_PER_CLASS
    assert rows == [["cat", "100.00%", f"({n}/{n})"], ["dog", "0.00%", f"(0/{n})"], ["frog", "0.00%", f"(0/{n})"]]
    # A folder of test/ alone is scored the same (it needed a train/ of every class beside it, decoded for nothing),
    # also without a class's folder: its labels are the run's, by name (its own would number dog 0, frog 1).
    alone = tmp_path / "test_alone"
    shutil.copytree(tiny_data / "test", alone / "test")
    evaluate = _main("evaluate")
    assert evaluate([str(path), "--data", str(alone), "--data-dir", str(cache)]) == 0
    assert [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("  ")] == rows
    shutil.rmtree(alone / "test" / "cat")
    assert evaluate([str(path), "--data", str(alone), "--data-dir", str(cache), "--out", str(png)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert rows == [["cat", "--", "(0/0)"], ["dog", "0.00%", f"(0/{n})"], ["frog", "0.00%", f"(0/{n})"]]
    # train/ alone has no test images for a run trained without --holdout; test/ alone no held-out ones.
    shutil.copytree(tiny_data / "train", tmp_path / "train_alone" / "train")
    assert evaluate([str(path), "--data", str(tmp_path / "train_alone"), "--data-dir", str(cache)]) == 1
    assert _one_error_line(capsys).endswith("train_alone holds train/ alone: a run trained without --holdout is "
                                            "scored on test images (test/)")  # fmt: skip
    meta = convert.weights_metadata("resnet18", "imagenet", TINY_CLASSES, 1, holdout=12, holdout_digest="0" * 32)
    convert.save_safetensors(model.state_dict(), tmp_path / "held.safetensors", meta)
    assert evaluate([str(tmp_path / "held.safetensors"), "--data", str(alone), "--data-dir", str(cache)]) == 1
    assert _one_error_line(capsys).endswith("test_alone holds test/ alone: this --holdout run is scored on its 12 "
                                            "held-out images of the training data (train/)")  # fmt: skip

    # A class named in CJK: its characters take two terminal columns each, so the rows are aligned by columns,
    # not by len() (the accuracies stood out of line); and the figures' font lacks them: that was two lines of
    # matplotlib warning per character, at every redraw.
    cjk = tmp_path / "cjk"
    shutil.copytree(tiny_data, cjk)
    for split in ("train", "test"):
        (cjk / split / "dog").rename(cjk / split / "日本犬")
    names = ("cat", "frog", "日本犬")
    convert.save_safetensors(model.state_dict(), path, convert.weights_metadata("resnet18", "imagenet", names, 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _main("evaluate")([str(path), "--data", str(cjk), "--data-dir", str(cache), "--out", str(png)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert [row.split()[0] for row in rows] == list(names)
    columns = {row.index("%") + sum(0x3000 <= ord(ch) <= 0x9FFF for ch in row) for row in rows}  # CJK: 2 columns
    assert len(columns) == 1, rows
    with warnings.catch_warnings(record=True) as raw:  # the same figure drawn without the filter
        warnings.simplefilter("always")
        reporting.plot_confusion.__wrapped__(np.eye(3, dtype=np.int64), names, tmp_path / "raw.png")
    if not any("missing from" in str(w.message) for w in raw):
        pytest.skip("this machine's font has these glyphs: no warning to quiet")
    assert [str(w.message) for w in caught if "missing from" in str(w.message)] == []


def test_weights_that_do_not_name_or_fit_their_model_are_one_line(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evaluate = _main("evaluate")
    bare = tmp_path / "bare.safetensors"
    convert.save_safetensors(convert.to_torch_state_dict(load_run(trained_run).model()), bare)
    assert evaluate([str(bare)]) == 1
    assert _one_error_line(capsys) == (
        f"error: {bare}: its metadata do not name the model as the files of scripts/export.py and torch_ref runs "
        "do (save_safetensors(..., weights_metadata(arch, variant, class_names, step)) writes them); or load it "
        "into a model you create with flax_resnet.load_torch_state_dict"
    )

    wrong = tmp_path / "wrong.safetensors"
    sd = convert.to_torch_state_dict(load_run(trained_run).model())
    convert.save_safetensors(sd, wrong, convert.weights_metadata("resnet34", "imagenet", TINY_CLASSES, 12))
    assert evaluate([str(wrong)]) == 1
    line = _one_error_line(capsys)
    # resnet34 has 8 more basic blocks, each 10 tensors besides its BatchNorms' batch counts (taken as 0)
    assert line.startswith(f"error: {wrong}: state dict does not match resnet34/imagenet: 80 missing: layer1.2.")
    assert line.endswith(", (76 more)")

    pt = tmp_path / "tv.pt"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), pt)
    assert evaluate([str(pt)]) == 1
    assert _one_error_line(capsys) == (
        f"error: {pt}: not a run directory, checkpoint or .safetensors weights file (a .pt/.pth state dict does "
        "not name its model: load it into one you create with flax_resnet.load_torch_state_dict)"
    )

    # Bytes damaged on disk (safetensors has no checksum) read as NaN: evaluate scored "loss: nan" and export
    # copied them, both with exit 0.
    damaged = tmp_path / "damaged.safetensors"
    sd["layer4.0.conv2.weight"][0, 0, 0, 0] = np.nan
    convert.save_safetensors(sd, damaged, convert.weights_metadata("resnet18", "imagenet", TINY_CLASSES, 12))
    assert evaluate([str(damaged)]) == 1
    assert _one_error_line(capsys) == f"error: {damaged}: non-finite values (nan/inf) in layer4.0.conv2.weight"
    assert _main("export")([str(damaged), str(tmp_path / "copy.safetensors")]) == 1
    assert _one_error_line(capsys) == f"error: {damaged}: non-finite values (nan/inf) in layer4.0.conv2.weight"
    assert not (tmp_path / "copy.safetensors").exists()

    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh/torch_options.json").write_text("{}")
    assert evaluate([str(tmp_path / "fresh")]) == 1
    assert _one_error_line(capsys) == (
        f"error: {tmp_path / 'fresh'}: a torch_ref run with no model.safetensors yet (written at each epoch's end)"
    )


def test_metadata_of_a_holdout_run_without_a_digest_records_none() -> None:
    """A --holdout checkpoint from before digests: its export says so by leaving the digest out (evaluation then
    refuses it as predating them), never by a digest that is the text 'None'."""
    meta = convert.weights_metadata("resnet18", "cifar", TINY_CLASSES, 5, holdout=12)
    assert meta["holdout"] == "12" and "holdout_digest" not in meta
    assert "holdout" not in convert.weights_metadata("resnet18", "cifar", TINY_CLASSES, 5, holdout_digest="ab")


def test_another_kind_of_data_source_does_not_take_the_runs_data_dir() -> None:
    # --data-dir is TFDS's data folder for tfds and the decoded-dataset cache for a path: evaluating a tfds run
    # on an image folder wrote its .npz into the TFDS folder, and a path run on tfds looked for TFDS in its cache.
    spec = importlib.util.spec_from_file_location("weights_runs_evaluate_dir", REPO / "scripts" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tfds_run = make_config("default", data="tfds", data_dir="/data/tfds")
    path_run = make_config("default", data="/d/cifar.tar.gz", data_dir="/d/cache")
    assert module.data_dir("tfds", None, tfds_run) == "/data/tfds"
    assert module.data_dir("/other/copy.tar", None, path_run) == "/d/cache"  # another copy: the same cache
    assert module.data_dir("/d/folder", None, tfds_run) is None  # the default cache, not TFDS's folder
    assert module.data_dir("tfds", None, path_run) is None  # TFDS's default (TFDS_DATA_DIR), not the cache
    assert module.data_dir("tfds", "/mine", path_run) == "/mine"  # given: always that
