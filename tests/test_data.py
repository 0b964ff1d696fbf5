"""Tests for flax_resnet.data: every source, the decode cache, user-facing errors, augmentation, batch order.

References are independent of the code under test: pixel values written by the test itself, PIL decoding of
the same files, hand-computed numbers, and a brute-force numpy search over all crops and flips.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import socket
import tarfile
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from augment_reference import assert_uniform_draws, recover_windows
from PIL import Image

from flax_resnet.data import (
    CIFAR10_CLASSES,
    DataError,
    Dataset,
    augment,
    cutout,
    cutout_keep,
    epoch_order,
    eval_batches,
    hold_out,
    image_set_digest,
    load_dataset,
    normalize,
    per_class_subset,
    train_batch_indices,
    write_image_folder,
)

REAL_TAR = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.tar.gz"
# One compilation per (shape, pad, flip) instead of op-by-op dispatch; eager == jit is tested separately.
augment_jit = jax.jit(augment, static_argnames=("pad", "flip"))


# ------------------------------------------------------------------------------------------ helpers


def _pixels(seed: int, shape: tuple[int, ...] = (32, 32, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _write_png(path: Path, array: np.ndarray, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path, format="PNG")


def _make_folder(root: Path) -> Dataset:
    """Write a small image-folder tree and return what loading it must give (built here, by hand).

    Classes are created out of order; file names mix extension case; one image is grayscale, one JPEG;
    stray files (a .txt, a hidden macOS '._' file, a hidden folder, an image directly in train/) must be ignored.
    """
    dog0, dog1, cat0, plane0, plane1 = (_pixels(i) for i in range(5))
    gray = _pixels(5, (32, 32))
    test_cat, test_dog = _pixels(6), _pixels(7)
    _write_png(root / "train/dog/1.PNG", dog1)
    _write_png(root / "train/dog/0.png", dog0)
    _write_png(root / "train/cat/0.png", cat0)
    _write_png(root / "train/airplane/0.png", plane0)
    _write_png(root / "train/airplane/1.png", gray, mode="L")
    Image.fromarray(plane1).save(root / "train/airplane/2.jpg", format="JPEG", quality=90)
    _write_png(root / "test/cat/0.png", test_cat)
    _write_png(root / "test/dog/0.png", test_dog)
    (root / "train/dog/notes.txt").write_text("not an image")
    (root / "train/cat/._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    _write_png(root / "train/.ipynb_checkpoints/0.png", _pixels(9))  # a hidden folder is no class
    _write_png(root / "train/stray.png", _pixels(8))
    jpeg = np.asarray(Image.open(root / "train/airplane/2.jpg").convert("RGB"))  # PIL's own decoding
    gray_rgb = np.repeat(gray[:, :, None], 3, axis=2)
    return Dataset(
        train_images=np.stack([plane0, gray_rgb, jpeg, cat0, dog0, dog1]),
        train_labels=np.array([0, 0, 0, 1, 2, 2], np.int32),
        test_images=np.stack([test_cat, test_dog]),
        test_labels=np.array([1, 2], np.int32),
        class_names=("airplane", "cat", "dog"),
    )


def _make_tar(tree: Path, out: Path, wrapper: str | None = "cifar10-mini") -> Path:
    mode = "w:gz" if out.name.endswith(("gz", "tgz")) else "w"
    with tarfile.open(out, mode) as archive:
        archive.add(tree, arcname=wrapper or ".")
    return out


def _assert_same(got: Dataset, want: Dataset) -> None:
    assert got.class_names == want.class_names
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        a, b = getattr(got, field), getattr(want, field)
        assert a.dtype == b.dtype, field
        np.testing.assert_array_equal(a, b, err_msg=field)


def _error(source: os.PathLike | str, data_dir: Path) -> str:
    with pytest.raises(DataError) as excinfo:
        load_dataset(str(source), data_dir=str(data_dir))
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


# ----------------------------------------------------------------------------------- writing a copy


def test_write_image_folder_png_is_lossless_and_jpeg_follows_pil(tmp_path: Path) -> None:
    want = _make_folder(tmp_path / "src")
    out = write_image_folder(want, tmp_path / "copy.tar.gz")
    _assert_same(load_dataset(out, data_dir=tmp_path / "cache"), want)  # PNG: bit for bit, labels in order

    errors = {}
    for quality in (25, 95):
        jpeg = load_dataset(write_image_folder(want, tmp_path / f"q{quality}.tar.gz", "jpeg", quality),
                            data_dir=tmp_path / "cache")
        # PIL's own encode + decode of the first training image at that quality is the reference
        buffer = io.BytesIO()
        Image.fromarray(want.train_images[0]).save(buffer, format="JPEG", quality=quality, subsampling="4:2:0")
        np.testing.assert_array_equal(jpeg.train_images[0], np.asarray(Image.open(buffer).convert("RGB")))
        np.testing.assert_array_equal(jpeg.train_labels, want.train_labels)
        errors[quality] = np.abs(jpeg.test_images.astype(int) - want.test_images).mean()
    assert 0 < errors[95] < errors[25]


def test_per_class_subset_keeps_the_first_images_of_each_class_in_order() -> None:
    labels = np.array([2, 0, 2, 1, 0, 2, 0, 2], np.int32)
    images = np.arange(8, dtype=np.uint8).reshape(8, 1, 1, 1) * np.ones((1, 2, 2, 3), np.uint8)
    ds = Dataset(images, labels, images[:3], labels[:3], ("a", "b", "c"))
    sub = per_class_subset(ds, 2, None)
    # hand-picked: class 2 at 0 and 2, class 0 at 1 and 4, class 1 (only one image) at 3
    np.testing.assert_array_equal(sub.train_labels, [2, 0, 2, 1, 0])
    np.testing.assert_array_equal(sub.train_images[:, 0, 0, 0], [0, 1, 2, 3, 4])
    assert sub.test_images is ds.test_images and sub.class_names == ds.class_names
    np.testing.assert_array_equal(per_class_subset(ds, None, 1).test_labels, [2, 0])
    with pytest.raises(ValueError, match="must be >= 1"):
        per_class_subset(ds, 0, None)


def test_write_image_folder_refuses_bad_settings(tmp_path: Path) -> None:
    want = _make_folder(tmp_path / "src")
    for fmt, quality in (("gif", 75), ("jpeg", 0), ("jpeg", 100)):
        with pytest.raises(DataError):
            write_image_folder(want, tmp_path / "x.tar.gz", fmt, quality)
    with pytest.raises(DataError, match="cannot write"):
        write_image_folder(want, tmp_path / "missing-dir" / "x.tar.gz")
    for name in ("x.zip", "x.gz", "x"):  # a gzipped tar under such a name would be mislabelled
        with pytest.raises(DataError, match=r"must be named \.tar\.gz, \.tgz or \.tar"):
            write_image_folder(want, tmp_path / name)
    assert not list(tmp_path.glob("x*"))


@pytest.mark.parametrize(("name", "gzipped"), [("copy.tar", False), ("copy.TGZ", True), ("copy.tar.gz", True)])
def test_write_image_folder_compresses_as_its_name_says(tmp_path: Path, name: str, gzipped: bool) -> None:
    want = _make_folder(tmp_path / "src")
    out = write_image_folder(want, tmp_path / name)
    assert (out.read_bytes()[:2] == b"\x1f\x8b") == gzipped  # the gzip magic number
    assert tarfile.is_tarfile(out)
    _assert_same(load_dataset(out, data_dir=tmp_path / "cache"), want)


# ------------------------------------------------------------------------------------ image folders


def test_image_folder_directory(tmp_path: Path) -> None:
    want = _make_folder(tmp_path / "tree")
    got = load_dataset(str(tmp_path / "tree"), data_dir=str(tmp_path / "cache"))
    _assert_same(got, want)
    assert got.train_images.shape == (6, 32, 32, 3) and got.train_images.dtype == np.uint8


def test_image_folder_directory_with_one_wrapper_folder(tmp_path: Path) -> None:
    want = _make_folder(tmp_path / "outer" / "cifar10-mini")
    _assert_same(load_dataset(str(tmp_path / "outer"), data_dir=str(tmp_path / "cache")), want)


@pytest.mark.parametrize("name", ["data.tar", "data.tar.gz", "data.tgz"])
@pytest.mark.parametrize("wrapper", ["cifar10-mini", None])
def test_image_folder_tar(tmp_path: Path, name: str, wrapper: str | None) -> None:
    want = _make_folder(tmp_path / "tree")
    archive = _make_tar(tmp_path / "tree", tmp_path / name, wrapper)
    _assert_same(load_dataset(str(archive), data_dir=str(tmp_path / "cache")), want)


def _make_nested_folder(root: Path) -> None:
    """A tree in every format ImageFolder reads, with images in subfolders of class folders (one class has only
    such images) and folder names whose sort order differs from a plain path sort ('sub-2' before 'sub/')."""
    rgb = {name: _pixels(20 + i) for i, name in enumerate("abcdefgh")}
    grey = _pixels(30, (32, 32))
    _write_png(root / "train/cat/b.png", rgb["a"])
    _write_png(root / "train/cat/A.PNG", rgb["b"])
    (root / "train/cat/sub/deeper").mkdir(parents=True)
    Image.fromarray(rgb["c"]).save(root / "train/cat/sub/a.bmp", format="BMP")
    (root / "train/cat/sub-2").mkdir()
    Image.fromarray(rgb["d"]).save(root / "train/cat/sub-2/c.ppm", format="PPM")
    Image.fromarray(rgb["e"]).save(root / "train/cat/sub/deeper/d.TIFF", format="TIFF")
    (root / "train/dog").mkdir()
    Image.fromarray(rgb["f"]).save(root / "train/dog/x.webp", format="WEBP", lossless=True)
    Image.fromarray(grey, mode="L").save(root / "train/dog/y.pgm", format="PPM")
    (root / "train/dog/notes.txt").write_text("not an image")
    (root / "train/bird/nested/only").mkdir(parents=True)
    Image.fromarray(rgb["g"]).save(root / "train/bird/nested/only/e.tif", format="TIFF")
    _write_png(root / "test/bird/deep/0.png", rgb["h"])
    _write_png(root / "test/cat/0.png", rgb["a"])


def _image_folder_reference(root: Path) -> Dataset:
    """What torchvision's ImageFolder gives for `root`/{train,test}: its classes, sample order and RGB pixels."""
    import torchvision

    arrays = []
    classes = None
    for split in ("train", "test"):
        folder = torchvision.datasets.ImageFolder(str(root / split), allow_empty=split == "test")
        classes = classes or tuple(folder.classes)
        arrays += [
            np.stack([np.asarray(folder.loader(path)) for path, _ in folder.samples]),
            np.array(folder.targets, np.int32),
        ]
    return Dataset(*arrays, class_names=classes)


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "tar"])
def test_image_folder_matches_torchvision_with_subfolders_and_every_extension(tmp_path: Path, packed: bool) -> None:
    _make_nested_folder(tmp_path / "tree")
    want = _image_folder_reference(tmp_path / "tree")
    assert want.class_names == ("bird", "cat", "dog") and len(want.train_labels) == 8  # the tree is what it says
    source = _make_tar(tmp_path / "tree", tmp_path / "t.tar.gz") if packed else tmp_path / "tree"
    _assert_same(load_dataset(source, data_dir=tmp_path / "cache"), want)


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "tar"])
def test_folder_links_below_a_class_are_followed_and_a_loop_is_named(tmp_path: Path, packed: bool) -> None:
    tree = tmp_path / "tree"
    _make_nested_folder(tree)
    _write_png(tree / "extra/0.png", _pixels(40))
    _write_png(tree / "more/1.png", _pixels(41))
    (tree / "train/dog/linked").symlink_to("../../extra", target_is_directory=True)
    (tree / "extra/inner").symlink_to("../more", target_is_directory=True)  # reached only through the first link
    want = _image_folder_reference(tree)
    assert len(want.train_labels) == 10
    source = _make_tar(tree, tmp_path / "t.tar", None) if packed else tree
    _assert_same(load_dataset(source, data_dir=tmp_path / "cache"), want)
    (tree / "train/cat/sub/up").symlink_to("..", target_is_directory=True)  # train/cat itself
    source = _make_tar(tree, tmp_path / "loop.tar", None) if packed else tree
    where = f"{source}:train/cat/sub/up" if packed else str(tree / "train/cat/sub/up")
    assert _error(source, tmp_path / "cache") == f"{where}: a link to a folder it is inside (a loop)"
    (tree / "train/cat/sub/up").unlink()
    (tree / "train/cat/x").symlink_to("../dog", target_is_directory=True)  # a loop through two links
    (tree / "train/dog/y").symlink_to("../cat", target_is_directory=True)
    source = _make_tar(tree, tmp_path / "loop2.tar", None) if packed else tree
    assert _error(source, tmp_path / "cache").endswith(": a link to a folder it is inside (a loop)")


