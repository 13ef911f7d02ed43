"""Loaded at start-up by the Python that `llm-memprof trace` runs (this folder is first on PYTHONPATH):
once `transformers.trainer` is imported, every Trainer it builds gets a MemoryProfilerCallback.

Settings come from LLM_MEMPROF_TRACE_* variables. Nothing is imported before transformers is: a script
that never builds a Trainer runs as if untraced. A sitecustomize further down the path still runs.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys


def _patch(module) -> None:
    trainer_cls = module.Trainer
    if getattr(trainer_cls, "_llm_memprof_patched", False):
        return
    original = trainer_cls.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        from profiler.integrations.trainer import profile_trainer

        steps = os.environ.get("LLM_MEMPROF_TRACE_STEPS", "3")
        picture = os.environ.get("LLM_MEMPROF_TRACE_PICTURE") or None
        profile_trainer(self, steps=None if steps in ("all", "") else int(steps),
                        mode=os.environ.get("LLM_MEMPROF_TRACE_MODE", "breakdown"),
                        output=os.environ.get("LLM_MEMPROF_TRACE_OUTPUT") or None,
                        picture=False if picture == "none" else picture)

    trainer_cls.__init__ = __init__
    trainer_cls._llm_memprof_patched = True


class _AfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `transformers.trainer` through the other finders, then patches it once it has run."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers.trainer":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _patch(module)
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]


sys.meta_path.insert(0, _AfterImport())

# chain to the next sitecustomize on the path (the environment's own), if there is one
_here = os.path.dirname(os.path.abspath(__file__))
_rest = [p for p in sys.path if os.path.abspath(p or ".") != _here]
_spec = importlib.machinery.PathFinder.find_spec("sitecustomize", _rest)
if _spec is not None and _spec.loader is not None:
    _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
