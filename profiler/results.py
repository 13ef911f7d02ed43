"""Result lines: appended whole under a lock (never a rewrite), read back skipping damaged lines, one slug.

Writing: the output path is checked before a run (`check_output`: a regular file or a path that does not
exist yet, symlinks resolved, the directory writable), then each record is one strict-JSON line appended
with O_APPEND under an advisory lock on a hidden `.<name>.lock` beside the resolved file, and fsynced.
Reading: `read_records` is the one reader; damaged lines (not UTF-8, not JSON, not a record, a newer
schema_version) are skipped with one warning that counts them, or, with `strict`, are an error.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import re
import stat
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from pydantic import ValidationError

from profiler.schema import SCHEMA_VERSION, RunRecord

RESULTS_DIR = Path("results")  # relative: default outputs go under ./results/ of the working directory
RUNS_DIR = RESULTS_DIR / "runs"


class OutputError(ValueError):
    """An output path that cannot take result lines (one line, exit 2, checked before anything runs)."""


class NotJSONError(ValueError):
    """A record holding NaN or Infinity: it would not be a JSON line, so it is not written."""


def slugify(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'. Only [a-z0-9-]: safe as a file name, never a
    path ('../../x' -> 'x'). The one slug of the package (results/runs, results/calibration)."""
    return re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-") or "unknown"


def default_output(device_slug: str) -> Path:
    """results/runs/<slug>.jsonl under the working directory."""
    return RUNS_DIR / f"{slugify(device_slug)}.jsonl"


def lock_path(target: Path, kind: str = "lock") -> Path:
    """The hidden lock file beside a resolved results file (`.<name>.<kind>`)."""
    return target.with_name(f".{target.name}.{kind}")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a pipe (FIFO)"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_output(path: str | Path | None, what: str = "--output", create: bool = True) -> Path:
    """The resolved results file for `path`, or OutputError (one line) when lines cannot be appended there:
    an empty path, a directory, a device, a pipe, a socket, a parent that cannot be created, a directory
    or file that is not writable. With `create`, missing parent directories are made and the lock file
    beside the target is created (a real write test; the results file itself is not touched)."""
    if path is None or not str(path).strip():
        raise OutputError(f"{what}: empty path; give a .jsonl file (a regular file or a new path)")
    given = Path(path).expanduser()
    try:
        st = os.stat(given)  # follows links: /dev/stdout is judged as the pipe it points to
    except (FileNotFoundError, NotADirectoryError):  # a new path (a file in the way: mkdir says so below)
        st = None
    except OSError as exc:
        raise OutputError(f"{what} {str(path)!r}: cannot be read ({exc.strerror})") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise OutputError(f"{what} {str(path)!r} is {_kind(st.st_mode)}; results are appended to a regular "
                          "file or a path that does not exist yet")
    if _is_a_stream(given, st):
        raise OutputError(f"{what} {str(path)!r} is a standard stream or file descriptor of this process; results "
                          "are appended to a regular file (the table goes to stdout)")
    target = given.resolve()  # a symlink's target: the lock and the line follow it
    if not create:
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{what} {str(path)!r}: cannot create directory {str(target.parent)!r} "
                          f"({exc.strerror})") from None
    try:
        os.close(os.open(lock_path(target), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o666))
        if st is not None:
            os.close(os.open(target, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC))
    except OSError as exc:
        raise OutputError(f"{what} {str(path)!r}: cannot write in {str(target.parent)!r} ({exc.strerror})"
                          ) from None
    return target


def _is_a_stream(given: Path, st: os.stat_result | None) -> bool:
    """/dev/stdout, /dev/stderr, /dev/fd/N, /proc/*/fd/N, or the very file this process's stdout or stderr
    writes to (`--output /dev/stdout > f.txt`: the table would be written over the lines)."""
    parts = Path(os.path.abspath(given)).parts
    if parts[:2] == ("/", "dev") and (parts[2:3] == ("fd",) or parts[2:] in (("stdout",), ("stderr",), ("stdin",))):
        return True
    if parts[:2] == ("/", "proc") and len(parts) > 3 and parts[3] == "fd":
        return True
    for fd in (1, 2):
        try:
            mine = os.fstat(fd)
        except OSError:
            continue
        if st is not None and (mine.st_dev, mine.st_ino) == (st.st_dev, st.st_ino) and stat.S_ISREG(st.st_mode):
            return True
    return False


def check_directory(path: str | Path, what: str) -> Path:
    """A directory that results can be written into (made if missing; probed with an anonymous temp file
    that leaves nothing behind), or OutputError."""
    import tempfile

    d = Path(path).expanduser()
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=d):
            pass
    except OSError as exc:
        raise OutputError(f"{what} {str(path)!r}: cannot write there ({exc.strerror})") from None
    return d.resolve()


