"""`recipe: trl | trainer | plain`: the defaults a stack sets that change memory, each with its source line.

A recipe fills keys the user left unset (a YAML key, a key=value override or a command flag always wins);
`RunConfig.recipe_defaults` lists what it filled, so `fit` can print them. `plain` fills nothing: it is the
harness's own loop, so every config written before recipes existed keeps its meaning and its config_hash.
Versions read: trl 1.16, transformers 5.23, accelerate 1.15, peft 0.21.2 (site-packages paths below).

What a recipe changes beyond keys (the loop itself, profiler.measure.harness): under `trl` and `trainer` with
train.autocast set, the forward's outputs are cast to float32 as accelerate's native AMP does
(accelerate/accelerator.py:1824-1835 `convert_outputs_to_fp32`); under `trl` with a PEFT model and gradient
checkpointing, `enable_input_require_grads()` is called (trl/trainer/sft_trainer.py:899-900).
"""

from __future__ import annotations

import importlib.util
from typing import Any

RECIPES = ("plain", "trl", "trainer")

# (dotted key, value, source) — sources are site-packages paths at the pinned versions
_TRAINER_COMMON: list[tuple[str, Any, str]] = [
    ("optimizer.name", "adamw_fused",
     "transformers/training_args.py:806-811 (optim defaults to adamw_torch_fused with torch >= 2.8)"),
    ("train.max_grad_norm", 1.0, "transformers/training_args.py:866 (max_grad_norm=1.0; trainer.py:1930 clips)"),
]
_TRL: list[tuple[str, Any, str]] = [
    ("train.gradient_checkpointing", True, "trl/trainer/base_config.py:62-63 (gradient_checkpointing=True)"),
    ("train.autocast", "bf16", "trl/trainer/base_config.py:108 (bf16 = not fp16) -> accelerate native AMP "
     "(accelerate/accelerator.py:1824)"),
    *_TRAINER_COMMON,
]
_TRL_LOSS = ("train.loss", "chunked", "trl/trainer/sft_trainer.py:1144 (add_fused_lm_head: chunked LM-head loss, "
             "no full logits; trl/kernels/chunked_logprob.py)")
_TRL_QLORA: list[tuple[str, Any, str]] = [
    ("regime.prepare_kbit", False, "trl/trainer/sft_trainer.py (never calls prepare_model_for_kbit_training)"),
    ("regime.lora.dtype", "bfloat16", "trl/trainer/sft_trainer.py:908-913 (QLoRA: trainable params cast to bf16)"),
]
_TRAINER: list[tuple[str, Any, str]] = [
    ("train.autocast", "bf16", "bf16=True as fine-tuning scripts set it (TrainingArguments' own default is False, "
     "transformers/training_args.py:874: set train.autocast=none for that) -> accelerate native AMP"),
    *_TRAINER_COMMON,
]


def trl_available() -> bool:
    """TRL's chunked loss runs TRL's own code (trl.trainer.utils.add_fused_lm_head): it needs trl installed."""
    return importlib.util.find_spec("trl") is not None


def recipe_table(recipe: str, kind: str) -> list[tuple[str, Any, str]]:
    """The (key, value, source) defaults of `recipe` for regime `kind` (nothing for inference: no stack trains)."""
    if recipe == "plain" or kind == "inference":
        return []
    if recipe == "trainer":
        return list(_TRAINER)
    rows = list(_TRL)
    if trl_available():
        rows.append(_TRL_LOSS)
    if kind == "qlora":
        rows += _TRL_QLORA
    return rows


