"""Published throughput rows: the shipped file validates, its cached work re-predicts without simulating, and the
fitted efficiencies file matches a refit on those rows (so the README's numbers can be reproduced)."""

from __future__ import annotations

import csv

import pytest

from profiler.config import ConfigError
from profiler.timing import validate as v
from profiler.timing.efficiency import fit
from profiler.timing.model import EFFICIENCY_CSV, fitted_efficiency


def test_shipped_rows_validate_and_each_has_a_source_and_a_measurement():
    rows = v.load_rows()
    assert len(rows) >= 7
    for r in rows:
        cfg = r.run_config()
        assert r.source.startswith("https://") and r.setup
        assert r.measured_tokens_per_s_per_gpu(cfg.parallel.world_size) > 0


def test_validate_uses_the_cached_work_and_returns_a_table(monkeypatch):
    def no_simulation(*a, **k):
        raise AssertionError("a cached row was simulated again")

    import importlib

    monkeypatch.setattr(importlib.import_module("profiler.simulate.backend"), "simulate", no_simulation)
    df = v.validate_throughput()
    assert list(df["id"]) == [r.id for r in v.load_rows()]
    assert {"measured", "predicted", "error_pct", "loo_error_pct", "mfu", "bound"} <= set(df.columns)
    assert all(abs(e) < 100 for e in df["error_pct"])


def test_the_efficiency_file_is_the_fit_of_the_shipped_rows():
    rows = v.load_rows()
    works = v._works(v.DEFAULT_ROWS, False, None)[1]
    frows = [v.fit_row(r, w) for r, w in zip(rows, works, strict=True) if r.fit]
    shipped = fitted_efficiency()
    eff = fit(frows, tiered=shipped.matmul_gddr is not None)
    assert (eff.matmul, eff.memory, eff.link, eff.matmul_gddr) == (shipped.matmul, shipped.memory, shipped.link,
                                                                    shipped.matmul_gddr)
    with EFFICIENCY_CSV.open(newline="") as f:
        params = {r["parameter"]: r["value"] for r in csv.DictReader(f)}
    assert int(params["n_rows"]) == len(frows)


def test_a_bad_row_is_one_config_error(tmp_path):
    p = tmp_path / "rows.yaml"
    p.write_text("rows:\n  - {id: x, source: s, setup: s, gpu: h100-sxm, config: {}, measured: {}, colour: red}\n")
    with pytest.raises(ConfigError, match="colour"):
        v.load_rows(p)
    with pytest.raises(ConfigError, match="does not exist"):
        v.load_rows(tmp_path / "none.yaml")


def test_own_timed_cuda_runs_become_rows(tmp_path):
    """A `run` result line from a CUDA GPU with a preset and a datasheet row becomes a throughput row: tokens/s per GPU
    = batch x seq / median step; CPU, fake and failed lines are not rows."""
    import json

    from profiler.config import REPO_ROOT, load_config
    from profiler.simulate.backend import simulate

    rec = simulate(load_config(REPO_ROOT / "configs" / "tiny_full.yaml", ["device=cuda"]), primed=True)
    lines = []
    for backend, status, device in (("cuda", "ok", "NVIDIA H100 80GB HBM3"), ("fake", "ok", "NVIDIA H100 80GB HBM3"),
                                    ("cuda", "oom", "NVIDIA H100 80GB HBM3"), ("cuda", "ok", "cpu")):
        r = dict(rec, backend=backend, status=status, timings={**rec["timings"], "median_step_s": 0.5},
                 env={**rec["env"], "device_name": device}, config_hash=rec["config_hash"] + backend + status + device)
        lines.append(json.dumps(r))
    p = tmp_path / "runs.jsonl"
    p.write_text("\n".join(lines) + "\n")
    rows = v.rows_from_runs([p])
    assert len(rows) == 1 and rows[0].gpu == "h100-sxm" and rows[0].fit
    assert rows[0].measured.tokens_per_s_per_gpu == 2 * 64 / 0.5
    assert rows[0].run_config().train.batch_size == 2
