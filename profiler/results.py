"""Result lines: appended atomically (never half a line), read back tolerantly, validated by the schema."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from pydantic import ValidationError

from profiler.config import REPO_ROOT
from profiler.schema import RunRecord

RUNS_DIR = REPO_ROOT / "results" / "runs"


def default_output(device_slug: str) -> Path:
    return RUNS_DIR / f"{device_slug}.jsonl"


def append_record(path: str | Path, record: dict) -> Path:
    """Append one JSON line. The file is rewritten to a temp file and renamed under a lock, so a crash or
    kill at any moment leaves either the old file or the old file plus the whole new line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = path.read_bytes() if path.exists() else b""
        if old and not old.endswith(b"\n"):
            old += b"\n"  # a foreign broken tail stays its own (skipped) line instead of corrupting ours
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a results file is as readable as any other
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(old)
                f.write(line.encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def read_records(paths: Iterable[str | Path], validate: bool = True, strict: bool = False) -> list[dict]:
    """All lines of the given JSONL files as dicts. Broken lines (an interrupted foreign writer) are skipped,
    or, with `strict`, raise ValueError naming file and line; `validate` checks each against RunRecord."""
    out: list[dict] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            continue
        for n, raw in enumerate(p.read_text().splitlines(), 1):
            raw = raw.strip()
            if not raw:
                continue
            try:
                rec = json.loads(raw)
                if validate:
                    rec = RunRecord.model_validate(rec).model_dump(mode="json")
            except (json.JSONDecodeError, ValidationError) as exc:
                if strict:
                    why = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else "not JSON"
                    raise ValueError(f"{p}:{n}: not a result line ({why})") from None
                continue
            out.append(rec)
    return out


def read_run_records(paths: Iterable[str | Path]) -> list[RunRecord]:
    """Validated RunRecord objects; any bad line is an error naming file and line (compare's input)."""
    return [RunRecord.model_validate(r) for r in read_records(paths, strict=True)]
