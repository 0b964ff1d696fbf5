"""Benchmark JAX vs PyTorch ResNet training/eval throughput in one process (see flax_resnet/benchmark.py).

python scripts/benchmark.py --arch resnet18 --variant cifar --batch-size 128 --dtypes float32 --json out.json
python scripts/benchmark.py --conv-table results/conv_shapes.md   # per-shape conv lowering timings
"""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flax_resnet.errors import ArgumentParser
from flax_resnet.hugepages import reexec_with_hugepages  # stdlib only (the package imports its API lazily)

if __name__ == "__main__":  # malloc with huge pages (flax_resnet/hugepages.py): replaces this process once, before
    reexec_with_hugepages()  # the imports below, so that jax and flax are not loaded twice (~1.6 s)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run the benchmark, print the table and optionally write JSON records."""
    from flax_resnet import flags
    from flax_resnet.conv import LOWERINGS
    from flax_resnet.models import ARCHS, BATCH_NORMS, DEFAULT_BATCH_NORM, VARIANTS

    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=tuple(ARCHS), default="resnet18", help="network depth (default: resnet18)")
    parser.add_argument("--variant", choices=VARIANTS, default="cifar", help="model variant (default: cifar)")
    parser.add_argument("--batch-size", type=flags.batch_size, default=128, help="images per step (default: 128)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma list of float32,bfloat16 (default: both)")
    parser.add_argument("--frameworks", default="jax,torch", help="comma list of jax,torch")
    parser.add_argument("--modes", default="jit,eager,compile", help="jit (jax), eager and compile (torch)")
    parser.add_argument("--steps", type=flags.positive_int, default=10, help="steps per timed window (default: 10)")
    parser.add_argument(
        "--warmup", type=flags.positive_int, default=2,
        help="untimed steps before the windows (default: 2; torch.compile compiles in them, JAX before them)",
    )
    parser.add_argument(
        "--windows", type=flags.positive_int, default=5, help="timed windows; the median is reported (default: 5)"
    )
    parser.add_argument("--peak-tflops", type=flags.positive_float, default=None,
                        help="device peak, for the fraction column")
    parser.add_argument("--conv-lowering", default="auto", choices=LOWERINGS, help="JAX convolution lowering")
    parser.add_argument(
        "--batch-norm", default=DEFAULT_BATCH_NORM, choices=BATCH_NORMS,
        help="JAX train-mode BatchNorm (flax_resnet/models.py)",
    )
    parser.add_argument("--json", default=None, help="write the records to this JSON file")
    parser.add_argument(
        "--profile", default=None, metavar="DIR",
        help="also trace --steps train steps of each torch run and of the trainer's JAX call (jax.profiler / "
             "torch.profiler) into DIR and print where the device time goes (top kernels); the summaries go "
             "into the JSON records",
    )
    parser.add_argument(
        "--conv-table", default=None,
        help="instead: write the per-shape conv table (markdown; fp32, both stems' shapes of --arch, on the CPU)",
    )
    parser.add_argument(
        "--conv-repeats", type=flags.positive_int, default=5, help="interleaved repeats per shape (--conv-table)"
    )
    args = parser.parse_args(argv)
    if args.conv_table and (args.json or args.profile):  # it writes the table alone: the flag would do nothing
        parser.error(f"--conv-table writes only its table: drop {'--json' if args.json else '--profile'}")
    for flag, out in (("--json", args.json), ("--conv-table", args.conv_table)):  # before minutes of measuring
        if out and not Path(out).parent.is_dir():
            parser.error(f"{flag} {out}: no such directory {str(Path(out).parent)!r}")
        if out and Path(out).is_dir():
            parser.error(f"{flag} {out}: is a directory, not a file")
    created = None  # the first folder of --profile this run makes, removed again if the run is refused
    if args.profile:
        created = next((p for p in reversed([Path(args.profile), *Path(args.profile).parents]) if not p.exists()),
                       None)  # fmt: skip
        problem = _dir_problem(Path(args.profile))
        if problem:
            parser.error(f"--profile {args.profile}: {problem}")

    from flax_resnet import benchmark

    try:
        if args.conv_table:
            text = benchmark.conv_shape_report(
                args.arch, batch_size=args.batch_size, repeats=args.conv_repeats, log=lambda s: print(s, flush=True),
                out=args.conv_table,
            )
            return _write(args.conv_table, text)
        records = benchmark.run_benchmark(
            args.arch,
            args.variant,
            args.batch_size,
            dtypes=_csv(args.dtypes),
            frameworks=_csv(args.frameworks),
            modes=_csv(args.modes),
            steps=args.steps,
            warmup=args.warmup,
            windows=args.windows,
            peak_tflops=args.peak_tflops,
            conv_lowering=args.conv_lowering,
            batch_norm=args.batch_norm,
            profile_dir=args.profile,
            log=lambda s: print(s, file=sys.stderr, flush=True),
        )
    except ValueError as e:
        for folder in [Path(args.profile), *Path(args.profile).parents] if created is not None else []:
            with contextlib.suppress(OSError):  # the empty folders this run made; a trace written keeps its own
                folder.rmdir()
            if folder == created:
                break
        print(f"error: {e}", file=sys.stderr)
        return 2
    command = shlex.join(["python", "scripts/benchmark.py", *(sys.argv[1:] if argv is None else argv)])
    records = [{**r, "command": command} for r in records]
    print(benchmark.format_table(records))
    return _write(args.json, json.dumps(records, indent=2) + "\n") if args.json else 0


def _dir_problem(path: Path) -> str | None:
    """Why `path` cannot be a directory to write into, found by creating it before measuring; None if it can."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return "is a file, not a directory" if existing == path else f"{str(existing)!r} is a file, not a directory"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"cannot create it ({e.strerror or e})"
    return None


def _write(path: str, text: str) -> int:
    """Write an output file; a failure is one line and exit 1 (the table is already on stdout)."""
    try:
        Path(path).write_text(text)
    except OSError as e:
        print(f"error: {path}: cannot write ({e.strerror or e})", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
