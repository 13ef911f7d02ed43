"""Validation rows: GPU kernel rules, #22's old-rule conversion, settings we cannot express, the cache's checks."""

from __future__ import annotations

import json

import pytest
import yaml

from profiler.formulas.components import ALLOCATOR_SLACK, CUDA_CONTEXT_BYTES
from profiler.predict.validation import run
from profiler.predict.validation.convert import allowance_in_metric, predicted_in_metric, to_bytes
from profiler.predict.validation.predictor import Prediction
from profiler.predict.validation.rows import load_rows

SOURCE = {"group": "tinyland", "ref": {"repo": "x/y", "path": "z.md", "commit": "0" * 40}, "stack": "custom",
          "era": "current", "metric": "reserved", "unit": "MiB", "gpu": "rtx3090",
          "basis": ["the source's logger: max_memory_reserved (x/y log.py:12)"],
          "config": {"model": {"arch": "tiny-llama", "dtype": "float32"}, "regime": {"kind": "full"},
                     "train": {"batch_size": 1, "seq_len": 16}}}


def rows_of(tmp_path, rows):
    p = tmp_path / "rows.yaml"
    p.write_text(yaml.safe_dump({"version": 1, "sources": {"tiny": SOURCE}, "rows": rows}, sort_keys=False))
    return {r.id: r for r in load_rows(p)}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_MEMPROF_CACHE", str(tmp_path / "cache"))


def test_rows_take_gpu_arch_from_their_gpu(tmp_path):
    """As `fit --gpu` does: the preset's compute capability (gpus.csv) becomes the config's gpu_arch."""
    by = rows_of(tmp_path, [
        {"id": "on-3090", "source": "tiny", "value": 1.0},
        {"id": "on-h100", "source": "tiny", "value": 1.0, "gpu": "H100"},
        {"id": "on-a800", "source": "tiny", "value": 1.0, "gpu": "A800"},
        {"id": "on-l40s", "source": "tiny", "value": 1.0, "gpu": "l40s"},
        {"id": "on-a40", "source": "tiny", "value": 1.0, "gpu": "a40"},
        {"id": "no-gpu", "source": "tiny", "value": 1.0, "gpu": None},
        {"id": "pinned", "source": "tiny", "value": 1.0, "config": {"gpu_arch": "sm89"}},
    ])
    assert by["on-3090"].gpu_arch() == ("sm86", "rtx3090: compute capability 8.6 (gpus.csv)")
    assert by["on-3090"].run_config().gpu_arch == "sm86"
    assert by["on-h100"].run_config().gpu_arch == "sm90"
    assert by["pinned"].run_config().gpu_arch == "sm89"  # the row's own config wins
    # no known compute capability: the row says so, and the sm80 rules (gpu_arch auto) are used
    arch, how = by["on-a800"].gpu_arch()
    assert arch == "auto" and "A800: not a GPU preset, compute capability unknown" in how
    assert by["on-l40s"].run_config().gpu_arch == "sm89"  # Ada (PEFT's method-comparison rows)
    arch, how = by["on-a40"].gpu_arch()
    assert arch == "auto" and "a40: no cited compute capability" in how
    arch, how = by["no-gpu"].gpu_arch()
    assert arch == "auto" and "GPU not stated" in how
    assert by["no-gpu"].run_config().gpu_arch == "auto"
    # another arch is another config: its prediction is not shared with the sm86 one
    assert by["on-3090"].run_config().config_hash() != by["on-h100"].run_config().config_hash()


def test_basis_is_inherited_and_appended(tmp_path):
    by = rows_of(tmp_path, [{"id": "a", "source": "tiny", "value": 1.0, "basis": ["lengths: docs/x.md:3"]}])
    assert by["a"].basis == ["the source's logger: max_memory_reserved (x/y log.py:12)", "lengths: docs/x.md:3"]