def _linked_tar(archive: Path, image_file: Path, links: list[tuple[str, bytes, str]]) -> Path:
    """A tar holding `image_file` as train/cat/0.png and link members (name, tarfile link type, target)."""
    with tarfile.open(archive, "w") as out:
        out.add(image_file, arcname="train/cat/0.png")
        for name, kind, target in links:
            link = tarfile.TarInfo(name)
            link.type, link.linkname = kind, target
            out.addfile(link)
    return archive


def test_tar_hard_links_are_followed(tmp_path: Path) -> None:
    image = _pixels(11)
    _write_png(tmp_path / "tree/train/cat/0.png", image)
    links = [("test/cat/0.png", tarfile.LNKTYPE, "train/cat/0.png")]
    archive = _linked_tar(tmp_path / "linked.tar", tmp_path / "tree/train/cat/0.png", links)
    got = load_dataset(str(archive), data_dir=str(tmp_path / "cache"))
    np.testing.assert_array_equal(got.train_images, image[None])
    np.testing.assert_array_equal(got.test_images, image[None])


def test_tar_symbolic_links_are_followed_and_a_dangling_one_is_named(tmp_path: Path) -> None:
    # A subset tar built with `ln -s` keeps its class: the link's target is read (relative to the link's folder).
    image = _pixels(12)
    source = tmp_path / "tree/train/cat/0.png"
    _write_png(source, image)
    links = [
        ("train/dog/0.png", tarfile.SYMTYPE, "../cat/0.png"),
        ("test/cat/0.png", tarfile.SYMTYPE, "../../train/cat/0.png"),
        ("test/dog/0.png", tarfile.SYMTYPE, "../../train/dog/0.png"),  # a link to a link
        ("train/bird", tarfile.SYMTYPE, "cat"),  # a link to a folder
        ("test/bird", tarfile.SYMTYPE, "../train/cat"),
    ]
    got = load_dataset(str(_linked_tar(tmp_path / "symlinked.tar", source, links)), data_dir=str(tmp_path / "cache"))
    assert got.class_names == ("bird", "cat", "dog")
    np.testing.assert_array_equal(got.train_images, np.stack([image, image, image]))
    np.testing.assert_array_equal(got.test_labels, [0, 1, 2])
    np.testing.assert_array_equal(got.test_images, np.stack([image, image, image]))
    outside = [("test/cat/0.png", tarfile.SYMTYPE, "../../elsewhere/0.png")]
    dangling = _linked_tar(tmp_path / "dangling.tar", source, outside)
    link = "a link to '../../elsewhere/0.png', which is not in the archive"
    assert _error(dangling, tmp_path / "cache") == f"{dangling}:test/cat/0.png: {link}"


