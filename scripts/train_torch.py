"""Train a PyTorch reference ResNet (CIFAR-10, 32x32 image folders) with the recipes, data, batch order of train.py.

python scripts/train_torch.py --arch resnet18 --data /path/to/cifar10.tar.gz --device cuda --amp
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flax_resnet.errors import ArgumentParser, exit_signal, terminate_as_interrupt
from flax_resnet.hugepages import reexec_with_hugepages  # stdlib only (the package imports its API lazily)

if __name__ == "__main__":  # malloc with huge pages (flax_resnet/hugepages.py): replaces this process once, before
    reexec_with_hugepages()  # the imports below, so that jax and flax are not loaded twice (~1.6 s)

from flax_resnet import flags
from flax_resnet.config import make_config
from flax_resnet.data import DataError


def build_parser() -> argparse.ArgumentParser:
    """The shared recipe flags (flax_resnet/flags.py) plus torch-only execution flags."""
    p = ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="There is no resume: a workdir that holds a torch run is refused (rerunning a finished command "
        "does nothing) unless --overwrite, which removes its files first. The run writes config.json, "
        "metrics.jsonl and model.safetensors (each atomically; the weights after every epoch).",
    )
    flags.add_training_flags(p, "torch_", "config, metrics, plots, model.safetensors")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format for the model and inputs")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast for the forward pass (cuda or cpu)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--overwrite", action="store_true", help="replace the torch run already in --workdir")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse flags, train, and turn user errors into one line on stderr (exit 2 for flags, 1 otherwise)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    flags.check_init_flags(parser, args)
    import torch

    from torch_ref.train import TorchOptions, TrainError, train

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    try:
        config = make_config(args.recipe, **flags.config_overrides(args))
    except ValueError as e:
        parser.error(str(e))
    options = TorchOptions(device=device, channels_last=args.channels_last, amp=args.amp, compile=args.compile)
    try:
        with terminate_as_interrupt():
            train(config, options, overwrite=args.overwrite)
    except (DataError, TrainError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. a workdir that cannot be written
        where = f"{e.filename}: " if e.filename else ""  # save_safetensors' errors name the path themselves
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: no resume in the reference trainer
        signum = exit_signal(e)
        print(f"error: stopped by signal {signum} (this trainer does not resume; model.safetensors, once written, "
              "holds the last finished epoch)", file=sys.stderr)  # fmt: skip
        return 128 + signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
