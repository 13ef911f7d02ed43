"""`python -m profiler run CONFIG [key=value ...]`: measure one config and append its result line.

Exit codes: 0 ok or oom (an OOM is a result), 1 error (still recorded) or the line could not be written (the
record is then printed on stderr), 2 bad input or an output that cannot take lines (checked before the run).
"""

from __future__ import annotations

import argparse
import os
import sys

from profiler.config import ConfigError, ignored_note, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run config YAML (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.batch_size=4 device=cpu")
    parser.add_argument("--output", help="JSONL file to append to: a regular file or a new path (default: "
                        "./results/runs/<device>.jsonl)")
    parser.add_argument("--memory-snapshot", metavar="FILE",
                        help="CUDA: dump torch.cuda.memory._snapshot() (open in pytorch.org/memory_viz)")
    parser.add_argument("--no-tracker", action="store_true",
                        help="CUDA: skip the per-category breakdown (the tracker adds per-op Python overhead)")
    parser.add_argument("--quiet", action="store_true", help="no table, no progress bar")


def main(args: argparse.Namespace) -> int:
    if _is_rank():  # SIGKILL when torchrun goes (it starts each rank in its own session): no orphan, no late line
        from profiler.lifeline import die_with_parent

        die_with_parent()
    rc = _measure(args)
    if _is_rank():  # a torchrun rank: leave now, before interpreter teardown can abort a gloo/DDP thread
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc


def _is_rank() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ


def _measure(args: argparse.Namespace) -> int:
    from profiler.measure.quiet import quiet_libraries
    from profiler.results import RUNS_DIR, OutputError, check_directory, check_output

    quiet_libraries()
    try:
        cfg = load_config(args.config, args.overrides)
        if (note := ignored_note(cfg)) is not None and "LOCAL_RANK" not in os.environ:  # once, not per rank
            print(note, file=sys.stderr)
        if args.output is not None:
            cfg.output = args.output
        if cfg.output is not None:  # checked before the run: a measured record is never lost at the end
            check_output(cfg.output, "--output" if args.output is not None else "output")
        else:  # the file name needs the device slug (known after the run): check its directory now
            check_directory(RUNS_DIR, "default output directory")
        if args.memory_snapshot and cfg.device != "cuda":
            raise ConfigError("--memory-snapshot: needs device cuda")
        from profiler.measure.loading import check_cache

        check_cache(cfg)  # a cache that cannot take the QLoRA checkpoint: bad input, found before the run
        use_tracker = not args.no_tracker
        record = None
        if cfg.parallel.strategy != "none":  # N ranks through torchrun; rank 0 writes the line
            from profiler.measure import parallel

            if not parallel.under_torchrun():  # the launcher: writes the line only when a failed rank left it
                rc, record = parallel.launch(cfg, _argv(args))
                if record is None:
                    return rc
            else:
                parallel.init_real(cfg)
                args.quiet = args.quiet or parallel.rank() != 0
        if record is None:
            record = _run_with_progress(cfg, use_tracker, args.memory_snapshot, quiet=args.quiet)
            if cfg.parallel.strategy != "none" and not parallel.finish(record):
                return 0 if record["status"] in ("ok", "oom") else 1  # not rank 0: nothing to write
    except (ConfigError, OutputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from profiler.results import append_or_report, default_output
    from profiler.schema import RunRecord

    RunRecord.model_validate(record)  # a schema drift fails here, before a bad line is written
    out = cfg.output or str(default_output(record["env"]["device_slug"]))
    if not append_or_report(out, record):
        return 1
    if _is_rank() and cfg.parallel.strategy != "none":
        parallel.mark_written()
    if not args.quiet:
        from profiler.summary import print_summary

        print_summary(record, out)
    elif record["status"] == "error":  # exit 1 says why, even with --quiet (the line holds the rest)
        print(f"error: run ended with status error: {(str(record.get('error') or '').splitlines() or ['?'])[0][:300]}",
              file=sys.stderr)
    return 0 if record["status"] in ("ok", "oom") else 1


def _argv(args: argparse.Namespace) -> list[str]:
    """The command line again, for each rank torchrun starts."""
    out = [args.config, *args.overrides]
    out += ["--output", args.output] if args.output else []
    out += ["--memory-snapshot", args.memory_snapshot] if args.memory_snapshot else []
    out += [flag for flag, on in (("--no-tracker", args.no_tracker), ("--quiet", args.quiet)) if on]
    return out


def _run_with_progress(cfg, use_tracker, snapshot, quiet: bool) -> dict:
    from profiler.measure.harness import run

    if quiet or not sys.stdout.isatty():  # a progress bar only where a person watches a terminal
        return run(cfg, use_tracker=use_tracker, snapshot_path=snapshot)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(f"{cfg.model.name} {cfg.regime.label}: loading", total=None)

        def on_step(done: int, total: int) -> None:
            progress.update(task, description=f"{cfg.model.name} {cfg.regime.label}: steps", completed=done,
                            total=total)

        return run(cfg, use_tracker=use_tracker, snapshot_path=snapshot, on_step=on_step)
