"""Family coverage matrix: for each causal-LM family x regime, does `run` work, does `simulate` reproduce
the real run, and how far is the `components` estimate from `simulate`?

Each family is a tiny config.json in profiler/models/ (tiny-<family>, every architectural switch of the
family kept) run for real on the CPU (1 warm-up + 1 measured step, seq 32), simulated with the same config
(per-phase peaks compared), and estimated by `components` against `simulate` at seq 256 and 2048 (steady
peak allocated). With --real, the bundled real-size architecture of the family is simulated for a CUDA
target (LoRA, bf16, seq 2048: activations are most of the peak) and compared with `components` (its
allocated part, without the CUDA context and allocator slack that simulate does not model).

    python scripts/family_matrix.py                       # the whole matrix (~3 min on 2 cores), docs/families.md block
    python scripts/family_matrix.py --real                # + real-size column (~5 min more)
    python scripts/family_matrix.py --real-only           # redo only the real-size column of --json
    python scripts/family_matrix.py --from-json FILE      # re-render the docs/families.md block from saved rows
    python scripts/family_matrix.py --families tiny-gemma2 --regimes full --no-page
    python scripts/family_matrix.py --real-grid           # components vs simulate, real size, CUDA target:
                                                          # full/lora/qlora4 x checkpointing (~10 min), page block
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from profiler.config import REPO_ROOT, load_config  # noqa: E402

# (family label as users know it, tiny architecture, real-size bundled architecture)
FAMILIES = [
    ("Llama 2/3", "tiny-llama", "llama-3-8b"),
    ("Mistral", "tiny-mistral", "mistral-7b"),
    ("Qwen2/2.5", "tiny-qwen2", "qwen2.5-7b"),
    ("Qwen3", "tiny-qwen3", "qwen3-8b"),
    ("Gemma 2", "tiny-gemma2", "gemma-2-9b"),
    ("Gemma 3 (text)", "tiny-gemma3", "gemma-3-1b"),
    ("Phi-3/4", "tiny-phi3", "phi-4"),
    ("OLMo 2", "tiny-olmo2", "olmo-2-7b"),
    ("GPT-NeoX (Pythia)", "tiny-gpt-neox", "pythia-6.9b"),
    ("Falcon", "tiny-falcon", "falcon-7b"),
    ("GPT-2", "tiny-gpt2", "gpt2"),
    ("SmolLM", "tiny-smollm", "smollm2-1.7b"),
]
REGIMES = {
    "full": {"regime": {"kind": "full"}},
    "lora": {"regime": {"kind": "lora"}},
    "qlora4": {"regime": {"kind": "qlora", "bits": 4}},
}
SEQS = (256, 2048)
BEGIN, END = "<!-- family-matrix:begin -->", "<!-- family-matrix:end -->"
DEFAULT_JSON = REPO_ROOT / "results" / "families" / "matrix.json"


def family_config(arch: str, regime: str, seq: int = 32, device: str = "cpu", **train):
    base = {"model": {"arch": arch}, "device": device, **REGIMES[regime],
            "train": {"steps": 1, "warmup_steps": 1, "seq_len": seq, **train}}
    return load_config(None, [], base=base)


def phase_peaks(record: dict) -> list[tuple]:
    return [(p["phase"], p["step"], p["peak_allocated_bytes"]) for p in record["phases"]]


def simulate_vs_run(real: dict, fake: dict) -> str:
    """'exact' when every phase peak matches, else the largest per-phase difference in %."""
    if real["status"] != "ok" or fake["status"] != "ok":
        return "n/a"
    a, b = phase_peaks(real), phase_peaks(fake)
    if a == b:
        return "exact"
    if [x[:2] for x in a] != [x[:2] for x in b]:
        return "phases differ"
    worst = max(abs(y[2] - x[2]) / x[2] for x, y in zip(a, b, strict=True) if x[2])
    return f"{100 * worst:.1f}%"


def components_vs_simulate(cfg) -> tuple[float, str]:
    """(error % of the components estimate's allocated part vs the simulated steady peak, notes)."""
    from profiler.formulas.components import components_estimate
    from profiler.simulate.backend import simulate

    sim = simulate(cfg)
    est = components_estimate(cfg)
    if sim["status"] != "ok":
        return float("nan"), f"simulate {sim['status']}: {sim.get('error')}"
    steady = sim["peaks"]["steady_peak_allocated_bytes"]
    predicted = est.total - est.get("overhead")  # context + allocator slack: not simulated
    return 100 * (predicted - steady) / steady, est.notes


def cell(arch: str, regime: str) -> dict:
    """One family x regime: real CPU run, its simulation, components vs simulate at SEQS."""
    from profiler.measure.harness import run
    from profiler.simulate.backend import simulate

    cfg = family_config(arch, regime)
    real, fake = run(cfg), simulate(cfg)
    row = {"arch": arch, "regime": regime, "run": real["status"], "run_error": real.get("error"),
           "attention": real.get("attention_kernel"), "simulate_vs_run": simulate_vs_run(real, fake)}
    for seq in SEQS:
        err, notes = components_vs_simulate(family_config(arch, regime, seq))
        row[f"components_pct_{seq}"] = None if err != err else round(err, 1)
        row["not_modelled"] = "not modelled" in notes
    return row


REAL_REGIME, REAL_SEQ = "lora", 2048  # LoRA: activations are most of the peak, so the block model shows


def real_size_cell(arch: str, regime: str = REAL_REGIME, seq: int = REAL_SEQ) -> dict:
    from profiler.hf_config import resolve_hf_config

    cfg = family_config(arch, regime, seq, device="cuda")
    seq = min(seq, getattr(resolve_hf_config(cfg.model), "n_positions", None) or seq)  # GPT-2: 1024 rows
    cfg = family_config(arch, regime, seq, device="cuda")
    err, notes = components_vs_simulate(cfg)
    return {"arch": arch, "regime": regime, "seq": seq, "components_pct": None if err != err else round(err, 1),
            "not_modelled": "not modelled" in notes}


GRID_JSON = REPO_ROOT / "results" / "families" / "components_real.json"
GRID_BEGIN, GRID_END = "<!-- components-real:begin -->", "<!-- components-real:end -->"


def real_grid_cell(arch: str, regime: str, checkpointing: bool, seq: int = REAL_SEQ) -> dict:
    """components (its allocated part) vs simulate's steady peak for one real-size architecture, CUDA target."""
    import time

    from profiler.hf_config import resolve_hf_config

    cfg = family_config(arch, regime, seq, device="cuda", gradient_checkpointing=checkpointing)
    seq = min(seq, getattr(resolve_hf_config(cfg.model), "n_positions", None) or seq)  # GPT-2: 1024 rows
    cfg = family_config(arch, regime, seq, device="cuda", gradient_checkpointing=checkpointing)
    t0 = time.perf_counter()
    err, notes = components_vs_simulate(cfg)
    return {"arch": arch, "regime": regime, "checkpointing": checkpointing, "seq": seq,
            "components_pct": None if err != err else round(err, 2), "not_modelled": "not modelled" in notes,
            "seconds": round(time.perf_counter() - t0, 1)}


def grid_markdown(cells: list[dict]) -> str:
    """One line per real-size architecture: components vs simulate per regime, without / with checkpointing."""
    label = {big: name for name, _, big in FAMILIES}
    by = {(c["arch"], c["regime"], c["checkpointing"]): c for c in cells}
    archs = list(dict.fromkeys(c["arch"] for c in cells))
    regimes = list(dict.fromkeys(c["regime"] for c in cells))
    head = "| family | architecture | seq |" + "".join(f" {r} | {r} + ckpt |" for r in regimes)
    lines = [head, "|---|---|---|" + "---|---|" * len(regimes)]
    for a in archs:
        cols = []
        for r in regimes:
            for ck in (False, True):
                c = by.get((a, r, ck))
                txt = "–" if c is None else f"{c['components_pct']:+.2f}%"
                cols.append(txt + (" (not modelled)" if c and c["not_modelled"] else ""))
        seq = next(c["seq"] for c in cells if c["arch"] == a)
        lines.append(f"| {label.get(a, a)} | `{a}` | {seq} | " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"


def _pct(v) -> str:
    return "–" if v is None else f"{v + 0.0 if abs(v) >= 0.05 else 0.0:+.1f}%"


def markdown(rows: list[dict], real: list[dict] | None = None) -> str:
    """The docs/families.md table: one line per family x regime (and the real-size columns when given)."""
    label = {tiny: name for name, tiny, _ in FAMILIES}
    big = {name: r for name, _, r in FAMILIES}
    real_by = {r["arch"]: r for r in real or []}
    head = ("| family | tiny config | regime | run (CPU) | attention | simulate = run "
            "| components vs simulate, seq 256 | seq 2048 |")
    sep = "|---|---|---|---|---|---|---|---|"
    if real:
        head += f" real size: components vs simulate (CUDA, {REAL_REGIME}, seq {REAL_SEQ}) |"
        sep += "---|"
    lines = [head, sep]
    for r in rows:
        name = label.get(r["arch"], r["arch"])
        comp = [_pct(r[f"components_pct_{s}"]) for s in SEQS]
        if r["not_modelled"]:
            comp = [f"not modelled ({c})" for c in comp]
        line = (f"| {name} | `{r['arch']}` | {r['regime']} | {r['run']} | {r['attention']} | "
                f"{r['simulate_vs_run']} | {comp[0]} | {comp[1]} |")
        if real:
            rr = real_by.get(big.get(name, ""))
            if rr and r["regime"] == rr["regime"]:
                txt = f"`{rr['arch']}` {_pct(rr['components_pct'])}" + (" (not modelled)" if rr["not_modelled"] else "")
                txt += f" (seq {rr['seq']})" if rr["seq"] != REAL_SEQ else ""
            else:
                txt = ""
            line += f" {txt} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def write_readme(readme: Path, table: str, command: str, begin: str = BEGIN, end: str = END) -> None:
    text = readme.read_text()
    block = f"{begin}\n<!-- generated by `{command}`; do not edit -->\n{table}{end}"
    if begin not in text:
        raise SystemExit(f"{readme}: no {begin} ... {end} markers")
    text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    readme.write_text(text)


def readme_block(readme: Path, begin: str = BEGIN, end: str = END) -> str:
    """The table between the markers, as written (without the generated-by comment)."""
    text = readme.read_text()
    inner = text.split(begin, 1)[1].split(end, 1)[0]
    return "\n".join(line for line in inner.strip("\n").splitlines() if not line.startswith("<!--")) + "\n"


def save(path: str, rows: list[dict], real: list[dict]) -> dict:
    """Rows plus where they came from (versions, machine, git revision, command), written atomically: a crash
    midway leaves the previous file or the new one, never half of one."""
    from profiler.measure.env import collect_env

    data = {"env": collect_env("cpu"), "command": " ".join(["python", *sys.argv]), "rows": rows, "real": real}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(out)
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", help="comma-separated tiny architectures (default: all)")
    ap.add_argument("--regimes", default=",".join(REGIMES), help="comma-separated (default: full,lora,qlora4)")
    ap.add_argument("--real", action="store_true", help="add real-size simulate vs components (CUDA target)")
    ap.add_argument("--json", default=str(DEFAULT_JSON), help=f"rows written here (default {DEFAULT_JSON})")
    ap.add_argument("--from-json", help="render from saved rows instead of running")
    ap.add_argument("--real-only", action="store_true", help="keep the tiny rows of --json, redo the real-size ones")
    ap.add_argument("--page", "--readme", dest="readme", default=str(REPO_ROOT / "docs" / "families.md"),
                    help="the page whose generated blocks to rewrite (default docs/families.md)")
    ap.add_argument("--no-page", "--no-readme", dest="no_readme", action="store_true")
    ap.add_argument("--real-grid", action="store_true",
                    help=f"components vs simulate on every real-size architecture, CUDA, seq {REAL_SEQ}: "
                         f"regimes x checkpointing (rows to {GRID_JSON})")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.real_grid:
        return _real_grid(args)
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
    else:
        from profiler.measure.quiet import quiet_libraries

        quiet_libraries()
        tinies = args.families.split(",") if args.families else [t for _, t, _ in FAMILIES]
        rows = json.loads(Path(args.json).read_text())["rows"] if args.real_only else []
        for arch in [] if args.real_only else tinies:
            for regime in args.regimes.split(","):
                rows.append(cell(arch, regime))
                save(args.json, rows, [])  # a crash later keeps what is done
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        real = []
        if args.real or args.real_only:
            for _, tiny, big in FAMILIES:
                if tiny in tinies:
                    real.append(real_size_cell(big))
                    print(json.dumps(real[-1]), file=sys.stderr, flush=True)
        data = save(args.json, rows, real)
    table = markdown(data["rows"], data.get("real"))
    print(table, end="")
    if not args.no_readme:
        cmd = "python scripts/family_matrix.py" + (" --real" if data.get("real") else "")
        write_readme(Path(args.readme), table, cmd)
    return 0


def _real_grid(args) -> int:
    """--real-grid: sequential simulations (one 7-9B model takes ~5-15 s), rows saved as they come."""
    from profiler.measure.env import collect_env
    from profiler.measure.quiet import quiet_libraries

    quiet_libraries()
    if args.from_json:
        cells = json.loads(Path(args.from_json).read_text())["cells"]
    else:
        wanted = args.families.split(",") if args.families else None
        cells = []
        for _, tiny, big in FAMILIES:
            if wanted and tiny not in wanted and big not in wanted:
                continue
            for regime in args.regimes.split(","):
                for ck in (False, True):
                    cells.append(real_grid_cell(big, regime, ck))
                    print(json.dumps(cells[-1]), file=sys.stderr, flush=True)
        GRID_JSON.parent.mkdir(parents=True, exist_ok=True)
        tmp = GRID_JSON.with_name(f".{GRID_JSON.name}.tmp")
        tmp.write_text(json.dumps({"env": collect_env("cpu"), "command": " ".join(["python", *sys.argv]),
                                   "cells": cells}, indent=1) + "\n")
        tmp.replace(GRID_JSON)
    table = grid_markdown(cells)
    print(table, end="")
    if not args.no_readme:
        write_readme(Path(args.readme), table, "python scripts/family_matrix.py --real-grid", GRID_BEGIN, GRID_END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
