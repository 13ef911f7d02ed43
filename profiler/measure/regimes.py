"""Regimes: which parameters train (full | freeze | lora | qlora | inference), as users set them up with peft."""

from __future__ import annotations

import torch
from torch import nn

from profiler.config import ConfigError, RunConfig


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The repeated transformer blocks (model.layers for Llama-likes, transformer.h for GPT-2)."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for _, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (n is None or len(mod) == n):
            return mod
    raise ConfigError("regime.freeze: cannot find the decoder layers of this model to freeze")


def _apply_freeze(model: nn.Module, cfg: RunConfig) -> None:
    fz = cfg.regime.freeze
    model.requires_grad_(False)
    layers = decoder_layers(model)
    if fz.trainable_layers > len(layers):
        raise ConfigError(f"regime.freeze.trainable_layers: {fz.trainable_layers} exceeds the model's "
                          f"{len(layers)} layers; allowed: 0..{len(layers)}")
    for layer in list(layers)[len(layers) - fz.trainable_layers:]:
        layer.requires_grad_(True)
    names = dict(model.named_modules())
    for wanted in fz.trainable_modules:
        hits = [m for n, m in names.items() if n == wanted or n.endswith("." + wanted)]
        if not hits:
            raise ConfigError(f"regime.freeze.trainable_modules: {wanted!r} is not a module of this model "
                              f"(e.g. {', '.join(list(names)[1:4])})")
        for m in hits:
            m.requires_grad_(True)
    if fz.trainable_layers == 0 and not fz.trainable_modules:
        raise ConfigError("regime.freeze: nothing would train; set trainable_layers > 0 or trainable_modules")


def _apply_lora(model: nn.Module, cfg: RunConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    lc = cfg.regime.lora
    targets = lc.target_modules
    if targets != "all-linear":
        present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        missing = [t for t in targets if t not in present]
        if missing or not targets:  # [] targets nothing: peft raises NoMatchingPeftModuleError
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                             if isinstance(m, nn.Linear) and "lm_head" not in n})
            what = f"{', '.join(map(repr, missing))} not in the model" if missing else "[] adapts nothing"
            raise ConfigError(f"regime.lora.target_modules: {what}; allowed: all-linear or any of "
                              f"{', '.join(linear)}")
    peft_cfg = LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=targets,
                          task_type="CAUSAL_LM")
    model = get_peft_model(model, peft_cfg)  # autocast_adapter_dtype=True: 16-bit adapters become float32
    if lc.dtype != "float32":  # TRL's QLoRA cast (trl/trainer/sft_trainer.py:908-913): DoRA magnitudes stay
        dtype = getattr(torch, lc.dtype)
        for name, param in model.named_parameters():
            if param.requires_grad and "lora_magnitude_vector" not in name:
                param.data = param.data.to(dtype)
    return model


def apply_regime(model: nn.Module, cfg: RunConfig) -> nn.Module:
    """Set requires_grad / wrap with peft; enable gradient checkpointing the way HF Trainer does."""
    kind = cfg.regime.kind
    ckpt = cfg.train.gradient_checkpointing and kind != "inference"
    ck_kwargs = {"use_reentrant": cfg.train.use_reentrant}
    if kind == "inference":
        model.requires_grad_(False)
        model.eval()
        return model
    if kind == "qlora" and cfg.regime.prepare_kbit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=ckpt, gradient_checkpointing_kwargs=ck_kwargs)
    elif ckpt:  # transformers 5 renamed gradient_checkpointing_enable (kept as a deprecated alias)
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=ck_kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ck_kwargs)
    if kind == "full":
        model.requires_grad_(True)
    elif kind == "freeze":
        _apply_freeze(model, cfg)
    else:  # lora, qlora
        if kind == "qlora" and not cfg.regime.prepare_kbit:
            model.requires_grad_(False)
        model = _apply_lora(model, cfg)
        if ckpt and (cfg.recipe == "trl" or cfg.train.use_reentrant):
            # SFTTrainer does this for PEFT + checkpointing (trl/trainer/sft_trainer.py:899-900); reentrant
            # checkpointing needs it to reach the adapters (prepare_model_for_kbit_training does it too)
            model.enable_input_require_grads()
    model.train()
    return model


def trainable_parameters(model: nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def moe_warnings(cfg: RunConfig) -> list[str]:
    """What today's stack does to a mixture-of-experts model that a user would not expect (README "Mixture-of-experts
    models"; checked on transformers 5.23, peft 0.21.2, bitsandbytes 0.50.2), each with the setting that avoids it."""
    from profiler.config import MOE_LORA_NAMES, moe_experts

    rg = cfg.regime
    if rg.kind not in ("lora", "qlora") or moe_experts(cfg.model) < 2:
        return []
    notes = []
    if rg.kind == "qlora" and not rg.quantize_experts:
        tail = ("regime.quantize_experts=true quantizes them as axolotl's quantize_moe_experts does" if rg.bits == 4
                else "4-bit with regime.quantize_experts=true quantizes them")
        notes.append(f"qlora{rg.bits}: bitsandbytes quantizes nn.Linear layers only; the fused expert parameters "
                     f"(most of this model) stay {cfg.model.dtype}; {tail}")
    if rg.quantize_experts:
        notes.append("regime.quantize_experts: each layer's experts are dequantized whole (model dtype) when its "
                     "forward reads them, and grouped_mm keeps that copy for backward: one full 16-bit copy of "
                     "each layer's experts as activations (train.gradient_checkpointing=true keeps one layer's); "
                     "peft 0.21.2 puts no adapters on the quantized experts (axolotl's peft patch, not modelled, "
                     "would)")
        if rg.prepare_kbit:
            notes.append("qlora: prepare_model_for_kbit_training upcasts every non-4-bit 16-bit parameter, the "
                         "fused experts included, to float32 (2x their bytes), and float32 experts fail "
                         "torch's grouped_mm on CUDA (bf16 only); regime.prepare_kbit=false keeps them 16-bit")
    targets = rg.lora.target_modules
    if not rg.quantize_experts and (targets == "all-linear" or set(targets) & (MOE_LORA_NAMES - {"gate"})):
        notes.append("lora on fused experts: peft adapts the fused experts (gate_up_proj at rank 2r) and the router "
                     "with lora.ParamWrapper, whose forward builds W + BA for the whole expert stack and keeps it "
                     "for backward: one full copy of each layer's expert weights as activations; "
                     "regime.lora.target_modules=[q_proj,k_proj,v_proj,o_proj] leaves the experts out "
                     "(train.gradient_checkpointing=true keeps one layer's copy at a time)")
    return notes
