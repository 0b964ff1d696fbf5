"""User mistakes in paths and flags of the companion CLIs: one clear line and a non-zero exit, not a traceback.

Each script's `main(argv)` is called in-process (no subprocess start, no re-import of JAX per case).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tarfile
import time
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from conftest import REPO
from flax_resnet import benchmark as benchmark_lib
from flax_resnet import data as data_lib
from flax_resnet import reporting

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" time="12.5">
<testcase classname="parity_tests.test_weights" name="test_roundtrip_bitwise[resnet18-cifar]" time="1"/>
</testsuite></testsuites>
"""


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"cli_errors_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The single non-blank line on stderr (no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _usage_error(capsys: pytest.CaptureFixture[str], main, argv: list[str]) -> str:
    """Run `main(argv)`, expect a usage error: exit 2 and one line, `prog: error: ... (see --help)`, returned
    without its "(see --help)" (argparse's usage block before it buried it: 17 lines for train.py)."""
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ": error: " in err and err.endswith(" (see --help)\n"), err
    return err.strip().removesuffix(" (see --help)")


# ------------------------------------------------------------------------------------------ parity_report


@pytest.mark.parametrize("where", ["directory", "under_a_file"])
def test_parity_report_unusable_out_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                where: str) -> None:
    junit = tmp_path / "parity.xml"
    junit.write_text(JUNIT)
    (tmp_path / "outdir").mkdir()
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "outdir" if where == "directory" else tmp_path / "afile" / "p.md"
    assert _script("parity_report").main([str(junit), "--out", str(out), "--machine", "m"]) == 1
    line = _one_line(capsys)
    assert line.startswith(f"error: {out}: cannot write the report (")
    if where == "under_a_file":
        assert f"{tmp_path / 'afile'} is a file, not a directory" in line
    assert (tmp_path / "afile").read_text() == "x"


