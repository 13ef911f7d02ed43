"""Published throughput rows (validation/throughput.yaml) predicted by simulate + the time model: a table of errors.

Each row's config is simulated once with the FLOP/byte recorder (minutes for an 8B model at seq 8192); the counted
work is kept in validation/throughput_work.json under the config's hash, so later runs re-predict without
re-simulating (`resimulate=True` redoes it). `validate_throughput(path)` returns one line per row: measured and
predicted tokens/s per GPU with the fitted efficiencies (in-sample for rows that were fitted on) and the
leave-one-out prediction (the honest error), and what bounds each phase. `refit(path)` fits the efficiencies on
the `fit` rows and writes profiler/data/timing_efficiency.csv and timing_fit_rows.csv.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from profiler.config import REPO_ROOT, ConfigError, RunConfig, load_config
from profiler.timing.efficiency import FitRow, fit, leave_one_out, predict, write
from profiler.timing.flops import WorkRecorder, step_work
from profiler.timing.model import Efficiency, fitted_efficiency, step_time, unit_seconds
from profiler.timing.specs import GPUS_PER_NODE, INTER_NODE_GBPS, spec_for

DEFAULT_ROWS = REPO_ROOT / "validation" / "throughput.yaml"


class Measured(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokens_per_s_per_gpu: float | None = None
    seconds: float | None = None
    tokens: int | None = None


class ThroughputRow(BaseModel):
    """One published throughput with its setup and the config in our terms."""

    model_config = ConfigDict(extra="forbid")
    id: str
    source: str
    setup: str
    table: str = ""
    caveats: str = ""
    gpu: str
    hbm_gbps: float | None = None  # where the source's GPU differs from the datasheet row (torchtitan's H100)
    gpus_per_node: int = GPUS_PER_NODE
    inter_node_gbps: float = INTER_NODE_GBPS
    extra_forward_matmul_recompute: float = Field(0.0, ge=0, le=1)
    fit: bool = True
    config: dict[str, Any]
    measured: Measured

    def run_config(self) -> RunConfig:
        return load_config(None, [], base={**self.config, "device": "cuda"})

    def measured_tokens_per_s_per_gpu(self, world: int) -> float:
        m = self.measured
        if m.tokens_per_s_per_gpu:
            return m.tokens_per_s_per_gpu
        if m.seconds and m.tokens:
            return m.tokens / m.seconds / world
        raise ConfigError(f"{self.id}.measured: give tokens_per_s_per_gpu, or seconds and tokens")


def load_rows(path: str | Path = DEFAULT_ROWS) -> list[ThroughputRow]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"throughput rows: file {str(path)!r} does not exist")
    data = yaml.safe_load(p.read_text()) or {}
    rows = data.get("rows")
    if not isinstance(rows, list):
        raise ConfigError(f"{path}: needs a top-level `rows:` list")
    try:
        return [ThroughputRow.model_validate(r) for r in rows]
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def rows_from_runs(paths: list[str | Path]) -> list[ThroughputRow]:
    """Our own timed runs as throughput rows: every ok CUDA record of `python -m profiler run` (results/runs/*.jsonl)
    with a median step time, on a GPU preset with a datasheet row. Measured tokens/s per GPU = batch x seq / median
    step seconds (the harness times steps after the warm-up). One row per config hash (the latest run)."""
    from profiler.results import read_records
    from profiler.timing.specs import preset_by_device_name, specs

    rows: dict[str, ThroughputRow] = {}
    for rec in read_records(paths):
        t, env = rec.get("timings") or {}, rec.get("env") or {}
        gpu = preset_by_device_name().get(env.get("device_name", ""))
        timed = rec.get("backend") == "cuda" and rec.get("status") == "ok" and t.get("median_step_s")
        if not timed or gpu not in specs():
            continue
        cfg = rec["config"]
        train = cfg["train"]
        config = {k: cfg[k] for k in ("model", "regime", "optimizer", "train", "parallel", "moe") if k in cfg}
        rows[rec["config_hash"]] = ThroughputRow(
            id=f"run-{rec['run_id'][:12]}", source=f"own run {rec['run_id']} ({rec.get('timestamp')})",
            setup=f"python -m profiler run on {env.get('device_name')}, torch {env.get('torch')}, "
                  f"git {env.get('git_revision')}", gpu=gpu, config=config,
            measured=Measured(tokens_per_s_per_gpu=train["batch_size"] * train["seq_len"] / t["median_step_s"]))
    return list(rows.values())


def _cache_path(path: Path) -> Path:
    return path.with_name(path.stem + "_work.json")


def row_work(row: ThroughputRow, cache: dict, resimulate: bool = False) -> dict:
    """The counted work of the row's steady step (from the cache where its config hash matches)."""
    cfg = row.run_config()
    key = cfg.config_hash()
    hit = cache.get(row.id)
    if hit and hit.get("config_hash") == key and not resimulate:
        return hit["work"]
    same = [v for v in cache.values() if v.get("config_hash") == key and v.get("fresh")]
    if same or (not resimulate and (same := [v for v in cache.values() if v.get("config_hash") == key])):
        cache[row.id] = {**same[0], "fresh": same[0].get("fresh", False)}  # another row with the same config
        return same[0]["work"]
    from profiler.simulate.backend import simulate

    rec = simulate(cfg, primed=True, recorder=WorkRecorder())
    if rec["status"] != "ok":
        raise RuntimeError(f"{row.id}: simulate {rec['status']}: {rec.get('error')}")
    work = step_work(rec)
    cache[row.id] = {"config_hash": key, "work": work, "attention_kernel": rec.get("attention_kernel"), "fresh": True}
    return work


def _extra(work: dict, row: ThroughputRow) -> int:
    fwd = work["phases"].get("forward", {})
    return int(row.extra_forward_matmul_recompute * fwd.get("matmul_flops", 0))


def fit_row(row: ThroughputRow, work: dict) -> FitRow:
    cfg = row.run_config()
    spec = spec_for(row.gpu)
    from profiler.timing.model import compute_dtype

    peak = spec.peak_flops(compute_dtype(cfg))
    n = cfg.parallel.world_size if cfg.parallel.strategy != "none" else 1
    phases = []
    for name, w in work["phases"].items():
        if name == "backward" and row.extra_forward_matmul_recompute:
            w = {**w, "matmul_flops": w["matmul_flops"] + _extra(work, row)}
        phases.append(unit_seconds(w, spec, peak, n, row.gpus_per_node, row.inter_node_gbps, row.hbm_gbps))
    tokens_per_gpu = cfg.train.batch_size * cfg.train.seq_len
    return FitRow(row.id, tuple(phases), tokens_per_gpu, row.measured_tokens_per_s_per_gpu(n), spec.memory)


def _save(cache_file: Path, cache: dict) -> None:
    out = {k: {kk: vv for kk, vv in v.items() if kk != "fresh"} for k, v in cache.items()}
    cache_file.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


def _works(path: Path, resimulate: bool, progress, runs: list | None = None) -> tuple[list[ThroughputRow], list[dict]]:
    """Each row's counted work (the file's rows, then our own timed runs'); the cache file is rewritten after every
    simulated row (a crash loses one)."""
    rows = load_rows(path) + (rows_from_runs(runs) if runs else [])
    cache_file = _cache_path(path)
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    works = []
    for r in rows:
        if progress:
            progress(f"{r.id}: counting work")
        before = cache.get(r.id)
        works.append(row_work(r, cache, resimulate))
        if cache.get(r.id) is not before:
            _save(cache_file, cache)
    return rows, works


def refit(path: str | Path = DEFAULT_ROWS, resimulate: bool = False, progress=None, runs: list | None = None
          ) -> Efficiency:
    """Fit the efficiencies on the `fit` rows (and `runs`: our own timed runs' JSONL files) and write the data files;
    returns the efficiency with its LOO error."""
    rows, works = _works(Path(path), resimulate, progress, runs)
    pairs = [(r, w) for r, w in zip(rows, works, strict=True) if r.fit]
    frows = [fit_row(r, w) for r, w in pairs]
    # two models, chosen by their leave-one-out error: one matmul efficiency for every GPU, or one per memory type
    loos = {tiered: leave_one_out(frows, tiered) for tiered in (False, True)}
    med = {t: statistics.median(abs(p - f.measured) / f.measured for p, f in zip(lo, frows, strict=True))
           for t, lo in loos.items()}
    tiered = med[True] < med[False]
    eff = fit(frows, tiered)
    fitted = [predict(f, eff) for f in frows]
    loo = loos[tiered]
    extra = [{"gpu": r.gpu, "world_size": r.run_config().parallel.world_size, "flops_per_step_per_gpu":
              w["matmul_flops"] + w["attention_flops"] + _extra(w, r), "hbm_bytes_per_step_per_gpu":
              w["matmul_bytes"] + w["attention_bytes"] + w["other_bytes"],
              "collective_payload_bytes": sum(c["bytes"] for c in w["collectives"].values()), "source": r.source}
             for r, w in pairs]
    other = ("per_memory_type" if not tiered else "shared", 100 * med[not tiered])
    m, p90 = write(eff, frows, fitted, loo, extra, other)
    fitted_efficiency.cache_clear()
    return Efficiency(eff.matmul, eff.memory, eff.link, "fitted", m, p90, len(frows), eff.matmul_gddr)


def validate_throughput(path: str | Path = DEFAULT_ROWS, eff: Efficiency | None = None, resimulate: bool = False,
                        progress=None, runs: list | None = None):
    """One line per published row (and per own timed run in `runs`): measured vs predicted tokens/s per GPU, % error,
    LOO prediction and error."""
    import pandas as pd

    rows, works = _works(Path(path), resimulate, progress, runs)
    eff = eff or fitted_efficiency()
    frows = [fit_row(r, w) for r, w in zip(rows, works, strict=True)]
    fit_set = [f for f, r in zip(frows, rows, strict=True) if r.fit]
    out = []
    for r, w, f in zip(rows, works, frows, strict=True):
        cfg = r.run_config()
        st = step_time(w, cfg, spec_for(r.gpu), eff, hbm_gbps=r.hbm_gbps, gpus_per_node=r.gpus_per_node,
                       inter_node_gbps=r.inter_node_gbps, extra_matmul_flops=_extra(w, r))
        others = [x for x in fit_set if x.id != f.id]
        loo = predict(f, fit(others, eff.matmul_gddr is not None)) if len(others) >= 2 else float("nan")
        out.append({"id": r.id, "gpu": r.gpu, "gpus": st.world_size, "measured": round(f.measured, 1),
                    "predicted": round(st.tokens_per_s_per_gpu, 1),
                    "error_pct": round((st.tokens_per_s_per_gpu - f.measured) / f.measured * 100, 1),
                    "loo_predicted": round(loo, 1), "loo_error_pct": round((loo - f.measured) / f.measured * 100, 1),
                    "mfu": round(st.mfu, 3), "bound": "/".join(sorted(set(st.bound.values()))), "fit": r.fit})
    return pd.DataFrame(out)


def median_abs(df, column: str = "loo_error_pct", rows=None) -> float:
    vals = [abs(v) for v, keep in zip(df[column], rows if rows is not None else [True] * len(df), strict=True)
            if keep and v == v]
    return statistics.median(vals) if vals else float("nan")


def out_of_sample(df) -> list[float]:
    """Each row's error where the row did not shape the efficiencies: LOO for fitted rows, the fit for the rest."""
    return [loo if fitted else err for loo, err, fitted in zip(df["loo_error_pct"], df["error_pct"], df["fit"],
                                                                 strict=True)]
