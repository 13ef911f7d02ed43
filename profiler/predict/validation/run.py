"""Every row against its prediction (profiler.predict.validation.predictor): one table line per published row.

Predictions are cached per config hash in $LLM_MEMPROF_CACHE/validate/<code digest>.jsonl
(profiler.measure.loading.cache_dir, the checkpoint cache's folder): the digest covers the code that makes
predictions, the bundled architectures and the library versions, so any change there starts a fresh cache.
A predictor that fails on a row (an op it cannot trace, an exception in a formula) fails that row only: its
line says why, and no number is made up for it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from profiler.config import RunConfig
from profiler.predict.validation.convert import COMPARED_AS, from_bytes, predicted_in_metric, to_bytes
from profiler.predict.validation.predictor import Prediction, predict, predictor_for
from profiler.predict.validation.rows import Row

PACKAGE = Path(__file__).resolve().parents[2]


def code_digest() -> str:
    """sha256 over the package's .py files that make predictions (all but the commands and this package; its
    predictor module included), the bundled config.json files and the library versions."""
    import importlib.metadata as md

    h = hashlib.sha256()
    skip = (PACKAGE / "commands", PACKAGE / "predict" / "validation")  # read predictions, never make them
    files = [p for p in PACKAGE.rglob("*.py") if not p.is_relative_to(skip[0]) and not p.is_relative_to(skip[1])]
    mine = Path(__file__).with_name("predictor.py")
    for p in sorted([*files, mine, *(PACKAGE / "models").glob("*.json")]):
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
    out = []
    for i, row in enumerate(rows):
        if on_row is not None:
            on_row(row, i)
        rec = base_record(row)
        if row.not_run is None:
            try:
                p = predict_cached(row.run_config(), cache)
            except Exception as exc:  # noqa: BLE001 - one row's failure is that row's line, not the run's end
                from profiler.predict.fit import SimulationFailed

                first = (str(exc).splitlines() or [""])[0]
                rec["error"] = first if isinstance(exc, SimulationFailed) else f"{type(exc).__name__}: {first}"
            else:
                conv = predicted_in_metric(row.metric, p.allocated, p.reserved, p.nvml)
                err = (conv.bytes - rec["published_bytes"]) / rec["published_bytes"] * 100
                rec.update(predicted=round(from_bytes(conv.bytes, row.unit), 2), predicted_bytes=conv.bytes,
                           predicted_allocated_bytes=p.allocated, error_pct=round(err, 1),
                           abs_error_pct=round(abs(err), 1), predictor=p.predictor, conversion=conv.how,
                           seconds=round(p.seconds, 1), cached=p.cached)
        out.append(rec)
    return pd.DataFrame(out, columns=COLUMNS)
