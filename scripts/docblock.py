"""One marked block of a docs page, rewritten by the script that owns it: read it, render it, check or write it.

The table scripts (config_table, schema_table, gpu_table, param_rule) each own a block between two HTML-comment
markers; this module is their shared `--print` / `--check` / write logic, so a page is never half-written and every
script says the same thing when a page is stale.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def page_block(page: Path, begin: str, end: str) -> str:
    """The block between the markers of the page, as written (without the generated-by comment)."""
    inner = page.read_text().split(begin, 1)[1].split(end, 1)[0]
    return "\n".join(line for line in inner.strip("\n").splitlines() if not line.startswith("<!--"))


def render_page(page: Path, text: str, begin: str, end: str, note: str, body: str) -> str:
    """The page's text with its block replaced by `body` under the generated-by `note`."""
    if begin not in text or end not in text:
        raise SystemExit(f"error: {page}: no {begin} ... {end} block")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n<!-- {note}; do not edit -->\n{body}\n{end}{tail}"


def main(argv: list[str] | None, description: str, blocks: dict[Path, Callable[[], str]], begin: str, end: str,
         note: str, root: Path) -> int:
    """`--print` the first page's block; `--check` (exit 1 when a page is stale); else write the stale pages."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--print", action="store_true", help="print the block, write nothing")
    ap.add_argument("--check", action="store_true", help="exit 1 when a page is out of date")
    args = ap.parse_args(argv)
    bodies = {page: make() for page, make in blocks.items()}
    if args.print:
        print(next(iter(bodies.values())))
        return 0
    stale = []
    for page, body in bodies.items():
        text = page.read_text()
        new = render_page(page, text, begin, end, note, body)
        if new != text:
            stale.append(page.relative_to(root))
            if not args.check:
                page.write_text(new)
    names = ", ".join(str(p.relative_to(root)) for p in bodies)
    if args.check:
        print("; ".join(f"{p} differs: run this script" for p in stale) or f"{names}: up to date")
        return 1 if stale else 0
    print(f"wrote {', '.join(map(str, stale))}" if stale else f"{names}: up to date")
    return 0
