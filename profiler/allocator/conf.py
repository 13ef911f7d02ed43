"""The caching allocator's settings: a PYTORCH_ALLOC_CONF string parsed as torch 2.13 parses it.

Sources (torch 2.13.0, git cf30153c, headers installed in the venv under torch/include/c10):
- core/AllocatorConfig.h l.17-25: kSmallBuffer 2 MiB, kMinBlockSize 512, kSmallSize 1 MiB, kMinLargeAlloc 10 MiB,
  kRoundLarge 2 MiB; l.340 large_segment_size 20 MiB; l.342 max_split_size unlimited; l.184-189
  max_non_split_rounding 20 MiB by default; l.351 garbage_collection_threshold 0; l.353 expandable_segments false;
  l.157-160: PYTORCH_ALLOC_CONF is read first, PYTORCH_CUDA_ALLOC_CONF kept "with lower priority".
- cuda/CUDAAllocatorConfig.h l.158-175: the CUDA-only keys (release_lock_on_cudamalloc, pinned_*, backend,
  per_process_memory_fraction l.173 with default 1.0 l.221, graph_capture_record_stream_reuse,
  throw_on_cudamalloc_oom); none but per_process_memory_fraction and backend changes what is reserved.
- c10/core/AllocatorConfig.cpp (AcceleratorAllocatorConfig::parseArgs, read in the code index): max_split_size_mb and
  max_non_split_rounding_mb must be >= 20 (kLargeBuffer / MiB); garbage_collection_threshold in (0, 1);
  roundup_power2_divisions is one power of 2 for every size, or a list `[256:1,512:2,>:8]` whose boundaries (MiB,
  powers of 2) index 16 intervals from 1 MiB to 64 GiB (index = log2 of the boundary in MiB).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from profiler.config import ConfigError

MIB = 2**20
INTERVALS = 16  # kRoundUpPowerOfTwoIntervals: 1 MiB .. 64 GiB
MODELLED = ("max_split_size_mb", "max_non_split_rounding_mb", "garbage_collection_threshold",
            "roundup_power2_divisions", "expandable_segments", "per_process_memory_fraction", "backend")
# keys torch 2.13 accepts that change nothing the replay counts (pinned host memory, locking, IPC, warnings)
NO_EFFECT = ("pinned_use_background_threads", "release_lock_on_cudamalloc", "pinned_use_cuda_host_register",
             "release_lock_on_hipmalloc", "pinned_use_hip_host_register", "graph_capture_record_stream_reuse",
             "pinned_reserve_segment_size_mb", "pinned_num_register_threads", "pinned_free_catch_all",
             "throw_on_cudamalloc_oom", "expandable_segments_handle_type", "large_segment_size_mb")


@dataclass(frozen=True)
class AllocatorConf:
    """The settings the replay honours (defaults: torch's)."""

    max_split_size: int | None = None  # bytes; None = unlimited (every block may split)
    max_non_split_rounding: int = 20 * MIB  # an oversize block serves requests up to this much smaller
    garbage_collection_threshold: float = 0.0  # 0 = off
    expandable_segments: bool = False
    per_process_memory_fraction: float | None = None  # None = not set (1.0 in torch; GC needs it set)
    roundup_power2_divisions: tuple[int, ...] = field(default=(0,) * INTERVALS)
    text: str = ""  # the string parsed ("" = defaults)
    source: str = "defaults"  # where it came from: allocator.conf, PYTORCH_ALLOC_CONF, ...

    def divisions(self, size: int) -> int:
        """AcceleratorAllocatorConfig::roundup_power2_divisions(size): the interval of log2(size) from 1 MiB."""
        log_size = size.bit_length() - 1
        index = max(0, log_size - 20)
        return self.roundup_power2_divisions[min(index, INTERVALS - 1)]

    def describe(self) -> str:
        return f"{self.text or '(torch defaults)'} [{self.source}]"


def _fail(key: str, why: str, allowed: str) -> ConfigError:
    return ConfigError(f"allocator.conf: {key} {why}; allowed: {allowed}")


def _power_of_2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def _parse_divisions(value: str) -> tuple[int, ...]:
    key = "roundup_power2_divisions"
    allowed = "a power of 2, or [MiB:divisions,...,>:divisions] with powers of 2"
    if not value.startswith("["):
        try:
            n = int(value)
        except ValueError:
            raise _fail(key, f"{value!r} is not a number", allowed) from None
        if not _power_of_2(n):
            raise _fail(key, f"{n} is not a power of 2", allowed)
        return (n,) * INTERVALS
    if not value.endswith("]"):
        raise _fail(key, f"{value!r} has no closing ]", allowed)
    out = [0] * INTERVALS
    first, last = True, 0
    for item in filter(None, (s.strip() for s in value[1:-1].split(","))):
        bound, _, div = item.partition(":")
        try:
            d = int(div)
        except ValueError:
            raise _fail(key, f"{item!r} is not boundary:divisions", allowed) from None
        if d != 0 and not _power_of_2(d):
            raise _fail(key, f"divisions {d} is not a power of 2 or 0", allowed)
        if bound == ">":
            out[last + 1:] = [d] * (INTERVALS - last - 1)
            continue
        try:
            b = int(bound)
        except ValueError:
            raise _fail(key, f"{item!r} is not boundary:divisions", allowed) from None
        if not _power_of_2(b):
            raise _fail(key, f"boundary {b} is not a power of 2", allowed)
        idx = min(b.bit_length() - 1, INTERVALS - 1)
        if first:
            out[:idx] = [d] * idx
            first = False
        out[idx] = d
        last = idx
    return tuple(out)


def _split(text: str) -> list[tuple[str, str]]:
    """key:value pairs; a value may be a [..] list holding commas and colons."""
    pairs, depth, cur = [], 0, ""
    for ch in text.replace(" ", "") + ",":
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            if cur:
                key, sep, value = cur.partition(":")
                if not sep or not value:
                    raise ConfigError(f"allocator.conf: {cur!r} is not key:value; allowed keys: "
                                      f"{', '.join(MODELLED + NO_EFFECT)}")
                pairs.append((key, value))
            cur = ""
        else:
            cur += ch
    return pairs


def parse_conf(text: str | None, source: str = "allocator.conf") -> AllocatorConf:
    """An AllocatorConf from a PYTORCH_ALLOC_CONF string; ConfigError (one line, the key and what is allowed)."""
    if not text or not text.strip():
        return AllocatorConf(source="defaults" if not text else source)
    kw: dict = {}
    for key, value in _split(text):
        if key in ("max_split_size_mb", "max_non_split_rounding_mb"):
            try:
                mb = int(value)
            except ValueError:
                raise _fail(key, f"{value!r} is not a whole number of MiB", "an integer >= 20") from None
            if mb < 20:
                raise _fail(key, f"{mb} is too small", "an integer >= 20 (kLargeBuffer / MiB)")
            kw["max_split_size" if key == "max_split_size_mb" else "max_non_split_rounding"] = mb * MIB
        elif key in ("garbage_collection_threshold", "per_process_memory_fraction"):
            try:
                x = float(value)
            except ValueError:
                raise _fail(key, f"{value!r} is not a number", "a number in (0, 1)") from None
            lo_ok = x > 0 if key == "garbage_collection_threshold" else x >= 0
            if not (lo_ok and (x < 1 if key == "garbage_collection_threshold" else x <= 1)):
                raise _fail(key, f"{x} is out of range", "(0.0, 1.0)" if key.startswith("garbage") else "[0.0, 1.0]")
            kw[key] = x
        elif key == "expandable_segments":
            if value not in ("True", "False", "true", "false"):
                raise _fail(key, f"{value!r} is not a boolean", "True, False")
            kw[key] = value in ("True", "true")
        elif key == "roundup_power2_divisions":
            kw[key] = _parse_divisions(value)
        elif key == "backend":
            if value != "native":
                raise _fail(key, f"{value!r} is not replayed (cudaMallocAsync keeps its own pool)", "native")
        elif key not in NO_EFFECT:
            raise ConfigError(f"allocator.conf: unknown key {key!r}; allowed: {', '.join(MODELLED + NO_EFFECT)}")
    return AllocatorConf(**kw, text=text.strip(), source=source)


def conf_from(config_text: str | None, environ: Mapping[str, str] | None = None) -> AllocatorConf:
    """The settings a run uses: the config's `allocator.conf` when set, else PYTORCH_ALLOC_CONF, else
    PYTORCH_CUDA_ALLOC_CONF (AcceleratorAllocatorConfig::instance reads them in that order), else defaults."""
    if config_text:
        return parse_conf(config_text, "allocator.conf")
    env = os.environ if environ is None else environ
    for name in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"):
        if env.get(name):
            return parse_conf(env[name], name)
    return AllocatorConf()