def _nonfinite(obj, where: str = "record") -> str | None:
    """Dotted key of the first NaN/Infinity in a JSON-like object (None: there is none)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where
    if isinstance(obj, dict):
        return next((w for k, v in obj.items() if (w := _nonfinite(v, f"{where}.{k}"))), None)
    if isinstance(obj, list | tuple):
        return next((w for i, v in enumerate(obj) if (w := _nonfinite(v, f"{where}[{i}]"))), None)
    return None


def to_line(record: dict) -> str:
    """The record as one strict-JSON line (no NaN/Infinity: NotJSONError naming the key)."""
    try:
        return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n"
    except ValueError:
        where = _nonfinite(record) or "record"
        raise NotJSONError(f"{where}: NaN/Infinity cannot be written as JSON; the line was not written") from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def append_record(path: str | Path, record: dict) -> Path:
    """Append one record as one whole line; returns the resolved file. Never reads or rewrites the file:
    O_APPEND under an exclusive flock on `.<name>.lock` beside the resolved target, then fsync. A failed
    write (a full disk) removes its own partial bytes and raises OSError: the file keeps every earlier line.
    OutputError: not a place for lines; NotJSONError: the record holds NaN/Infinity."""
    line = to_line(record).encode()
    target = check_output(path)
    with open(lock_path(target), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(target, flags, 0o666)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OutputError(f"{target} is {_kind(st.st_mode)}; results are appended to regular files")
            size = st.st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # a foreign broken tail stays its own (skipped) line, ours stays whole
            try:
                _write_all(fd, line)
                os.fsync(fd)
            except BaseException:  # a full disk, or Ctrl-C between two partial writes
                try:
                    os.ftruncate(fd, size)  # only our own partial bytes go; every earlier line stays
                except OSError:
                    pass
                raise
        finally:
            os.close(fd)
    return target


def append_or_report(path: str | Path, record: dict) -> bool:
    """append_record for commands: on failure (a full disk, a NaN, an output gone bad since the check) one
    error line on stderr, then the record itself there, so a measurement is never lost silently. False
    when the line was not written (the command exits 1)."""
    try:
        append_record(path, record)
        return True
    except (NotJSONError, OutputError) as exc:
        print(f"error: result not written: {exc}; the record follows on stderr", file=sys.stderr)
    except OSError as exc:
        why = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        print(f"error: could not append the result to {str(path)!r} ({why}); the file keeps its earlier lines; "
              "the record follows on stderr", file=sys.stderr)
    print(json.dumps(record, sort_keys=True, separators=(",", ":")), file=sys.stderr)
    return False


# ---------------------------------------------------------------- reading


def _stderr_warning(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def _why_not_record(obj) -> str | None:
    """None when `obj` is a record of a schema this code reads, else the reason it is skipped."""
    if not isinstance(obj, dict):
        return "not a record"
    version = obj.get("schema_version", SCHEMA_VERSION)
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        return f"schema_version {version} newer than {SCHEMA_VERSION} (upgrade llm-memprof to read it)"
    return None


def read_records(paths: Iterable[str | Path], strict: bool = False, offset: int = 0,
                 warn: Callable[[str], None] | None = _stderr_warning, as_models: bool = False) -> list:
    """Every record in the given JSONL files, validated by RunRecord: the lines' own dicts (or, with
    `as_models`, RunRecord objects). A missing file is empty. Damaged lines (not UTF-8, not JSON, valid
    JSON that is not a record, a truncated tail, a schema_version newer than ours) are skipped and counted
    in ONE `warn` call, or, with `strict`, raise ValueError naming file and line. `offset`: start each file
    at this byte (what was appended since)."""
    out: list = []
    skipped: Counter[str] = Counter()
    where: list[str] = []
    for p in map(Path, paths):
        if not p.exists():
            continue
        before = sum(skipped.values())
        with p.open("rb") as f:
            if offset:
                f.seek(offset)
            for n, raw in enumerate(f, 1):
                raw = raw.strip()
                if not raw:
                    continue
                why = None
                try:
                    obj = json.loads(raw.decode("utf-8"))
                    why = _why_not_record(obj)
                    if why is None:
                        model = RunRecord.model_validate(obj)
                except UnicodeDecodeError:
                    why = "not UTF-8"
                except json.JSONDecodeError:
                    why = "not JSON (truncated or foreign)"
                except ValidationError as exc:
                    e = exc.errors()[0]
                    key = ".".join(map(str, e["loc"])) or "record"
                    why = "not a record" if not strict else f"not a record ({key}: {e['msg']})"
                if why is not None:
                    if strict:
                        raise ValueError(f"{p}:{n}: skipped line: {why}")
                    skipped[why] += 1
                    continue
                out.append(model if as_models else obj)
        if sum(skipped.values()) > before:
            where.append(str(p))
    total = sum(skipped.values())
    if total and warn is not None:
        reasons = ", ".join(f"{n} {why}" for why, n in skipped.most_common())
        warn(f"skipped {total} damaged line{'s' if total > 1 else ''} in {', '.join(where)} ({reasons})")
    return out


def read_run_records(paths: Iterable[str | Path], strict: bool = False,
                     warn: Callable[[str], None] | None = _stderr_warning) -> list[RunRecord]:
    """read_records as RunRecord objects (compare's input)."""
    return read_records(paths, strict=strict, warn=warn, as_models=True)