def test_a_hidden_copy_beside_the_dataset_in_a_tar_is_ignored(tmp_path: Path) -> None:
    # A tar of a folder holding cifar/ and a hidden .snapshot/ of it loads as the folder does (the snapshot's
    # train/ and test/ made it a second dataset root: "ambiguous").
    want = _make_folder(tmp_path / "tree/cifar")
    _make_folder(tmp_path / "tree/.snapshot")
    assert load_dataset(tmp_path / "tree", data_dir=tmp_path / "cache").class_names == want.class_names
    archive = _make_tar(tmp_path / "tree", tmp_path / "t.tar", None)
    _assert_same(load_dataset(archive, data_dir=tmp_path / "cache"), want)


def test_a_path_that_is_not_utf8_loads(tmp_path: Path) -> None:
    want = _make_folder(tmp_path / os.fsdecode(b"caf\xe9"))  # a Latin-1 name: a lone surrogate in Python
    _assert_same(load_dataset(tmp_path / os.fsdecode(b"caf\xe9"), data_dir=tmp_path / "cache"), want)


def test_cache_is_used_and_invalidated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    want = _make_folder(tmp_path / "tree")
    archive = _make_tar(tmp_path / "tree", tmp_path / "data.tar.gz")
    cache = tmp_path / "cache"
    _assert_same(load_dataset(str(archive), data_dir=str(cache)), want)
    assert len(list(cache.glob("*.npz"))) == 1
    assert not [p for p in cache.iterdir() if not p.name.endswith(".npz")]  # no temp files left behind

    # Second load: from the cache, without decoding a single image; it also removes a temp file that a
    # killed writer of this source left an hour or more ago.
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded an image although a cache exists")

    stale = cache / (next(cache.glob("*.npz")).name.rsplit(".", 2)[0] + ".killed.tmp")
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    with monkeypatch.context() as m:
        m.setattr(Image, "open", no_decoding)
        _assert_same(load_dataset(str(archive), data_dir=str(cache)), want)
    assert not stale.exists()

    # A changed source is decoded again; the stale cache of that source is replaced, and so are temp files
    # that killed writers of this source left (an hour old or more), while a fresh one (a writer at work) stays.
    stem = next(cache.glob("*.npz")).name.rsplit(".", 2)[0]
    killed, working = cache / f"{stem}.abc123.tmp", cache / f"{stem}.def456.tmp"
    killed.write_bytes(b"half")
    working.write_bytes(b"half")
    os.utime(killed, (time.time() - 7200, time.time() - 7200))
    new_dog = _pixels(99)
    _write_png(tmp_path / "tree/test/dog/0.png", new_dog)
    _make_tar(tmp_path / "tree", archive)
    os.utime(archive, ns=(time.time_ns(), time.time_ns() + 10**9))
    got = load_dataset(str(archive), data_dir=str(cache))
    np.testing.assert_array_equal(got.test_images[1], new_dog)
    assert len(list(cache.glob("*.npz"))) == 1
    assert not killed.exists() and working.exists()
    working.unlink()

    # An unreadable cache file is not an error: the source is decoded again.
    (cached,) = cache.glob("*.npz")
    cached.write_bytes(b"garbage")
    np.testing.assert_array_equal(load_dataset(str(archive), data_dir=str(cache)).test_images[1], new_dog)


def test_archive_cache_sees_a_change_that_keeps_every_size(tmp_path: Path) -> None:
    # Uncompressed .bmp files in a plain .tar: a changed pixel changes no size, so only the archive's mtime says
    # that the cache is stale.
    tree = tmp_path / "tree"
    for k, name in enumerate(("train/cat", "train/dog", "test/cat", "test/dog")):
        (tree / name).mkdir(parents=True)
        Image.fromarray(_pixels(k)).save(tree / name / "0.bmp")
    archive = _make_tar(tree, tmp_path / "data.tar")
    cache, size = tmp_path / "cache", archive.stat().st_size
    np.testing.assert_array_equal(load_dataset(str(archive), data_dir=str(cache)).test_images[1], _pixels(3))
    Image.fromarray(_pixels(99)).save(tree / "test/dog/0.bmp")
    _make_tar(tree, archive)
    assert archive.stat().st_size == size
    os.utime(archive, ns=(time.time_ns(), archive.stat().st_mtime_ns + 10**9))
    np.testing.assert_array_equal(load_dataset(str(archive), data_dir=str(cache)).test_images[1], _pixels(99))


def test_directory_cache_sees_changed_files(tmp_path: Path) -> None:
    _make_folder(tmp_path / "tree")
    cache = tmp_path / "cache"
    load_dataset(str(tmp_path / "tree"), data_dir=str(cache))
    new_cat = _pixels(42)
    _write_png(tmp_path / "tree/test/cat/0.png", new_cat)
    os.utime(tmp_path / "tree/test/cat/0.png", ns=(time.time_ns(), time.time_ns() + 10**9))
    got = load_dataset(str(tmp_path / "tree"), data_dir=str(cache))
    np.testing.assert_array_equal(got.test_images[0], new_cat)


def test_default_cache_dir_is_home_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _make_folder(tmp_path / "tree")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    load_dataset(str(tmp_path / "tree"))
    assert len(list((tmp_path / "home/.cache/flax_resnet").glob("*.npz"))) == 1


