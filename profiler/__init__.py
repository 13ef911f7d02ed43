"""llm-memprof: measure, simulate and predict the GPU memory of fine-tuning Hugging Face causal LMs.

The Python API (imported lazily: `import profiler` stays cheap; torch loads on first use):

    import profiler
    cfg = profiler.load_config("configs/llama7b_lora.yaml", ["train.seq_len=2048"])  # RunConfig
    profiler.estimate(cfg, "components")      # Estimate (a formula; bytes per component)
    profiler.simulate(cfg)                    # RunRecord (the harness on fake tensors)
    profiler.max_batch(cfg, gpu="a100-40gb")  # MaxSolution (largest batch, checked by simulation)
    profiler.fit("llama-3-8b", regime="qlora4", seq=2048, gpu="rtx4090")  # FitResult
    with profiler.track(model, optimizer) as t: ...  # your own loop, phases found by hooks (t.record)

Bad input raises profiler.ConfigError (a ValueError) with the same one-line message the CLI prints.
"""

from __future__ import annotations

import importlib
import types

__version__ = "0.1.0"
__all__ = ["ConfigError", "__version__", "estimate", "fit", "load_config", "max_batch", "simulate", "track"]


def __getattr__(name: str):
    if name in ("ConfigError", "load_config"):
        import profiler.config

        return getattr(profiler.config, name)
    if name in ("estimate", "fit", "max_batch"):
        from profiler import api

        return getattr(api, name)
    if name == "track":
        from profiler.measure.track import track

        return track
    raise AttributeError(f"module 'profiler' has no attribute {name!r}")


class _CallableSubpackage(types.ModuleType):
    """The class of the `profiler.simulate` subpackage: calling it is the API function `profiler.api.simulate`.

    One object under one name, so ordinary imports behave: `import profiler.simulate.backend`,
    `profiler.simulate.backend.simulate`, `from profiler.simulate import backend` and mock.patch reach the
    subpackage, while `profiler.simulate(cfg)` and `from profiler import simulate; simulate(cfg)` run a
    simulation (returns a RunRecord)."""

    def __call__(self, config, overrides=()):
        from profiler.api import simulate

        return simulate(config, overrides)


# The subpackage's __init__ imports nothing (no torch): binding it now costs microseconds, and the import
# system's own `profiler.simulate = <module>` (on any later `import profiler.simulate.x`) keeps this object.
importlib.import_module(f"{__name__}.simulate").__class__ = _CallableSubpackage