def test_units_and_each_metric():
    """GB vs GiB; allocated as is; reserved from the replay when given; nvidia-smi = reserved + CUDA context."""
    assert to_bytes(24, "GB") == 24 * 10**9 and to_bytes(24, "GiB") == 24 * 2**30
    assert to_bytes(512, "MiB") == 2**29 and to_bytes(512, "MB") == 512 * 10**6
    a, replay = 8 * 2**30, 9 * 2**30
    assert predicted_in_metric("allocated", a, reserved=replay).bytes == a
    r = predicted_in_metric("reserved", a, reserved=replay)
    assert r.bytes == replay and r.how == "reserved (predicted)"
    n = predicted_in_metric("nvidia-smi", a, reserved=replay)
    assert n.bytes == replay + CUDA_CONTEXT_BYTES
    # the rule the replay replaced (#22): allocated + 3 %, whatever the replay says
    old = allowance_in_metric("reserved", a)
    assert old.bytes == a + int(ALLOCATOR_SLACK * a) and "allowance" in old.how
    assert allowance_in_metric("nvidia-smi", a).bytes == a + int(ALLOCATOR_SLACK * a) + CUDA_CONTEXT_BYTES
    assert allowance_in_metric("allocated", a).bytes == a


def test_a_setting_we_cannot_express_is_refused_not_approximated(tmp_path, capsys):
    """A config key our RunConfig does not have: the rows file is refused in one line naming the row and the field
    (exit 2), never run with the key dropped; a setting listed in not_expressed is run and flagged instead."""
    from profiler.cli import main
    from profiler.config import ConfigError

    with pytest.raises(ConfigError, match=r"row liger: config: train.liger: unknown key"):
        rows_of(tmp_path, [{"id": "liger", "source": "tiny", "value": 1.0, "config": {"train": {"liger": True}}}])
    assert main(["validate", "--rows", str(tmp_path / "rows.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "train.liger: unknown key" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    by = rows_of(tmp_path, [{"id": "flagged", "source": "tiny", "value": 1.0, "not_expressed": ["liger kernels"]}])
    df = run.evaluate(list(by.values()), run.Cache(None)).set_index("id")
    assert not df.loc["flagged", "expressible"] and df.loc["flagged", "not_expressed"] == "liger kernels"


def test_reserved_rows_carry_both_rules_and_the_summary_compares_them(tmp_path):
    """#22: a row measured as reserved gets the replay's error and allocated + 3 %'s; the summary has both medians."""
    from profiler.predict.validation.report import REPLAY_GROUPING, summary

    by = rows_of(tmp_path, [{"id": "res", "source": "tiny", "value": 1.0},
                            {"id": "alloc", "source": "tiny", "value": 1.0, "metric": "allocated"}])
    df = run.evaluate(list(by.values()), run.Cache(None)).set_index("id")
    res = df.loc["res"]
    assert res["conversion"] == "reserved (predicted)"  # the replay
    assert res["predicted_allowance_bytes"] == allowance_in_metric("reserved", res["predicted_allocated_bytes"]).bytes
    assert res["predicted_allowance_bytes"] != res["predicted_bytes"]
    assert df["error_allowance_pct"].isna()["alloc"]  # an allocated row has no reserved rule to compare
    assert res["gpu_arch"] == "sm86" and res["gpu"] == "rtx3090"
    assert res["row_seconds"] >= 0 and res["cpu_seconds"] > 0
    summ = summary(df.reset_index())
    lines = summ[summ["grouping"] == REPLAY_GROUPING].set_index("value")
    assert lines.loc["allocator replay", "median_abs_pct"] == pytest.approx(abs(res["error_pct"]))
    assert lines.loc["allocated + 3 %", "median_abs_pct"] == pytest.approx(abs(res["error_allowance_pct"]))


def test_cache_entries_are_kept_until_a_module_they_loaded_changes(tmp_path, monkeypatch):
    folder = tmp_path / "c"
    mods = run.loaded_modules()
    assert "config.py" in mods  # a module every prediction loads
    assert not {"predict/validation/run.py", "predict/validation/report.py", "cli.py"} & set(mods)  # readers
    pred = Prediction("simulate", 123, 456, None, "", 1.0, 0.5)
    run.Cache(folder).put("kept", pred, mods)
    run.Cache(folder).put("gone", pred, {**mods, "config.py": "0" * 16})  # made by another config.py
    run.Cache(folder).put("old", pred, {})  # an entry with no module list cannot be checked
    cache = run.Cache(folder)
    assert cache.get("kept").allocated == 123 and cache.get("kept").cached
    assert cache.get("gone") is None and cache.stale["gone"] == ["config.py"]
    assert cache.get("old") is None
    # a changed reader module does not change the file the entries live in
    line = json.loads(cache.path.read_text().splitlines()[0])
    assert "predict/validation/report.py" not in line["modules"]
    # an allocator setting in the environment is another file: its predictions differ
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    assert run.Cache(folder).path != cache.path
