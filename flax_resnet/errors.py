"""How an exception from a library reaches a user: one line, its type and its message with whitespace collapsed."""

from __future__ import annotations


def one_line(e: BaseException) -> str:
    """'Type: message' on one line (just 'Type' for an empty message)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
