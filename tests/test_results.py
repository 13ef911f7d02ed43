"""Result files: appended (never rewritten) as whole strict-JSON lines; damaged lines skipped with one warning."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os

import pytest

from profiler import results
from profiler.results import (
    NotJSONError,
    OutputError,
    append_record,
    check_output,
    read_records,
    slugify,
)
from profiler.schema import SCHEMA_VERSION


def record(i: int = 0, **extra) -> dict:
    """A minimal valid RunRecord dict."""
    rec = {"run_id": f"r{i}", "timestamp": "2025-01-01T00:00:00+00:00", "config_hash": f"h{i}", "config": {},
           "status": "ok", "backend": "cpu",
           "env": {"hostname": "h", "python": "3", "torch": "t", "device_name": "cpu", "device_slug": "cpu"}}
    rec.update(extra)
    return rec


def ids(path) -> list[str]:
    return [json.loads(x)["run_id"] for x in path.read_text().splitlines() if x.strip()]


def test_append_and_read_back(tmp_path):
    path = tmp_path / "r.jsonl"
    append_record(path, record(1))
    append_record(path, record(2))
    assert ids(path) == ["r1", "r2"]
    assert [r["run_id"] for r in read_records([path])] == ["r1", "r2"]


def test_append_is_in_place_never_a_rewrite(tmp_path):
    """Item 1: the file keeps its inode (O_APPEND, no temp file and rename) and its earlier bytes."""
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(record(1)) + "\n")
    before = path.read_bytes()
    inode = path.stat().st_ino
    append_record(path, record(2))
    assert path.stat().st_ino == inode
    assert path.read_bytes().startswith(before)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_symlinked_output_stays_a_link_and_the_lock_follows_it(tmp_path):
    real = tmp_path / "real" / "r.jsonl"
    real.parent.mkdir()
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    append_record(link, record(1))
    append_record(real, record(2))
    assert link.is_symlink() and ids(real) == ["r1", "r2"]
    assert check_output(link) == check_output(real) == real.resolve()
    assert (real.parent / ".r.jsonl.lock").exists() and not (tmp_path / ".link.jsonl.lock").exists()


def device_copy(tmp_path, name: str) -> str:
    """A private copy of /dev/null or /dev/full (mknod, as the issue did): a regression must never clobber
    the machine's real device (as root, the old rewrite-and-rename did). Without mknod rights (not root)
    the real device is used: then it cannot be replaced anyway."""
    import stat

    minor = {"null": 3, "full": 7}[name]
    path = tmp_path / f"dev-{name}"
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, minor))
    except OSError:
        return f"/dev/{name}"
    return str(path)


@pytest.mark.parametrize("kind", ["dev_null", "dev_full", "dev_stdout_pipe", "fifo", "directory", "empty"])
def test_outputs_that_are_not_regular_files_are_refused(tmp_path, kind):
    """Item 1: /dev/null, /dev/full, /dev/stdout into a pipe, a FIFO, a directory, '' -> OutputError."""
    r, w = os.pipe()
    path = {"dev_null": device_copy(tmp_path, "null"), "dev_full": device_copy(tmp_path, "full"),
            "dev_stdout_pipe": f"/proc/self/fd/{w}", "fifo": tmp_path / "fifo", "directory": tmp_path,
            "empty": ""}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    try:
        with pytest.raises(OutputError) as err:
            append_record(path, record())
    finally:
        os.close(r)
        os.close(w)
    assert "\n" not in str(err.value)
    if kind in ("fifo", "dev_stdout_pipe"):
        assert "FIFO" in str(err.value)
    if kind in ("dev_null", "dev_full"):
        assert os.path.exists(path) and not os.path.isfile(path)  # still the device
        assert not os.path.exists(os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock"))


def test_unwritable_places_are_refused_before_anything_is_written(tmp_path):
    """Item 2: a parent that cannot be created (a file in the way), a read-only directory."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot create directory"):
        check_output(blocker / "sub" / "r.jsonl")
    if os.path.isdir("/sys") and _read_only("/sys"):  # a read-only directory even for root
        with pytest.raises(OutputError, match="cannot write in"):
            check_output("/sys/r.jsonl")
    if os.geteuid() != 0:  # root writes through mode bits
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        with pytest.raises(OutputError):
            check_output(ro / "r.jsonl")


def _read_only(d: str) -> bool:
    try:
        os.close(os.open(os.path.join(d, ".memprof-probe"), os.O_WRONLY | os.O_CREAT))
    except OSError:
        return True
    os.unlink(os.path.join(d, ".memprof-probe"))
    return False


def test_nan_or_infinity_is_an_error_before_writing(tmp_path):
    """Item 1: strict JSON; the error names the key; the file is not touched."""
    path = tmp_path / "r.jsonl"
    append_record(path, record(1))
    before = path.read_bytes()
    with pytest.raises(NotJSONError, match=r"record\.config\.optimizer\.lr"):
        append_record(path, record(2, config={"optimizer": {"lr": float("inf")}}))
    with pytest.raises(NotJSONError, match=r"record\.phases\[0\]\.x"):
        append_record(path, record(3, phases=[{"x": float("nan")}]))
    assert path.read_bytes() == before


