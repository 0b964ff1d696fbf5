"""Write a dataset (any source `--data` accepts) as an image-folder tar, lossless PNG or JPEG at a quality.

`python scripts/write_dataset.py ../shared/data/cifar10-jpeg.tar.gz /tmp/cifar10-q50.tar.gz --format jpeg
--quality 50`: what the JPEG-quality check of the results trains on (see results/gpu_2026-11-28/).
`--train-per-class 128 --test-per-class 100` writes a small real-data copy for quick runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flax_resnet.errors import ArgumentParser, exit_signal, terminate_as_interrupt


def main(argv: list[str] | None = None) -> int:
    """Parse flags, load the source, write the tar; bad data or paths print one line and return 1."""
    from flax_resnet.flags import positive_int

    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="dataset source: image folder, its tar, cifar-10-python.tar.gz, or tfds")
    p.add_argument("dest", help="output .tar.gz, .tgz or .tar")
    p.add_argument("--format", choices=("png", "jpeg"), default="png", help="image format (default: png)")
    p.add_argument("--quality", type=jpeg_quality, default=None,
                   help="JPEG quality 1..95 (default: 75; --format jpeg only)")
    p.add_argument("--data-dir",
                   help="decoded-dataset cache dir (default: ~/.cache/flax_resnet); for SOURCE tfds, TFDS's data dir")
    p.add_argument("--train-per-class", type=positive_int, help="keep the first N training images of each class")
    p.add_argument("--test-per-class", type=positive_int, help="keep the first N test images of each class")
    args = p.parse_args(argv)
    if args.quality is not None and args.format != "jpeg":
        p.error(f"--quality applies to --format jpeg only (PNG is lossless), not --format {args.format}")
    quality = 75 if args.quality is None else args.quality
    if args.source != "tfds" and _same_file(Path(args.source), Path(args.dest)):
        print(f"error: {args.dest}: is the source itself; writing it would replace the dataset", file=sys.stderr)
        return 1
    folder = Path(args.dest).expanduser().parent
    if not folder.is_dir():  # before the source's decode (25 s for CIFAR-10), not after
        why = "is not a directory" if folder.exists() else "no such directory"
        print(f"error: {args.dest}: {why} {str(folder)!r}", file=sys.stderr)
        return 1

    from flax_resnet import data as data_lib

    try:
        data_lib.tar_write_mode(args.dest)  # a bad name before the source's decode, not after
        with terminate_as_interrupt():
            dataset = data_lib.load_dataset(args.source, args.data_dir)
            dataset = data_lib.per_class_subset(dataset, args.train_per_class, args.test_per_class)
            out = data_lib.write_image_folder(dataset, args.dest, args.format, quality)
    except data_lib.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the partial output was removed, DEST is as it was
        print(f"error: stopped by signal {exit_signal(e)}; {args.dest} not written", file=sys.stderr)
        return 128 + exit_signal(e)
    print(f"wrote {out}: {len(dataset.train_labels)} train and {len(dataset.test_labels)} test images "
          f"({args.format}{f' quality {quality}' if args.format == 'jpeg' else ''})")
    return 0


def jpeg_quality(text: str) -> int:
    """argparse type: a JPEG quality in data.JPEG_QUALITIES, checked before the source's decode."""
    from flax_resnet.data import JPEG_QUALITIES

    value = int(text)
    if not JPEG_QUALITIES[0] <= value <= JPEG_QUALITIES[1]:
        raise argparse.ArgumentTypeError(f"must be in {JPEG_QUALITIES[0]}..{JPEG_QUALITIES[1]}, got {value}")
    return value


def _same_file(source: Path, dest: Path) -> bool:
    """Whether DEST names SRC itself (through links or another spelling), so writing it would replace SRC."""
    source, dest = source.expanduser(), dest.expanduser()
    try:
        return source.samefile(dest)  # also a hard link
    except OSError:  # one of them does not exist (yet)
        return source.resolve() == dest.resolve()


if __name__ == "__main__":
    sys.exit(main())
