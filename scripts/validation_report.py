"""Write README's "How accurate is it?" block from `python -m profiler validate`'s output (never typed by hand).

    python -m profiler validate                  # writes results/validation/validation.{csv,json,png}
    python scripts/validation_report.py [--csv results/validation/validation.csv] [--readme README.md] [--check]

Replaces the text between `<!-- validation:start -->` and `<!-- validation:end -->` in the README with the
summary by group and every miss over 25 % with its stated cause, with the run's date and commit (from the
JSON beside the CSV). --check exits 1 when the README block differs from what the CSV gives (nothing written).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
START, END = "<!-- validation:start -->", "<!-- validation:end -->"


def block(csv: Path) -> str:
    import pandas as pd

    from profiler.predict.validation.report import markdown

    meta_path = csv.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return markdown(pd.read_csv(csv), meta)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", default=str(REPO / "results" / "validation" / "validation.csv"))
    ap.add_argument("--readme", default=str(REPO / "README.md"))
    ap.add_argument("--check", action="store_true", help="exit 1 when the README block is out of date")
    args = ap.parse_args(argv)
    csv, readme = Path(args.csv), Path(args.readme)
    if not csv.is_file():
        print(f"error: --csv: {csv} does not exist (run `python -m profiler validate` first)", file=sys.stderr)
        return 2
    text = readme.read_text()
    if START not in text or END not in text or text.index(START) > text.index(END):
        print(f"error: --readme: {readme} has no {START} ... {END} block", file=sys.stderr)
        return 2
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{block(csv)}\n{END}{tail}"
    if args.check:
        same = new == text
        print("README block is up to date" if same else "README block differs from the CSV: run this script")
        return 0 if same else 1
    readme.write_text(new)
    print(f"wrote the validation block of {readme} from {csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
