"""Sweeps: plan expansion and validation, one line per entry whatever the runner does, resume after a kill.

Most tests drive a stand-in runner (a few lines of Python written below) through the real subprocess
path; one end-to-end test uses the real `python -m profiler run` on tiny-llama and calibrates the result.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from profiler.commands import sweep
from profiler.config import REPO_ROOT
from profiler.schema import RunRecord

FAKE_RUNNER = r'''
import json, os, sys, time, uuid
sys.path.insert(0, os.environ["REPO_ROOT"])
from profiler.config import load_config
from profiler.results import append_record

if os.environ.get("FAKE_RAN"):
    open(os.environ["FAKE_RAN"], "a").close()
cfg_path, out = sys.argv[1], sys.argv[sys.argv.index("--output") + 1]
cfg = load_config(cfg_path)
behavior = json.loads(os.environ.get("FAKE_BEHAVIOR", "{}")).get(str(cfg.train.seq_len), "ok")
if behavior == "hang":
    open(os.environ["FAKE_MARKER"], "w").write(str(os.getpid()))
    time.sleep(60)
if behavior == "crash":
    print("boom: segfault-like crash")
    sys.exit(3)
status = "error" if behavior == "error" else "ok"
n = cfg.train.seq_len * cfg.train.batch_size
phase = {"phase": "forward", "step": 1, "allocated_bytes": n, "peak_allocated_bytes": 2 * n, "seconds": 0.1,
         "breakdown": {"weights": 1000, "activations": n}}
append_record(out, {
    "run_id": uuid.uuid4().hex, "timestamp": "2025-01-01T00:00:00+00:00", "config_hash": cfg.config_hash(),
    "config": cfg.model_dump(mode="json"), "status": status,
    "error": "fake error" if status == "error" else None,
    "backend": "cpu", "phases": [phase], "peaks": {"peak_allocated_bytes": 2 * n},
    "env": {"hostname": "h", "python": "3", "torch": "t", "device_name": "cpu", "device_slug": "cpu"}})
sys.exit(1 if status == "error" else 0)
'''


@pytest.fixture
def fake_runner(tmp_path, monkeypatch):
    script = tmp_path / "fake_runner.py"
    script.write_text(FAKE_RUNNER)
    monkeypatch.setenv("REPO_ROOT", str(REPO_ROOT))
    monkeypatch.setenv("FAKE_MARKER", str(tmp_path / "hanging.pid"))
    return f"{sys.executable} {script}"


def write_sweep(tmp_path: Path, seq_lens: list[int], extra: str = "") -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "base: {device: cpu, model: {arch: tiny-llama}, train: {steps: 1, batch_size: 2}}\n"
        f"grid:\n  train.seq_len: {json.dumps(seq_lens)}\n{extra}")
    return path


def args_for(path: Path, output: Path | str | None, runner: str | None = None, **kw) -> argparse.Namespace:
    ns = dict(sweep=str(path), overrides=[], output=None if output is None else str(output), timeout=None,
              retry_errors=False,
              dry_run=False, runner=runner)
    ns.update(kw)
    return argparse.Namespace(**ns)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_plan_expands_grids_validates_and_merges_duplicates(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "base: {device: cpu, model: {arch: tiny-llama}, train: {steps: 1}}\n"
        "grid:\n"
        "  - {regime.kind: [full, lora], train.seq_len: [32, 64]}\n"
        "  - {regime.kind: [lora], train.seq_len: [64, 128]}   # lora/64 again: merged\n"
        "timeout_s: 7\n")
    plan = sweep.load_sweep(path, ["train.batch_size=3"])
    got = [(e.config.regime.kind, e.config.train.seq_len, e.config.train.batch_size) for e in plan.entries]
    assert got == [("full", 32, 3), ("full", 64, 3), ("lora", 32, 3), ("lora", 64, 3), ("lora", 128, 3)]
    assert plan.duplicates == 1 and plan.timeout_s == 7
    assert len({e.config_hash for e in plan.entries}) == 5
    assert [e.index for e in plan.entries] == [1, 2, 3, 4, 5]

    path.write_text("base: {device: cpu, model: {arch: tiny-llama}}\n"
                    "grid: {optimizer.name: [adamw, adamw_9bit]}\n")
    with pytest.raises(sweep.SweepError) as err:
        sweep.load_sweep(path)
    msg = str(err.value)
    assert "entry 2 (optimizer.name=adamw_9bit)" in msg and "optimizer.name" in msg and "\n" not in msg

    path.write_text("base: {device: cpu, model: {arch: tiny-llama}}\ngrid: {train.seq_len: [32]}\nbogus: 1\n")
    with pytest.raises(sweep.SweepError, match="unknown key 'bogus'"):
        sweep.load_sweep(path)

    for extra, word in (("timeout_s: abc", "timeout_s must be a number"), ("timeout_s: true", "timeout_s"),
                        ("output: [a]", "output must be a file path"), ("base_config: 5", "base_config must be")):
        path.write_text(f"base: {{device: cpu, model: {{arch: tiny-llama}}}}\ngrid: {{train.seq_len: [32]}}\n{extra}\n")
        with pytest.raises(sweep.SweepError, match=word):
            sweep.load_sweep(path)
    path.write_text("base: {device: cpu, model: {arch: tiny-llama}}\ngrid: []\n")
    with pytest.raises(sweep.SweepError, match="grid is empty"):
        sweep.load_sweep(path)


def test_bad_entry_exits_2_and_runs_nothing(tmp_path, fake_runner):
    path = write_sweep(tmp_path, [32, -1])
    out = tmp_path / "runs.jsonl"
    assert sweep.main(args_for(path, out, fake_runner)) == 2
    assert not out.exists()


def test_every_outcome_leaves_exactly_one_valid_line(tmp_path, fake_runner, monkeypatch):
    monkeypatch.setenv("FAKE_BEHAVIOR", json.dumps({"64": "error", "96": "crash", "128": "hang"}))
    path = write_sweep(tmp_path, [32, 64, 96, 128])
    out = tmp_path / "runs.jsonl"
    rc = sweep.main(args_for(path, out, fake_runner, timeout=3.0))
    assert rc == 1  # an error and a timeout are harness failures
    lines = read_lines(out)
    by_seq = {rec["config"]["train"]["seq_len"]: rec for rec in lines}
    assert len(lines) == 4 and len(by_seq) == 4
    assert {s: r["status"] for s, r in by_seq.items()} == {32: "ok", 64: "error", 96: "error", 128: "timeout"}
    assert by_seq[64]["error"] == "fake error"  # the runner's own line, not a second one from the sweep
    assert "exited with code 3" in by_seq[96]["error"] and "boom" in by_seq[96]["error"]
    assert "per-entry timeout" in by_seq[128]["error"]
    for seq in (96, 128):  # lines the sweep wrote itself are full, valid records
        rec = RunRecord.model_validate(by_seq[seq])
        assert rec.env.device_slug == "cpu" and rec.env.hostname and rec.env.torch
        assert rec.config_hash == sweep.load_config(None, base=rec.config).config_hash()
    hung = int((tmp_path / "hanging.pid").read_text())
    assert _dead(hung)  # the timed-out runner was killed, not left behind


def _dead(pid: int, wait_s: float = 3.0) -> bool:
    deadline = time.time() + wait_s
    while time.time() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_resume_after_killed_sweep_runs_each_entry_exactly_once(tmp_path, fake_runner, monkeypatch):
    path = write_sweep(tmp_path, [16, 32, 48, 64, 80])
    out = tmp_path / "runs.jsonl"
    env = dict(os.environ, FAKE_BEHAVIOR=json.dumps({"48": "hang"}), PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "profiler.commands.sweep", str(path), "--output", str(out),
                             "--runner", fake_runner], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = tmp_path / "hanging.pid"
    deadline = time.time() + 30
    while not marker.exists() or not marker.read_text():
        assert time.time() < deadline and proc.poll() is None, "sweep never reached the third entry"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no clean-up code runs in the sweep
    proc.wait()
    assert _dead(int(marker.read_text()))  # the runner died with its sweep (no orphan to write later)
    assert [r["config"]["train"]["seq_len"] for r in read_lines(out)] == [16, 32]

    monkeypatch.setenv("FAKE_BEHAVIOR", "{}")
    assert sweep.main(args_for(path, out, fake_runner)) == 0
    seqs = [r["config"]["train"]["seq_len"] for r in read_lines(out)]
    assert Counter(seqs) == {16: 1, 32: 1, 48: 1, 64: 1, 80: 1}
    assert seqs[:2] == [16, 32]  # the first two were skipped, not rerun
    assert sweep.main(args_for(path, out, fake_runner)) == 0  # nothing left: no new line
    assert len(read_lines(out)) == 5


def test_retry_errors_reruns_only_error_entries(tmp_path, capsys):
    """Resume reads the output with the one reader: damaged lines (a non-UTF-8 byte, not JSON, not a
    record) are skipped with one warning and never stop it (item 3/6)."""
    path = write_sweep(tmp_path, [32, 64])
    plan = sweep.load_sweep(path)
    out = tmp_path / "runs.jsonl"
    lines = [json.dumps(sweep.sweep_record(e, s, "x", 0.0, None)).encode()
             for e, s in zip(plan.entries, ["oom", "error"], strict=True)]
    out.write_bytes(b"\n".join([lines[0], b'{"config_hash": "\xff\xfe"}', b"null", lines[1], b"{broken"]))
    assert set(sweep.done_hashes(out)) == {e.config_hash for e in plan.entries}
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "skipped 3 damaged lines" in err and "not UTF-8" in err
    assert set(sweep.done_hashes(out, retry_errors=True)) == {plan.entries[0].config_hash}


def test_sweep_from_another_directory_resolves_relative_paths_there(tmp_path, fake_runner, monkeypatch):
    """Item 4: started outside the repo root with a relative output:, --output, model.arch config.json and
    base_config, every path means the caller's directory; the runner (started in the repo root) writes the
    real line into the caller's file, and a resume skips it."""
    here = tmp_path / "elsewhere"
    (here / "arch").mkdir(parents=True)
    (here / "arch" / "config.json").write_text((REPO_ROOT / "profiler/models/tiny-llama.json").read_text())
    (here / "base.yaml").write_text("device: cpu\nmodel: {arch: arch/config.json}\ntrain: {steps: 1}\n")
    (here / "s.yaml").write_text("base_config: base.yaml\ngrid: {train.seq_len: [16, 32]}\n"
                                 "output: out/runs.jsonl\n")
    monkeypatch.chdir(here)
    assert sweep.main(args_for(Path("s.yaml"), None, fake_runner)) == 0
    lines = read_lines(here / "out" / "runs.jsonl")
    assert [r["status"] for r in lines] == ["ok", "ok"]
    assert all(r.get("written_by") != "sweep" for r in lines)  # the runner's own lines
    assert lines[0]["config"]["model"]["arch"] == str(here / "arch" / "config.json")
    assert not (REPO_ROOT / "out").exists()
    assert sweep.main(args_for(Path("s.yaml"), Path("out/runs.jsonl"), fake_runner)) == 0  # resume: nothing
    assert len(read_lines(here / "out" / "runs.jsonl")) == 2
    assert sweep.main(args_for(Path("s.yaml"), Path("other.jsonl"), fake_runner, dry_run=True)) == 0
    assert not (here / "other.jsonl").exists()


