"""How an error reaches a user: one line. A library's exception as its type and its message with whitespace
collapsed; a command-line usage error without argparse's usage block."""

from __future__ import annotations

import argparse
import re
from typing import NoReturn

# Terminal colour and style codes (ESC [ ... m), which some libraries put into messages (torch.load's bold).
_ANSI_STYLE = re.compile(r"\x1b\[[0-9;]*m")


def one_line(e: BaseException, limit: int | None = None) -> str:
    """'Type: message' on one line (just 'Type' for an empty message), without terminal style codes; cut to
    `limit` characters and '...' when given (a library's message may embed a whole traceback or config)."""
    text = " ".join(_ANSI_STYLE.sub("", str(e)).split())
    line = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return line if limit is None or len(line) <= limit else line[:limit] + "..."


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, `prog: error: message (see --help)`, exit 2: the stock parser
    printed its whole usage block first (17 lines for scripts/train.py), burying the line that matters."""

    def error(self, message: str) -> NoReturn:
        """Print the one line and exit 2, as argparse's own error does after its usage block."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")
