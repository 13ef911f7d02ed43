"""The process table, read from /proc (Linux): what a killed command leaves behind (tests of signals)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

LINUX = sys.platform.startswith("linux")


def _stat(pid: int) -> tuple[int, int, str, int] | None:
    """(ppid, session id, state, start time in clock ticks) of a process; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return int(fields[1]), int(fields[3]), fields[0], int(fields[19])


def _alive(pid: int, started: int | None = None) -> bool:
    st = _stat(pid)
    return st is not None and st[2] not in ("Z", "X") and (started is None or st[3] == started)


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def descendants(pid: int) -> dict[int, int]:
    """Every live process below `pid` (children, grandchildren ...), pid -> start time."""
    table = {p: st for p in _pids() if (st := _stat(p)) is not None}
    out: dict[int, int] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for p, (ppid, _, state, started) in table.items():
            if ppid == parent and p not in out and state not in ("Z", "X"):
                out[p] = started
                frontier.append(p)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def left_behind(seen: dict[int, int], session: int, wait_s: float = 10.0) -> list[str]:
    """The processes still alive `wait_s` after a kill: those in `seen` (a `descendants` snapshot taken just
    before it, matched by start time, so a reused pid is not counted) and any live one in `session`."""
    deadline = time.time() + wait_s
    while True:
        alive = {p for p, started in seen.items() if _alive(p, started)}
        alive |= {p for p in _pids() if (st := _stat(p)) is not None and st[1] == session and _alive(p)}
        if not alive or time.time() > deadline:
            return [f"{p}: {cmdline(p)}" for p in sorted(alive)]
        time.sleep(0.1)


def start(argv: list[str], **kwargs) -> subprocess.Popen:
    """`argv` as its own session leader (its pid is the session id), SIGINT at its default action: a
    background job of a non-interactive shell starts with SIGINT ignored (FACTS.md), and so would it."""
    def restore() -> None:  # pragma: no cover - runs in the child
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    return subprocess.Popen(argv, start_new_session=True, preexec_fn=restore, **kwargs)  # noqa: PLW1509


def wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the command ended (exit {proc.returncode}) before {what}")
        if time.time() > deadline:
            raise AssertionError(f"no {what} after {timeout_s:g} s")
        time.sleep(0.05)


def kill_and_check(proc: subprocess.Popen, sig: int, wait_s: float = 10.0) -> list[str]:
    """Send `sig` to the command alone (not its group), reap it, and return what it left behind."""
    seen = descendants(proc.pid)
    proc.send_signal(sig)
    try:
        proc.wait(timeout=wait_s + 20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return left_behind(seen, proc.pid, wait_s)


def kill_all(pids) -> None:
    """Clean up after a failed check (only processes this test started)."""
    for p in pids:
        try:
            os.kill(int(str(p).split(":")[0]), signal.SIGKILL)
        except (ProcessLookupError, ValueError, PermissionError):
            pass