def test_a_sweep_through_a_symlink_and_one_through_the_real_name_exclude_each_other(tmp_path, fake_runner,
                                                                                    capsys):
    """Item 1: the sweep lock follows the resolved output."""
    from profiler.results import check_output

    path = write_sweep(tmp_path, [32])
    real = tmp_path / "real.jsonl"
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    held = sweep._lock_output(check_output(real))
    try:
        assert sweep.main(args_for(path, link, fake_runner)) == 2
    finally:
        held.close()
    assert "another sweep is writing" in capsys.readouterr().err and not real.exists()
    assert sweep.main(args_for(path, link, fake_runner)) == 0
    assert link.is_symlink() and len(read_lines(real)) == 1


def _one_line_exit_2(capsys, ns, out: Path) -> str:
    assert sweep.main(ns) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists() or out.is_dir() or out.stat().st_size == 0
    return err


@pytest.mark.parametrize("timeout", [float("inf"), float("nan"), -1.0, 0.0, 1e30])
def test_hostile_timeout_is_one_line_exit_2(tmp_path, fake_runner, capsys, timeout):
    """Item 6: --timeout inf / nan / negative: one line naming --timeout, exit 2, nothing run."""
    out = tmp_path / "runs.jsonl"
    err = _one_line_exit_2(capsys, args_for(write_sweep(tmp_path, [32]), out, fake_runner, timeout=timeout), out)
    assert "--timeout" in err