def test_parity_report_names_a_file_without_parity_tests_once(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    junit = tmp_path / "other.xml"
    junit.write_text('<testsuites><testsuite time="1"><testcase name="test_x"/></testsuite></testsuites>')
    assert _script("parity_report").main([str(junit), "--out", str(tmp_path / "p.md")]) == 1
    assert _one_line(capsys) == f"error: {junit}: no parity test results in this JUnit file"
    assert _script("parity_report").main([str(tmp_path / "missing.xml"), "--out", str(tmp_path / "p.md")]) == 1
    assert _one_line(capsys) == f"error: {tmp_path / 'missing.xml'}: No such file or directory"


# ------------------------------------------------------------------------------------------ benchmark


@pytest.fixture
def no_measuring(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the benchmark starts measuring: the checks under test come before that."""

    def measure(*args, **kwargs):
        raise AssertionError("measured before refusing the output path")

    monkeypatch.setattr(benchmark_lib, "run_benchmark", measure)


@pytest.mark.parametrize("where", ["file", "under_a_file"])
def test_benchmark_profile_into_a_file_is_refused_before_measuring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_measuring: None, where: str
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    profile = afile if where == "file" else afile / "sub" / "prof"
    line = _usage_error(capsys, _script("benchmark").main, ["--frameworks", "torch", "--profile", str(profile)])
    assert f"--profile {profile}: " in line and "is a file, not a directory" in line
    assert afile.read_text() == "x"


def test_benchmark_json_into_a_directory_is_refused_before_measuring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_measuring: None
) -> None:
    line = _usage_error(capsys, _script("benchmark").main, ["--frameworks", "jax", "--json", str(tmp_path)])
    assert f"--json {tmp_path}: is a directory" in line


@pytest.mark.parametrize(
    "argv",
    [
        ["--frameworks", "torch", "--modes", "jit"],
        ["--frameworks", "jax", "--modes", "eager,compile"],
        ["--frameworks", "jax", "--dtypes", ","],
        pytest.param(["--frameworks", "torch", "--dtypes", "bfloat16"], marks=pytest.mark.skipif(
            torch.cuda.is_available(), reason="torch bf16 is measured where there is a GPU")),
    ],
)
def test_benchmark_selection_that_measures_nothing_is_an_error(capsys: pytest.CaptureFixture[str],
                                                               argv: list[str]) -> None:
    assert _script("benchmark").main(argv) != 0
    captured = capsys.readouterr()
    assert captured.out == ""  # no empty table
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: nothing to measure"), captured.err
    assert "jax runs mode jit" in lines[0]


def test_benchmark_valid_selections_measure_what_they_name(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str, str]] = []
    monkeypatch.setattr(benchmark_lib, "bench_jax", lambda a, v, b, dtype, **kw: calls.append(
        ("jax", "jit", dtype)) or [])
    monkeypatch.setattr(benchmark_lib, "bench_torch", lambda a, v, b, mode, dtype, **kw: calls.append(
        ("torch", mode, dtype)) or {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    benchmark_lib.run_benchmark("resnet18", "cifar", 8, frameworks=["jax", "torch"], modes=["jit", "eager"],
                                dtypes=["float32", "bfloat16"])
    assert calls == [("jax", "jit", "float32"), ("jax", "jit", "bfloat16"), ("torch", "eager", "float32")]
    calls.clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    benchmark_lib.run_benchmark("resnet18", "cifar", 8, frameworks=["torch"], modes=["compile"], dtypes=["bfloat16"])
    assert calls == [("torch", "compile", "bfloat16")]


# ------------------------------------------------------------------------------------------ write_dataset


@pytest.fixture
def small_tar(tiny_data: Path, tmp_path: Path) -> Path:
    """A 9-image copy of the tiny dataset as a .tar.gz."""
    dataset = data_lib.per_class_subset(data_lib.load_dataset(tiny_data, tmp_path / "cache"), 2, 1)
    return data_lib.write_image_folder(dataset, tmp_path / "small.tar.gz")


@pytest.mark.parametrize("spelling", ["same", "dotted", "symlink"])
def test_write_dataset_refuses_to_overwrite_its_source(small_tar: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str], spelling: str) -> None:
    before = small_tar.read_bytes()
    dest = {"same": small_tar, "dotted": tmp_path / "cache" / ".." / small_tar.name,
            "symlink": tmp_path / "link.tar.gz"}[spelling]
    if spelling == "symlink":
        dest.symlink_to(small_tar)
    argv = [str(small_tar), str(dest), "--train-per-class", "1", "--data-dir", str(tmp_path / "cache")]
    assert _script("write_dataset").main(argv) == 1
    assert _one_line(capsys) == f"error: {dest}: is the source itself; writing it would replace the dataset"
    assert small_tar.read_bytes() == before


def test_write_dataset_dest_under_a_file_is_one_line(small_tar: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    dest = small_tar / "q.tar.gz"
    assert _script("write_dataset").main([str(small_tar), str(dest), "--data-dir", str(tmp_path / "cache")]) == 1
    assert _one_line(capsys) == f"error: {dest}: is not a directory {str(small_tar)!r}"
    # A missing folder is said before the source is read (it was after its whole decode: 25 s for CIFAR-10).
    dest = tmp_path / "missing" / "q.tar.gz"
    assert _script("write_dataset").main([str(tmp_path / "no-source"), str(dest)]) == 1
    assert _one_line(capsys) == f"error: {dest}: no such directory {str(tmp_path / 'missing')!r}"


def test_write_dataset_refuses_an_output_name_that_is_not_a_tar_before_reading_the_source(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "copy.zip"  # it wrote a gzipped tar under this name
    argv = [str(tmp_path / "no-such-source"), str(dest), "--data-dir", str(tmp_path / "cache")]
    assert _script("write_dataset").main(argv) == 1
    assert _one_line(capsys) == f"error: {dest}: the output must be named .tar.gz, .tgz or .tar (an image-folder " \
                                "tar is written)"
    assert not list(tmp_path.iterdir())


def test_write_dataset_quality_needs_jpeg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = _script("write_dataset").main
    line = _usage_error(capsys, main, ["src", str(tmp_path / "x.tar.gz"), "--quality", "50"])
    assert "--quality applies to --format jpeg only" in line
    for bad in ("0", "96"):  # refused by the library after the source's decode, before
        line = _usage_error(capsys, main, ["src", str(tmp_path / "x.tar.gz"), "--format", "jpeg", "--quality", bad])
        assert line.endswith(f"argument --quality: must be in 1..95, got {bad}")
    line = _usage_error(capsys, main, ["src", str(tmp_path / "x.tar.gz"), "--format", "png", "--quality", "50"])
    assert "--quality applies to --format jpeg only" in line
    assert not list(tmp_path.iterdir())


def test_write_dataset_removes_the_temp_file_a_killed_writer_left(small_tar: Path, tmp_path: Path) -> None:
    # SIGKILL leaves DEST.tmp<PID> (73 MB for CIFAR-10) that nothing removed; a live writer's is kept.
    dest, host = tmp_path / "copy.tar", socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / f"copy.tar.tmp-{host}-{int(dead.stdout)}"
    live = tmp_path / f"copy.tar.tmp-{host}-{os.getppid()}"  # pytest's parent: running
    elsewhere = tmp_path / f"copy.tar.tmp-other-host-{int(dead.stdout)}"  # its process cannot be seen from here
    abandoned = tmp_path / "copy.tar.tmp-other-host-7"
    notes = tmp_path / "copy.tar.tmp-my-notes"  # not a writer's
    for path in (left, live, elsewhere, abandoned, notes):
        path.write_bytes(b"partial")
    os.utime(abandoned, (time.time() - 7200, time.time() - 7200))  # two hours untouched
    argv = [str(small_tar), str(dest), "--data-dir", str(tmp_path / "cache")]
    assert _script("write_dataset").main(argv) == 0
    assert [p.exists() for p in (left, live, elsewhere, abandoned, notes)] == [False, True, True, False, True]
    assert len(data_lib.load_dataset(dest, tmp_path / "cache").train_labels) == 6


@pytest.mark.parametrize("name", ["train", "train_torch"])
def test_empty_paths_are_usage_errors_and_the_default_workdir_is_the_model_s(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    main = _script(name).main
    monkeypatch.chdir(tmp_path)  # an empty --workdir or --data-dir meant this folder: the run's files landed here
    for flag in ("--workdir", "--data-dir", "--data"):
        line = _usage_error(capsys, main, [flag, ""])
        assert line.endswith(f"argument {flag}: must name a path, got an empty string")
        line = _usage_error(capsys, main, [flag, " "])  # would be a folder named " "
        assert line.endswith(f"argument {flag}: must name a path, got only blanks ' '")
    assert not list(tmp_path.iterdir())
    # Without --workdir, each model gets its own folder (one folder for all would refuse the second model).
    module = "flax_resnet.train" if name == "train" else "torch_ref.train"
    seen: list[str] = []
    monkeypatch.setattr(f"{module}.train", lambda config, *a, **k: seen.append(config.workdir) or {"stopped": ""})
    prefix = "" if name == "train" else "torch_"
    for argv, workdir in (
        ([], "resnet18"),
        (["--arch", "resnet50"], "resnet50"),
        (["--arch", "resnet34", "--variant", "imagenet"], "resnet34_imagenet"),
    ):
        assert main(argv) == 0
        assert seen.pop() == f"runs/{prefix}{workdir}"


@pytest.mark.parametrize("name", ["train", "train_torch"])
def test_init_flags_are_checked_before_any_work(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = _script(name).main
    workdir = str(tmp_path / "w")
    line = _usage_error(capsys, main, ["--init-skip", "fc", "--workdir", workdir])
    assert line.endswith("error: --init-skip applies to --init-weights only")
    line = _usage_error(capsys, main, ["--init-weights", "x.pt", "--init-skip", "fc,,layer4", "--workdir", workdir])
    assert line.endswith("argument --init-skip: wants comma-separated names such as fc or fc,layer4, got 'fc,,layer4'")
    line = _usage_error(capsys, main, ["--init-weights", "", "--workdir", workdir])
    assert line.endswith("argument --init-weights: must name a path, got an empty string")
    # Before the data are loaded: these do not exist either.
    flags = ["--data", str(tmp_path / "no_data"), "--workdir", workdir, "--no-progress"]
    assert main([*flags, "--init-weights", str(tmp_path / "x.safetensors")]) == 1
    assert _one_line(capsys) == f"error: --init-weights: weights file not found: {tmp_path / 'x.safetensors'}"
    assert not (tmp_path / "w").exists()


# ------------------------------------------------------------------------------------------ data messages


def _png(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)


def test_empty_train_class_folder_says_it_holds_no_images(tmp_path: Path) -> None:
    _png(tmp_path / "src/train/dog/0.png")
    (tmp_path / "src/train/cat").mkdir()
    _png(tmp_path / "src/test/cat/0.png", 1)
    _png(tmp_path / "src/test/dog/0.png", 2)
    with pytest.raises(data_lib.DataError) as excinfo:
        data_lib.load_dataset(tmp_path / "src", tmp_path / "cache")
    assert str(excinfo.value) == (
        f"{tmp_path / 'src/train/cat'}: class folder holds no images (.jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, "
        ".tiff, .webp), nor do its subfolders"
    )


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "tar"])
def test_a_class_folder_empty_in_both_splits_is_refused_not_dropped(tmp_path: Path, packed: bool) -> None:
    """torchvision's ImageFolder raises for it; dropping it would give 'dog' label 0 where torchvision gives 1."""
    for split, seed in (("train", 0), ("test", 1)):
        _png(tmp_path / f"src/{split}/dog/0.png", seed)
        (tmp_path / f"src/{split}/cat").mkdir(parents=True)
    (tmp_path / "src/test/cat/notes.txt").write_text("not an image")
    source = tmp_path / "src"
    if packed:
        source = tmp_path / "src.tar"
        with tarfile.open(source, "w") as archive:
            archive.add(tmp_path / "src", arcname="src")
    with pytest.raises(data_lib.DataError, match="class folder holds no images") as excinfo:
        data_lib.load_dataset(source, tmp_path / "cache")
    where = f"{source}:src/train/cat" if packed else str(tmp_path / "src/train/cat")
    assert str(excinfo.value).startswith(f"{where}: ")
    with pytest.raises(FileNotFoundError):
        torchvision.datasets.ImageFolder(str(tmp_path / "src/train"))


def test_an_empty_class_folder_added_after_caching_is_still_refused(tmp_path: Path) -> None:
    _png(tmp_path / "src/train/dog/0.png")
    _png(tmp_path / "src/test/dog/0.png", 1)
    assert data_lib.load_dataset(tmp_path / "src", tmp_path / "cache").class_names == ("dog",)
    (tmp_path / "src/test/cat").mkdir()
    with pytest.raises(data_lib.DataError, match="class folder holds no images"):
        data_lib.load_dataset(tmp_path / "src", tmp_path / "cache")


def test_a_class_name_in_another_unicode_form_is_named_as_such(tmp_path: Path) -> None:
    composed, decomposed = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    _png(tmp_path / f"src/train/{composed}/0.png")
    _png(tmp_path / f"src/test/{decomposed}/0.png", 1)
    with pytest.raises(data_lib.DataError) as excinfo:
        data_lib.load_dataset(tmp_path / "src", tmp_path / "cache")
    assert str(excinfo.value) == (
        f"{tmp_path / 'src/test'}: class folder {decomposed!r} is train/'s {composed!r} in another Unicode "
        "normalization form (NFD here, NFC there); rename one to match the other"
    )


def test_undecodable_image_message_has_no_object_repr(tmp_path: Path) -> None:
    _png(tmp_path / "src/train/cat/0.png")
    _png(tmp_path / "src/test/cat/0.png", 1)
    (tmp_path / "src/train/cat/1.png").write_text("not an image")
    with pytest.raises(data_lib.DataError) as excinfo:
        data_lib.load_dataset(tmp_path / "src", tmp_path / "cache")
    message = str(excinfo.value)
    assert message.startswith(f"{tmp_path / 'src/train/cat/1.png'}: cannot decode image (")
    assert " object at 0x" not in message and "<" not in message, message


def test_unwritable_cache_is_one_warning_line_and_the_load_succeeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], recwarn: pytest.WarningsRecorder
) -> None:
    _png(tmp_path / "src/train/cat/0.png")
    _png(tmp_path / "src/test/cat/0.png", 1)
    (tmp_path / "afile").write_text("x")
    dataset = data_lib.load_dataset(tmp_path / "src", tmp_path / "afile")
    assert len(dataset.train_labels) == 1 and len(dataset.test_labels) == 1
    line = _one_line(capsys)
    assert line.startswith("warning: could not write dataset cache ") and str(tmp_path / "afile") in line
    assert not recwarn.list


