"""Loaded at start-up by the Python that `llm-memprof simulate -- python SCRIPT` runs: installs the dry-run
(profiler.dryrun.child) when LLM_MEMPROF_DRYRUN_RESULT is set, then runs the next sitecustomize on the path."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

if os.environ.get("LLM_MEMPROF_DRYRUN_RESULT") and not getattr(sys, "_llm_memprof_dryrun", False):
    sys._llm_memprof_dryrun = True
    from profiler.dryrun.child import install

    install()

# chain to the next sitecustomize on the path (the environment's own), if there is one
_here = os.path.dirname(os.path.abspath(__file__))
_rest = [p for p in sys.path if os.path.abspath(p or ".") != _here]
_spec = importlib.machinery.PathFinder.find_spec("sitecustomize", _rest)
if _spec is not None and _spec.loader is not None:
    _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
