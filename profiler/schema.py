"""The result line, documented key by key in one typed place.

One JSON object per run, one line per object, in results/runs/<device-slug>.jsonl. Bytes are integers
(GiB = 2^30 only on display). Readers (compare, calibrate) validate lines with `RunRecord`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 1

Status = Literal["ok", "oom", "error", "timeout"]
Backend = Literal["cuda", "cpu", "fake"]
PhaseName = Literal["load", "accumulate", "forward", "backward", "optimizer_step", "generate"]
Source = Literal["run", "simulate", "track", "dryrun"]  # dryrun: `simulate -- python SCRIPT` (profiler.dryrun)


class _Rec(BaseModel):
    model_config = ConfigDict(extra="allow")


class EnvInfo(_Rec):
    """Where and with what the run happened."""

    hostname: str
    python: str = Field(description="Python version")
    torch: str = Field(description="torch version")
    cuda: str | None = Field(None, description="CUDA runtime torch was built with")
    driver: str | None = Field(None, description="NVIDIA driver version (NVML)")
    transformers: str | None = None
    peft: str | None = None
    bitsandbytes: str | None = None
    accelerate: str | None = None
    git_revision: str | None = Field(None, description="HEAD of this checkout (-dirty with local changes)")
    device_name: str = Field(description="GPU name, or 'cpu'")
    device_total_bytes: int | None = Field(None, description="GPU total memory (torch), or host RAM")
    device_slug: str = Field(description="file-name form of device_name, e.g. nvidia-h100-80gb-hbm3")


class ModelStats(_Rec):
    """Parameter counts and weight bytes as loaded (after quantization and peft wrapping)."""

    name: str = Field(description="bundled architecture name, checkpoint path or hub id")
    model_type: str = Field(description="HF model_type (llama, mistral, qwen2, gpt2)")
    total_params: int = Field(description="logical parameters (a 4-bit weight counts its unpacked numel)")
    trainable_params: int = Field(description="parameters with requires_grad (LoRA: adapters only)")
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
    warmup: bool = Field(False, description="true for warm-up steps (not in timings)")
    allocated_bytes: int = Field(description="allocated at the phase end")
    peak_allocated_bytes: int = Field(description="peak during the phase (peak reset at its start)")
    reserved_bytes: int | None = Field(None, description="CUDA: reserved at the phase end")
    peak_reserved_bytes: int | None = Field(None, description="CUDA: peak reserved during the phase")
    seconds: float = Field(description="wall time of the phase")
    nvml_peak_bytes: int | None = Field(None, description="CUDA: NVML device-used peak during the phase")
    breakdown: dict[str, int] | None = Field(
        None, description="category -> bytes at the phase peak: weights, gradients, optimizer, activations, "
        "temporaries (tracker); CUDA adds untracked, allocator, context (sum = NVML peak - baseline)")
    module_at_peak: str | None = Field(None, description="module running at the phase peak (tracker)")
    predicted_reserved_bytes: int | None = Field(
        None, description="CUDA target: peak reserved during the phase, predicted by replaying the run's storages "
        "through the caching allocator (profiler.allocator)")


class Peaks(_Rec):
    """Whole-run peaks. steady_* come from the last step only (optimizer state already exists)."""

    peak_allocated_bytes: int = Field(description="max over all phases (torch.cuda.max_memory_allocated / tracker)")
    peak_reserved_bytes: int | None = Field(None, description="CUDA: max over all phases of max_memory_reserved")
    first_step_peak_allocated_bytes: int | None = Field(None, description="peak of step 0 (allocates optimizer state)")
    steady_peak_allocated_bytes: int | None = Field(None, description="peak of the last step")
    steady_peak_reserved_bytes: int | None = Field(None, description="CUDA: reserved peak of the last step")
    nvml_peak_bytes: int | None = Field(None, description="highest device-used memory seen by NVML")


class NvmlInfo(_Rec):
    """NVML sampler figures (device-wide and, where visible, this process)."""

    baseline_used_bytes: int = Field(description="device used before this process initialised CUDA")
    peak_used_bytes: int = Field(description="highest device used memory sampled (all processes)")
    peak_process_bytes: int | None = Field(None, description="None where per-process figures are hidden")
    samples: int = Field(description="number of NVML reads")
    interval_s: float = Field(description="sampling period")


class AllocatorReplay(_Rec):
    """How predicted_reserved_bytes / predicted_nvml_bytes were obtained (docs/allocator.md)."""

    source: str = Field(description="what was replayed through which allocator model")
    conf: str = Field(description="allocator settings replayed, and where they came from")
    peak_allocated_bytes: int = Field(description="the replay's allocated peak: rounded block sizes, as "
                                      "max_memory_allocated counts them, cuBLAS workspace included")
    cublas_workspace_bytes: int = Field(description="cuBLAS workspace added at the first forward")
    gpu_arch: str | None = Field(None, description="target GPU architecture (sm90), None in a simulation")
    context_bytes: int = Field(description="CUDA context added for the NVML figure")
    context: str = Field(description="the context row used: published or assumed, and its source")
    events: int = Field(description="allocations and frees replayed")
    seconds: float = Field(description="time the replay took")
    retries: int = Field(0, description="times the replayed allocator freed its cache to make room")
    oom: str | None = Field(None, description="a replayed out-of-memory (only with a capacity)")


class Timings(_Rec):
    """Wall-clock times (the tracker slows CPU runs; compare timings only between like runs)."""

    load_s: float = Field(description="model build/load + regime setup")
    median_step_s: float | None = Field(None, description="median wall time of the measured steps")
    tokens_per_s: float | None = Field(None, description="batch x seq_len / median_step_s")


class RankPhase(_Rec):
    """One phase of one rank: the figures every rank sends to rank 0."""

    phase: PhaseName
    step: int | None = None
    peak_allocated_bytes: int
    allocated_bytes: int
    peak_reserved_bytes: int | None = None
    nvml_peak_bytes: int | None = None


class RankRecord(_Rec):
    """One rank of a data-parallel run (simulate: rank 0 only, the ranks being symmetric)."""

    rank: int
    status: Status
    phases: list[RankPhase]
    peak_allocated_bytes: int


class RunRecord(_Rec):
    """One measured (or simulated) run."""

    schema_version: int = Field(SCHEMA_VERSION, description="bumped when a key changes meaning")
    run_id: str = Field(description="random hex id of this run")
    timestamp: str = Field(description="UTC ISO-8601 time the run started")
    config_hash: str = Field(description="RunConfig.config_hash(): identity for resume/dedup")
    config: dict = Field(description="the full validated RunConfig as a dict")
    status: Status = Field(description="ok | oom (a result, not a failure) | error | timeout (sweep)")
    error: str | None = Field(None, description="exception type and message when status is not ok")
    oom_phase: str | None = Field(None, description="phase where the OOM struck (status oom)")
    oom_step: int | None = Field(None, description="step index where the OOM struck")
    backend: Backend = Field(description="cuda (measured), cpu (tracker-measured), fake (simulated)")
    source: Source = Field("run", description="run (our loop), simulate (fake tensors), track (the user's own "
                           "loop: track() or the Trainer callback) or dryrun (the user's script on fake tensors: "
                           "`simulate -- python SCRIPT`); old lines without it: from backend")
    env: EnvInfo
    model: ModelStats | None = None
    phases: list[PhaseRecord] = Field(default_factory=list)
    peaks: Peaks | None = None
    nvml: NvmlInfo | None = None
    timings: Timings | None = None
    memory_stats: dict[str, int] | None = Field(None, description="CUDA: torch.cuda.memory_stats() at the end")
    predicted_reserved_bytes: int | None = Field(
        None, description="CUDA target: peak reserved (max_memory_reserved) predicted by the caching-allocator replay "
        "of the run's storages")
    predicted_nvml_bytes: int | None = Field(
        None, description="CUDA target: predicted_reserved_bytes + the CUDA context (what nvidia-smi shows)")
    allocator_replay: AllocatorReplay | None = None
    free_bytes_at_oom: int | None = Field(None, description="CUDA: free device memory right after the OOM")
    attention_kernel: str | None = Field(None, description="SDPA backend the run used or would use")
    attention_kernels: dict[str, str] | None = Field(
        None, description="simulate, cuda: kernel(s) per attention layer kind (config.layer_types, e.g. "
        "full_attention / sliding_attention), most used first, e.g. {'full_attention': 'cudnn'}")
    sdpa_rules: dict | None = Field(
        None, description="simulate, cuda: {gpu_arch, torch, assumed}: the architecture whose SDPA rules chose the "
        "kernel (assumed: gpu_arch auto, sm80 taken) and the torch version the rules were read from")
    ranks: list[RankRecord] | None = Field(
        None, description="data-parallel runs: per rank {rank, status, phases [{phase, step, peak_allocated_bytes, "
        "allocated_bytes, peak_reserved_bytes, nvml_peak_bytes}], peak_allocated_bytes}; phases/breakdown above "
        "are rank 0's; simulate lists rank 0 only (ranks are symmetric)")
    max_rank_peak_allocated_bytes: int | None = Field(
        None, description="data-parallel runs: the highest peak_allocated_bytes over all ranks")
    warnings: list[str] = Field(default_factory=list, description="what the stack did that a user would not "
                                "expect (e.g. MoE experts left unquantized), each naming the setting that avoids it")

    @model_validator(mode="before")
    @classmethod
    def _default_source(cls, data: dict) -> dict:
        """Lines written before `source` existed: a fake backend was a simulation, anything else a run."""
        if isinstance(data, dict) and "source" not in data:
            data = {**data, "source": "simulate" if data.get("backend") == "fake" else "run"}
        return data