@pytest.mark.parametrize("fail_after", [0, 7])
def test_full_disk_keeps_every_earlier_line(tmp_path, monkeypatch, fail_after):
    """Item 2: a write failing (at once, or after part of the line) leaves the file exactly as it was."""
    path = tmp_path / "r.jsonl"
    append_record(path, record(1))
    before = path.read_bytes()

    def full_disk(fd, data):
        if fail_after:
            os.write(fd, bytes(data[:fail_after]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results, "_write_all", full_disk)
    with pytest.raises(OSError):
        append_record(path, record(2))
    assert path.read_bytes() == before


def test_a_foreign_broken_tail_does_not_corrupt_our_line(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(record(1)) + '\n{"run_id": "r2", "trunc')
    append_record(path, record(3))
    assert [r["run_id"] for r in read_records([path])] == ["r1", "r3"]
    assert "skipped 1 damaged line" in capsys.readouterr().err


def test_results_file_is_readable_like_any_other_file(tmp_path):
    path = append_record(tmp_path / "r.jsonl", record())
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def _append_many(path: str, start: int) -> None:
    for i in range(start, start + 25):
        append_record(path, record(i, pad="x" * 5000))


def test_concurrent_appends_give_whole_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(path), 100 * k)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert sorted(ids(path)) == sorted(f"r{100 * k + i}" for k in range(4) for i in range(25))


DAMAGED = [b"null", b"[]", b'{"status":"ok"}', b'{"run_id": "\xff\xfe"}',
           json.dumps(record(9, schema_version=SCHEMA_VERSION + 98)).encode(), b'{"run_id": "trunc']


def test_reader_skips_damaged_lines_with_one_counting_warning(tmp_path):
    """Item 3: valid JSON that is not a record, a non-UTF-8 byte, a newer schema_version, a truncated tail."""
    path = tmp_path / "r.jsonl"
    good = [json.dumps(record(i)).encode() for i in (1, 2)]
    path.write_bytes(b"\n".join([good[0], *DAMAGED[:-1], good[1], DAMAGED[-1]]))
    warnings: list[str] = []
    recs = read_records([path], warn=warnings.append)
    assert [r["run_id"] for r in recs] == ["r1", "r2"]
    assert len(warnings) == 1
    msg = warnings[0]
    assert msg.startswith("skipped 6 damaged lines in ") and "1 not UTF-8" in msg and "3 not a record" in msg
    assert f"schema_version {SCHEMA_VERSION + 98} newer than {SCHEMA_VERSION}" in msg
    with pytest.raises(ValueError, match=r"r\.jsonl:2: "):
        read_records([path], strict=True)


def test_reader_offset_reads_only_what_was_appended(tmp_path):
    path = tmp_path / "r.jsonl"
    append_record(path, record(1))
    size = path.stat().st_size
    append_record(path, record(2))
    assert [r["run_id"] for r in read_records([path], offset=size)] == ["r2"]


def test_slugify_is_a_file_name_never_a_path():
    assert slugify("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert slugify("../../x") == "x" and slugify("a/b") == "a-b" and slugify("..") == "unknown"
    assert results.default_output("../../etc/x").as_posix() == "results/runs/etc-x.jsonl"


def test_simulate_vs_cuda_script_reads_damaged_files_from_the_working_directory(tmp_path):
    """Item 3 (scripts/simulate_vs_cuda.py): defaults are ./results/{runs,simulated} of the cwd; a
    non-UTF-8 byte and a non-record line are skipped with one warning, the pair is still made."""
    import subprocess
    import sys

    from profiler.config import REPO_ROOT

    cfg = {"model": {"arch": "tiny-llama"}, "regime": {"kind": "full"}, "optimizer": {"name": "adamw"},
           "train": {"batch_size": 1, "seq_len": 8, "gradient_checkpointing": False}}
    runs, sims = tmp_path / "results" / "runs", tmp_path / "results" / "simulated"
    runs.mkdir(parents=True)
    sims.mkdir()
    measured = record(1, config=cfg, peaks={"peak_allocated_bytes": 1000})
    fake = record(2, config=cfg, backend="fake", peaks={"peak_allocated_bytes": 1100}, config_hash="h1")
    (runs / "cpu.jsonl").write_bytes(json.dumps(measured).encode() + b'\n{"x": "\xff"}\n[]\n')
    (sims / "cpu.jsonl").write_text(json.dumps(fake) + "\n")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "simulate_vs_cuda.py")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("warning") == 1 and "skipped 2 damaged lines" in proc.stderr
    assert "| tiny-llama full adamw b1 s8 | cpu | ok |" in proc.stdout and "+10.0" in proc.stdout
