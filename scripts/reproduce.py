"""Run a named results plan, or summarize finished runs as the README's results table.

python scripts/reproduce.py run cpu-realdata --root runs/reproduce        # JAX + torch, 2 epochs on the CPU
python scripts/reproduce.py run cpu-budget --root runs/budget20         # benchmark, then 20 min of training each
python scripts/reproduce.py table runs/reproduce/* --device "2-core CPU"   # markdown table of final accuracies
python scripts/reproduce.py plans                                        # list the plans and their commands
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flax_resnet import results


def main(argv: list[str] | None = None) -> int:
    """Parse the sub-command; user errors print one line and return 1 (2 for bad flags)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run every command of a plan, one after the other")
    run.add_argument("plan", choices=tuple(results.PLANS))
    run.add_argument("--root", default="runs/reproduce", help="each run gets a workdir under this folder")
    run.add_argument("--data", default=results.CPU_DATA, help="data source passed to every run")
    run.add_argument("--dry-run", action="store_true", help="print the commands only")
    run.add_argument("--budget-minutes", type=float, default=20.0,
                     help="sized plans (%(default)s): minutes of training per framework")
    run.add_argument("--margin", type=float, default=0.1,
                     help="sized plans (%(default)s): fraction of the budget left unplanned, for the machine's drift")
    run.add_argument("--bench-json", help="sized plans: take the epochs from this benchmark JSON instead of "
                                          "measuring first")
    table = sub.add_parser("table", help="markdown table of finished runs")
    table.add_argument("workdirs", nargs="+", help="run workdirs (config.json + metrics.jsonl)")
    table.add_argument("--device", required=True, help="device label for the table, e.g. 'NVIDIA H200'")
    table.add_argument("--out", help="also write the table to this file")
    sub.add_parser("plans", help="print each plan's commands")
    args = p.parse_args(argv)

    if args.command == "plans":
        for name in results.PLANS:
            print(f"{name}:")
            if name in results.SIZED_PLANS:
                print(f"  python {shlex.join(_bench_command(name, 'runs/reproduce'))}")
                print("  then, with --epochs from that benchmark (the most that fit --budget-minutes):")
            for cmd in results.plan_commands(name, "runs/reproduce", results.CPU_DATA):
                print("  python " + shlex.join([os.path.relpath(cmd[0]), *cmd[1:]]))
        return 0
    if args.command == "run":
        if not args.budget_minutes > 0 or not 0 <= args.margin < 1:
            p.error("--budget-minutes must be > 0 and --margin in [0, 1)")
        epochs = None
        if args.plan in results.SIZED_PLANS:
            epochs = _sized_epochs(args)
            if epochs is None:
                return 0 if args.dry_run else 1
        for cmd in results.plan_commands(args.plan, args.root, args.data, epochs=epochs):
            print("$ python " + shlex.join(cmd), flush=True)
            if not args.dry_run:
                rc = subprocess.call([sys.executable, *cmd])
                if rc != 0:
                    print(f"error: command failed with exit code {rc}", file=sys.stderr)
                    return 1
        return 0
    dirs = [d for d in args.workdirs if Path(d, "config.json").exists()]  # a glob may catch log files too
    if not dirs:
        print("error: none of the given paths is a run workdir (config.json + metrics.jsonl)", file=sys.stderr)
        return 1
    try:
        text = results.results_table([results.summarize_run(d) for d in dirs], args.device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    return 0


def _bench_command(plan: str, root: str) -> list[str]:
    """The benchmark that sizes a plan, writing its records to ROOT/benchmark.json (path relative to the cwd)."""
    script = os.path.relpath(Path(__file__).resolve().parent / "benchmark.py")
    return [script, *results.SIZED_PLANS[plan], "--json", str(Path(root) / "benchmark.json")]


def _sized_epochs(args: argparse.Namespace) -> dict[str, int] | None:
    """Run (or read, --bench-json) the plan's benchmark and print what fits; None on an error or a dry run."""
    bench = args.bench_json
    if bench is None:
        cmd = _bench_command(args.plan, args.root)
        print("$ python " + shlex.join(cmd), flush=True)
        if args.dry_run:
            print("(dry run: the --epochs of the commands below come from that benchmark)")
            for cmd in results.plan_commands(args.plan, args.root, args.data):
                print("$ python " + shlex.join(cmd))
            return None
        Path(args.root).mkdir(parents=True, exist_ok=True)
        rc = subprocess.call([sys.executable, *cmd])
        if rc != 0:
            print(f"error: the benchmark failed with exit code {rc}", file=sys.stderr)
            return None
        bench = cmd[-1]
    budget = 60 * args.budget_minutes
    try:
        budgets = results.budget_epochs(json.loads(Path(bench).read_text()), budget, args.margin)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"error: cannot size the plan from {bench}: {e}", file=sys.stderr)
        return None
    for b in budgets.values():
        print(f"{b.framework}: slowest window {b.images_per_second:.0f} img/s -> {b.epoch_seconds:.1f} s per epoch "
              f"-> {b.epochs} epochs ({b.epochs * b.epoch_seconds / 60:.1f} of {args.budget_minutes:g} min planned, "
              f"margin {args.margin:g})", flush=True)
    return {name: b.epochs for name, b in budgets.items()}


if __name__ == "__main__":
    sys.exit(main())
