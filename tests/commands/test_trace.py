"""`profiler trace -- python SCRIPT`: the script's output and exit code pass through; every Trainer it builds
is profiled (examples/train_trainer.py, tiny Llama on CPU)."""

from __future__ import annotations

import json
import subprocess
import sys

from profiler.cli import main
from profiler.config import REPO_ROOT
from profiler.schema import RunRecord


def trace(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "profiler", "trace", *args], capture_output=True, text=True,
                          cwd=cwd or REPO_ROOT, timeout=300)


def test_exit_code_and_output_pass_through():
    res = trace("--", "python", "-c", "import sys; print('hello from the script'); sys.exit(3)")
    assert res.returncode == 3 and "hello from the script" in res.stdout


def test_trainer_in_the_script_is_profiled(tmp_path):
    out = tmp_path / "lines.jsonl"
    res = trace("--steps", "2", "--output", str(out), "--", "python", "examples/train_trainer.py",
                "--output-dir", str(tmp_path / "run"), "--steps", "3", "--seq-len", "16")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "trained 3 steps" in res.stdout
    rec = RunRecord.model_validate(json.loads(out.read_text().splitlines()[-1]))
    assert rec.source == "track" and rec.status == "ok"
    assert sorted({p.step for p in rec.phases}) == [0, 1]
    assert rec.config["train"]["seq_len"] == 16 and rec.config["optimizer"]["name"] == "adamw"
    assert rec.model.name == "tiny-llama"  # from the config.json path the script built the model from
    assert (tmp_path / "run" / "memprof-timeline.png").stat().st_size > 20_000


def test_bad_input_is_one_line(capsys):
    for args, field in ((["--mode", "fast", "--", "python", "-c", "pass"], "--mode: 'fast'"),
                        (["--steps", "0", "--", "python", "-c", "pass"], "--steps: '0'"),
                        (["--"], "command: nothing to run"),
                        (["--", "no-such-program-xyz"], "command: 'no-such-program-xyz' not found")):
        assert main(["trace", *args]) == 2
        err = capsys.readouterr().err
        assert field in err and len(err.strip().splitlines()) == 1


def test_a_script_killed_by_a_signal_exits_128_plus_n_with_one_line():
    res = trace("--", "python", "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    assert res.returncode == 128 + 11, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "SIGSEGV" in lines[0] and "139" in lines[0], res.stderr


def test_a_command_that_cannot_be_run_is_one_line_exit_2(tmp_path, capsys):
    script = tmp_path / "not_executable.py"
    script.write_text("print('hi')\n")  # no execute bit
    folder = tmp_path / "somedir"
    folder.mkdir()
    for command in (script, folder, f"{folder}/"):
        assert main(["trace", "--", str(command)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: command:") and "cannot be run" in err, err
        assert len(err.strip().splitlines()) == 1


def test_an_unusable_output_is_refused_before_the_script_runs(tmp_path, capsys):
    ran = tmp_path / "ran"
    for output in ("/dev/null", str(tmp_path)):
        assert main(["trace", "--output", output, "--", "python", "-c", f"open({str(ran)!r}, 'w')"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --output") and len(err.strip().splitlines()) == 1, err
    assert not ran.exists()  # the script never started
