"""Train (or resume) a ResNet on CIFAR-10 or a folder of 32x32 images: `python scripts/train.py --arch resnet18`.

Every default lives in flax_resnet/config.py (the recipe); a flag given here overrides it. Rerunning the
same command with the same --workdir resumes from the last checkpoint.
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
from flax_resnet.conv import LOWERINGS
from flax_resnet.models import BATCH_NORMS


def build_parser() -> argparse.ArgumentParser:
    """The shared recipe flags (flax_resnet/flags.py) plus the JAX trainer's own: dtype, lowering, multi-host."""
    p = ArgumentParser(description=__doc__.splitlines()[0], argument_default=None)
    flags.add_training_flags(p, "", "config, metrics, plots, checkpoints")
    p.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16"),
        help="compute dtype, auto: bf16 on GPU/TPU, fp32 on CPU; " + flags.recipe_default("dtype"),
    )
    p.add_argument(
        "--conv-lowering",
        choices=LOWERINGS,
        help="convolution lowering (default: auto; winograd, dense: where the geometry allows, auto elsewhere)",
    )
    p.add_argument(
        "--batch-norm",
        choices=BATCH_NORMS,
        help="train-mode BatchNorm: onepass (default: hand-written backward, one-pass statistics), fused "
        "(hand-written backward), autodiff; same function, different memory passes (flax_resnet/models.py)",
    )
    p.add_argument(
        "--checkpoint-every", type=flags.positive_int, help="checkpoint every N steps (default: at epoch ends)"
    )
    p.add_argument(
        "--checkpoint-seconds", type=flags.non_negative_float,
        help="epoch-end checkpoints at most once per this many seconds (default: 30; 0: every epoch)",
    )
    p.add_argument("--coordinator", help="multi-host: coordinator HOST:PORT")
    p.add_argument("--num-processes", type=flags.positive_int, default=1,
                   help="multi-host: number of processes (default: 1)")
    p.add_argument("--process-id", type=int, default=0, help="multi-host: this process's id (default: 0)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse flags, build the config, train; user errors print one line and return 1."""
    parser = build_parser()
    args = parser.parse_args(argv)
    flags.check_init_flags(parser, args)
    if args.num_processes > 1 and not args.coordinator:
        parser.error("--num-processes > 1 needs --coordinator HOST:PORT")
    if args.coordinator and args.num_processes == 1:  # each host would train a run of its own, without a word
        parser.error("--coordinator needs --num-processes N (the number of processes, > 1)")
    if not 0 <= args.process_id < args.num_processes:
        parser.error(f"--process-id must be in [0, {args.num_processes}) for --num-processes {args.num_processes}")
    host, _, port = (args.coordinator or "").rpartition(":")
    if args.num_processes > 1 and not (host and port.isdigit() and 0 < int(port) < 65536):
        parser.error(f"--coordinator wants HOST:PORT (a port in 1-65535), got {args.coordinator!r}")

    from flax_resnet.checkpoint import CheckpointError
    from flax_resnet.config import make_config
    from flax_resnet.data import DataError
    from flax_resnet.distributed import DistributedError, initialize
    from flax_resnet.train import RunError, train

    try:  # SIGTERM before the loop's own handler (data loading, compiling): one line, 143
        with terminate_as_interrupt():
            initialize(args.coordinator, args.num_processes, args.process_id)
            result = train(make_config(args.recipe, **flags.config_overrides(args)))
    except (DataError, CheckpointError, RunError, DistributedError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # before the loop's own handler, or a second signal: the last checkpoint stands
        print(f"error: stopped by signal {exit_signal(e)}; the same command resumes from the last checkpoint (starts "
              "afresh if none was saved yet)", file=sys.stderr)  # fmt: skip
        return 128 + exit_signal(e)
    if result["stopped"].startswith("signal"):  # stopped early on request: not a finished run
        return 128 + int(result["stopped"].split()[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
