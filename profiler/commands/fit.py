"""`fit MODEL [key=value ...] --regime R --seq S --batch N|auto --gpu NAME|--gpu-memory SIZE`: one verdict.

No YAML needed: MODEL is a bundled name, a config.json, a checkpoint directory or a Hub id (its config.json
only). The answer comes from profiler.predict.fit: simulate + an allocator / CUDA-context allowance, an error
band only from a calibration table, max batch and max seq (each checked by simulation), and what would make
it fit when it does not. Exit codes: 0 it fits, 1 it does not fit (or the model cannot be simulated),
2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REGIMES = {"full": {"kind": "full"}, "freeze": {"kind": "freeze"}, "lora": {"kind": "lora"},
           "qlora4": {"kind": "qlora", "bits": 4}, "qlora8": {"kind": "qlora", "bits": 8},
           "inference": {"kind": "inference"}}
DEFAULT_SEQ = 2048
DEFAULT_REGIME = "lora"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="bundled name (llama-3-8b, ...), path to a config.json or checkpoint "
                        "directory, or a Hub id (reads only its config.json; local HF cache first); may be left out "
                        "when --from names the model")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. regime.lora.r=64 model.dtype=float16")
    parser.add_argument("--regime", choices=list(REGIMES),
                        help=f"what trains (default: --config's, else {DEFAULT_REGIME})")
    parser.add_argument("--seq", type=int, help=f"sequence length (default: --config's, else {DEFAULT_SEQ})")
    parser.add_argument("--batch", help="batch size, or auto for the largest that fits (default 1)")
    parser.add_argument("--optimizer", help="sgd, sgd_momentum, adam, adamw (default), adamw_8bit, paged_adamw_8bit")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on")
    gpu = parser.add_mutually_exclusive_group()
    gpu.add_argument("--gpu", help="GPU preset, e.g. rtx4090, a100-40gb, h100 (profiler/data/gpus.csv)")
    gpu.add_argument("--gpu-memory", help="memory to fit in, with a unit: 24GB (10^9 bytes), 24GiB (2^30)")
    parser.add_argument("--config", metavar="FILE", help="run config YAML as the starting point")
    parser.add_argument("--from", dest="from_file", metavar="FILE",
                        help="the training config you already have: a TRL SFTConfig / TrainingArguments JSON or YAML, "
                        "an axolotl or LLaMA-Factory YAML, an accelerate config, a DeepSpeed JSON (what it maps and "
                        "ignores goes to stderr)")
    parser.add_argument("--calibration", metavar="FILE",
                        help="calibration table (default results/calibration/<gpu-slug>.csv where it exists)")
    parser.add_argument("--no-search", action="store_true", help="verdict only: skip max batch / max seq")
    parser.add_argument("--serial", action="store_true",
                        help="one process: by default, with 2+ cores and a 1B+ model, the max seq search runs in "
                        "a second process beside the max batch one (same answer, less wall time)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--all", action="store_true", help="every named estimator's total beside the verdict")
    from profiler.recipes.options import add_recipe_argument

    add_recipe_argument(parser, default_text=DEFAULT_RECIPE)


# --- recipes (issue 20): --recipe, the stack whose defaults fill unset keys --------------------------------------
DEFAULT_RECIPE = "trl"  # what most people fine-tune with today (TRL 1.16 SFTTrainer)


def read_from(args: argparse.Namespace):
    """--from FILE parsed (None without it); --from with --config is refused (two starting points)."""
    path = getattr(args, "from_file", None)
    if not path:
        return None
    from profiler.config import ConfigError
    from profiler.recipes.from_file import FromFileError, read

    if args.config:
        raise ConfigError("--from: give --from or --config, not both")
    try:
        return read(path)
    except FromFileError as exc:
        raise ConfigError(str(exc)) from None


def from_data(args: argparse.Namespace) -> dict:
    return args.parsed_from.data() if getattr(args, "parsed_from", None) else {}


def defaults_lines(cfg) -> list[str]:
    """The header's account of the defaults a recipe or the model filled (each with its source)."""
    from profiler.recipes.stacks import source_of

    lines = []
    for key, (value, why) in cfg.recipe_defaults.items():
        src = source_of(cfg.recipe, cfg.regime.kind, key) if why.startswith("recipe") else why
        lines.append(f"{key}={json.dumps(value)}  ({src})")
    return lines
