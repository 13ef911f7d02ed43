"""The result line, documented key by key in one typed place.

One JSON object per run, one line per object, in results/runs/<device-slug>.jsonl. Bytes are integers
(GiB = 2^30 only on display). Readers (compare, calibrate) validate lines with `RunRecord`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

Status = Literal["ok", "oom", "error", "timeout"]
Backend = Literal["cuda", "cpu", "fake"]
PhaseName = Literal["load", "forward", "backward", "optimizer_step", "generate"]


class _Rec(BaseModel):
    model_config = ConfigDict(extra="allow")


class EnvInfo(_Rec):
    """Where and with what the run happened."""

    hostname: str
    python: str
    torch: str
    cuda: str | None = Field(None, description="CUDA runtime torch was built with")
    driver: str | None = Field(None, description="NVIDIA driver version (NVML)")
    transformers: str | None = None
    peft: str | None = None
    bitsandbytes: str | None = None
    accelerate: str | None = None
    git_revision: str | None = None
    device_name: str = Field(description="GPU name, or 'cpu'")
    device_total_bytes: int | None = Field(None, description="GPU total memory (torch), or host RAM")
    device_slug: str = Field(description="file-name form of device_name, e.g. nvidia-h100-80gb-hbm3")


class ModelStats(_Rec):
    """Parameter counts and weight bytes as loaded (after quantization and peft wrapping)."""

    name: str
    model_type: str
    total_params: int = Field(description="logical parameters (a 4-bit weight counts its unpacked numel)")
    trainable_params: int
    quantized_params: int = Field(description="logical parameters stored by bitsandbytes in 4/8 bit")
    weight_bytes: int = Field(description="unique storage bytes of params + buffers + quantization state")
    weight_bytes_by_dtype: dict[str, int] = Field(description="dtype name -> bytes (uint8/int8 = quantized)")
    num_layers: int | None = None
    hidden_size: int | None = None
    vocab_size: int | None = None


class PhaseRecord(_Rec):
    """Memory of one phase of one step (or of loading). On CPU/fake the figures come from the tensor tracker."""

    phase: PhaseName
    step: int | None = Field(description="step index (0 = first, warm-up); None for load")
    warmup: bool = False
    allocated_bytes: int = Field(description="allocated at the phase end")
    peak_allocated_bytes: int = Field(description="peak during the phase (peak reset at its start)")
    reserved_bytes: int | None = Field(None, description="CUDA: reserved at the phase end")
    peak_reserved_bytes: int | None = None
    seconds: float
    breakdown: dict[str, int] | None = Field(None, description="category -> bytes at the phase peak (tracker)")
    module_at_peak: str | None = None


class Peaks(_Rec):
    """Whole-run peaks. steady_* come from the last step only (optimizer state already exists)."""

    peak_allocated_bytes: int
    peak_reserved_bytes: int | None = None
    first_step_peak_allocated_bytes: int | None = None
    steady_peak_allocated_bytes: int | None = None
    steady_peak_reserved_bytes: int | None = None
    nvml_peak_bytes: int | None = Field(None, description="highest device-used memory seen by NVML")


class NvmlInfo(_Rec):
    """NVML sampler figures (device-wide and, where visible, this process)."""

    baseline_used_bytes: int = Field(description="device used before this process initialised CUDA")
    peak_used_bytes: int
    peak_process_bytes: int | None = Field(None, description="None where per-process figures are hidden")
    samples: int
    interval_s: float


class Timings(_Rec):
    load_s: float
    median_step_s: float | None = None
    tokens_per_s: float | None = None


class RunRecord(_Rec):
    """One measured (or simulated) run."""

    schema_version: int = SCHEMA_VERSION
    run_id: str
    timestamp: str = Field(description="UTC ISO-8601 time the run started")
    config_hash: str = Field(description="RunConfig.config_hash(): identity for resume/dedup")
    config: dict = Field(description="the full validated RunConfig as a dict")
    status: Status
    error: str | None = None
    oom_phase: str | None = Field(None, description="phase where the OOM struck (status oom)")
    oom_step: int | None = None
    backend: Backend
    env: EnvInfo
    model: ModelStats | None = None
    phases: list[PhaseRecord] = Field(default_factory=list)
    peaks: Peaks | None = None
    nvml: NvmlInfo | None = None
    timings: Timings | None = None
    memory_stats: dict[str, int] | None = Field(None, description="CUDA: torch.cuda.memory_stats() at the end")
    free_bytes_at_oom: int | None = None
    attention_kernel: str | None = Field(None, description="SDPA backend the run used or would use")