# ------------------------------------------------------------------------------------------ reporting, predict


def test_failed_figure_save_leaves_no_temp_file(tmp_path: Path) -> None:
    out = tmp_path / "outdir"
    out.mkdir()
    with pytest.raises(OSError):
        reporting.plot_confusion(np.eye(2, dtype=np.int64), ["a", "b"], out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outdir"] and not list(out.iterdir())


def test_class_folders_that_are_no_utf8_load_and_plot(tmp_path: Path) -> None:
    """A Latin-1 folder name (an old archive's) reaches Python as lone surrogates: the loader keeps them (order and
    identity as ImageFolder's), the plots show the name read as Latin-1 (matplotlib raised a TypeError)."""
    import os

    for split in ("train", "test"):
        for i, folder in enumerate((b"K\xe4tze", b"dog")):
            path = os.path.join(os.fsencode(tmp_path), b"src", split.encode(), folder, b"0.png")
            os.makedirs(os.path.dirname(path))
            Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(path, format="PNG")
    dataset = data_lib.load_dataset(tmp_path / "src", tmp_path / "cache")
    assert dataset.class_names == ("K\udce4tze", "dog") and list(dataset.train_labels) == [0, 1]
    assert [data_lib.printable(n) for n in dataset.class_names] == ["K\u00e4tze", "dog"]
    reporting.plot_confusion(np.eye(2, dtype=np.int64), dataset.class_names, tmp_path / "confusion.png")
    reporting.plot_predictions(dataset.test_images, dataset.test_labels, dataset.test_labels[::-1],
                               dataset.class_names, tmp_path / "predictions.png")  # fmt: skip
    assert (tmp_path / "confusion.png").stat().st_size > 0 and (tmp_path / "predictions.png").stat().st_size > 0


def test_epoch_line_and_curves_show_each_number_where_it_belongs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = [
        {"epoch": e, "step": 10 * e, "lr": 0.1, "train_loss": 2.5 - e, "train_acc": 0.25 * e, "test_loss": 3.0 - e,
         "test_acc": 0.125 + 0.25 * e, "epoch_seconds": 12.0, "images_per_second": 400.0} for e in (1, 2)
    ]  # fmt: skip
    line = reporting.format_epoch({**records[1], "test_acc_flip": 0.7})
    assert line == ("epoch 2 step 20 lr 0.1 | train loss 0.5000 acc 50.00% | test loss 1.0000 acc 62.50% | "
                    "flip TTA acc 70.00% | 12.0s 400 img/s")  # fmt: skip
    line = reporting.format_epoch({**records[0], "epoch_seconds": 0.0, "images_per_second": 0.0})
    assert line.endswith("| 0.0s img/s not measured (first step only)")  # not "0 img/s"
    assert "| holdout loss 2.0000 acc 37.50% |" in reporting.format_epoch(records[0], "holdout")  # --holdout
    figures = []
    monkeypatch.setattr(reporting, "_save", lambda fig, path: figures.append(fig))
    reporting.plot_curves(records, tmp_path / "curves.png")
    (loss_ax, acc_ax) = figures[0].axes
    assert [list(line.get_ydata()) for line in loss_ax.get_lines()] == [[1.5, 0.5], [2.0, 1.0]]
    assert [list(line.get_ydata()) for line in acc_ax.get_lines()] == [[25.0, 50.0], [37.5, 62.5]]  # percent
    assert [line.get_label() for line in acc_ax.get_lines()] == ["train", "test"]
    reporting.plot_curves(records, tmp_path / "curves.png", "holdout")
    assert [line.get_label() for line in figures[1].axes[1].get_lines()] == ["train", "holdout"]


def test_predict_image_over_the_decompression_bomb_limit_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    image = tmp_path / "big.png"
    _png(image)  # 1024 pixels: over twice the limit below, which is where PIL raises instead of warning
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert _script("predict").main([str(tmp_path / "no-run"), str(image)]) == 1
    line = _one_line(capsys)
    assert line.startswith(f"error: {image}: cannot read image (DecompressionBombError: ")
    # Between the limit and twice it PIL only warns, in two lines of its own: a large photo is read quietly.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _script("predict").load_image(image)[0].shape == (32, 32, 3)


def test_predict_reads_photos_upright_and_16_bit_greys_at_their_level(tmp_path: Path) -> None:
    # A phone JPEG is stored sideways with an EXIF Orientation tag (6: turn 90 degrees clockwise to display).
    # Stored 64x32, left half red and right half blue: upright it is 32x64, red on top, and its centre crop
    # keeps red above blue; read as stored, the crop would be red left of blue.
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:, :32, 0] = 255
    stored[:, 32:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "photo.jpg", quality=95, exif=exif)
    array, done = _script("predict").load_image(tmp_path / "photo.jpg")
    assert done == ["turned upright by its EXIF orientation", "center-cropped and resized from 32x64 to 32x32"]
    assert array.shape == (32, 32, 3)
    assert array[2, 16, 0] > 200 and array[2, 16, 2] < 50  # top: red
    assert array[29, 16, 2] > 200 and array[29, 16, 0] < 50  # bottom: blue
    # 16-bit greyscale: PIL's convert("RGB") clips it at 255 (mid-grey would read white); it is scaled to 8 bits.
    Image.fromarray(np.full((32, 32), 32768, np.uint16)).save(tmp_path / "grey16.png")
    array, done = _script("predict").load_image(tmp_path / "grey16.png")
    assert done == [] and np.unique(array).tolist() == [128]
    # A 32x32 image with the tag is turned too, which training does not do (it reads images as stored): said.
    Image.fromarray(stored[:, :32]).save(tmp_path / "small.jpg", quality=95, exif=exif)
    assert _script("predict").load_image(tmp_path / "small.jpg")[1] == ["turned upright by its EXIF orientation"]


