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
