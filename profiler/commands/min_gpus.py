"""`estimate --min-gpus`: per data-parallel strategy, the fewest GPUs whose per-rank estimate fits.

Not a command of its own (no `add_arguments`/`main`): the `--min-gpus` part of commands/estimate.py.
Per-rank memory never grows with the world size under these strategies, so the answer is found by
doubling, then bisection, up to MAX_GPUS. Each estimator that models sharding answers separately:
`components` (every strategy) and `deepspeed_zero` (ZeRO-2/3, model states only).
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from profiler.config import RunConfig
from profiler.formulas import Estimate, NotApplicable, estimate

STRATEGIES = ("ddp", "fsdp2", "zero1", "zero2", "zero3")
SHARDING_ESTIMATORS = ("components", "deepspeed_zero")
MAX_GPUS = 4096
UNITS = {"GiB": 2**30, "GB": 10**9}


def with_parallel(cfg: RunConfig, **parallel) -> RunConfig:
    """cfg with parallel fields replaced, validated (ConfigError for a combination no engine runs); the
    settings of another strategy (offload, FSDP2's resharding and dtypes) are dropped where they do not apply."""
    from profiler.config import load_config

    data = cfg.model_dump()
    data["parallel"].update(parallel)
    s = data["parallel"]["strategy"]
    if s == "ddp":
        data["parallel"]["offload"] = {"params": False, "optimizer": False}
    elif s in ("zero1", "zero2"):
        data["parallel"]["offload"]["params"] = False
    if s != "fsdp2":
        data["parallel"].update(reshard_after_forward=True, param_dtype=None, reduce_dtype=None)
    return load_config(None, base=data)


def min_gpus(cfg: RunConfig, name: str, strategy: str, budget: int) -> tuple[int, Estimate] | None:
    """(fewest GPUs that fit, the estimate there), or None when MAX_GPUS do not fit; NotApplicable and
    ConfigError propagate."""

    def at(n: int) -> Estimate:
        return estimate(name, with_parallel(cfg, strategy=strategy, world_size=n))

    first = at(1)
    if first.total <= budget:
        return 1, first
    lo, hi = 1, 2
    while at(hi).total > budget:
        lo, hi = hi, hi * 2
        if hi > MAX_GPUS:
            return None
    while hi - lo > 1:  # invariant: lo does not fit, hi fits
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if at(mid).total <= budget else (mid, hi)
    return hi, at(hi)


def print_min_gpus(cfg: RunConfig, budget: int, unit: str, console: Console) -> int:
    from profiler.config import ConfigError

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
    for strategy in STRATEGIES:
        for name in SHARDING_ESTIMATORS:
            try:
                res = min_gpus(cfg, name, strategy, budget)
            except NotApplicable:
                continue
            except ConfigError as exc:
                notes.append(f"{strategy}: {exc}")
                break
            if res is None:
                table.add_row(strategy, name, f"> {MAX_GPUS}", *[""] * 8)
                continue
            n, e = res
            answered += 1
            f = lambda v: f"{v / div:.2f}"  # noqa: E731
            table.add_row(strategy, name, str(n), f(e.total), f(e.get("weights")), f(e.get("gradients")),
                          f(e.get("optimizer")), f(e.get("activations")), f(e.get("temporaries")),
                          f(e.get("comm_buffers")), f(e.details.get("host_bytes", 0)))
    console.print(table)
    console.print("components: per-rank peak incl. activations and CUDA overhead, host = offloaded bytes per "
                  "rank; deepspeed_zero: model states only (DeepSpeed's estimator), host = its CPU figure per "
                  "node. Confirm FSDP2/DDP with `python -m profiler simulate CFG "
                  "parallel.strategy=S parallel.world_size=N`.")
    for line in notes:
        console.print(f"  not estimated: {line}")
    return 0 if answered else 1
