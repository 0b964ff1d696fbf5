"""CIFAR-10 sources -> uint8 NHWC arrays; on-device augmentation; batch order.

Sources (`load_dataset(source)`):
  * ``"tfds"``: TensorFlow Datasets ``cifar10``, prepared once into `data_dir` (imports TensorFlow only then);
  * an image-folder tree ``<root>/{train,test}/<class>/<32x32 images>`` (IMAGE_EXTENSIONS, any number of classes),
    as a directory or as a tar (the tree may sit inside one wrapper folder), decoded once with PIL and cached as
    an .npz;
  * the original ``cifar-10-python.tar.gz`` archive (or its extracted ``cifar-10-batches-py`` folder).

The device side (`normalize`, `augment`) is pure jax on whole batches; the host side only chooses indices.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import glob
import hashlib
import importlib
import io
import json
import os
import pickle
import posixpath
import re
import socket
import sys
import tarfile
import tempfile
import time
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from flax_resnet.errors import one_line, run_quietly

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# The source article's constants, the ones torch CIFAR code copies. The std is not the pixels' own
# (0.2431, 0.2403, 0.2588 on the JPEG copy's test set, ../shared/data/README.md): it scales inputs by ~1.2, which
# training absorbs; code of one's own must use these numbers (exported files record them), not the data's.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)

IMAGE_SIZE = 32
# What torchvision's ImageFolder reads (its IMG_EXTENSIONS, matched case-insensitively), and the PIL formats
# they name (PPM covers .pgm).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_IMAGE_FORMATS = ("JPEG", "PNG", "PPM", "BMP", "TIFF", "WEBP")
_EXTENSIONS_TEXT = ", ".join(IMAGE_EXTENSIONS)
_SPLITS = ("train", "test")
_CIFAR_BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
_CIFAR_META = "batches.meta"
# Bump when the decoded content for the same source would change (invalidates old caches).
# 2: 16-bit greys scaled, transparency composited; tars: links followed, hidden paths skipped. 3: a class
# folder without images is refused (a cached copy of such a source would load without it). 4: images in a
# class folder's subfolders and every ImageFolder extension are read.
_CACHE_FORMAT = 4
# What TFDS 4.9 downloads for cifar10; probed once (no retries) before handing over to TFDS's own downloader,
# which retries for minutes when there is no network.
_TFDS_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
_OFFLINE_HINT = (
    "use an offline copy as the data source (--data PATH; write_dataset.py's SRC): an image-folder directory "
    "or .tar/.tar.gz of <root>/{train,test}/<class>/<images>, or the cifar-10-python.tar.gz archive"
)


class DataError(Exception):
    """User-facing data problem; str(e) is one line naming the path/file."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A whole image-classification dataset in host memory: uint8 NHWC images, int32 labels."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]


def load_dataset(
    source: str | os.PathLike[str] = "tfds", data_dir: str | os.PathLike[str] | None = None
) -> Dataset:
    """Load CIFAR-10 from "tfds" or a local path (image folder, its tar, or cifar-10-python.tar.gz).

    `data_dir` is the TFDS data dir for "tfds", and the .npz cache dir for paths (else ~/.cache/flax_resnet).
    """
    if str(source) == "tfds":
        return _load_tfds(None if data_dir is None else str(data_dir))
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    path = path.resolve()
    if path.is_dir():
        tree = _scan_directory(path)
        # Folders too: an empty class folder added later must reach the check in _assemble_folder.
        stamp: list = [*sorted((name, st.st_size, st.st_mtime_ns) for name, (_, st) in tree.files.items()),
                       sorted(tree.dirs)]  # fmt: skip
    else:
        tree = None
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns]
    cache_dir = Path(data_dir).expanduser() if data_dir is not None else Path.home() / ".cache/flax_resnet"
    cache_file = _cache_file(cache_dir, path, stamp)
    cached = _read_cache(cache_file)
    if cached is not None:
        _remove_stale_temps(cache_file)
        return cached
    if tree is None:
        tree = _read_tar(path)
    dataset = _assemble(tree)
    _write_cache(cache_file, dataset)
    return dataset


def tar_write_mode(dest: str | os.PathLike[str]) -> str:
    """tarfile's write mode for an output named .tar.gz/.tgz ("w:gz") or .tar ("w"); DataError for any other name,
    which would mislabel the file (checked before a long decode, too)."""
    name = Path(dest).name.lower()
    if not name.endswith((".tar.gz", ".tgz", ".tar")):
        raise DataError(f"{dest}: the output must be named .tar.gz, .tgz or .tar (an image-folder tar is written)")
    return "w" if name.endswith(".tar") else "w:gz"


JPEG_QUALITIES = (1, 95)  # what PIL writes with its standard tables (above 95 it stops using them)


