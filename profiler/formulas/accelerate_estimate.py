"""Hugging Face Accelerate's `accelerate estimate-memory` figures, computed the way the command does.

The command builds `AutoModel` (the base model, no LM head) in float32 on the meta device, sizes it with
`accelerate.utils.calculate_maximum_sizes`, and for training reports the largest stage of
`accelerate.commands.estimate.estimate_training_usage(size, dtype)` ("Training using Adam", batch size 1):
float32 -> step = 4 x fp32 size (16 B/param); float16/bfloat16 -> optimizer = 2 x fp32 size (8 B/param).
int8/int4 have no training figure (N/A), and for loading the model size is divided by 2/4/8.
"""

from __future__ import annotations

from profiler.config import RunConfig
from profiler.formulas import Estimate, NotApplicable, make_estimate, register
from profiler.formulas.arch import hf_config_of, meta_model

SOURCE = (
    "https://huggingface.co/docs/accelerate/usage_guides/model_size_estimator "
    "(accelerate/commands/estimate.py)"
)
_DIVISOR = {"float32": 1, "float16": 2, "int8": 4, "int4": 8}


def accelerate_dtype(cfg: RunConfig) -> str:
    """The --dtypes value a user would pass: float32, float16 (for bf16 too), int8 or int4."""
    if cfg.regime.kind == "qlora":
        return "int8" if cfg.regime.bits == 8 else "int4"
    return "float32" if cfg.model.dtype == "float32" else "float16"


def accelerate_model_bytes(cfg: RunConfig) -> int:
    """calculate_maximum_sizes(AutoModel on meta, float32)[0], as `estimate-memory` computes it."""
    from accelerate.utils import calculate_maximum_sizes

    model = meta_model(hf_config_of(cfg)).base_model  # == AutoModel.from_config(config, dtype=float32)
    total, _ = calculate_maximum_sizes(model)
    return int(total)


@register("accelerate")
def accelerate(cfg: RunConfig) -> Estimate:
    """`accelerate estimate-memory MODEL --dtypes D`: "Training using Adam" for full fine-tuning, "Total Size"
    for inference (weights only). Other regimes have no figure there and raise NotApplicable.

    Source: Hugging Face Accelerate, model size estimator,
    https://huggingface.co/docs/accelerate/usage_guides/model_size_estimator
    """
    from accelerate.commands.estimate import estimate_training_usage

    kind = cfg.regime.kind
    dtype = accelerate_dtype(cfg)
    fp32_size = accelerate_model_bytes(cfg)
    if kind == "inference":
        return make_estimate(
            "accelerate",
            {"weights": fp32_size / _DIVISOR[dtype]},
            SOURCE,
            f"'Total Size' for --dtypes {dtype}; base model without the LM head",
        )
    if kind != "full":
        raise NotApplicable(
            f"accelerate: estimate-memory has a training figure for full fine-tuning only "
            f"(regime {cfg.regime.label})"
        )
    usage = estimate_training_usage(fp32_size, dtype)
    peak = max(usage.values())
    if dtype == "float32":  # step = model + gradients + 2 x optimizer, all fp32
        comps = {"weights": usage["model"], "gradients": usage["gradients"], "optimizer": usage["optimizer"]}
    else:  # the peak stage is "optimizer" (= "step") = 2 x fp32 size
        comps = {"optimizer": peak}
    return make_estimate(
        "accelerate",
        comps,
        SOURCE,
        f"'Training using Adam' for --dtypes {dtype} = max stage of {usage}; base model only",
        details={f"stage_{k}": v for k, v in usage.items()},
    )
