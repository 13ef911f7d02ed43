"""Sweeps: a base config times a grid, each entry measured in its own subprocess, resumable.

    python -m profiler sweep configs/sweeps/nightly.yaml [key.sub=value ...] [--output FILE.jsonl]

A sweep file (documented in the README, "Sweeps, calibration and the nightly job")::

    base: {device: cuda, model: {arch: qwen2.5-0.5b}}   # or base_config: configs/x.yaml (or both)
    grid:                                               # a mapping, or a list of mappings (union)
      regime.kind: [full, lora]
      train.seq_len: [512, 2048]
    timeout_s: 900                                      # per entry; a timeout is recorded as status timeout
    output: results/runs/nightly.jsonl                  # optional; default ./results/runs/<device-slug>.jsonl

Relative paths (--output, output:, base_config, a model.arch config.json, model.path) are resolved against
the caller's working directory before any runner sees them (base_config falls back to the project's
shipped configs/); the output is checked before anything runs.

Every entry is validated before anything runs (one bad entry: a one-line error naming it, exit 2).
Entries with the same config hash are one entry; entries whose hash is already in the output are skipped,
so an interrupted sweep resumes without lost or duplicated lines. Each entry runs as
`python -m profiler run ENTRY.yaml --output FILE` (which appends its own line); a line the runner never
wrote (timeout, crash) is written here with status timeout/error.
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import itertools
import json
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from profiler.config import REPO_ROOT, ConfigError, RunConfig, load_config, read_yaml
from profiler.lifeline import preexec_hook
from profiler.results import OutputError, check_output, lock_path, read_records, slugify
from profiler.schema import RunRecord

RUNNER_ENV = "MEMPROF_SWEEP_RUNNER"  # shlex-split command prefix replacing `python -m profiler run`
SWEEP_KEYS = {"base", "base_config", "grid", "timeout_s", "output"}
DEFAULT_TIMEOUT_S = 900.0
MAX_GRID_POINTS = 10_000  # validating one takes ~1-2 ms, running one minutes: past this a grid is a typo
MAX_TIMEOUT_S = 7 * 24 * 3600.0  # a week: past that, a "timeout" is a typo (and inf overflows the wait)
EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130


class SweepError(ConfigError):
    """A one-line, user-facing sweep-file error (exit code 2, nothing run)."""


@dataclass
class Entry:
    """One point of the grid, validated."""

    index: int  # 1-based position in the expanded grid (after de-duplication)
    overrides: dict[str, Any]  # dotted key -> value from the grid (and the command line)
    config: RunConfig
    config_hash: str

    @property
    def label(self) -> str:
        c = self.config
        gc = " gc" if c.train.gradient_checkpointing else ""
        pc = c.parallel
        par = f" {pc.strategy}x{pc.world_size}" if pc.strategy != "none" else ""
        return (f"{c.model.name} {c.regime.label} {c.optimizer.name} "
                f"b{c.train.batch_size} s{c.train.seq_len}{gc}{par}")


@dataclass
class Plan:
    path: Path
    entries: list[Entry]
    timeout_s: float
    output: Path | None  # None: resolved from the device at run time
    duplicates: int = 0  # grid points that collapsed onto an earlier entry's hash
    refused: list[tuple[Entry, str]] = field(default_factory=list)


# ---------------------------------------------------------------- plan: expand and validate the grid


def _grids(raw: Any, where: str) -> list[dict[str, list]]:
    grids = raw if isinstance(raw, list) else [raw]
    if not grids:
        raise SweepError(f"{where}: grid is empty; give dotted keys to lists of values")
    out = []
    for i, g in enumerate(grids):
        name = f"{where}: grid" + (f"[{i}]" if isinstance(raw, list) else "")
        if not isinstance(g, dict) or not g:
            raise SweepError(f"{name} must be a non-empty mapping of dotted keys to lists of values")
        for key, values in g.items():
            if not isinstance(values, list) or not values:
                raise SweepError(f"{name}.{key}: must be a non-empty list of values, got {values!r}")
        out.append(g)
    return out


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is YAML: strings stay strings, lists stay lists


def load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
               output: str | Path | None = None, timeout_s: float | None = None, recipe: str | None = None) -> Plan:
    """Read and expand a sweep file; every entry validated; SweepError (one line) on any problem."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {str(path)!r} does not exist")
    doc = _read_yaml(path, "sweep file")
    if not isinstance(doc, dict):
        raise SweepError(f"{path}: top level must be a mapping with keys {', '.join(sorted(SWEEP_KEYS))}")
    unknown = sorted(set(doc) - SWEEP_KEYS)
    if unknown:
        raise SweepError(f"{path}: unknown key {unknown[0]!r}; allowed keys: {', '.join(sorted(SWEEP_KEYS))}")
    if "grid" not in doc:
        raise SweepError(f"{path}: 'grid' is missing (dotted keys to lists of values)")
    for key in ("base_config", "output"):
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise SweepError(f"{path}: {key} must be a file path, got {doc[key]!r}")
    raw_timeout = doc.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(raw_timeout, bool) or not isinstance(raw_timeout, int | float):
        raise SweepError(f"{path}: timeout_s must be a number of seconds > 0, got {raw_timeout!r}")
    timeout = _check_timeout(timeout_s if timeout_s is not None else raw_timeout,
                             "--timeout" if timeout_s is not None else f"{path}: timeout_s")
    base: dict = {}
    if doc.get("base_config"):
        bc = _find_base_config(doc["base_config"])
        if bc is None:
            raise SweepError(f"{path}: base_config {doc['base_config']!r} does not exist (relative paths: "
                             f"the working directory {os.getcwd()!r}, then {str(REPO_ROOT)!r})")
        base = _read_yaml(bc, f"{path}: base_config") or {}
        if not isinstance(base, dict):
            raise SweepError(f"{path}: base_config {str(bc)!r}: top level must be a mapping (a run config)")
    if doc.get("base") is not None:
        if not isinstance(doc["base"], dict):
            raise SweepError(f"{path}: base must be a mapping (a run config)")
        base = _merge(base, doc["base"])
    if recipe is not None:  # --recipe: every entry's recipe (a grid over `recipe` would contradict it)
        if any("recipe" in g for g in _grids(doc["grid"], str(path))):
            raise SweepError(f"--recipe: {recipe} conflicts with the grid key 'recipe' of {path}; give one of them")
        from profiler.recipes.options import recipe_into

        try:
            base = recipe_into(base, recipe, overrides)
        except ConfigError as err:
            raise SweepError(str(err)) from None

    grids = _grids(doc["grid"], str(path))
    total = sum(math.prod(len(v) for v in g.values()) for g in grids)
    if total > MAX_GRID_POINTS:  # refused before expanding: each point is validated (~1 ms), then run for real
        sizes = " + ".join(" x ".join(str(len(v)) for v in g.values()) for g in grids)
        raise SweepError(f"{path}: grid: {total:,} points ({sizes}); allowed: at most {MAX_GRID_POINTS:,} "
                         "(each entry is a real run): split the sweep into several files")
    if total > 1000:
        print(f"sweep {path}: validating {total:,} grid points ...", file=sys.stderr, flush=True)
    entries: list[Entry] = []
    seen: set[str] = set()
    duplicates = 0
    points = 0
    for grid in grids:
        keys = list(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            points += 1
            chosen = dict(zip(keys, values, strict=True))
            args = [_override(k, v) for k, v in chosen.items()] + list(overrides)
            try:
                # deep copy: load_config's dotted overrides write into nested dicts of `base`
                cfg = load_config(None, args, base=copy.deepcopy(base))
                if cfg.model.user_supplied:  # a broken or non-causal config.json fails here, not in a runner
                    from profiler.measure.loading import check_model_source  # torch: only when needed

                    check_model_source(cfg.model)
            except ConfigError as err:
                shown = ", ".join(f"{k}={v}" for k, v in chosen.items())
                raise SweepError(f"{path}: entry {points} ({shown}): {err}") from None
            cfg = absolute_paths(cfg)  # the runner's working directory is not the caller's
            h = cfg.config_hash()
            if h in seen:
                duplicates += 1
                continue
            seen.add(h)
            for item in overrides:
                k, v = item.split("=", 1)
                chosen[k.strip()] = yaml.safe_load(v)
            entries.append(Entry(len(entries) + 1, chosen, cfg, h))
    out = output if output is not None else doc.get("output")
    if out is None:
        outs = {e.config.output for e in entries}
        out = outs.pop() if len(outs) == 1 else None
    if out is not None:
        what = "--output" if output is not None else f"{path}: output"
        try:  # resolved against the caller's working directory, symlinks followed; nothing created yet
            out = check_output(out, what, create=False)
        except OutputError as exc:
            raise SweepError(str(exc)) from None
    return Plan(path, entries, timeout, out, duplicates)


def _read_yaml(path: Path, what: str) -> Any:
    """The config reader's checks (UTF-8, safe tags, unique keys), errors prefixed with what was read."""
    try:
        return read_yaml(path)
    except ConfigError as exc:
        raise SweepError(f"{what} {str(path)!r}: {exc}") from None


def _find_base_config(name: str) -> Path | None:
    """A relative base_config: the caller's working directory first, then the project's shipped files."""
    p = Path(name).expanduser()
    for candidate in ([p] if p.is_absolute() else [Path.cwd() / p, REPO_ROOT / p]):
        if candidate.is_file():
            return candidate.absolute()
    return None


def _check_timeout(value: float, what: str) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError, OverflowError):
        t = math.nan
    if not math.isfinite(t) or t <= 0 or t > MAX_TIMEOUT_S:
        raise SweepError(f"{what}: {value!r} is not allowed; give seconds > 0 and <= {MAX_TIMEOUT_S:g} (a week)")
    return t


