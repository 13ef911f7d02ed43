"""Quantize a mixture-of-experts model's fused 3-D expert weights to 4 bit, as axolotl's `quantize_moe_experts` does.

transformers 5 stores each MoE layer's experts as two 3-D parameters (`experts.gate_up_proj` (E, 2I, H),
`experts.down_proj` (E, H, I)); bitsandbytes' quantizer replaces `nn.Linear` layers only, so they stay 16-bit.
axolotl (axolotl-ai-cloud/axolotl 067b021, src/axolotl/monkeypatch/moe_quant.py `patch_moe_quantization_on_load`)
patches transformers' `set_param_for_module` so that every parameter with `ndim >= 3` and "expert" in its name is,
as it lands, passed to bitsandbytes' `replace_parameter_4bit(module, name, compress_statistics=
bnb_4bit_use_double_quant (default True), quant_type=bnb_4bit_quant_type (default nf4))`. That function
(bitsandbytes 0.50.2 nn/parametrize.py) quantizes the **whole** 3-D tensor with `F.quantize_4bit` (blocksize 64,
quant_storage uint8: packed [numel/2, 1] uint8, absmax per 64-block, nested if compress_statistics), swaps the
parameter for the packed data, and registers `Bnb4bitParametrization`, whose forward (under no_grad) returns
`F.dequantize_4bit(packed, quant_state)`: the whole expert stack in the original dtype, every time the attribute
is read. Forward hooks on the experts module enable torch's parametrization cache while it runs, so one forward
dequantizes each tensor once; `grouped_mm` then saves that dequantized copy for backward.

This module holds what the real run and the simulation share: which parameters are chosen (`expert_param_names`)
and the real quantization (`quantize_experts`, bitsandbytes itself). profiler.simulate.fake_bnb builds the same
state on fake tensors. We quantize after loading (axolotl's earlier post-load `quantize_moe_expert_params`); the
load peak of a real run therefore holds the 16-bit experts once, axolotl's load-time patch does not.
"""

from __future__ import annotations

from torch import nn


def expert_param_names(model: nn.Module) -> list[tuple[str, str]]:
    """(module name, parameter name) of every parameter axolotl's load-time patch quantizes: ndim >= 3, "expert" in
    its qualified name, not inside a bitsandbytes layer."""
    out = []
    for mod_name, mod in model.named_modules():
        if type(mod).__name__.startswith(("Linear4bit", "Linear8bitLt", "FakeLinear")):
            continue
        for pname, p in mod.named_parameters(recurse=False):
            if p.ndim >= 3 and "expert" in f"{mod_name}.{pname}".lower():
                out.append((mod_name, pname))
    return out


def quantize_experts(model: nn.Module, quant_type: str, double_quant: bool) -> int:
    """bitsandbytes' replace_parameter_4bit on every expert parameter (real tensors); returns the count."""
    from bitsandbytes.nn.parametrize import replace_parameter_4bit

    chosen = expert_param_names(model)
    for mod_name, pname in chosen:
        replace_parameter_4bit(model.get_submodule(mod_name), pname, compress_statistics=double_quant,
                               quant_type=quant_type)
    return len(chosen)
