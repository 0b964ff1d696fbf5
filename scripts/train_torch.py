"""Train a PyTorch reference ResNet on CIFAR-10 with the same recipes, data and batch order as scripts/train.py.

python scripts/train_torch.py --arch resnet18 --data /path/to/cifar10.tar.gz --device cuda --amp
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flax_resnet.config import RECIPES, SCHEDULES, make_config
from flax_resnet.data import DataError
from torch_ref.models import ARCHS, VARIANTS


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text}")
    return value


def _smoothing(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line: scripts/train.py's flags plus torch-only execution flags."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="There is no resume: a run starts from scratch and overwrites config.json, metrics.jsonl and "
        "model.safetensors in --workdir (each written atomically; the checkpoint after every epoch).",
    )
    p.add_argument("--arch", choices=tuple(ARCHS), default="resnet18")
    p.add_argument("--variant", choices=VARIANTS, default="cifar")
    p.add_argument("--recipe", choices=RECIPES, default="default", help="defaults for the flags below")
    p.add_argument("--epochs", type=_positive_int)
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--lr", type=_non_negative_float, help="peak learning rate")
    p.add_argument("--momentum", type=_non_negative_float)
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--weight-decay", type=_non_negative_float)
    p.add_argument("--schedule", choices=SCHEDULES)
    p.add_argument("--label-smoothing", type=_smoothing)
    p.add_argument(
        "--data",
        default="tfds",
        help="'tfds', an image-folder directory or .tar(.gz) of one, or cifar-10-python.tar.gz",
    )
    p.add_argument("--data-dir", help="TFDS data dir for 'tfds'; decoded-array cache dir for paths")
    p.add_argument("--workdir", help="output folder (default runs/torch_<arch>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=_positive_int, help="stop after this many optimizer steps in total")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar (one summary line per epoch remains)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format for the model and inputs")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast for the forward pass (on cuda)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse flags, train, and turn user errors into one line on stderr (exit 2 for flags, 1 otherwise)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    import torch

    from torch_ref.train import TorchOptions, TrainError, train

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    try:
        config = make_config(
            args.recipe,
            arch=args.arch,
            variant=args.variant,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            momentum=args.momentum,
            nesterov=args.nesterov,
            weight_decay=args.weight_decay,
            schedule=args.schedule,
            label_smoothing=args.label_smoothing,
            data=args.data,
            data_dir=args.data_dir,
            workdir=args.workdir or f"runs/torch_{args.arch}",
            seed=args.seed,
            max_steps=args.max_steps,
            progress=not args.no_progress,
        )
    except ValueError as e:
        parser.error(str(e))
    options = TorchOptions(device=device, channels_last=args.channels_last, amp=args.amp, compile=args.compile)
    try:
        train(config, options)
    except (DataError, TrainError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. a workdir that cannot be written
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