def absolute_paths(cfg: RunConfig) -> RunConfig:
    """The config with every local path absolute (against the caller's working directory): an entry's
    runner runs elsewhere, and the config hash must not depend on where the sweep was started."""
    m = cfg.model
    model = {}
    if m.arch and m.arch.endswith(".json"):
        model["arch"] = str(Path(m.arch).expanduser().absolute())
    if m.path:
        model["path"] = str(Path(m.path).expanduser().absolute())
    update: dict[str, Any] = {"model": m.model_copy(update=model)} if model else {}
    if cfg.output:
        update["output"] = str(Path(cfg.output).expanduser().absolute())
    return cfg.model_copy(update=update) if update else cfg


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        nested = isinstance(v, dict) and isinstance(out.get(k), dict)
        out[k] = _merge(out[k], v) if nested else copy.deepcopy(v)
    return out


# ---------------------------------------------------------------- device, without a CUDA context here


def gpu_memory() -> tuple[str, int, int] | None:
    """(name, total bytes, free bytes) of the GPU the runs will use, via nvidia-smi (the sweep process
    must not create a CUDA context: it would sit in every child's NVML figures). None without a GPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    cmd = ["nvidia-smi", "--query-gpu=name,memory.total,memory.free", "--format=csv,noheader,nounits"]
    if visible:
        cmd += ["-i", visible]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True).stdout
        name, total, free = [s.strip() for s in out.strip().splitlines()[0].split(",")]
        return name, int(float(total)) * 2**20, int(float(free)) * 2**20  # nvidia-smi reports MiB
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def device_name(device: str) -> str | None:
    if device == "cpu":
        return "cpu"
    gpu = gpu_memory()
    return gpu[0] if gpu else None


def resolve_output(plan: Plan) -> Path:
    """The JSONL file the sweep resumes from and every entry appends to."""
    if plan.output is not None:
        return plan.output
    devices = {e.config.device for e in plan.entries}
    if len(devices) != 1:
        raise SweepError(f"{plan.path}: entries use devices {sorted(devices)}; give output: or --output")
    name = device_name(devices.pop())
    if name is None:
        raise SweepError(f"{plan.path}: cannot tell the GPU name (nvidia-smi failed); "
                         "give output: or --output")
    from profiler.results import default_output

    return default_output(slugify(name)).absolute()


def refuse_unsafe(plan: Plan, free_bytes: int | None, estimate_fn=None) -> None:
    """paged_adamw_8bit lives in CUDA managed memory: past the GPU's memory it pages to host and can
    stall the machine instead of raising an OOM. Such entries run only where the `components` estimate
    of the whole run fits in the free GPU memory; the others are moved to plan.refused with the reason."""
    keep = []
    for e in plan.entries:
        if not e.config.optimizer.name.startswith("paged"):
            keep.append(e)
            continue
        if free_bytes is None:
            plan.refused.append((e, "paged optimizer refused: free GPU memory unknown (nvidia-smi failed)"))
            continue
        try:
            if estimate_fn is None:
                from profiler.formulas import estimate as estimate_fn
            need = int(estimate_fn("components", e.config).total)
        except (ImportError, AttributeError, KeyError, ValueError, TypeError, NotImplementedError) as exc:
            plan.refused.append((e, f"paged optimizer refused: no components estimate ({exc})"))
            continue
        if need > free_bytes:
            why = (f"paged optimizer refused: estimate {need / 2**30:.1f} GiB > free "
                   f"{free_bytes / 2**30:.1f} GiB (it would page to host, not OOM)")
            plan.refused.append((e, why))
        else:
            keep.append(e)
    plan.entries = keep


# ---------------------------------------------------------------- results file


def done_hashes(output: Path, retry_errors: bool = False) -> dict[str, str]:
    """config_hash -> last status found in the output. With retry_errors, hashes whose every line is
    status error are left out (they run again)."""
    status: dict[str, list[str]] = {}
    for rec in read_records([output]):  # a damaged line never blocks a resume: skipped with one warning
        status.setdefault(rec["config_hash"], []).append(rec["status"])
    return {h: s[-1] for h, s in status.items() if not (retry_errors and set(s) == {"error"})}


def _light_env(cfg: RunConfig, gpu: tuple[str, int, int] | None) -> dict:
    """EnvInfo for lines the sweep writes itself (the runner died before writing one)."""
    if cfg.device == "cpu":
        name, total = "cpu", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    else:
        name, total = (gpu[0], gpu[1]) if gpu else ("unknown-gpu", None)

    def ver(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {"hostname": socket.gethostname(), "python": platform.python_version(),
            "torch": ver("torch") or "?",
            "transformers": ver("transformers"), "peft": ver("peft"), "bitsandbytes": ver("bitsandbytes"),
            "device_name": name, "device_total_bytes": total, "device_slug": slugify(name)}


def sweep_record(entry: Entry, status: str, error: str, started: float,
                 gpu: tuple[str, int, int] | None) -> dict:
    rec = RunRecord(
        run_id=uuid.uuid4().hex, timestamp=datetime.fromtimestamp(started, UTC).isoformat(),
        config_hash=entry.config_hash, config=entry.config.model_dump(mode="json"), status=status,
        error=error, backend="cpu" if entry.config.device == "cpu" else "cuda",
        env=_light_env(entry.config, gpu),
    )
    rec_dict = rec.model_dump(mode="json")
    rec_dict["written_by"] = "sweep"
    return rec_dict


def append_line(output: Path, record: dict) -> None:
    from profiler.results import append_or_report

    append_or_report(output, record)  # a failed write prints the line on stderr: never lost silently


# ---------------------------------------------------------------- running one entry


def runner_command(runner: list[str] | None = None) -> list[str]:
    """The runner's argv prefix; SweepError when its program cannot be found or run."""
    what = "--runner"
    if not runner and os.environ.get(RUNNER_ENV):
        runner, what = shlex.split(os.environ[RUNNER_ENV]), f"${RUNNER_ENV}"
    if not runner:
        return [sys.executable, "-m", "profiler", "run", "--quiet"]
    prog = runner[0]
    found = shutil.which(prog)
    if found is None:
        raise SweepError(f"{what}: program {prog!r} not found or not executable (give a command such as "
                         f"'{sys.executable} -m profiler run --quiet')")
    return [str(Path(found).absolute()) if os.sep in prog else prog, *runner[1:]]