@pytest.mark.parametrize("base", ["missing", "malformed", "not_utf8", "a_list", "a_directory"])
def test_hostile_base_config_is_one_line_exit_2(tmp_path, fake_runner, capsys, base):
    """Item 6: a malformed, non-UTF-8, non-mapping or missing base_config."""
    bc = tmp_path / "base.yaml"
    if base == "malformed":
        bc.write_text("model: {arch: tiny-llama\n  bad: [")
    elif base == "not_utf8":
        bc.write_bytes(b"device: cpu\nmodel: {arch: tiny-\xff}\n")
    elif base == "a_list":
        bc.write_text("- 1\n- 2\n")
    elif base == "a_directory":
        bc.mkdir()
    path = tmp_path / "s.yaml"
    path.write_text(f"base_config: {bc}\ngrid: {{train.seq_len: [32]}}\n")
    out = tmp_path / "runs.jsonl"
    assert "base_config" in _one_line_exit_2(capsys, args_for(path, out, fake_runner), out)


@pytest.mark.parametrize("output", ["directory", "dev_null", "", "read_only"])
def test_unusable_output_is_refused_before_anything_runs(tmp_path, fake_runner, capsys, monkeypatch, output):
    """Items 1-2: a directory, a device, '' or a read-only place as output: one line, exit 2, nothing run."""
    out = {"directory": tmp_path, "read_only": Path("/sys/memprof/runs.jsonl")}.get(output, output)
    if output == "dev_null":
        from test_results import device_copy

        out = Path(device_copy(tmp_path, "null"))
    marker = tmp_path / "ran"
    monkeypatch.setenv("FAKE_RAN", str(marker))
    _one_line_exit_2(capsys, args_for(write_sweep(tmp_path, [32]), out, fake_runner),
                     Path(str(out) or "/nonexistent"))
    assert not marker.exists()


