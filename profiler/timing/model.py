"""The time model: seconds per phase and per step from the counted work, a GPU's datasheet and fitted efficiencies.

Per phase of the simulated step (profiler.timing.flops counts its work per rank):
    compute = max(matmul FLOPs / (peak x e_matmul), matmul bytes / (HBM x e_memory))
            + max(attention FLOPs / (peak x e_matmul), attention bytes / (HBM x e_memory))
            + other bytes / (HBM x e_memory)
    comm    = sum over collectives of ring traffic / (link x e_link), ring traffic per rank = (n-1)/n x payload
              for all-gather and reduce-scatter, 2 (n-1)/n x payload for all-reduce (NCCL's ring algorithms)
    phase   = max(compute, comm)      FSDP2 prefetches the next all-gather and DDP reduces buckets while
                                      backward runs, so communication hides behind compute until it is longer
A roofline per op class (Williams et al., "Roofline", CACM 2009); the efficiencies are fitted on published
throughputs (profiler.timing.efficiency, profiler/data/timing_efficiency.csv), never on one row.
Not modelled: kernel launch gaps, torch.compile fusion, the data loader, stragglers across nodes.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import asdict, dataclass, field
from pathlib import Path

from profiler.config import ConfigError, RunConfig
from profiler.timing.specs import GPUS_PER_NODE, INTER_NODE_GBPS, GpuSpec

EFFICIENCY_CSV = Path(__file__).resolve().parent.parent / "data" / "timing_efficiency.csv"
PHASES = ("forward", "backward", "optimizer_step", "generate")


@dataclass(frozen=True)
class Efficiency:
    """Fractions of the datasheet peaks reached: tensor-core FLOP/s, HBM bandwidth, link bandwidth."""

    matmul: float  # on HBM (datacenter) GPUs, and on every GPU when matmul_gddr is None
    memory: float
    link: float
    source: str = "assumed"
    loo_median_pct: float | None = None  # leave-one-out median absolute error of tokens/s on the fit rows
    loo_p90_pct: float | None = None
    n_rows: int = 0
    matmul_gddr: float | None = None  # on GDDR (workstation / consumer) GPUs, where fitted apart

    def matmul_for(self, memory: str) -> float:
        """The matmul efficiency of a GPU with this memory type ("hbm" / "gddr")."""
        return self.matmul_gddr if memory == "gddr" and self.matmul_gddr is not None else self.matmul


@functools.cache
def fitted_efficiency() -> Efficiency:
    """The efficiencies fitted on the published rows (profiler/data/timing_efficiency.csv)."""
    if not EFFICIENCY_CSV.is_file():
        raise ConfigError(f"timing: {EFFICIENCY_CSV} is missing; run scripts/validate_throughput.py --fit")
    with EFFICIENCY_CSV.open(newline="") as f:
        row = {r["parameter"]: r for r in csv.DictReader(f)}

    def num(k: str) -> float | None:
        v = row.get(k, {}).get("value")
        return float(v) if v not in (None, "") else None

    return Efficiency(num("e_matmul"), num("e_memory"), num("e_link"),
                      source=f"fitted on {int(num('n_rows') or 0)} published rows ({EFFICIENCY_CSV.name})",
                      loo_median_pct=num("loo_median_abs_pct"), loo_p90_pct=num("loo_p90_abs_pct"),
                      n_rows=int(num("n_rows") or 0), matmul_gddr=num("e_matmul_gddr"))


def compute_dtype(cfg: RunConfig) -> str:
    """The dtype matmuls run in: autocast's, else FSDP2's param_dtype, else QLoRA's compute dtype, else the weights'."""
    if cfg.train.autocast in ("bf16", "fp16"):
        return "bfloat16" if cfg.train.autocast == "bf16" else "float16"
    if cfg.parallel.strategy == "fsdp2" and cfg.parallel.param_dtype:
        return cfg.parallel.param_dtype
    if cfg.regime.kind == "qlora":
        return cfg.regime.compute_dtype
    return cfg.model.dtype


def ring_traffic(kind: str, payload: int, n: int) -> float:
    """Bytes one rank sends in NCCL's ring algorithm for a collective of `payload` bytes over n ranks."""
    if n <= 1:
        return 0.0
    share = (n - 1) / n * payload
    return 2 * share if kind == "all_reduce" else share


