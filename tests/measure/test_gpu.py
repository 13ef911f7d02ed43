"""What a GPU run must prove (marked gpu, skipped without CUDA; scripts/gpu_session.sh runs them on a lent GPU).

Each check is a helper that takes run records, and each GPU test has a CPU sibling below that feeds the same
helper from the same harness path on the tiny model (CPU tracker, or fake CUDA counters where the CUDA
branch cannot run on a CPU). Bands are stated where a check is not exact:
- simulate vs real: every training phase's peak allocated within 3 % (load excluded: a real quantized load
  stages tensors through paths a fake load does not have);
- 8-bit and paged AdamW state: exact bytes against `components` (bitsandbytes' block layout is known);
- gradient checkpointing: the measured drop in activations within 15 % of the drop `components` predicts;
- CUDA breakdown: sums to NVML peak - baseline exactly, untracked within [-1 %, 5 %] of peak allocated,
  context positive in every phase, within 64 MiB across the phases of the steady step and between two runs
  in one process;
- --no-tracker: the allocator's peaks within 1 % of a tracked run's;
- the SDPA kernel simulate picks for this GPU's architecture equals `torch._fused_sdp_choice`, case by case
  (scripts/simulate_vs_cuda.py --kernels), and the phase peaks hold under bf16 autocast + QLoRA and under
  gradient checkpointing (the settings HF Trainer / TRL users run).
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from conftest import CONFIGS, gpu, run_watching_the_model, tiny

import profiler.measure.harness as harness
from profiler.config import REPO_ROOT, load_config
from profiler.formulas import estimate
from profiler.formulas.components import components_estimate
from profiler.measure.harness import run
from profiler.schema import RunRecord

SIM_REGIMES = ["full", "lora", "qlora4", "qlora8"]
USER_SETTINGS = [("qlora4", "train.autocast=bf16"),
                 ("qlora4", "train.autocast=bf16", "train.gradient_checkpointing=true"),
                 ("lora", "train.gradient_checkpointing=true")]
TRAIN_PHASES = ("forward", "backward", "optimizer_step")
TRACKED = ("weights", "gradients", "optimizer", "activations", "temporaries")
MiB = 2**20


def cuda_cfg(regime: str, *overrides: str):
    """A shipped llama7b_<regime> config on qwen2.5-0.5b at seq 512, batch 1: each run in seconds on one GPU."""
    return load_config(CONFIGS / f"llama7b_{regime}.yaml",
                       ["model.arch=qwen2.5-0.5b", "train.seq_len=512", "train.batch_size=1", "train.steps=1",
                        *overrides])


@pytest.fixture(scope="module", autouse=True)
def _pre_cuda_baseline():
    """Remember the device use before anything in this process initialises CUDA, so every run here (even
    one after a test that touched CUDA outside the harness) reports its context against it."""
    if torch.cuda.is_available() and not torch.cuda.is_initialized():
        from profiler.measure.probes.nvml import pynvml_reader, remember_pre_cuda_baseline

        try:
            remember_pre_cuda_baseline(pynvml_reader())
        except Exception:  # no NVML: the tests that need it fail on their own, saying so
            pass


# ---- checks shared by the GPU tests and their CPU siblings ----------------------------------------------
def phase_peaks(rec: dict) -> dict[tuple[str, int], int]:
    return {(p["phase"], p["step"]): p["peak_allocated_bytes"] for p in rec["phases"] if p["phase"] in TRAIN_PHASES}


def assert_simulation_matches(real: dict, sim: dict, tol: float) -> None:
    """Every training phase the simulation ran (warm-up + one measured step) against the real one."""
    assert real["status"] == sim["status"] == "ok", (real["error"], sim["error"])
    r, s = phase_peaks(real), phase_peaks(sim)
    assert s and set(s) <= set(r), (sorted(s), sorted(r))
    errors = {k: (s[k] - r[k]) / r[k] for k in s}
    assert all(abs(e) <= tol for e in errors.values()), {k: f"{100 * e:+.2f}%" for k, e in errors.items()}


def simulate_vs_cuda_script():
    """scripts/simulate_vs_cuda.py as a module (its kernel comparison is shared with these tests)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("svc", REPO_ROOT / "scripts" / "simulate_vs_cuda.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def assert_kernels_agree(rows: list[dict]) -> None:
    assert rows and all(r["simulated"] == r["torch"] for r in rows), [r for r in rows if r["simulated"] != r["torch"]]


def device_arch() -> str:
    """This GPU's `gpu_arch` (auto where the config has no value for its compute capability)."""
    major, minor = torch.cuda.get_device_capability()
    arch = f"sm{major}{minor}"
    return arch if arch in ("sm70", "sm75", "sm80", "sm86", "sm89", "sm90", "sm100", "sm120") else "auto"


def assert_oom_recorded_and_freed(rec: dict, refs: list[weakref.ref]) -> None:
    RunRecord.model_validate(rec)
    assert rec["status"] == "oom", rec["error"]
    assert rec["oom_phase"] in TRAIN_PHASES and rec["oom_step"] == 0, (rec["oom_phase"], rec["oom_step"])
    assert rec["phases"] and rec["phases"][-1]["phase"] == rec["oom_phase"]  # the phase is recorded too
    gc.collect()
    assert refs and not [r for r in refs if r() is not None], "parameters alive after the OOM run"


class CaptureOptimizer:
    """Wraps harness.make_optimizer to keep the optimizer and count its state after the run."""

    def __init__(self):
        self.optimizers: list = []

    def __enter__(self):
        self.real = harness.make_optimizer

        def make(oc, params):
            opt = self.real(oc, params)
            self.optimizers.append(opt)
            return opt

        harness.make_optimizer = make
        return self

    def __exit__(self, *exc):
        harness.make_optimizer = self.real

    def state_bytes(self) -> int:
        """Unique storage bytes of every tensor in optimizer.state (bnb's shared qmaps once)."""
        (opt,) = self.optimizers
        seen: dict[int, int] = {}
        for state in opt.state.values():
            for t in state.values():
                if isinstance(t, torch.Tensor) and t.dim() > 0:
                    seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return sum(seen.values())

    def release(self) -> None:
        self.optimizers.clear()
        gc.collect()


def assert_optimizer_state_as_predicted(rec: dict, state_bytes: int, cfg, tracked: bool = True) -> None:
    assert rec["status"] == "ok", rec["error"]
    predicted = estimate("components", cfg).components["optimizer"]
    assert state_bytes == predicted, (state_bytes, predicted)
    if tracked:  # the tracker files the same bytes under `optimizer` (the last step's forward: state alive)
        fwd = [p for p in rec["phases"] if p["phase"] == "forward"][-1]
        assert fwd["breakdown"]["optimizer"] == predicted, (fwd["breakdown"]["optimizer"], predicted)


def forward_activations(rec: dict) -> int:
    assert rec["status"] == "ok", rec["error"]
    return [p for p in rec["phases"] if p["phase"] == "forward"][-1]["breakdown"]["activations"]


def assert_checkpointing_saves_as_predicted(plain: dict, ckpt: dict, cfg, cfg_ckpt, tol: float = 0.15) -> None:
    measured = forward_activations(plain) - forward_activations(ckpt)
    predicted = (components_estimate(cfg).details["activations_saved"]
                 - components_estimate(cfg_ckpt).details["activations_saved"])
    assert predicted > 0 and measured > 0, (measured, predicted)
    assert abs(measured - predicted) <= tol * predicted, (measured, predicted)


def contexts(rec: dict) -> list[int]:
    """`context` of the last (steady) step's phases: by then lazily loaded CUDA modules are all in."""
    last = max(p["step"] for p in rec["phases"] if p["step"] is not None)
    return [p["breakdown"]["context"] for p in rec["phases"] if p["phase"] in TRAIN_PHASES and p["step"] == last]


def assert_breakdown_adds_up_to_nvml(rec: dict) -> None:
    assert rec["status"] == "ok", rec["error"]
    base = rec["nvml"]["baseline_used_bytes"]
    for p in rec["phases"]:
        if p["phase"] not in TRAIN_PHASES:
            continue
        bd = p["breakdown"]
        assert sum(bd.values()) == p["nvml_peak_bytes"] - base, p
        assert sum(bd[k] for k in TRACKED) + bd["untracked"] == p["peak_allocated_bytes"], p
        assert -0.01 * p["peak_allocated_bytes"] <= bd["untracked"] <= 0.05 * p["peak_allocated_bytes"], p
        assert bd["allocator"] >= 0 and bd["context"] > 0, p
    ctx = contexts(rec)
    assert max(ctx) - min(ctx) <= 64 * MiB, ctx


# ---- GPU tests --------------------------------------------------------------------------------------------
@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("regime", SIM_REGIMES)
def test_simulate_matches_cuda_per_phase_within_3_percent(regime):
    from profiler.simulate.backend import simulate

    cfg = cuda_cfg(regime)
    real = run(cfg)
    RunRecord.model_validate(real)
    assert_simulation_matches(real, simulate(cfg), tol=0.03)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("settings", USER_SETTINGS, ids=["qlora4-bf16", "qlora4-bf16-ckpt", "lora-ckpt"])
def test_simulate_matches_cuda_under_autocast_and_checkpointing(settings):
    from profiler.simulate.backend import simulate

    regime, *overrides = settings
    cfg = cuda_cfg(regime, *overrides, f"gpu_arch={device_arch()}")
    real, sim = run(cfg), simulate(cfg)
    assert_simulation_matches(real, sim, tol=0.03)


@gpu
@pytest.mark.gpu
def test_simulated_sdpa_kernel_is_the_one_torch_picks():
    _, rows = simulate_vs_cuda_script().cuda_kernel_rows()
    assert_kernels_agree(rows)


@gpu
@pytest.mark.gpu
def test_cuda_oom_is_recorded_with_its_phase_and_leaks_nothing():
    """A batch sized so `components` predicts 1.5x the free memory: one allocation fails (a plain cudaMalloc
    OOM, no paging, so bounded), the record says where, and allocated memory returns to its baseline."""
    from profiler.measure.probes.cuda import free_bytes

    free = free_bytes()
    batch = 1
    while estimate("components", cuda_cfg("full", f"train.batch_size={batch}")).total < 1.5 * free:
        batch *= 2
    cfg = cuda_cfg("full", f"train.batch_size={batch}", "train.warmup_steps=0")
    # the same kernels once at batch 1 first, so cuBLAS/cuBLASLt workspaces (allocated on first use and kept
    # per stream) exist before the baseline is read
    assert run(cuda_cfg("full", "train.warmup_steps=0"))["status"] == "ok"
    gc.collect()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    rec, refs = run_watching_the_model(cfg)
    assert_oom_recorded_and_freed(rec, refs)
    assert rec["free_bytes_at_oom"] is not None
    gc.collect()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= before, (torch.cuda.memory_allocated(), before)
    # and the GPU is usable again: a normal run after it succeeds
    assert run(cuda_cfg("lora"))["status"] == "ok"


@gpu
@pytest.mark.gpu
def test_adamw_8bit_state_matches_components():
    cfg = cuda_cfg("full", "optimizer.name=adamw_8bit")
    with CaptureOptimizer() as cap:
        rec = run(cfg)
        assert_optimizer_state_as_predicted(rec, cap.state_bytes(), cfg)
        cap.release()


@gpu
@pytest.mark.gpu
def test_paged_adamw_8bit_state_matches_components():
    """Paged state lives in CUDA managed memory (a host-side tensor to torch, so not in the tracker's CUDA
    breakdown): counted from optimizer.state. Only where it fits: over-subscribed managed memory can hang."""
    from profiler.measure.probes.cuda import free_bytes

    cfg = cuda_cfg("full", "optimizer.name=paged_adamw_8bit")  # bnb pages only tensors of >= 1e5 elements
    need = estimate("components", cfg).total
    if need > 0.5 * (free_bytes() or 0):
        pytest.skip(f"paged run needs ~{need / 2**30:.1f} GiB, more than half the free GPU memory")
    with CaptureOptimizer() as cap:
        rec = run(cfg)
        assert_optimizer_state_as_predicted(rec, cap.state_bytes(), cfg, tracked=False)
        cap.release()


@gpu
@pytest.mark.gpu
def test_gradient_checkpointing_lowers_activations_as_predicted():
    cfg = cuda_cfg("full")
    cfg_ck = cuda_cfg("full", "train.gradient_checkpointing=true")
    assert_checkpointing_saves_as_predicted(run(cfg), run(cfg_ck), cfg, cfg_ck)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("regime", ["full", "lora", "qlora4"])
def test_cuda_breakdown_adds_up_to_the_nvml_peak(regime):
    rec = run(cuda_cfg(regime))
    RunRecord.model_validate(rec)
    assert rec["env"]["driver"] and rec["env"]["cuda"] and rec["nvml"]["samples"] > 0
    assert_breakdown_adds_up_to_nvml(rec)


@gpu
@pytest.mark.gpu
def test_context_is_positive_and_stable_across_runs_in_one_process():
    from profiler.measure.probes.nvml import BASELINE_LATE

    first, second = run(cuda_cfg("lora")), run(cuda_cfg("lora"))
    for rec in (first, second):
        assert_breakdown_adds_up_to_nvml(rec)
        assert rec["nvml"]["baseline_source"] != BASELINE_LATE
    assert first["nvml"]["baseline_used_bytes"] == second["nvml"]["baseline_used_bytes"]
    assert abs(max(contexts(first)) - max(contexts(second))) <= 64 * MiB, (contexts(first), contexts(second))


@gpu
@pytest.mark.gpu
def test_no_tracker_run_measures_the_same_peaks():
    """--no-tracker: no breakdown, and the allocator's peaks within 1 % of a tracked run's."""
    tracked, bare = run(cuda_cfg("lora")), run(cuda_cfg("lora"), use_tracker=False)
    assert bare["status"] == "ok" and all(p.get("breakdown") is None for p in bare["phases"])
    t, b = phase_peaks(tracked), phase_peaks(bare)
    assert set(t) == set(b) and all(abs(b[k] - t[k]) <= 0.01 * t[k] for k in t), (t, b)


# ---- CPU siblings: the same helpers, the same harness path, on the tiny model ----------------------------
@pytest.mark.parametrize("regime", ["full", "qlora4"])  # every regime: tests/simulate/test_simulate.py
def test_cpu_sibling_simulate_matches_per_phase(regime):
    from profiler.simulate.backend import simulate

    cfg = tiny(regime, "train.steps=1")
    assert_simulation_matches(run(cfg), simulate(cfg), tol=0.03)


@pytest.mark.parametrize("settings", USER_SETTINGS, ids=["qlora4-bf16", "qlora4-bf16-ckpt", "lora-ckpt"])
def test_cpu_sibling_simulate_matches_under_autocast_and_checkpointing(settings):
    from profiler.simulate.backend import simulate

    regime, *overrides = settings
    cfg = tiny(regime, "train.steps=1", *overrides)
    assert_simulation_matches(run(cfg), simulate(cfg), tol=0.03)


def test_cpu_sibling_kernel_rows_against_torchs_cpu_choice():
    """The same comparison on CPU tensors, against CPU's rule (sdp_utils_cpp.cpp: the CPU flash kernel takes
    masks and, with enable_gqa, fewer k/v heads; otherwise k/v need as many heads as q)."""
    def cpu_rule(q, k, v, mask, causal, gqa):
        return "flash" if q.shape[1] == k.shape[1] or gqa else "math"

    assert_kernels_agree(simulate_vs_cuda_script().kernel_rows("cpu", cpu_rule, seq=64))


def test_cpu_sibling_oom_recorded_and_freed():
    rec, refs = run_watching_the_model(tiny("full", "max_memory=400KiB", "train.warmup_steps=0"))
    assert_oom_recorded_and_freed(rec, refs)


def test_cpu_sibling_adamw_8bit_state_matches_components():
    cfg = tiny("full", "optimizer.name=adamw_8bit", "train.steps=1")
    with CaptureOptimizer() as cap:
        rec = run(cfg)
        assert_optimizer_state_as_predicted(rec, cap.state_bytes(), cfg)
        cap.release()


def test_cpu_sibling_gradient_checkpointing_as_predicted():
    cfg = tiny("full", "train.seq_len=128", "train.steps=1")
    cfg_ck = tiny("full", "train.seq_len=128", "train.steps=1", "train.gradient_checkpointing=true")
    assert_checkpointing_saves_as_predicted(run(cfg), run(cfg_ck), cfg, cfg_ck)


def test_cpu_sibling_breakdown_adds_up_to_nvml(monkeypatch):
    """The CUDA branch of the meter with fake allocator counters and NVML reader (tests/measure/test_nvml.py):
    two phases whose components must pass the same check as a real CUDA record."""
    from test_nvml import FakeCudaAllocator

    from profiler.measure.harness import PhaseMeter
    from profiler.measure.probes.nvml import NvmlSampler
    from profiler.measure.probes.tracker import TensorTracker

    alloc = FakeCudaAllocator()
    alloc.install(monkeypatch)
    device = {"used": 10 * MiB}
    sampler = NvmlSampler(lambda: (device["used"], None), interval_s=0.005).__enter__()
    tracker = TensorTracker()
    meter = PhaseMeter(cuda=True, tracker=tracker, nvml=sampler)
    kept = []
    with tracker:
        for i, phase in enumerate(("forward", "backward")):
            with meter.phase(phase, step=0):
                kept.append(torch.empty(1000 * (i + 1)))  # tracked bytes
                alloc.alloc(4096 * (i + 1), reserve=2 * 8192 * (i + 1))
                device["used"] = 10 * MiB + 500 * MiB + alloc.reserved  # + a context of 500 MiB
    sampler.__exit__(None, None, None)
    rec = {"status": "ok", "error": None, "phases": meter.records, "nvml": vars(sampler.result())}
    assert_breakdown_adds_up_to_nvml(rec)
    assert contexts(rec) == [500 * MiB, 500 * MiB]
