"""`validate`: units and metrics, rows we cannot express, --only, bad input, and the CI baseline guard (tiny rows)."""

from __future__ import annotations

import json

import pytest
import yaml

from profiler.cli import main
from profiler.commands.validate import select
from profiler.formulas.components import ALLOCATOR_SLACK, CUDA_CONTEXT_BYTES
from profiler.predict.validation.convert import predicted_in_metric, to_bytes
from profiler.predict.validation.rows import load_rows

SOURCE = {"group": "tinyland", "ref": {"repo": "x/y", "path": "z.md", "commit": "0" * 40}, "stack": "trainer",
          "era": "current", "metric": "reserved", "unit": "MiB", "setup": {"model": "tiny"},
          "config": {"model": {"arch": "tiny-llama", "dtype": "float32"}, "regime": {"kind": "full"},
                     "train": {"batch_size": 1, "seq_len": 16}}}


def write_rows(path, rows, source=SOURCE):
    path.write_text(yaml.safe_dump({"version": 1, "sources": {"tiny": source}, "rows": rows}, sort_keys=False))
    return path


def tiny_rows(value=1.0):
    return [
        {"id": "tiny-sim", "source": "tiny", "value": value, "subset": ["fast"]},
        {"id": "tiny-zero2", "source": "tiny", "value": value, "subset": ["fast"], "metric": "nvidia-smi",
         "unit": "GB", "config": {"parallel": {"strategy": "zero2", "world_size": 2}}},
        {"id": "tiny-compiled", "source": "tiny", "value": value, "not_expressed": ["torch.compile"]},
        {"id": "tiny-tp", "source": "tiny", "value": value, "n_gpus": 8, "not_run": "tensor parallelism (TP8)"},
    ]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_MEMPROF_CACHE", str(tmp_path / "cache"))


def test_gb_and_gib_are_different_units():
    assert to_bytes(1, "GiB") == 2**30
    assert to_bytes(1, "GB") == 10**9
    assert to_bytes(80, "GB") < to_bytes(80, "GiB")
    with pytest.raises(ValueError, match="allowed: GiB, GB"):
        to_bytes(1, "gigs")


def test_metric_conversions():
    a = 10 * 2**30
    reserved = a + int(ALLOCATOR_SLACK * a)
    assert predicted_in_metric("allocated", a).bytes == a
    assert predicted_in_metric("reserved", a).bytes == reserved
    assert predicted_in_metric("not-stated", a).bytes == reserved  # compared with the reserved prediction
    assert predicted_in_metric("nvidia-smi", a).bytes == reserved + CUDA_CONTEXT_BYTES
    # a predictor's own reserved / NVML figure wins over the allowance
    assert predicted_in_metric("reserved", a, reserved=a + 123).bytes == a + 123
    assert predicted_in_metric("nvidia-smi", a, reserved=a + 123).bytes == a + 123 + CUDA_CONTEXT_BYTES
    assert predicted_in_metric("nvidia-smi", a, reserved=a + 1, nvml=a + 7).bytes == a + 7
    assert predicted_in_metric("allocated", a, reserved=a + 1).bytes == a
    with pytest.raises(ValueError, match="not a memory metric"):
        predicted_in_metric("tokens_per_s", a)


def test_rows_inherit_their_source_and_only_filters(tmp_path):
    rows = load_rows(write_rows(tmp_path / "rows.yaml", tiny_rows()))
    by = {r.id: r for r in rows}
    assert by["tiny-zero2"].run_config().parallel.strategy == "zero2"
    assert by["tiny-zero2"].run_config().model.arch == "tiny-llama"  # deep merge kept the source's model
    assert by["tiny-compiled"].expressible is False and by["tiny-sim"].expressible is True
    assert by["tiny-tp"].config is None and "multi" in by["tiny-tp"].tags()
    assert [r.id for r in select(rows, None, "multi")] == ["tiny-zero2", "tiny-tp"]
    assert [r.id for r in select(rows, "fast", None)] == ["tiny-sim", "tiny-zero2"]
    assert [r.id for r in select(rows, None, "tiny-compiled")] == ["tiny-compiled"]


def test_rows_of_another_metric_are_kept_for_their_own_check(tmp_path):
    """A throughput row (a later check) loads, but `validate` compares memory rows only."""
    extra = {"id": "tiny-speed", "source": "tiny", "value": 1234.0, "metric": "tokens_per_s", "unit": "tokens/s"}
    rows = load_rows(write_rows(tmp_path / "rows.yaml", [*tiny_rows(), extra]))
    assert "tiny-speed" in {r.id for r in rows}
    assert "tiny-speed" not in {r.id for r in select(rows, None, None)}


