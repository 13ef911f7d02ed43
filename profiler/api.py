"""The Python API behind `profiler.fit/estimate/simulate/max_batch` (an entry point, like cli.py).

Same validation as the CLI, as exceptions: ConfigError (a ValueError) for bad input, SimulationFailed when a
model cannot be traced. Results are typed: Estimate, RunRecord, MaxSolution, FitResult.
"""

from __future__ import annotations

import os
from pathlib import Path

from profiler.config import ConfigError, RunConfig, echo, load_config
from profiler.formulas import Estimate
from profiler.predict.fit import FitResult, Predictor, calibrated_allowance, predict_fit
from profiler.predict.gpus import Gpu, gpu_by_name, gpu_by_size
from profiler.predict.search import MaxSolution
from profiler.schema import RunRecord

ConfigLike = RunConfig | str | Path


def _config(config: ConfigLike, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    if not isinstance(config, RunConfig | str | os.PathLike):
        raise ConfigError(f"config: {echo(config)} is not allowed; allowed: a RunConfig or a path to a run config YAML")
    if isinstance(overrides, str) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"overrides: {echo(overrides)} is not allowed; allowed: a list of key=value strings")
    if isinstance(config, RunConfig):
        return load_config(None, list(overrides), base=config.model_dump(mode="json")) if overrides else config
    return load_config(config, list(overrides))


def _gpu(gpu: str | None, gpu_memory: str | None) -> Gpu:
    if gpu is not None and not isinstance(gpu, str):
        raise ConfigError(f"gpu: {echo(gpu)} is not allowed; allowed: a preset name (a str) such as h100, rtx4090")
    if gpu_memory is not None and (isinstance(gpu_memory, bool) or not isinstance(gpu_memory, str | int)):
        raise ConfigError(f"gpu_memory: {echo(gpu_memory)} is not allowed; allowed: a size with a unit like 24GB")
    if (gpu is None) == (gpu_memory is None):
        raise ConfigError("gpu: give exactly one of gpu (a preset name) or gpu_memory (a size like 24GB)")
    return gpu_by_name(gpu) if gpu else gpu_by_size(str(gpu_memory))


def estimate(config: ConfigLike, estimator: str = "components", overrides: list[str] | tuple[str, ...] = ()
             ) -> Estimate:
    """One named formula's prediction (profiler.formulas); ConfigError for an unknown estimator."""
    from profiler.formulas import ESTIMATORS
    from profiler.formulas import estimate as run_estimator

    if estimator not in ESTIMATORS:
        raise ConfigError(f"estimator: {estimator!r} is not allowed; allowed: {', '.join(ESTIMATORS)}")
    return run_estimator(estimator, _config(config, overrides))


def simulate(config: ConfigLike, overrides: list[str] | tuple[str, ...] = ()) -> RunRecord:
    """The run harness on fake tensors; the result line as a validated RunRecord (nothing is written)."""
    from profiler.measure.quiet import quiet_libraries
    from profiler.simulate.backend import simulate as run_simulation

    quiet_libraries()
    return RunRecord.model_validate(run_simulation(_config(config, overrides)))


def max_batch(config: ConfigLike, gpu: str | None = None, gpu_memory: str | None = None,
              overrides: list[str] | tuple[str, ...] = ()) -> MaxSolution:
    """Largest train.batch_size at the config's seq that fits the GPU under fit's predictor."""
    from profiler.predict.fit import max_batch as solve

    cfg = _config(config, overrides)
    g = _gpu(gpu, gpu_memory)
    allowance = calibrated_allowance(cfg, g)
    return solve(Predictor(allowance, g.total_bytes - allowance.context_bytes), cfg)


def fit(model: str | os.PathLike, regime: str | None = None, seq: int | None = None, batch: int | str | None = None,
        gpu: str | None = None, gpu_memory: str | None = None, optimizer: str | None = None,
        checkpointing: bool = False, overrides: list[str] | tuple[str, ...] = (), config: str | None = None,
        search: bool = True, all_estimators: bool = False, workers: int | None = None) -> FitResult:
    """`fit MODEL ...` as a function: the FitResult the command prints. regime / seq / batch left as None take
    the command's defaults (lora, 2048, 1; or --config's); one given and also set by an override is a
    ConfigError, as on the command line."""
    import argparse

    from profiler.commands.fit import REGIMES, build_config
    from profiler.model_source import resolve_model

    if not isinstance(model, str | os.PathLike):
        raise ConfigError(f"model: {echo(model)} is not allowed; allowed: a bundled name, a config.json path, a "
                          f"checkpoint directory or a Hub id (a str or a Path)")
    if regime is not None and (not isinstance(regime, str) or regime not in REGIMES):
        raise ConfigError(f"regime: {echo(regime)} is not allowed; allowed: {', '.join(REGIMES)}")
    if isinstance(overrides, str) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"overrides: {echo(overrides)} is not allowed; allowed: a list of key=value strings")
    if config is not None and not isinstance(config, str | os.PathLike):
        raise ConfigError(f"config: {echo(config)} is not allowed; allowed: a path to a run config YAML")
    if workers not in (None, 1, 2) or isinstance(workers, bool):
        raise ConfigError(f"workers: {echo(workers)} is not allowed; allowed: None (the default), 1 or 2")
    g = _gpu(gpu, gpu_memory)
    src = resolve_model(os.fspath(model))
    args = argparse.Namespace(config=config, regime=regime, seq=seq, batch=None if batch is None else str(batch),
                              optimizer=optimizer, checkpointing=checkpointing, overrides=list(overrides))
    cfg = build_config(args, src.arch, g)
    return predict_fit(cfg, g, model_name=src.name, model_source=src.how, auto_batch=str(batch) == "auto",
                       search=search, all_estimators=all_estimators, workers=workers)