# --- end recipes --------------------------------------------------------------------------------------------------


def _start(path: str | None) -> dict:
    """The --config file as a dict (validated later, with everything else)."""
    if path is None:
        return {}
    import yaml

    from profiler.config import ConfigError

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config: file {path!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config: {path} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path}: top level must be a mapping of keys")
    return data


def build_config(args: argparse.Namespace, arch: str):
    """RunConfig from --config, then the fit options, then key=value overrides (validated once)."""
    from profiler.config import ConfigError, load_config
    from profiler.recipes.options import recipe_into

    start = _start(args.config) if not getattr(args, "from_file", None) else from_data(args)
    data = recipe_into(start, getattr(args, "recipe", None), args.overrides, DEFAULT_RECIPE)
    model = {k: v for k, v in (data.get("model") or {}).items() if k not in ("arch", "path", "hub")}
    data["model"] = {**model, "arch": arch}
    regime = dict(data.get("regime") or {})
    if args.regime or not regime:
        regime.update(REGIMES[args.regime or DEFAULT_REGIME])
    data["regime"] = regime
    train = dict(data.get("train") or {})
    if args.seq is not None:
        train["seq_len"] = args.seq
    elif "seq_len" not in train:
        train["seq_len"] = DEFAULT_SEQ
    if args.batch not in (None, "auto"):
        try:
            train["batch_size"] = int(args.batch)
        except ValueError:
            raise ConfigError(f"--batch: {args.batch!r} is not allowed; allowed: a positive integer or auto") from None
    if args.checkpointing:
        train["gradient_checkpointing"] = True
    data["train"] = train
    if args.optimizer:
        from profiler.recipes.stacks import REFUSED_OPTIMIZERS, TRAINER_OPTIMIZERS

        name = TRAINER_OPTIMIZERS.get(args.optimizer, args.optimizer)  # Trainer's optim names too
        if name in REFUSED_OPTIMIZERS:
            raise ConfigError(f"--optimizer: {name!r} is refused ({REFUSED_OPTIMIZERS[name]}); allowed: sgd, "
                              "sgd_momentum, adam, adamw, adamw_fused, adamw_8bit, paged_adamw_8bit or a Trainer "
                              f"name among {', '.join(TRAINER_OPTIMIZERS)}")
        data["optimizer"] = {**(data.get("optimizer") or {}), "name": name}
    data["device"] = "cuda"  # a fit is about a GPU
    data.pop("output", None)
    return load_config(None, args.overrides, base=data)


def resolve_gpu(args: argparse.Namespace):
    from profiler.config import ConfigError
    from profiler.predict.gpus import gpu_by_name, gpu_by_size, presets

    if args.gpu:
        return gpu_by_name(args.gpu)
    if args.gpu_memory:
        return gpu_by_size(args.gpu_memory)
    raise ConfigError(f"--gpu: give --gpu NAME ({', '.join(presets())}) or --gpu-memory SIZE (e.g. 24GB)")


