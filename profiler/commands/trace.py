"""`python -m profiler trace [--steps K] [--mode M] -- python train.py ARGS`: profile a script's Trainers.

The script runs in a child Python whose start-up (profiler/integrations/bootstrap/sitecustomize.py) adds a
MemoryProfilerCallback to every `transformers.Trainer` (and TRL trainer) it builds. Its output and exit
code pass through unchanged (a script killed by signal N: exit 128 + N and one line naming the signal);
the lines go to `<output_dir>/memprof.jsonl` unless `--output` says where (checked before the script runs).
The script dies with trace (kill -KILL included); SIGTERM to trace is passed on to it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from profiler.config import REPO_ROOT
from profiler.lifeline import preexec_hook, signal_exit
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
    if args.output is not None:  # checked before the script runs, not after its training
        from profiler.results import OutputError, check_output

        try:
            check_output(args.output, "--output")
        except OutputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(BOOTSTRAP), str(REPO_ROOT)] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(LLM_MEMPROF_TRACE_STEPS=args.steps, LLM_MEMPROF_TRACE_MODE=args.mode,
               LLM_MEMPROF_TRACE_OUTPUT=args.output or "", LLM_MEMPROF_TRACE_PICTURE=args.picture or "")
    if command[0] in ("python", "python3"):
        command = [sys.executable, *command[1:]]  # the interpreter this profiler runs in
    try:
        proc = subprocess.Popen(command, env=env, preexec_fn=preexec_hook())  # noqa: PLW1509 - no threads here
    except FileNotFoundError:
        print(f"error: command: {command[0]!r} not found; allowed: an executable, e.g. python", file=sys.stderr)
        return 2
    except OSError as exc:  # a directory, a file without the execute bit, not a program (ENOEXEC)
        print(f"error: command: {command[0]!r} cannot be run ({exc.strerror}); allowed: an executable, e.g. "
              f"python SCRIPT", file=sys.stderr)
        return 2
    rc = _wait(proc)
    code, message = signal_exit(rc, f"command {os.path.basename(command[0])!r}")
    if message:
        print(message, file=sys.stderr)
    return code


def _wait(proc: subprocess.Popen) -> int:
    """The script's return code. SIGTERM to trace is passed on to the script (trace then reports how it
    ended); on Ctrl-C the script, which got it too when in the terminal's group, has a moment to stop, then
    gets SIGINT, then SIGKILL; kill -KILL of trace ends the script by PR_SET_PDEATHSIG."""
    old = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signal.SIGTERM))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        for sig, grace in ((None, 0.5), (signal.SIGINT, 10.0), (signal.SIGKILL, None)):
            if sig is not None and proc.poll() is None:
                proc.send_signal(sig)
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        raise  # the CLI prints one "interrupted" line, exit 130
    finally:
        signal.signal(signal.SIGTERM, old)