# ----------------------------------------------------------------------------- cifar-10-python.tar.gz


def _cifar_row(k: int) -> np.ndarray:
    """Image k of the fake archive as one CHW row of 3072 bytes: value (i + 7k) mod 251 at position i."""
    return ((np.arange(3072) + 7 * k) % 251).astype(np.uint8)


def _numpy1_pickle(obj: object) -> bytes:
    """Pickle as the original archive does (protocol 2, numpy arrays named via numpy.core as in numpy 1)."""
    return pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def _make_cifar_python(
    out: Path, meta: bool = True, test_batch: object | None = None, train_labels: list | None = None
) -> Path:
    members: dict[str, bytes] = {}
    k = 0
    labels = [k % 10 for k in range(10)] if train_labels is None else train_labels
    for b in range(1, 6):  # two images per training batch
        rows = np.stack([_cifar_row(k), _cifar_row(k + 1)])
        members[f"data_batch_{b}"] = _numpy1_pickle(
            {b"batch_label": b"training batch", b"labels": labels[k : k + 2], b"data": rows}
        )
        k += 2
    if test_batch is None:
        test_batch = {b"labels": [3, 9, 0], b"data": np.stack([_cifar_row(100 + i) for i in range(3)])}
    members["test_batch"] = _numpy1_pickle(test_batch)
    if meta:
        members["batches.meta"] = _numpy1_pickle({b"label_names": [c.encode() for c in CIFAR10_CLASSES]})
    with tarfile.open(out, "w:gz") as archive:
        for name, payload in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return out


def test_cifar_python_archive(tmp_path: Path) -> None:
    archive = _make_cifar_python(tmp_path / "cifar-10-python.tar.gz")
    got = load_dataset(str(archive), data_dir=str(tmp_path / "c"))
    assert got.class_names == CIFAR10_CLASSES
    assert got.train_images.shape == (10, 32, 32, 3) and got.test_images.shape == (3, 32, 32, 3)
    assert got.train_images.dtype == np.uint8 and got.train_labels.dtype == np.int32
    np.testing.assert_array_equal(got.train_labels, np.arange(10))  # batches 1..5 in order
    np.testing.assert_array_equal(got.test_labels, [3, 9, 0])
    # Hand-computed: row position c*1024 + h*32 + w holds (position + 7k) mod 251.
    first = got.train_images[0]
    assert first[0, 1].tolist() == [1, 21, 41]  # positions 1, 1025, 2049
    assert first[1, 0].tolist() == [32, 52, 72]  # positions 32, 1056, 2080
    assert first[31, 31].tolist() == [19, 39, 59]  # positions 1023, 2047, 3071
    assert got.train_images[1, 0, 0].tolist() == [7, 7 + 1024 % 251, 7 + 2048 % 251]
    # Every pixel of one train and one test image, by explicit loops.
    for image, k in ((got.train_images[7], 7), (got.test_images[2], 102)):
        row = _cifar_row(k)
        for h in range(32):
            for w in range(32):
                assert [image[h, w, c] for c in range(3)] == [row[c * 1024 + h * 32 + w] for c in range(3)]


def test_cifar_python_without_meta_uses_cifar10_names(tmp_path: Path) -> None:
    archive = _make_cifar_python(tmp_path / "cifar.tar.gz", meta=False)
    assert load_dataset(str(archive), data_dir=str(tmp_path / "c")).class_names == CIFAR10_CLASSES


