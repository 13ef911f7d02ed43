"""`run` / `simulate` outputs: checked before the run, never lost after it, defaults under ./results/.

The measurement itself is stubbed (these tests are about where its line goes), so they take milliseconds.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from test_results import device_copy

from profiler import results
from profiler.cli import main
from profiler.config import REPO_ROOT

TINY = str(REPO_ROOT / "configs" / "tiny_full.yaml")


def fake_record(cfg, **extra) -> dict:
    rec = {"run_id": "r1", "timestamp": "2025-01-01T00:00:00+00:00", "config_hash": cfg.config_hash(),
           "config": cfg.model_dump(mode="json"), "status": "ok", "backend": "cpu",
           "env": {"hostname": "h", "python": "3", "torch": "t", "device_name": "cpu", "device_slug": "cpu"}}
    rec.update(extra)
    return rec


@pytest.fixture
def stub(monkeypatch):
    """Replaces the measured run and the simulation; `calls` counts how often either ran."""
    calls: list[str] = []
    extra: dict = {}

    def fake_run(cfg, use_tracker, snapshot, quiet):
        calls.append("run")
        return fake_record(cfg, **extra)

    def fake_simulate(cfg):
        calls.append("simulate")
        return fake_record(cfg, backend="fake", **extra)

    from profiler.commands import run, simulate

    monkeypatch.setattr(run, "_run_with_progress", fake_run)
    monkeypatch.setattr(simulate, "simulate", fake_simulate)
    return calls, extra


def bad_outputs(tmp_path: Path) -> dict[str, str]:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    return {"directory": str(tmp_path), "dev_null": device_copy(tmp_path, "null"),
            "dev_full": device_copy(tmp_path, "full"), "empty": "",
            "parent_is_a_file": str(blocker / "sub" / "r.jsonl"), "read_only": "/sys/memprof/r.jsonl"}


@pytest.mark.parametrize("command", ["run", "simulate"])
@pytest.mark.parametrize("kind", ["directory", "dev_null", "dev_full", "empty", "parent_is_a_file", "read_only"])
def test_unusable_output_is_one_line_exit_2_before_the_run(tmp_path, capsys, stub, command, kind):
    """Items 1-2: checked BEFORE the run (the stub never runs), one line naming --output, exit 2."""
    calls, _ = stub
    out = bad_outputs(tmp_path)[kind]
    assert main([command, TINY, "--output", out, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert calls == [] and len(err.splitlines()) == 1 and err.startswith("error: --output"), err
    if kind.startswith("dev_"):
        assert Path(out).is_char_device()


def test_output_key_in_the_config_is_checked_too(tmp_path, capsys, stub):
    calls, _ = stub
    assert main(["run", TINY, f"output={tmp_path}", "--quiet"]) == 2
    assert calls == [] and "error: output" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "simulate"])
def test_full_disk_at_write_time_prints_the_record_and_keeps_the_file(tmp_path, capsys, stub, monkeypatch,
                                                                      command):
    """Item 2: the record is not lost silently (it goes to stderr), exit 1, the file is not truncated."""
    out = tmp_path / "r.jsonl"
    out.write_text('{"earlier": "line"}\n')

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results, "_write_all", full)
    assert main([command, TINY, "--output", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert "no space left on device" in err[0] and "the record follows" in err[0]
    assert json.loads(err[1])["run_id"] == "r1"
    assert out.read_text() == '{"earlier": "line"}\n'


def test_a_nan_in_the_record_is_never_written(tmp_path, capsys, stub):
    """Item 1: strict JSON: a NaN is an error before writing (exit 1, named), never a non-JSON line."""
    _, extra = stub
    extra["timings"] = {"load_s": float("nan")}
    out = tmp_path / "r.jsonl"
    assert main(["run", TINY, "--output", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "record.timings.load_s" in err and not out.exists()


def test_default_outputs_go_under_the_working_directory(tmp_path, monkeypatch, stub):
    """Issue 11 item 3: ./results/runs/<slug>.jsonl and ./results/simulated/<device>.jsonl of the cwd."""
    monkeypatch.chdir(tmp_path)
    assert main(["run", TINY, "--quiet"]) == 0
    assert main(["simulate", TINY, "--quiet"]) == 0
    assert [json.loads(x)["backend"] for x in (tmp_path / "results/runs/cpu.jsonl").read_text().splitlines()] \
        == ["cpu"]
    assert (tmp_path / "results/simulated/cpu.jsonl").is_file()


@pytest.mark.parametrize("output", ["/dev/stdout", "/dev/stderr", "/dev/fd/1", "/proc/self/fd/1", "same_file"])
def test_our_own_stdout_is_refused_as_output_even_when_redirected_to_a_file(tmp_path, output):
    """`run ... --output /dev/stdout > f.txt`: f.txt is a regular file, but the table would be written over
    the lines: refused before the run (issue 23, item 19)."""
    import subprocess
    import sys

    f = tmp_path / "f.txt"
    out = str(f) if output == "same_file" else output
    with open(f, "w") as stdout:
        res = subprocess.run([sys.executable, "-m", "profiler", "run", TINY, "--output", out], stdout=stdout,
                             stderr=subprocess.PIPE, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --output"), err
    assert "standard stream" in err or output == "/dev/stderr" and "pipe" in err, err  # stderr: a pipe here
    assert f.read_text() == ""


def test_a_checkpoint_cache_that_is_a_file_is_one_line_exit_2_before_the_run(tmp_path, capsys, stub,
                                                                             monkeypatch):
    """Issue 23, item 20: LLM_MEMPROF_CACHE=somefile run configs/tiny_qlora4.yaml --quiet."""
    calls, _ = stub
    (tmp_path / "somefile.jsonl").write_text("x\n")
    monkeypatch.setenv("LLM_MEMPROF_CACHE", str(tmp_path / "somefile.jsonl"))
    qlora = str(REPO_ROOT / "configs" / "tiny_qlora4.yaml")
    assert main(["run", qlora, "--output", str(tmp_path / "r.jsonl"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert calls == [] and len(err.splitlines()) == 1 and err.startswith("error: LLM_MEMPROF_CACHE:"), err
    assert not (tmp_path / "r.jsonl").exists()


def test_an_error_run_says_why_on_stderr_even_with_quiet(tmp_path, capsys, stub):
    _, extra = stub
    extra.update(status="error", error="RuntimeError: boom\nmore detail")
    assert main(["run", TINY, "--output", str(tmp_path / "r.jsonl"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: run ended with status error: RuntimeError: boom"
    assert json.loads((tmp_path / "r.jsonl").read_text())["status"] == "error"