def test_the_table_flags_what_we_cannot_express(tmp_path, capsys):
    rows = write_rows(tmp_path / "rows.yaml", tiny_rows())
    assert main(["validate", "--rows", str(rows), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "torch.compile" in out and "not run: tensor parallelism (TP8)" in out
    import pandas as pd

    df = pd.read_csv(tmp_path / "out" / "validation.csv")
    by = df.set_index("id")
    assert by.loc["tiny-compiled", "not_expressed"] == "torch.compile"
    assert not by.loc["tiny-compiled", "expressible"] and by.loc["tiny-sim", "expressible"]
    assert pd.isna(by.loc["tiny-tp", "predicted"])  # not run: no number, never an approximation
    assert by.loc["tiny-sim", "predictor"] == "simulate" and by.loc["tiny-zero2", "predictor"] == "components"
    # the same config: the not-expressible row gets the same prediction, but leaves the expressible median
    assert by.loc["tiny-compiled", "predicted_bytes"] == by.loc["tiny-sim", "predicted_bytes"]
    summ = pd.read_csv(tmp_path / "out" / "validation-summary.csv").set_index("value")
    assert summ.loc["all rows", "ran"] == 3 and summ.loc["all rows", "expressible_ran"] == 2
    assert (tmp_path / "out" / "validation.png").stat().st_size > 0
    # GB row: the published bytes are 10^9 per unit
    assert by.loc["tiny-zero2", "published_bytes"] == 10**9


def exit_code(argv):
    """main's return value, or argparse's exit code (bad flags exit through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("args, needle", [
    (["--only", "nope"], "--only: 'nope' is not a tag of any row; allowed:"),
    (["--rows", "/no/such.yaml"], "--rows: file '/no/such.yaml' does not exist"),
    (["--subset", "slow"], "argument --subset: invalid choice: 'slow'"),
    (["--write-baseline"], "--write-baseline: needs --subset"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, needle):
    rows = write_rows(tmp_path / "rows.yaml", tiny_rows())
    argv = ["validate", *(["--rows", str(rows)] if "--rows" not in args else []), *args,
            "--out", str(tmp_path / "out")]
    assert exit_code(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_bad_out_and_bad_rows_file(tmp_path, capsys):
    rows = write_rows(tmp_path / "rows.yaml", tiny_rows())
    afile = tmp_path / "a-file"
    afile.write_text("x")
    assert main(["validate", "--rows", str(rows), "--out", str(afile)]) == 2
    assert "--out:" in capsys.readouterr().err
    bad = write_rows(tmp_path / "bad.yaml", [{"id": "x", "source": "tiny", "value": 1, "unit": "gigs"}])
    assert main(["validate", "--rows", str(bad)]) == 2
    assert "unit 'gigs' is not allowed" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_baseline_guard_fails_when_the_median_rises(tmp_path, capsys):
    rows = write_rows(tmp_path / "rows.yaml", tiny_rows(value=1.0))
    base = tmp_path / "baseline.json"
    common = ["validate", "--rows", str(rows), "--subset", "fast", "--out", str(tmp_path / "out"),
              "--baseline", str(base)]
    assert main([*common, "--write-baseline"]) == 0
    written = json.loads(base.read_text())
    assert set(written["rows"]) == {"tiny-sim", "tiny-zero2"}
    assert main(common) == 0  # same predictions: at the baseline
    capsys.readouterr()
    # the published figures move so that the error rises well above the baseline + 2 points
    worse = write_rows(tmp_path / "rows.yaml", tiny_rows(value=0.5))
    assert main(["validate", "--rows", str(worse), "--subset", "fast", "--out", str(tmp_path / "out"),
                 "--baseline", str(base)]) == 1
    assert "FAILED" in capsys.readouterr().out
    # a baseline above today's median passes
    written["median_abs_error_pct"] = json.loads(base.read_text())["median_abs_error_pct"] + 10_000
    base.write_text(json.dumps(written))
    assert main(["validate", "--rows", str(worse), "--subset", "fast", "--out", str(tmp_path / "out"),
                 "--baseline", str(base)]) == 0


def test_baseline_allows_two_points(tmp_path):
    import pandas as pd

    from profiler.predict.validation.report import baseline_check

    base = tmp_path / "b.json"
    base.write_text(json.dumps({"median_abs_error_pct": 10.0}))
    df = pd.DataFrame({"id": ["a", "b", "c"], "error_pct": [12.0, -12.0, 30.0], "abs_error_pct": [12.0, 12.0, 30.0]})
    assert baseline_check(df, base)[0] is True  # median 12.0 = 10 + 2
    df["abs_error_pct"] = [12.1, 12.1, 30.0]
    ok, line = baseline_check(df, base)
    assert ok is False and "FAILED" in line and "12.1" in line


def _report_script():
    import importlib.util

    from profiler.config import REPO_ROOT

    spec = importlib.util.spec_from_file_location("validation_report", REPO_ROOT / "scripts" / "validation_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_block_comes_from_the_csv(tmp_path, capsys):
    """scripts/validation_report.py: the block between the markers is the CSV's summary, with date and commit,
    and every miss over 25 % with its cause (or says none is stated)."""
    import pandas as pd

    from profiler.predict.validation.run import COLUMNS

    rows = [{"id": "near", "group": "g", "era_group": "current HF stack", "gpu_class": "single GPU", "moe": "dense",
             "published": 10.0, "unit": "GiB", "predicted": 10.5, "error_pct": 5.0, "abs_error_pct": 5.0,
             "expressible": True},
            {"id": "far", "group": "g", "era_group": "old stack", "gpu_class": "multi-GPU", "moe": "dense",
             "published": 10.0, "unit": "GiB", "predicted": 15.0, "error_pct": 50.0, "abs_error_pct": 50.0,
             "expressible": False, "cause": "activation checkpointing is selective there"}]
    csv = tmp_path / "validation.csv"
    pd.DataFrame(rows, columns=COLUMNS).to_csv(csv, index=False)
    (tmp_path / "validation.json").write_text(json.dumps({"date": "2026-12-06", "commit": "abc1234"}))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- validation:start -->\nSTALE\n<!-- validation:end -->\nafter\n")
    script = _report_script()
    assert script.main(["--csv", str(csv), "--readme", str(readme), "--check"]) == 1
    assert script.main(["--csv", str(csv), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "STALE" not in text.split("<!-- validation:start -->")[1]
    assert text.endswith("<!-- validation:end -->\nafter\n")
    assert "2026-12-06" in text and "abc1234" in text
    assert "| all rows | 2 | 2 | 27.5 % | 50.0 % (far) | 1 | 5.0 % | 5.0 % (near) |" in text
    assert "| far | 10 GiB | 15.0 GiB | +50.0 % | activation checkpointing is selective there |" in text
    assert script.main(["--csv", str(csv), "--readme", str(readme), "--check"]) == 0
    bare = tmp_path / "bare.md"
    bare.write_text("no markers\n")
    assert script.main(["--csv", str(csv), "--readme", str(bare)]) == 2


def test_a_predictor_failure_fails_that_row_only(tmp_path, monkeypatch):
    import pandas as pd

    import profiler.predict.validation.run as run

    rows = load_rows(write_rows(tmp_path / "rows.yaml", tiny_rows()))

    def boom(cfg):
        raise KeyError("gradients")

    monkeypatch.setattr(run, "predict", boom)
    df = run.evaluate(rows, run.Cache(None)).set_index("id")
    assert df.loc["tiny-sim", "error"] == "KeyError: 'gradients'"
    assert df["predicted"].isna().all()  # no number made up for a failed row
    assert df.loc["tiny-tp", "not_run"] == "tensor parallelism (TP8)" and pd.isna(df.loc["tiny-tp", "error"])


def test_readme_block_matches_the_committed_csv():
    """README's "How accurate is it?" summary, docs/validation-results.md's full table and its picture are the
    committed CSV's, through the script (never typed by hand)."""
    from profiler.config import REPO_ROOT

    csv = REPO_ROOT / "results" / "validation" / "validation.csv"
    assert _report_script().main(["--csv", str(csv), "--readme", str(REPO_ROOT / "README.md"), "--check"]) == 0
    assert _report_script().main(["--csv", str(csv), "--check"]) == 0  # README.md and docs/validation-results.md
    assert "<!-- validation-summary:start -->" in (REPO_ROOT / "README.md").read_text()
    assert "<!-- validation:start -->" in (REPO_ROOT / "docs" / "validation-results.md").read_text()
