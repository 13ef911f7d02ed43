"""The memory to fit in: a GPU preset by name (profiler/data/gpus.csv, with its source) or a size with a unit.

A preset's total is what the driver reports (nvidia-smi / NVML), not the number on the box; a size the user
types says how it was read (GB = 10^9 bytes, GiB = 2^30), since "24GB" and "24GiB" differ by 7 %.
"""

from __future__ import annotations

import csv
import difflib
import functools
import re
from dataclasses import dataclass
from pathlib import Path

from profiler.config import ConfigError, parse_bytes

GPUS_CSV = Path(__file__).resolve().parent.parent / "data" / "gpus.csv"


@dataclass(frozen=True)
class Gpu:
    """Memory to fit in, and where the figure came from."""

    name: str  # preset name, or the size as typed
    total_bytes: int
    device_name: str | None  # as torch/NVML report it (presets only)
    source: str  # URL of the driver-reported total, or how a typed size was read
    compute_capability: str | None = None  # "8.9" (presets with a cited figure: cc_source in gpus.csv)

    @property
    def arch(self) -> str:
        """The config's `gpu_arch` for this GPU ('sm89'); 'auto' (the sm80 rules) where the compute
        capability is not known."""
        if not self.compute_capability:
            return "auto"
        major, minor = self.compute_capability.split(".")
        return f"sm{major}{minor}"

    @property
    def slug(self) -> str | None:
        """File-name form of device_name (results/calibration/<slug>.csv), as profiler.measure.env.slugify."""
        if not self.device_name:
            return None
        return re.sub(r"[^a-z0-9]+", "-", self.device_name.lower()).strip("-")


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", name.lower().removeprefix("nvidia").removeprefix("geforce"))


@functools.cache
def presets() -> dict[str, Gpu]:
    """Preset name -> Gpu, from the package data file."""
    with GPUS_CSV.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {r["name"]: Gpu(r["name"], int(r["total_mib"]) * 2**20, r["device_name"], r["source"],
                           r.get("compute_capability") or None) for r in rows}


@functools.cache
def _aliases() -> dict[str, str]:
    with GPUS_CSV.open(newline="") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, str] = {}
    for r in rows:
        for a in [r["name"], r["device_name"], *r["aliases"].split()]:
            out[_key(a)] = r["name"]
    return out


def gpu_by_name(name: str) -> Gpu:
    """A preset by name or alias (case, spaces and dashes ignored: 'RTX 4090' = 'rtx4090'); ConfigError with
    a "did you mean" otherwise."""
    hit = _aliases().get(_key(name))
    if hit:
        return presets()[hit]
    allowed = list(presets())
    close = difflib.get_close_matches(_key(name), list(_aliases()), n=1, cutoff=0.5)
    hint = f"; did you mean {_aliases()[close[0]]!r}?" if close else ""
    raise ConfigError(f"--gpu: {name!r} is not a known GPU; allowed: {', '.join(allowed)}{hint} "
                      f"(or give --gpu-memory SIZE)")


def gpu_by_size(text: str) -> Gpu:
    """`--gpu-memory 24GB`: a size with a unit; the source says how it was read."""
    try:
        total = parse_bytes(text)
    except ValueError as exc:
        raise ConfigError(f"--gpu-memory: {exc}") from None
    unit = str(text).strip().lower().lstrip("0123456789. ")
    base = {"gb": "GB = 10^9 bytes", "gib": "GiB = 2^30 bytes", "mb": "MB = 10^6 bytes", "mib": "MiB = 2^20 bytes",
            "tb": "TB = 10^12 bytes", "tib": "TiB = 2^40 bytes"}.get(unit, f"{unit} as a byte unit")
    return Gpu(str(text), total, None, f"--gpu-memory {text} read as {total:,} bytes ({base})")