def render(res, out=None) -> None:
    """The human answer: verdict first, then where it came from, the breakdown, the limits, the fixes."""
    from rich.console import Console
    from rich.table import Table

    c = Console(file=out, width=120, soft_wrap=True, markup=False, highlight=False)
    u, d = res.unit()
    ck = ", gradient checkpointing" if res.gradient_checkpointing else ""
    c.print(f"{res.model} | {res.regime} | {res.optimizer} | batch {res.batch_size} x seq {res.seq_len}{ck} | "
            f"{res.gpu} ({res.total_bytes / 2**30:.2f} GiB total) | recipe {res.recipe}")
    c.print(res.verdict(), style="bold")
    if res.defaults:
        c.print(f"  recipe {res.recipe}: defaults it filled (override any with key=value):")
        for line in res.defaults:
            c.print(f"    {line}")
    c.print(f"  predictor: simulate (fake-tensor run of the training step; peak allocated "
            f"{res.simulated_peak_bytes / d:.2f} {u}) + {res.allowance_source}")
    c.print(f"  error band: {res.band()}")
    c.print(f"  GPU: {res.gpu_source}")
    t = Table(title=f"simulated breakdown at the peak ({res.peak_phase}; {u} = 2^{d.bit_length() - 1} bytes)")
    for k in res.breakdown:
        t.add_column(k, justify="right")
    t.add_column("allocator + context", justify="right")
    t.add_row(*(f"{v / d:.2f}" for v in res.breakdown.values()),
              f"{(res.allocator_bytes + res.total_bytes - res.usable_bytes) / d:.2f}")
    c.print(t)
    for label, sol in (("max batch at this seq", res.max_batch), ("max seq at this batch", res.max_seq)):
        if sol is not None:
            c.print(f"  {label}: {sol.value}{' (cap)' if sol.capped else ''} ({sol.check_text(d, u)})")
    if res.suggestions:
        c.print("  what would make it fit (each checked by the same predictor):")
        for s in res.suggestions:
            c.print(f"    {'fits' if s.fits else 'no  '}  {s.change}: needs {s.needed_bytes / d:.1f} {u} "
                    f"({' '.join(s.overrides)})")
    if res.estimators:
        c.print("  named estimators (formulas beside the verdict, compared with the GPU total): " + ", ".join(
            f"{k} {v / d:.1f} {u} ({'fits' if v <= res.total_bytes else 'no'})" for k, v in res.estimators.items()))
    for n in res.notes:
        c.print(f"  note: {n}")
    procs = " in 2 processes" if res.processes == 2 else ""
    c.print(f"  {res.simulations} simulations{procs}, {res.seconds:.1f} s")


def main(args: argparse.Namespace) -> int:
    from profiler.config import ConfigError, ignored_note

    try:
        gpu = resolve_gpu(args)
        from profiler.predict.model_source import resolve_model

        args.parsed_from = read_from(args)
        if args.parsed_from is not None:
            for line in args.parsed_from.lines():
                print(line, file=sys.stderr)
        model = args.model or (args.parsed_from.model if args.parsed_from else None)
        if args.model and args.parsed_from is not None and args.parsed_from.model:
            print(f"  ignored the file's model {args.parsed_from.model!r}: MODEL {args.model!r} given on the command "
                  "line", file=sys.stderr)
        if not model:
            raise ConfigError("MODEL: required (a bundled name, config.json, checkpoint or Hub id), unless --from "
                              "names the model")
        src = resolve_model(model)
        cfg = build_config(args, src.arch)
        if (note := ignored_note(cfg)) is not None:
            print(note, file=sys.stderr)
        if args.calibration and not Path(args.calibration).is_file():
            raise ConfigError(f"--calibration: table {args.calibration!r} does not exist")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from profiler.predict.fit import SimulationFailed, predict_fit

    progress = None if args.json else (lambda m: print(f"... {m}", file=sys.stderr, flush=True))
    try:
        res = predict_fit(cfg, gpu, model_name=src.name, model_source=src.how, auto_batch=args.batch == "auto",
                          calibration=args.calibration, search=not args.no_search, all_estimators=args.all,
                          progress=progress, workers=1 if args.serial else None)
        res.recipe, res.defaults = cfg.recipe, defaults_lines(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SimulationFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(res.to_dict(), indent=1, default=str))
    else:
        render(res)
    return 0 if res.fits else 1
