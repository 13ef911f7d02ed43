"""The existing pictures made readable: compare.md embeds its figures and flags CPU-tracker measurements;
the figures use units scaled to the data; the calibration figure is a grid, not a strip."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import matplotlib.image

from profiler.commands.compare import add_arguments, main
from profiler.learn import calibrate

DATA = Path(__file__).parents[1] / "data" / "synthetic_runs.jsonl"


def test_compare_md_embeds_figures_and_says_cpu(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert main(parser.parse_args([str(DATA), "--out", str(tmp_path)])) == 0
    md = (tmp_path / "compare.md").read_text()
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs and all(f"]({name})" in md for name in pngs)
    assert "CPU tensor-tracker figures" in md  # the synthetic set has cpu-backend lines


def test_calibration_figure_is_a_grid(tmp_path):
    import test_calibrate as tc

    samples, _ = calibrate.to_samples(tc.synthetic_records(), estimate_fn=tc.estimate_fn())
    fitted = calibrate.fit_rows(samples)  # two targets on this data; give the figure every target
    rows = [dataclasses.replace(r, target=t) for t in calibrate.TARGETS for r in fitted[:2]]
    (png,) = calibrate.write_figures(rows, tmp_path)
    h, w = matplotlib.image.imread(png).shape[:2]
    n_targets = len({r.target for r in rows})
    assert n_targets > 3 and w / h < 2.5  # several rows of at most 3 panels, not a 2112 x 374 strip