def write_image_folder(
    dataset: Dataset, dest: str | os.PathLike[str], image_format: str = "png", quality: int = 75
) -> Path:
    """Write `dataset` as an image-folder tar (`<root>/{train,test}/<class>/NNNNN.<ext>`), atomically: gzipped
    for a `dest` ending in .tar.gz or .tgz, plain for .tar; any other name is refused (it would mislabel the file).

    PNG is lossless; JPEG (`quality` 1-95, 4:2:0 chroma, standard tables, like the shared copy) lets one measure
    what compression costs: e.g. re-encode the JPEG copy at lower qualities and train on each.
    """
    from PIL import Image

    image_format = image_format.lower()
    if image_format not in ("png", "jpeg"):
        raise DataError(f"image format must be png or jpeg, got {image_format!r}")
    if image_format == "jpeg" and not JPEG_QUALITIES[0] <= quality <= JPEG_QUALITIES[1]:
        raise DataError(f"JPEG quality must be in {JPEG_QUALITIES[0]}..{JPEG_QUALITIES[1]}, got {quality}")
    dest = Path(dest).expanduser()
    mode = tar_write_mode(dest)
    root = dest.name.split(".")[0] or "dataset"
    ext = "png" if image_format == "png" else "jpg"
    options = {"quality": quality, "subsampling": "4:2:0"} if image_format == "jpeg" else {}
    tmp = dest.with_name(f"{dest.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    _remove_dead_writers_temps(dest)
    try:
        with tarfile.open(tmp, mode) as archive:
            for split, images, labels in (
                ("train", dataset.train_images, dataset.train_labels),
                ("test", dataset.test_images, dataset.test_labels),
            ):
                for i, (image, label) in enumerate(zip(images, labels, strict=True)):
                    buffer = io.BytesIO()
                    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format=image_format.upper(), **options)
                    info = tarfile.TarInfo(f"{root}/{split}/{dataset.class_names[int(label)]}/{i:05d}.{ext}")
                    info.size = buffer.tell()
                    buffer.seek(0)
                    archive.addfile(info, buffer)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # on disk before the rename makes it the file: a crash leaves the old one or this
        os.replace(tmp, dest)
    except OSError as e:
        raise DataError(f"{dest}: cannot write ({e.strerror or one_line(e)})") from None
    finally:
        with contextlib.suppress(OSError):  # e.g. NotADirectoryError when DEST's folder is a file
            tmp.unlink(missing_ok=True)
    return dest


# ----------------------------------------------------------------------------------------------- tfds


# What TensorFlow's C++ libraries log to stderr as they load (absl-style INFO/WARNING lines such as "oneDNN
# custom operations are on", twice, and the notice about it), whatever TF_CPP_MIN_LOG_LEVEL says (TF 2.21).
_TF_LOAD_NOISE = re.compile(
    r"[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] "  # absl: "I0000 00:00:1796506015.677519    2767 port.cc:153] "
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IW] "  # TF's older format
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|To enable the following instructions: .* rebuild TensorFlow"
)


def _import_tensorflow() -> Any:
    """`import tensorflow`, without the lines its libraries log as they load (other output kept): the user
    asked for CIFAR-10, and one of those lines is the only one they should read when it fails."""
    tf, error = run_quietly(
        lambda: importlib.import_module("tensorflow"), grace_seconds=0, keep=lambda line: not _TF_LOAD_NOISE.match(line)
    )
    if error is not None:
        raise DataError(f"source 'tfds' needs TensorFlow ({error}); {_OFFLINE_HINT}")
    return tf


def _load_tfds(data_dir: str | None) -> Dataset:
    tf = _import_tensorflow()
    # TF only reads files here: never let it take accelerator memory (a RuntimeError means TF's devices were
    # already initialized by the caller; nothing more can be done then).
    with contextlib.suppress(RuntimeError):
        tf.config.set_visible_devices([], "GPU")
    import tensorflow_datasets as tfds

    builder = tfds.builder("cifar10", data_dir=data_dir)
    try:
        # Read first: a prepared copy, or tfds.testing.mock_data, serves the splits without preparing.
        train, test = builder.as_dataset(split=["train", "test"], shuffle_files=False)
    except AssertionError:  # TFDS's "could not find data in <data_dir>"
        _prepare_tfds(builder)
        train, test = builder.as_dataset(split=["train", "test"], shuffle_files=False)
    where = f"tfds cifar10 in {builder.data_dir}"
    train_images, train_labels = _tfds_arrays(tf, tfds, train, where)
    test_images, test_labels = _tfds_arrays(tf, tfds, test, where)
    return Dataset(train_images, train_labels, test_images, test_labels, CIFAR10_CLASSES)


def _prepare_tfds(builder) -> None:
    import requests

    target = builder.data_dir
    try:
        requests.head(_TFDS_CIFAR10_URL, timeout=10, allow_redirects=True)
    except requests.RequestException:
        raise DataError(
            f"tfds cifar10 is not prepared in {target} and cannot be downloaded (no network); {_OFFLINE_HINT}"
        ) from None
    try:
        builder.download_and_prepare()
    except Exception as e:  # any failure here is the same user-facing problem
        raise DataError(
            f"tfds cifar10: preparing {target} failed ({one_line(e)}); {_OFFLINE_HINT}"
        ) from None


def _tfds_arrays(tf, tfds, ds, where: str) -> tuple[np.ndarray, np.ndarray]:
    """A split's images and labels. A read that fails (damaged shards) is one line: TF's own log lines around
    it are dropped, and its message loses the op's internal name (`{{function_node ...}}`, `[Op:...]`)."""

    def read() -> tuple[list[np.ndarray], list[np.ndarray]]:
        images, labels = [], []
        for batch in tfds.as_numpy(ds.batch(1024)):  # batched: never `batch_size=-1`, one TF op per split
            images.append(np.asarray(batch["image"], np.uint8))
            labels.append(np.asarray(batch["label"], np.int32))
        return images, labels

    def describe(e: Exception) -> str:
        if not isinstance(e, tf.errors.OpError):  # not a read that failed: a bug, shown as such
            raise e
        return f"{type(e).__name__}: " + " ".join(re.sub(r"\{\{.*?\}\}|\[Op:\w+\]( name:)?", " ", e.message).split())

    result, error = run_quietly(read, grace_seconds=0, describe=describe)
    if error is not None:
        raise DataError(f"{where}: reading failed ({error})")
    images, labels = result
    if not images:
        raise DataError(f"{where}: a split has no examples")
    return np.concatenate(images), np.concatenate(labels)


