"""Run a named results plan, or summarize finished runs as the README's results table.

python scripts/reproduce.py run cpu-realdata --root runs/reproduce        # JAX + torch, 2 epochs on the CPU
python scripts/reproduce.py table runs/reproduce/* --device "2-core CPU"   # markdown table of final accuracies
python scripts/reproduce.py plans                                        # list the plans and their commands
"""

from __future__ import annotations

import argparse
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
    table = sub.add_parser("table", help="markdown table of finished runs")
    table.add_argument("workdirs", nargs="+", help="run workdirs (config.json + metrics.jsonl)")
    table.add_argument("--device", required=True, help="device label for the table, e.g. 'NVIDIA H200'")
    table.add_argument("--out", help="also write the table to this file")
    sub.add_parser("plans", help="print each plan's commands")
    args = p.parse_args(argv)

    if args.command == "plans":
        for name in results.PLANS:
            print(f"{name}:")
            for cmd in results.plan_commands(name, "runs/reproduce", results.CPU_DATA):
                print("  python " + shlex.join([os.path.relpath(cmd[0]), *cmd[1:]]))
        return 0
    if args.command == "run":
        for cmd in results.plan_commands(args.plan, args.root, args.data):
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


if __name__ == "__main__":
    sys.exit(main())
