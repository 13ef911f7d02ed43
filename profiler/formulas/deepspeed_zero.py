"""`deepspeed_zero`: DeepSpeed's own per-GPU model-states estimate for ZeRO-2 / ZeRO-3.

Called from the installed package where there is one (`pip install -e ".[deepspeed]"`:
deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs and
deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs, the functions behind
`estimate_zero{2,3}_model_states_mem_needs_all_live`), else the same published formulas, copied from
DeepSpeed 0.19.8 (https://deepspeed.readthedocs.io/en/latest/memory.html):

    ZeRO-2:  GPU = 2P + 18P/N           (offload: 2P)        CPU = P * 4 * N * 1.5   (offload: P * max(4N, 16) * 1.5)
    ZeRO-3:  GPU = 4L + 18P/N           (offload optimizer: 4L + 2P/N; + params: 4L)
             CPU = L * 4 * N * 1.5      (offload: P * 16 * 1.5; + params: P * 18 * 1.5)   [zero_init]

P = parameters, N = GPUs, L = parameters of the largest module (DeepSpeed counts each module's own
parameters: the embedding or the output head of an LLM). Model states only: no activations, no
temporaries, no CUDA context. DeepSpeed's comment splits 18 bytes/param as 2 (16-bit grads) + 4 (fp32
grads) + 4 (fp32 params) + 8 (Adam moments); the components below follow it. CPU figures are per node
(here: one node of N GPUs) and go to `details["host_bytes"]`.
"""

from __future__ import annotations

from profiler.config import RunConfig
from profiler.formulas import Estimate, NotApplicable, make_estimate, register
from profiler.formulas.arch import arch_of

SOURCE = ("DeepSpeed estimate_zero2/zero3_model_states_mem_needs (deepspeed/runtime/zero/stage_1_and_2.py, "
          "stage3.py), https://deepspeed.readthedocs.io/en/latest/memory.html")
BUFFER_FACTOR = 1.5  # DeepSpeed's additional_buffer_factor default


def _zero2(p: int, n: int, offload: bool) -> tuple[int, int]:
    """(cpu bytes, gpu bytes), DeepSpeed 0.19.8's formula."""
    if offload:
        return int(p * max(4 * n, 16) * BUFFER_FACTOR), 2 * p
    return int(p * 4 * n * BUFFER_FACTOR), 2 * p + int(18 * p / n)


def _zero3(p: int, largest: int, n: int, offload: bool, offload_params: bool) -> tuple[int, int]:
    """(cpu bytes, gpu bytes), DeepSpeed 0.19.8's formula with zero_init (one node)."""
    layer = 4 * largest
    if offload and offload_params:
        return int(p * 18 * BUFFER_FACTOR), layer
    if offload:
        return int(p * 16 * BUFFER_FACTOR), layer + int(2 * p / n)
    return int(largest * 4 * n * BUFFER_FACTOR), layer + int(18 * p / n)


def _from_package(stage: str, p: int, largest: int, n: int, offload: bool, offload_params: bool
                  ) -> tuple[int, int] | None:
    try:
        if stage == "zero2":
            from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs as f2
        else:
            from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs as f3
    except Exception:  # not installed, or no usable accelerator backend: the copied formula answers
        return None
    if stage == "zero2":
        cpu, gpu = f2(p, num_gpus_per_node=n, num_nodes=1, cpu_offload=offload)
        return int(cpu), int(gpu)
    cpu, gpu, _ = f3(p, largest, num_gpus_per_node=n, num_nodes=1, cpu_offload=offload,
                     cpu_offload_params=offload_params, zero_init=True)
    return int(cpu), int(gpu)


def largest_module_params(cfg: RunConfig) -> int:
    """Parameters of the largest single module (its own, not its children's), as DeepSpeed counts them."""
    by_owner: dict[str, int] = {}
    for prm in arch_of(cfg).params:
        by_owner[prm.owner] = by_owner.get(prm.owner, 0) + prm.numel
    return max(by_owner.values())


@register("deepspeed_zero")
def deepspeed_zero(cfg: RunConfig) -> Estimate:
    """DeepSpeed's ZeRO-2/3 model-states estimate per GPU (16-bit params and grads, fp32 master and Adam
    state), from the installed deepspeed package or its published formula.

    Source: DeepSpeed, deepspeed/runtime/zero/stage_1_and_2.py and stage3.py
    (estimate_zero2_model_states_mem_needs, estimate_zero3_model_states_mem_needs);
    https://deepspeed.readthedocs.io/en/latest/memory.html
    """
    pc = cfg.parallel
    if pc.strategy not in ("zero2", "zero3"):
        raise NotApplicable(f"deepspeed_zero: DeepSpeed ships estimators for ZeRO-2 and ZeRO-3 only "
                            f"(strategy {pc.strategy})")
    if cfg.regime.kind != "full":
        raise NotApplicable("deepspeed_zero: DeepSpeed's estimator assumes every parameter trains (regime full)")
    arch = arch_of(cfg)
    p, n = arch.total_params, pc.world_size
    largest = largest_module_params(cfg)
    off, off_params = pc.offload.optimizer, pc.offload.params
    got = _from_package(pc.strategy, p, largest, n, off, off_params)
    origin = "deepspeed package" if got else "published formula"
    cpu, gpu = got or (_zero2(p, n, off) if pc.strategy == "zero2" else _zero3(p, largest, n, off, off_params))
    if pc.strategy == "zero2":
        parts = {"weights": 2 * p, "gradients": 0 if off else 6 * p / n, "optimizer": 0 if off else 12 * p / n}
    else:
        parts = {"comm_buffers": 4 * largest, "weights": 0 if off_params else 2 * p / n,
                 "gradients": 0 if off else 4 * p / n, "optimizer": 0 if off else 12 * p / n}
    drift = gpu - sum(int(round(v)) for v in parts.values())  # int rounding in DeepSpeed's formula
    parts["optimizer"] = parts["optimizer"] + drift
    return make_estimate("deepspeed_zero", parts, SOURCE,
                         f"{pc.strategy} x {n}, model states only ({origin}); host {cpu / 2**30:.1f} GiB per node",
                         details={"host_bytes": cpu, "largest_module_params": largest, "gpu_bytes": gpu})
