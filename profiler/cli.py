"""`python -m profiler COMMAND ...`: one module per command, imported only when that command runs."""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("profiler.commands.run", "measure one config for real (CUDA or CPU) and append a result line"),
    "simulate": ("profiler.commands.simulate", "run the same harness on fake tensors: any model size, no GPU"),
    "estimate": ("profiler.commands.estimate", "predict memory with the named formulas; fit check, max batch/seq"),
    "compare": ("profiler.commands.compare", "measured vs every estimator: tables and plots"),
    "sweep": ("profiler.commands.sweep", "run a grid of configs, each in its own subprocess; resumable"),
    "calibrate": ("profiler.commands.calibrate", "fit correction factors from result lines"),
    "trace": ("profiler.commands.trace", "run a training script; profile the first steps of every Trainer it builds"),
    "timeline": ("profiler.commands.timeline", "draw one result line's memory by phase and category (PNG)"),
    "env": ("profiler.commands.env", "print what a result line would record about this machine"),
    "fit": ("profiler.commands.fit", "does it fit on my GPU? one verdict, max batch / seq, what would make it fit"),
    "validate": ("profiler.commands.validate", "every prediction against published GPU measurements: error by group"),
}


class OneLineParser(argparse.ArgumentParser):
    """Bad flags give one line naming the problem (exit 2), not a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        message = message.replace("config, overrides", "config")  # argparse lists the optional nargs="*" too
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def prog_name(argv0: str | None = None) -> str:
    """`llm-memprof` when run as the console script, `python -m profiler` otherwise."""
    import os

    name = os.path.basename(argv0 if argv0 is not None else sys.argv[0])
    return "llm-memprof" if name.startswith("llm-memprof") else "python -m profiler"


def _usage() -> str:
    width = max(map(len, COMMANDS))
    prog = prog_name()
    lines = [f"usage: {prog} COMMAND [args] ({prog} COMMAND --help; {prog} --version)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def parse(argv: list[str]):
    """(the command's module, its parsed arguments) for argv = [COMMAND, ...], running nothing: what `main` runs,
    and what tests/docs/test_doc_commands.py checks every documented command against. A bad flag exits 2 (one
    line), as in `main`."""
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    parser = OneLineParser(prog=f"{prog_name()} {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    # intermixed: `run CFG --output x.jsonl train.batch_size=4` works like `run CFG train.batch_size=4 --output ...`
    return module, parser.parse_intermixed_args(argv[1:])


def main(argv: list[str] | None = None) -> int:
    as_program = argv is None  # the process is this command (not a caller's Python, e.g. a test)
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from profiler import __version__

        print(f"llm-memprof {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        hint = difflib.get_close_matches(name, COMMANDS, n=1)
        print(f"error: unknown command {name!r}; allowed: {', '.join(COMMANDS)}"
              + (f"; did you mean {hint[0]!r}?" if hint else ""), file=sys.stderr)
        return 2
    module, args = parse(argv)
    try:
        return int(module.main(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C: one line and the shell's code, no traceback
        if as_program:  # stopping already: a second Ctrl-C must not turn exit 130 into death by SIGINT while
            import signal  # Python shuts down (the default handler is back by then)

            signal.signal(signal.SIGINT, signal.SIG_IGN)
        print(f"interrupted: {name} stopped", file=sys.stderr)
        return 130
