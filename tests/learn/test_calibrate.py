"""Calibration: the robust fit recovers known factors, CV folds are really held out, tables round-trip.

Synthetic records use the real `components` estimator when profiler.formulas provides it (else a linear
stand-in with the same interface), so the factors are recovered through the same path real runs take.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from profiler.config import load_config
from profiler.learn import calibrate


@dataclass
class FakeEstimate:
    estimator: str
    components: dict[str, int]
    total: int


def stand_in_estimate(name: str, cfg) -> FakeEstimate:
    tokens = cfg.train.batch_size * cfg.train.seq_len
    weights = 2 * 10**8 * len(cfg.model.name)  # GiB-scale, different per model
    comps = {"weights": weights, "gradients": weights if cfg.regime.kind == "full" else 0,
             "optimizer": 2 * weights if cfg.regime.kind == "full" else 10**7,
             "activations": 2**17 * tokens, "temporaries": 2**14 * tokens, "overhead": 0}
    return FakeEstimate(name, comps, sum(comps.values()))


def estimate_fn():
    try:
        from profiler.formulas import estimate
    except ImportError:
        return stand_in_estimate
    return estimate


MODELS = ["mistral-7b", "gpt2", "qwen2.5-0.5b", "llama-2-7b"]  # realistic sizes: b is fitted in bytes
SEQ_LENS = [128, 512, 1024, 2048]
TRUE = {"full": {"peak_allocated": (1.3, 300 * 2**20), "activations": (0.8, 2**20)},
        "lora": {"peak_allocated": (1.1, 50 * 2**20), "activations": (1.5, 0)}}


def synthetic_records(noise: float = 0.01, seed: int = 0) -> list[dict]:
    """Records whose measured bytes are a·predicted + b (times 1 ± noise), from the estimator itself."""
    rng = np.random.default_rng(seed)
    est = estimate_fn()
    recs = []
    for regime, factors in TRUE.items():
        for model in MODELS:
            for seq in SEQ_LENS:
                over = [f"model.arch={model}", f"regime.kind={regime}", f"train.seq_len={seq}", "device=cuda"]
                cfg = load_config(None, over)
                e = est("components", cfg)
                a, b = factors["peak_allocated"]
                peak = int((a * e.total + b) * (1 + noise * rng.standard_normal()))
                a2, b2 = factors["activations"]
                act = int((a2 * e.components["activations"] + b2) * (1 + noise * rng.standard_normal()))
                recs.append({
                    "run_id": f"{regime}-{model}-{seq}", "timestamp": "2025-01-01T00:00:00+00:00",
                    "config_hash": cfg.config_hash(), "config": cfg.model_dump(mode="json"), "status": "ok",
                    "backend": "cuda",
                    "env": {"hostname": "h", "python": "3", "torch": "t",
                            "device_name": "NVIDIA H100 80GB HBM3", "device_slug": "nvidia-h100-80gb-hbm3"},
                    "peaks": {"peak_allocated_bytes": peak, "peak_reserved_bytes": None,
                              "nvml_peak_bytes": None},
                    "phases": [{"phase": "forward", "step": 1, "warmup": False, "allocated_bytes": 0,
                                "peak_allocated_bytes": peak, "seconds": 0.1,
                                "breakdown": {"activations": act}}],
                })
    return recs


def test_robust_fit_recovers_a_b_despite_noise_and_an_outlier():
    rng = np.random.default_rng(1)
    x = np.linspace(1e9, 40e9, 30)
    y = (1.25 * x + 2e9) * (1 + 0.01 * rng.standard_normal(x.size))
    y[5] *= 3.0  # one wild run (e.g. another process on the GPU)
    fit = calibrate.robust_fit(x, y)
    assert fit.a == pytest.approx(1.25, rel=0.02)
    assert fit.b == pytest.approx(2e9, rel=0.1)
    assert fit.note == ""


def test_fit_degenerate_cases_say_what_they_did():
    one = calibrate.robust_fit([5.0, 5.0, 5.0], [10.0, 11.0, 9.0])
    assert one.b == 0.0 and one.a == pytest.approx(2.0, rel=0.06) and "a only" in one.note
    zero = calibrate.robust_fit([0.0, 0.0], [7.0, 9.0])
    assert zero.a == 1.0 and zero.b == pytest.approx(8.0) and "b only" in zero.note


def test_calibration_on_synthetic_records_recovers_known_factors():
    samples, skipped = calibrate.to_samples(synthetic_records(), estimate_fn=estimate_fn())
    assert skipped == [] and len(samples) == len(MODELS) * len(SEQ_LENS) * 2
    rows = {(r.regime, r.target): r for r in calibrate.fit_rows(samples)}
    for regime, factors in TRUE.items():
        for target, (a, b) in factors.items():
            row = rows[(regime, target)]
            assert row.n_runs == 16 and row.n_models == 4 and row.n_seq_lens == 4
            assert row.a == pytest.approx(a, rel=0.03), (regime, target)
            assert abs(row.b - b) < 0.02 * np.mean([p[1] for p in row.points]), (regime, target, row.b)
            assert row.mape_pct < 3 and row.r2 > 0.99
            assert row.lomo_mape_pct < 5 and row.loso_mape_pct < 5  # factors generalise across models
    # targets without measurements (reserved, NVML on this synthetic data) get no row
    assert ("full", "peak_reserved") not in rows and ("full", "nvml_peak") not in rows


def test_cv_folds_hold_their_group_out_of_training():
    groups = ["m1", "m1", "m2", "m3", "m3", "m3"]
    folds = calibrate.cv_folds(groups)
    assert [f.held_out for f in folds] == ["m1", "m2", "m3"]
    for f in folds:
        assert f.held_out not in {groups[i] for i in f.train}
        assert {groups[i] for i in f.test} == {f.held_out}
        assert sorted(f.train + f.test) == list(range(len(groups)))
    assert calibrate.cv_folds(["only", "only"]) == []

    # m3 follows a different law: its fold's fit must not see it, so its held-out error is large,
    # while the in-sample fit (which sees m3) is pulled towards it.
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) * 1e9
    y = np.where(np.array(groups) == "m3", 3.0 * x, 1.0 * x)
    cv = calibrate.cross_validate(x, y, groups)
    fold3 = next(f for f in cv.folds if f.held_out == "m3")
    assert fold3.fit.a == pytest.approx(1.0, rel=1e-6) and fold3.fit.b == pytest.approx(0.0, abs=1e3)
    assert cv.mape > 30
    assert calibrate.cross_validate(x, y, ["one"] * 6) is None


def test_measured_targets_use_the_steady_state_peak_and_nvml_above_baseline():
    rec = {"peaks": {"peak_allocated_bytes": 100, "peak_reserved_bytes": 120, "nvml_peak_bytes": 1000},
           "nvml": {"baseline_used_bytes": 300},
           "phases": [
               {"phase": "backward", "step": 0, "warmup": True, "peak_allocated_bytes": 999,
                "breakdown": {"activations": 999}},
               {"phase": "forward", "step": 2, "warmup": False, "peak_allocated_bytes": 50,
                "breakdown": {"activations": 40, "weights": 10}},
               {"phase": "backward", "step": 2, "warmup": False, "peak_allocated_bytes": 80,
                "breakdown": {"activations": 30, "weights": 10, "gradients": 40}},
               {"phase": "backward", "step": 1, "warmup": False, "peak_allocated_bytes": 90,
                "breakdown": {"activations": 77}},
           ]}
    got = calibrate.measured_targets(rec)
    assert got == {"peak_allocated": 100, "peak_reserved": 120, "nvml_peak": 700,
                   "activations": 30, "weights": 10, "gradients": 40}


def test_tables_round_trip_and_apply(tmp_path):
    samples, _ = calibrate.to_samples(synthetic_records(noise=0.0), estimate_fn=estimate_fn())
    rows = calibrate.fit_rows(samples)
    written = calibrate.write_tables(rows, tmp_path, ["runs.jsonl"])
    assert [p.name for p in written] == ["nvidia-h100-80gb-hbm3.csv", "nvidia-h100-80gb-hbm3.md"]
    md = written[1].read_text()
    assert "## full (16 runs)" in md and "| peak_allocated | 16 | 1.3 |" in md
    assert "| LOMO | LOSO |" in md

    table = calibrate.load_calibration(written[1])  # the .md path resolves to its .csv
    cfg = load_config(None, ["model.arch=qwen2.5-0.5b", "regime.kind=full", "train.seq_len=300"])
    est = estimate_fn()("components", cfg)
    out = table.apply(est, "full")
    a, b = TRUE["full"]["peak_allocated"]
    assert out["calibrated"] and out["n_runs"] == 16 and out["table"].endswith(".csv")
    assert out["total_target"] == "peak_allocated"
    assert out["total"] == pytest.approx(a * est.total + b, rel=1e-3)
    a2, b2 = TRUE["full"]["activations"]
    want = a2 * est.components["activations"] + b2
    assert out["components"]["activations"] == pytest.approx(want, rel=1e-3)
    assert out["components"]["weights"] == est.components["weights"]  # no row: left raw, and said so
    assert "weights" in out["uncalibrated_components"]

    none = table.apply(est, "qlora4")
    assert not none["calibrated"] and none["total"] == est.total and "qlora4" in none["note"]
    assert calibrate.default_calibration_path("no-such-gpu") is None


def test_only_ok_and_latest_runs_are_fitted():
    recs = synthetic_records()[:3]
    stale = dict(recs[0], timestamp="2024-01-01T00:00:00+00:00", run_id="stale",
                 peaks={"peak_allocated_bytes": 1})
    oom = dict(recs[1], status="oom", config_hash="other")
    samples, _ = calibrate.to_samples([stale, *recs, oom], estimate_fn=estimate_fn())
    assert len(samples) == 3
    assert all(s.measured["peak_allocated"] > 1 for s in samples)
    assert not math.isnan(calibrate.fit_rows(samples)[0].a)


def _calibrate(results: list, out, capsys, **kw) -> tuple[int, str]:
    import argparse

    from profiler.commands.calibrate import main

    ns = argparse.Namespace(results=[str(p) for p in results], out=str(out), figures=kw.get("figures"),
                            estimator="components", include_fake=False)
    rc = main(ns)
    return rc, capsys.readouterr().err


def test_crafted_slug_and_name_cannot_write_outside_out_or_inject_markdown(tmp_path, capsys):
    """Item 5: env.device_slug '../../x' names x.csv inside --out; device_name's Markdown is escaped."""
    import json

    recs = synthetic_records()[:8]
    for r in recs:
        r["env"].update(device_slug="../../pwned/x", device_name="GPU | evil [link](http://e) <img src=x>\n# H")
    runs = tmp_path / "in" / "runs.jsonl"
    runs.parent.mkdir()
    runs.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "deep" / "er" / "cal"
    rc, _ = _calibrate([runs], out, capsys, figures=str(tmp_path / "deep" / "er" / "fig"))
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["pwned-x.csv", "pwned-x.md"]
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "deep" / "pwned").exists()
    assert [p.name for p in (tmp_path / "deep" / "er" / "fig").iterdir()] == ["calibration-pwned-x.png"]
    md = (out / "pwned-x.md").read_text()
    title = md.splitlines()[0]
    assert title == r"# Calibration: GPU \| evil \[link\](http://e) \<img src=x\> \# H (`pwned-x`)"
    assert "<img" not in md.replace(r"\<img", "") and "](http" not in md.replace(r"\](http", "")
    table = calibrate.load_calibration(out / "pwned-x.csv")
    assert table.device_slug == "pwned-x"  # the table round-trips with the sanitised slug