TMP_PREFIX = "memprof-sweep-"  # an entry's config file lives in such a temporary directory while it runs
OWNER = ".owner"  # inside it: a file the sweep holds an exclusive flock on (the kernel drops it when it dies)


@contextmanager
def entry_dir(where: Path | None = None):
    """A temporary directory for one entry (in `where`, default the temp folder), marked as this sweep's by
    a locked `.owner` file (locked under a temporary name, then renamed: a directory's `.owner` is never
    seen unlocked while its sweep lives)."""
    with tempfile.TemporaryDirectory(prefix=TMP_PREFIX, dir=where) as tmp:
        fd = os.open(Path(tmp) / f"{OWNER}.new", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, str(os.getpid()).encode())
            os.rename(Path(tmp) / f"{OWNER}.new", Path(tmp) / OWNER)
            yield Path(tmp)
        finally:
            os.close(fd)


def remove_leftovers(where: str | Path | None = None) -> list[Path]:
    """Remove the `memprof-sweep-*` directories that a killed sweep (kill -KILL: no clean-up runs) left in
    the temp folder: this user's, whose `.owner` lock nobody holds. A running sweep's directory, whatever
    its process namespace, is locked and stays; a directory without `.owner` (being made, or from an older
    version) is left alone. Returns what was removed."""
    removed = []
    for d in Path(where or tempfile.gettempdir()).glob(f"{TMP_PREFIX}*"):
        try:
            if d.is_symlink() or not d.is_dir() or d.stat().st_uid != os.getuid():
                continue
            fd = os.open(d / OWNER, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its sweep is running
            continue
        finally:
            os.close(fd)
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


@dataclass
class Outcome:
    status: str
    seconds: float
    written_by: str  # "runner" or "sweep"
    detail: str = ""


def run_entry(entry: Entry, output: Path, timeout_s: float, runner: list[str],
              gpu: tuple[str, int, int] | None = None) -> Outcome:
    """Run one entry in a subprocess; make sure exactly one line for it ends up in `output`."""
    started = time.time()
    data = entry.config.model_dump(mode="json")
    data["output"] = str(output)
    size_before = output.stat().st_size if output.exists() else 0
    with entry_dir() as tmp:
        cfg_path = tmp / f"entry-{entry.index:04d}-{entry.config_hash}.yaml"
        header = f"# sweep entry {entry.index}: {entry.label}\n"
        cfg_path.write_text(header + yaml.safe_dump(data, sort_keys=False))
        cmd = runner + [str(cfg_path), "--output", str(output)]
        # own session: a timeout kills the runner's whole process group, and Ctrl-C reaches only us
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, preexec_fn=preexec_hook(),  # noqa: PLW1509
                                cwd=REPO_ROOT)  # the hook imports nothing, takes no lock
        try:
            log, _ = proc.communicate(timeout=timeout_s)
            rc: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            log, _ = proc.communicate()
            rc = None
        except BaseException:  # Ctrl-C, SIGTERM: the runner goes too, and writes nothing
            _kill_group(proc)
            proc.wait()
            raise
    seconds = time.time() - started
    new = read_records([output], offset=size_before) if output.exists() else []
    mine = [r for r in new if r.get("config_hash") == entry.config_hash]
    if mine:
        return Outcome(str(mine[-1].get("status")), seconds, "runner")
    tail = (log or "").strip()[-2000:]
    if new:  # the runner wrote a line under another identity: keep it, do not add a second one
        other = new[-1].get("config_hash")
        return Outcome(str(new[-1].get("status")), seconds, "runner",
                       f"warning: runner wrote config_hash {other}, sweep expected {entry.config_hash}")
    if rc is None:
        status = "timeout"
        error = f"no result after {timeout_s:g} s (per-entry timeout); output tail:\n{tail}"
    elif rc == 2:
        status, error = "error", f"runner rejected the config (exit 2): {tail}"
    else:
        status = "error"
        error = f"runner exited with code {rc} without writing a result; output tail:\n{tail}"
    append_line(output, sweep_record(entry, status, error, started, gpu))
    return Outcome(status, seconds, "sweep", tail.splitlines()[-1] if tail else "")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group of the runner we started (setsid above)
    except (ProcessLookupError, PermissionError):
        proc.kill()


