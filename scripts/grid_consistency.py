"""The consistency grid: `components` against `simulate` (and every estimator against a crash) over the config space.

The grid (GRID below) crosses the 12 bundled families and the two MoE models with regime, seq, batch,
checkpointing, autocast, data parallelism (none / ddp / fsdp2 at world 2 and 8, fsdp2 with CPU offload and with
a bf16 mixed-precision policy on an fp32 model) and MoE routing, all for a CUDA target. `pairwise()` samples it
so that every pair of factor values that a valid config can hold appears in at least one point (a deterministic
greedy all-pairs cover); the sampled grid on 2-layer stand-ins is tests/formulas/test_grid.py. A point passes
when `components` (its allocated part: without the assumed CUDA context and allocator slack, which simulate does
not model) is within 5 % of simulate's steady peak; a point that does not is listed, with its cause, in
tests/formulas/known_differences.yaml. Offload has no simulation (one device): those points only have to get
an estimate.

    python scripts/grid_consistency.py                     # pairwise sample, 2-layer stand-ins (the CI grid)
    python scripts/grid_consistency.py --real              # pairwise sample, real-size architectures
    python scripts/grid_consistency.py --full [--real]     # every valid point (large: see --limit)
    nice -n 19 python scripts/grid_consistency.py --full --order 0 --shard 0/2 \
        --json results/consistency/full_standins.0of2.jsonl  # the full sweep: one process per shard, rows
        # appended as they finish, a rerun resumes (docs/consistency-full.md: scripts/grid_full_page.py)
    python scripts/grid_consistency.py --real --docs docs/consistency.md   # write the table page
    python scripts/grid_consistency.py --families llama-3-8b --limit 5 --no-simulate
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from profiler.config import MODELS_DIR, ConfigError, load_config  # noqa: E402

TOLERANCE = 0.05
FULL_NOTE = ("**The full grid** (every valid point, not this sample): docs/consistency-full.md, written by "
             "scripts/grid_full_page.py from the rows of `scripts/grid_consistency.py --full --order 0 --shard I/N "
             "--json ...` (one process per shard, append-only rows, resumable); it also lists the components gaps "
             "the sweep found and closed in profiler/formulas, with their before/after.")
KNOWN = REPO / "tests" / "formulas" / "known_differences.yaml"

# real-size bundled architecture -> decoder layers its stand-in keeps (every width kept; Gemma-3 keeps six so
# one global layer sits among five sliding ones, Gemma-2 two: one sliding, one global)
FAMILIES = {
    "llama-3-8b": 2, "mistral-7b": 2, "qwen2.5-7b": 2, "qwen3-8b": 2, "gemma-2-9b": 2, "gemma-3-1b": 6,
    "phi-4": 2, "olmo-2-7b": 2, "pythia-6.9b": 2, "falcon-7b": 2, "gpt2": 2, "smollm2-1.7b": 2,
    "mixtral-8x7b": 2, "qwen3-30b-a3b": 2,
}
MOE = {"mixtral-8x7b", "qwen3-30b-a3b"}
REGIMES = {
    "full": {"kind": "full"},
    "freeze": {"kind": "freeze", "freeze": {"trainable_layers": 1}},
    "lora": {"kind": "lora"},
    "qlora4": {"kind": "qlora", "bits": 4},
    "qlora8": {"kind": "qlora", "bits": 8},
    "inference": {"kind": "inference"},
}
PARALLEL = {
    "none": {},
    "ddp2": {"strategy": "ddp", "world_size": 2},
    "ddp8": {"strategy": "ddp", "world_size": 8},
    "fsdp2-2": {"strategy": "fsdp2", "world_size": 2},
    "fsdp2-8": {"strategy": "fsdp2", "world_size": 8},
    "fsdp2-8-offload": {"strategy": "fsdp2", "world_size": 8, "offload": {"params": True, "optimizer": True}},
    # torchtitan's default: an fp32 model whose layers are all-gathered and computed in bf16
    "fsdp2-8-mp": {"strategy": "fsdp2", "world_size": 8, "param_dtype": "bfloat16", "reduce_dtype": "float32"},
}
GRID: dict[str, tuple] = {
    "family": tuple(FAMILIES),
    "regime": tuple(REGIMES),
    "parallel": tuple(PARALLEL),
    "seq": (512, 2048, 8192),
    "batch": (1, 4),
    "ckpt": (False, True),
    "autocast": ("none", "bf16"),
    "routing": ("balanced", "worst_case"),
}


def valid(point: dict) -> bool:
    """Whether a (partial) point is a config `load_config` accepts and that means something new: the checks of
    profiler/config.py `_check_parallel` (qlora only with ddp, inference unsharded), plus checkpointing, autocast
    and routing only where they apply (no checkpointing in inference, no routing choice on a dense model)."""
    reg, par = point.get("regime"), point.get("parallel")
    if reg in ("qlora4", "qlora8") and par not in (None, "none", "ddp2", "ddp8"):
        return False
    if reg == "inference" and (par not in (None, "none") or point.get("ckpt") is True
                               or point.get("autocast") == "bf16"):
        return False
    fam = point.get("family")
    return not (fam is not None and fam not in MOE and point.get("routing") == "worst_case")


def pairwise(grid: dict[str, tuple] = GRID, ok=valid, tries: int = 1) -> list[dict]:
    """A deterministic all-pairs cover: every pair of values of two factors that some valid point holds appears in
    at least one returned point. Greedy (AETG-like): for each of the first `tries` uncovered pairs (in grid order)
    a candidate point starts from that pair and takes, factor by factor, the value covering the most still-uncovered
    pairs (ties: the first value); the candidate covering the most pairs is kept."""
    keys = list(grid)
    uncovered = {((a, va), (b, vb)) for a, b in itertools.combinations(keys, 2)
                 for va in grid[a] for vb in grid[b] if ok({a: va, b: vb})}

    def order(p):
        return keys.index(p[0][0]), keys.index(p[1][0]), grid[p[0][0]].index(p[0][1]), grid[p[1][0]].index(p[1][1])

    def covers(point: dict) -> set:
        return {((k1, point[k1]), (k2, point[k2])) for k1, k2 in itertools.combinations(keys, 2)} & uncovered

    def complete(seed: tuple) -> dict | None:
        (a, va), (b, vb) = seed
        point = {a: va, b: vb}
        for k in keys:
            if k in point:
                continue
            best, gain = None, -1
            for v in grid[k]:
                trial = {**point, k: v}
                if not ok(trial):
                    continue
                g = sum(((k2, trial[k2]), (k, v)) in uncovered or ((k, v), (k2, trial[k2])) in uncovered
                        for k2 in point)
                if g > gain:
                    best, gain = v, g
            if best is None:
                return None
            point[k] = best
        return {k: point[k] for k in keys} if ok(point) else None

    points: list[dict] = []
    while uncovered:
        seeds = sorted(uncovered, key=order)[:tries]
        cands = [(c, covers(c)) for c in map(complete, seeds) if c is not None]
        if not cands:  # the first pairs have no valid completion: they are not in the space
            uncovered -= set(seeds)
            continue
        best, got = max(cands, key=lambda c: len(c[1]))
        uncovered -= got
        points.append(best)
    return points


def ci_sample(grid: dict[str, tuple] = GRID, ok=valid) -> list[dict]:
    """The sample CI simulates (30 points; the test file costs ~65 s of CPU): an all-pairs cover of every factor but the
    family, each point then given a family in turn: the points with a routing choice cycle through the MoE
    models, the others through all families (the first that makes the point valid), so each family appears."""
    rest = {k: v for k, v in grid.items() if k != "family"}
    fams = list(grid["family"])
    moe = [f for f in fams if f in MOE]
    out, turn = [], {"all": 0, "moe": 0}
    for p in pairwise(rest, ok):
        pool = "moe" if p["routing"] != rest["routing"][0] and moe else "all"
        cands = moe if pool == "moe" else fams
        for _ in range(len(cands)):
            fam = cands[turn[pool] % len(cands)]
            turn[pool] += 1
            if ok({**p, "family": fam}):
                out.append({"family": fam, **p})
                break
    return out


def full_grid(grid: dict[str, tuple] = GRID, ok=valid) -> list[dict]:
    """Every valid point of the grid."""
    return [p for p in (dict(zip(grid, vs, strict=True)) for vs in itertools.product(*grid.values())) if ok(p)]


def point_id(point: dict) -> str:
    """A stable name for a point (the key in known_differences.yaml)."""
    return (f"{point['family']}/{point['regime']}/{point['parallel']}/s{point['seq']}/b{point['batch']}/"
            f"{'ckpt' if point['ckpt'] else 'nockpt'}/ac-{point['autocast']}"
            + (f"/{point['routing']}" if point['family'] in MOE else ""))


_STAND_IN_DIR: Path | None = None


def arch_source(family: str, real: bool) -> str:
    """The bundled architecture (real) or its stand-in: the same config.json cut to FAMILIES[family] layers."""
    global _STAND_IN_DIR
    if real:
        return family
    if _STAND_IN_DIR is None:
        _STAND_IN_DIR = Path(tempfile.mkdtemp(prefix="grid-stand-ins-"))
    path = _STAND_IN_DIR / f"{family}-{FAMILIES[family]}l.json"
    if not path.exists():
        hf = json.loads((MODELS_DIR / f"{family}.json").read_text())
        key = "n_layer" if "n_layer" in hf else "num_hidden_layers"
        hf[key] = FAMILIES[family]
        if isinstance(hf.get("layer_types"), list):
            hf["layer_types"] = hf["layer_types"][: FAMILIES[family]]
        path.write_text(json.dumps(hf))
    return str(path)


def max_positions(family: str) -> int | None:
    hf = json.loads((MODELS_DIR / f"{family}.json").read_text())
    return hf.get("max_position_embeddings") or hf.get("n_positions")


def config_of(point: dict, real: bool = False):
    """The RunConfig of a point (CUDA target). seq is capped at the model's positions (GPT-2: 1024, Pythia: 2048);
    the mixed-precision variants build the model in fp32; MoE LoRA has no dropout (peft refuses it there)."""
    fam = point["family"]
    seq = min(point["seq"], max_positions(fam) or point["seq"])
    regime = json.loads(json.dumps(REGIMES[point["regime"]]))
    if fam in MOE and regime["kind"] in ("lora", "qlora"):
        regime["lora"] = {"dropout": 0.0}
    par = PARALLEL[point["parallel"]]
    model = {"arch": arch_source(fam, real)}
    if par.get("param_dtype"):
        model["dtype"] = "float32"
    train = {"steps": 1, "warmup_steps": 1, "seq_len": seq, "batch_size": point["batch"],
             "autocast": point["autocast"]}
    if regime["kind"] != "inference":
        train["gradient_checkpointing"] = point["ckpt"]
    base = {"model": model, "device": "cuda", "regime": regime, "train": train, "parallel": par,
            "moe": {"routing": point["routing"]} if fam in MOE else {}}
    return load_config(None, [], base=base)


def estimator_lines(cfg) -> dict[str, str]:
    """Every registered estimator on cfg: 'ok <GiB>' or 'not modelled: <why>' (NotApplicable). Anything else
    propagates: a declared config that makes an estimator raise is a bug."""
    from profiler.formulas import ESTIMATORS, NotApplicable, estimate

    out = {}
    for name in ESTIMATORS:
        try:
            e = estimate(name, cfg)
            out[name] = f"ok {e.total / 2**30:.2f}"
        except NotApplicable as exc:
            out[name] = f"not modelled: {exc}"
    return out


def compare(point: dict, real: bool = False, run_simulate: bool = True, cfg=None) -> dict:
    """One grid point: every estimator's line, components' allocated part, simulate's steady peak, the error
    (`cfg`: config_of(point, real), when the caller has it)."""
    from profiler.formulas import estimate

    cfg = cfg if cfg is not None else config_of(point, real)
    row = {"id": point_id(point), **point, "seq": cfg.train.seq_len}
    row["estimators"] = estimator_lines(cfg)
    est = estimate("components", cfg)
    row["components"] = est.total - est.get("overhead")
    row["components_notes"] = est.notes
    row["simulate"] = None
    row["simulate_status"] = "not run"
    row["pct"] = None
    row["seconds"] = None
    if run_simulate:
        from profiler.simulate.backend import simulate

        t0 = time.perf_counter()
        rec = simulate(cfg, primed=True)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        row["simulate_status"] = rec["status"] if rec["status"] == "ok" else f"{rec['status']}: {rec.get('error')}"
        if rec["status"] == "ok":  # the steady step (rank 0 under ddp/fsdp2), as components predicts it; the
            # load (DDP's coalesced broadcast of the module states at construction) is not a step phase
            steady = rec["peaks"]["steady_peak_allocated_bytes"]
            row["simulate"] = steady
            row["simulate_load"] = next((p["peak_allocated_bytes"] for p in rec["phases"] if p["phase"] == "load"), 0)
            row["pct"] = round(100 * (row["components"] - steady) / steady, 2)
            row["kernel"] = rec.get("attention_kernel")
    return row


def sweep_order(points: list[dict], seed: int | None) -> list[dict]:
    """The points in grid order (seed None) or in one fixed shuffled order (seed: random.Random(seed)), so that
    every prefix of a sweep that stops early is a uniform random sample of the whole grid."""
    if seed is None:
        return list(points)
    import random

    out = list(points)
    random.Random(seed).shuffle(out)
    return out


def done_ids(path: Path) -> set[str]:
    """The ids of the finished rows in an append-only results file (JSON lines): a line that does not parse
    (a sweep killed mid-write) is not finished, and its point runs again."""
    if not path.exists():
        return set()
    ids = set()
    for line in path.read_text().splitlines():
        try:
            ids.add(json.loads(line)["id"])
        except (ValueError, KeyError, TypeError):
            continue
    return ids


def read_rows(paths: list[str]) -> dict[str, dict]:
    """{id: row} from results files written by --json (lines that do not parse are skipped: see done_ids)."""
    rows = {}
    for f in paths:
        for line in Path(f).read_text().splitlines():
            try:
                row = json.loads(line)
                rows[row["id"]] = row
            except (ValueError, KeyError, TypeError):
                continue
    return rows


def sweep(points: list[dict], real: bool = False, run_simulate: bool = True, freeze: bool = True):
    """Yield compare()'s row for each point, in one process, skipping work that cannot change a number:
    - the imports and the libraries' first-use set-up happen once (the first point);
    - after the first point `gc.freeze()` moves every object alive then (the imported libraries: millions of
      objects) out of the collector's reach, so the `gc.collect()` that ends each run (harness._release) and
      Python's own full collections only walk what the points create (~0.6 s a point before: 9 % of it);
    - two points whose RunConfig is the same (seq capped at the model's positions: GPT-2 at 1024, Pythia at
      2048) are simulated once; the second row is the first's numbers under its own id, `same_as` naming it.
    The models are not reused between points: the regime (peft), the parallel wrap (fully_shard) and the
    optimizer change a model in place, and its load is counted by the run's tracker (the load phase), so a
    reused model would change what is measured. tests/formulas/test_grid.py checks that the rows equal
    compare()'s, point by point."""
    import gc

    by_hash: dict[str, dict] = {}
    frozen = False
    for p in points:
        try:
            cfg = config_of(p, real)
        except ConfigError as exc:  # the config itself refuses the point: no estimator owes it an answer
            yield {"id": point_id(p), **p, "components": 0, "simulate": None, "pct": None,
                   "simulate_status": f"config refused: {exc}"}
            continue
        key = cfg.config_hash()
        if key in by_hash:
            first = by_hash[key]
            yield {**first, "id": point_id(p), **p, "seq": cfg.train.seq_len, "seconds": 0.0, "same_as": first["id"]}
            continue
        try:
            row = compare(p, real, run_simulate, cfg=cfg)
        except Exception as exc:  # noqa: BLE001  an estimator raised: a bug, recorded so the sweep goes on
            row = {"id": point_id(p), **p, "components": 0, "simulate": None, "pct": None,
                   "simulate_status": f"estimator raised: {type(exc).__name__}: {exc}"}
        by_hash[key] = row
        yield row
        if freeze and not frozen:
            gc.collect()
            gc.freeze()
            frozen = True


