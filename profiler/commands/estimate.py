"""`python -m profiler estimate CONFIG [key=value ...] [--gpu-memory 80GiB] [--estimator NAME|all]`

Prints each estimator's components and total and whether it fits the GPU; `--max-batch` / `--max-seq`
solve for the largest train.batch_size / train.seq_len that fits under each estimator. Bytes stay ints;
the table shows GiB (2^30) or GB (10^9), as `--unit` says.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from profiler.config import LIMITS, ConfigError, RunConfig, ignored_note, load_config, parse_bytes
from profiler.formulas import COMPONENTS, ESTIMATORS, Estimate, NotApplicable, estimate

UNITS = {"GiB": 2**30, "GB": 10**9}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="run config YAML (model.arch may be any HF config.json path; may "
                        "be left out with --from and model.arch=...)")
    parser.add_argument("--from", dest="from_file", metavar="FILE",
                        help="a TRL / Trainer / axolotl / LLaMA-Factory / accelerate / DeepSpeed config to start from "
                        "(under CONFIG's keys; what it maps and ignores goes to stderr)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.batch_size=4")
    parser.add_argument(
        "--gpu-memory", default="80GiB", help="memory to fit in, e.g. 80GiB, 24GB (default 80GiB)"
    )
    parser.add_argument("--estimator", default="all", help=f"one of {', '.join(ESTIMATORS)} or all (default)")
    parser.add_argument("--max-batch", action="store_true", help="largest train.batch_size that fits")
    parser.add_argument("--max-seq", action="store_true", help="largest train.seq_len that fits")
    parser.add_argument("--min-gpus", action="store_true",
                        help="per data-parallel strategy, the fewest GPUs whose per-rank estimate fits")
    parser.add_argument(
        "--unit", choices=list(UNITS), default="GiB", help="display unit (GiB = 2^30, GB = 10^9)"
    )
    parser.add_argument("--gpu", help="GPU slug whose calibration table to use, e.g. nvidia-h100-80gb-hbm3 "
                        "(default: this machine's CUDA device)")
    parser.add_argument("--calibration", metavar="FILE",
                        help="calibration table (default: results/calibration/<gpu-slug>.csv if it exists)")
    add_rank_arguments(parser)
    from profiler.recipes.options import add_recipe_argument

    add_recipe_argument(parser)


def _gpu_slug(arg: str | None) -> str | None:
    if arg:
        return arg
    import torch

    if torch.cuda.is_available():
        from profiler.measure.env import slugify

        return slugify(torch.cuda.get_device_name(0))
    return None


def calibration_line(cfg: RunConfig, args: argparse.Namespace, unit: str) -> str:
    """One line saying what the calibrated `components` estimate is and what it rests on, or that
    there is no calibration (never silently uncalibrated)."""
    from profiler.learn.calibrate import default_calibration_path, group_of, load_calibration

    slug = _gpu_slug(args.gpu)
    path = args.calibration or (default_calibration_path(slug) if slug else None)
    if path is None:
        where = f"for GPU {slug}" if slug else "(no GPU here; pass --gpu SLUG or --calibration FILE)"
        return f"uncalibrated: no calibration table {where} in results/calibration/"
    cal = load_calibration(path)
    res = cal.apply(estimate(cal.estimator, cfg), group_of(cfg))
    if not res["calibrated"]:
        return f"uncalibrated: {res['note']}"
    return (f"calibrated {cal.estimator} ({res['total_target']}): {_fmt(res['total'], unit)} {unit} — table "
            f"{res['table']}, {res['n_runs']} runs of regime {group_of(cfg)} on {cal.device_name}")


def with_train(cfg: RunConfig, **train: int) -> RunConfig:
    """A copy of cfg with train fields replaced (validated)."""
    data = cfg.model_dump()
    data["train"].update(train)
    return RunConfig.model_validate(data)


def solve_max(cfg: RunConfig, name: str, field: str, budget: int, cap: int | None = None) -> int | None:
    """Largest value of train.<field> (batch_size or seq_len) whose estimate fits `budget` bytes.

    0 when even 1 does not fit; None when `cap` (default: the config limit of the field, a power of
    two) still fits (the estimator does not grow with it)."""
    cap = cap if cap is not None else LIMITS[f"train.{field}"][1]

    def fits(v: int) -> bool:
        return estimate(name, with_train(cfg, **{field: v})).total <= budget

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while fits(hi):
        lo, hi = hi, hi * 2
        if hi > cap:
            return None
    while hi - lo > 1:  # invariant: fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def unbounded(cfg: RunConfig, name: str, field: str) -> str:
    """What to show when the cap still fits: the estimator ignores the field, or it grows too slowly to matter."""
    cap = LIMITS[f"train.{field}"][1]
    lo, hi = (estimate(name, with_train(cfg, **{field: v})).total for v in (1, cap))
    return f"n/a (ignores {field.split('_')[0]})" if lo == hi else f"> {cap} (the config limit)"


def _fmt(n: int, unit: str) -> str:
    return f"{n / UNITS[unit]:.2f}"


def render(
    ests: list[Estimate], budget: int, unit: str, extra: dict[str, dict[str, str]] | None = None
) -> Table:
    table = Table(
        title=f"predicted memory ({unit}; {unit} = {'2^30' if unit == 'GiB' else '10^9'} bytes), "
        f"budget {_fmt(budget, unit)} {unit}"
    )
    table.add_column("estimator")
    comps = [c for c in COMPONENTS if c != "comm_buffers" or any(e.get(c) for e in ests)]  # sharded only
    for c in comps:
        table.add_column(c, justify="right")
    table.add_column("total", justify="right")
    table.add_column("fits", justify="center")
    extra_cols = sorted({k for v in (extra or {}).values() for k in v})
    for k in extra_cols:
        table.add_column(k, justify="right")
    for e in ests:
        row = [
            e.estimator,
            *(_fmt(e.get(c), unit) for c in comps),
            _fmt(e.total, unit),
            "yes" if e.total <= budget else "NO",
        ]
        row += [(extra or {}).get(e.estimator, {}).get(k, "") for k in extra_cols]
        table.add_row(*row)
    return table


def _from_file_base(args: argparse.Namespace) -> dict | None:
    """The --from file's keys as the base config (its mapped/ignored lines to stderr), as `simulate --from` reads
    it; ConfigError for an unreadable file or no config at all."""
    if args.config and "=" in args.config and not Path(args.config).exists():  # `--from F key=value ...`
        args.overrides, args.config = [args.config, *args.overrides], None
    if not getattr(args, "from_file", None):
        if args.config is None:
            raise ConfigError("config: missing; allowed: a run config YAML, or --from FILE with model.arch=...")
        return None
    from profiler.recipes.from_file import cli_base

    return cli_base(args.from_file, args.config, args.overrides)


def main(args: argparse.Namespace) -> int:
    err = Console(stderr=True)
    try:
        base = _from_file_base(args)  # first: it moves a `key=value` read as CONFIG to the overrides
        cfg = load_config(args.config, args.overrides, base=base, recipe=getattr(args, "recipe", None))
        if (note := ignored_note(cfg)) is not None:
            print(note, file=sys.stderr)
        budget = parse_bytes(args.gpu_memory)
        rank = rank_request(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: --gpu-memory: {exc}", file=sys.stderr)
        return 2
    if args.calibration:
        from profiler.learn.calibrate import checked_calibration

        try:  # the reader fit uses too: a bad table is one line, before any work
            checked_calibration(args.calibration)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    names = list(ESTIMATORS) if args.estimator == "all" else [args.estimator]
    if any(n not in ESTIMATORS for n in names):
        print(
            f"error: --estimator {args.estimator!r} unknown; allowed: {', '.join(ESTIMATORS)}, all",
            file=sys.stderr,
        )
        return 2
    ests: list[Estimate] = []
    skipped: list[str] = []
    try:
        for n in names:
            try:
                ests.append(estimate(n, cfg))
            except NotApplicable as exc:
                skipped.append(str(exc))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    extra: dict[str, dict[str, str]] = {}
    for flag, field, col in (
        (args.max_batch, "batch_size", "max batch"),
        (args.max_seq, "seq_len", "max seq"),
    ):
        if not flag:
            continue
        for e in ests:
            v = solve_max(cfg, e.estimator, field, budget)
            extra.setdefault(e.estimator, {})[col] = str(v) if v is not None else unbounded(cfg, e.estimator, field)
    console = Console(width=200)
    if args.min_gpus:
        return print_min_gpus(cfg, budget, args.unit, console, rank)
    t = cfg.train
    console.print(
        f"{cfg.model.name} | {cfg.regime.label} | {cfg.optimizer.name} | {cfg.model.dtype} | "
        f"batch {t.batch_size} x seq {t.seq_len} | checkpointing {t.gradient_checkpointing} | "
        f"{cfg.device}"
    )
    console.print(render(ests, budget, args.unit, extra))
    for e in ests:
        if e.notes:
            console.print(f"  {e.estimator}: {e.notes}")
    for s in skipped:
        err.print(f"  skipped: {s}")
    try:
        console.print(calibration_line(cfg, args, args.unit))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: --calibration: {exc}", file=sys.stderr)
        return 2
    return 0 if ests else 1


def print_min_gpus(cfg: RunConfig, budget: int, unit: str, console: Console, rank: tuple | None = None) -> int:
    from profiler.formulas.min_gpus import MAX_GPUS, SHARDING_ESTIMATORS, STRATEGIES, min_gpus, with_parallel

    div = UNITS[unit]
    t = cfg.train
    console.print(f"{cfg.model.name} | {cfg.regime.label} | {cfg.optimizer.name} | {cfg.model.dtype} | batch "
                  f"{t.batch_size} x seq {t.seq_len} per rank | checkpointing {t.gradient_checkpointing} | "
                  f"{cfg.device}")
    table = Table(title=f"fewest GPUs of {budget / div:.2f} {unit} each (estimated, per rank; {unit} = "
                  f"{'2^30' if unit == 'GiB' else '10^9'} bytes)")
    for col in ("strategy", "estimator", "min GPUs", f"per-rank {unit}", "weights", "grads", "optim", "activ",
                "temp", "comm", f"host {unit}"):
        table.add_column(col, justify="left" if col in ("strategy", "estimator") else "right")
    notes: list[str] = []
    answered = 0
    f = lambda v: f"{v / div:.2f}"  # noqa: E731
    for name in SHARDING_ESTIMATORS:  # one GPU, no parallelism: the answer before any strategy (inference's only one)
        try:
            e = estimate(name, with_parallel(cfg, strategy="none", world_size=1))
        except (NotApplicable, ConfigError):
            continue
        fits = e.total <= budget
        answered += fits
        table.add_row("none", name, "1" if fits else "more", f(e.total), f(e.get("weights")), f(e.get("gradients")),
                      f(e.get("optimizer")), f(e.get("activations")), f(e.get("temporaries")), f(e.get("comm_buffers")),
                      f(e.details.get("host_bytes", 0)))
    strategies = STRATEGIES
    if cfg.regime.kind == "inference":  # config.py refuses every data-parallel strategy with inference
        strategies = ()
        notes.append(f"{', '.join(STRATEGIES)}: shard training state; inference runs on one GPU here")
    options: list[tuple[str, int]] = []  # (strategy, fewest GPUs by `components`), for --rank-by-time
    for strategy in strategies:
        for name in SHARDING_ESTIMATORS:
            try:
                res = min_gpus(cfg, name, strategy, budget)
            except NotApplicable:
                continue
            except ConfigError as exc:
                notes.append(f"{strategy}: {exc}")
                break
            if res is None:
                table.add_row(strategy, name, "never", *[""] * 8)
                continue
            n, e = res
            answered += 1
            if name == "components":
                options.append((strategy, n))
            table.add_row(strategy, name, str(n), f(e.total), f(e.get("weights")), f(e.get("gradients")),
                          f(e.get("optimizer")), f(e.get("activations")), f(e.get("temporaries")),
                          f(e.get("comm_buffers")), f(e.details.get("host_bytes", 0)))
    console.print(table)
    console.print("components: per-rank peak incl. activations and CUDA overhead, host = offloaded bytes per "
                  "rank; deepspeed_zero: model states only (DeepSpeed's estimator), host = its CPU figure per "
                  "node. Confirm FSDP2/DDP with `python -m profiler simulate CFG "
                  "parallel.strategy=S parallel.world_size=N`.")
    console.print(f"none: one GPU, no data parallelism (min GPUs 1 where it fits, else more); never: per-rank "
                  f"memory stops falling above the budget (DDP replicates everything), or {MAX_GPUS} GPUs do not fit.")
    for line in notes:
        console.print(f"  not estimated: {line}")
    if rank is not None and options:
        print_ranked(cfg, options, rank, console)
    return 0 if answered else 1


# ---- --min-gpus --rank-by-time GPU --tokens N (issue #25: profiler.timing.rank) --------------------------------


def add_rank_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rank-by-time", metavar="GPU", help="with --min-gpus: rank the options by time to train "
                        "--tokens on this GPU preset (estimated: one counted simulation + the fitted time model)")
    parser.add_argument("--tokens", help="with --rank-by-time: tokens to train on, e.g. 2e9, 500M")


def rank_request(args: argparse.Namespace) -> tuple[str, int] | None:
    """(GPU preset, tokens) when --rank-by-time is asked, checked; ConfigError names the flag."""
    if not args.rank_by_time and not args.tokens:
        return None
    if not args.rank_by_time or not args.tokens or not args.min_gpus:
        raise ConfigError("--rank-by-time: needs --min-gpus and --tokens N (and --tokens needs --rank-by-time GPU)")
    from profiler.predict.gpus import gpu_by_name
    from profiler.timing.estimate import parse_count
    from profiler.timing.specs import spec_for

    gpu = gpu_by_name(args.rank_by_time).name
    spec_for(gpu)
    return gpu, parse_count(args.tokens, "--tokens")


def print_ranked(cfg: RunConfig, options: list[tuple[str, int]], rank: tuple[str, int], console: Console) -> None:
    from profiler.timing.estimate import band_text
    from profiler.timing.model import fitted_efficiency
    from profiler.timing.rank import rank_options

    gpu, tokens = rank
    try:
        ranked = rank_options(cfg, options, gpu, tokens)
    except (RuntimeError, ConfigError) as exc:
        console.print(f"  not ranked by time: {exc}")
        return
    table = Table(title=f"time to train {tokens:,} tokens on {gpu} (estimated: simulate's FLOPs/bytes + fitted "
                  f"roofline time model; fastest first)")
    for col in ("strategy", "GPUs", "step s", "tokens/s", "hours", "GPU-hours", "bound"):
        table.add_column(col, justify="left" if col in ("strategy", "bound") else "right")
    for o in ranked:
        table.add_row(o.strategy, str(o.gpus), f"{o.step_s:.3f}", f"{o.tokens_per_s:,.0f}", f"{o.hours:,.2f}",
                      f"{o.gpu_hours:,.1f}", o.bound)
    console.print(table)
    console.print(f"  error band: {band_text(fitted_efficiency())}; each option at its fewest GPUs (components)")
