"""Run the predictor each row needs and compare it with the published figure: one table row per published row.

Predictor: `simulate` (profiler.simulate.backend.simulate, primed, through profiler.predict.fit.Predictor, which
also handles the 8-bit optimizers); `components` (profiler.formulas) where simulate cannot run the config
(DeepSpeed ZeRO, CPU offload). Figures are per rank (rank 0 of symmetric ranks). Predictions are cached per
config hash in $LLM_MEMPROF_CACHE/validate/<code digest>.jsonl (profiler.measure.loading.cache_dir, the
checkpoint cache's folder): the digest covers the package's code, the bundled architectures and the library
versions, so any change there starts a fresh cache.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from profiler.config import RunConfig
from profiler.predict.validation.convert import COMPARED_AS, from_bytes, predicted_in_metric, to_bytes
from profiler.predict.validation.rows import Row

PACKAGE = Path(__file__).resolve().parents[2]


@dataclass
class Prediction:
    """One config's prediction (bytes per rank)."""

    predictor: str  # simulate | components
    allocated: int
    reserved: int | None = None  # the predictor's own reserved figure, where it has one
    nvml: int | None = None
    note: str = ""
    seconds: float = 0.0
    cached: bool = False


def predictor_for(cfg: RunConfig) -> str:
    """simulate unless it refuses the config (ZeRO and CPU offload: simulate.backend.simulate says why)."""
    pc = cfg.parallel
    if pc.strategy.startswith("zero") or pc.offload.params or pc.offload.optimizer:
        return "components"
    return "simulate"


def code_digest() -> str:
    """sha256 over the package's .py files that make predictions (all but the commands and this package's report
    and rows modules; this module included), the bundled config.json files and the library versions."""
    import importlib.metadata as md

    h = hashlib.sha256()
    skip = (PACKAGE / "commands", PACKAGE / "predict" / "validation")  # read predictions, never make them
    files = [p for p in PACKAGE.rglob("*.py") if not p.is_relative_to(skip[0]) and not p.is_relative_to(skip[1])]
    for p in sorted([*files, Path(__file__), *(PACKAGE / "models").glob("*.json")]):
        h.update(str(p.relative_to(PACKAGE)).encode())
        h.update(p.read_bytes())
    for lib in ("torch", "transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            h.update(f"{lib}={md.version(lib)}".encode())
        except md.PackageNotFoundError:
            h.update(f"{lib}=none".encode())
    return h.hexdigest()[:16]


class Cache:
    """Predictions by (config hash, predictor) for one code digest; `None` path: no cache."""

    def __init__(self, folder: Path | None):
        self.path = None if folder is None else folder / f"{code_digest()}.jsonl"
        self.items: dict[str, dict] = {}
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    d = json.loads(line)
                    self.items[d.pop("key")] = d
                except (ValueError, KeyError):
                    continue  # a line cut short by an interrupted run: predicted again

    def get(self, key: str) -> Prediction | None:
        d = self.items.get(key)
        return None if d is None else Prediction(**{**d, "cached": True})

    def put(self, key: str, pred: Prediction) -> None:
        d = asdict(pred)
        d.pop("cached")
        self.items[key] = d
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps({"key": key, **d}) + "\n")


def default_cache() -> Cache:
    from profiler.measure.loading import cache_dir

    return Cache(cache_dir() / "validate")


def _field(rec: dict, name: str) -> int | None:
    """A field of a simulate record, at its top level or under `peaks` (where the allocator replay puts it)."""
    v = rec.get(name, (rec.get("peaks") or {}).get(name))
    return int(v) if isinstance(v, int | float) else None


