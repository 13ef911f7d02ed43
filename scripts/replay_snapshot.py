"""Replay a real run's CUDA memory snapshot through the allocator model; compare with the reserved bytes it had.

    python scripts/replay_snapshot.py SNAPSHOT.pickle [--reserved BYTES] [--conf TEXT] [--device-total BYTES]

SNAPSHOT: what `python -m profiler run CONFIG --memory-snapshot FILE` dumps on a GPU (torch.cuda.memory
._dump_snapshot with the trace recorded from CUDA init). The trace's alloc and free_completed actions are replayed
through profiler.allocator (the same model simulate uses); the real reserved peak comes from the trace's segment
actions, and from --reserved (the run's max_memory_reserved: `peaks.peak_reserved_bytes` of its result line) where
given. The check (issue 22): the replayed peak within 1 % of the real one. Exit 0 when it holds, 1 when not, 2 on
bad input. --json prints the figures as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

from profiler.allocator.conf import conf_from, parse_conf
from profiler.allocator.replay import replay
from profiler.allocator.snapshot import read_trace
from profiler.config import ConfigError

TOLERANCE = 0.01


def compare(snapshot: dict, *, reserved: int | None = None, conf_text: str | None = None,
            device_total: int | None = None, device: int = 0) -> dict:
    """The figures of the check for one snapshot dict."""
    trace = read_trace(snapshot, device)
    if conf_text is not None:
        conf = parse_conf(conf_text, "--conf")
    elif trace.settings:
        conf = parse_conf(trace.settings, "the snapshot's allocator_settings")
    else:
        conf = conf_from(None)
    res = replay(trace.events, conf=conf, device_total=device_total, streams=trace.streams)
    real = reserved if reserved is not None else trace.real_peak_reserved
    err = (res.peak_reserved - real) / real if real else None
    return {"allocs": trace.allocs, "events": len(trace.events), "unknown_frees": trace.unknown_frees,
            "conf": conf.describe(), "replayed_peak_reserved_bytes": res.peak_reserved,
            "trace_peak_reserved_bytes": trace.real_peak_reserved, "real_peak_reserved_bytes": real,
            "real_source": "--reserved" if reserved is not None else "the trace's segment actions",
            "error": err, "within_1_percent": err is not None and abs(err) <= TOLERANCE,
            "replay_seconds": round(res.seconds, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("snapshot", help="pickle written by --memory-snapshot / torch.cuda.memory._dump_snapshot")
    ap.add_argument("--reserved", type=int, help="the run's max_memory_reserved in bytes (peaks.peak_reserved_bytes)")
    ap.add_argument("--conf", help="allocator settings the run used (default: the snapshot's, else the environment)")
    ap.add_argument("--device-total", type=int, help="GPU memory in bytes (memory fraction, expandable segments)")
    ap.add_argument("--device", type=int, default=0, help="which device trace (default 0)")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of text")
    args = ap.parse_args(argv)
    path = Path(args.snapshot)
    if not path.is_file():
        print(f"error: snapshot: {path} is not a file; allowed: a pickle written by --memory-snapshot", file=sys.stderr)
        return 2
    try:
        with path.open("rb") as f:
            snap = pickle.load(f)  # the user's own snapshot file
        if not isinstance(snap, dict) or "device_traces" not in snap:
            raise ValueError("it has no device_traces (recorded without _record_memory_history?)")
        out = compare(snap, reserved=args.reserved, conf_text=args.conf, device_total=args.device_total,
                      device=args.device)
    except (ConfigError, ValueError, pickle.UnpicklingError, EOFError) as exc:
        print(f"error: snapshot {path}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out))
    else:
        g = 2**30
        print(f"{path}: {out['allocs']} allocations replayed ({out['conf']})")
        if out["unknown_frees"]:
            print(f"  warning: {out['unknown_frees']} frees of blocks allocated before the trace began: the trace is "
                  f"incomplete (record from CUDA init, with max_entries above the run's events)")
        err = "n/a" if out["error"] is None else f"{out['error']:+.2%}"
        print(f"  replayed peak reserved {out['replayed_peak_reserved_bytes'] / g:.3f} GiB; real "
              f"{out['real_peak_reserved_bytes'] / g:.3f} GiB ({out['real_source']}); error {err}: "
              f"{'within' if out['within_1_percent'] else 'NOT within'} 1 %")
    return 0 if out["within_1_percent"] else 1


if __name__ == "__main__":
    sys.exit(main())