def test_cifar_python_refuses_float_labels_and_a_class_without_training_images(tmp_path: Path) -> None:
    # 3.5 was read as 3; a class with no training images loaded, and write_dataset.py's image-folder copy of it
    # then lost the class (no folder), shifting every later label, or failed to load (its test/ folder only).
    archive = _make_cifar_python(tmp_path / "float.tar.gz", train_labels=[0.0, 1, 2, 3, 4, 5, 6, 7, 8, 3.5])
    message = _error(archive, tmp_path / "c")
    assert message.endswith("cifar-10-batches-py/data_batch_1: labels must be integers, got float64 (e.g. 0.0)")
    archive = _make_cifar_python(tmp_path / "noplane.tar.gz", train_labels=[1, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    message = _error(archive, tmp_path / "c")
    assert message.endswith("cifar-10-batches-py/data_batch_1: class 'airplane' has no training images")


def test_cifar_python_missing_a_batch_says_which(tmp_path: Path) -> None:
    # It said "no train/ and test/ class folders found", as if nothing CIFAR-like were there.
    whole = _make_cifar_python(tmp_path / "whole.tar.gz")
    cut = tmp_path / "no_test.tar"
    with tarfile.open(whole) as src, tarfile.open(cut, "w") as out:
        for member in src.getmembers():
            if not member.name.endswith(("test_batch", "data_batch_3")):
                out.addfile(member, src.extractfile(member))
    assert _error(cut, tmp_path / "c") == (
        f"{cut}:cifar-10-batches-py: CIFAR-10 python batches incomplete, missing data_batch_3, test_batch"
    )


def test_cifar_python_refuses_foreign_pickles(tmp_path: Path) -> None:
    archive = _make_cifar_python(tmp_path / "cifar.tar.gz", test_batch=collections.OrderedDict(a=1))
    message = _error(archive, tmp_path / "c")
    assert "cifar-10-batches-py/test_batch" in message and str(archive) in message


# ------------------------------------------------------------------------------------------- errors


def test_error_path_does_not_exist(tmp_path: Path) -> None:
    assert str(tmp_path / "nowhere") in _error(tmp_path / "nowhere", tmp_path / "c")


def test_error_directory_without_train_and_test(tmp_path: Path) -> None:
    _write_png(tmp_path / "src/cat/0.png", _pixels(0))
    message = _error(tmp_path / "src", tmp_path / "c")
    assert str(tmp_path / "src") in message and "train/" in message
    # What was found, where a split is named otherwise (it said only "no train/ and test/ found").
    _write_png(tmp_path / "src/train/cat/0.png", _pixels(1))
    _write_png(tmp_path / "src/val/cat/0.png", _pixels(2))  # ImageNet's layout: not read as train/ alone
    message = _error(tmp_path / "src", tmp_path / "c")
    assert "; found only train/ and val/: the splits must be train/ and test/, side by side, in lower case" in message
    _write_png(tmp_path / "cased/wrap/Train/cat/0.png", _pixels(0))
    _write_png(tmp_path / "cased/wrap/Test/cat/0.png", _pixels(1))
    assert "; found only wrap/Test/ and wrap/Train/: the splits" in _error(tmp_path / "cased", tmp_path / "c")


def test_a_train_or_test_folder_alone_is_a_data_set_of_one_split(tmp_path: Path) -> None:
    # Own data often has no test split: train/ alone loads with an empty one (it was "no train/ and test/ class
    # folders found"), which only --holdout can fill; without it, one line says so.
    for i, name in enumerate(("b", "a")):
        for j in range(3):
            _write_png(tmp_path / f"src/wrap/train/{name}/{j}.png", _pixels(10 * i + j))
    dataset = load_dataset(str(tmp_path / "src"), data_dir=str(tmp_path / "c"))
    assert dataset.class_names == ("a", "b") and dataset.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert np.array_equal(dataset.train_images[0], _pixels(10)) and np.array_equal(dataset.train_images[3], _pixels(0))
    assert dataset.test_images.shape == (0, 32, 32, 3) and dataset.test_labels.dtype == np.int32
    assert len(list((tmp_path / "c").glob("*.npz"))) == 1  # cached, and read back whole from the cache
    _assert_same(load_dataset(str(tmp_path / "src"), data_dir=str(tmp_path / "c")), dataset)
    # written as an image-folder tar (scripts/write_dataset.py) it is the same one-split data set again
    copy = write_image_folder(dataset, tmp_path / "copy.tar.gz")
    _assert_same(load_dataset(str(copy), data_dir=str(tmp_path / "c2")), dataset)
    with pytest.raises(DataError, match=r"^the data has no test split \(its folder holds train/ alone\): train "
                                        r"with --holdout N to evaluate on N held-out training images instead$"):
        hold_out(dataset, 0)
    held = hold_out(dataset, 2)
    assert (len(held.train_labels), len(held.test_labels), sorted(held.test_labels.tolist())) == (4, 2, [0, 1])
    # test/ alone: a data set to score a trained run on (scripts/evaluate.py); nothing to hold out of.
    (tmp_path / "src/wrap/train").rename(tmp_path / "src/wrap/test")
    dataset = load_dataset(str(tmp_path / "src"), data_dir=str(tmp_path / "c"))
    assert dataset.class_names == ("a", "b") and dataset.test_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert dataset.train_images.shape == (0, 32, 32, 3) and np.array_equal(dataset.test_images[0], _pixels(10))
    assert hold_out(dataset, 0) is dataset
    with pytest.raises(DataError, match=r"^the data has no training split \(its folder holds test/ alone\) to hold"):
        hold_out(dataset, 2)


def test_a_split_alone_is_one_only_where_nothing_else_may_be_the_other(tmp_path: Path) -> None:
    # A lone train/ or test/ loads as one split only if no other folder may be meant as a split: beside it under
    # another name or case (val/, VAL/, training/), or elsewhere in the tree (a tar holding each in its own
    # folder); those are the error naming what was found. Each of these loaded as one split at first (review).
    for i, tree in enumerate((("train", "VAL"), ("training", "test"), ("train", "Validation"), ("a/train", "b/test"))):
        root = tmp_path / f"t{i}"
        for j, split in enumerate(tree):
            _write_png(root / "w" / split / "cat/0.png", _pixels(j))
        names = sorted(f"w/{split}/" for split in tree)
        if "/" in tree[0]:  # each split in its own folder, two levels down: found in a tar, which nests anywhere
            names = [f"cifar10-mini/{name}" for name in names]
            root = _make_tar(root, tmp_path / f"t{i}.tar")
        message = _error(root, tmp_path / "c")
        assert f"; found only {' and '.join(names)}: the splits must be train/ and test/, side by" in message, message
    # A split's broken link (an unmounted drive) would leave the other alone: an error, as for a class folder.
    _write_png(tmp_path / "link/train/cat/0.png", _pixels(0))
    (tmp_path / "link/test").symlink_to("/mnt/unmounted/test")
    assert _error(tmp_path / "link", tmp_path / "c") == (
        f"{tmp_path / 'link/test'}: a link to '/mnt/unmounted/test', which does not exist"
    )
    # Some of the CIFAR python batches beside a train/: that they are incomplete is the error, as before.
    (tmp_path / "link/test").unlink()
    (tmp_path / "link/data_batch_1").write_bytes(b"")
    assert "CIFAR-10 python batches incomplete, missing data_batch_2" in _error(tmp_path / "link", tmp_path / "c")


def test_error_directory_nested_too_deep_or_ambiguous(tmp_path: Path) -> None:
    _make_folder(tmp_path / "deep/a/b")  # directories: the dataset itself, or inside one wrapper folder
    assert "train/" in _error(tmp_path / "deep", tmp_path / "c")
    assert "(a folder is searched at its top and one level below)" in _error(tmp_path / "deep", tmp_path / "c")
    _make_folder(tmp_path / "two/first")
    _make_folder(tmp_path / "two/second")
    message = _error(tmp_path / "two", tmp_path / "c")
    assert "ambiguous" in message and "'first'" in message and "'second'" in message


def test_error_a_broken_link_where_an_image_or_a_class_folder_would_be(tmp_path: Path) -> None:
    # Skipped silently, they dropped an image or a whole class (shifting later labels); the tar of the same tree
    # already refused a link to a missing member. A broken link elsewhere (not data) is still ignored.
    expected = _make_folder(tmp_path / "src")
    (tmp_path / "src/latest").symlink_to(tmp_path / "gone")
    got = load_dataset(str(tmp_path / "src"), data_dir=str(tmp_path / "c"))
    assert got.class_names == expected.class_names and len(got.train_labels) == len(expected.train_labels)
    for link, target in (("train/cat/9.png", "/nonexistent.png"), ("train/zebra", "/mnt/unmounted/zebra")):
        (tmp_path / "src" / link).symlink_to(target)
        assert _error(tmp_path / "src", tmp_path / "c") == (
            f"{tmp_path / 'src' / link}: a link to {target!r}, which does not exist"
        )
        (tmp_path / "src" / link).unlink()


def test_error_a_plain_tar_cut_between_two_members(tmp_path: Path) -> None:
    # tarfile reads such a file to the cut without complaint (GNU tar lists it, exit 0): it loaded without the
    # images after the cut. Cut inside a member, or a cut .tar.gz, failed already.
    expected = _make_folder(tmp_path / "src")
    whole = _make_tar(tmp_path / "src", tmp_path / "whole.tar")
    _assert_same(load_dataset(str(whole), data_dir=str(tmp_path / "c")), expected)
    with tarfile.open(whole) as archive:
        images = [m for m in archive.getmembers() if m.name.lower().endswith((".png", ".jpg"))]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole.read_bytes()[: images[-1].offset])  # ends where the last image's header would start
    message = _error(cut, tmp_path / "c")
    assert message.startswith(f"{cut}: not a whole tar archive: it stops after ")
    assert message.endswith("members without the end-of-archive marker (cut off, e.g. an interrupted copy)")


def test_error_no_images(tmp_path: Path) -> None:
    for d in ("train/cat", "test/cat"):
        (tmp_path / "src" / d).mkdir(parents=True)
    (tmp_path / "src/train/cat/readme.txt").write_text("x")
    message = _error(tmp_path / "src", tmp_path / "c")
    assert str(tmp_path / "src/train") in message and "no images" in message


def test_error_test_split_without_images(tmp_path: Path) -> None:
    _write_png(tmp_path / "src/train/cat/0.png", _pixels(0))
    (tmp_path / "src/test/cat").mkdir(parents=True)
    assert str(tmp_path / "src/test") in _error(tmp_path / "src", tmp_path / "c")


def test_error_test_class_unknown_to_train(tmp_path: Path) -> None:
    _write_png(tmp_path / "src/train/cat/0.png", _pixels(0))
    _write_png(tmp_path / "src/test/dog/0.png", _pixels(1))
    assert "'dog'" in _error(tmp_path / "src", tmp_path / "c")


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_error_corrupt_image_names_the_file(tmp_path: Path, kind: str) -> None:
    _make_folder(tmp_path / "src")
    buffer = io.BytesIO()
    Image.fromarray(_pixels(3)).save(buffer, format="JPEG")
    payload = b"this is not a jpeg" if kind == "garbage" else buffer.getvalue()[: len(buffer.getvalue()) // 2]
    (tmp_path / "src/train/cat/7.jpg").write_bytes(payload)
    assert str(tmp_path / "src/train/cat/7.jpg") in _error(tmp_path / "src", tmp_path / "c")
    # The same file inside a tar is named by archive and member.
    archive = _make_tar(tmp_path / "src", tmp_path / "src.tar.gz")
    message = _error(archive, tmp_path / "c")
    assert str(archive) in message and "cifar10-mini/train/cat/7.jpg" in message


def test_error_wrong_image_size_names_the_file(tmp_path: Path) -> None:
    _make_folder(tmp_path / "src")
    _write_png(tmp_path / "src/test/dog/big.png", _pixels(0, (32, 33, 3)))
    message = _error(tmp_path / "src", tmp_path / "c")
    assert str(tmp_path / "src/test/dog/big.png") in message and "33x32" in message
    assert "expected 32x32 (the models and augmentation here are CIFAR-10's: resize the data set's images first)" \
        in message


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_error_invalid_tar(tmp_path: Path, kind: str) -> None:
    archive = tmp_path / "broken.tar.gz"
    if kind == "garbage":
        archive.write_bytes(b"definitely not a tar archive" * 100)
    else:
        _make_folder(tmp_path / "src")
        full = _make_tar(tmp_path / "src", tmp_path / "full.tar.gz").read_bytes()
        archive.write_bytes(full[: len(full) // 2])
    assert str(archive) in _error(archive, tmp_path / "c")


# --------------------------------------------------------------------------------------------- tfds


def test_tfds_mock_data(tmp_path: Path) -> None:
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        got = load_dataset("tfds", data_dir=str(tmp_path))
    for images, labels in ((got.train_images, got.train_labels), (got.test_images, got.test_labels)):
        assert images.shape == (12, 32, 32, 3) and images.dtype == np.uint8
        assert labels.shape == (12,) and labels.dtype == np.int32
        assert labels.min() >= 0 and labels.max() <= 9
    assert got.train_images.std() > 0  # mock images are random, not a constant fill
    assert got.class_names == CIFAR10_CLASSES
    import tensorflow as tf

    assert tf.config.get_visible_devices("GPU") == []


def test_tfds_splits_and_labels_are_read_as_served(tmp_path: Path) -> None:
    """Splits of different sizes with known contents: 12 training and 7 test images, each image's index in
    its first pixel (train 100 + i, test 200 + i) and its label another function of it, so swapped splits or
    labels read from anywhere else show (the random mock data above has equal splits and random labels)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    import tensorflow as tf

    sizes, first_pixel = {"train": 12, "test": 7}, {"train": 100, "test": 200}

    def label_of(split: str, i: int) -> int:
        return (3 * i + (1 if split == "test" else 0)) % 10

    def served(self, split, decoders=None, read_config=None, **kwargs):
        name = str(split)
        images = np.zeros((sizes[name], 32, 32, 3), np.uint8)
        images[:, 0, 0, 0] = first_pixel[name] + np.arange(sizes[name])
        labels = np.array([label_of(name, i) for i in range(sizes[name])], np.int64)
        return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})

    with tfds.testing.mock_data(as_dataset_fn=served):
        got = load_dataset("tfds", data_dir=str(tmp_path))
    for split, images, labels in (("train", got.train_images, got.train_labels),
                                  ("test", got.test_images, got.test_labels)):  # fmt: skip
        n = sizes[split]
        assert images.shape == (n, 32, 32, 3) and labels.dtype == np.int32
        assert images[:, 0, 0, 0].tolist() == [first_pixel[split] + i for i in range(n)]
        assert labels.tolist() == [label_of(split, i) for i in range(n)]


def test_damaged_tfds_shards_are_one_line(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A shard damaged on disk: the error sat between TF's own warning lines and carried the op's internal name
    ({{function_node __wrapped__IteratorGetNext...}} [Op:IteratorGetNext] name:)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    import tensorflow as tf

    shard = tmp_path / "cifar10-train.tfrecord-00000-of-00001"
    shard.write_bytes(b"\x07" * 4096)  # no valid record header

    def served(self, split, decoders=None, read_config=None, **kwargs):
        def example(record):
            return {"image": tf.zeros((32, 32, 3), tf.uint8), "label": tf.cast(tf.strings.length(record), tf.int64)}

        return tf.data.TFRecordDataset(str(shard)).map(example)

    with tfds.testing.mock_data(as_dataset_fn=served), pytest.raises(DataError) as error:
        load_dataset("tfds", data_dir=str(tmp_path))
    message = str(error.value)
    assert message.startswith("tfds cifar10 in ") and ": reading failed (" in message
    assert "corrupted record" in message or "truncated record" in message, message
    assert "{{" not in message and "[Op:" not in message and "\n" not in message
    from flax_resnet.data import _TF_LOAD_NOISE

    shown = [line for line in capfd.readouterr().err.splitlines() if not _TF_LOAD_NOISE.match(line)]
    assert shown == []  # TF's warnings about the failed read are not (its loading lines come from the import above)


def test_tfds_offline_and_unprepared_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorflow_datasets")

    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (test: offline)")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)  # offline on any machine: never downloads
    start = time.monotonic()
    message = _error("tfds", tmp_path / "empty")
    assert time.monotonic() - start < 60  # TFDS's own downloader would retry for minutes
    assert "--data" in message and "cifar-10-python.tar.gz" in message and str(tmp_path / "empty") in message


def test_tensorflow_s_loading_lines_are_told_from_other_output() -> None:
    from flax_resnet.data import _TF_LOAD_NOISE

    noise = [  # as TF 2.21 printed them on this machine (Xeon and EPYC), and TF's pre-absl format
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796506015.677519    2767 port.cc:153] oneDNN custom operations are on. You may see slightly "
        "different numerical results due to floating-point round-off errors from different computation orders.",
        "I0000 00:00:1796506063.082284    3132 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
        "available CPU instructions in performance-critical operations.",
        "To enable the following instructions: AVX2 AVX512F AVX512_VNNI FMA, in other operations, rebuild "
        "TensorFlow with the appropriate compiler flags.",
        "2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could not find cuda "
        "drivers on your machine, GPU will not be used.",
    ]
    kept = [
        "E0000 00:00:1758131045.203198 3722035 cuda_dnn.cc:8579] Unable to register cuDNN factory",
        "error: tfds cifar10 is not prepared in /root/tensorflow_datasets/cifar10/3.0.2",
        "/usr/lib/python3/site-packages/x.py:3: UserWarning: something the user should see",
        "Traceback (most recent call last):",
    ]
    assert [line for line in noise if not _TF_LOAD_NOISE.match(line)] == []
    assert [line for line in kept if _TF_LOAD_NOISE.match(line)] == []


# -------------------------------------------------------------------------------- device pipeline


def test_normalize_hand_computed() -> None:
    images = np.array([0, 51, 255], np.uint8)[:, None, None, None] * np.ones((1, 1, 1, 3), np.uint8)
    out = np.asarray(normalize(images))
    assert out.dtype == np.float32 and out.shape == (3, 1, 1, 3)
    # (v/255 - mean) / std with mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010):
    np.testing.assert_allclose(out[0, 0, 0], [-2.42907, -2.41825, -2.22139], atol=1e-5)
    np.testing.assert_allclose(out[1, 0, 0], [-1.44043, -1.41525, -1.22637], atol=1e-5)
    np.testing.assert_allclose(out[2, 0, 0], [2.51409, 2.59679, 2.75373], atol=1e-5)
    np.testing.assert_allclose(np.asarray(normalize(images[2:], mean=(0.5,) * 3, std=(0.5,) * 3)), 1.0)
    # Wider integers are no uint8 levels: 300 is (300/255 - mean)/std per channel, not level 255 of the last one.
    wide = np.asarray(normalize(np.full((1, 1, 1, 3), 300, np.uint16)))
    np.testing.assert_allclose(wide[0, 0, 0], [3.38641, 3.48180, 3.63169], atol=1e-5)


def test_augment_matches_brute_force_reference() -> None:
    images = _pixels(0, (2048, 32, 32, 3))
    out = np.asarray(augment_jit(jax.random.key(0), images))
    assert out.shape == images.shape and out.dtype == np.uint8
    assert_uniform_draws(*recover_windows(images, out, pad=4), pad=4)


def test_augment_pads_with_zeros_only_at_the_border() -> None:
    images = np.full((256, 32, 32, 3), 255, np.uint8)
    out = np.asarray(augment_jit(jax.random.key(1), images))
    assert (out[:, 4:28, 4:28] == 255).all()  # the centre never comes from padding
    assert set(np.unique(out)) == {0, 255}
    zeros = (out == 0).all(axis=-1)
    assert zeros.any(axis=(1, 2)).mean() > 0.5  # most crops are shifted and show some padding
    # Padding forms whole rows/columns: a pixel is zero iff its whole row or its whole column is zero.
    rows, cols = zeros.all(axis=2), zeros.all(axis=1)
    np.testing.assert_array_equal(zeros, rows[:, :, None] | cols[:, None, :])


def test_augment_is_deterministic_and_jittable() -> None:
    images = _pixels(1, (16, 32, 32, 3))
    a = np.asarray(augment(jax.random.key(5), images))  # eager
    np.testing.assert_array_equal(a, np.asarray(augment(jax.random.key(5), images)))
    assert not np.array_equal(a, np.asarray(augment(jax.random.key(6), images)))
    np.testing.assert_array_equal(a, np.asarray(augment_jit(jax.random.key(5), images)))
    np.testing.assert_array_equal(a, np.asarray(jax.jit(augment)(jax.random.key(5), images)))


def test_augment_without_pad_or_flip_is_identity_and_pad_2_is_exact() -> None:
    images = _pixels(2, (16, 32, 32, 3))
    same = np.asarray(augment_jit(jax.random.key(0), images, pad=0, flip=False))
    np.testing.assert_array_equal(same, images)
    out = np.asarray(augment_jit(jax.random.key(3), images, pad=2, flip=False))
    _, _, flipped = recover_windows(images, out, pad=2)  # each output one window of the 2-padded image
    assert not flipped.any()


def test_epoch_order_is_a_deterministic_permutation() -> None:
    a = epoch_order(0, 3, 1000)
    np.testing.assert_array_equal(np.sort(a), np.arange(1000))
    np.testing.assert_array_equal(a, epoch_order(0, 3, 1000))
    assert not np.array_equal(a, epoch_order(0, 4, 1000))
    assert not np.array_equal(a, epoch_order(1, 3, 1000))


def test_train_batch_indices_drop_the_last_partial_batch() -> None:
    batches = train_batch_indices(seed=7, epoch=2, n=1000, batch_size=128)
    assert batches.shape == (7, 128) and batches.dtype == np.int32
    flat = batches.ravel()
    assert len(np.unique(flat)) == 896 and flat.min() >= 0 and flat.max() < 1000
    np.testing.assert_array_equal(flat, epoch_order(7, 2, 1000)[:896])
    assert train_batch_indices(0, 0, 256, 128).shape == (2, 128)
    assert train_batch_indices(0, 0, 100, 128).shape == (0, 128)


@pytest.mark.parametrize(("n", "batch_size", "steps"), [(1000, 128, 8), (1024, 128, 8), (5, 8, 1), (0, 8, 0)])
def test_eval_batches_cover_every_index_once(n: int, batch_size: int, steps: int) -> None:
    indices, mask = eval_batches(n, batch_size)
    assert indices.shape == mask.shape == (steps, batch_size)
    assert indices.dtype == np.int32 and mask.dtype == np.float32
    assert mask.sum() == n
    np.testing.assert_array_equal(np.sort(indices[mask == 1]), np.arange(n))
    assert (indices[mask == 0] == 0).all() and set(np.unique(mask)) <= {0.0, 1.0}


# ---------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not REAL_TAR.is_file():
        pytest.skip(f"real CIFAR-10 copy not found at {REAL_TAR}")
    return tmp_path_factory.mktemp("real_cifar_cache")


@pytest.fixture(scope="module")
def real_data(real_cache: Path) -> Dataset:
    start = time.perf_counter()
    dataset = load_dataset(str(REAL_TAR), data_dir=str(real_cache))
    print(f"first load (decode) of {REAL_TAR.name}: {time.perf_counter() - start:.1f} s")
    return dataset


@pytest.mark.realdata
def test_real_data_sizes_and_classes(real_data: Dataset) -> None:
    assert real_data.class_names == CIFAR10_CLASSES
    assert real_data.train_images.shape == (50_000, 32, 32, 3) and real_data.train_images.dtype == np.uint8
    assert real_data.test_images.shape == (10_000, 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(real_data.train_labels, minlength=10), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(real_data.test_labels, minlength=10), [1000] * 10)


@pytest.mark.realdata
def test_real_data_test_mean(real_data: Dataset) -> None:
    mean = real_data.test_images.reshape(-1, 3).mean(axis=0, dtype=np.float64) / 255
    np.testing.assert_allclose(mean, (0.4943, 0.4853, 0.4508), atol=0.002)


@pytest.mark.realdata
def test_real_data_second_load_comes_from_cache(real_data: Dataset, real_cache: Path) -> None:
    start = time.perf_counter()
    again = load_dataset(str(REAL_TAR), data_dir=str(real_cache))
    print(f"second load (cache) of {REAL_TAR.name}: {time.perf_counter() - start:.1f} s")
    assert again.class_names == real_data.class_names
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        assert np.array_equal(getattr(again, field), getattr(real_data, field)), field


# ------------------------------------------------------------------------------------- cutout, hold-out


def cutout_keep_reference(centers: np.ndarray, size: int, h: int, w: int) -> np.ndarray:
    """Pixel by pixel: erased iff its row and its column lie in [center - size//2, center - size//2 + size)."""
    keep = np.ones((len(centers), h, w), bool)
    for k, (cy, cx) in enumerate(centers):
        for i in range(h):
            for j in range(w):
                if cy - size // 2 <= i < cy - size // 2 + size and cx - size // 2 <= j < cx - size // 2 + size:
                    keep[k, i, j] = False
    return keep


CUTOUT_CENTERS = np.array([[0, 0], [31, 31], [16, 16], [3, 28], [8, 8], [20, 0]])


@pytest.mark.parametrize("size", [16, 8, 7, 1])
def test_cutout_keep_matches_pixelwise_reference(size: int) -> None:
    got = np.asarray(cutout_keep(CUTOUT_CENTERS, size, 32, 32))
    np.testing.assert_array_equal(got, cutout_keep_reference(CUTOUT_CENTERS, size, 32, 32))
    # Hand counts for size 16: center 0 keeps rows 0..7 of the square (8), center 31 rows 23..31 (9), 3 -> 0..10.
    if size == 16:
        assert [int((~k).sum()) for k in got] == [8 * 8, 9 * 9, 16 * 16, 11 * 12, 16 * 16, 16 * 8]


def test_cutout_zeroes_normalized_pixels_at_uniform_centers() -> None:
    x = jax.numpy.ones((20000, 32, 32, 3))
    out = np.asarray(jax.jit(cutout, static_argnums=2)(jax.random.key(0), x, 16))
    assert set(np.unique(out)) == {0.0, 1.0}
    erased = out[..., 0] == 0
    assert (erased == (out == 0).all(-1)).all()  # all channels together
    # Expected erased share with centers uniform on 0..31: E[rows] * E[cols] / 32^2, rows(c) = |[c-8, c+8) n [0, 32)|.
    rows = np.mean([min(c + 8, 32) - max(c - 8, 0) for c in range(32)])
    assert rows == 14.0
    np.testing.assert_allclose(erased.mean(), rows**2 / 1024, rtol=0.01)
    # Each image's square is where its own center says: recover centers from the erased boxes' rows and columns.
    any_rows, any_cols = erased.any(2), erased.any(1)
    first_row = np.argmax(any_rows, 1)
    assert set(first_row[any_rows[:, 0] == 0]) <= set(range(1, 24))  # unclipped tops: center - 8 in 1..23
    assert {int(c) for c in np.argmax(any_cols, 1)} == set(range(24))  # every left edge 0..23 occurs


def _labelled(n_per_class: list[int]) -> Dataset:
    labels = np.concatenate([np.full(n, c, np.int32) for c, n in enumerate(n_per_class)])
    labels = np.random.default_rng(3).permutation(labels)
    images = np.zeros((len(labels), 2, 2, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(len(labels)) % 256  # the image remembers its index
    images[:, 0, 0, 1] = np.arange(len(labels)) // 256
    test = np.full((5, 2, 2, 3), 7, np.uint8)
    names = tuple(f"c{c}" for c in range(len(n_per_class)))
    return Dataset(images, labels, test, np.zeros(5, np.int32), names)


def _index(images: np.ndarray) -> np.ndarray:
    return images[:, 0, 0, 0].astype(int) + 256 * images[:, 0, 0, 1].astype(int)


@pytest.mark.parametrize("n, quotas", [(500, [50] * 10), (13, [2, 2, 2] + [1] * 7)])
def test_hold_out_is_stratified_disjoint_and_fixed(n: int, quotas: list[int]) -> None:
    full = _labelled([300] * 10)
    split = hold_out(full, n)
    assert np.bincount(split.test_labels, minlength=10).tolist() == quotas
    held, kept = _index(split.test_images), _index(split.train_images)
    assert len(held) == n and len(kept) == 3000 - n
    assert sorted([*held, *kept]) == list(range(3000))  # a partition of the training images
    assert (np.diff(held) > 0).all() and (np.diff(kept) > 0).all()  # both keep the original order
    np.testing.assert_array_equal(split.test_labels, full.train_labels[held])
    np.testing.assert_array_equal(split.train_labels, full.train_labels[kept])
    np.testing.assert_array_equal(_index(hold_out(full, n).test_images), held)  # the same split every time
    assert hold_out(full, 0) is full


@pytest.mark.parametrize("n, quotas", [(8, [6, 2]), (5, [4, 1])])
def test_hold_out_gives_each_class_its_share(n: int, quotas: list[int]) -> None:
    # Classes of 30 and 10 images: shares 3/4 and 1/4 of n; 5 -> 3.75 / 1.25, the remainder to the larger one.
    assert np.bincount(hold_out(_labelled([30, 10]), n).test_labels).tolist() == quotas


def test_hold_out_depends_on_the_images_not_their_order() -> None:
    # Another copy of the same data in another order (TFDS, the pickles, an image folder) holds out the same
    # images; the run's seed plays no part either.
    full = _labelled([300] * 10)
    perm = np.random.default_rng(8).permutation(3000)
    shuffled = dataclasses.replace(full, train_images=full.train_images[perm], train_labels=full.train_labels[perm])
    held, held_shuffled = hold_out(full, 500), hold_out(shuffled, 500)
    assert sorted(_index(held.test_images)) == sorted(_index(held_shuffled.test_images))
    assert image_set_digest(held.test_images, held.test_labels) == image_set_digest(
        held_shuffled.test_images, held_shuffled.test_labels
    )
    other = held.test_images.copy()
    other[0, 1, 1, 2] += 1  # one pixel of one image
    assert image_set_digest(other, held.test_labels) != image_set_digest(held.test_images, held.test_labels)
    relabelled = held.test_labels.copy()
    relabelled[0] = (relabelled[0] + 1) % 10
    assert image_set_digest(held.test_images, relabelled) != image_set_digest(held.test_images, held.test_labels)


def test_hold_out_refuses_to_take_a_whole_class() -> None:
    # Shares of 6: 60/11 and 6/11, so floors 5 and 0 and the remainder (0.55 > 0.45) to the single image's class.
    with pytest.raises(DataError, match="takes 1 of the 1 training images of class 'c1'"):
        hold_out(_labelled([10, 1]), 6)
