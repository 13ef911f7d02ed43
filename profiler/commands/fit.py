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
import math
import sys
from dataclasses import dataclass
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
                        help="one process: by default, with 2+ cores and a 1B+ model, a second process simulates half "
                        "of each round of the max batch / max seq searches (same answer, less wall time)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--all", action="store_true", help="every named estimator's total beside the verdict")
    parser.add_argument("--picture", metavar="FILE.png", help="also draw the verdict: the breakdown against the "
                        "usable memory, and the predicted peak vs batch and vs seq at the points the searches "
                        "simulated (profiler/predict/picture.py; docs/fit-picture.md)")
    parser.add_argument("--force", action="store_true", help="overwrite --picture even if fit did not write it")
    add_timing_arguments(parser)
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
    """The --config file as a dict (validated later, with everything else); read by the run config's reader
    (UTF-8, safe tags, unique keys, bounded nesting and alias expansion)."""
    if path is None:
        return {}
    from profiler.config import ConfigError, read_yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config: {path!r} {'is a directory' if p.is_dir() else 'does not exist'}; "
                          "allowed: a run config YAML file")
    try:
        data = read_yaml(path) or {}
    except ConfigError as exc:
        raise ConfigError(f"--config: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path}: top level must be a mapping of keys")
    return data


def flag_settings(args: argparse.Namespace, arch: str) -> dict[str, tuple[str, object]]:
    """Every config key a command-line option of fit sets, as {dotted key: (the option as typed, value)}. An
    option that maps to a config key belongs here, so a key=value override of the same key is refused
    (refuse_conflicts) instead of silently winning."""
    out: dict[str, tuple[str, object]] = {"model.arch": (f"MODEL {args.model!r}" if hasattr(args, "model")
                                                         else "MODEL", arch)}
    out["model.path"] = out["model.hub"] = (out["model.arch"][0], None)  # MODEL is the one model source
    if args.regime:
        out.update({f"regime.{k}": (f"--regime {args.regime}", v) for k, v in REGIMES[args.regime].items()})
    if args.seq is not None:
        out["train.seq_len"] = (f"--seq {args.seq}", args.seq)
    if args.batch is not None:
        batch = int(args.batch) if str(args.batch).isdigit() else args.batch
        out["train.batch_size"] = (f"--batch {args.batch}", batch)
    if args.checkpointing:
        out["train.gradient_checkpointing"] = ("--checkpointing", True)
    if args.optimizer:
        out["optimizer.name"] = (f"--optimizer {args.optimizer}", args.optimizer)
    out["device"] = ("fit (a verdict for a GPU)", "cuda")
    return out


def refuse_conflicts(settings: dict[str, tuple[str, object]], overrides: list[str]) -> None:
    """ConfigError where a key=value override sets a key (or a section holding it) that an option also sets,
    unless both give the same value: the user said two things, and neither may silently win."""
    from profiler.config import ConfigError, echo, parse_override

    for item in overrides:
        if "=" not in item:
            continue  # load_config names the malformed override
        key, value = parse_override(item)
        for flagged, (option, flag_value) in settings.items():
            if key == flagged and value == flag_value:
                continue
            if key == flagged or flagged.startswith(key + ".") or key.startswith(flagged + "."):
                raise ConfigError(f"{key}: the override {echo(item, 120)} conflicts with {option} (which sets "
                                  f"{flagged}); give one of them")


def build_config(args: argparse.Namespace, arch: str, gpu=None):
    """RunConfig from --config, then the fit options, then key=value overrides (validated once); an override
    of a key an option sets is refused (refuse_conflicts). `gpu` (a preset) sets `gpu_arch` where --config does
    not, so the simulation picks that GPU's attention kernel."""
    from profiler.config import ConfigError, echo, load_config
    from profiler.recipes.options import recipe_into

    refuse_conflicts(flag_settings(args, arch), args.overrides)
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
            raise ConfigError(f"--batch: {echo(args.batch, 120)} is not allowed; allowed: a positive integer or "
                              "auto") from None
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
    if gpu is not None and "gpu_arch" not in data:
        data["gpu_arch"] = gpu.arch
    data.pop("output", None)
    cfg = load_config(None, args.overrides, base=data)
    from profiler.hf_config import check_seq_len

    new_tokens = cfg.regime.new_tokens if cfg.regime.kind == "inference" else 0
    check_seq_len(cfg.model, cfg.train.seq_len + new_tokens,
                  "train.seq_len" + (" + regime.new_tokens" if new_tokens else ""))
    return cfg


