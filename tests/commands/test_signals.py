"""Killed commands leave no process behind and write no line after the stop (issue 23, items 1-3).

Each command runs in its own session (its pid is the session id) with SIGINT at its default action, is
killed while its children work, and the process table is read: every process that was below it just
before the kill, and every process of its session, must be gone a few seconds later.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap

import pytest
from proctable import LINUX, descendants, kill_all, kill_and_check, left_behind, start, wait_for

from profiler.config import REPO_ROOT

pytestmark = pytest.mark.skipif(not LINUX, reason="reads /proc; PR_SET_PDEATHSIG is Linux-only")
ENV = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
SIGNALS = [pytest.param(signal.SIGTERM, id="TERM"), pytest.param(signal.SIGKILL, id="KILL")]

# `fit` on tiny-llama with the second (forkserver) process forced on: default_workers picks it only for 1B+
# models, whose simulations take seconds each
FIT_DRIVER = textwrap.dedent("""
    import sys
    import profiler.predict.fit as fit
    fit.default_workers = lambda cfg: 2
    from profiler.cli import main
    sys.exit(main(["fit", "tiny-llama", "--gpu", "h100"]))
""")


def _grandchild(pid: int) -> bool:
    """A process two levels below `pid` (fit's worker under the forkserver; a rank under torchrun)."""
    kids = descendants(pid)
    return any(int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1]) != pid for p in kids
               if os.path.exists(f"/proc/{p}/stat"))


def _check(leftover: list[str]) -> None:
    if leftover:
        kill_all(leftover)
    assert leftover == []


@pytest.mark.parametrize("sig", SIGNALS)
def test_killed_fit_takes_its_worker_and_the_resource_tracker_with_it(tmp_path, sig):
    proc = start([sys.executable, "-c", FIT_DRIVER], env=ENV, cwd=tmp_path, stdout=open(os.devnull, "w"),
                 stderr=open(tmp_path / "err.txt", "w"))
    wait_for(lambda: _grandchild(proc.pid), 120, "max seq worker", proc)
    _check(kill_and_check(proc, sig))


def _parallel_run(tmp_path, stderr):
    out = tmp_path / "out.jsonl"
    argv = [sys.executable, "-m", "profiler", "run", str(REPO_ROOT / "configs" / "tiny_full.yaml"),
            "parallel.strategy=fsdp2", "parallel.world_size=2", "train.steps=200", "--output", str(out), "--quiet"]
    proc = start(argv, env=ENV, cwd=tmp_path, stdout=stderr, stderr=stderr)
    wait_for(lambda: _grandchild(proc.pid) and len(descendants(proc.pid)) >= 3, 120, "two torchrun ranks", proc)
    return proc, out


@pytest.mark.parametrize("sig", SIGNALS)
def test_killed_parallel_run_leaves_no_rank_and_no_line(tmp_path, sig):
    proc, out = _parallel_run(tmp_path, open(tmp_path / "log.txt", "w"))
    _check(kill_and_check(proc, sig))
    assert not out.exists() or out.read_text() == ""


@pytest.mark.parametrize("group", [True, False], ids=["ctrl-c", "kill-INT"])
def test_interrupted_parallel_run_says_interrupted_once_and_leaves_nothing(tmp_path, group):
    """Ctrl-C reaches the terminal's whole foreground group (here, the command's group); `kill -INT PID`
    the command alone. Either way: exit 130, one "interrupted" line, no rank left to append a line later."""
    log = tmp_path / "log.txt"
    proc, out = _parallel_run(tmp_path, open(log, "w"))
    seen = descendants(proc.pid)
    if group:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    _check(left_behind(seen, proc.pid))
    text = log.read_text()
    assert text.count("interrupted") == 1, text
    assert "Traceback" not in text and "Warning" not in text, text
    assert not out.exists() or out.read_text() == ""


@pytest.mark.parametrize("sig", SIGNALS)
def test_killed_trace_takes_the_script_with_it(tmp_path, sig):
    marker = tmp_path / "started"
    script = f"import time; open({str(marker)!r}, 'w').close(); time.sleep(120)"
    proc = start([sys.executable, "-m", "profiler", "trace", "--", "python", "-c", script], env=ENV, cwd=tmp_path,
                 stderr=open(tmp_path / "err.txt", "w"))
    wait_for(marker.exists, 60, "script start", proc)
    _check(kill_and_check(proc, sig))
    if sig == signal.SIGTERM:  # passed on to the script: trace reports how it ended, as the shell would
        assert proc.returncode == 128 + signal.SIGTERM
        assert "SIGTERM" in (tmp_path / "err.txt").read_text()
