"""Every row against its prediction (profiler.predict.validation.predictor): one table line per published row.

Predictions are cached per (config hash, predictor) in $LLM_MEMPROF_CACHE/validate/<environment digest>.jsonl
(profiler.measure.loading.cache_dir, the checkpoint cache's folder). The file's digest (`env_digest`) covers
the library versions, every data file of the package (architectures, GPU table, op lists) and the environment
variables that change a prediction (ALLOC_ENV). Each entry also records the sha of every profiler module that was
loaded when it was made (`loaded_modules`): a module that changed since then makes the entry stale, and the row
is predicted again. A module that was not loaded cannot have taken part in the prediction, so a change to it
(commands, the dry-run, this module and the report) keeps the entry. A predictor that fails on a row (an op it
cannot trace, an exception in a formula) fails that row only: its line says why, and no number is made up for it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from profiler.config import RunConfig
from profiler.predict.validation.convert import (
    COMPARED_AS,
    REPLAY_METRICS,
    allowance_in_metric,
    from_bytes,
    predicted_in_metric,
    to_bytes,
)
from profiler.predict.validation.predictor import Prediction, predict, predictor_for
from profiler.predict.validation.rows import Row

PACKAGE = Path(__file__).resolve().parents[2]


ALLOC_ENV = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF", "CUBLAS_WORKSPACE_CONFIG")  # read by profiler.allocator
LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "trl")
# modules that read or compare predictions and never make one: loaded before the first prediction, left out of
# each entry's module list so that changing them keeps the cache
READERS = ("profiler.__main__", "profiler.cli", "profiler.commands.validate", "profiler.predict.validation.run",
           "profiler.predict.validation.report", "profiler.predict.validation.rows",
           "profiler.predict.validation.convert")


def env_digest() -> str:
    """sha256 over the library versions, every non-Python file of the package (bundled architectures, data
    tables) and the environment variables in ALLOC_ENV: the cache file's name."""
    import importlib.metadata as md

    h = hashlib.sha256()
    for lib in LIBRARIES:
        try:
            h.update(f"{lib}={md.version(lib)}".encode())
        except md.PackageNotFoundError:
            h.update(f"{lib}=none".encode())
    h.update(f"python={sys.version_info[:2]}".encode())
    for name in ALLOC_ENV:
        h.update(f"{name}={os.environ.get(name, '')}".encode())
    data = [p for p in PACKAGE.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
            and "__pycache__" not in p.parts]
    for p in sorted(data):
        h.update(str(p.relative_to(PACKAGE)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


@functools.cache
def file_sha(path: str) -> str:
    """sha256 (16 hex digits) of a file; '-' where it is gone."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except OSError:
        return "-"


def loaded_modules() -> dict[str, str]:
    """Package-relative path -> sha of every profiler module loaded now, READERS left out."""
    out = {}
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if not f or name in READERS or not (name == "profiler" or name.startswith("profiler.")):
            continue
        p = Path(f).resolve()
        if p.is_relative_to(PACKAGE):
            out[str(p.relative_to(PACKAGE))] = file_sha(str(p))
    return out


def stale_modules(modules: dict[str, str]) -> list[str]:
    """The recorded modules whose file changed (or is gone) since the entry was made."""
    return [rel for rel, sha in modules.items() if file_sha(str(PACKAGE / rel)) != sha]


class Cache:
    """Predictions by (config hash, predictor) for one environment digest; `None` folder: kept in memory only
    (rows that share a config are still predicted once)."""

    def __init__(self, folder: Path | None):
        self.path = None if folder is None else folder / f"{env_digest()}.jsonl"
        self.items: dict[str, dict] = {}
        self.stale: dict[str, list[str]] = {}  # key -> the changed modules that made a stored entry stale
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    d = json.loads(line)
                    key = d.pop("key")
                except (ValueError, KeyError):
                    continue  # a line cut short by an interrupted run: predicted again
                changed = stale_modules(d.pop("modules", None) or {"(no module list)": "?"})
                if changed:
                    self.stale[key] = changed
                    self.items.pop(key, None)
                else:
                    self.items[key] = d  # a later line for the same key wins
                    self.stale.pop(key, None)

    def get(self, key: str) -> Prediction | None:
        d = self.items.get(key)
        return None if d is None else Prediction(**{**d, "cached": True})

    def put(self, key: str, pred: Prediction, modules: dict[str, str]) -> None:
        d = asdict(pred)
        d.pop("cached")
        self.items[key] = d
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps({"key": key, **d, "modules": modules}) + "\n")


def default_cache() -> Cache:
    from profiler.measure.loading import cache_dir

    return Cache(cache_dir() / "validate")


def predict_cached(cfg: RunConfig, cache: Cache) -> Prediction:
    key = f"{cfg.config_hash()}:{predictor_for(cfg)}"
    hit = cache.get(key)
    if hit is not None:
        return hit
    out = predict(cfg)
    cache.put(key, out, loaded_modules())
    return out


COLUMNS = ["id", "group", "stack", "era", "era_group", "gpus", "gpu_class", "moe", "metric", "compared_as", "unit",
           "published", "predicted", "error_pct", "abs_error_pct", "predictor", "conversion", "expressible",
           "not_expressed", "not_run", "error", "cause", "caveats", "basis", "subset", "source", "gpu", "gpu_arch",
           "gpu_arch_how", "predicted_allowance", "error_allowance_pct", "seconds", "cpu_seconds", "row_seconds",
           "cached", "published_bytes", "predicted_bytes", "predicted_allocated_bytes", "predicted_reserved_bytes",
           "predicted_allowance_bytes"]


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
            "cause": row.cause, "caveats": "; ".join(row.caveats), "basis": "; ".join(row.basis),
            "subset": " ".join(row.subset), "source": source_text(row),
            "published_bytes": None if row.value is None else to_bytes(row.value, row.unit)}


def evaluate(rows: list[Row], cache: Cache, on_row: Callable[[Row, int], None] | None = None) -> pd.DataFrame:
    """Every row: its prediction in its metric and the signed error; rows not run keep their reason. Rows measured
    as reserved or nvidia-smi whose predictor replayed the allocator also get the error of the rule it replaced
    (allocated + 3 %, convert.allowance_in_metric): #22's comparison."""
    out = []
    for i, row in enumerate(rows):
        if on_row is not None:
            on_row(row, i)
        rec = base_record(row)
        t0 = time.perf_counter()
        if row.not_run is None:
            rec["gpu"] = row.gpu  # the GPU whose kernel rules the prediction used (rows that run)
            rec["gpu_arch"], rec["gpu_arch_how"] = row.gpu_arch()
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
                           seconds=round(p.seconds, 1), cpu_seconds=round(p.cpu_seconds, 1), cached=p.cached,
                           predicted_reserved_bytes=p.reserved)
                if row.metric in REPLAY_METRICS and p.reserved is not None:
                    old = allowance_in_metric(row.metric, p.allocated)
                    rec.update(predicted_allowance=round(from_bytes(old.bytes, row.unit), 2),
                               predicted_allowance_bytes=old.bytes, error_allowance_pct=round(
                                   (old.bytes - rec["published_bytes"]) / rec["published_bytes"] * 100, 1))
        rec["row_seconds"] = round(time.perf_counter() - t0, 2)
        out.append(rec)
    return pd.DataFrame(out, columns=COLUMNS)