def predict(cfg: RunConfig) -> Prediction:
    """One config's prediction with the predictor it needs; SimulationFailed where simulate cannot trace it."""
    t0 = time.perf_counter()
    kind = predictor_for(cfg)
    if kind == "components":
        from profiler.formulas import estimate

        est = estimate("components", cfg)
        return Prediction("components", est.total - est.get("overhead"), note="per rank, overhead removed",
                          seconds=time.perf_counter() - t0)
    from profiler.predict.fit import EIGHT_BIT, Predictor, modelled_allowance, with_changes

    pred = Predictor(modelled_allowance(), 0)
    peak = pred.peak(cfg)  # 8-bit optimizers: simulated as adamw less the exact state difference
    sim_cfg = with_changes(cfg, optimizer={"name": "adamw"}) if cfg.optimizer.name in EIGHT_BIT else cfg
    rec = pred.records[sim_cfg.config_hash()]
    shift = _field(rec, "peak_allocated_bytes") - peak if _field(rec, "peak_allocated_bytes") else 0
    reserved, nvml = _field(rec, "predicted_reserved_bytes"), _field(rec, "predicted_nvml_bytes")
    note = f"attention {rec.get('attention_kernel') or '?'}"
    if cfg.optimizer.name in EIGHT_BIT:
        note += f"; {cfg.optimizer.name} simulated as adamw less the 8-bit state saving"
    return Prediction("simulate", peak, None if reserved is None else reserved - shift,
                      None if nvml is None else nvml - shift, note, time.perf_counter() - t0)


def predict_cached(cfg: RunConfig, cache: Cache) -> Prediction:
    key = f"{cfg.config_hash()}:{predictor_for(cfg)}"
    hit = cache.get(key)
    if hit is not None:
        return hit
    out = predict(cfg)
    cache.put(key, out)
    return out


COLUMNS = ["id", "group", "stack", "era", "era_group", "gpus", "gpu_class", "moe", "metric", "compared_as", "unit",
           "published", "predicted", "error_pct", "abs_error_pct", "predictor", "conversion", "expressible",
           "not_expressed", "not_run", "error", "cause", "caveats", "subset", "source", "seconds", "cached",
           "published_bytes", "predicted_bytes", "predicted_allocated_bytes"]


def source_text(row: Row) -> str:
    r = row.ref
    if "url" in r:
        return r["url"]
    return f"{r.get('repo', '?')}:{r.get('path', '?')}@{r.get('commit', '?')[:12]}"


def base_record(row: Row) -> dict:
    return {"id": row.id, "group": row.group, "stack": row.stack, "era": row.era, "era_group": row.era_group,
            "gpus": row.gpus, "gpu_class": "multi-GPU" if row.gpus > 1 else "single GPU",
            "moe": "MoE" if row.is_moe else "dense", "metric": row.metric, "compared_as": COMPARED_AS.get(row.metric),
            "unit": row.unit, "published": row.value, "expressible": row.expressible,
            "not_expressed": "; ".join(row.not_expressed), "not_run": row.not_run, "error": None,
            "cause": row.cause, "caveats": "; ".join(row.caveats), "subset": " ".join(row.subset),
            "source": source_text(row), "published_bytes": None if row.value is None else to_bytes(row.value, row.unit)}


def evaluate(rows: list[Row], cache: Cache, on_row: Callable[[Row, int], None] | None = None) -> pd.DataFrame:
    """Every row: its prediction in its metric and the signed error; rows not run keep their reason."""
    from profiler.predict.fit import SimulationFailed

    out = []
    for i, row in enumerate(rows):
        if on_row is not None:
            on_row(row, i)
        rec = base_record(row)
        if row.not_run is None:
            try:
                p = predict_cached(row.run_config(), cache)
            except SimulationFailed as exc:
                rec["error"] = str(exc).splitlines()[0]
            else:
                conv = predicted_in_metric(row.metric, p.allocated, p.reserved, p.nvml)
                err = (conv.bytes - rec["published_bytes"]) / rec["published_bytes"] * 100
                rec.update(predicted=round(from_bytes(conv.bytes, row.unit), 2), predicted_bytes=conv.bytes,
                           predicted_allocated_bytes=p.allocated, error_pct=round(err, 1),
                           abs_error_pct=round(abs(err), 1), predictor=p.predictor, conversion=conv.how,
                           seconds=round(p.seconds, 1), cached=p.cached)
        out.append(rec)
    return pd.DataFrame(out, columns=COLUMNS)