def load_known(path: Path = KNOWN) -> dict[str, str]:
    """known_differences.yaml as {point id: cause text}: `causes` names each cause once (key: text), `points` maps a
    point id to a cause key (or to its own text)."""
    import yaml

    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    causes = data.get("causes") or {}
    return {k: causes.get(v, v) for k, v in (data.get("points") or {}).items()}


def verdict(row: dict, known: dict[str, str]) -> str:
    """agrees / known: <cause> / DIFFERS / STALE (known but agrees) / estimate only (no simulation)."""
    if row["pct"] is None:
        if row["simulate_status"].startswith("estimator raised"):
            return "RAISES"
        if row["simulate_status"].startswith("error") and row["id"] in known:
            return "known (simulate fails)"
        return "estimate only" if row["simulate_status"] != "not run" else "not simulated"
    agrees = abs(row["pct"]) <= 100 * TOLERANCE
    if row["id"] in known:
        return "STALE: listed but agrees" if agrees else "known"
    return "agrees" if agrees else "DIFFERS"


def markdown(rows: list[dict], known: dict[str, str], title: str) -> str:
    import pandas as pd
    import yaml

    keys = ((yaml.safe_load(KNOWN.read_text()) or {}).get("points") or {}) if KNOWN.exists() else {}
    df = pd.DataFrame([{
        "point": r["id"],
        "components GiB": f"{r['components'] / 2**30:.2f}",
        "simulate GiB": "–" if r["simulate"] is None else f"{r['simulate'] / 2**30:.2f}",
        "diff": "–" if r["pct"] is None else f"{r['pct']:+.1f}%",
        "verdict": verdict(r, known),
        "cause (known_differences.yaml) / why no simulation": keys.get(r["id"]) or (
            "" if r["pct"] is not None else r["simulate_status"].split(": ", 1)[-1][:90]),
    } for r in rows])
    counts = df["verdict"].value_counts().to_dict()
    head = f"{title}\n\n" + ", ".join(f"{v}: {n}" for v, n in sorted(counts.items())) + "\n\n"
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(str(v).replace("|", "/") for v in rec) + " |" for rec in df.itertuples(index=False)]
    return head + "\n".join(lines) + "\n"


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _run(points: list[dict], args, known: dict[str, str]) -> list[dict]:
    """Run the points (those already in --json skipped: resume), appending each row to --json as it finishes,
    with a progress bar (tqdm, on stderr: done / total, rate, ETA, the verdicts so far)."""
    from tqdm import tqdm

    path = Path(args.json) if args.json else None
    done = done_ids(path) if path else set()
    todo = [p for p in points if point_id(p) not in done]
    if path and path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        with open(path, "a") as f:  # a line cut by a kill stays (unparsed, skipped); the next starts clean
            f.write("\n")
    if done:
        print(f"resuming {path}: {len(points) - len(todo)} of {len(points)} points already there", file=sys.stderr)
    rows, counts = [], {}
    bar = tqdm(total=len(points), initial=len(points) - len(todo), unit="pt", file=sys.stderr, smoothing=0.05,
               mininterval=1 if sys.stderr.isatty() else 60)
    for row in sweep(todo, args.real, not args.no_simulate):
        rows.append(row)
        v = verdict(row, known).split(":")[0]
        counts[v] = counts.get(v, 0) + 1
        if path:
            with open(path, "a") as f:
                f.write(json.dumps({**row, "finished": datetime.now(UTC).isoformat(timespec="seconds")}) + "\n")
        bar.set_postfix_str(", ".join(f"{k} {n}" for k, n in sorted(counts.items())), refresh=False)
        bar.update()
        if v in ("DIFFERS", "STALE", "RAISES"):
            pct = "" if row["pct"] is None else f" {row['pct']:+.2f}%"
            bar.write(f"{row['id']}: {verdict(row, known)}{pct}", file=sys.stderr)
    bar.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", action="store_true", help="real-size architectures instead of 2-layer stand-ins")
    ap.add_argument("--full", action="store_true", help="every valid point, not the pairwise sample")
    ap.add_argument("--ci", action="store_true", help="the smaller sample tests/formulas/test_grid.py simulates")
    ap.add_argument("--families", help="comma-separated bundled architectures (default: all 14)")
    ap.add_argument("--limit", type=int, help="stop after this many points")
    ap.add_argument("--shard", help="I/N: only every N-th point from the I-th (0-based), to split a run")
    ap.add_argument("--order", type=int, metavar="SEED",
                    help="run the points in one fixed shuffled order (random.Random(SEED)), so that a sweep "
                         "stopped early is a uniform random sample of the grid")
    ap.add_argument("--no-simulate", action="store_true", help="estimators only (the crash check)")
    ap.add_argument("--json", help="append-only results file (JSON lines, one per point as it finishes); a rerun "
                                   "with the same file resumes: finished points are skipped, no line is rewritten")
    ap.add_argument("--from-json", nargs="+", help="render the table from rows saved by --json (no run)")
    ap.add_argument("--docs", help="write the table page here (e.g. docs/consistency.md)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    from profiler.measure.quiet import quiet_libraries

    quiet_libraries()
    grid = dict(GRID)
    if args.families:
        grid["family"] = tuple(args.families.split(","))
    points = full_grid(grid) if args.full else ci_sample(grid) if args.ci else pairwise(grid)
    points = sweep_order(points, args.order)
    if args.shard:
        try:
            i, n = (int(x) for x in args.shard.split("/"))
            assert 0 <= i < n
        except (ValueError, AssertionError):
            print(f"--shard: {args.shard!r} is not I/N with 0 <= I < N (e.g. 0/2, 1/2)", file=sys.stderr)
            return 2
        points = points[i::n]
    if args.limit:
        points = points[: args.limit]
    known = load_known()
    rows = []
    t0 = time.perf_counter()
    if args.from_json:  # rows of earlier (sharded) runs, in grid order; the wall time is theirs (sum of seconds)
        saved = read_rows(args.from_json)
        rows = [saved[point_id(p)] for p in points if point_id(p) in saved]
    else:
        rows = _run(points, args, known)
    wall = time.perf_counter() - t0
    if args.from_json:
        wall = sum(r.get("seconds") or 0 for r in rows)
    kind = ("every valid point" if args.full else "pairwise sample") + (
        ", real-size architectures" if args.real else ", 2-layer stand-ins")
    title = (f"Generated by `python scripts/grid_consistency.py {' '.join(argv or sys.argv[1:])}` on "
             f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC at commit {_commit()}: {len(rows)} points ({kind}), "
             f"{wall / 60:.1f} min of {'simulation' if args.from_json else 'wall'} time on a shared 2-core machine "
             f"(load average ~{os.getloadavg()[0]:.0f} when written). CUDA target; components = its allocated part "
             f"(no assumed CUDA context / allocator slack); simulate = steady peak allocated (rank 0 under "
             f"ddp/fsdp2); tolerance {TOLERANCE:.0%}.")
    table = markdown(rows, known, title)
    print(table)
    if args.docs:
        page = Path(args.docs)
        header = ("# components vs simulate: the consistency grid\n\n"
                  "What `components` predicts against what `simulate` computes, point by point over the grid of "
                  "scripts/grid_consistency.py (README, section \"components and simulate agree\"). Known "
                  "differences and their causes: tests/formulas/known_differences.yaml.\n\n"
                  + FULL_NOTE + "\n\n")
        import yaml

        causes = (yaml.safe_load(KNOWN.read_text()) or {}).get("causes") or {} if KNOWN.exists() else {}
        notes = "\n## The causes of the known differences\n\n" + "".join(
            f"- **{k}**: {v.strip()}\n" for k, v in causes.items())
        page.write_text(header + table + notes)
    return 1 if any(verdict(r, known).startswith(("DIFFERS", "STALE", "RAISES")) for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
