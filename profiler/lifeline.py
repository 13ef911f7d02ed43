"""Child processes that die with their parent, and the shell's exit code for a child killed by a signal.

Linux `prctl(PR_SET_PDEATHSIG, SIGKILL)` (prctl(2)) makes the kernel send SIGKILL to a process when the
*thread* that forked it exits, whatever killed it (SIGKILL included, which no handler sees). So each link of
a chain sets it for itself: a torchrun rank (`die_with_parent`; torchrun starts each rank in its own
session), and the children `run`, `sweep` and `trace` start with
`subprocess.Popen(preexec_fn=preexec_hook())`. Every such child is started from the main thread. Elsewhere
(macOS, Windows) prctl does not exist and these are no-ops. `fit`'s forkserver worker watches a pipe instead
(`watch`): its parent is the forkserver, which lives on while the worker does.
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h
_LIBC: object = None  # loaded once, before any fork: a preexec hook must import nothing


def _libc():
    global _LIBC
    if _LIBC is None:
        _LIBC = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                _LIBC = ctypes.CDLL(None, use_errno=True)
            except OSError:
                pass
    return _LIBC or None


def _parent_gone(parent: int | None) -> bool:
    ppid = os.getppid()
    return ppid == 1 or (parent is not None and ppid != parent)


def die_with_parent(parent: int | None = None) -> None:
    """In a child: SIGKILL when its parent exits; exit at once (code 1) where the parent is already gone:
    the process was reparented (to PID 1, or to `parent`'s replacement when the caller knows the pid)."""
    libc = _libc()
    if libc is not None:
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if _parent_gone(parent):
        os._exit(1)


def watch(conn) -> None:
    """In a child: a daemon thread ends this process (exit 1) when the other end of `conn` (a
    multiprocessing read-only Connection whose write end only the parent holds) closes, i.e. when the
    parent exits, however it died. For a forkserver child, whose parent is the forkserver: that process
    outlives `fit` as long as any of its children lives (each holds its alive pipe), so PR_SET_PDEATHSIG
    alone would never fire."""
    import threading

    def wait() -> None:
        try:
            conn.recv()  # the parent never sends: this returns only by EOF
        except (EOFError, OSError):
            pass
        os._exit(1)

    threading.Thread(target=wait, name="lifeline", daemon=True).start()


def preexec_hook():
    """A `Popen(preexec_fn=...)` hook: the child gets SIGKILL when this process dies (checked again after
    prctl, for a parent that died in between). It calls only what was loaded before the fork."""
    libc = _libc()
    parent = os.getpid()

    def hook() -> None:  # pragma: no cover - runs in the child between fork and exec
        if libc is not None:
            libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)  # 9: SIGKILL (no attribute lookups after the fork)
        if os.getppid() != parent:
            os._exit(1)

    return hook


def signal_exit(returncode: int, what: str) -> tuple[int, str | None]:
    """(exit code, message) for a child's return code: a child killed by signal N (Popen's -N) gives the
    shell's 128 + N and one line naming the signal; any other code passes through with no message."""
    if returncode >= 0:
        return returncode, None
    n = -returncode
    try:
        name = signal.Signals(n).name
        desc = signal.strsignal(n) or name
    except ValueError:
        name = desc = f"signal {n}"
    return 128 + n, f"error: {what} was killed by {name} ({desc}); exit code {128 + n}"
