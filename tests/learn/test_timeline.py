"""The timeline PNG for a run, a simulate and a track line (and a light one without categories): written,
non-trivial (the category colours are in it), and the `timeline` command's bad input is one line."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest
import torch
from conftest import tiny

from profiler.categories import Category
from profiler.cli import main
from profiler.learn.timeline import COLORS, describe, plot_timeline
from profiler.measure.harness import run
from profiler.measure.loading import load_model
from profiler.measure.optimizers import make_optimizer
from profiler.measure.regimes import apply_regime, trainable_parameters
from profiler.measure.track import track
from profiler.results import append_record
from profiler.simulate.backend import simulate


def has_colour(png, hex_colour: str) -> bool:
    img = (matplotlib.image.imread(png)[..., :3] * 255).round().astype(int)
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return bool((np.abs(img - rgb).sum(axis=-1) <= 6).sum() > 200)  # a bar, not a stray pixel


def tracked(mode: str = "breakdown") -> dict:
    cfg = tiny("lora")
    model = apply_regime(load_model(cfg).model, cfg)
    opt = make_optimizer(cfg.optimizer, trainable_parameters(model))
    batch = torch.randint(0, 512, (2, 32))
    with track(model, opt, mode=mode) as t:
        for _ in range(2):
            model(input_ids=batch, labels=batch).loss.backward()
            opt.step()
            opt.zero_grad()
    return t.record


@pytest.mark.parametrize("source", ["run", "simulate", "track"])
def test_timeline_png(source, tmp_path):
    cfg = tiny("full", "train.steps=1")
    record = {"run": lambda: run(cfg), "simulate": lambda: simulate(cfg), "track": tracked}[source]()
    out = plot_timeline(record, tmp_path / f"{source}.png")
    assert out.stat().st_size > 20_000
    for cat in (Category.WEIGHTS, Category.ACTIVATIONS, Category.TEMPORARIES):
        assert has_colour(out, COLORS[cat]), cat
    what, how = describe(record)
    assert {"run": "own loop", "simulate": "fake tensors", "track": "your training loop"}[source] in how
    assert "batch 2" in what


def test_light_record_and_command(tmp_path, capsys):
    rec = tracked("light")
    results = tmp_path / "lines.jsonl"
    append_record(results, rec)
    png = tmp_path / "light.png"
    assert main(["timeline", str(results), "--run-id", rec["run_id"][:6], "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000 and not has_colour(png, COLORS[Category.ACTIVATIONS])
    assert "process RSS" in describe(rec)[1]
    capsys.readouterr()
    for args, field in (([str(tmp_path / "none.jsonl")], "does not exist"),
                        ([str(results), "--run-id", "zzz"], "no line with run_id 'zzz'")):
        assert main(["timeline", *args]) == 2
        err = capsys.readouterr().err
        assert field in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def light_line(tmp_path_factory) -> tuple:
    rec = tracked("light")
    results = tmp_path_factory.mktemp("lines") / "good.jsonl"
    append_record(results, rec)
    return results, rec


def test_a_truncated_last_line_is_skipped_with_one_warning(light_line, tmp_path, capsys):
    """Issue 23, item 22: good lines, then a truncated one: the good line is drawn (exit 0), one warning."""
    good, rec = light_line
    half = tmp_path / "goodthenhalf.jsonl"
    text = good.read_text()
    half.write_text(text + text[: len(text) // 2])
    png = tmp_path / "t.png"
    assert main(["timeline", str(half), "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000
    out, err = capsys.readouterr()
    assert rec["run_id"][:8] in out
    assert len(err.strip().splitlines()) == 1 and "skipped" in err and "truncated" in err, err


def test_out_never_overwrites_a_file_timeline_did_not_write(light_line, tmp_path, capsys):
    """Issue 23, item 21: an existing file that is not ours is refused (exit 2, untouched) unless --force;
    our own picture is overwritten on a rerun; --out DIR writes the default name inside DIR and says so."""
    good, rec = light_line
    theirs = tmp_path / "existing.png"
    theirs.write_bytes(b"\x89PNG someone else's picture")
    assert main(["timeline", str(good), "--out", str(theirs)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not written by timeline" in err and "--force" in err
    assert theirs.read_bytes() == b"\x89PNG someone else's picture"
    assert main(["timeline", str(good), "--out", str(theirs), "--force"]) == 0
    assert theirs.stat().st_size > 10_000
    assert main(["timeline", str(good), "--out", str(theirs)]) == 0  # ours now: a rerun may replace it
    folder = tmp_path / "pics"
    folder.mkdir()
    capsys.readouterr()
    assert main(["timeline", str(good), "--out", str(folder)]) == 0
    inside = folder / f"timeline-{rec['run_id'][:8]}.png"
    assert inside.stat().st_size > 10_000 and not (tmp_path / "pics.png").exists()
    assert str(inside) in capsys.readouterr().out


def test_a_directory_is_not_called_missing(tmp_path, capsys):
    """Issue 23, item 23 (timeline's share): a directory given as the results file is named as one."""
    assert main(["timeline", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a directory" in err and "does not exist" not in err and len(err.splitlines()) == 1
