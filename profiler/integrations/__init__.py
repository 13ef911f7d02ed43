"""Hooks into other people's training code: the transformers / TRL Trainer callback (imports transformers)."""

from profiler.integrations.trainer import MemoryProfilerCallback, profile_trainer

__all__ = ["MemoryProfilerCallback", "profile_trainer"]
