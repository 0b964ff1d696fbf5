"""Evaluate a checkpoint on the test split (a --holdout run: its held-out images): loss, accuracy, per-class
accuracy and a confusion-matrix PNG.

`python scripts/evaluate.py runs/r18` (latest checkpoint) or `.../checkpoints/<step>`; also a torch_ref run's
workdir or a weights file from scripts/export.py, so both frameworks' runs are scored by the same code. A run
trained with `--holdout N` is scored on its N held-out training images, as during training, never on the test
split.
"""

from __future__ import annotations

import sys
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flax_resnet.errors import ArgumentParser

if TYPE_CHECKING:
    from flax_resnet.config import Config
    from flax_resnet.data import Dataset


def main(argv: list[str] | None = None) -> int:
    """Parse flags, evaluate, print the report; bad paths/data print one line and return 1."""
    p = ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("checkpoint", metavar="WORKDIR_OR_CHECKPOINT",
                   help="a run's workdir (JAX or torch_ref), one checkpoint step dir, or an exported .safetensors")
    p.add_argument("--data", help="dataset source (default: the one the run trained on, by its config.json; tfds "
                                  "for a weights file of CIFAR-10's classes, as it records no data source)")
    p.add_argument("--data-dir", help="TFDS data dir or decoded-dataset cache dir (default: the run's)")
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size (default: 256)")
    p.add_argument("--out", help="confusion-matrix PNG path (default: <workdir>/confusion_matrix.png; for a weights "
                                 "file F.safetensors: F.confusion_matrix.png beside it)")
    p.add_argument("--flip-tta", action="store_true",
                   help="also report horizontal-flip test-time augmentation (mean logits of image and mirror)")
    args = p.parse_args(argv)
    if args.batch_size <= 0:
        p.error(f"--batch-size must be positive, got {args.batch_size}")
    if args.out and not Path(args.out).parent.is_dir():
        p.error(f"--out {args.out}: no such directory {str(Path(args.out).parent)!r}")
    if args.out and (Path(args.out).suffix.lower() != ".png" or Path(args.out).is_dir()):
        p.error(f"--out {args.out}: must be a .png file path (the confusion matrix is written as PNG)")

    import numpy as np

    from flax_resnet import data as data_lib
    from flax_resnet.checkpoint import CheckpointError
    from flax_resnet.distributed import make_mesh, put_replicated
    from flax_resnet.packing import StatePacking
    from flax_resnet.reporting import plot_confusion
    from flax_resnet.train import evaluate, evaluate_flip_tta, held_out_mismatch, load_run, make_eval_fn

    try:
        run = load_run(args.checkpoint)
        exported = run.path.is_file() and not (run.directory / "torch_options.json").is_file()  # not a torch run's
        named = run.class_names != tuple(str(i) for i in range(run.config.num_classes))  # unnamed: old checkpoints
        # A weights file given itself (an export, or a torch run's model.safetensors) records no data source:
        # tfds's CIFAR-10 can only be its data if its classes are CIFAR-10's.
        if not args.data and Path(args.checkpoint).is_file() and named and run.class_names != data_lib.CIFAR10_CLASSES:
            raise data_lib.DataError(
                f"{run.path} records no data source, and its {run.config.num_classes} classes "
                f"({data_lib.name_list(run.class_names)}) are not CIFAR-10's: pass --data with their images"
            )
        source = args.data or run.config.data
        try:
            dataset = data_lib.load_dataset(source, data_dir(source, args.data_dir, run.config))
        except data_lib.DataError as e:
            hint = "" if args.data else (
                " (the data the run trained on, by its config, or tfds for a weights file of CIFAR-10's classes; "
                "--data points at another copy)"
            )
            raise data_lib.DataError(f"{e}{hint}") from None
        if run.config.holdout and not len(dataset.train_labels):
            raise data_lib.DataError(f"{source} holds test/ alone: this --holdout run is scored on its "
                                     f"{run.config.holdout} held-out images of the training data (train/)")  # fmt: skip
        if not run.config.holdout and not len(dataset.test_labels):
            raise data_lib.DataError(f"{source} holds train/ alone: a run trained without --holdout is scored on test "
                                     "images (test/)")  # fmt: skip
        if named and not len(dataset.train_labels) and set(dataset.class_names) < set(run.class_names):
            dataset = _onto_classes(dataset, run.class_names)  # test/ alone without some class's folder
        if len(dataset.class_names) != run.config.num_classes:
            raise data_lib.DataError(
                f"{source}: {len(dataset.class_names)} classes, but the checkpoint has {run.config.num_classes}"
            )
        if named and tuple(dataset.class_names) != run.class_names:  # labels would be scored as other classes
            raise data_lib.DataError(
                f"{source}: classes ({', '.join(dataset.class_names)}) are not the checkpoint's, in its order "
                f"({', '.join(run.class_names)})"
            )
        # A --holdout run chose its recipe without the test set; evaluating it stays on its held-out images.
        dataset = data_lib.hold_out(dataset, run.config.holdout)
        if run.config.holdout:
            digest = data_lib.image_set_digest(dataset.test_images, dataset.test_labels)
            why = held_out_mismatch(run.holdout_digest, digest)
            if why:
                raise data_lib.DataError(
                    f"{source}: its {run.config.holdout} held-out images are not the ones the run held out ({why})"
                )
        mesh = make_mesh()
        wanted = min(args.batch_size, len(dataset.test_labels))  # a larger batch would only be padding
        batch = -(-wanted // mesh.size) * mesh.size
        state = put_replicated(run.state, mesh)
        images = put_replicated(dataset.test_images, mesh)
        labels = put_replicated(dataset.test_labels, mesh)
        packing = StatePacking(state)
        eval_fn = make_eval_fn(run.graphdef, packing)
        packed = packing.pack_jit(state)
        ev = evaluate(eval_fn, packed, images, labels, batch, mesh, keep_logits=True)
        if args.flip_tta:
            tta = evaluate_flip_tta(
                eval_fn, packed, dataset.test_images, dataset.test_labels, batch, mesh, ev["logits"]
            )
    except (CheckpointError, data_lib.DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    k = run.config.num_classes
    preds = np.argmax(ev["logits"], -1)
    matrix = np.zeros((k, k), np.int64)
    np.add.at(matrix, (dataset.test_labels, preds), 1)
    print(f"checkpoint: {run.path} (step {run.step}, {run.config.arch}/{run.config.variant})")
    scored = f"holdout ({ev['count']} training images)" if run.config.holdout else f"test images: {ev['count']}"
    print(f"{scored} loss: {ev['loss']:.4f}  accuracy: {100 * ev['accuracy']:.2f}%")
    if args.flip_tta:
        print(f"with flip TTA:  loss: {tta['loss']:.4f}  accuracy: {100 * tta['accuracy']:.2f}%")
    names = [data_lib.printable(name) for name in run.class_names]
    width = max(_columns(n) for n in names)
    for c, name in enumerate(names):
        total = int(matrix[c].sum())
        acc = f"{100 * matrix[c, c] / total:6.2f}%" if total else "    --  "  # a class without test images
        print(f"  {name}{' ' * (width - _columns(name))}  {acc}  ({int(matrix[c, c])}/{total})")
    out = Path(args.out) if args.out else run.directory / "confusion_matrix.png"
    if not args.out and exported:
        out = run.path.with_name(f"{run.path.stem}.confusion_matrix.png")  # files that share a folder: one each
    try:
        plot_confusion(matrix, run.class_names, out)
    except OSError as e:
        print(f"error: {out}: cannot write the confusion matrix ({e.strerror or e})", file=sys.stderr)
        return 1
    print(f"confusion matrix: {out}")
    return 0


def _onto_classes(dataset: Dataset, names: tuple[str, ...]) -> Dataset:
    """A test split labelled by its own folders' names, relabelled by `names` (a run's classes, a superset): a
    folder of test/ alone takes its class numbers from its own folders, so one missing would shift the rest."""
    import dataclasses

    import numpy as np

    index = np.array([names.index(name) for name in dataset.class_names], np.int32)
    return dataclasses.replace(dataset, test_labels=index[dataset.test_labels], class_names=names)


def _columns(text: str) -> int:
    """Terminal columns of `text`: wide (CJK) characters take two, combining marks none; the per-class table
    aligns by these, not by len()."""
    wide = sum(unicodedata.east_asian_width(ch) in "WF" for ch in text)
    return len(text) + wide - sum(unicodedata.combining(ch) > 0 for ch in text)


def data_dir(source: str, given: str | None, config: Config) -> str | None:
    """--data-dir, else the run's when `source` is of the run's kind: the folder means TFDS's data for tfds and
    the decoded-dataset cache for a path, so a tfds run's folder is no cache for a path (or the reverse)."""
    if given is not None:
        return given
    return config.data_dir if (source == "tfds") == (config.data == "tfds") else None


if __name__ == "__main__":
    sys.exit(main())
