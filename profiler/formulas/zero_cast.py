"""The parameter dtypes of a QLoRA model after DeepSpeed's bf16/fp16 mode has cast it (ZeRO-3 + QLoRA).

DeepSpeed 0.19.8 `DeepSpeedEngine._configure_distributed_model` (runtime/engine.py) calls
`_cast_module_mixed_precision(param_dtype, ...)` with param_dtype = bfloat16 under `bf16.enabled`, float16 under
`fp16.enabled` (`_mixed_precision_dtypes`): every parameter in CASTABLE_DTYPES (fp16, bf16, fp32, fp64) of another
dtype gets `p.data = p.data.to(param_dtype)`. A quantized model is not built under `zero.Init` (transformers 5.23
modeling_utils.py `get_init_context`: "not is_quantized"), so `is_zero_init_model` is False and the cast runs. It
comes after peft and TRL, at `deepspeed.initialize`: peft's fp32 adapters (`autocast_adapter_dtype`) and
`prepare_model_for_kbit_training`'s fp32 norms, embeddings and head are 16-bit again when the step runs, and the
hidden stream with them. The packed 4-bit weights are left alone only when stored in that very dtype
(config.py `_check_zero3_qlora` requires it). Modelled for qlora under ZeRO (the regime this was read for); the
same cast of fp32 LoRA adapters under ZeRO + LoRA is not applied here.
"""

from __future__ import annotations

from profiler.config import RunConfig


def zero_param_dtype(cfg: RunConfig) -> str | None:
    """The dtype DeepSpeed casts every floating parameter of this QLoRA config to, or None (no cast modelled):
    the model's dtype under a ZeRO strategy with a 16-bit model (profiler.measure.parallel enables DeepSpeed's
    bf16/fp16 mode from `model.dtype`, as accelerate's `mixed_precision` does)."""
    if cfg.regime.kind != "qlora" or not cfg.parallel.strategy.startswith("zero"):
        return None
    return cfg.model.dtype if cfg.model.dtype in ("bfloat16", "float16") else None


def kbit_fp32(cfg: RunConfig) -> bool:
    """Whether `prepare_model_for_kbit_training`'s fp32 upcast of the unquantized parameters holds in the step:
    qlora with prepare_kbit, unless DeepSpeed casts them back (zero_param_dtype)."""
    return cfg.regime.kind == "qlora" and cfg.regime.prepare_kbit and zero_param_dtype(cfg) is None
