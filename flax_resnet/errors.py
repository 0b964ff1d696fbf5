"""How an error reaches a user: one line. A library's exception as its type and its message with whitespace
collapsed; a command-line usage error without argparse's usage block; what libraries print to stderr around
a failure held back, so that the line is not buried."""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

# Terminal colour and style codes (ESC [ ... m), which some libraries put into messages (torch.load's bold).
_ANSI_STYLE = re.compile(r"\x1b\[[0-9;]*m")


def one_line(e: BaseException, limit: int | None = None) -> str:
    """'Type: message' on one line (just 'Type' for an empty message), without terminal style codes; cut to
    `limit` characters and '...' when given (a library's message may embed a whole traceback or config)."""
    text = " ".join(_ANSI_STYLE.sub("", str(e)).split())
    line = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return line if limit is None or len(line) <= limit else line[:limit] + "..."


def run_quietly(
    fn: Callable[[], Any],
    grace_seconds: float = 1.0,
    describe: Callable[[Exception], str] | None = None,
    keep: Callable[[str], bool] | None = None,
) -> tuple[Any, str | None]:
    """`(fn(), None)`, or `(None, one-line error)` (`describe(e)`, default `one_line(e)`); what `fn` writes to
    stderr (fd 2, so also C/C++ libraries' logs) is held back: replayed on success (only the lines `keep`
    accepts, when given), dropped on failure, where the caller reports the one line.

    When one array of a damaged checkpoint fails to decode, orbax abandons the read, and tensorstore's other
    reads, still in flight, each print a traceback as they land ("Event loop is closed") or as their abandoned
    coroutines are collected ("Exception ignored in"): thousands of lines for one damaged file. On failure
    they are dropped after `grace_seconds` for the late ones and a collection once the error, which holds
    their frames, is gone.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            try:
                result, error = fn(), None
            except Exception as e:
                result, error = None, (describe or one_line)(e)
            if error is not None:
                time.sleep(grace_seconds)
                gc.collect()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        if error is None:
            held.seek(0)
            out = held.read()
            if keep is not None:
                out = b"".join(line for line in out.splitlines(keepends=True) if keep(line.decode(errors="replace")))
            os.write(2, out)
    return result, error


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, `prog: error: message (see --help)`, exit 2: the stock parser
    printed its whole usage block first (17 lines for scripts/train.py), burying the line that matters."""

    def error(self, message: str) -> NoReturn:
        """Print the one line and exit 2, as argparse's own error does after its usage block."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class Terminated(KeyboardInterrupt):
    """SIGTERM raised where the program is, as Ctrl-C raises KeyboardInterrupt: `finally` blocks run (a weights
    file's temporary copy is removed) and the script's own interrupt handler says its one line."""

    signum = signal.SIGTERM


# A SIGTERM this soon after the first is the same request, not a second one: a job's SIGTERM reaches every
# process of its group (Slurm, systemd), and a parent (scripts/reproduce.py) passes it on to its child as well.
SAME_REQUEST_SECONDS = 2.0


def interrupt(signum: int) -> KeyboardInterrupt:
    """The exception a signal raises: Terminated for SIGTERM, else KeyboardInterrupt (SIGINT)."""
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within: SIGTERM (a cluster's preemption, `kill`) raises Terminated where the program is; the default ended
    the process silently, leaving temporary files. Catch KeyboardInterrupt and exit `128 + exit_signal(e)`.
    The previous handler comes back on exit (a script's main() may run inside another program, e.g. pytest)."""
    first: list[float] = []

    def raise_terminated(signum: int, frame: object) -> None:
        if first and time.monotonic() - first[0] < SAME_REQUEST_SECONDS:
            return
        first[:] = [time.monotonic()]
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, raise_terminated)
    except ValueError:  # not the main thread: signals stay as they are
        yield
        return
    try:
        yield
    finally:
        if previous is not None:  # None: a handler installed from C, which Python cannot put back
            signal.signal(signal.SIGTERM, previous)


def exit_signal(e: KeyboardInterrupt) -> int:
    """The signal behind an interrupt: SIGTERM for `Terminated`, else SIGINT (Ctrl-C)."""
    return int(getattr(e, "signum", signal.SIGINT))
