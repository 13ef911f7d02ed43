"""Write docs/consistency-full.md: the summary of a full-grid sweep of scripts/grid_consistency.py, from its rows.

The sweep (`grid_consistency.py --full --order 0 --shard I/N --json results/consistency/full_standins.IofN.jsonl`)
appends one row per finished point; this page counts what finished, against every valid point of the grid, and
says what remains and how to resume. With `--recompute-components` the components figure of each row is
recomputed on the checked-out code (simulate's figure is the sweep's: it does not change unless simulate does),
so a fix to the formulas shows without simulating again.

    python scripts/grid_full_page.py results/consistency/full_standins.*of2.jsonl --recompute-components \\
        --out docs/consistency-full.md
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import warnings
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("grid_consistency", HERE / "grid_consistency.py")
gc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gc)

FACTORS = ("family", "regime", "parallel", "seq", "batch", "ckpt", "autocast")
# What the page says besides its counts: how the sweep was made feasible and what it found and fixed. Figures
# measured in this repository (commands in each line); the fixes' before/after are rows of the sweep itself.
PROSE = """
## Making the sweep feasible

Where a point's time went (cProfile of `compare()` on 9 random grid points in one warm process, load ~1):
simulate's train steps 69 % (fake-tensor dispatch of forward, backward and the optimizer step), the load phase
16 % (model build 3 %, FSDP2/DDP wrap 9 %, peft 3 %), the `gc.collect()` that ends every run (harness._release)
9 %, the registered estimators 6 %. Imports (3.3 s) and the libraries' first use (TRL's import inside the
first simulation, 4.5 s) are paid once per process; the old script already ran its points in one process.
What `grid_consistency.py --full` now does (`sweep()`; tests/formulas/test_grid.py checks that its rows equal
the per-point `compare()`'s, and that a killed sweep resumes without rewriting a line):

- after the first point `gc.freeze()` moves the imported libraries' ~535,000 objects out of the collector's
  reach: each run's closing `gc.collect()` went from 0.28 s to 0.00001 s of CPU (measured in one process);
- one simulation per distinct RunConfig (seq is capped at the model's positions: GPT-2 1024, Pythia 2048);
- the points run in one fixed shuffled order (`--order 0`), `--shard I/N` splits them over processes, every row
  is appended to `--json` as it finishes (a rerun skips finished ids; a line cut by a kill is left and its point
  reruns), and tqdm shows done/total, rate, ETA and the verdicts so far.
- Models are not reused between points: the regime (peft), the parallel wrap (fully_shard) and the optimizer
  change a model in place and its load is counted by the run's tracker, so reuse would change what is measured.

Per-point cost, before (`compare()` in a loop) and after (`sweep()`), the same 16 grid points run side by side
in two processes on the shared machine (load 8-13 from other engineers' tests): **3.22 → 2.84 s of CPU per
point** (-12 %), 28.1 → 24.1 s of wall time. The old docs' ~17 s/point (36 min for 129 points) was wall time on
the loaded machine; idle, a stand-in point costs ~2-6 s of CPU. At ~2.8 s of CPU the 10,464 points need ~8 CPU
hours: more than this session's hour on two shared cores.

## Components gaps the sweep found, closed in profiler/formulas

Each with the library source it follows and a test in tests/formulas/test_components_gaps.py (components within
1 % of simulate on the point, 2.5 % for Falcon at seq 8192); before → after on sweep rows (same simulate figure):

- **LoRA inputs under autocast** (activations.py `lora_input`/`lora_bytes`): peft lora/layer.py `Linear.forward`
  casts the input to the fp32 adapter (`_cast_input_dtype`), then autocast casts it back to bf16 for lora_A, once
  per adapter (ATen autocast caches casts of grad-requiring leaves only); peft lora/bnb.py skips the first cast
  under autocast (`requires_conversion = not torch.is_autocast_enabled()`). components saved one fp32 input per
  group: mistral-7b/lora/none/s2048/b4/ac-bf16 +14.7 → -0.1 %, smollm2-1.7b/lora/ddp8/s512/b4/ac-bf16
  +7.3 → -0.1 %, pythia-6.9b/lora/none/s8192/b4/ac-bf16 (CI, was listed) → -2.9 %.
- **LoRA under FSDP2 mixed precision**: the adapters the forward sees are FSDP2's param_dtype copies, so the
  bf16 input is not copied: mistral-7b/lora/fsdp2-8-mp/s8192/b1/ac-bf16 +14.1 → -0.03 %.
- **The frozen fp32 head's autocast copy** (components.py `autocast_head_copy`; the old "autocast-sdpa" cause,
  which blamed simulate's kernel choice): prepare_kbit upcasts the head to fp32; under bf16 autocast F.linear
  casts it afresh each forward (frozen: not cached) and saves the V x h bf16 copy for the input's gradient:
  llama-3-8b/qlora4/none/s2048/b1/ac-bf16 -10.5 → -0.04 % (1 GiB), qwen2.5-7b/qlora4/none/s512/b1/ac-bf16
  -14.3 → -0.1 %, llama-3-8b/qlora4/ddp2/s8192/b4/ac-bf16 (CI, was listed) → -0.01 %.
- **8-bit QLoRA's kept input** (activations.py `lora_bytes`): bitsandbytes `MatMul8bitLt.forward` keeps its
  input in `ctx.tensors` whenever an input requires grad; counted where the LoRA branch saves another tensor
  (its dropout copy, or an autocast copy): qwen2.5-7b/qlora8/ddp2/s512/b1/ac-bf16 -15.0 → -0.1 %,
  qwen2.5-7b/qlora8/ddp2/s8192/b4/ac-none -4.4 → -0.6 %, pythia-6.9b/qlora8/ddp8/s2048/b4/ac-bf16 -6.8 → 0.0 %.
- **FSDP2 root post-backward** (sharding.py `_fsdp2_root_reduce`; the old "fsdp2-mixed-precision" cause):
  `FSDPParamGroup.post_backward` reshards the root, then `foreach_reduce` allocates the reduce-scatter input in
  reduce_dtype and copies the bf16 unsharded gradients into it: llama-3-8b/full/fsdp2-8-mp/s512/b1 -16.5 → 0.00 %,
  qwen3-8b and qwen2.5-7b (same point) -18.9 / -16.1 → 0.00 %.
- **DDP dropped the last layer's backward** (sharding.py `PHASES`; the old "falcon-math" cause in training):
  with SDPA's math kernel (Falcon-7B's single k/v head) the s x s fp32 gradients of the last layer are the peak;
  one process modelled that moment, DDP/ZeRO skipped it: falcon-7b/full/ddp2/s8192/b1/ckpt -32.0 → -1.8 %,
  falcon-7b/freeze/ddp2/s8192/b4/ckpt/ac-bf16 -33.7 → -0.4 %, falcon-7b/lora/ddp8/s2048 (CI, was listed) → +0.2 %.
- **Gemma-2's soft-capped logits under autocast** (components.py `activations`): the head's output is bf16
  under autocast (F.linear is lower_precision_fp), so the saved tanh of `logits / cap` is bf16, not the QLoRA
  model's fp32: gemma-2-9b/qlora4/none/s2048/b4/ac-bf16 +8.6 → +0.8 %, gemma-2-9b/qlora8/none/s512/b1/ac-bf16
  -18.9 → +0.1 % (with the head copy above).
- **Falcon's math kernel in inference** (components.py `math_attention_inference`): torch
  `_scaled_dot_product_attention_math` (its aten ops traced on CPU under no_grad) holds two fp32 s x s tensors
  at the mask add and the softmax: falcon-7b/inference/none/s512/b1 -7.8 → -0.3 %.
- **FSDP2's backward moment** (sharding.py `_fsdp2_layer_reduce`, found in the second session of the sweep from
  simulate's live tensors at the peak): `FSDPParamGroup.pre_backward` unshards the running layer and
  `_backward_prefetch` all-gathers the previous one; `foreach_reduce` allocates the reduce-scatter input for the
  layer's *gradients* only and keeps it until the next layer's reduce. So LoRA holds 2 layer-sized buffers (its
  reduce-scatter input is adapter-sized), full fine-tuning 3; components assumed 4 for every regime, and counted a
  frozen head's gradient under freeze. With MoE LoRA under FSDP2 mixed precision, W + B A is formed in param_dtype
  (moe.py). On the 692 FSDP2 points swept by then: 183 → 78 beyond 5 %; e.g.
  mixtral-8x7b/lora/fsdp2-8-mp/s512/b4/ckpt/ac-none/balanced +60.6 → -8.0 %, falcon-7b/freeze/fsdp2-8/s512/b1
  +45.8 → -1.2 %. Five points got worse: the old over-count had hidden an under-count of the LoRA +
  checkpointing recompute of the last layer (mistral-7b/lora/fsdp2-8/s2048/b4/ckpt/ac-none -0.4 → -16.0 %; the
  same gap shows without FSDP2: mistral-7b/lora/none/s2048/b4/ckpt/ac-none), not analysed further yet.
- **LoRA + checkpointing on small-vocabulary models (Mistral, 32k vocabulary), still open.** Simulate's peak is in the
  last layer's backward, at its recomputed `down_proj.lora_A` (mistral-7b/lora/none/s2048/b4/ckpt/ac-none: simulate
  5.11 GiB, components 4.52, -11.6 %: about 1 GiB more temporaries). Llama-3-8B has the same layer shapes and
  agrees: the loss gradients of its 128k vocabulary are its peak (components' backward start matches simulate's
  peak to 0.1 %), which would hide the same gap. components counts the LoRA input
  cast (`lora_forward_transient`) in that recompute only under the fused losses. Counting it under the full loss
  too (tried on 2026-12-07 over every swept row, components recomputed) fixed 10 Mistral points and broke 8:
  8-bit QLoRA with autocast, and Mixtral LoRA at seq 8192 with autocast. So that term is not the whole mechanism,
  and it was not kept.
"""
RESUME = ("nice -n 19 python scripts/grid_consistency.py --full --order 0 --shard {i}/{n} "
          "--json results/consistency/full_standins.{i}of{n}.jsonl")


def recompute(rows: list[dict]) -> None:
    """Components' allocated part (and the difference) of each simulated row, on the checked-out code."""
    from profiler.formulas import estimate

    for r in rows:
        if r.get("simulate") is None or not r.get("components"):
            continue
        est = estimate("components", gc.config_of({k: r[k] for k in gc.GRID}))
        r["components_sweep"] = r["components"]
        r["components"] = est.total - est.get("overhead")
        r["pct"] = round(100 * (r["components"] - r["simulate"]) / r["simulate"], 2)


def kind(v: str) -> str:
    """The verdict without its detail: agrees / known / DIFFERS / estimate only / simulate fails / RAISES."""
    if v.startswith("known (simulate fails)"):
        return "simulate fails (known)"
    return v.split(":")[0]


def table(df, by: str) -> str:
    """Counts of each verdict per value of one factor, with the median and worst |difference|."""
    import pandas as pd

    t = pd.crosstab(df[by], df["verdict"])
    sim = df[df["pct"].notna()]
    t["median abs diff %"] = sim.groupby(by)["pct"].apply(lambda s: f"{s.abs().median():.1f}")
    t["worst diff %"] = sim.groupby(by)["pct"].apply(lambda s: f"{s.loc[s.abs().idxmax()]:+.1f}")
    t = t.fillna("–")
    head = f"| {by} | " + " | ".join(map(str, t.columns)) + " |"
    lines = [head, "|" + "---|" * (len(t.columns) + 1)]
    lines += [f"| {idx} | " + " | ".join(map(str, rec)) + " |" for idx, rec in zip(t.index, t.values, strict=True)]
    return "\n".join(lines)


def page(rows: list[dict], total: int, shards: int, recomputed: bool, commit: str) -> str:
    import pandas as pd

    known = gc.load_known()
    df = pd.DataFrame([{**{k: r[k] for k in (*FACTORS, "id")}, "seq": int(r["id"].split("/s")[1].split("/")[0]),
                        "pct": r.get("pct"),
                        "verdict": kind(gc.verdict(r, known)), "seconds": r.get("seconds"),
                        "same_as": r.get("same_as"), "finished": r.get("finished")} for r in rows])
    counts = df["verdict"].value_counts().to_dict()
    simulated = df[df["seconds"].fillna(0) > 0.5]["seconds"]
    stamps = sorted(t for t in df["finished"].dropna())
    done, left = len(rows), total - len(rows)
    complete = "The full grid **completed**." if left == 0 else (
        f"The full grid did **not** complete: **{done} of {total:,} points ran** ({100 * done / total:.1f} %); "
        f"{left:,} remain.")
    rate = ""
    if len(stamps) > 1:
        t0, t1 = (datetime.fromisoformat(s) for s in (stamps[0], stamps[-1]))
        per = (t1 - t0).total_seconds() / (len(stamps) - 1)
        rate = (f" The rows that carry a finish time ({len(stamps)}) came at {per:.1f} "
                f"s of wall time per point over {shards} processes ({stamps[0]} to {stamps[-1]} UTC).")
    med, mean = (statistics.median(simulated), simulated.mean()) if len(simulated) else (0, 0)
    worst = df[df["verdict"].isin(["DIFFERS", "known"])].assign(a=lambda d: d["pct"].abs()).sort_values(
        "a", ascending=False)
    before = ""
    if recomputed:  # the same rows judged with the figure the sweep computed (its commit, before the fixes)
        old = [kind(gc.verdict({**r, "components": r.get("components_sweep", r["components"]),
                                "pct": None if r.get("pct") is None else round(
                                    100 * (r.get("components_sweep", r["components"]) - r["simulate"])
                                    / r["simulate"], 2)}, known)) for r in rows]
        before = ("Judged with the components figure the sweep itself computed (the code it started on, before "
                  "the fixes below): " + ", ".join(f"{k}: {old.count(k)}" for k in sorted(set(old))) + ".")
    diff = df[df["verdict"].isin(["DIFFERS", "known"])]
    fsdp = diff[diff["parallel"].str.startswith("fsdp2")]
    left_note = (
        f"Of the {len(diff)} points beyond 5 % (DIFFERS + known), {len(fsdp)} are FSDP2 points, "
        f"{int((fsdp['pct'] > 0).sum())} of them with components high: the `fsdp2-shallow` cause of "
        "tests/formulas/known_differences.yaml (sharding.py's per-moment all-gather model on 2-layer stand-ins, "
        "worst with LoRA / freeze on the MoE stand-ins, whose frozen root and experts dominate), not analysed "
        f"here. The other {len(diff) - len(fsdp)}: "
        + ", ".join(f"{k} {v}" for k, v in diff[~diff.index.isin(fsdp.index)]["regime"].value_counts().items())
        + " (by regime); MoE LoRA/QLoRA 5-9 % low was the experts backward, modelled since (docs/moe.md).")
    out = [
        "# components vs simulate: the full grid (2-layer stand-ins)",
        "",
        "Every valid point of the grid of scripts/grid_consistency.py (docs/consistency.md describes the grid, the "
        "stand-ins and the tolerance; the CI test simulates an all-pairs sample of it). Rows: "
        f"results/consistency/full_standins.*of{shards}.jsonl, one per finished point, appended as the sweep ran.",
        "",
        f"Written by `python scripts/grid_full_page.py {' '.join(sys.argv[1:])}` on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC at commit {commit}. CUDA target; components = its allocated part; "
        "simulate = steady peak allocated (rank 0 under ddp/fsdp2); tolerance 5 %. "
        + ("components was **recomputed** on that commit for every simulated row (the sweep's own figure is kept "
           "in the rows as `components_sweep`); simulate's figures are the sweep's." if recomputed else
           "Both figures are the sweep's."),
        "",
        "## How much ran",
        "",
        f"{complete} The points ran in one fixed shuffled order (`--order 0`), so the rows that finished are a "
        "uniform random sample of the whole grid, not its first families. (`full_grid()` gives 10,464 valid "
        "points on this commit: 14 families x 6 regimes x 7 parallel x 3 seq x 2 batch x 2 checkpointing x 2 "
        "autocast x 2 routing, less what `valid()` refuses; 11,616, quoted earlier, is not what this code "
        "counts.)",
        "",
        f"- Time per point (simulation only, the row's `seconds`, {len(simulated)} simulated rows): median "
        f"{med:.1f} s, mean {mean:.1f} s, "
        "on the shared 2-core machine under `nice -n 19` (test suites and other jobs ran beside it much of the "
        "time)." + rate,
        f"- Points answered without a simulation: {int(df['same_as'].notna().sum())} repeats of a config already "
        "simulated (seq capped at the model's positions) and "
        f"{int((df['verdict'] == 'estimate only').sum())} CPU-offload points (no simulation exists for them).",
        "- To resume (each process skips the points its file already holds and appends; no line is rewritten):",
        "",
        "```",
        *[RESUME.format(i=i, n=shards) for i in range(shards)],
        "```",
        "",
        PROSE.strip(),
        "",
        "## Verdicts",
        "",
        ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
        "",
        before,
        "",
        left_note,
        "",
        "`DIFFERS`: beyond 5 % and not in tests/formulas/known_differences.yaml (that file lists the points of the "
        "sampled grid only; the full grid's differing points are counted here, by factor, not listed one by one "
        "there). `known`: listed there with a cause.",
        "",
    ]
    for f in FACTORS:
        out += [f"### By {f}", "", table(df, f), ""]
    out += ["## The 40 largest differences", "", "| point | diff | verdict |", "|---|---|---|"]
    out += [f"| {r.id} | {r.pct:+.1f}% | {r.verdict} |" for r in worst.head(40).itertuples()]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rows", nargs="+", help="the sweep's JSON-lines files")
    ap.add_argument("--recompute-components", action="store_true",
                    help="recompute components on the checked-out code (simulate's figures stay the sweep's)")
    ap.add_argument("--out", default="docs/consistency-full.md")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    saved = gc.read_rows(args.rows)
    points = gc.sweep_order(gc.full_grid(), 0)
    rows = [saved[gc.point_id(p)] for p in points if gc.point_id(p) in saved]
    if args.recompute_components:
        recompute(rows)
    shards = max(len(args.rows), 1)
    Path(args.out).write_text(page(rows, len(points), shards, args.recompute_components, gc._commit()))
    print(f"{args.out}: {len(rows)} of {len(points)} points", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
