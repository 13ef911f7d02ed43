"""GPU datasheet figures for the time model (profiler/data/gpu_specs.csv, one vendor source per row).

Peak TFLOPS are the datasheets' dense tensor-core figures (the "with sparsity" ones halved); GeForce cards take
the FP32-accumulate figure, which is what torch's bf16/fp16 matmuls use. Link figures are as the datasheets
print them, both directions together (NVLink 900 GB/s = 450 GB/s each way); the model uses one direction.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path

from profiler.config import ConfigError

SPECS_CSV = Path(__file__).resolve().parent.parent / "data" / "gpu_specs.csv"
INTER_NODE_GBPS = 50.0  # 400 Gb/s RDMA per GPU (torchtitan's H100 and H200 benchmark hosts; ConnectX-7 NDR)
GPUS_PER_NODE = 8


@dataclass(frozen=True)
class GpuSpec:
    """Peak throughputs of one GPU (TFLOPS = 10^12 FLOP/s, GB/s = 10^9 bytes/s)."""

    name: str
    bf16_tflops: float | None
    fp16_tflops: float | None
    fp8_tflops: float | None
    hbm_gbps: float  # device memory bandwidth (HBM, or GDDR on the "gddr" cards)
    memory: str  # "hbm" (datacenter parts) or "gddr" (workstation / consumer): the fit's matmul efficiency tier
    nvlink_gbps: float | None
    pcie_gbps: float
    source: str

    def peak_flops(self, dtype: str) -> float:
        """FLOP/s of the tensor cores for a compute dtype (bfloat16 / float16 / float8); ConfigError where the
        datasheet gives none (fp32 training has no tensor-core peak here: TF32 is off by default in torch)."""
        key = {"bfloat16": "bf16_tflops", "float16": "fp16_tflops", "float8": "fp8_tflops"}.get(dtype)
        value = getattr(self, key) if key else None
        if not value:
            have = [d for d, k in (("bfloat16", self.bf16_tflops), ("float16", self.fp16_tflops)) if k]
            raise ConfigError(f"timing: {self.name} has no {dtype} tensor-core peak in profiler/data/gpu_specs.csv "
                              f"(the compute dtype of this config); allowed here: {', '.join(have) or 'none'}")
        return value * 1e12

    def link_bytes_per_s(self, world_size: int, gpus_per_node: int = GPUS_PER_NODE,
                         inter_node_gbps: float = INTER_NODE_GBPS) -> float:
        """One direction of the slowest link a ring over `world_size` GPUs crosses: NVLink (else PCIe) inside a
        node, the RDMA network across nodes."""
        inside = (self.nvlink_gbps or self.pcie_gbps) / 2
        if world_size > gpus_per_node:
            return min(inside, inter_node_gbps) * 1e9
        return inside * 1e9


def _f(v: str) -> float | None:
    return float(v) if v not in (None, "") else None


@functools.cache
def specs() -> dict[str, GpuSpec]:
    with SPECS_CSV.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {r["name"]: GpuSpec(r["name"], _f(r["bf16_tflops"]), _f(r["fp16_tflops"]), _f(r["fp8_tflops"]),
                               float(r["hbm_gbps"]), r["memory"], _f(r["nvlink_gbps"]), float(r["pcie_gbps"]),
                               r["source"])
            for r in rows}


@functools.cache
def preset_by_device_name() -> dict[str, str]:
    """device name as torch / NVML report it (profiler/data/gpus.csv) -> preset name (for our own timed runs)."""
    with (SPECS_CSV.parent / "gpus.csv").open(newline="") as f:
        return {r["device_name"]: r["name"] for r in csv.DictReader(f)}


def spec_for(name: str) -> GpuSpec:
    """The spec of a preset by its canonical name (profiler.predict.gpus resolves aliases first); ConfigError
    naming the presets that have specs."""
    try:
        return specs()[name]
    except KeyError:
        raise ConfigError(f"--gpu: {name!r} has no datasheet row in profiler/data/gpu_specs.csv, so no time "
                          f"estimate; allowed: {', '.join(specs())}") from None
