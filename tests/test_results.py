"""Result files: whole lines or nothing, readable after an interrupted append."""

from __future__ import annotations

import json

import pytest

from profiler import results
from profiler.results import append_record, read_records


def test_append_and_read_back(tmp_path):
    path = tmp_path / "r.jsonl"
    append_record(path, {"a": 1})
    append_record(path, {"a": 2})
    assert [json.loads(x)["a"] for x in path.read_text().splitlines()] == [1, 2]


class Killed(BaseException):
    """Stands for a kill arriving mid-append (BaseException, like KeyboardInterrupt / SystemExit)."""


def test_interrupted_append_leaves_no_broken_line(tmp_path, monkeypatch):
    path = tmp_path / "r.jsonl"
    append_record(path, {"a": 1})
    before = path.read_bytes()

    def dying_replace(src, dst):
        raise Killed("killed between write and rename")

    monkeypatch.setattr(results.os, "replace", dying_replace)
    with pytest.raises(Killed):
        append_record(path, {"a": 2, "big": "x" * 100_000})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    append_record(path, {"a": 3})
    assert [json.loads(x)["a"] for x in path.read_text().splitlines()] == [1, 3]


def test_reader_skips_a_foreign_broken_tail(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n{"a": 2, "trunc')
    append_record(path, {"a": 3})
    assert [r["a"] for r in read_records([path], validate=False)] == [1, 3]


def test_results_file_is_readable_like_any_other_file(tmp_path):
    import os

    path = append_record(tmp_path / "r.jsonl", {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