def test_missing_runner_program_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    """Item 6: --runner (or $MEMPROF_SWEEP_RUNNER) naming a program that does not exist."""
    out = tmp_path / "runs.jsonl"
    err = _one_line_exit_2(capsys, args_for(write_sweep(tmp_path, [32]), out, "/no/such/runner --x"), out)
    assert "--runner" in err and "/no/such/runner" in err
    monkeypatch.setenv(sweep.RUNNER_ENV, "no-such-memprof-runner")
    assert "MEMPROF_SWEEP_RUNNER" in _one_line_exit_2(capsys, args_for(write_sweep(tmp_path, [32]), out), out)


class _Est:
    def __init__(self, total):
        self.total = total


def test_paged_optimizer_runs_only_where_the_estimate_fits(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("base: {device: cuda, model: {arch: tiny-llama}}\n"
                    "grid: {optimizer.name: [adamw, paged_adamw_8bit], train.seq_len: [64, 4096]}\n")

    def est(name, cfg):
        assert name == "components"
        return _Est(cfg.train.seq_len * 2**20)

    plan = sweep.load_sweep(path)
    sweep.refuse_unsafe(plan, free_bytes=1 * 2**30, estimate_fn=est)
    kept = [(e.config.optimizer.name, e.config.train.seq_len) for e in plan.entries]
    assert kept == [("adamw", 64), ("adamw", 4096), ("paged_adamw_8bit", 64)]
    assert len(plan.refused) == 1 and "4.0 GiB > free 1.0 GiB" in plan.refused[0][1]

    plan = sweep.load_sweep(path)
    sweep.refuse_unsafe(plan, free_bytes=None, estimate_fn=est)
    assert all(not e.config.optimizer.name.startswith("paged") for e in plan.entries)
    assert "unknown" in plan.refused[0][1]


def _missing(*modules: str) -> str | None:
    for mod in modules:
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            return f"{mod} not importable yet: {exc}"
    return None


def test_end_to_end_tiny_sweep_then_calibrate(tmp_path):
    missing = _missing("profiler.measure.harness", "profiler.commands.run")
    if missing:
        pytest.skip(missing)

    path = tmp_path / "s.yaml"
    path.write_text("base_config: configs/tiny_full.yaml\nbase: {train: {steps: 1, warmup_steps: 1}}\n"
                    "grid: {train.seq_len: [16, 48, 96]}\ntimeout_s: 120\n")
    out = tmp_path / "runs" / "cpu.jsonl"
    assert sweep.main(args_for(path, out)) == 0
    lines = read_lines(out)
    assert [r["status"] for r in lines] == ["ok"] * 3
    assert all(r.get("written_by") != "sweep" for r in lines)
    missing = _missing("profiler.formulas")
    if missing:
        pytest.skip(f"sweep part passed; calibrate part needs the estimator: {missing}")
    from profiler.commands.calibrate import main as calibrate_main
    from profiler.learn import calibrate

    cal_dir = tmp_path / "cal"
    ns = argparse.Namespace(results=[str(out.parent)], out=str(cal_dir), figures=None, estimator="components",
                            include_fake=False)
    assert calibrate_main(ns) == 0
    table = calibrate.load_calibration(cal_dir / "cpu.csv")
    assert table.n_runs("full") == 3
    assert ("full", "peak_allocated") in table.rows
    assert "| peak_allocated | 3 |" in (cal_dir / "cpu.md").read_text()



def test_a_grid_over_the_limit_is_refused_before_it_is_expanded(tmp_path, capsys):
    path = tmp_path / "huge.yaml"
    values = ", ".join(map(str, range(100)))
    path.write_text("base: {device: cpu, model: {arch: tiny-llama}}\n"
                    f"grid:\n  train.seq_len: [{values}]\n  train.batch_size: [{values}]\n  optimizer.lr: [{values}]\n")
    started = time.time()
    assert sweep.main(args_for(path, tmp_path / "out.jsonl", dry_run=True)) == 2
    assert time.time() - started < 10  # 1,000,000 points are counted, not validated one by one
    err = capsys.readouterr().err.strip()
    assert "1,000,000 points" in err and f"at most {sweep.MAX_GRID_POINTS:,}" in err and len(err.splitlines()) == 1


def test_leftovers_of_a_killed_sweep_are_removed_and_a_running_sweeps_are_kept(tmp_path):
    dead = tmp_path / f"{sweep.TMP_PREFIX}dead"
    dead.mkdir()
    (dead / sweep.OWNER).write_text("12345")  # nobody holds its lock: its sweep was SIGKILLed
    (dead / "entry-0001.yaml").write_text("x: 1\n")
    unmarked = tmp_path / f"{sweep.TMP_PREFIX}old"  # no .owner: being made, or an older version's
    unmarked.mkdir()
    other = tmp_path / "not-ours"
    other.mkdir()
    (other / sweep.OWNER).write_text("1")
    with sweep.entry_dir(tmp_path) as live:  # a running sweep's directory (its lock held in this process)
        assert sweep.remove_leftovers(tmp_path) == [dead]
        assert live.is_dir() and unmarked.is_dir() and other.is_dir() and not dead.exists()
    assert not live.exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["TERM", "KILL"])