@dataclass
class StepTime:
    """The estimated time of one training step per rank, and what it rests on."""

    step_s: float
    phase_s: dict[str, float]
    compute_s: float
    comm_s: float
    parts_s: dict[str, float]  # matmul, attention, other (memory-bound), comm
    flops: int  # per rank, per step (recompute included)
    tokens_per_step: int  # global: batch x seq x data-parallel ranks
    world_size: int
    gpu: str
    dtype: str
    peak_flops: float
    efficiency: Efficiency
    bound: dict[str, str] = field(default_factory=dict)  # per phase: compute / memory / communication

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.step_s

    @property
    def tokens_per_s_per_gpu(self) -> float:
        return self.tokens_per_s / self.world_size

    @property
    def mfu(self) -> float:
        """Counted FLOPs (recompute included, so strictly hardware FLOPs utilisation) / (step time x peak)."""
        return self.flops / (self.step_s * self.peak_flops)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(tokens_per_s=self.tokens_per_s, tokens_per_s_per_gpu=self.tokens_per_s_per_gpu, mfu=self.mfu)
        return d


def unit_seconds(work: dict, spec: GpuSpec, peak: float, world_size: int, gpus_per_node: int = GPUS_PER_NODE,
                 inter_node_gbps: float = INTER_NODE_GBPS, hbm_gbps: float | None = None) -> dict[str, float]:
    """One phase's work as seconds at 100 % of each peak: matmul / attention FLOPs and bytes, other bytes, comm."""
    hbm = (hbm_gbps or spec.hbm_gbps) * 1e9
    link = spec.link_bytes_per_s(world_size, gpus_per_node, inter_node_gbps)
    comm = sum(ring_traffic(kind, c["bytes"], world_size) for kind, c in work.get("collectives", {}).items())
    return {"mm_f": work["matmul_flops"] / peak, "mm_b": work["matmul_bytes"] / hbm,
            "att_f": work["attention_flops"] / peak, "att_b": work["attention_bytes"] / hbm,
            "other": work["other_bytes"] / hbm, "comm": comm / link}


def phase_time(u: dict[str, float], eff: Efficiency, memory: str = "hbm") -> dict[str, float]:
    """Seconds of one phase (unit_seconds at the efficiencies): matmul, attention, other, compute, comm, total."""
    e_mm = eff.matmul_for(memory)
    mm = max(u["mm_f"] / e_mm, u["mm_b"] / eff.memory)
    att = max(u["att_f"] / e_mm, u["att_b"] / eff.memory)
    other = u["other"] / eff.memory
    comm = u["comm"] / eff.link
    compute = mm + att + other
    return {"matmul": mm, "attention": att, "other": other, "compute": compute, "comm": comm,
            "total": max(compute, comm)}


def step_time(step: dict, cfg: RunConfig, spec: GpuSpec, eff: Efficiency, *, hbm_gbps: float | None = None,
              gpus_per_node: int = GPUS_PER_NODE, inter_node_gbps: float = INTER_NODE_GBPS,
              extra_matmul_flops: int = 0) -> StepTime:
    """The StepTime of profiler.timing.flops.step_work(record) for cfg on spec. `extra_matmul_flops` adds
    forward-phase matmul work the simulation cannot run (a validation row's selective recompute)."""
    dtype = compute_dtype(cfg)
    peak = spec.peak_flops(dtype)
    n = cfg.parallel.world_size if cfg.parallel.strategy != "none" else 1
    phase_s: dict[str, float] = {}
    parts = {"matmul": 0.0, "attention": 0.0, "other": 0.0, "comm": 0.0}
    bound: dict[str, str] = {}
    compute = comm = 0.0
    flops = 0
    for name, work in step["phases"].items():
        if name == "backward" and extra_matmul_flops:
            work = {**work, "matmul_flops": work["matmul_flops"] + extra_matmul_flops}
        t = phase_time(unit_seconds(work, spec, peak, n, gpus_per_node, inter_node_gbps, hbm_gbps), eff, spec.memory)
        phase_s[name] = t["total"]
        for k in ("matmul", "attention", "other", "comm"):
            parts[k] += t[k]
        compute += t["compute"]
        comm += t["comm"]
        flops += work["matmul_flops"] + work["attention_flops"]
        bound[name] = ("communication" if t["comm"] > t["compute"] else
                       "compute" if t["matmul"] + t["attention"] > t["other"] else "memory")
    tokens = cfg.train.batch_size * cfg.train.seq_len * n
    return StepTime(sum(phase_s.values()), phase_s, compute, comm, parts, flops, tokens, n, spec.name, dtype,
                    peak, eff, bound)
