"""Process-wide attribute patches for the length of a block, put back as they were on the way out."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager


@contextmanager
def patched(patches: Iterable[tuple[object, str, object]]) -> Iterator[None]:
    """Set each (object, attribute, value) inside the block; on exit, also on an exception, every attribute
    gets back the value it had on entry (in reverse order, so an attribute patched twice ends as it began)."""
    patches = list(patches)
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)
