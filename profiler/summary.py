"""The table a person reads after a run (rich); the JSON line is what programs read."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from profiler.categories import TRACKED, Category, fmt_auto, fmt_in, pick_unit


def print_summary(record: dict, output: str | None, console: Console | None = None) -> None:
    if console is None:
        console = Console()
        if not console.is_terminal:  # piped to a file or CI log: don't wrap the table at 80 columns
            console = Console(width=140)
    cfg = record["config"]
    rg = cfg["regime"]
    regime = f"qlora{rg['bits']}" if rg["kind"] == "qlora" else rg["kind"]
    optimizer = "" if rg["kind"] == "inference" else f"{cfg['optimizer']['name']} · "
    title = (f"{cfg['model'].get('arch') or cfg['model'].get('path') or cfg['model'].get('hub')} · {regime} · "
             f"{optimizer}batch {cfg['train']['batch_size']} × seq {cfg['train']['seq_len']} · "
             + (f"simulated {record.get('simulated_device') or cfg['device']} on fake tensors"
                if record["backend"] == "fake" else f"{record['env']['device_name']} ({record['backend']})"))
    phases = record.get("phases", [])
    steps = sorted({p["step"] for p in phases if p["step"] is not None})
    shown = {None} | ({steps[0], steps[-1]} if steps else set())
    has_reserved = any(p.get("reserved_bytes") is not None for p in phases)
    has_predicted = any(p.get("predicted_reserved_bytes") is not None for p in phases)
    has_breakdown = any(p.get("breakdown") for p in phases)
    unit, div = pick_unit(max([p["peak_allocated_bytes"] for p in phases] + [p.get("peak_reserved_bytes") or 0
                                                                          for p in phases] + [1]))
    t = Table(title=title, title_justify="left", caption=f"bytes in {unit} (2^{div.bit_length() - 1})"
              + ("; categories at the phase peak" if has_breakdown else ""), caption_justify="left")
    t.add_column("step")
    t.add_column("phase")
    t.add_column("peak", justify="right")
    t.add_column("end", justify="right")
    if has_reserved:
        t.add_column("reserved", justify="right")
    if has_predicted:
        t.add_column("reserved (replay)", justify="right")
    cats = list(TRACKED) + ([Category.COMM_BUFFERS] if any(
        (p.get("breakdown") or {}).get(Category.COMM_BUFFERS.value) for p in phases) else [])
    if has_breakdown:
        for c in cats:
            t.add_column({"gradients": "grads", "optimizer": "optim", "activations": "activ",
                          "temporaries": "temp", "comm_buffers": "comm"}.get(c.value, c.value),
                         justify="right")
    t.add_column("s", justify="right")
    for p in phases:
        if p["step"] not in shown:
            continue
        label = "-" if p["step"] is None else ("first" if p["step"] == steps[0] else "steady")
        phase = {"optimizer_step": "optim", "forward": "fwd", "backward": "bwd", "generate": "gen"}.get(
            p["phase"], p["phase"])
        row = [label, phase, fmt_in(p["peak_allocated_bytes"], div), fmt_in(p["allocated_bytes"], div)]
        if has_reserved:
            row.append(fmt_in(p.get("peak_reserved_bytes"), div))
        if has_predicted:
            row.append(fmt_in(p.get("predicted_reserved_bytes"), div))
        if has_breakdown:
            bd = p.get("breakdown") or {}
            row += [fmt_in(bd.get(c.value), div) for c in cats]
        row.append(f"{p['seconds']:.2f}")
        t.add_row(*row)
    console.print(t)
    pk = record.get("peaks") or {}
    m = record.get("model") or {}
    status = record["status"]
    style = {"ok": "green", "oom": "yellow"}.get(status, "red")
    parts = [f"status [{style}]{status}[/{style}]"]
    if status != "ok":
        parts.append(f"in {record.get('oom_phase') or '?'} (step {record.get('oom_step')})" if status == "oom"
                     else "")
    parts.append(f"peak allocated {fmt_auto(pk.get('peak_allocated_bytes'))}")
    if pk.get("peak_reserved_bytes") is not None:
        parts.append(f"peak reserved {fmt_auto(pk['peak_reserved_bytes'])}")
    if pk.get("nvml_peak_bytes") is not None:
        parts.append(f"NVML peak {fmt_auto(pk['nvml_peak_bytes'])}")
    console.print(" · ".join(p for p in parts if p))
    if record.get("predicted_reserved_bytes") is not None:
        rp = record.get("allocator_replay") or {}
        what = "simulated" if record["backend"] == "fake" else "tracked"
        console.print(f"predicted: allocated {fmt_auto(pk.get('peak_allocated_bytes'))} ({what} peak) · reserved "
                      f"{fmt_auto(record['predicted_reserved_bytes'])} (caching-allocator replay, "
                      f"{escape(str(rp.get('conf', '')))}) · nvidia-smi {fmt_auto(record.get('predicted_nvml_bytes'))} "
                      f"(reserved + CUDA context {fmt_auto(rp.get('context_bytes'))}, "
                      f"{'an assumption' if 'assumption' in str(rp.get('context')) else 'published'})")
    if m:
        console.print(f"params {m['total_params']:,} (trainable {m['trainable_params']:,}, quantized "
                      f"{m['quantized_params']:,}) · weights {fmt_auto(m['weight_bytes'])}")
    ranks = record.get("ranks")
    if ranks:
        pc = (record.get("config") or {}).get("parallel") or {}
        who = ("rank 0 of a symmetric job (simulated)" if record.get("backend") == "fake" else
               "rank 0; per-rank peaks " + ", ".join(fmt_auto(r["peak_allocated_bytes"]) for r in ranks))
        console.print(f"{pc.get('strategy')} x {pc.get('world_size')} ranks · table: {who} · max over ranks "
                      f"{fmt_auto(record.get('max_rank_peak_allocated_bytes'))}")
    tm = record.get("timings") or {}
    if tm.get("median_step_s") and tm.get("tokens_per_s"):
        console.print(f"load {tm['load_s']:.1f} s · median step {tm['median_step_s']:.3f} s · "
                      f"{tm['tokens_per_s']:.0f} tokens/s")
    for note in record.get("warnings") or []:
        console.print(f"[yellow]warning: {escape(note)}[/yellow]")
    if record.get("error"):
        console.print(f"[{style}]{record['error']}[/{style}]")
    if output:
        console.print(f"result line appended to {output}")
