"""`timeline --out`: a name matplotlib cannot write, or the results file itself, is one line and exit 2."""

from __future__ import annotations

import pytest

from profiler.cli import main
from profiler.config import REPO_ROOT
from profiler.results import append_record
from profiler.simulate.backend import simulate


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    from profiler.config import load_config

    path = tmp_path_factory.mktemp("tl") / "good.jsonl"
    append_record(path, simulate(load_config(REPO_ROOT / "configs/tiny_full.yaml",
                                             ["train.seq_len=16", "train.steps=1"])))
    return path


@pytest.mark.parametrize("out, message", [
    ("pic.txt", "does not name a picture format; allowed: a file name ending in"),
    ("pic", "does not name a picture format"),
    (None, "does not name a picture format"),  # --out good.jsonl: the results file itself
])
def test_bad_out_is_one_line_and_nothing_is_written(good, tmp_path, capsys, out, message):
    target = str(tmp_path / out) if out else str(good)
    before = good.read_bytes()
    assert main(["timeline", str(good), "--out", target]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert good.read_bytes() == before and (out is None or not (tmp_path / out).exists())


def test_out_naming_the_results_file_is_refused(good, tmp_path, capsys):
    odd = tmp_path / "results.png"  # a results file with a picture's name
    odd.write_bytes(good.read_bytes())
    assert main(["timeline", str(odd), "--out", str(odd)]) == 2
    assert "is the results file being drawn" in capsys.readouterr().err
    assert odd.read_bytes() == good.read_bytes()


def test_a_picture_format_is_written(good, tmp_path, capsys):
    assert main(["timeline", str(good), "--out", str(tmp_path / "pic.svg")]) == 0
    assert (tmp_path / "pic.svg").read_text().lstrip().startswith("<?xml")
