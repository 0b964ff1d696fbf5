"""How an exception from a library reaches a user: one line, its type and its message with whitespace collapsed."""

from __future__ import annotations

import re

# Terminal colour and style codes (ESC [ ... m), which some libraries put into messages (torch.load's bold).
_ANSI_STYLE = re.compile(r"\x1b\[[0-9;]*m")


def one_line(e: BaseException, limit: int | None = None) -> str:
    """'Type: message' on one line (just 'Type' for an empty message), without terminal style codes; cut to
    `limit` characters and '...' when given (a library's message may embed a whole traceback or config)."""
    text = " ".join(_ANSI_STYLE.sub("", str(e)).split())
    line = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return line if limit is None or len(line) <= limit else line[:limit] + "..."
