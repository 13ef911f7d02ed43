"""The parent side of `simulate [--gpu NAME] [--steps N] [--output F] -- python SCRIPT ARGS` (the dry-run).

The script runs for real in a child Python whose start-up (profiler/dryrun/bootstrap/sitecustomize.py) makes
its models fake (profiler.dryrun.child: config.json only, no weights, HF_HUB_OFFLINE=1) and stops it after N
optimizer steps. This side checks the input, runs the child, adds the verdict against the GPU and writes one
line (backend fake) to results/simulated/<device>.jsonl or --output. Exit 0 ok, 2 bad input or a stop the
child explained in one line (printed here), 1 the script ended otherwise (its own exit code is named).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from profiler.config import REPO_ROOT

BOOTSTRAP = Path(__file__).resolve().parent / "bootstrap"
LAUNCHERS = ("accelerate", "torchrun", "deepspeed")


def _err(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _launcher(command: list[str]) -> str | None:
    """Why this launcher cannot be dry-run yet (None: a plain `python SCRIPT`)."""
    exe = os.path.basename(command[0])
    if exe in LAUNCHERS or (exe.startswith("python") and command[1:3] in (["-m", "torch.distributed.run"],
                                                                          ["-m", "accelerate.commands.launch"])):
        return (f"command: launcher {exe!r} is not supported yet by the dry-run (multi-process launches, "
                f"--num_processes / --nproc_per_node and accelerate config files); run the script as "
                f"`-- python SCRIPT ARGS` (one process), or `simulate CONFIG` with parallel.world_size for FSDP2/DDP")
    if not exe.startswith("python"):
        return f"command: {command[0]!r} is not a Python interpreter; allowed: -- python SCRIPT ARGS"
    if len(command) < 2 or command[1].startswith("-"):
        return "command: no script to run; allowed: -- python SCRIPT ARGS"
    return None


def verdict(record: dict, gpu) -> dict:
    """Fit's usable memory (total less the CUDA context, profiler.allocator.context) against the simulated
    allocated peak. No allocator reserve is added here (fit adds the replayed reserve): the margin says so."""
    from profiler.allocator.context import cuda_context

    ctx = cuda_context()
    usable = gpu.total_bytes - ctx.bytes
    peak = record["peaks"]["peak_allocated_bytes"]
    gib = 2**30
    fits = peak <= usable
    return {"gpu": gpu.name, "total_bytes": gpu.total_bytes, "context_bytes": ctx.bytes, "usable_bytes": usable,
            "peak_allocated_bytes": peak, "fits": fits,
            "text": (f"{'fits' if fits else 'does not fit'}: simulated allocated peak {peak / gib:.2f} GiB of "
                     f"{usable / gib:.2f} GiB usable on {gpu.name} ({gpu.total_bytes / gib:.2f} GiB less "
                     f"{ctx.label()}); the caching allocator's reserve is not included")}


def run(args) -> int:
    """The dry-run of `args.command` (argv after `--`)."""
    command = list(args.command)
    if not command:
        return _err("command: nothing to run; allowed: -- python SCRIPT ARGS")
    if (why := _launcher(command)) is not None:
        return _err(why)
    if not (args.steps.isdigit() and int(args.steps) > 0):
        return _err(f"--steps: {args.steps!r} is not a step count; allowed: a positive integer (measured steps "
                    f"after 1 warm-up)")
    from profiler.config import ConfigError
    from profiler.predict.gpus import gpu_by_name
    from profiler.results import OutputError, check_output

    try:
        gpu = gpu_by_name(args.gpu) if args.gpu not in (None, "cpu") else None
    except ConfigError as exc:
        return _err(str(exc))
    target = "cpu" if args.gpu == "cpu" else "cuda"
    out = args.output or str(Path("results") / "simulated" / f"{target}.jsonl")
    try:
        check_output(out, "--output")
    except OutputError as exc:
        return _err(str(exc))
    with tempfile.TemporaryDirectory(prefix="llm-memprof-dryrun-") as tmp:
        result = Path(tmp) / "result.json"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(BOOTSTRAP), str(REPO_ROOT)] +
                                            ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env.update(LLM_MEMPROF_DRYRUN_RESULT=str(result), LLM_MEMPROF_DRYRUN_STEPS=str(1 + int(args.steps)),
                   LLM_MEMPROF_DRYRUN_WARMUP="1", LLM_MEMPROF_DRYRUN_TARGET=target,
                   LLM_MEMPROF_DRYRUN_SCRIPT=os.path.abspath(command[1]), HF_HUB_OFFLINE="1",
                   LLM_MEMPROF_DRYRUN_ARCH=gpu.arch if gpu is not None else "auto",
                   LLM_MEMPROF_DRYRUN_GPU=gpu.name if gpu is not None else "")
        exe = sys.executable  # the interpreter this profiler runs in
        try:
            rc = subprocess.run([exe, *command[1:]], env=env).returncode
        except KeyboardInterrupt:
            raise
        if not result.is_file():
            print(f"error: the script ended (exit {rc}) before {1 + int(args.steps)} optimizer steps; nothing "
                  f"was recorded (a script that never steps an optimizer, or a failure above)", file=sys.stderr)
            return 2 if rc == 2 else 1
        payload = json.loads(result.read_text())
    if "error" in payload:
        return _err(payload["error"])
    record = payload["record"]
    record.update(backend="fake", source="dryrun", simulated_device=target)
    record["env"]["device"] = "cpu (fake tensors)"
    record["config"]["device"] = target  # the tracker inferred it from the (fake CPU) parameters
    if gpu is not None:
        record["dryrun"]["verdict"] = verdict(record, gpu)
    from profiler.results import append_or_report
    from profiler.schema import RunRecord

    RunRecord.model_validate(record)
    if not append_or_report(out, record):
        return 1
    if not args.quiet:
        _print(record, out)
    return 0


def _print(record: dict, out: str) -> None:
    from rich.console import Console
    from rich.table import Table

    mib = 2**20
    console = Console(width=140)
    steps = sorted({p["step"] for p in record["phases"]})
    table = Table(title=f"dry-run on fake tensors ({record['simulated_device']} semantics): peak allocated per phase, "
                        f"MiB (simulated)")
    for col in ("step", "phase", "peak MiB", "largest category at the peak"):
        table.add_column(col)
    for p in record["phases"]:
        cats = p.get("breakdown_at_peak") or p.get("breakdown") or {}
        top = max(cats.items(), key=lambda kv: kv[1]) if cats else ("", 0)
        table.add_row(str(p["step"]) + (" (warm-up)" if p.get("warmup") else ""), p["phase"],
                      f"{p['peak_allocated_bytes'] / mib:,.1f}", f"{top[0]} {top[1] / mib:,.1f}" if cats else "")
    console.print(table)
    d = record["dryrun"]
    lens = sorted({tuple(s) for s in d["seq_lens"]})
    console.print(f"batches (batch, seq) seen: {', '.join(map(str, lens)) or 'none'}; optimizer steps "
                  f"{d['optimizer_steps']} ({len(steps)} profiled); "
                  f"attention kernels: {d['attention_kernels'] or 'none'}")
    if "verdict" in d:
        console.print(d["verdict"]["text"])
    console.print(f"line appended to {out}")
