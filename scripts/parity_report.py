"""Write the parity table (results/parity.md) from the JUnit XML of a parity-suite run.

python -m pytest -n 2 parity_tests --junitxml=results/parity.xml
python scripts/parity_report.py results/parity.xml --command "python -m pytest -n 2 parity_tests"
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flax_resnet.errors import ArgumentParser
from parity_tests import report


def main(argv: list[str] | None = None) -> int:
    """Parse flags, read the JUnit file, print the table and write it with command, machine, date, wall time."""
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("junit", help="JUnit XML written by pytest --junitxml over parity_tests/")
    p.add_argument("--out", default="results/parity.md", help="markdown file to write (default: results/parity.md)")
    p.add_argument(
        "--command",
        default="python -m pytest -n 2 parity_tests --junitxml=results/parity.xml",
        help="the pytest command that wrote the file, as run (default: %(default)s)",
    )
    p.add_argument("--machine", default=None, help="machine description (default: this machine's)")
    args = p.parse_args(argv)
    try:
        rows, seconds, unknown, day = report.parse_junit(args.junit)
    except (OSError, ValueError, report.ET.ParseError) as e:
        detail = e.strerror if isinstance(e, OSError) and e.strerror else e  # OSError's str repeats the path
        print(f"error: {args.junit}: {detail}", file=sys.stderr)
        return 1
    machine = args.machine or f"{platform.platform()}, {os.cpu_count()} CPUs"
    # The day the run started, as pytest recorded it; the file's date changes with a copy or a fresh clone.
    when = day or datetime.datetime.fromtimestamp(Path(args.junit).stat().st_mtime).date().isoformat()
    table = report.markdown(rows)
    text = (
        "# Parity: flax_resnet vs torch_ref (CPU)\n\n"
        f"Command: `{args.command}`, then `python scripts/parity_report.py {args.junit}`.\n"
        f"Machine: {machine}; date {when}; wall time of the run {seconds / 60:.1f} min"
        + (f" (including {unknown} other tests, ignored in the table)" if unknown else "")
        + f"; parity tests {sum(r.seconds for r in rows) / 60:.1f} worker-minutes"
        + ".\n\nRelative measures use torch as the reference: logits max|d| / max(1, max|logits|); parameters "
        "and BN statistics max|d| / max|ref| per tensor (worst tensor); gradients ||d||_2 / ||ref||_2 per "
        "parameter (worst parameter). Configurations are pytest ids (arch-variant, ...).\n\n" + table
    )
    print(table, end="")
    problem = _write(Path(args.out), text)
    if problem:
        print(f"error: {args.out}: cannot write the report ({problem})", file=sys.stderr)
        return 1
    failed = sum(r.ran - r.passed for r in rows)
    if failed:
        print(f"{failed} parity test(s) failed", file=sys.stderr)
    return 1 if failed else 0


def _write(out: Path, text: str) -> str | None:
    """Write the report, creating its folder; a failure is returned as one line (a directory, a file on the way)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    except FileExistsError as e:  # mkdir: a component of the folder is a regular file
        return f"{e.filename} is a file, not a directory"
    except OSError as e:
        return e.strerror or str(e)
    return None


if __name__ == "__main__":
    sys.exit(main())