def _get(data: dict, dotted: str) -> tuple[bool, Any]:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _set(data: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = data
    for p in parents:
        nxt = node.get(p)
        nxt = dict(nxt) if isinstance(nxt, dict) else {}
        node[p] = nxt
        node = nxt
    node[last] = value


def fill_recipe(data: dict) -> tuple[dict, dict[str, Any]]:
    """`data` (a config dict before validation) with its recipe's defaults filled where unset, and the keys filled
    -> value. Invalid shapes (a recipe that is not a string, a section that is not a mapping) are left for
    validation to report."""
    recipe = data.get("recipe", "plain")
    regime = data.get("regime")
    kind = regime.get("kind", "full") if isinstance(regime, dict) else "full"
    if not isinstance(recipe, str) or recipe not in RECIPES or not isinstance(kind, str):
        return data, {}
    out = dict(data)
    filled: dict[str, Any] = {}
    parallel = data.get("parallel")
    zero = isinstance(parallel, dict) and str(parallel.get("strategy", "")).startswith("zero")
    for key, value, _ in recipe_table(recipe, kind):
        if zero and key == "optimizer.name":  # DeepSpeed runs its own (torch) AdamW here: the key's default stands
            continue
        given, _old = _get(out, key)
        if given:
            continue
        parent_ok = all(isinstance(_get(out, ".".join(key.split(".")[:i]))[1], dict | type(None))
                        for i in range(1, key.count(".") + 1))
        if not parent_ok:
            continue
        _set(out, key, value)
        filled[key] = value
    for key, value in _fsdp2_mixed_precision(recipe, out).items():
        _set(out, key, value)
        filled[key] = value
    return out, filled


# accelerate/state.py:1014-1015 (FSDP + mixed precision: fsdp_plugin.set_mixed_precision) and
# accelerate/utils/dataclasses.py:2136-2141 (FSDP2: MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=dtype,
# output_dtype=dtype)); output_dtype is not modelled (the root's outputs are cast to float32 by native AMP anyway)
FSDP2_MP_SOURCE = "accelerate/state.py:1015 + utils/dataclasses.py:2136-2141 (bf16/fp16 -> FSDP2 MixedPrecisionPolicy)"


def _fsdp2_mixed_precision(recipe: str, data: dict) -> dict[str, str]:
    """Under a trainer stack with fsdp2 and bf16/fp16 mixed precision, accelerate sets FSDP2's mixed-precision policy
    (parameters all-gathered and gradients reduce-scattered in that dtype): the unset parallel.param_dtype and
    parallel.reduce_dtype, filled."""
    if recipe == "plain":
        return {}
    parallel, train = data.get("parallel"), data.get("train")
    if not isinstance(parallel, dict) or parallel.get("strategy") != "fsdp2" or not isinstance(train, dict):
        return {}
    dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(str(train.get("autocast")))
    if dtype is None:
        return {}
    return {f"parallel.{k}": dtype for k in ("param_dtype", "reduce_dtype") if k not in parallel}


def source_of(recipe: str, kind: str, key: str) -> str:
    """Where a recipe default comes from (the table's source text)."""
    if key in ("parallel.param_dtype", "parallel.reduce_dtype") and recipe != "plain":
        return FSDP2_MP_SOURCE
    return next((src for k, _, src in recipe_table(recipe, kind) if k == key), "")


# transformers TrainingArguments `optim` names (training_args.py:113 OptimizerNames) -> ours, or why refused
TRAINER_OPTIMIZERS: dict[str, str] = {
    "adamw_torch": "adamw", "adamw_torch_fused": "adamw_fused", "adamw_bnb_8bit": "adamw_8bit",
    "adamw_8bit": "adamw_8bit", "paged_adamw_8bit": "paged_adamw_8bit", "sgd": "sgd",
}
REFUSED_OPTIMIZERS: dict[str, str] = {
    "adafactor": "factored second moments (transformers.optimization.Adafactor) are not modelled",
    "paged_adamw_32bit": "bitsandbytes 32-bit paged state is not modelled",
    "adamw_torch_4bit": "torchao 4-bit state is not modelled",
    "adamw_torch_8bit": "torchao 8-bit state is not modelled",
    "adagrad": "not modelled", "rmsprop": "not modelled", "lion_8bit": "not modelled", "lion_32bit": "not modelled",
    "adamw_anyprecision": "not modelled", "ademamix": "not modelled", "ademamix_8bit": "not modelled",
    "galore_adamw": "GaLore projections are not modelled", "galore_adamw_8bit": "GaLore projections are not modelled",
    "lomo": "LOMO fuses the step into backward: not modelled", "adalomo": "not modelled",
    "schedule_free_adamw": "not modelled", "schedule_free_radam": "not modelled", "grokadamw": "not modelled",
    "rmsprop_bnb": "not modelled", "rmsprop_bnb_8bit": "not modelled", "rmsprop_bnb_32bit": "not modelled",
    "paged_lion_8bit": "not modelled", "paged_lion_32bit": "not modelled", "paged_ademamix_8bit": "not modelled",
    "paged_ademamix_32bit": "not modelled", "adamw_torch_xla": "XLA only", "adamw_torch_npu_fused": "NPU only",
}


def trainer_optimizer(name: str, field: str = "optim") -> str:
    """Our optimizer.name for a Trainer `optim` name; ValueError (one line naming the field) when not modelled."""
    if name in TRAINER_OPTIMIZERS:
        return TRAINER_OPTIMIZERS[name]
    why = REFUSED_OPTIMIZERS.get(name, "not a transformers OptimizerNames value")
    raise ValueError(f"{field}: {name!r} is refused ({why}); allowed: {', '.join(TRAINER_OPTIMIZERS)}")
