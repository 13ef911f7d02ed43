"""The memory timeline picture of one result line (run, simulate or track): one stacked bar per phase.

Each bar is a phase of a step, stacked by category at that phase's peak (weights, gradients, optimizer,
activations, temporaries; on CUDA also untracked, allocator slack and context), with the allocated bytes
at the phase end as a line, steps separated, and the highest peak labelled with its phase and the module
running then. Without a breakdown (light mode) the bars are the peak itself. Run:
`python -m profiler timeline RESULTS.jsonl --out timeline.png`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from profiler.categories import Category, pick_unit  # noqa: E402
from profiler.png_owner import written_by  # noqa: E402

COLORS = {
    Category.WEIGHTS: "#4c72b0", Category.GRADIENTS: "#dd8452", Category.OPTIMIZER: "#55a868",
    Category.ACTIVATIONS: "#c44e52", Category.TEMPORARIES: "#8172b3", Category.UNTRACKED: "#937860",
    Category.ALLOCATOR: "#bbbbbb", Category.CONTEXT: "#666666",
}
_SHORT = {"forward": "fwd", "backward": "bwd", "optimizer_step": "optim", "generate": "gen", "load": "load"}
_REGIME = {"full": "full fine-tuning", "freeze": "partly frozen", "lora": "LoRA", "inference": "inference"}


def describe(record: dict) -> tuple[str, str]:
    """(what ran, how it was measured) in words, for the title."""
    cfg = record.get("config") or {}
    model = cfg.get("model") or {}
    rg = cfg.get("regime") or {}
    regime = f"QLoRA {rg.get('bits', 4)}-bit" if rg.get("kind") == "qlora" else _REGIME.get(rg.get("kind"), "?")
    train = cfg.get("train") or {}
    opt = (cfg.get("optimizer") or {}).get("name")
    name = model.get("arch") or model.get("path") or model.get("hub") or (record.get("model") or {}).get("name")
    if name and (name.endswith(".json") or Path(name).is_dir()):  # a local path: its last meaningful part
        p = Path(name)
        name = p.parent.name if p.name == "config.json" else (p.stem if p.suffix == ".json" else p.name)
    what = " · ".join(str(x) for x in (
        name,
        regime, opt if rg.get("kind") != "inference" else None,
        f"batch {train.get('batch_size')} × seq {train.get('seq_len')}") if x)
    source = record.get("source") or ("simulate" if record.get("backend") == "fake" else "run")
    device = (record.get("env") or {}).get("device_name", "?")
    if source == "simulate":
        how = f"simulated for {record.get('simulated_device') or cfg.get('device')} on fake tensors"
    else:
        probe = "CUDA allocator + tensor tracker" if record.get("backend") == "cuda" else "tensor tracker"
        if record.get("memory_source") == "rss":
            probe = "process RSS at phase ends"
        loop = "your training loop (track)" if source == "track" else "the profiler's own loop (run)"
        how = f"measured on {device} by the {probe}, {loop}"
    return what, how


SOFTWARE = "llm-memprof timeline"  # the PNG's Software text chunk: `timeline` overwrites only such files


def written_by_us(path: str | Path) -> bool:
    """True for a PNG `timeline` wrote."""
    return written_by(path, SOFTWARE)


def plot_timeline(record: dict, out: str | Path) -> Path:
    """Write the timeline PNG of one result line; returns its path."""
    phases = [p for p in record.get("phases") or [] if p.get("peak_allocated_bytes") is not None]
    if not phases:
        raise ValueError("record has no phases to draw (status error before the first phase?)")
    cats = [c for c in Category if any((p.get("breakdown") or {}).get(c.value) for p in phases)]
    top = max(max(p["peak_allocated_bytes"], sum(v for v in (p.get("breakdown") or {}).values() if v > 0))
              for p in phases)
    unit, div = pick_unit(top)
    xs = list(range(len(phases)))
    fig, ax = plt.subplots(figsize=(max(7.0, 0.55 * len(phases) + 2.5), 4.8))
    bottoms = [0.0] * len(phases)
    if cats:
        for c in cats:
            vals = [max((p.get("breakdown") or {}).get(c.value, 0), 0) / div for p in phases]
            ax.bar(xs, vals, width=0.9, bottom=bottoms, color=COLORS[c], label=c.value, edgecolor="white",
                   linewidth=0.3)
            bottoms = [b + v for b, v in zip(bottoms, vals)]
    else:
        rss = record.get("memory_source") == "rss"
        ax.bar(xs, [p["peak_allocated_bytes"] / div for p in phases], width=0.9, color="#4c72b0",
               label="process RSS, higher of phase start and end" if rss else "peak allocated (no categories)")
    ax.plot(xs, [p["allocated_bytes"] / div for p in phases], "k.--", lw=1, ms=6,
            label="RSS at phase end" if record.get("memory_source") == "rss" else "allocated at phase end")
    if any(p.get("peak_reserved_bytes") for p in phases):
        ax.plot(xs, [(p.get("peak_reserved_bytes") or 0) / div for p in phases], "_", color="k", ms=18, mew=2,
                label="peak reserved")
    steps = [p.get("step") for p in phases]
    for i in range(1, len(phases)):
        if steps[i] != steps[i - 1]:
            ax.axvline(i - 0.5, color="0.3", lw=1)
    for i, p in enumerate(phases):
        if i == 0 or steps[i] != steps[i - 1]:
            label = "load" if p.get("step") is None else f"step {p['step']}" + (" (warm-up)" if p.get("warmup") else "")
            ax.text(i - 0.45, 1.0, label, transform=ax.get_xaxis_transform(), fontsize=8, va="bottom")
    ax.set_xticks(xs, [_SHORT.get(p["phase"], p["phase"]) for p in phases], fontsize=8)
    i_peak = max(xs, key=lambda i: phases[i]["peak_allocated_bytes"])
    pk = phases[i_peak]
    y = max(pk["peak_allocated_bytes"] / div, bottoms[i_peak])
    where = f" in {pk['module_at_peak']}" if pk.get("module_at_peak") else ""
    ax.annotate(f"peak {pk['peak_allocated_bytes'] / div:,.2f} {unit}\n{pk['phase']}, step {pk['step']}{where}",
                xy=(i_peak, y), xytext=(0, 18), textcoords="offset points", ha="center", fontsize=8,
                arrowprops={"arrowstyle": "->", "lw": 0.8},
                bbox={"boxstyle": "round", "fc": "white", "ec": "0.6"})
    ax.set_ylim(0, y * 1.35)
    ax.set_ylabel(f"memory ({unit}, 2^{div.bit_length() - 1} bytes)")
    what, how = describe(record)
    ax.set_title(f"{what}\n{how}", fontsize=9, loc="left", pad=16)
    ax.set_xlim(-0.6, len(phases) - 0.4)
    ax.legend(fontsize=7, loc="upper left", ncol=3, framealpha=0.9)
    ax.grid(axis="y", alpha=0.3)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = Path(out).suffix.lower() == ".png"  # only PNG has a Software chunk (SVG/PDF writers refuse that key)
    fig.savefig(out, dpi=110, bbox_inches="tight", metadata={"Software": SOFTWARE} if png else None)  # marks it ours
    plt.close(fig)
    return out
