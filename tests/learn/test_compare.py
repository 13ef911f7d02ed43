"""`profiler compare` on a small synthetic result set (tests/data/synthetic_runs.jsonl, hand-built)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import pytest

from profiler.commands.compare import add_arguments, main
from profiler.config import RunConfig
from profiler.formulas import estimate
from profiler.learn.compare import compare_tables
from profiler.results import read_run_records as read_records

DATA = Path(__file__).parents[1] / "data" / "synthetic_runs.jsonl"
P7 = 6_738_415_616


@pytest.fixture(scope="module")
def tables():
    return compare_tables(read_records([DATA]))


def test_runs_table_values(tables):
    runs = tables["runs"].set_index("run_id")
    assert list(runs.index) == [
        "cpu-full",
        "cpu-lora",
        "h100-full-512",
        "h100-full-1024",
        "h100-qlora4",
    ]  # no oom
    r = runs.loc["h100-full-512"]
    assert (r["against"], r["measured"]) == ("nvml", 63_000_000_000)  # NVML peak - baseline
    assert r["adam_8_bytes"] == 8 * P7
    assert r["adam_8_bytes_err_pct"] == round(100 * (8 * P7 - 63e9) / 63e9, 2) == -14.43
    assert runs.loc["h100-qlora4", "against"] == "reserved"
    assert runs.loc["cpu-full", "against"] == "allocated"
    assert runs.loc["cpu-full", "rule_1p2x_err_pct"] == -83.25  # 335,001 B vs 2,000,000 B
    assert pd.isna(runs.loc["cpu-lora", "accelerate"])  # not applicable to lora


def test_summary_mape_and_worst(tables):
    s = tables["summary"].set_index(["estimator", "regime"])
    full = s.loc[("adam_8_bytes", "full")]
    errs = [-44.17, -14.43, -15.77]  # cpu-full, h100-full-512, h100-full-1024
    assert full["runs"] == 3
    assert full["mape"] == pytest.approx(sum(map(abs, errs)) / 3, abs=0.01)
    assert full["worst"] == -44.17
    assert ("accelerate", "lora") not in s.index


def test_component_comparison_uses_the_measured_phase(tables):
    c = tables["components"].set_index("category")
    assert set(c["phase"]) == {"optimizer_step"}
    rec = next(r for r in read_records([DATA]) if r.run_id == "cpu-full")
    est = estimate("components", RunConfig.model_validate(rec.config))
    assert (
        c.loc["weights", "predicted"] == est.details["optimizer_step:weights"] == c.loc["weights", "measured"]
    )
    assert (
        c.loc["gradients", "predicted"]
        == est.details["gradients"]
        == 279_168
        == c.loc["gradients", "measured"]
    )


def test_cli_writes_markdown_csv_and_plots(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert main(parser.parse_args([str(DATA), "--out", str(tmp_path)])) == 0
    md = (tmp_path / "compare.md").read_text()
    assert "| adam_8_bytes | full | 3 |" in md
    assert (
        pd.read_csv(tmp_path / "runs.csv").set_index("run_id").loc["h100-full-512", "measured"]
        == 63_000_000_000
    )
    assert (tmp_path / "scatter_components.png").stat().st_size > 1000
    assert list(tmp_path.glob("vs_seq_len_*.png"))  # the two llama-2-7b full runs at seq 512 and 1024
    assert "MAPE" in capsys.readouterr().out


def test_damaged_lines_are_skipped_with_one_warning(tmp_path, capsys):
    """Item 3: a truncated last line, valid JSON that is not a record, a non-UTF-8 byte, a newer
    schema_version: compare skips them (one warning that counts them) and compares the rest."""
    damaged = tmp_path / "runs.jsonl"
    newer = DATA.read_text().splitlines()[0].replace('"schema_version": 1', '"schema_version": 99')
    damaged.write_bytes(DATA.read_bytes() + b'null\n{"status": "ok"}\n{"run_id": "\xff"}\n'
                        + newer.encode() + b'\n{"run_id": "trunc')
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert main(parser.parse_args([str(damaged), "--out", str(tmp_path / "out"), "--no-plots"])) == 0
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "skipped 5 damaged lines" in err and "schema_version 99" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"run_id": 1}\n')
    assert main(parser.parse_args([str(bad), "--out", str(tmp_path / "out")])) == 1
    err = capsys.readouterr().err
    assert "skipped 1 damaged line" in err and "no ok runs" in err


def test_simulate_is_judged_like_an_estimator_and_never_as_a_measurement(tmp_path):
    """A fake line for the h100-full-512 config: it joins by config hash, and on its own is no measurement."""
    import json

    from profiler.learn.compare import simulated_peaks

    recs = read_records([DATA])
    measured = next(r for r in recs if r.run_id == "h100-full-512")
    fake = json.loads(measured.model_dump_json())
    fake.update(run_id="sim-full-512", backend="fake", nvml=None)
    fake["peaks"] = {"peak_allocated_bytes": 60_000_000_000}
    sim_file = tmp_path / "sim.jsonl"
    sim_file.write_text(json.dumps(fake) + "\n")
    sims = simulated_peaks(read_records([sim_file]))
    assert sims == {measured.config_hash: 60_000_000_000}
    runs = compare_tables(recs + read_records([sim_file]), simulated=sims)["runs"].set_index("run_id")
    assert "sim-full-512" not in runs.index
    assert runs.loc["h100-full-512", "simulate"] == 60_000_000_000
    assert runs.loc["h100-full-512", "simulate_err_pct"] == round(100 * (60e9 - 63e9) / 63e9, 2)
    assert pd.isna(runs.loc["h100-qlora4", "simulate"])
    summary = compare_tables(recs, simulated=sims)["summary"].set_index(["estimator", "regime"])
    assert summary.loc[("simulate", "full"), "runs"] == 1


def test_unusable_out_is_one_line_exit_2_before_any_work(tmp_path, capsys, monkeypatch):
    """--out a regular file: refused before the results are read (compare_tables must not run)."""
    import profiler.commands.compare as command

    monkeypatch.setattr(command, "compare_tables", lambda *a, **k: pytest.fail("worked before checking --out"))
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert main(parser.parse_args([str(DATA), "--out", str(blocker / "figs")])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --out") and blocker.read_text() == "keep me"


def test_a_directory_given_as_results_is_named_as_one(tmp_path, capsys):
    """Issue 23, item 23: `compare somedir/` says what it is, not "does not exist"."""
    from profiler.cli import main as cli

    for args in ([f"{tmp_path}/"], [str(tmp_path / "none.jsonl")]):
        assert cli(["compare", *args, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert ("is a directory" in err) == args[0].endswith("/") and ("does not exist" in err) != args[0].endswith("/")
