"""The `fit --picture FILE.png` picture: the verdict's breakdown as one stacked bar against the GPU's usable memory,
and the predicted memory against batch and against seq from the points fit's max batch / max seq search simulated.

Two steps, so the numbers are testable without pixels: `picture_data(FitResult)` -> FitPicture (bytes; the bar's
segments add up to the predicted peak fit compares with the usable memory), then `plot_fit(FitPicture, path)`
(matplotlib, Agg). `picture_problem(path, force)` says why a path cannot take the picture, so `fit` refuses it
before it simulates anything; the file is written to a temporary name beside it and renamed, never half-written.
Run: `python -m profiler fit llama-3-8b --regime qlora4 --seq 2048 --gpu rtx4090 --picture fit.png`.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from profiler.png_owner import written_by
from profiler.predict.fit import FitResult
from profiler.predict.search import MaxSolution

SOFTWARE = "llm-memprof fit --picture"  # the PNG's Software text chunk: fit overwrites only files that carry it
COLORS = {"weights": "#4c72b0", "gradients": "#dd8452", "optimizer": "#55a868", "activations": "#c44e52",
          "temporaries": "#8172b3", "comm_buffers": "#da8bc3", "untracked": "#937860", "other": "#937860",
          "allocator": "#bbbbbb", "context": "#666666"}
LABELS = {"optimizer": "optimizer state", "comm_buffers": "comm buffers"}


@dataclass
class Curve:
    """Predicted bytes (simulated peak + allocator allowance) at the points one search simulated."""

    field: str  # "batch" or "seq"
    points: dict[int, int]  # value -> predicted bytes, every simulation the search ran, plus the verdict's
    limit: int  # the usable bytes each point was compared with
    best: int  # the largest value that fits (0: not even 1)
    capped: bool  # the search stopped at its cap (the model's position limit, or the batch cap), which fits
    at: int  # the verdict's value (the batch or seq the bar is for)
    fixed: str  # what was held: "seq 2048" or "batch 1"


@dataclass
class FitPicture:
    """What the picture draws, in bytes."""

    title: str
    subtitle: str
    segments: list[tuple[str, int]]  # (category, bytes) left to right; they add up to needed_bytes
    needed_bytes: int
    usable_bytes: int
    total_bytes: int
    unit: tuple[str, int]
    fits: bool
    batch: Curve | None = None
    seq: Curve | None = None
    notes: list[str] = field(default_factory=list)


def _curve(sol: MaxSolution | None, name: str, at: int, needed: int, fixed: str) -> Curve | None:
    if sol is None:
        return None
    points = {int(k): int(v) for k, v in sol.needed.items()}
    points.setdefault(at, needed)  # the verdict's own simulation, at the same held value
    return Curve(name, dict(sorted(points.items())), sol.limit, sol.value, sol.capped, at, fixed)


def picture_data(res: FitResult, date: str | None = None, commit: str | None = None) -> FitPicture:
    """The picture's numbers from fit's answer: the categories at the simulated peak (those fit's table prints),
    the allocator reserve on top (fit's allowance), and the two searches' simulated points. `date` / `commit`
    default to today (UTC) and the checkout's git revision."""
    if commit is None:
        from profiler.measure.env import git_revision

        commit = git_revision() or "unknown"
    date = date or datetime.datetime.now(datetime.UTC).date().isoformat()
    segments = [(k, int(v)) for k, v in res.breakdown.items() if v > 0]
    other = res.simulated_peak_bytes - sum(v for _, v in segments)
    if other > 0:  # a peak the categories do not cover in full: named, not dropped
        segments.append(("other", other))
    segments.append(("allocator", res.allocator_bytes))
    ck = ", checkpointing" if res.gradient_checkpointing else ""
    title = (f"{res.model} · {res.regime} · {res.optimizer} · batch {res.batch_size} × seq {res.seq_len}{ck} · "
             f"recipe {res.recipe} · on {res.gpu}")
    subtitle = (f"simulated (fake-tensor training step + {res.allowance} allocator allowance), not measured · "
                f"{date} · git {commit[:12]}"
                + (" (uncommitted changes)" if commit.endswith("-dirty") else ""))
    notes = [] if other >= 0 else [f"the categories add up to {-other} bytes more than the simulated peak"]
    return FitPicture(
        title=title, subtitle=subtitle, segments=segments, needed_bytes=sum(v for _, v in segments),
        usable_bytes=res.usable_bytes, total_bytes=res.total_bytes, unit=res.unit(), fits=res.fits,
        batch=_curve(res.max_batch, "batch", res.batch_size, res.needed_bytes, f"seq {res.seq_len}"),
        seq=_curve(res.max_seq, "seq", res.seq_len, res.needed_bytes, f"batch {res.batch_size}"), notes=notes)


def written_by_fit(path: str | Path) -> bool:
    """True for a PNG `fit --picture` wrote."""
    return written_by(path, SOFTWARE)


def picture_problem(path: str, force: bool = False) -> str | None:
    """Why `path` cannot take the picture (None where it can): not a .png name, a directory, a folder that does
    not exist or cannot be written, or an existing file fit did not write (unless `force`). Checked before any
    simulation; the check writes nothing that stays."""
    p = Path(path)
    if p.is_dir():
        return f"{path!r} is a directory; allowed: a PNG file name"
    if p.suffix.lower() != ".png":
        return f"{path!r} does not end in .png; allowed: a PNG file name"
    parent = p.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        return f"{path!r}: folder {str(parent)!r} {what}; allowed: a PNG file name in an existing folder"
    if p.exists() and not p.is_file():
        return f"{path!r} exists and is not a regular file; allowed: a new path or a PNG file"
    if p.exists() and not force and not written_by_fit(p):
        return f"{path!r} exists and was not written by fit --picture; allowed: a new path, or --force to overwrite it"
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".fit-picture-", suffix=".png"):
            pass
    except OSError as exc:
        return f"{path!r}: folder {str(parent)!r} cannot be written ({exc.strerror})"
    return None


def _bar(ax, pic: FitPicture) -> None:
    unit, div = pic.unit
    left = 0.0
    span = max(pic.total_bytes, pic.needed_bytes) / div
    for name, nbytes in pic.segments:
        w = nbytes / div
        if w <= 0:
            continue
        ax.barh(0, w, left=left, height=0.6, color=COLORS.get(name, "#999999"), edgecolor="white", linewidth=0.5,
                label=f"{LABELS.get(name, name)} {w:,.2f}")
        if w > 0.07 * span:
            ax.text(left + w / 2, 0, f"{LABELS.get(name, name)}\n{w:,.1f}", ha="center", va="center", fontsize=8,
                    color="white" if name not in ("allocator",) else "black")
        left += w
    usable, total = pic.usable_bytes / div, pic.total_bytes / div
    ax.axvspan(usable, total, color=COLORS["context"], alpha=0.25, hatch="//", lw=0,
               label=f"CUDA context {total - usable:,.2f} (not usable)")
    ax.axvline(usable, color="k", lw=1.5)
    right = usable < 0.7 * span  # the label beside the line, on the side with room
    ax.text(usable, 0.95, f" usable {usable:,.1f} {unit} ", ha="left" if right else "right", va="top", fontsize=8,
            transform=ax.get_xaxis_transform(), bbox={"fc": "white", "ec": "none", "pad": 1})
    ax.set_title(f"predicted peak {left:,.1f} {unit} of {usable:,.1f} {unit} usable: "
                 f"{'fits' if pic.fits else 'does not fit'}", loc="left", fontsize=9, fontweight="bold",
                 color="#1a7f37" if pic.fits else "#b00020")
    ax.set_xlim(0, span * 1.02)
    ax.set_ylim(-0.45, 0.6)
    ax.set_yticks([])
    ax.set_xlabel(f"memory on the GPU ({unit}, 2^{div.bit_length() - 1} bytes); total {total:,.1f} {unit}",
                  fontsize=8)
    handles, labels = ax.get_legend_handles_labels()
    order = [i for i, lab in enumerate(labels) if not lab.startswith("CUDA")] + \
        [i for i, lab in enumerate(labels) if lab.startswith("CUDA")]
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=7, loc="upper center",
              bbox_to_anchor=(0.5, -0.32), ncol=4, frameon=False, title=f"at the simulated peak ({unit})",
              title_fontsize=7)


