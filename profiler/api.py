"""The Python API behind `profiler.fit/estimate/simulate/max_batch` (an entry point, like cli.py).

Same validation as the CLI, as exceptions: ConfigError (a ValueError) for bad input, SimulationFailed when a
model cannot be traced. Results are typed: Estimate, RunRecord, MaxSolution, FitResult.
"""

from __future__ import annotations

from pathlib import Path

from profiler.config import ConfigError, RunConfig, load_config
from profiler.formulas import Estimate
from profiler.predict.fit import FitResult, Predictor, calibrated_allowance, predict_fit
from profiler.predict.gpus import Gpu, gpu_by_name, gpu_by_size
from profiler.predict.search import MaxSolution
from profiler.schema import RunRecord

ConfigLike = RunConfig | str | Path


def _config(config: ConfigLike, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    if isinstance(config, RunConfig):
        return load_config(None, list(overrides), base=config.model_dump(mode="json")) if overrides else config
    return load_config(config, list(overrides))


def _gpu(gpu: str | None, gpu_memory: str | None) -> Gpu:
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


def fit(model: str, regime: str = "lora", seq: int = 2048, batch: int | str = 1, gpu: str | None = None,
        gpu_memory: str | None = None, optimizer: str | None = None, checkpointing: bool = False,
        overrides: list[str] | tuple[str, ...] = (), config: str | None = None, search: bool = True,
        all_estimators: bool = False, workers: int | None = None, recipe: str | None = None) -> FitResult:
    """`fit MODEL ...` as a function: the FitResult the command prints (`recipe` None: the command's default, trl)."""
    import argparse

    from profiler.commands.fit import REGIMES, build_config
    from profiler.predict.model_source import resolve_model

    if regime not in REGIMES:
        raise ConfigError(f"regime: {regime!r} is not allowed; allowed: {', '.join(REGIMES)}")
    g = _gpu(gpu, gpu_memory)
    src = resolve_model(model)
    args = argparse.Namespace(config=config, regime=regime, seq=seq, batch=str(batch), optimizer=optimizer,
                              checkpointing=checkpointing, overrides=list(overrides), recipe=recipe)
    cfg = build_config(args, src.arch)
    res = predict_fit(cfg, g, model_name=src.name, model_source=src.how, auto_batch=str(batch) == "auto",
                      search=search, all_estimators=all_estimators, workers=workers)
    from profiler.commands.fit import defaults_lines

    res.recipe, res.defaults = cfg.recipe, defaults_lines(cfg)
    return res
