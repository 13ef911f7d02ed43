"""`fit --picture FILE.png`: the numbers the picture draws (picture_data), the PNG a tiny fit writes, and bad paths
refused before anything is simulated."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from profiler.cli import main
from profiler.predict import picture as pic_mod
from profiler.predict.fit import FitResult
from profiler.predict.picture import FitPicture, picture_data, picture_problem, plot_fit, written_by_fit
from profiler.predict.search import MaxSolution

BUDGET = "560MiB"  # the 512 MiB modelled CUDA context + 48 MiB: tiny-llama fits a few batches of 64 tokens
MIB = 2**20


def _png_shape(path: Path) -> tuple[int, ...]:
    from matplotlib.image import imread

    return imread(path).shape


def test_a_tiny_fit_draws_its_breakdown_and_its_searches(tmp_path, monkeypatch, capsys):
    seen: list[tuple[FitResult, FitPicture]] = []
    real = pic_mod.picture_data

    def spy(res, *a, **k):
        data = real(res, *a, **k)
        seen.append((res, data))
        return data

    monkeypatch.setattr(pic_mod, "picture_data", spy)
    out = tmp_path / "fit.png"
    rc = main(["fit", "tiny-llama", "--regime", "lora", "--seq", "64", "--gpu-memory", BUDGET, "--serial",
               "--picture", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and f"picture written to {out}" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.png"]  # no temporary file left beside it
    assert out.read_bytes().startswith(b"\x89PNG") and written_by_fit(out)
    h, w, channels = _png_shape(out)
    assert 500 < h < 1000 and 900 < w < 1400 and channels in (3, 4)
    [(res, data)] = seen
    # the bar: the categories at the simulated peak and the allocator allowance add up to what fit compared
    assert sum(b for _, b in data.segments) == data.needed_bytes == res.needed_bytes
    assert dict(data.segments)["allocator"] == res.allocator_bytes
    assert {k for k, v in res.breakdown.items() if v > 0} <= {k for k, _ in data.segments}
    assert data.usable_bytes == res.usable_bytes < data.total_bytes == res.total_bytes
    # the curves: every point the searches simulated, and the verdict's own point
    for curve, sol, at in ((data.batch, res.max_batch, res.batch_size), (data.seq, res.max_seq, res.seq_len)):
        assert curve is not None and sol is not None
        assert {k: v for k, v in curve.points.items() if k in sol.needed} == sol.needed
        assert curve.points[at] == res.needed_bytes and curve.limit == res.usable_bytes
        assert curve.best == sol.value >= 1 and list(curve.points) == sorted(curve.points)
        assert all(v <= curve.limit for k, v in curve.points.items() if k <= curve.best or curve.capped)
    assert "simulated" in data.subtitle and "not measured" in data.subtitle and "git " in data.subtitle
    assert "tiny-llama" in data.title and "lora" in data.title and "recipe trl" in data.title


def _result(**over) -> FitResult:
    """A hand-built answer (no simulation): 1 GiB GPU, 40 MiB simulated peak."""
    base = dict(model="tiny-llama", model_source="bundled", regime="lora", optimizer="adamw", batch_size=2,
                seq_len=128, gradient_checkpointing=False, gpu="1GiB", gpu_source="typed", total_bytes=1024 * MIB,
                usable_bytes=512 * MIB, simulated_peak_bytes=40 * MIB, allocator_bytes=8 * MIB, needed_bytes=48 * MIB,
                fits=True, allowance="modelled", allowance_source="modelled", error_band_pct=None,
                breakdown={"weights": 10 * MIB, "gradients": 0, "optimizer": 5 * MIB, "activations": 20 * MIB},
                peak_phase="backward (step 1)", attention_kernel="flash", max_batch=None, max_seq=None)
    return FitResult(**{**base, **over})


def test_the_categories_short_of_the_peak_are_drawn_as_other():
    data = picture_data(_result(), date="2026-01-01", commit="abc")
    assert data.segments == [("weights", 10 * MIB), ("optimizer", 5 * MIB), ("activations", 20 * MIB),
                             ("other", 5 * MIB), ("allocator", 8 * MIB)]
    assert sum(b for _, b in data.segments) == data.needed_bytes == 48 * MIB
    assert data.batch is None and data.seq is None and "2026-01-01 · git abc" in data.subtitle


def test_the_verdicts_point_joins_the_searchs_points():
    sol = MaxSolution("batch_size", 9, False, 4096, "affine in batch", 9, {1: 30 * MIB, 4: 60 * MIB,
                                                                            9: 500 * MIB, 10: 520 * MIB}, 512 * MIB)
    data = picture_data(_result(max_batch=sol), date="d", commit="c")
    assert data.batch.points == {1: 30 * MIB, 2: 48 * MIB, 4: 60 * MIB, 9: 500 * MIB, 10: 520 * MIB}
    assert data.batch.best == 9 and data.batch.fixed == "seq 128"


def test_a_picture_without_searches_is_drawn_and_may_be_redrawn(tmp_path):
    out = tmp_path / "p.png"
    plot_fit(picture_data(_result(fits=False), date="d", commit="c"), out)
    assert written_by_fit(out) and _png_shape(out)[1] > 900
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # not mkstemp's 0600
    assert picture_problem(str(out)) is None  # fit wrote it: fit may overwrite it
    other = tmp_path / "someone.png"
    other.write_bytes(b"\x89PNG not ours")
    assert "was not written by fit --picture" in picture_problem(str(other))
    assert picture_problem(str(other), force=True) is None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _bad_paths(tmp_path: Path) -> dict[str, tuple[str, str]]:
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "pics.png").mkdir()
    (tmp_path / "theirs.png").write_bytes(b"\x89PNG someone else's picture")
    return {"directory": (str(tmp_path), "is a directory"),
            "directory.png": (str(tmp_path / "pics.png"), "is a directory"),
            "suffix": (str(tmp_path / "fit.jpg"), "does not end in .png"),
            "missing folder": (str(tmp_path / "nope" / "fit.png"), "does not exist"),
            "folder is a file": (str(tmp_path / "a_file" / "fit.png"), "is not a directory"),
            "not ours": (str(tmp_path / "theirs.png"), "--force")}


BAD = ["directory", "directory.png", "suffix", "missing folder", "folder is a file", "not ours"]


@pytest.mark.parametrize("case", BAD)
def test_a_bad_picture_path_is_one_line_exit_2_before_any_simulation(case, tmp_path, monkeypatch, capsys):
    import profiler.predict.fit as fit_mod

    def no(*_a, **_k):
        raise AssertionError("simulated before the path was checked")

    monkeypatch.setattr(fit_mod, "predict_fit", no)
    monkeypatch.setattr("profiler.simulate.backend.simulate", no)
    path, words = _bad_paths(tmp_path)[case]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    rc = main(["fit", "tiny-llama", "--gpu-memory", BUDGET, "--picture", path])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("error: --picture: ") and words in err, err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before  # nothing written


def test_an_unwritable_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):  # root writes anyway: a read-only mount instead, where there is one
            ro = Path("/sys")
            if not ro.is_dir() or os.access(ro, os.W_OK) and picture_problem(str(ro / "fit.png")) is None:
                pytest.skip("no unwritable folder on this machine")
        problem = picture_problem(str(ro / "fit.png"))
        assert problem is not None and "cannot be written" in problem
        assert not (ro / "fit.png").exists()
    finally:
        (tmp_path / "ro").chmod(0o755)
