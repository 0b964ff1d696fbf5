"""Run a named results plan, or summarize finished runs as the README's results table.

python scripts/reproduce.py run cpu-realdata --root runs/reproduce        # JAX + torch, 2 epochs on the CPU
python scripts/reproduce.py run cpu-budget --root runs/budget20         # calibrate, then 20 min of training each
python scripts/reproduce.py table runs/reproduce/*                      # markdown table of final accuracies
python scripts/reproduce.py plans                                        # list the plans and their commands
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flax_resnet import results
from flax_resnet.errors import ArgumentParser, exit_signal, terminate_as_interrupt


def main(argv: list[str] | None = None) -> int:
    """Parse the sub-command; user errors print one line and return 1 (2 for bad flags)."""
    p = ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run every command of a plan, one after the other")
    run.add_argument("plan", choices=tuple(results.PLANS))
    run.add_argument("--root", default="runs/reproduce",
                     help="each run gets a workdir under this folder (default: %(default)s)")
    run.add_argument("--data", default=results.CPU_DATA, help="data source passed to every run (default: %(default)s)")
    run.add_argument("--dry-run", action="store_true", help="print the commands only")
    run.add_argument("--budget-minutes", type=float,
                     help=f"sized plans: minutes of training per framework (default: {BUDGET_MINUTES:g})")
    run.add_argument("--margin", type=float,
                     help="sized plans: fraction of the budget left unplanned, for the machine's drift (default: "
                          f"{results.BUDGET_MARGIN:g})")
    run.add_argument("--rates", help="sized plans: FRAMEWORK=IMG_S,... (e.g. jax=800,torch=500) instead of "
                                     "calibration runs")
    table = sub.add_parser("table", help="markdown table of finished runs")
    table.add_argument("workdirs", nargs="+", help="run workdirs (config.json + metrics.jsonl)")
    table.add_argument("--device", help="device label for runs whose metrics.jsonl records none (made before "
                                        "2026-12-06), e.g. 'NVIDIA H200'")
    table.add_argument("--out", help="also write the table to this file")
    sub.add_parser("plans", help="print each plan's commands")
    args = p.parse_args(argv)

    if args.command == "plans":
        for name in results.PLANS:
            print(f"{name}:")
            if name in results.SIZED_PLANS:
                for cmd in results.calibration_commands(name, "runs/reproduce/calibrate", results.CPU_DATA):
                    print("  python " + shlex.join([os.path.relpath(cmd[0]), *cmd[1:]]))
                print("  then, with --epochs from those runs' img/s (the most that fit --budget-minutes):")
            for cmd in results.plan_commands(name, "runs/reproduce", results.CPU_DATA):
                print("  python " + shlex.join([os.path.relpath(cmd[0]), *cmd[1:]]))
        return 0
    if args.command == "run":
        try:
            with terminate_as_interrupt():
                return _run_plan(p, args)
        except KeyboardInterrupt as e:
            print(f"error: stopped by signal {exit_signal(e)}; the same command goes on with this plan (a JAX run "
                  "resumes from its checkpoint, an unfinished torch run starts again)", file=sys.stderr)  # fmt: skip
            return 128 + exit_signal(e)
    return _table(args)


def _run_plan(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """`run`: size the plan if it is sized, then run its commands one after the other; 1 when one fails."""
    budget_minutes = BUDGET_MINUTES if args.budget_minutes is None else args.budget_minutes
    margin = results.BUDGET_MARGIN if args.margin is None else args.margin
    if not 0 < budget_minutes <= 7 * 24 * 60 or not 0 <= margin < 1:
        p.error("--budget-minutes must be in (0, 10080] (a week) and --margin in [0, 1)")
    if Path(args.root).exists() and not Path(args.root).is_dir():
        p.error(f"--root {args.root} is a file, not a directory")
    epochs = None
    if args.plan in results.SIZED_PLANS:
        epochs = _sized_epochs(args, budget_minutes, margin)
        if epochs is None:
            return 1
        epochs = epochs or None  # {}: a dry run that showed the calibration runs; the plan follows, unsized
    for cmd in results.plan_commands(args.plan, args.root, args.data, epochs=epochs):
        workdir = _workdir(cmd)
        if _unfinished_torch_run(workdir):  # the torch trainer does not resume: rerunning the plan restarts it
            print(f"note: {workdir} holds an unfinished torch run; training it again (--overwrite)")
            cmd = [*cmd, "--overwrite"]
        print("$ python " + shlex.join(cmd), flush=True)
        if not args.dry_run:
            rc = _call(cmd)
            if rc != 0:
                print(f"error: command failed with exit code {rc}", file=sys.stderr)
                return 1
    return 0


def _table(args: argparse.Namespace) -> int:
    """`table`: the markdown table of the given workdirs, printed and optionally written to --out."""
    missing = [d for d in args.workdirs if not Path(d).exists()]
    if missing:  # a mistyped path would quietly leave its run out of the means
        print(f"error: no such workdir: {', '.join(missing)}", file=sys.stderr)
        return 1
    dirs, others, seen = [], [], set()
    for d in args.workdirs:
        if not Path(d, "config.json").exists():  # a glob may catch log files too: only folders get a note
            if Path(d).is_dir():
                others.append(d)
        elif Path(d).resolve() not in seen:  # the same run named twice (`run` and `run/`) is one run
            seen.add(Path(d).resolve())
            dirs.append(d)
    if not dirs:
        print("error: none of the given paths is a run workdir (config.json + metrics.jsonl)", file=sys.stderr)
        return 1
    if others:
        print(f"note: folders without a run (no config.json), left out: {', '.join(others)}", file=sys.stderr)
    summaries = []
    for d in dirs:
        try:  # a run that stopped early is in its row as unfinished; damaged files would leave it out unseen
            summaries.append(results.summarize_run(d))
        except ValueError as e:
            print(f"error: {e}; mend it or leave that workdir out", file=sys.stderr)
            return 1
    try:
        text = results.results_table(summaries, args.device)
    except results.RepeatedSeedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(text, end="")
    if args.out:
        try:
            Path(args.out).write_text(text)
        except OSError as e:
            print(f"error: {args.out}: cannot write the table ({e.strerror or e})", file=sys.stderr)
            return 1
    return 0


def _call(cmd: list[str]) -> int:
    """Run one plan command in its own session and return its exit code. Ctrl-C or SIGTERM is passed on to the
    trainer, once per signal (a trainer stops with a checkpoint on the first, at once on the second), and raised
    here once it has exited: the default killed it 0.25 s after Ctrl-C, and left it running on SIGTERM. (A
    signal in the trainer's first second or two, before it handles them, ends it at once; so does a hangup of
    the terminal, for this process only.)"""
    proc = subprocess.Popen([sys.executable, *cmd], start_new_session=True)  # the terminal's Ctrl-C: ours alone
    stopped = None
    while True:
        try:
            rc = proc.wait()
            break
        except KeyboardInterrupt as e:
            stopped = e
            proc.send_signal(exit_signal(e))
    if stopped is not None:
        raise stopped
    return rc


def _workdir(cmd: list[str]) -> Path:
    """The --workdir of a plan command (plan_commands gives every command one)."""
    return Path(cmd[cmd.index("--workdir") + 1])


def _unfinished_torch_run(workdir: Path) -> bool:
    """Whether `workdir` holds a torch run that stopped before its last epoch (or logged none)."""
    if not (workdir / "torch_options.json").is_file():
        return False
    files = (workdir / "config.json", workdir / "metrics.jsonl")
    if any(path.exists() and not os.access(path, os.R_OK) for path in files):
        return False  # unreadable here, maybe finished: the trainer's own refusal says so, and nothing is deleted
    if not files[0].is_file():
        return True  # killed before it wrote its config: no run to keep
    try:
        return results.summarize_run(workdir).final_test_acc is None  # no metrics yet: unfinished
    except ValueError:
        return False  # damaged files, maybe of a finished run: the trainer's own refusal says so, nothing is deleted


SIZED_FILE = "sized_epochs.json"  # under --root: the epochs a sized plan gave its runs, and the budget it used
BUDGET_MINUTES = 20.0  # of training per framework: the CPU budget


def _parse_rates(text: str) -> dict[str, float]:
    """'jax=800,torch=500' -> {'jax': 800.0, 'torch': 500.0}; ValueError on anything else."""
    rates = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        try:
            rate = float(value)
        except ValueError:
            rate = 0.0
        if name not in ("jax", "torch") or not 0 < rate < math.inf:
            raise ValueError(f"--rates wants FRAMEWORK=IMG_S items with jax or torch and a rate > 0, got {item!r}")
        if name in rates:
            raise ValueError(f"--rates gives {name} twice")
        rates[name] = rate
    return rates


def calibrate(
    plan: str, root: str | Path, data: str, extra: list[str] | None = None
) -> tuple[dict[str, float], int, int]:
    """Run each command of a sized plan for its calibration steps; ({framework: img/s}, batch size, training
    images of the data, as the JAX run's checkpoint records them)."""
    rates, batch, train_images = {}, results.plan_batch_size(plan), None
    for cmd in results.calibration_commands(plan, Path(root) / "calibrate", data, extra or []):
        workdir = _workdir(cmd)
        shutil.rmtree(workdir, ignore_errors=True)  # a fresh measurement: never a resumed or refused earlier one
        print("$ python " + shlex.join(cmd), flush=True)
        rc = _call(cmd)
        if rc != 0:
            raise ValueError(f"the calibration run failed with exit code {rc}")
        framework, rate, batch = results.calibrated_rate(workdir)
        rates[framework] = rate
        if framework == "jax":
            train_images = results.recorded_train_images(workdir)
    if train_images is None:
        raise ValueError("the calibration runs recorded no training-set size (a sized plan needs its JAX run)")
    return rates, batch, train_images


def _sized_epochs(args: argparse.Namespace, budget_minutes: float, margin: float) -> dict[str, int] | None:
    """Calibrate the plan (or take --rates) and print what fits `budget_minutes` less `margin`: {framework:
    epochs}; None on an error, {} on a dry run without --rates (the calibration runs are printed, not run).

    The counts are saved in ROOT/sized_epochs.json before any run starts, and a rerun into the same root takes
    them from there: rerunning the command then resumes the same runs (JAX) instead of re-sizing them.
    """
    saved = Path(args.root) / SIZED_FILE
    asked = {"budget_minutes": args.budget_minutes, "margin": args.margin}  # given on the command line, or None
    if saved.exists():
        if args.rates is not None:
            print(f"error: {saved} already sizes the runs of this root; use another --root for new rates",
                  file=sys.stderr)
            return None
        try:
            recorded = json.loads(saved.read_text())
            budget = {k: recorded.pop(k) for k in asked if k in recorded}  # not in files made before 2026-12-06
            epochs = {k: int(v) for k, v in recorded.items()}
            if set(epochs) != results.plan_frameworks(args.plan) or min(epochs.values()) < 1:
                raise ValueError(f"not one epoch count >= 1 per framework of {args.plan}")
        except (OSError, ValueError, AttributeError, TypeError) as e:
            print(f"error: {saved}: unusable ({e}); use another --root", file=sys.stderr)
            return None
        changed = [f"--{k.replace('_', '-')} {budget[k]:g}" for k, v in asked.items()
                   if v is not None and k in budget and v != budget[k]]  # fmt: skip
        if changed:  # the runs of this root were sized for the recorded budget: a new one would be ignored
            print(f"error: {saved} sized the runs of this root for {' '.join(changed)}; use another --root for "
                  "another budget", file=sys.stderr)  # fmt: skip
            return None
        print(f"epochs sized by an earlier run of this plan ({saved}): {json.dumps(epochs, sort_keys=True)}")
        return epochs
    try:
        if args.rates is not None:
            rates = _parse_rates(args.rates)
            batch, train_images = results.plan_batch_size(args.plan), results.CIFAR10_TRAIN_IMAGES
            print(f"(--rates: epochs of CIFAR-10's {train_images:,} training images)")
        elif args.dry_run:
            print("(dry run: the --epochs of the plan's commands come from these calibration runs)")
            for cmd in results.calibration_commands(args.plan, Path(args.root) / "calibrate", args.data):
                print("$ python " + shlex.join(cmd))
            return {}
        else:
            rates, batch, train_images = calibrate(args.plan, args.root, args.data)
        missing = results.plan_frameworks(args.plan) - set(rates)
        if missing:
            raise ValueError(f"no rate for {', '.join(sorted(missing))}")
        budgets = results.budget_epochs(rates, batch, 60 * budget_minutes, margin, train_images)
    except (OSError, ValueError) as e:
        print(f"error: cannot size the plan: {e}", file=sys.stderr)
        return None
    for b in budgets.values():
        print(f"{b.framework}: {b.images_per_second:.0f} img/s -> {b.epoch_seconds:.1f} s per epoch -> {b.epochs} "
              f"epochs ({b.epochs * b.epoch_seconds / 60:.1f} of {budget_minutes:g} min planned, margin "
              f"{margin:g})", flush=True)
    epochs = {name: b.epochs for name, b in budgets.items()}
    if not args.dry_run:
        saved.parent.mkdir(parents=True, exist_ok=True)
        tmp = saved.with_name(saved.name + ".tmp")
        record = {**epochs, "budget_minutes": budget_minutes, "margin": margin}
        tmp.write_text(json.dumps(record, sort_keys=True) + "\n")
        tmp.replace(saved)  # atomic: a reader sees the whole file or none
    return epochs


if __name__ == "__main__":
    sys.exit(main())