def test_killed_sweep_leaves_no_process_and_no_line(tmp_path, fake_runner, sig):
    """kill -TERM (handled: the runner's group is killed, exit 130) and kill -KILL (no handler runs: the
    runner dies by PR_SET_PDEATHSIG) leave no process behind; the temporary folder goes on the next run."""
    from proctable import LINUX, kill_all, kill_and_check, start, wait_for

    if not LINUX:
        pytest.skip("reads /proc")
    path = write_sweep(tmp_path, [16, 48])
    out = tmp_path / "runs.jsonl"
    env = dict(os.environ, FAKE_BEHAVIOR=json.dumps({"48": "hang"}), PYTHONPATH=str(REPO_ROOT),
               TMPDIR=str(tmp_path))
    proc = start([sys.executable, "-m", "profiler", "sweep", str(path), "--output", str(out), "--runner", fake_runner],
                 env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = tmp_path / "hanging.pid"
    wait_for(lambda: marker.exists() and marker.read_text(), 60, "the hanging second entry", proc)
    left = kill_and_check(proc, sig)
    kill_all(left)
    assert left == []
    assert proc.returncode == (130 if sig == signal.SIGTERM else -signal.SIGKILL)
    time.sleep(0.5)
    assert [r["config"]["train"]["seq_len"] for r in read_lines(out)] == [16]  # nothing after the stop
    leftovers = list(tmp_path.glob(f"{sweep.TMP_PREFIX}*"))
    assert len(leftovers) == (0 if sig == signal.SIGTERM else 1)
    assert sweep.remove_leftovers(tmp_path) == leftovers
