"""Where every parameter byte lives under a regime: storage dtype, quantization, LoRA adapters, trainability.

Mirrors what loading.py + regimes.py build, read from the installed libraries' behaviour:
- bitsandbytes 4-bit (Params4bit): packed uint8 numel/2, absmax per 64-block (fp32; with double quant uint8,
  plus fp32 absmax per 256-block of those, a 256-entry fp32 code and an fp32 offset), a 16-entry fp32 code;
  quantization state is per layer, not shared. 8-bit (LLM.int8 Int8Params): int8 weight + fp32 SCB per
  output row. Every nn.Linear but the output head is quantized (transformers `get_keys_to_not_convert`);
  a subclass of nn.Linear is not (`replace_with_bnb_linear` tests `type(m) is nn.Linear`: Falcon stays 16-bit).
- peft `prepare_model_for_kbit_training` casts every fp16/bf16 parameter that is not Params4bit to fp32
  (norms, embeddings, lm_head, biases; Int8Params are int8 and stay).
- peft LoRA: A (r x in) and B (out x r) per targeted linear; `autocast_adapter_dtype=True` (the default of
  get_peft_model) upcasts fp16/bf16 adapters to fp32. "all-linear" targets every linear but the output head.
- regime.quantize_experts (axolotl's quantize_moe_experts, profiler.measure.moe_quant): each fused 3-D expert
  weight is one 4-bit tensor of the same layout (uint8 whatever quant_storage says; its own quant state).
- freeze: the last `trainable_layers` decoder layers and modules named in `trainable_modules` train.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from profiler.config import RunConfig
from profiler.formulas.arch import Arch, Linear, arch_of
from profiler.formulas.moe import add_lora_tensors
from profiler.formulas.zero_cast import kbit_fp32, zero_param_dtype

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
NF4_BLOCK = 64  # bitsandbytes Params4bit default blocksize
NESTED_BLOCK = 256  # double quant: blockwise 8-bit quantization of the absmax
DYNAMIC_CODE_BYTES = 256 * 4  # fp32 "dynamic" map of the nested quantization
FOUR_BIT_CODE_BYTES = 16 * 4  # fp32 nf4/fp4 code table, one per layer


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def four_bit_bytes(n: int, double_quant: bool) -> dict[str, int]:
    """Bytes of one bitsandbytes 4-bit weight of n logical parameters, by dtype."""
    blocks = _ceil(n, NF4_BLOCK)
    if double_quant:
        return {
            "uint8": _ceil(n, 2) + blocks,
            "float32": 4 * _ceil(blocks, NESTED_BLOCK) + DYNAMIC_CODE_BYTES + 4 + FOUR_BIT_CODE_BYTES,
        }
    return {"uint8": _ceil(n, 2), "float32": 4 * blocks + FOUR_BIT_CODE_BYTES}


def is_expert_param(p) -> bool:
    """A fused expert weight as axolotl's quantize_moe_experts picks them (profiler.measure.moe_quant): 3-D or more,
    "expert" in its name."""
    return p.ndim >= 3 and "expert" in p.name.lower()


def eight_bit_bytes(lin: Linear) -> dict[str, int]:
    """LLM.int8: int8 weight + fp32 row scales (SCB)."""
    return {"int8": lin.in_features * lin.out_features, "float32": 4 * lin.out_features}


@dataclass(frozen=True)
class Tensor:
    name: str
    numel: int
    itemsize: int


@dataclass
class ParamPlan:
    """Weight bytes (by dtype) and the trainable tensors of one config."""

    arch: Arch
    weight_bytes_by_dtype: dict[str, int] = field(default_factory=dict)
    trainable: list[Tensor] = field(default_factory=list)
    quantized_numel: int = 0
    adapter_numel: int = 0
    param_itemsize: int = 2  # bytes of an unquantized base parameter as stored

    @property
    def weight_bytes(self) -> int:
        return sum(self.weight_bytes_by_dtype.values())

    @property
    def trainable_numel(self) -> int:
        return sum(t.numel for t in self.trainable)

    @property
    def trainable_bytes(self) -> int:
        return sum(t.numel * t.itemsize for t in self.trainable)


def lora_targets(arch: Arch, cfg: RunConfig) -> list[Linear]:
    targets = cfg.regime.lora.target_modules
    if targets == "all-linear":
        return [lin for lin in arch.linears if not lin.is_head]
    return [lin for lin in arch.linears if lin.name.rsplit(".", 1)[-1] in targets]


def _freeze_trainable(arch: Arch, cfg: RunConfig, name: str, owner: str, layer: int | None) -> bool:
    fz = cfg.regime.freeze
    if layer is not None and layer >= arch.layers - fz.trainable_layers:
        return True
    for wanted in fz.trainable_modules:
        parts = owner.split(".")
        for i in range(len(parts)):
            prefix = ".".join(parts[: i + 1])
            if prefix == wanted or prefix.endswith("." + wanted):
                return True
    return False


def _dtype_name(itemsize: int, model_dtype: str) -> str:
    return "float32" if itemsize == 4 else model_dtype


def param_plan(cfg: RunConfig) -> ParamPlan:
    arch = arch_of(cfg)
    rg = cfg.regime
    d = DTYPE_BYTES[cfg.model.dtype]
    qlora = rg.kind == "qlora"
    cast = zero_param_dtype(cfg)  # DeepSpeed's bf16/fp16 cast at initialize (zero_cast.py): 16-bit again
    base = 4 if kbit_fp32(cfg) else d
    plan = ParamPlan(arch, param_itemsize=base)
    by: dict[str, int] = defaultdict(int)
    quant = {lin.name + ".weight": lin for lin in arch.linears if qlora and not lin.is_head and lin.quantizable}
    for p in arch.params:
        if rg.quantize_experts and is_expert_param(p):  # replace_parameter_4bit: uint8 storage, blocksize 64
            for k, v in four_bit_bytes(p.numel, rg.double_quant).items():
                by[k] += v
            plan.quantized_numel += p.numel
            continue
        if p.name in quant:
            lin = quant[p.name]
            parts = four_bit_bytes(p.numel, rg.double_quant) if rg.bits == 4 else eight_bit_bytes(lin)
            for k, v in parts.items():
                by[k] += v
            plan.quantized_numel += p.numel
            continue
        by[_dtype_name(base, cfg.model.dtype)] += p.numel * base
        if rg.kind == "full" or (
            rg.kind == "freeze" and _freeze_trainable(arch, cfg, p.name, p.owner, p.layer)
        ):
            plan.trainable.append(Tensor(p.name, p.numel, base))
    for _, numel, itemsize in arch.buffers:  # rotary inv_freq etc.: built in fp32 by transformers
        by["float32" if itemsize == 4 else cfg.model.dtype] += numel * itemsize
    if rg.kind in ("lora", "qlora"):
        r = rg.lora.r
        adapter_dtype = cast or rg.lora.dtype
        item = DTYPE_BYTES[adapter_dtype]  # autocast_adapter_dtype -> fp32; TRL's QLoRA cast -> bf16 (lora.dtype)
        for lin in lora_targets(arch, cfg):
            for part, numel in (("lora_A", r * lin.in_features), ("lora_B", lin.out_features * r)):
                plan.trainable.append(Tensor(f"{lin.name}.{part}", numel, item))
                by[adapter_dtype] += item * numel
                plan.adapter_numel += numel
    add_lora_tensors(plan, cfg, by)  # MoE hook (formulas/moe.py): peft's adapters on fused experts; dense: none
    plan.weight_bytes_by_dtype = dict(sorted(by.items()))
    return plan
