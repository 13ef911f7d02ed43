"""The CUDA context nvidia-smi counts beyond the allocator's reserved bytes, from profiler/data/cuda_context.csv."""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path

CONTEXT_CSV = Path(__file__).resolve().parent.parent / "data" / "cuda_context.csv"


@dataclass(frozen=True)
class CudaContext:
    """One row: bytes, and whether the figure is published or assumed (with its source)."""

    bytes: int
    arch: str
    kind: str  # "published" or "assumption"
    source: str

    def label(self) -> str:
        return f"CUDA context {self.bytes / 2**20:.0f} MiB ({self.kind}, arch {self.arch}): {self.source}"


@functools.cache
def _rows() -> list[dict[str, str]]:
    with CONTEXT_CSV.open(newline="") as f:
        return list(csv.DictReader(f))


def _version(text: str | None) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in (text or "").split(".")[:2])
    except ValueError:
        return ()


def cuda_context(arch: str | None = None, cuda: str | None = None, use: str = "training") -> CudaContext:
    """The most specific row for this architecture (e.g. "sm90") and CUDA version: an exact arch before `*`,
    the highest cuda_min not above `cuda` (unknown CUDA: any)."""
    have = _version(cuda)
    best = None
    for r in _rows():
        if r["use"] != use or r["arch"] not in ("*", arch):
            continue
        need = _version(r["cuda_min"])
        if have and need > have:
            continue
        rank = (r["arch"] != "*", need)
        if best is None or rank > best[0]:
            best = (rank, r)
    if best is None:
        raise LookupError(f"{CONTEXT_CSV.name}: no {use} row for arch {arch} / CUDA {cuda}")
    r = best[1]
    return CudaContext(int(r["context_mib"]) * 2**20, r["arch"], r["kind"], r["source"])
