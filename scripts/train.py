"""Train (or resume) a ResNet on CIFAR-10: `python scripts/train.py --arch resnet18 --workdir runs/r18`.

Every default lives in flax_resnet/config.py (the recipe); a flag given here overrides it. Rerunning the
same command with the same --workdir resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flax_resnet.config import RECIPE_VALUES, RECIPES, SCHEDULES, Config
from flax_resnet.models import ARCHS, VARIANTS


def _default(name: str) -> str:
    """Help text for a recipe-controlled default: 'default: X (recipe default), Y (recipe article)'."""
    parts = []
    for recipe in RECIPES:
        value = RECIPE_VALUES[recipe].get(name, getattr(Config, name))
        parts.append(f"{value} with --recipe {recipe}")
    return "default: " + ", ".join(parts)


def build_parser() -> argparse.ArgumentParser:
    """The train CLI's flags; every default is None so the recipe decides unless a flag is given."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], argument_default=None)
    p.add_argument("--arch", choices=tuple(ARCHS), help=f"network depth (default: {Config.arch})")
    p.add_argument("--variant", choices=VARIANTS, help=f"stem/shortcut/head variant (default: {Config.variant})")
    p.add_argument("--recipe", choices=RECIPES, default="default", help="hyperparameter recipe (default: default)")
    p.add_argument("--epochs", type=int, help=_default("epochs"))
    p.add_argument("--batch-size", type=int, help="global batch size; " + _default("batch_size"))
    p.add_argument("--lr", type=float, help="peak learning rate; " + _default("lr"))
    p.add_argument("--momentum", type=float, help=_default("momentum"))
    p.add_argument(
        "--nesterov", action=argparse.BooleanOptionalAction, help="Nesterov momentum; " + _default("nesterov")
    )
    p.add_argument("--weight-decay", type=float, help="added to the gradient, torch style; " + _default("weight_decay"))
    p.add_argument("--schedule", choices=SCHEDULES, help=_default("schedule"))
    p.add_argument("--label-smoothing", type=float, help=_default("label_smoothing"))
    p.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16"),
        help="compute dtype, auto: bf16 on GPU/TPU, fp32 on CPU; " + _default("dtype"),
    )
    p.add_argument("--conv-lowering", choices=("auto", "xla", "matmul"), help="convolution lowering (default: auto)")
    p.add_argument("--data", help="'tfds', an image-folder dir or .tar(.gz), or cifar-10-python.tar.gz (default: tfds)")
    p.add_argument("--data-dir", help="TFDS data dir, or the decoded-dataset cache dir for paths")
    p.add_argument("--workdir", help=f"run directory: config, metrics, plots, checkpoints (default: {Config.workdir})")
    p.add_argument("--seed", type=int, help=f"seed for init, batch order and augmentation (default: {Config.seed})")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps in total (smoke runs)")
    p.add_argument("--checkpoint-every", type=int, help="checkpoint every N steps (default: once per epoch)")
    p.add_argument("--no-progress", dest="progress", action="store_const", const=False, help="no tqdm progress bars")
    p.add_argument("--coordinator", help="multi-host: coordinator HOST:PORT")
    p.add_argument("--num-processes", type=int, default=1, help="multi-host: number of processes (default: 1)")
    p.add_argument("--process-id", type=int, default=0, help="multi-host: this process's id (default: 0)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse flags, build the config, train; user errors print one line and return 1."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("epochs", "batch_size", "max_steps", "checkpoint_every"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            parser.error(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if args.num_processes > 1 and not args.coordinator:
        parser.error("--num-processes > 1 needs --coordinator HOST:PORT")

    from flax_resnet.checkpoint import CheckpointError
    from flax_resnet.config import make_config
    from flax_resnet.data import DataError
    from flax_resnet.distributed import initialize
    from flax_resnet.train import RunError, train

    try:
        initialize(args.coordinator, args.num_processes, args.process_id)
        overrides = {
            k: v for k, v in vars(args).items() if k not in ("recipe", "coordinator", "num_processes", "process_id")
        }
        config = make_config(args.recipe, **overrides)
        train(config)
    except (DataError, CheckpointError, RunError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