# ------------------------------------------------------------------------------------- path sources


@dataclasses.dataclass
class _Tree:
    """A source's files by relative posix name; `read(name)` gives bytes, `where(name)` names it in errors."""

    origin: Path
    dirs: set[str]
    files: dict[str, tuple[Callable[[], bytes], os.stat_result | None]]
    is_tar: bool

    def read(self, name: str) -> bytes:
        try:
            return self.files[name][0]()
        except OSError as e:
            raise DataError(f"{self.where(name)}: cannot read ({one_line(e)})") from None

    def where(self, name: str) -> str:
        return f"{self.origin}:{name}" if self.is_tar else str(self.origin / name)


def _wanted(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    if base.startswith("."):  # hidden files, e.g. macOS "._x.jpg" resource forks inside tars
        return False
    return base.lower().endswith(IMAGE_EXTENSIONS) or base in _CIFAR_BATCHES or base == _CIFAR_META


def _dangling_matters(name: str) -> bool:
    """Whether a broken link at `name` stands where an image, a CIFAR batch, a class folder or a split would be (an
    unmounted drive's or a git-annex checkout's data); ImageFolder lists such a file and fails reading it."""
    parts = name.split("/")
    # a split's own link too: read without it, the tree would load as a data set of the other split alone
    return _wanted(name) or (len(parts) >= 2 and parts[-2] in _SPLITS) or (len(parts) <= 2 and parts[-1] in _SPLITS)


def _scan_directory(path: Path) -> _Tree:
    """List the relevant files below `path`: the levels where a dataset root may sit (it or one wrapper folder),
    and everything below a class folder (`[wrapper/]{train,test}/<class>/`), whose subfolders torchvision's
    ImageFolder reads too. Folder links are followed, as it follows them; a link back to a folder it is inside
    is an error (it would never end)."""
    dirs: set[str] = {""}
    files: dict[str, tuple[Callable[[], bytes], os.stat_result | None]] = {}

    def descend(parts: list[str]) -> bool:  # wrapper, split, class levels; then only inside a split's class
        return len(parts) < 3 or parts[0] in _SPLITS or parts[1] in _SPLITS

    def walk(directory: Path, prefix: str, inside: tuple[tuple[int, int], ...]) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as e:
            raise DataError(f"{directory}: cannot list ({one_line(e)})") from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            name = prefix + entry.name
            if entry.is_dir():
                dirs.add(name)
                if descend(name.split("/")):
                    st = entry.stat()
                    if (st.st_dev, st.st_ino) in inside:
                        raise DataError(f"{entry.path}: a link to a folder it is inside (a loop)")
                    walk(Path(entry.path), name + "/", (*inside, (st.st_dev, st.st_ino)))
            elif entry.is_file() and _wanted(name):
                files[name] = (Path(entry.path).read_bytes, entry.stat())
            elif entry.is_symlink() and not os.path.exists(entry.path) and _dangling_matters(name):
                # skipped, it would drop an image or a whole class (shifting the labels after it) without a word
                raise DataError(f"{entry.path}: a link to {os.readlink(entry.path)!r}, which does not exist")

    root = path.stat()
    walk(path, "", ((root.st_dev, root.st_ino),))
    return _Tree(path, dirs, files, is_tar=False)


def _read_tar(path: Path) -> _Tree:
    """Read every relevant member of a tar (any compression) into memory in one pass, without extracting.

    Loads as the same tree unpacked would: hidden paths skipped, hard and symbolic links followed (a link to a
    folder too, to a folder of the archive)."""
    dirs: set[str] = {""}
    files: dict[str, tuple[Callable[[], bytes], os.stat_result | None]] = {}
    folder_links: dict[str, str] = {}  # link name -> its target, if that turns out to be a folder
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                parts = [p for p in PurePosixPath(member.name).parts if p not in ("/", ".", "..")]
                if not parts or any(part.startswith(".") for part in parts):  # hidden, as a directory scan skips
                    continue
                name = "/".join(parts)
                for i in range(1, len(parts)):
                    dirs.add("/".join(parts[:i]))
                if member.isdir():
                    dirs.add(name)
                elif (member.isfile() or member.islnk() or member.issym()) and _wanted(name):
                    try:  # a link's content: tarfile follows hard and symbolic links to members of the archive
                        data = archive.extractfile(member).read()
                    except KeyError:
                        raise DataError(
                            f"{path}:{name}: a link to {member.linkname!r}, which is not in the archive"
                        ) from None
                    files[name] = (lambda data=data: data, None)
                elif member.issym():
                    folder_links[name] = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
            # tarfile stops without a word where the data ends; a tar cut between two members (an interrupted
            # copy of a plain .tar) would load with the images after the cut missing. Writers end it in zeros.
            archive.fileobj.seek(archive.offset)
            end = archive.fileobj.read(tarfile.BLOCKSIZE)
            if len(end) < tarfile.BLOCKSIZE or any(end):
                raise DataError(
                    f"{path}: not a whole tar archive: it stops after {len(archive.getmembers())} members without the "
                    "end-of-archive marker (cut off, e.g. an interrupted copy)"
                )
    except (tarfile.TarError, EOFError, zlib.error, OSError, KeyError) as e:
        raise DataError(f"{path}: not a readable tar archive ({one_line(e)})") from None
    _follow_folder_links(path, dirs, files, folder_links)
    return _Tree(path, dirs, files, is_tar=True)


def _follow_folder_links(
    path: Path, dirs: set[str], files: dict[str, Any], links: dict[str, str]
) -> None:
    """Add each folder link's target's folders and files under the link's name too, links inside links
    included, as unpacking would show them; a link that leads back into itself is a DataError, as in a scan."""
    links = {link: "" if target == "." else target for link, target in links.items()}
    links = {link: target for link, target in links.items() if target in dirs}  # links to folders of the archive

    def under(name: str, folder: str) -> bool:
        return not folder or name == folder or name.startswith(folder + "/")

    def leads_to(target: str, link: str, seen: set[str]) -> bool:  # whether unpacking `target` reaches `link`
        if under(link, target):
            return True
        inner = [m for m in links if under(m, target) and m not in seen]
        seen.update(inner)
        return any(leads_to(links[m], link, seen) for m in inner)

    for link, target in sorted(links.items()):
        if leads_to(target, link, set()):
            raise DataError(f"{path}:{link}: a link to a folder it is inside (a loop)")
    grown = True
    while grown:  # to a fixed point: a link inside a linked folder shows up under both names
        grown = False
        for link, target in links.items():
            new_dirs = {link + d[len(target) :] for d in dirs if under(d, target)} - dirs
            new_files = {link + f[len(target) :]: v for f, v in files.items() if under(f, target)}
            new_files = {f: v for f, v in new_files.items() if f not in files}
            if new_dirs or new_files:
                dirs.update(new_dirs)
                files.update(new_files)
                grown = True


def _assemble(tree: _Tree) -> Dataset:
    """Find the dataset root inside `tree` (image folder or cifar-10-batches-py) and decode it."""
    candidates: list[tuple[int, str, str]] = []  # (depth, kind, root)
    # A directory may hold the dataset itself or in one wrapper folder; a tar may nest it anywhere.
    max_depth = None if tree.is_tar else 1
    for d in tree.dirs:
        depth = d.count("/") + 1 if d else 0
        if max_depth is not None and depth > max_depth:
            continue
        prefix = d + "/" if d else ""
        if all(prefix + s in tree.dirs for s in _SPLITS):
            candidates.append((depth, "folder", d))
        if all(prefix + b in tree.files for b in _CIFAR_BATCHES):
            candidates.append((depth, "cifar", d))
    batches = sorted(f for f in tree.files if posixpath.basename(f) in _CIFAR_BATCHES)
    split_like = _split_like(tree, max_depth)
    # One split alone: train/ to evaluate on --holdout images, test/ to score a run on; only where it is the
    # tree's one split-like folder, and no CIFAR batches say the tree is something else.
    if not candidates and not batches and len(split_like) == 1 and [*split_like.values()] in ([["train"]], [["test"]]):
        candidates = [(0, "folder", next(iter(split_like)))]
    if not candidates:
        if batches:  # some of the python pickles: say which are missing, not that nothing was found
            root = posixpath.dirname(batches[0])
            missing = [b for b in _CIFAR_BATCHES if posixpath.join(root, b) not in tree.files]
            place = tree.where(root) if root else str(tree.origin)
            raise DataError(f"{place}: CIFAR-10 python batches incomplete, missing {', '.join(missing)}")
        where = "" if tree.is_tar else " (a folder is searched at its top and one level below)"
        raise DataError(
            f"{tree.origin}: no train/ and test/ class folders found{where}{_half_found(split_like)} "
            "(expected <root>/{train,test}/<class>/<images>, or cifar-10-python.tar.gz)"
        )
    candidates.sort()
    if len(candidates) > 1 and candidates[0][0] == candidates[1][0]:
        roots = ", ".join(repr(c[2] or ".") for c in candidates if c[0] == candidates[0][0])
        raise DataError(f"{tree.origin}: ambiguous, several dataset roots at the same depth: {roots}")
    _, kind, root = candidates[0]
    return _assemble_cifar(tree, root) if kind == "cifar" else _assemble_folder(tree, root)


# Folder names that mean a split in some layout (ImageNet's val/, "training", any case): beside a lone train/ or
# test/ they may be the other split under another name, so that tree is an error naming them, not one split.
_SPLIT_LIKE = {"train", "test", "val", "valid", "validation", "training", "testing", "eval", "evaluation", "dev"}


def _split_like(tree: _Tree, max_depth: int | None) -> dict[str, list[str]]:
    """Each folder (at most `max_depth` deep, not itself inside a split) -> its subfolders named like a split."""
    found: dict[str, list[str]] = {}
    for d in sorted(tree.dirs):
        parent, name = posixpath.split(d)
        depth = parent.count("/") + 1 if parent else 0
        if not d or name.lower() not in _SPLIT_LIKE or (max_depth is not None and depth > max_depth):
            continue
        if not any(part.lower() in _SPLIT_LIKE for part in parent.split("/")):  # a class named "test" is no split
            found.setdefault(parent, []).append(name)
    return found


def _half_found(found: dict[str, list[str]]) -> str:
    """'; found only ...': the split-like folders (`_split_like`) of a tree without a train/ and test/ side by side
    (one of them beside val/ or Train/, or each in another folder), what the user most likely meant."""
    names = [f"{p}/{n}/" if p else f"{n}/" for p in sorted(found, key=lambda p: (p.count("/"), p)) for n in found[p]]
    if not names:
        return ""
    shown = " and ".join(names[:4]) + (f" (and {len(names) - 4} more)" if len(names) > 4 else "")
    return f"; found only {shown}: the splits must be train/ and test/, side by side, in lower case"


def _assemble_folder(tree: _Tree, root: str) -> Dataset:
    prefix = root + "/" if root else ""
    by_split: dict[str, dict[str, list[str]]] = {s: {} for s in _SPLITS}
    for name in tree.files:
        if not name.startswith(prefix):
            continue
        parts = name[len(prefix) :].split("/")
        if len(parts) >= 3 and parts[0] in by_split and parts[-1].lower().endswith(IMAGE_EXTENSIONS):
            by_split[parts[0]].setdefault(parts[1], []).append(name)
    split_dir = {s: tree.where(prefix + s) for s in _SPLITS}
    splits = [s for s in _SPLITS if prefix + s in tree.dirs]  # one alone: the other is empty (hold_out, data_problem)
    for split in splits:
        if not by_split[split]:
            raise DataError(f"{split_dir[split]}: no images ({_EXTENSIONS_TEXT}) in its class folders")
    # A class folder without images: torchvision's ImageFolder raises (on either split), and a train/ class
    # dropped here would shift every later label against it.
    for split in splits:
        below = f"{prefix}{split}/"
        folders = (d for d in tree.dirs if d.startswith(below) and "/" not in d[len(below) :])
        empty = sorted(d for d in folders if d[len(below) :] not in by_split[split])
        if empty:
            raise DataError(
                f"{tree.where(empty[0])}: class folder holds no images ({_EXTENSIONS_TEXT}), nor do its subfolders"
            )
    classes = tuple(sorted(by_split["train"] if "train" in splits else by_split["test"]))  # ImageFolder's: train/'s
    unknown = sorted(set(by_split["test"]) - set(classes))
    if unknown:
        twin = {unicodedata.normalize("NFC", c): c for c in classes}.get(unicodedata.normalize("NFC", unknown[0]))
        if twin is not None:  # e.g. a folder copied from macOS (NFD) beside one written elsewhere (NFC)
            raise DataError(
                f"{split_dir['test']}: class folder {unknown[0]!r} is train/'s {twin!r} in another Unicode "
                f"normalization form ({_form(unknown[0])} here, {_form(twin)} there); rename one to match the other"
            )
        raise DataError(f"{split_dir['test']}: class folder {unknown[0]!r} has no counterpart in train/")
    index = {c: i for i, c in enumerate(classes)}
    arrays = []
    for split in _SPLITS:
        # ImageFolder's order: by class, then by folder path (a class folder's own files before its subfolders'),
        # then by file name.
        named = ((index[c], n) for c, ns in by_split[split].items() for n in ns)
        names = sorted(named, key=lambda item: (item[0], *item[1].rsplit("/", 1)))
        images = np.empty((len(names), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        for i, (_, name) in enumerate(names):
            images[i] = _decode_image(tree.read(name), tree.where(name))
        arrays += [images, np.array([label for label, _ in names], np.int32)]
    return Dataset(*arrays, class_names=classes)


def printable(name: str) -> str:
    """A class name for display. A folder name that is no UTF-8 reaches Python as lone surrogates (kept in
    `class_names`, so that order and identity stay ImageFolder's and a written copy has the same bytes), which
    matplotlib and a strict stdout refuse; shown read as Latin-1, where every byte is a character, so that
    distinct folders keep distinct names (an old archive's 'K\xe4tze' shows as 'Kätze')."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("latin-1")
    return name


def _form(name: str) -> str:
    """Which Unicode normalization form `name` is in, for names that print alike but differ."""
    return next((form for form in ("NFC", "NFD") if unicodedata.is_normalized(form, name)), "mixed")


def check_scale(image: Any) -> None:
    """ValueError for 32-bit pixels (TIFF's integer mode I, float mode F): nothing says what range they span, so
    no 8-bit reading of them is right (an int32 image of 0..255 read as 16-bit came out near black). Call it on
    the opened file: a PIL copy (e.g. exif_transpose's) no longer knows its format."""
    if image.mode == "F" or (image.mode == "I" and image.format == "TIFF"):
        kind = "float" if image.mode == "F" else "integer"
        raise ValueError(f"32-bit {kind} pixels have no 8-bit scale to read them by; save it with 8 or 16 bits")


def rgb8(image: Any) -> np.ndarray:
    """(H, W, 3) uint8 pixels of a PIL image. 16-bit greyscale (PIL modes I;16*, and I from PGM/PPM, which PIL
    scales to 16 bits) is scaled to 8 bits, where PIL's own convert("RGB") clips it at 255 (a mid-grey 16-bit PNG
    would come out white); 32-bit pixels are refused (`check_scale`). Transparency is composited over the
    CIFAR-10 mean colour, which normalizes to ~0 (no signal), where convert("RGB") would show whatever colour the
    file stores under transparent pixels (often black)."""
    check_scale(image)
    if image.mode.startswith("I;16") or image.mode == "I":
        grey = np.clip(np.round(np.asarray(image, np.float64) / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"), np.float64)
        alpha = rgba[..., 3:] / 255.0
        background = 255.0 * np.asarray(CIFAR10_MEAN)
        return np.round(rgba[..., :3] * alpha + background * (1.0 - alpha)).astype(np.uint8)
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), np.uint8)


def _decode_image(data: bytes, where: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=_IMAGE_FORMATS) as image:
            if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                raise DataError(f"{where}: image is {image.size[0]}x{image.size[1]}, expected 32x32 (the models "
                                "and augmentation here are CIFAR-10's: resize the data set's images first)")
            image.load()
            return rgb8(image)
    except DataError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        detail = re.sub(r" ?<[\w.]+ object at 0x[0-9a-fA-F]+>", "", one_line(e))  # PIL names our BytesIO
        raise DataError(f"{where}: cannot decode image ({detail})") from None


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The CIFAR pickles hold dicts of lists and numpy arrays; refuse anything else (no arbitrary code)."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("_codecs", "encode"),  # how Python 3 writes bytes in protocol 2
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "numpy":
            return getattr(np, name)
        if module == "_codecs":
            return codecs.encode
        # The original archive (pickled under numpy 1) names numpy.core; numpy 2 keeps it in numpy._core.
        core = getattr(np, "_core", None) or np.core
        return core.multiarray._reconstruct


def _unpickle(tree: _Tree, name: str) -> dict:
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(tree.read(name)), encoding="bytes").load()
    except DataError:
        raise
    except Exception as e:  # a broken pickle can raise almost anything
        raise DataError(f"{tree.where(name)}: not a CIFAR-10 python batch ({one_line(e)})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{tree.where(name)}: not a CIFAR-10 python batch ({type(obj).__name__}, not dict)")
    return obj


def _cifar_batch(tree: _Tree, name: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(tree, name)
    where = tree.where(name)
    try:
        data = np.asarray(batch[b"data"])
        raw_labels = np.asarray(batch[b"labels"])
    except KeyError as e:
        raise DataError(f"{where}: CIFAR-10 batch lacks key {e.args[0]!r}") from None
    if raw_labels.size and not np.issubdtype(raw_labels.dtype, np.integer):  # 3.5 became 3 without a word
        example = raw_labels.flat[0].item()
        raise DataError(f"{where}: labels must be integers, got {raw_labels.dtype} (e.g. {example!r})")
    labels = raw_labels.astype(np.int64)
    pixels = 3 * IMAGE_SIZE * IMAGE_SIZE
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels or labels.shape != (len(data),):
        raise DataError(
            f"{where}: expected uint8 data (N, {pixels}) and N labels, got {data.dtype}{data.shape}"
        )
    images = data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)  # CHW rows -> NHWC
    return np.ascontiguousarray(images), labels.astype(np.int32)


def _assemble_cifar(tree: _Tree, root: str) -> Dataset:
    prefix = root + "/" if root else ""
    parts = [_cifar_batch(tree, prefix + b) for b in _CIFAR_BATCHES]
    train_images = np.concatenate([p[0] for p in parts[:-1]])
    train_labels = np.concatenate([p[1] for p in parts[:-1]])
    test_images, test_labels = parts[-1]
    classes = CIFAR10_CLASSES
    if prefix + _CIFAR_META in tree.files:
        names = _unpickle(tree, prefix + _CIFAR_META).get(b"label_names")
        if names:
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    for labels, name in ((train_labels, "data_batch_*"), (test_labels, "test_batch")):
        if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DataError(f"{tree.where(prefix + name)}: labels outside 0..{len(classes) - 1}")
    # As an image folder cannot hold an empty class: its copy by write_dataset.py would lose the class, and
    # every label after it would shift; and --holdout could take nothing from it.
    empty = np.flatnonzero(np.bincount(train_labels, minlength=len(classes)) == 0)
    if empty.size:
        raise DataError(f"{tree.where(prefix + 'data_batch_1')}: class {classes[empty[0]]!r} has no training images")
    return Dataset(train_images, train_labels, test_images, test_labels, classes)


# ---------------------------------------------------------------------------------------------- cache


def _cache_file(cache_dir: Path, source: Path, stamp: list) -> Path:
    """Cache name: the source's name, a hash of its absolute path, and a hash of path + sizes + mtimes."""
    path_key = hashlib.sha256(os.fsencode(source)).hexdigest()[:8]  # fsencode: any bytes a file name may hold
    state_key = hashlib.sha256(json.dumps([_CACHE_FORMAT, str(source), stamp]).encode()).hexdigest()[:16]
    safe_name = re.sub(r"[^A-Za-z0-9._-]", "_", source.name) or "root"
    return cache_dir / f"{safe_name}.{path_key}.{state_key}.npz"


def _read_cache(cache_file: Path) -> Dataset | None:
    if not cache_file.is_file():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as z:
            return Dataset(
                z["train_images"],
                z["train_labels"],
                z["test_images"],
                z["test_labels"],
                tuple(str(c) for c in z["class_names"]),
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # unreadable cache: decode the source again and overwrite it


def _write_cache(cache_file: Path, dataset: Dataset) -> None:
    """Write atomically (temp file + os.replace) and drop older caches and stale temp files of the same source."""
    tmp_name = None
    stem = _cache_stem(cache_file)
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache_file.parent, prefix=f"{stem}.", suffix=".tmp", delete=False) as f:
            tmp_name = f.name
            np.savez(
                f,
                train_images=dataset.train_images,
                train_labels=dataset.train_labels,
                test_images=dataset.test_images,
                test_labels=dataset.test_labels,
                class_names=np.array(dataset.class_names, dtype=str),
            )
        os.chmod(tmp_name, 0o644)  # NamedTemporaryFile creates 0600; a cache is as readable as its source
        os.replace(tmp_name, cache_file)
        tmp_name = None
        for old in cache_file.parent.glob(f"{glob.escape(stem)}.*.npz"):
            if old != cache_file:
                old.unlink(missing_ok=True)
        _remove_stale_temps(cache_file)
    except OSError as e:
        # one line, not a Python warning with its source location; the run goes on without the cache
        print(f"warning: could not write dataset cache {cache_file}: {one_line(e)}", file=sys.stderr)
    finally:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)


def _cache_stem(cache_file: Path) -> str:
    """'<name>.<path_key>': what every cache and temp file of one source path starts with."""
    return cache_file.name.rsplit(".", 2)[0]


def _remove_dead_writers_temps(dest: Path, age_seconds: float = 3600) -> None:
    """Remove `DEST.tmp-<host>-<pid>` files of writers that were killed (SIGKILL, a crash): this machine's whose
    process is gone, and any an hour untouched (a writer of another machine on a shared filesystem, whose
    process this one cannot see)."""
    here = socket.gethostname()
    for old in dest.parent.glob(f"{glob.escape(dest.name)}.tmp-*-*"):
        host, _, pid = old.name[len(dest.name) + 5:].rpartition("-")
        if not pid.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (host == here and not _running(int(pid))) or time.time() - old.stat().st_mtime > age_seconds:
                old.unlink()


def _running(pid: int) -> bool:
    """Whether a process `pid` runs on this machine (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(cache_file: Path, age_seconds: float = 3600) -> None:
    """Remove temp files that killed writers of this source left, once an hour old (a younger one may belong
    to a writer still at work); called on every cache write and hit, so leftovers go on a later run."""
    for old in cache_file.parent.glob(f"{glob.escape(_cache_stem(cache_file))}.*.tmp"):
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > age_seconds:
                old.unlink()


HOLDOUT_SEED = 20261128  # one fixed split for every run, so runs of a sweep are compared on the same images


def image_keys(images: np.ndarray, salt: bytes = b"") -> np.ndarray:
    """A (salted) 64-bit hash of each image's pixels: what an image is, whatever its place in the dataset."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(im.tobytes(), digest_size=8, key=salt).digest(), "little") for im in images],
        np.uint64,
    )


def image_set_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """A digest of a set of labelled images that does not depend on their order: the same set, the same digest."""
    keys = image_keys(images)
    order = np.lexsort((labels, keys))
    digest = hashlib.sha256(keys[order].tobytes())
    digest.update(np.asarray(labels, np.int64)[order].tobytes())
    return digest.hexdigest()[:16]


def data_record(dataset: Dataset) -> dict[str, Any]:
    """What a run records of its data, to know it again: the class names in label order and an
    `image_set_digest` of each split (0.4 s for 50,000 images)."""
    return {
        "class_names": list(dataset.class_names),
        "train_digest": image_set_digest(dataset.train_images, dataset.train_labels),
        "test_digest": image_set_digest(dataset.test_images, dataset.test_labels),
    }


def data_mismatch(recorded: Mapping[str, Any], record: Mapping[str, Any]) -> str | None:
    """Why the data a run recorded (`data_record`'s keys; files from before 2026-12-06 lack the digests) is not
    `record`'s, or None: going on from it would mix two data sets in one run's numbers, and a changed class
    order relabels every image silently."""
    classes = recorded.get("class_names")
    if classes is not None and list(classes) != list(record["class_names"]):
        return f"classes {name_list(classes)}; this data's: {name_list(record['class_names'])}"
    for split in ("train", "test"):
        digest = recorded.get(f"{split}_digest")
        if digest is not None and digest != record[f"{split}_digest"]:
            return f"other {split} images or labels"
    return None


def name_list(names: Sequence[str], shown: int = 12) -> str:
    """Class names for a one-line message: the first `shown`, then how many more."""
    more = f", ... ({len(names) - shown} more)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def hold_out(dataset: Dataset, n: int) -> Dataset:
    """A copy whose test split is `n` training images (stratified by class) and whose train split is the rest.

    For choosing a recipe without looking at the test set: evaluation then measures the held-out images.
    Each class gives its share of `n` (largest remainder), and which of its images go depends only on their
    pixels and HOLDOUT_SEED: never on the run's seed, nor on the order of the images, so another copy of the
    same data (TFDS, the python pickles, an image folder) holds out the same images. Both splits keep their
    order. n == 0 returns `dataset` itself; a data set without a test split (an image folder of train/ alone)
    needs n > 0: DataError. Held-out images are its evaluation images, and a run never has others.
    """
    if n < 0:
        raise ValueError(f"holdout must be >= 0, got {n}")
    if n > 0 and not len(dataset.train_labels):
        raise DataError("the data has no training split (its folder holds test/ alone) to hold images out of")
    if n == 0 and not len(dataset.test_labels):
        raise DataError(
            "the data has no test split (its folder holds train/ alone): train with --holdout N to evaluate on N "
            "held-out training images instead"
        )
    if n == 0:
        return dataset
    labels = dataset.train_labels
    counts = np.bincount(labels, minlength=len(dataset.class_names))
    quotas = n * counts // counts.sum()
    by_remainder = np.argsort(-(n * counts % counts.sum()), kind="stable")
    quotas[by_remainder[: n - quotas.sum()]] += 1
    keys = image_keys(dataset.train_images, HOLDOUT_SEED.to_bytes(8, "little"))
    order = np.lexsort((np.arange(len(labels)), keys))  # by key; identical images by position
    chosen = []
    for c, quota in enumerate(quotas):
        members = order[labels[order] == c]
        if quota >= len(members):
            raise DataError(
                f"holdout {n} takes {quota} of the {len(members)} training images of class "
                f"{dataset.class_names[c]!r}; hold out fewer"
            )
        chosen.append(members[:quota])
    mask = np.zeros(len(labels), bool)
    mask[np.concatenate(chosen)] = True
    return dataclasses.replace(
        dataset,
        train_images=dataset.train_images[~mask],
        train_labels=labels[~mask],
        test_images=dataset.train_images[mask],
        test_labels=labels[mask],
    )


def per_class_subset(dataset: Dataset, train_per_class: int | None, test_per_class: int | None) -> Dataset:
    """The first `train_per_class` / `test_per_class` images of each class (None: all), in their order.

    A small real-data copy for quick runs (scripts/write_dataset.py); a class with fewer images keeps all.
    """

    def first(images: np.ndarray, labels: np.ndarray, n: int | None) -> tuple[np.ndarray, np.ndarray]:
        if n is None:
            return images, labels
        if n < 1:
            raise ValueError(f"images per class must be >= 1, got {n}")
        rank = np.zeros(len(labels), np.int64)  # each image's position among the images of its class
        for c in np.unique(labels):
            members = labels == c
            rank[members] = np.arange(int(members.sum()))
        keep = rank < n
        return images[keep], labels[keep]

    train_images, train_labels = first(dataset.train_images, dataset.train_labels, train_per_class)
    test_images, test_labels = first(dataset.test_images, dataset.test_labels, test_per_class)
    return dataclasses.replace(
        dataset, train_images=train_images, train_labels=train_labels, test_images=test_images, test_labels=test_labels
    )


# --------------------------------------------------------------------------------------- device side


def normalize(
    images: jax.Array, mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD
) -> jax.Array:
    """uint8 NHWC -> float32 (x/255 - mean)/std per channel: torchvision's ToTensor + Normalize, to the bit.

    uint8 pixels are looked up in a table of the 256 levels per channel, computed in numpy float32 as
    torchvision computes them: bitwise its values, and the same in any jitted program, where the arithmetic
    form rounds 1 ulp apart depending on what XLA fuses it with (it rewrites divisions as products or not).
    Other pixels (float 0..255, wider integers, whose values the table would clip and mix across channels),
    and a traced mean or std, take the arithmetic form.
    """
    images = jnp.asarray(images)
    channels = np.shape(mean)[-1] if np.ndim(mean) else 1  # np: mean may be a tuple or a tracer
    if channels != 1 and (images.ndim == 0 or images.shape[-1] != channels):  # NCHW failed in a broadcast
        raise ValueError(f"normalize takes channels-last images (N, H, W, {channels}) for {channels} channel means; "
                         f"got shape {tuple(images.shape)}")  # fmt: skip
    if images.dtype == jnp.uint8:
        try:
            levels = np.arange(256, dtype=np.float32)[:, None] / np.float32(255.0)
            table = (levels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)  # (256, channels)
        except jax.errors.TracerArrayConversionError:
            pass
        else:
            # One flat gather (level * channels + channel): as fast as the arithmetic on the CPU, where a
            # two-index gather took 9x as long.
            index = images.astype(jnp.int32) * table.shape[1] + jnp.arange(table.shape[1])
            return jnp.take(jnp.asarray(table.ravel()), index, mode="clip")
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def augment(rng: jax.Array, images: jax.Array, pad: int = 4, flip: bool = True) -> jax.Array:
    """Per image: random HxW crop of the zero-padded image, then horizontal flip with p=0.5 (uint8 in/out).

    The distribution of torchvision RandomCrop(H, padding=pad) + RandomHorizontalFlip, for a whole batch.
    """
    images = jnp.asarray(images)
    n, h, w, c = images.shape
    crop_key, flip_key = jax.random.split(rng)
    offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * pad + 1)
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
        return lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

    out = jax.vmap(crop)(padded, offsets)
    if flip:
        flips = jax.random.bernoulli(flip_key, 0.5, (n,))
        out = jnp.where(flips[:, None, None, None], out[:, :, ::-1, :], out)
    return out


def cutout(rng: jax.Array, x: jax.Array, size: int) -> jax.Array:
    """Zero a size x size square at a uniformly random center in each NHWC image (clipped at the border).

    Applied to normalized images, so the square takes the dataset's mean colour (DeVries & Taylor 2017).
    """
    n, h, w, _ = x.shape
    centers = jax.random.randint(rng, (n, 2), 0, jnp.array([h, w]))
    return x * cutout_keep(centers, size, h, w)[..., None].astype(x.dtype)


def cutout_keep(centers: jax.Array, size: int, h: int, w: int) -> jax.Array:
    """(n, h, w) bool: False inside rows/columns [center - size//2, center - size//2 + size) of each image."""
    start = centers - size // 2
    rows = (jnp.arange(h) >= start[:, :1]) & (jnp.arange(h) < start[:, :1] + size)
    cols = (jnp.arange(w) >= start[:, 1:]) & (jnp.arange(w) < start[:, 1:] + size)
    return ~(rows[:, :, None] & cols[:, None, :])


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """A permutation of range(n) depending only on (seed, epoch), so all processes and device counts agree."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(n)


def train_batch_indices(seed: int, epoch: int, n: int, batch_size: int) -> np.ndarray:
    """(n // batch_size, batch_size) int32 example indices for one epoch; drops the last partial batch."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    steps = n // batch_size
    return epoch_order(seed, epoch, n)[: steps * batch_size].astype(np.int32).reshape(steps, batch_size)


def eval_batches(n: int, batch_size: int, order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices and float32 mask, both (ceil(n / batch_size), batch_size), covering 0..n-1 once each, in
    `order` (a permutation of 0..n-1; default 0..n-1).

    The last batch is padded with index 0 and mask 0, so every batch has one shape (one compilation).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    steps = -(-n // batch_size)
    indices = np.zeros(steps * batch_size, np.int32)
    mask = np.zeros(steps * batch_size, np.float32)
    indices[:n] = np.arange(n, dtype=np.int32) if order is None else order
    mask[:n] = 1.0
    return indices.reshape(steps, batch_size), mask.reshape(steps, batch_size)
