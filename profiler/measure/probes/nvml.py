"""NVML sampler: a thread that polls device-used (and this process's) memory every few ms.

NVML sees what PyTorch's allocator cannot: the CUDA context, cuBLAS workspaces, bitsandbytes' paged
(managed) optimizer state. The sampler takes a *reader* function so its logic is tested on CPU with a
synthetic reader; `pynvml_reader` is the real one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

# reader() -> (device used bytes, this process's used bytes or None where hidden, e.g. in containers)
Reader = Callable[[], tuple[int, int | None]]


@dataclass
class NvmlResult:
    baseline_used_bytes: int
    peak_used_bytes: int
    peak_process_bytes: int | None
    samples: int
    interval_s: float


class NvmlSampler:
    """Context manager: baseline on entry, peaks while inside; `mark()` reads the running peak."""

    def __init__(self, reader: Reader, interval_s: float = 0.002):
        if interval_s <= 0 or interval_s > 0.005:
            raise ValueError("interval_s must be in (0, 0.005] seconds")
        self.reader = reader
        self.interval_s = interval_s
        self.baseline = 0
        self.peak_used = 0
        self.peak_process: int | None = None
        self.samples = 0
        self.window_peak = 0  # peak since the last reset_window(): per-phase NVML peaks
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _sample(self) -> None:
        used, proc = self.reader()
        with self._lock:
            self.samples += 1
            self.peak_used = max(self.peak_used, used)
            self.window_peak = max(self.window_peak, used)
            if proc is not None:
                self.peak_process = max(self.peak_process or 0, proc)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sample()
            except Exception:  # a failing read must never kill the measured run
                pass
            self._stop.wait(self.interval_s)

    def __enter__(self) -> NvmlSampler:
        self.baseline = self.reader()[0]
        self.peak_used = self.baseline
        self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        self._sample()  # one last read so a short run still sees its end state

    def reset_window(self) -> None:
        """Start a new per-phase window (the harness calls this at each phase start)."""
        with self._lock:
            self.window_peak = 0
        self._sample()

    def read_window(self) -> int:
        """Peak device-used bytes since reset_window(), including a read taken now."""
        self._sample()
        with self._lock:
            return self.window_peak

    def result(self) -> NvmlResult:
        with self._lock:
            return NvmlResult(self.baseline, self.peak_used, self.peak_process, self.samples, self.interval_s)


def _visible_handle(pynvml):
    """NVML handle of the GPU that torch will call cuda:0 (respects CUDA_VISIBLE_DEVICES)."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
    if first.isdigit():
        return pynvml.nvmlDeviceGetHandleByIndex(int(first))
    return pynvml.nvmlDeviceGetHandleByUUID(first)


def pynvml_reader() -> Reader:
    """Real reader (device used; this process's used memory where NVML shows it)."""
    import pynvml

    pynvml.nvmlInit()
    handle = _visible_handle(pynvml)
    pid = os.getpid()

    def read() -> tuple[int, int | None]:
        used = int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        proc = None
        try:
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if p.pid == pid and p.usedGpuMemory is not None:
                    proc = int(p.usedGpuMemory)
        except pynvml.NVMLError:
            pass
        return used, proc

    return read

