"""`python -m profiler trace [--steps K] [--mode M] -- python train.py ARGS`: profile a script's Trainers.

The script runs in a child Python whose start-up (profiler/integrations/bootstrap/sitecustomize.py) adds a
MemoryProfilerCallback to every `transformers.Trainer` (and TRL trainer) it builds. Its output and exit
code pass through unchanged; the lines go to `<output_dir>/memprof.jsonl` unless `--output` says where.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from profiler.config import REPO_ROOT
from profiler.measure.track import MODES

BOOTSTRAP = Path(__file__).resolve().parents[1] / "integrations" / "bootstrap"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", default="3", help="optimizer steps to profile per Trainer "
                        "(default 3; 'all' for every step, with --mode light)")
    parser.add_argument("--mode", default="breakdown", help=f"tracking mode: {', '.join(MODES)}")
    parser.add_argument("--output", help="JSONL file for the lines (default: <output_dir>/memprof.jsonl)")
    parser.add_argument("--picture", help="timeline PNG (default: <output_dir>/memprof-timeline.png; "
                        "'none': no picture)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- python train.py ARGS")
    # the command after `--` must reach the script untouched: the CLI's intermixed parsing would take its options
    parser.parse_intermixed_args = parser.parse_args


def main(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("error: command: nothing to run; allowed: -- python SCRIPT [ARGS]", file=sys.stderr)
        return 2
    if args.mode not in MODES:
        print(f"error: --mode: {args.mode!r} is not a tracking mode; allowed: {', '.join(MODES)}", file=sys.stderr)
        return 2
    if args.steps != "all" and not (args.steps.isdigit() and int(args.steps) > 0):
        print(f"error: --steps: {args.steps!r} is not a step count; allowed: a positive integer or 'all'",
              file=sys.stderr)
        return 2
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(BOOTSTRAP), str(REPO_ROOT)] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(LLM_MEMPROF_TRACE_STEPS=args.steps, LLM_MEMPROF_TRACE_MODE=args.mode,
               LLM_MEMPROF_TRACE_OUTPUT=args.output or "", LLM_MEMPROF_TRACE_PICTURE=args.picture or "")
    if command[0] in ("python", "python3"):
        command = [sys.executable, *command[1:]]  # the interpreter this profiler runs in
    try:
        return subprocess.run(command, env=env).returncode
    except FileNotFoundError:
        print(f"error: command: {command[0]!r} not found; allowed: an executable, e.g. python", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
