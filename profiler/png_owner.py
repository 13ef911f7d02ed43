"""Which PNG files llm-memprof wrote: a command overwrites an existing picture only when it carries that command's mark.

Each picture writer (`timeline`, `fit --picture`) stores its own name in the PNG's Software text chunk (matplotlib's
savefig metadata); `written_by` reads the file's head for that mark, so a user's own PNG is never overwritten.
"""

from __future__ import annotations

from pathlib import Path


def written_by(path: str | Path, software: str) -> bool:
    """True for a PNG whose Software chunk (near the start of the file) names `software`."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    return head.startswith(b"\x89PNG") and software.encode() in head