def _curve_panel(ax, c: Curve | None, unit: tuple[str, int], why_missing: str) -> None:
    from matplotlib.ticker import MaxNLocator

    name, div = unit
    if c is None:
        ax.text(0.5, 0.5, why_missing, ha="center", va="center", fontsize=8, transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    xs = list(c.points)
    ys = [c.points[x] / div for x in xs]
    ok = [y * div <= c.limit for y in ys]
    ax.plot(xs, ys, "-", color="0.6", lw=1, zorder=1)
    ax.scatter([x for x, k in zip(xs, ok) if k], [y for y, k in zip(ys, ok) if k], s=18, color="#1a7f37", zorder=2,
               label="simulated point (fits)")
    ax.scatter([x for x, k in zip(xs, ok) if not k], [y for y, k in zip(ys, ok) if not k], s=18, color="#b00020",
               marker="x", zorder=2, label="simulated point (over)")
    ax.axhline(c.limit / div, color="k", lw=1.2, label=f"usable {c.limit / div:,.1f} {name}")
    if c.best > 0:
        ax.axvline(c.best, color="#1a7f37", ls=":", lw=1.2)
        word = f"max {c.field} {c.best:,}" + (" = the search's cap" if c.capped else "")
        ax.annotate(word, xy=(c.best, c.limit / div), xytext=(-4, -14), textcoords="offset points", ha="right",
                    fontsize=8, color="#1a7f37")
    if c.at in c.points:
        ax.scatter([c.at], [c.points[c.at] / div], s=60, facecolors="none", edgecolors="k", zorder=3,
                   label=f"this config ({c.field} {c.at:,})")
    ax.set_xlabel(f"{c.field} (at {c.fixed})", fontsize=8)
    ax.set_ylabel(f"predicted peak ({name})", fontsize=8)
    ax.set_ylim(0, max(max(ys), c.limit / div) * 1.12)
    ax.set_xlim(0, max(max(xs), c.best) * 1.05)
    ax.tick_params(labelsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, loc="best", framealpha=0.9)
    ax.set_title(f"peak vs {c.field}: {len(c.points)} simulated points (fit's search)", fontsize=8, loc="left")


def plot_fit(pic: FitPicture, out: str | Path) -> Path:
    """Write the picture (PNG, via a temporary file renamed over `out`); returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(10, 6.6))
    grid = fig.add_gridspec(2, 2, height_ratios=[1.0, 1.35], hspace=0.85, wspace=0.25)
    _bar(fig.add_subplot(grid[0, :]), pic)
    no_search = "not searched (--no-search)"
    _curve_panel(fig.add_subplot(grid[1, 0]), pic.batch, pic.unit, no_search)
    _curve_panel(fig.add_subplot(grid[1, 1]), pic.seq, pic.unit, no_search)
    fig.suptitle(f"{pic.title}\n{pic.subtitle}", fontsize=8.5, x=0.01, ha="left")
    out = Path(out)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".fit-picture-", suffix=".png")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would outlive the rename: the mode a plain open() gives
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=110, bbox_inches="tight", metadata={"Software": SOFTWARE})
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return out
