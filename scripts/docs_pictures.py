"""Draw the documentation's pictures from real runs of the commands the docs show (nothing drawn by hand).

    python scripts/docs_pictures.py              # both pictures into docs/img/
    python scripts/docs_pictures.py --only fit   # or: --only timeline

- docs/img/fit-picture.png: `python -m profiler fit llama-3-8b --regime qlora4 --seq 2048 --gpu rtx4090
  --picture docs/img/fit-picture.png` (a simulation on fake tensors: minutes on 2 busy cores).
- docs/img/timeline.png: `python -m profiler trace -- python examples/train_trainer.py` (a real CPU training run of
  tiny-llama through transformers.Trainer, measured by the callback), then `python -m profiler timeline` on its
  result line.

Each command runs in a subprocess exactly as a user would type it; its output passes through, and the script stops
at the first command that fails (exit 1). `fit` and `timeline` overwrite only pictures they wrote themselves.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FIT = ["fit", "llama-3-8b", "--regime", "qlora4", "--seq", "2048", "--gpu", "rtx4090"]


def run(argv: list[str]) -> None:
    """One command of the docs, as typed (python -m profiler ...), from the repository root."""
    cmd = [sys.executable, "-m", "profiler", *argv]
    print("$ python -m profiler " + shlex.join(argv), flush=True)
    done = subprocess.run(cmd, cwd=REPO_ROOT)
    if done.returncode not in (0, 1) or (done.returncode == 1 and argv[0] != "fit"):  # fit: 1 = does not fit
        raise SystemExit(f"error: `{shlex.join(argv)}` exited {done.returncode}")


def fit_picture(out_dir: Path) -> Path:
    out = out_dir / "fit-picture.png"
    run([*FIT, "--picture", str(out.relative_to(REPO_ROOT) if out.is_relative_to(REPO_ROOT) else out)])
    return out


def timeline_picture(out_dir: Path) -> Path:
    out = out_dir / "timeline.png"
    with tempfile.TemporaryDirectory(prefix="docs-timeline-") as tmp:
        lines = Path(tmp) / "memprof.jsonl"
        run(["trace", "--output", str(lines), "--picture", "none", "--", "python", "examples/train_trainer.py",
             "--output-dir", str(Path(tmp) / "run")])
        run(["timeline", str(lines), "--out", str(out)])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["fit", "timeline"], help="draw one picture (default: both)")
    ap.add_argument("--out-dir", default=str(REPO_ROOT / "docs" / "img"), help="folder (default docs/img)")
    args = ap.parse_args(argv)
    out_dir = Path(args.out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if args.only in (None, "timeline"):
        written.append(timeline_picture(out_dir))
    if args.only in (None, "fit"):
        written.append(fit_picture(out_dir))
    for p in written:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
