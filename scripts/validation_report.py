"""Write the "How accurate" blocks (README summary, docs full table, scatter) from `validate`'s output (never typed).

    python -m profiler validate                  # writes results/validation/validation.{csv,json,png}
    python scripts/validation_report.py [--csv results/validation/validation.csv] [--readme README.md]
                                        [--page docs/validation-results.md] [--check]

Each file given (default: README.md and docs/validation-results.md) gets every block it holds rewritten:
`<!-- validation-summary:start -->` ... `<!-- validation-summary:end -->` the short summary (a few groups, the
scatter, a link to the full table), `<!-- validation:start -->` ... `<!-- validation:end -->` the full table
(every group, every miss over 25 % with its stated cause), each with the run's date and commit (from the JSON
beside the CSV). A file holding the full table also gets the scatter (`validation.png` beside the CSV) copied to
`img/validation.png` beside it, so the docs site shows the generated picture. --check exits 1 when a block or the
picture differs from what the CSV gives (nothing written).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
START, END = "<!-- validation:start -->", "<!-- validation:end -->"
SUMMARY_START, SUMMARY_END = "<!-- validation-summary:start -->", "<!-- validation-summary:end -->"
DEFAULT_FILES = [REPO / "README.md", REPO / "docs" / "validation-results.md"]
# the groups the README summary shows (the full table has all of them)
SUMMARY_GROUPS = [("all", "all rows"), ("stack", "current HF stack"), ("GPUs", "single GPU"), ("GPUs", "multi-GPU"),
                  # issue 22: the reserved-memory rules compared on the rows measured as reserved or nvidia-smi
                  ("reserved rule (#22)", "allocator replay"), ("reserved rule (#22)", "allocated + 3 %")]
IMAGE = Path("img") / "validation.png"


def _load(csv: Path):
    import pandas as pd

    meta_path = csv.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return pd.read_csv(csv), meta


def block(csv: Path) -> str:
    """The full table: profiler.predict.validation.report.markdown."""
    from profiler.predict.validation.report import markdown

    return markdown(*_load(csv))


def summary_block(csv: Path) -> str:
    """The README summary: one sentence on what was compared, a few groups, the scatter, a link to the full table."""
    from profiler.predict.validation.report import ran, summary

    def _pct(x) -> str:
        return "-" if x is None or x != x else f"{x:.1f} %"

    df, meta = _load(csv)
    summ = summary(df)
    done = ran(df)
    n_failed = int(df["error"].notna().sum())
    lines = [f"{len(done)} of {len(df)} published GPU-memory figures predicted ({len(df) - len(done) - n_failed} "
             f"not run, each with its reason in the full table; {n_failed} failed). Written by "
             f"`scripts/validation_report.py` from `python -m profiler validate` on {meta.get('date', '?')}, commit "
             f"{meta.get('commit', '?')}; *expressible* = no setting of the source our config cannot express.", "",
             "| group | predicted | median \\|error\\| | worst | expressible | median \\|error\\| |",
             "|---|---:|---:|---:|---:|---:|"]
    for grouping, value in SUMMARY_GROUPS:
        r = summ[(summ["grouping"] == grouping) & (summ["value"] == value)]
        if r.empty:
            continue
        r = next(r.itertuples())
        name = "all rows" if grouping == "all" else (f"reserved / nvidia-smi rows: {value}"
                                                      if grouping.startswith("reserved rule") else value)
        lines.append(f"| {name} | {r.ran} of {r.rows} | {_pct(r.median_abs_pct)} | {_pct(r.worst_abs_pct)} | "
                     f"{r.expressible_ran} | {_pct(r.expressible_median_abs_pct)} |")
    # every source in one line: a median that moves because a source was added shows which source moved it
    by_source = summ[summ["grouping"] == "source"]
    lines += ["", "By source, median \\|error\\| of the rows predicted (of the expressible ones): " + "; ".join(
        f"{r.value} {_pct(r.median_abs_pct)} of {r.ran} ({_pct(r.expressible_median_abs_pct)} of {r.expressible_ran})"
        for r in by_source.itertuples()) + "."]
    lines += ["", "![predicted vs published](docs/img/validation.png)", "",
              "Every group, every miss over 25 % and its cause: "
              "[docs/validation-results.md](docs/validation-results.md)."]
    return "\n".join(lines)


def _replace(text: str, start: str, end: str, body: str) -> str:
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def _has(text: str, start: str, end: str) -> bool:
    return start in text and end in text and text.index(start) < text.index(end)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", default=str(REPO / "results" / "validation" / "validation.csv"))
    ap.add_argument("--readme", action="append", default=[], help="a file whose blocks to rewrite (repeatable)")
    ap.add_argument("--page", action="append", default=[], help="the same (for the docs page; repeatable)")
    ap.add_argument("--check", action="store_true", help="exit 1 when a block or the picture is out of date")
    args = ap.parse_args(argv)
    csv = Path(args.csv)
    files = [Path(p) for p in args.readme + args.page] or DEFAULT_FILES
    if not csv.is_file():
        print(f"error: --csv: {csv} does not exist (run `python -m profiler validate` first)", file=sys.stderr)
        return 2
    stale = []
    for path in files:
        text = path.read_text()
        full, short = _has(text, START, END), _has(text, SUMMARY_START, SUMMARY_END)
        if not (full or short):
            print(f"error: {path} has no {START} ... {END} or {SUMMARY_START} ... {SUMMARY_END} block",
                  file=sys.stderr)
            return 2
        new = _replace(text, START, END, block(csv)) if full else text
        new = _replace(new, SUMMARY_START, SUMMARY_END, summary_block(csv)) if short else new
        png, image = csv.with_suffix(".png"), path.parent / IMAGE
        copy = full and png.is_file() and (not image.is_file() or image.read_bytes() != png.read_bytes())
        if args.check:
            stale += [str(path)] if new != text else []
            stale += [str(image)] if copy else []
            continue
        path.write_text(new)
        if copy:
            image.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes(png.read_bytes())
        print(f"wrote the validation block(s) of {path} from {csv}")
    if args.check:
        print("blocks are up to date" if not stale else "out of date (run scripts/validation_report.py): "
              + ", ".join(stale))
        return 1 if stale else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
