"""The dry-run of examples/train_trl_sft.py against `fit --recipe trl` on the same settings, per phase (docs/dryrun.md).

    python scripts/dryrun_vs_fit.py --model llama-3-8b --regime qlora4 --seq 512 --batch 2 --gpu rtx4090 [--markdown]

The example runs under `simulate --gpu G -- python examples/train_trl_sft.py ... --fixed-length`: every row is
repeated past --seq characters and cut there, so every batch is (batch, seq) with no padding, as fit's harness
feeds it. fit's side is the configuration `fit MODEL --recipe trl --regime R --seq S --batch B --gpu G` builds
(profiler.commands.fit.build_config: the trl recipe's defaults) run through profiler.simulate.simulate, the
simulation fit takes its verdict's peak from (fit runs it primed: no warm-up forward/backward, same peaks). Both
are simulated (fake tensors); the table gives per phase the two allocated peaks and the difference in percent.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "train_trl_sft.py"
FLAGS = {"qlora4": "--qlora", "lora": "--lora", "full": None}


def dryrun_record(model: str, regime: str, seq: int, batch: int, gpu: str) -> dict:
    """The `source: dryrun` line of the example under `simulate --gpu GPU --`."""
    with tempfile.TemporaryDirectory(prefix="dryrun-vs-fit-") as tmp:
        out = Path(tmp) / "dry.jsonl"
        flag = [FLAGS[regime]] if FLAGS[regime] else []
        cmd = [sys.executable, "-m", "profiler", "simulate", "--gpu", gpu, "--quiet", "--output", str(out), "--",
               "python", str(EXAMPLE), "--model", model, *flag, "--max-length", str(seq), "--batch-size", str(batch),
               "--fixed-length", "--steps", "4", "--output-dir", str(Path(tmp) / "run")]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if res.returncode != 0:
            raise SystemExit(f"error: the dry-run failed (exit {res.returncode}): {res.stderr.strip()[-600:]}")
        return json.loads(out.read_text().splitlines()[-1])


def fit_config(model: str, regime: str, seq: int, batch: int, gpu: str):
    """The RunConfig `fit MODEL --recipe trl --regime R --seq S --batch B --gpu G` simulates."""
    from profiler.commands import fit
    from profiler.model_source import resolve_model
    from profiler.predict.gpus import gpu_by_name

    parser = argparse.ArgumentParser()
    fit.add_arguments(parser)
    args = parser.parse_args([model, "--recipe", "trl", "--regime", regime, "--seq", str(seq), "--batch",
                              str(batch), "--gpu", gpu])
    return fit.build_config(args, resolve_model(model).arch, gpu_by_name(gpu))


def fit_record(model: str, regime: str, seq: int, batch: int, gpu: str) -> dict:
    from profiler.simulate.backend import simulate

    return simulate(fit_config(model, regime, seq, batch, gpu))


def table(dry: dict, fit: dict):
    """One row per (step, phase) both have: the dry-run's and fit's allocated peaks, MiB, and dry/fit - 1 in %."""
    import pandas as pd

    mib = 2**20
    theirs = {(p["step"], p["phase"]): p for p in fit["phases"]}
    rows = []
    for p in dry["phases"]:
        f = theirs.get((p["step"], p["phase"]))
        if f is None:
            continue
        a, b = p["peak_allocated_bytes"], f["peak_allocated_bytes"]
        rows.append({"step": p["step"], "phase": p["phase"], "dry-run MiB": round(a / mib, 2),
                     "fit MiB": round(b / mib, 2), "diff %": round(100 * (a / b - 1), 2), "dry-run bytes": a,
                     "fit bytes": b})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--regime", default="qlora4", choices=list(FLAGS))
    ap.add_argument("--seq", type=int, default=512, help="the example's --max-length (its default: 512)")
    ap.add_argument("--batch", type=int, default=2, help="the example's --batch-size (its default: 2)")
    ap.add_argument("--gpu", default="rtx4090")
    ap.add_argument("--markdown", action="store_true", help="a Markdown table with the command, date and commit")
    ap.add_argument("--save", metavar="FILE", help="also write both result lines to FILE (JSON)")
    a = ap.parse_args(argv)
    dry = dryrun_record(a.model, a.regime, a.seq, a.batch, a.gpu)
    fit = fit_record(a.model, a.regime, a.seq, a.batch, a.gpu)
    if a.save:
        Path(a.save).write_text(json.dumps({"dryrun": dry, "fit": fit}, default=str))
    df = table(dry, fit)
    lens = sorted({tuple(s) for s in dry["dryrun"]["seq_lens"]})
    if not a.markdown:
        print(df.to_string(index=False))
        print(f"dry-run batches {lens}; attention {dry['dryrun']['attention_kernels']}; fit attention "
              f"{fit.get('attention_kernel')}")
        return 0
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip()
    cmd = " ".join(["python scripts/dryrun_vs_fit.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"`{cmd}` — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit}; both simulated (fake tensors)\n")
    shown = df.drop(columns=["dry-run bytes", "fit bytes"])
    print("| " + " | ".join(shown.columns) + " |")
    print("|" + "---|" * len(shown.columns))
    for row in shown.itertuples(index=False):
        print("| " + " | ".join(f"{v:,.2f}" if isinstance(v, float) else str(v) for v in row) + " |")
    print(f"\ndry-run batches (batch, seq): {lens}; attention kernels: dry-run {dry['dryrun']['attention_kernels']}, "
          f"fit {fit.get('attention_kernel')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
