"""profiler/png_owner.py: a picture writer recognises only its own PNGs (never a user's file, nor another command's)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from profiler.png_owner import written_by  # noqa: E402


def _png(path, software=None):
    fig, ax = plt.subplots(figsize=(1, 1))
    fig.savefig(path, format="png", metadata={"Software": software} if software else None)
    plt.close(fig)
    return path


def test_mark_is_per_command(tmp_path):
    fit = _png(tmp_path / "fit.png", "llm-memprof fit --picture")
    assert written_by(fit, "llm-memprof fit --picture")
    assert not written_by(fit, "llm-memprof timeline")


def test_foreign_and_broken_files(tmp_path):
    assert not written_by(_png(tmp_path / "user.png"), "llm-memprof timeline")  # matplotlib's own mark only
    text = tmp_path / "notes.png"
    text.write_text("llm-memprof timeline")  # the mark, but not a PNG
    assert not written_by(text, "llm-memprof timeline")
    assert not written_by(tmp_path / "missing.png", "llm-memprof timeline")
    assert not written_by(tmp_path, "llm-memprof timeline")  # a directory
