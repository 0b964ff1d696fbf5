"""Run the parity comparisons (parity_tests/harness.py) and write the markdown table to results/parity.md."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from parity_tests import harness

QUICK_PAIRS = (("resnet18", "cifar"), ("resnet18", "imagenet"), ("resnet18", "article"), ("resnet50", "cifar"))


def main() -> int:
    """Parse flags, run every check, print the table and write it with command, machine and date."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"only the pairs {QUICK_PAIRS} (minutes, not tens)")
    parser.add_argument("--out", default="results/parity.md", help="markdown file to write")
    args = parser.parse_args()
    torch.set_num_threads(1)
    harness.configure()
    pairs = QUICK_PAIRS if args.quick else harness.PAIRS
    rows = harness.report_rows(pairs, log=lambda m: print(m, file=sys.stderr, flush=True))
    lines = [
        "| check | configurations | tolerance | largest difference measured | pass |",
        "|---|---|---|---|---|",
        *(f"| {r.check} | {r.configurations} | {r.tolerance} | {r.largest} | {'yes' if r.passed else 'NO'} |"
          for r in rows),
    ]
    header = [
        "# Parity: flax_resnet vs torch_ref (fp32, CPU)",
        "",
        f"Command: `python scripts/parity_report.py{' --quick' if args.quick else ''}`"
        + (f" (quick subset: {', '.join('/'.join(p) for p in QUICK_PAIRS)})" if args.quick else ""),
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"date {datetime.date.today().isoformat()}",
        "",
        "Relative measures use torch as the reference: logits max|d| / max(1, max|logits|); parameters and BN "
        "statistics max|d| / max|ref| per tensor (worst tensor shown); gradients ||d||_2 / ||ref||_2.",
        "",
    ]
    text = "\n".join(header + lines) + "\n"
    print("\n".join(lines))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0 if all(r.passed for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