def resolve_gpu(args: argparse.Namespace):
    from profiler.config import ConfigError
    from profiler.predict.gpus import gpu_by_name, gpu_by_size, presets

    if args.gpu:
        return gpu_by_name(args.gpu)
    if args.gpu_memory:
        return gpu_by_size(args.gpu_memory)
    raise ConfigError(f"--gpu: give --gpu NAME ({', '.join(presets())}) or --gpu-memory SIZE (e.g. 24GB)")


def _arch_note(gpu_name: str) -> str:
    """Which SDPA rules chose the attention kernel: the preset's architecture, or sm80's where it is unknown."""
    from profiler.predict.gpus import presets
    from profiler.simulate.cuda_sdpa import SDPA_RULES_TORCH

    g = presets().get(gpu_name)
    arch = g.arch if g is not None else "auto"
    which = f"{arch} rules" if arch != "auto" else "sm80 rules: this GPU's compute capability is not known"
    return f"torch {SDPA_RULES_TORCH} SDPA dispatch, {which}"


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
    if res.attention_kernel:
        c.print(f"  attention: {res.attention_kernel} ({_arch_note(res.gpu)})")
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
        c.print("  what would make it fit (each checked by the same predictor unless it says otherwise):")
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
        if args.picture:  # before anything is simulated: a bad path costs nothing
            from profiler.predict.picture import picture_problem

            if (problem := picture_problem(args.picture, args.force)) is not None:
                raise ConfigError(f"--picture: {problem}")
        gpu = resolve_gpu(args)
        from profiler.model_source import resolve_model

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
        cfg = build_config(args, src.arch, gpu)
        if (note := ignored_note(cfg)) is not None:
            print(note, file=sys.stderr)
        if args.calibration:
            from profiler.learn.calibrate import checked_calibration

            checked_calibration(args.calibration)  # estimate's reader: a bad table is one line, before any work
        timing = timing_request(args, gpu)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from profiler.predict.fit import SimulationFailed, predict_fit

    progress = None if args.json else (lambda m: print(f"... {m}", file=sys.stderr, flush=True))
    try:
        res = predict_fit(cfg, gpu, model_name=src.name, model_source=src.how, auto_batch=args.batch == "auto",
                          calibration=args.calibration, search=not args.no_search, all_estimators=args.all,
                          progress=progress, workers=1 if args.serial else None, count_work=timing is not None)
        answer = time_answer(res, timing) if timing is not None else None
        res.recipe, res.defaults = cfg.recipe, defaults_lines(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SimulationFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        out = res.to_dict()
        if answer is not None:
            out["timing"] = answer.to_dict()
        print(json.dumps(out, indent=1, default=str))
    else:
        render(res)
        if answer is not None:
            render_timing(answer)
    if args.picture:
        from profiler.predict.picture import picture_data, plot_fit

        out = plot_fit(picture_data(res), args.picture)
        print(f"picture written to {out}", file=sys.stderr if args.json else sys.stdout)
    return 0 if res.fits else 1


# ---- time and cost (issue #25: profiler.timing) ----------------------------------------------------------------
# --tokens N | --epochs E --dataset-tokens N, --price-per-hour P, --time: step time, tokens/s, MFU, hours, cost.


def add_timing_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("time and cost (estimates: simulate's FLOPs/bytes + a fitted roofline time model)")
    g.add_argument("--time", action="store_true", help="step time, tokens/s and MFU (no token count needed)")
    g.add_argument("--tokens", help="tokens to train on, e.g. 2e9, 500M, 1.5B: adds hours and GPU-hours")
    g.add_argument("--epochs", type=float, help="epochs over --dataset-tokens (instead of --tokens)")
    g.add_argument("--dataset-tokens", help="tokens in one epoch of the dataset, e.g. 50M (with --epochs)")
    g.add_argument("--price-per-hour", type=float, metavar="P", help="price of one GPU-hour: adds the cost")


@dataclass
class TimingRequest:
    gpu: str
    tokens: int | None
    price: float | None
    how: str  # how the token count was given


def timing_request(args: argparse.Namespace, gpu) -> TimingRequest | None:
    """The time question in the flags, checked (ConfigError names the flag); None when no time is asked."""
    from profiler.config import ConfigError
    from profiler.timing.estimate import parse_count
    from profiler.timing.specs import spec_for

    asked = args.time or args.tokens or args.epochs is not None or args.dataset_tokens or \
        args.price_per_hour is not None
    if not asked:
        return None
    if args.tokens and (args.epochs is not None or args.dataset_tokens):
        raise ConfigError("--tokens: give either --tokens N or --epochs E with --dataset-tokens N, not both")
    if (args.epochs is None) != (args.dataset_tokens is None):
        raise ConfigError("--epochs: needs --dataset-tokens N (and --dataset-tokens needs --epochs E)")
    if args.epochs is not None and not (args.epochs > 0 and math.isfinite(args.epochs)):
        raise ConfigError(f"--epochs: {args.epochs} is not allowed; allowed: a number above 0")
    if args.price_per_hour is not None and not (args.price_per_hour >= 0 and math.isfinite(args.price_per_hour)):
        raise ConfigError(f"--price-per-hour: {args.price_per_hour} is not allowed; allowed: a number >= 0")
    tokens, how = None, ""
    if args.tokens:
        tokens, how = parse_count(args.tokens, "--tokens"), f"--tokens {args.tokens}"
    elif args.epochs is not None:
        per_epoch = parse_count(args.dataset_tokens, "--dataset-tokens")
        tokens, how = math.ceil(args.epochs * per_epoch), f"{args.epochs:g} epochs x {per_epoch:,} tokens"
    if args.price_per_hour is not None and tokens is None:
        raise ConfigError("--price-per-hour: needs a token count (--tokens N, or --epochs E --dataset-tokens N)")
    if gpu.device_name is None:
        raise ConfigError("--gpu: a time estimate needs a GPU preset with a datasheet row (--gpu NAME), not "
                          "--gpu-memory")
    spec_for(gpu.name)  # ConfigError where the preset has no datasheet row
    return TimingRequest(gpu.name, tokens, args.price_per_hour, how)


def time_answer(res, req: TimingRequest):
    """The estimate for the verdict's config (FitResult.work, counted in its simulation)."""
    from profiler.config import RunConfig
    from profiler.timing.estimate import time_to_train

    if res.work is None:
        from profiler.predict.fit import SimulationFailed

        raise SimulationFailed("timing: the simulation counted no work for this config")
    t = time_to_train(res.work, RunConfig.model_validate(res.config), req.gpu, req.tokens, req.price)
    if res.optimizer.endswith("8bit"):  # simulated as adamw (see FitResult.notes)
        t.model += "; the optimizer step is adamw's (an 8-bit step cannot run on fake tensors: it moves fewer bytes)"
    return t


def _duration(hours: float) -> str:
    if hours * 60 < 1:
        return f"{hours * 3600:.1f} s"
    if hours < 1:
        return f"{hours * 60:.1f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days"


def render_timing(t, out=None) -> None:
    from rich.console import Console

    c = Console(file=out, width=120, soft_wrap=True, markup=False, highlight=False)
    st = t.step
    per = f" per rank, {st.world_size} GPUs" if st.world_size > 1 else ""
    c.print("time (estimated, not measured):", style="bold")
    c.print(f"  step {st.step_s:.3f} s{per} | {st.tokens_per_s:,.0f} tokens/s ({st.tokens_per_s_per_gpu:,.0f} per GPU) "
            f"| MFU {st.mfu:.0%} (counted FLOPs incl. recompute / {st.dtype} peak)")
    parts = ", ".join(f"{k} {v:.3f} s" for k, v in st.parts_s.items())
    bound = ", ".join(f"{k} {v}-bound" for k, v in st.bound.items())
    c.print(f"  where it goes: {parts} (communication overlaps compute); {bound}")
    if t.tokens is not None:
        gh = f"{t.gpu_hours:,.1f}" if t.gpu_hours >= 10 else f"{t.gpu_hours:.3g}"
        c.print(f"  {t.tokens:,} tokens: {t.steps:,} steps, {_duration(t.hours)} wall, {gh} GPU-hours"
                + (f", cost {t.cost:,.2f} at {t.price_per_gpu_hour:g} per GPU-hour" if t.cost is not None else ""))
    c.print(f"  error band: {t.band}")
    c.print(f"  model: {t.model}")
