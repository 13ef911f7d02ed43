"""What a result line needs to be judged and reproduced: versions, device, git revision."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess

import torch

from profiler.config import REPO_ROOT
from profiler.results import slugify  # the package's one slug (torch-free; re-exported here)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_revision() -> str | None:
    """HEAD of the checkout the package runs from, with '-dirty' when the tree has changes."""
    try:
        rev = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def nvidia_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        drv = pynvml.nvmlSystemGetDriverVersion()
        return drv.decode() if isinstance(drv, bytes) else str(drv)
    except Exception:  # no NVML, no driver: the CPU case
        return None


def host_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def device_identity(device: str) -> tuple[str, int | None]:
    """(name, total bytes) of the device a run uses."""
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return props.name, int(props.total_memory)
    return "cpu", host_memory_bytes()


def collect_env(device: str) -> dict:
    """The EnvInfo dict of profiler.schema (call after CUDA init when device is cuda)."""
    name, total = device_identity(device)
    return {
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "driver": nvidia_driver() if device == "cuda" else None,
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "bitsandbytes": _version("bitsandbytes"),
        "accelerate": _version("accelerate"),
        "git_revision": git_revision(),
        "device_name": name,
        "device_total_bytes": total,
        "device_slug": slugify(name),
    }