@pytest.mark.parametrize("size", [(48, 40), (40, 64)], ids=["wide", "tall"])
def test_predict_crops_the_centre_square_and_resizes_it_as_torchvision(tmp_path: Path, size: tuple[int, int]) -> None:
    # torchvision's CenterCrop(shorter side) + Resize(32, bicubic) on the same PIL image is the reference.
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    w, h = size
    image = Image.fromarray(np.random.default_rng(w).integers(0, 256, (h, w, 3), dtype=np.uint8))
    image.save(tmp_path / "x.png")
    array, done = _script("predict").load_image(tmp_path / "x.png")
    side = min(w, h)
    want = TF.resize(TF.center_crop(image, [side, side]), [32, 32], InterpolationMode.BICUBIC)
    assert done == [f"center-cropped and resized from {w}x{h} to 32x32"] and np.array_equal(array, np.asarray(want))


def test_dataset_decodes_16_bit_greys_at_their_level(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for name in ("a", "b"):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            Image.fromarray(np.full((32, 32), 257 * 40, np.uint16)).save(tmp_path / "data" / split / name / "0.png")
    dataset = data_lib.load_dataset(tmp_path / "data", tmp_path / "cache")
    assert np.unique(dataset.train_images).tolist() == [40]
    # 16-bit PGM (PIL's mode I, scaled to 16 bits: maxval 1023 holding 512 is half way) reads the same way.
    (tmp_path / "half.pgm").write_bytes(b"P5\n32 32\n1023\n" + np.full((32, 32), 512, ">u2").tobytes())
    assert np.unique(_script("predict").load_image(tmp_path / "half.pgm")[0]).tolist() == [128]  # 512/1023 * 255
    # 32-bit TIFFs, integer or float, have no range to scale: an int32 image of 0..255 read as 16-bit came out
    # near black (200 -> 1) without a word. Refused, by the data set and by predict.py.
    for mode, value in (("int32", 200), ("float32", 0.5)):
        Image.fromarray(np.full((32, 32), value, mode)).save(tmp_path / "data" / "train" / "a" / "0.tif")
        message = f"32-bit {'integer' if mode == 'int32' else 'float'} pixels have no 8-bit scale"
        with pytest.raises(data_lib.DataError, match=message):
            data_lib.load_dataset(tmp_path / "data", tmp_path / "cache")
        with pytest.raises(ValueError, match=message):
            _script("predict").load_image(tmp_path / "data" / "train" / "a" / "0.tif")


def test_transparent_pixels_read_as_the_mean_colour(tmp_path: Path) -> None:
    # RGBA: an opaque red half, a transparent half storing black, a half-transparent white pixel. Transparent
    # pixels become the CIFAR-10 mean colour (which normalizes to ~0), opaque ones keep their colour.
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:, :16] = (255, 0, 0, 255)
    rgba[0, 0] = (255, 255, 255, 128)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    mean = [round(255 * m) for m in data_lib.CIFAR10_MEAN]  # (125, 123, 114)
    array, _ = _script("predict").load_image(tmp_path / "rgba.png")
    assert array[5, 5].tolist() == [255, 0, 0] and array[5, 20].tolist() == mean
    half = 128 / 255
    assert array[0, 0].tolist() == [round(255 * half + 255 * m * (1 - half)) for m in data_lib.CIFAR10_MEAN]
    assert np.abs(np.asarray(data_lib.normalize(array[None, 5:6, 20:21]))).max() < 0.01
    # A palette PNG whose entry 0 is transparent (GIF-style), and opaque RGBA, which reads as plain RGB.
    palette = Image.fromarray(np.where(np.arange(32)[None, :] < 16, 1, 0).repeat(32, 0).astype(np.uint8), "P")
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.save(tmp_path / "p.png", transparency=0)
    array, _ = _script("predict").load_image(tmp_path / "p.png")
    assert array[3, 3].tolist() == [0, 0, 255] and array[3, 30].tolist() == mean
    rgba[..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "opaque.png")
    assert np.array_equal(_script("predict").load_image(tmp_path / "opaque.png")[0], rgba[..., :3])
