"""The folk rules: a bytes-per-parameter figure times the parameter count.

They are stated for full fine-tuning (or, for rule_1p2x, for serving). Applied to other regimes here the
way a careful user would: weights at the regime's storage precision for all P parameters, gradients and
optimizer bytes only for the trainable ones. Inference gets weights only (the rules have no KV cache).
"""

from __future__ import annotations

from profiler.config import RunConfig
from profiler.formulas import Estimate, make_estimate, register
from profiler.formulas.arch import arch_of
from profiler.formulas.params import param_plan

DTYPE_BITS = {"float32": 32, "bfloat16": 16, "float16": 16}


def weight_bits(cfg: RunConfig) -> int:
    """Q of the rules: bits per stored base weight (the qlora bits, else the model dtype's)."""
    return cfg.regime.bits if cfg.regime.kind == "qlora" else DTYPE_BITS[cfg.model.dtype]


def rule_1p2x_bytes(params: int, bits: int) -> tuple[int, int]:
    """(weights, overhead) of M = P x (Q/8) x 1.2: 13e9 params at 16 bit -> 26 GB + 5.2 GB = 31.2 GB."""
    weights = params * bits // 8
    return weights, weights // 5


@register("rule_1p2x")
def rule_1p2x(cfg: RunConfig) -> Estimate:
    """M = P x (Q/8) x 1.2: the common deployment rule, 20 % on top of the weights for everything else.

    Source: Sam Stoelinga / Substratus, "Calculating GPU memory for serving LLMs" (2023),
    https://www.substratus.ai/blog/calculating-gpu-memory-for-llm ; repeated in many sizing guides.
    """
    P = arch_of(cfg).total_params
    w, over = rule_1p2x_bytes(P, weight_bits(cfg))
    return make_estimate(
        "rule_1p2x",
        {"weights": w, "overhead": over},
        "https://www.substratus.ai/blog/calculating-gpu-memory-for-llm",
        "serving rule applied as is to every regime (no training state)",
    )


def _per_param(
    cfg: RunConfig, name: str, weights_bpp: float, grad_bpp: float, opt_bpp: float, source: str, notes: str
) -> Estimate:
    """weights_bpp x P (at 16 bit; scaled by Q/16 for other storage) + (grad+opt) x trainable params."""
    P = arch_of(cfg).total_params
    w = P * weights_bpp * weight_bits(cfg) / 16
    if cfg.regime.kind == "inference":
        return make_estimate(name, {"weights": w}, source, notes + "; inference: weights only")
    T = param_plan(cfg).trainable_numel
    return make_estimate(
        name, {"weights": w, "gradients": T * grad_bpp, "optimizer": T * opt_bpp}, source, notes
    )


@register("adam_8_bytes")
def adam_8_bytes(cfg: RunConfig) -> Estimate:
    """FP16 training with Adam = 8 bytes/param: fp16 weights (2) + fp16 gradients (2) + two fp16
    moments (2 + 2).

    Source: the "8 bytes per parameter" rule of thumb, e.g. EleutherAI, "Transformer Math 101" (2023)
    https://blog.eleuther.ai/transformer-math/ (its low-precision-optimizer lower bound) and many blog posts.
    """
    return _per_param(
        cfg,
        "adam_8_bytes",
        2,
        2,
        4,
        "https://blog.eleuther.ai/transformer-math/",
        "8 B/param: 2 weights + 2 gradients + 4 Adam (gradients and moments only for trainable)",
    )


@register("adam_4x")
def adam_4x(cfg: RunConfig) -> Estimate:
    """Training ~ weights + gradients + 2 x weights (Adam) = 4 x model bytes.

    Source: the "4x the model size" rule, e.g. Hugging Face accelerate docs, "Understanding how big of a model
    can fit on your machine" (https://huggingface.co/docs/accelerate/usage_guides/model_size_estimator)
    and countless forum answers.
    """
    b = DTYPE_BITS[cfg.model.dtype] / 8  # gradients and moments in the parameter dtype
    P = arch_of(cfg).total_params
    w = P * weight_bits(cfg) / 8
    src = "https://huggingface.co/docs/accelerate/usage_guides/model_size_estimator"
    if cfg.regime.kind == "inference":
        return make_estimate("adam_4x", {"weights": w}, src, "4 x model bytes; inference: weights only")
    T = param_plan(cfg).trainable_numel
    return make_estimate(
        "adam_4x",
        {"weights": w, "gradients": T * b, "optimizer": 2 * T * b},
        src,
        "weights + gradients + 2 x weights (gradients and moments only for trainable)",
    )


@register("mixed_precision_16")
def mixed_precision_16(cfg: RunConfig) -> Estimate:
    """Mixed-precision Adam = 16 bytes/param: fp16 weights (2) + fp16 gradients (2) + fp32 master weights,
    momentum and variance (4 + 4 + 4, K = 12).

    Source: Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models",
    SC 2020, section 3.1, https://arxiv.org/abs/1910.02054
    """
    return _per_param(
        cfg,
        "mixed_precision_16",
        2,
        2,
        12,
        "https://arxiv.org/abs/1910.02054",
        "16 B/param (ZeRO K=12): fp32 master + 2 moments for trainable params",
    )