# ---------------------------------------------------------------- the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", help="sweep file (configs/sweeps/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="applied to every entry, after the grid (e.g. train.steps=2)")
    parser.add_argument("--output", help="JSONL results file (default: the sweep's output:, else "
                                         "./results/runs/<device-slug>.jsonl)")
    parser.add_argument("--timeout", type=float, help="per-entry timeout in seconds (default: timeout_s)")
    parser.add_argument("--retry-errors", action="store_true",
                        help="run again entries whose lines are all status error")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; run nothing")
    parser.add_argument("--runner", help=f"command replacing 'python -m profiler run' (also ${RUNNER_ENV})")
    from profiler.recipes.options import add_recipe_argument

    add_recipe_argument(parser)


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True, soft_wrap=True)
    try:
        plan = load_sweep(args.sweep, args.overrides, args.output, args.timeout, getattr(args, "recipe", None))
        runner = runner_command(shlex.split(args.runner) if args.runner else None)
        output = check_output(resolve_output(plan), "output", create=not args.dry_run)  # after the runner
    except (ConfigError, OutputError) as err:
        console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False)
        return EXIT_CONFIG
    gpu = gpu_memory() if any(e.config.device == "cuda" for e in plan.entries) else None
    refuse_unsafe(plan, gpu[2] if gpu else None)
    for e, why in plan.refused:
        console.print(f"[yellow]refused[/yellow] entry {e.index} ({e.label}): {why}", highlight=False)
    done = done_hashes(output, args.retry_errors)
    todo = [e for e in plan.entries if e.config_hash not in done]
    console.print(f"sweep {plan.path}: {len(plan.entries)} entries ({plan.duplicates} duplicate grid points "
                  f"merged), {len(plan.entries) - len(todo)} already in {output}, {len(todo)} to run, "
                  f"timeout {plan.timeout_s:g} s each", highlight=False)
    if args.dry_run:
        for e in plan.entries:
            state = f"done ({done[e.config_hash]})" if e.config_hash in done else "todo"
            print(f"{e.index:4d}  {e.config_hash}  {state:12s}  {e.label}")
        return EXIT_OK
    if not todo:
        return EXIT_OK
    lock = _lock_output(output)
    if lock is None:
        console.print(f"[red]error:[/red] another sweep is writing {output}", highlight=False)
        return EXIT_CONFIG
    gone = remove_leftovers()
    if gone:
        console.print(f"removed {len(gone)} temporary folder(s) left by killed sweeps ({gone[0]} ...)",
                      highlight=False)
    return _run_all(todo, output, plan.timeout_s, runner, gpu, console)