def test_calibrate_skips_damaged_lines_with_one_warning(tmp_path, capsys):
    """Item 3: `null`, `[]`, `{"status":"ok"}`, a non-UTF-8 byte, a newer schema_version, a truncated tail
    used to be tracebacks; now they are skipped and counted in one warning."""
    import json

    recs = synthetic_records()[:8]
    newer = dict(recs[0], schema_version=99)
    runs = tmp_path / "runs.jsonl"
    runs.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in recs)
                     + b'null\n[]\n{"status":"ok"}\n{"run_id": "\xff"}\n' + json.dumps(newer).encode()
                     + b'\n{"run_id": "trunc')
    rc, err = _calibrate([runs], tmp_path / "cal", capsys)
    assert rc == 0 and "Traceback" not in err
    assert err.count("warning") == 1 and "skipped 6 damaged lines" in err and "schema_version 99" in err
    assert calibrate.load_calibration(tmp_path / "cal" / "nvidia-h100-80gb-hbm3.csv").n_runs("full") == 8


def test_calibrate_defaults_under_the_working_directory_and_help_shows_no_checkout_path(capsys):
    """Issue 11 item 3: default outputs are ./results/... of the working directory, not the source tree."""
    from profiler.cli import main
    from profiler.config import REPO_ROOT

    assert not calibrate.CALIBRATION_DIR.is_absolute()
    with pytest.raises(SystemExit):
        main(["calibrate", "--help"])
    text = capsys.readouterr().out
    assert "results/calibration" in text and str(REPO_ROOT) not in text


def test_unwritable_out_is_one_line_exit_2(tmp_path, capsys):
    import json

    runs = tmp_path / "runs.jsonl"
    runs.write_text("".join(json.dumps(r) + "\n" for r in synthetic_records()[:2]))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, err = _calibrate([runs], blocker / "cal", capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--out" in err


def test_sharded_runs_are_their_own_calibration_group():
    """Calibration rows are per strategy where measured: an FSDP2 x 8 run never fits or corrects a 1-GPU row."""
    one = load_config(None, [], base={"model": {"arch": "tiny-llama"}, "device": "cpu"})
    sharded = load_config(None, ["parallel.strategy=fsdp2", "parallel.world_size=8"],
                          base={"model": {"arch": "tiny-llama"}, "device": "cpu"})
    assert calibrate.group_of(one) == "full"
    assert calibrate.group_of(sharded) == "full+fsdp2x8"
