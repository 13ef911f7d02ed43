"""NVML sampler logic with a synthetic reader (the pynvml reader is exercised by the gpu tests)."""

from __future__ import annotations

import threading

import pytest

from profiler.measure.probes import nvml
from profiler.measure.probes.nvml import NvmlSampler


class Ramp:
    """Device memory that rises to a spike and falls back; per-process figure hidden after a while."""

    def __init__(self, values):
        self.values = list(values)
        self.i = 0
        self.lock = threading.Lock()
        self.done = threading.Event()

    def __call__(self):
        with self.lock:
            v = self.values[min(self.i, len(self.values) - 1)]
            self.i += 1
            if self.i >= len(self.values):
                self.done.set()
            return v, (v - 100 if self.i < 5 else None)


def test_sampler_records_baseline_peak_and_process_peak():
    reader = Ramp([1000, 1500, 9000, 2000, 1200, 1100])
    with NvmlSampler(reader, interval_s=0.001) as s:
        assert reader.done.wait(2.0)
    res = s.result()
    assert res.baseline_used_bytes == 1000
    assert res.peak_used_bytes == 9000
    assert res.peak_process_bytes == 8900
    assert res.samples >= 5


def test_sampler_survives_a_failing_reader():
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] in (2, 3):
            raise RuntimeError("NVML hiccup")
        return 500 + calls["n"], None

    with NvmlSampler(flaky, interval_s=0.001) as s:
        while calls["n"] < 6:
            pass
    res = s.result()
    assert res.peak_used_bytes >= 506
    assert res.peak_process_bytes is None


def test_sampler_interval_is_bounded():
    with pytest.raises(ValueError, match="interval_s"):
        NvmlSampler(lambda: (0, None), interval_s=0.05)


def test_phase_windows_reset_and_components_add_up_to_nvml():
    from profiler.measure.harness import cuda_components

    device = {"used": 1000}  # the background thread may read at any time: it sees the same values
    with NvmlSampler(lambda: (device["used"], None), interval_s=0.005) as s:
        s.reset_window()
        for used in (5000, 7000, 3000):
            device["used"] = used
            s._sample()
        first = s.read_window()
        s.reset_window()
        second = s.read_window()
    assert first == 7000
    assert second == 3000
    rec = {"peak_allocated_bytes": 4000, "peak_reserved_bytes": 5000, "nvml_peak_bytes": first}
    parts = cuda_components(rec, tracker_peak=3500, nvml=s)
    assert parts == {"untracked": 500, "allocator": 1000, "context": 7000 - 1000 - 5000}
    assert 3500 + sum(parts.values()) == first - s.baseline


class FakeCudaAllocator:
    """Stands in for torch.cuda's allocator counters so the CUDA branch of the meter runs on the CPU."""

    def __init__(self):
        self.allocated = self.reserved = self.peak_alloc = self.peak_res = 0

    def alloc(self, n, reserve):
        self.allocated += n
        self.reserved = max(self.reserved, reserve)
        self.peak_alloc = max(self.peak_alloc, self.allocated)
        self.peak_res = max(self.peak_res, self.reserved)

    def install(self, monkeypatch):
        import profiler.measure.probes.cuda as probe

        def reset():
            self.peak_alloc, self.peak_res = self.allocated, self.reserved

        fns = {"synchronize": lambda: None, "reset_peak_memory_stats": reset,
               "memory_allocated": lambda: self.allocated, "max_memory_allocated": lambda: self.peak_alloc,
               "memory_reserved": lambda: self.reserved, "max_memory_reserved": lambda: self.peak_res}
        for name, fn in fns.items():
            monkeypatch.setattr(probe.torch.cuda, name, fn)


