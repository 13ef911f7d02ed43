"""`python -m profiler simulate CONFIG [key=value ...]`: the measured run's harness on fake tensors.

The result line (backend fake) goes to ./results/simulated/<device>.jsonl, never beside measured lines.
Exit codes: 0 ok or oom (a simulated OOM with max_memory), 1 error (recorded) or the line could not be
written (printed on stderr), 2 bad input or an unusable --output (checked before the run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from profiler.config import ConfigError, RunConfig, ignored_note, load_config
from profiler.results import RESULTS_DIR, OutputError, check_output
from profiler.simulate.backend import simulate

SIMULATED_DIR = RESULTS_DIR / "simulated"  # under the working directory


def default_output(cfg: RunConfig) -> Path:
    return SIMULATED_DIR / f"{cfg.device}.jsonl"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="run config YAML (see configs/); device cuda simulates a CUDA run "
                        "(may be left out with --from and model.arch=... or model.hub=...)")
    parser.add_argument("--from", dest="from_file", metavar="FILE",
                        help="a TRL / Trainer / axolotl / LLaMA-Factory / accelerate / DeepSpeed config to start from "
                        "(under CONFIG's keys; what it maps and ignores goes to stderr)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.seq_len=4096")
    parser.add_argument("--output", help="JSONL file to append to (default ./results/simulated/<device>.jsonl)")
    parser.add_argument("--quiet", action="store_true", help="no table")
    from profiler.recipes.options import add_recipe_argument

    add_recipe_argument(parser)
    # the dry-run of the user's own script: `simulate [--gpu NAME] [--steps N] -- python train.py ARGS`
    parser.add_argument("--gpu", help="dry-run: GPU preset for the verdict (e.g. rtx4090; 'cpu': CPU semantics)")
    parser.add_argument("--steps", default="2", help="dry-run: measured optimizer steps after 1 warm-up (default 2)")
    parser.epilog = ("dry-run of your own script: simulate [--gpu NAME] [--steps N] [--output F] -- python SCRIPT "
                     "ARGS (docs/dryrun.md)")
    native = parser.parse_intermixed_args  # `CFG --output f key=value` as before

    def parse(argv=None, namespace=None):  # what follows `--` reaches the script untouched
        argv = list(sys.argv[2:] if argv is None else argv)
        if "--" not in argv:
            ns = native(argv, namespace)
            ns.command = None
            return ns
        i = argv.index("--")
        ns = native(argv[:i], namespace)
        ns.command = argv[i + 1:]
        return ns

    parser.parse_intermixed_args = parse


def main(args: argparse.Namespace) -> int:
    if getattr(args, "command", None) is not None:
        from profiler.dryrun.run import run as dryrun

        if args.config is not None or args.overrides:
            print("error: command: give a run config or `-- python SCRIPT ARGS`, not both", file=sys.stderr)
            return 2
        return dryrun(args)
    if args.config is None and not getattr(args, "from_file", None):
        print("error: config: missing; allowed: a run config YAML, --from FILE, or `-- python SCRIPT ARGS` for a "
              "dry-run",
              file=sys.stderr)
        return 2
    from profiler.measure.quiet import quiet_libraries

    quiet_libraries()
    try:
        base = None
        if args.config and "=" in args.config and not Path(args.config).exists():  # `--from F key=value ...`
            args.overrides, args.config = [args.config, *args.overrides], None
        if getattr(args, "from_file", None):
            from profiler.recipes.from_file import cli_base

            base = cli_base(args.from_file, args.config, args.overrides)
        elif args.config is None:
            raise ConfigError("CONFIG: required (a run config YAML), unless --from gives a starting point")
        cfg = load_config(args.config, args.overrides, base=base, recipe=getattr(args, "recipe", None))
        if (note := ignored_note(cfg)) is not None:
            print(note, file=sys.stderr)
        # cfg.output names measured files: not used here
        out = args.output if args.output is not None else str(default_output(cfg))
        check_output(out, "--output")  # before the run
        record = simulate(cfg)
    except (ConfigError, OutputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from profiler.results import append_or_report
    from profiler.schema import RunRecord

    RunRecord.model_validate(record)
    if not append_or_report(out, record):
        return 1
    if not args.quiet:
        from profiler.summary import print_summary

        print_summary(record, out)
    elif record["status"] == "error":
        print(f"error: {record['error']}", file=sys.stderr)
    return 0 if record["status"] in ("ok", "oom") else 1
