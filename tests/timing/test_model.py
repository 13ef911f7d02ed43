"""The time model (roofline per op class + ring collectives), the GPU specs file, the efficiency fit and its LOO."""

from __future__ import annotations

import csv
import math

import pytest

from profiler.config import ConfigError, load_config
from profiler.timing.efficiency import FitRow, fit, leave_one_out, predict
from profiler.timing.estimate import parse_count
from profiler.timing.model import Efficiency, phase_time, ring_traffic, step_time, unit_seconds
from profiler.timing.specs import SPECS_CSV, spec_for, specs

H100 = spec_for("h100-sxm")
ONE = Efficiency(1.0, 1.0, 1.0)


def _work(mm_f=0, mm_b=0, att_f=0, att_b=0, other=0, coll=None) -> dict:
    return {"matmul_flops": mm_f, "matmul_bytes": mm_b, "attention_flops": att_f, "attention_bytes": att_b,
            "other_bytes": other, "collectives": coll or {}}


def test_compute_bound_matmul_runs_at_peak_times_efficiency():
    u = unit_seconds(_work(mm_f=989.4e12, mm_b=1e9), H100, H100.peak_flops("bfloat16"), 1)
    assert phase_time(u, ONE)["total"] == pytest.approx(1.0)
    assert phase_time(u, Efficiency(0.5, 1.0, 1.0))["total"] == pytest.approx(2.0)


def test_memory_bound_ops_run_at_hbm_bandwidth():
    u = unit_seconds(_work(mm_f=1e9, mm_b=3.35e12, other=3.35e12), H100, H100.peak_flops("bfloat16"), 1)
    t = phase_time(u, Efficiency(1.0, 0.5, 1.0))
    assert t["matmul"] == pytest.approx(2.0) and t["other"] == pytest.approx(2.0)


def test_ring_traffic_and_overlap():
    assert ring_traffic("all_gather", 800, 8) == 700
    assert ring_traffic("all_reduce", 800, 8) == 1400
    assert ring_traffic("reduce_scatter", 800, 1) == 0
    payload = 450e9 * 8 / 7  # one direction of NVLink 900 GB/s: 1 s of ring traffic over 8 GPUs
    u = unit_seconds(_work(other=3.35e12, coll={"all_gather": {"count": 1, "bytes": payload}}), H100,
                     H100.peak_flops("bfloat16"), 8)
    t = phase_time(u, ONE)
    assert t["comm"] == pytest.approx(1.0) and t["total"] == pytest.approx(1.0)  # hidden behind 1 s of compute
    assert phase_time(u, Efficiency(1.0, 1.0, 0.25))["total"] == pytest.approx(4.0)  # longer: it shows


def test_across_nodes_the_network_is_the_link():
    assert H100.link_bytes_per_s(8) == 450e9
    assert H100.link_bytes_per_s(16) == 50e9


def test_step_time_sums_phases_and_reports_tokens_and_mfu():
    cfg = load_config(None, ["train.batch_size=2", "train.seq_len=1000"],
                      base={"model": {"arch": "tiny-llama", "dtype": "bfloat16"}, "device": "cuda"})
    step = {"phases": {"forward": _work(mm_f=989.4e12), "backward": _work(mm_f=2 * 989.4e12)}}
    st = step_time(step, cfg, H100, ONE)
    assert st.step_s == pytest.approx(3.0)
    assert st.tokens_per_s == pytest.approx(2000 / 3)
    assert st.mfu == pytest.approx(1.0)


def test_specs_file_has_a_source_per_row_and_dense_peaks():
    with SPECS_CSV.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["source"].startswith("https://") for r in rows)
    assert specs()["h100-sxm"].bf16_tflops == 989.4  # 1979 with sparsity, halved
    with pytest.raises(ConfigError, match="tensor-core peak"):
        spec_for("v100-16gb").peak_flops("bfloat16")
    with pytest.raises(ConfigError, match="allowed"):
        spec_for("no-such-gpu")


def _rows(eff: Efficiency, n: int = 6) -> list[FitRow]:
    """Synthetic rows whose 'published' throughput is the model's own at `eff`: some compute-, some memory-bound."""
    rows = []
    for i in range(n):
        phases = ({"mm_f": 1.0 + i, "mm_b": 0.1, "att_f": 0.2, "att_b": 0.01, "other": 0.3 * (n - i), "comm": 0.5},)
        r = FitRow(f"r{i}", phases, 1000.0, 1.0)
        rows.append(FitRow(r.id, phases, 1000.0, predict(r, eff)))
    return rows


def test_fit_recovers_the_efficiencies_that_made_the_rows_and_loo_is_exact():
    truth = Efficiency(0.42, 0.7, 1.0)
    rows = _rows(truth)
    got = fit(rows)
    assert (got.matmul, got.memory) == (0.42, 0.7)
    assert all(math.isclose(p, r.measured, rel_tol=1e-9) for p, r in zip(leave_one_out(rows), rows, strict=True))


def test_a_tiered_fit_gives_gddr_gpus_their_own_matmul_efficiency_only_with_two_rows_each():
    hbm = _rows(Efficiency(0.5, 0.7, 1.0), 3)
    gddr = [FitRow(r.id + "g", r.phases, r.tokens_per_gpu, predict(r, Efficiency(0.9, 0.7, 1.0)), "gddr")
            for r in _rows(ONE, 3)]
    got = fit(hbm + gddr, tiered=True)
    assert (got.matmul, got.matmul_gddr, got.memory) == (0.5, 0.9, 0.7)
    assert got.matmul_for("gddr") == 0.9 and got.matmul_for("hbm") == 0.5
    assert fit(hbm + gddr[:1], tiered=True).matmul_gddr is None  # one GDDR row: no constant of its own


def test_fit_needs_two_rows():
    with pytest.raises(ValueError, match="at least 2"):
        fit(_rows(ONE, 1))


@pytest.mark.parametrize(("text", "value"), [("2e9", 2_000_000_000), ("500M", 500_000_000), ("1.5B", 1_500_000_000),
                                             ("10_000", 10_000), ("2T", 2 * 10**12)])
def test_parse_count(text, value):
    assert parse_count(text, "--tokens") == value


@pytest.mark.parametrize("text", ["", "abc", "-5", "0", "1e999999"])
def test_parse_count_refuses(text):
    with pytest.raises(ConfigError, match="--tokens"):
        parse_count(text, "--tokens")