def test_cuda_meter_records_allocator_figures_and_components(monkeypatch):
    """CPU sibling of the gpu tests: the CUDA branch of PhaseMeter with fake allocator and NVML readers."""
    import torch

    from profiler.measure.harness import PhaseMeter
    from profiler.measure.probes.tracker import TensorTracker

    alloc = FakeCudaAllocator()
    alloc.install(monkeypatch)
    device = {"used": 1_000_000}
    sampler = NvmlSampler(lambda: (device["used"], None), interval_s=0.005).__enter__()
    tracker = TensorTracker()
    meter = PhaseMeter(cuda=True, tracker=tracker, nvml=sampler)
    with tracker:
        with meter.phase("forward", step=0):
            kept = torch.empty(1000, dtype=torch.float32)  # 4000 tracked bytes
            alloc.alloc(4096, reserve=8192)  # what the allocator saw: rounded up, plus a reserved block
            device["used"] = 1_000_000 + 8192 + 3000  # + context
    sampler.__exit__(None, None, None)
    (rec,) = meter.records
    assert (rec["allocated_bytes"], rec["peak_allocated_bytes"]) == (4096, 4096)
    assert (rec["reserved_bytes"], rec["peak_reserved_bytes"]) == (8192, 8192)
    bd = rec["breakdown"]
    assert bd["temporaries"] + bd["activations"] == 4000
    assert (bd["untracked"], bd["allocator"], bd["context"]) == (96, 4096, 3000)
    tracked = sum(bd[k] for k in ("weights", "gradients", "optimizer", "activations", "temporaries"))
    assert tracked + bd["untracked"] + bd["allocator"] + bd["context"] == rec["nvml_peak_bytes"] - 1_000_000
    del kept


# ---- issue 9 item 10: later runs' baseline, masked CUDA errors, NVML failing on the measured thread -----
@pytest.fixture
def fresh_process(monkeypatch):
    """As if this process had not initialised CUDA yet (no remembered pre-CUDA baseline)."""
    import profiler.measure.probes.nvml as nvml

    monkeypatch.setattr(nvml, "_PRE_CUDA_BASELINE", None)


def test_later_runs_in_one_process_keep_the_pre_cuda_baseline(fresh_process):
    """The first run reads the baseline before CUDA starts; the second finds CUDA initialised (its context,
    500 bytes here, already in device use) and must not take that as its baseline."""
    from profiler.measure.harness import cuda_components
    from profiler.measure.probes.nvml import BASELINE_FIRST, BASELINE_PRE_CUDA

    device = {"used": 1000}
    rec = {"peak_allocated_bytes": 4000, "peak_reserved_bytes": 5000}
    contexts = []
    for cuda_initialised in (False, True):
        with NvmlSampler(lambda: (device["used"], None), interval_s=0.005).start(cuda_initialised) as s:
            device["used"] = 1000 + 500  # this process's context
            s.reset_window()
            device["used"] = 1000 + 500 + 5000  # + the reserved pool of the phase
            rec["nvml_peak_bytes"] = s.read_window()
            device["used"] = 1000 + 500  # the run ends; empty_cache; the context stays
        contexts.append(cuda_components(rec, tracker_peak=4000, nvml=s)["context"])
        assert s.result().baseline_used_bytes == 1000
    assert contexts == [500, 500]
    assert s.result().baseline_source == BASELINE_FIRST
    assert BASELINE_PRE_CUDA != BASELINE_FIRST


def test_cuda_already_initialised_without_a_remembered_baseline_says_so(fresh_process):
    from profiler.measure.probes.nvml import BASELINE_LATE

    with NvmlSampler(lambda: (2000, None), interval_s=0.005).start(cuda_initialised=True) as s:
        pass
    res = s.result()
    assert (res.baseline_used_bytes, res.baseline_source) == (2000, BASELINE_LATE)


def test_failing_synchronize_at_phase_start_is_the_error_raised(monkeypatch):
    """Before the fix the meter's cleanup read an unbound `cuda_rec`: UnboundLocalError hid the CUDA error."""
    import profiler.measure.probes.cuda as probe
    from profiler.measure.harness import PhaseMeter
    from profiler.measure.probes.tracker import TensorTracker

    FakeCudaAllocator().install(monkeypatch)

    def sync():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    tracker = TensorTracker()
    meter = PhaseMeter(cuda=True, tracker=tracker)
    with tracker:
        with meter.phase("load"):
            pass
        monkeypatch.setattr(probe.torch.cuda, "synchronize", sync)
        with pytest.raises(RuntimeError, match="illegal memory access"):
            with meter.phase("forward", step=0):
                raise AssertionError("the phase body must not run")
    assert [r["phase"] for r in meter.records] == ["load"]  # no record borrowing load's tracker figures


