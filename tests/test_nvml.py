"""NVML sampler logic with a synthetic reader (the pynvml reader is exercised by the gpu tests)."""

from __future__ import annotations

import threading

import pytest

from profiler.probes.nvml import NvmlSampler


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
    from profiler.harness import cuda_components

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
