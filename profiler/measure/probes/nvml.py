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


# Device used before this process first initialised CUDA. CUDA cannot be de-initialised, so a later run in
# the same process cannot read such a baseline again: its read would already hold this process's context.
_PRE_CUDA_BASELINE: int | None = None

BASELINE_PRE_CUDA = "read before this process initialised CUDA"
BASELINE_FIRST = "this process's first pre-CUDA baseline (CUDA already initialised by an earlier run)"
BASELINE_LATE = "read after this process initialised CUDA: includes its context, so context is understated"


def remember_pre_cuda_baseline(reader: Reader) -> int:
    """Read and keep the device use now, for a process that will initialise CUDA outside the harness before
    its first run (a test session, a notebook): its runs then report context against this figure."""
    global _PRE_CUDA_BASELINE
    _PRE_CUDA_BASELINE = reader()[0]
    return _PRE_CUDA_BASELINE


@dataclass
class NvmlResult:
    baseline_used_bytes: int
    peak_used_bytes: int
    peak_process_bytes: int | None
    samples: int
    interval_s: float
    baseline_source: str = BASELINE_PRE_CUDA
    failed_reads: int = 0  # background reads that raised (skipped)


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
        self.baseline_source = BASELINE_PRE_CUDA
        self.failed_reads = 0
        self.error: str | None = None  # a read on the caller's thread failed: NVML figures are void
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
                with self._lock:
                    self.failed_reads += 1
            self._stop.wait(self.interval_s)

    def _main_read(self) -> bool:
        """A read on the caller's (measured) thread: a failure voids the NVML figures, never the run."""
        if self.error is not None:
            return False
        try:
            self._sample()
            return True
        except Exception as exc:
            self.error = f"NVML read failed, no NVML figures recorded: {type(exc).__name__}: {exc}"
            self._stop.set()
            return False

    def start(self, cuda_initialised: bool) -> NvmlSampler:
        """Enter, taking the baseline this process's runs share: read now if CUDA is not initialised yet
        (and remembered for the process), else the remembered one (later runs in one process)."""
        global _PRE_CUDA_BASELINE
        self.__enter__()
        if self.error is not None:
            return self
        if not cuda_initialised:
            _PRE_CUDA_BASELINE = self.baseline
            self.baseline_source = BASELINE_PRE_CUDA
        elif _PRE_CUDA_BASELINE is not None:
            self.baseline = _PRE_CUDA_BASELINE
            self.baseline_source = BASELINE_FIRST
        else:
            self.baseline_source = BASELINE_LATE
        return self

    def __enter__(self) -> NvmlSampler:
        if self._thread is not None or self.error is not None:  # already started (`with s.start(...)`)
            return self
        try:
            self.baseline = self.reader()[0]
        except Exception as exc:
            self.error = f"NVML read failed, no NVML figures recorded: {type(exc).__name__}: {exc}"
            return self
        self.peak_used = self.baseline
        self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        self._main_read()  # one last read so a short run still sees its end state

    def reset_window(self) -> None:
        """Start a new per-phase window (the harness calls this at each phase start)."""
        with self._lock:
            self.window_peak = 0
        self._main_read()

    def read_window(self) -> int | None:
        """Peak device-used bytes since reset_window(), including a read taken now; None once a read on
        this thread failed."""
        if not self._main_read():
            return None
        with self._lock:
            return self.window_peak

    def result(self) -> NvmlResult | None:
        """The run's NVML figures, or None when a read on the measured thread failed (see `error`)."""
        if self.error is not None:
            return None
        with self._lock:
            return NvmlResult(self.baseline, self.peak_used, self.peak_process, self.samples, self.interval_s,
                              self.baseline_source, self.failed_reads)


def _uuid(value) -> str:
    """A GPU UUID as NVML ('GPU-8-4-4-4-12', str or bytes) or torch (the bare 8-4-4-4-12) writes it."""
    text = value.decode() if isinstance(value, bytes) else str(value)
    text = text.strip().lower()
    return text[4:] if text.startswith("gpu-") else text


def _visible_handle(pynvml, cuda=None):
    """NVML handle of the GPU this process's torch uses (under torchrun each rank its own, not GPU 0).

    Once CUDA is initialised (a torchrun rank has called `set_device(LOCAL_RANK)` in parallel.init_real):
    `torch.cuda.current_device()`, matched to an NVML device by UUID (`get_device_properties().uuid`): NVML
    numbers GPUs by PCI bus, CUDA fastest first, so their indices need not agree. Before that (the baseline
    is read before CUDA is initialised, and asking torch for the device would initialise it): entry
    LOCAL_RANK (else 0) of CUDA_VISIBLE_DEVICES, an index or a UUID, as the rank will pick it."""
    if cuda is None:
        import torch

        cuda = torch.cuda
    if cuda.is_initialized():
        want = _uuid(cuda.get_device_properties(cuda.current_device()).uuid)
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            if _uuid(pynvml.nvmlDeviceGetUUID(handle)) == want:
                return handle
    local = os.environ.get("LOCAL_RANK", "0").strip()
    local = int(local) if local.isdigit() else 0
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    entry = visible[local] if local < len(visible) else str(local)
    if entry.isdigit():
        return pynvml.nvmlDeviceGetHandleByIndex(int(entry))
    return pynvml.nvmlDeviceGetHandleByUUID(entry)


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