def test_nvml_failing_on_the_measured_thread_voids_nvml_not_the_run(monkeypatch, fresh_process):
    """A read on the main thread (phase start/end, exit) that raises: the phase completes, its NVML figure is
    None, and the record carries nvml None plus a note, not an error status."""
    import torch

    from profiler.measure.harness import PhaseMeter, nvml_fields
    from profiler.measure.probes.tracker import TensorTracker

    FakeCudaAllocator().install(monkeypatch)
    state = {"fail": False}

    def reader():
        if state["fail"] and threading.current_thread() is threading.main_thread():
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
        return 1000, None

    sampler = NvmlSampler(reader, interval_s=0.005).start(cuda_initialised=False)
    tracker = TensorTracker()
    meter = PhaseMeter(cuda=True, tracker=tracker, nvml=sampler)
    with tracker:
        with meter.phase("load"):
            pass
        state["fail"] = True
        with meter.phase("forward", step=0):
            kept = torch.empty(10)
    sampler.__exit__(None, None, None)
    load, fwd = meter.records
    assert load["nvml_peak_bytes"] == 1000 and "context" in load["breakdown"]
    assert fwd["nvml_peak_bytes"] is None and "context" not in fwd["breakdown"]
    fields = nvml_fields(sampler)
    assert fields["nvml"] is None and "NVML_ERROR_GPU_IS_LOST" in fields["nvml_note"]
    del kept


def test_nvml_baseline_read_failing_voids_nvml(fresh_process):
    from profiler.measure.harness import nvml_fields

    def reader():
        raise RuntimeError("NVML_ERROR_NO_PERMISSION")

    s = NvmlSampler(reader, interval_s=0.005).start(cuda_initialised=False)
    assert s.reset_window() is None and s.read_window() is None
    s.__exit__(None, None, None)
    assert nvml_fields(s) == {"nvml": None, "nvml_note": s.error} and "NO_PERMISSION" in s.error


class FakeNvml:
    """Two GPUs in NVML's (PCI bus) order; handles are their names."""

    UUIDS = {"bus0": "GPU-aaaaaaaa-0000-0000-0000-000000000000", "bus1": "GPU-bbbbbbbb-1111-1111-1111-111111111111"}

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return f"bus{i}"

    def nvmlDeviceGetUUID(self, handle):
        return self.UUIDS[handle].encode()  # older pynvml returns bytes

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return next(h for h, u in self.UUIDS.items() if u == uuid)


class FakeCuda:
    def __init__(self, current: int, uuids: list[str], initialised: bool = True):
        self.current, self.uuids, self.initialised = current, uuids, initialised

    def is_initialized(self):
        return self.initialised

    def current_device(self):
        assert self.initialised, "would initialise CUDA"
        return self.current

    def get_device_properties(self, i):
        return type("Props", (), {"uuid": self.uuids[i]})()


def test_each_rank_samples_its_own_gpu_matched_by_uuid(monkeypatch):
    """Issue 23, item 28: under torchrun rank 1 (current device 1) samples its GPU, not GPU 0, even where
    CUDA's order (fastest first) is not NVML's (PCI bus): torch's cuda:1 here is NVML's bus0."""
    torch_order = ["aaaaaaaa-0000-0000-0000-000000000000", "bbbbbbbb-1111-1111-1111-111111111111"][::-1]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert nvml._visible_handle(FakeNvml(), FakeCuda(1, torch_order)) == "bus0"
    assert nvml._visible_handle(FakeNvml(), FakeCuda(0, torch_order)) == "bus1"


def test_before_cuda_is_initialised_the_rank_entry_of_visible_devices_is_used(monkeypatch):
    cuda = FakeCuda(0, [], initialised=False)  # asking torch would initialise CUDA before the baseline
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert nvml._visible_handle(FakeNvml(), cuda) == "bus0"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{FakeNvml.UUIDS['bus0']},{FakeNvml.UUIDS['bus1']}")
    assert nvml._visible_handle(FakeNvml(), cuda) == "bus1"
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert nvml._visible_handle(FakeNvml(), cuda) == "bus0"