def _lock_output(output: Path):
    """Held for the sweep's life; beside the resolved file, so a sweep through a symlink and one through
    the real name exclude each other."""
    f = open(lock_path(output, "sweep.lock"), "a")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def _run_all(todo: list[Entry], output: Path, timeout_s: float, runner: list[str],
             gpu: tuple[str, int, int] | None, console) -> int:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    counts: dict[str, int] = {}
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    try:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("sweep", total=len(todo))
            for e in todo:
                progress.update(task, description=f"[{e.index}] {e.label}")
                out = run_entry(e, output, timeout_s, runner, gpu)
                counts[out.status] = counts.get(out.status, 0) + 1
                color = {"ok": "green", "oom": "yellow"}.get(out.status, "red")
                extra = f" (line written by the sweep: {out.detail})" if out.written_by == "sweep" else (
                    f" ({out.detail})" if out.detail else "")
                progress.console.print(f"[{color}]{out.status:7s}[/{color}] {out.seconds:6.1f} s  entry "
                                       f"{e.index} {e.label}{extra}", highlight=False)
                progress.advance(task)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/yellow]: the current entry left no line; run the same command "
                      f"again to resume ({output})", highlight=False)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, old_term)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    console.print(f"sweep done: {summary} -> {output}", highlight=False)
    failed = counts.get("error", 0) + counts.get("timeout", 0)
    return EXIT_FAILED if failed else EXIT_OK


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m profiler sweep", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return parser


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
