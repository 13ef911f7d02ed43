"""Mixture-of-experts terms for `components`: fused expert weights, peft's trainable parameters, routed activations.

What this follows (transformers 5.23, peft 0.21.2; README "Mixture-of-experts models"):
- transformers fuses each layer's experts into two 3-D parameters, gate_up_proj (E, 2I, H) and down_proj (E, H, I),
  and the router is a `*TopKRouter` module holding an (E, H) weight: none of them is an nn.Linear.
- Its default `grouped_mm` experts path gives every routed tensor T*k rows, T tokens and k = top_k, whatever the
  routing: memory does not depend on which experts tokens pick (the `moe.routing` key changes no byte there).
- peft's `all-linear` on a v5 Mixtral/Qwen-MoE model adds `target_parameters` {gate.weight, gate_up_proj, down_proj}
  (peft.utils.transformers_weight_conversion), gate_up_proj at rank 2r and alpha 2*alpha. Each lora.ParamWrapper
  holds lora_A (E*r, in) and lora_B (out, E*r); its forward folds W + B A into a new tensor of the whole expert
  stack (`baddbmm`), which grouped_mm saves for backward: one copy of every layer's expert weights in activations.
- regime.quantize_experts (axolotl's quantize_moe_experts; profiler.measure.moe_quant): the experts are 4-bit under
  bitsandbytes' Bnb4bitParametrization, which dequantizes the whole stack (model dtype) when forward reads it, and
  grouped_mm saves that copy: the same bytes per layer as ParamWrapper's W + B A, without the adapters. peft 0.21.2
  puts no ParamWrapper on a parametrized expert whose short name comes from its all-linear conversion
  (tuners_utils.py BaseTuner._inject_parameters matches parametrized modules by full name only), so the experts
  get no adapters (the router still does); axolotl patches that matching, which is not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass

from profiler.config import RunConfig
from profiler.formulas.zero_cast import kbit_fp32


@dataclass(frozen=True)
class MoeShape:
    """One MoE layer: E experts of intermediate I on hidden H, top_k per token, `layers` such layers."""

    experts: int
    top_k: int
    hidden: int
    intermediate: int
    layers: int


def moe_shape(cfg: RunConfig, hf_config=None) -> MoeShape | None:
    """None for a dense model. `hf_config`: the transformers config (read from cfg.model when not given)."""
    if hf_config is None:
        from profiler.formulas.arch import hf_config_of

        hf_config = hf_config_of(cfg)
    text = hf_config.get_text_config()
    experts = getattr(text, "num_local_experts", None) or getattr(text, "num_experts", None) or 0
    if experts < 2:
        return None
    inter = getattr(text, "moe_intermediate_size", None) or text.intermediate_size
    n = text.num_hidden_layers
    sparse = [i for i in range(n) if i not in (getattr(text, "mlp_only_layers", None) or [])
              and (i + 1) % (getattr(text, "decoder_sparse_step", 1) or 1) == 0]
    return MoeShape(experts, text.num_experts_per_tok, text.hidden_size, inter, len(sparse))


def expert_params(m: MoeShape) -> int:
    """Fused expert weights of all MoE layers (gate_up_proj + down_proj); the router is `router_params`."""
    return m.layers * m.experts * 3 * m.hidden * m.intermediate


def router_params(m: MoeShape) -> int:
    return m.layers * m.experts * m.hidden


def lora_parts(targets) -> tuple[bool, bool, bool]:
    """(router, gate_up_proj, down_proj) adapted by peft for `regime.lora.target_modules` (all-linear: all three;
    a list: the v4 names peft maps onto them, e.g. gate, w1/w3/w2 or gate_proj/up_proj/down_proj)."""
    if targets == "all-linear":
        return True, True, True
    t = set(targets)
    return "gate" in t, bool(t & {"w1", "w3", "gate_proj", "up_proj", "gate_up_proj"}), bool(t & {"w2", "down_proj"})


def adapted_parts(cfg: RunConfig) -> tuple[bool, bool, bool]:
    """`lora_parts` of the config as peft applies them: with regime.quantize_experts the fused experts are
    parametrized and peft 0.21.2 leaves them without adapters (module docstring); the router keeps its own."""
    router, gate_up, down = lora_parts(cfg.regime.lora.target_modules)
    if cfg.regime.quantize_experts:
        return router, False, False
    return router, gate_up, down


def lora_trainable(m: MoeShape, r: int, targets="all-linear", parts: tuple[bool, bool, bool] | None = None) -> int:
    """LoRA parameters peft creates on the MoE part (attention adapters are counted as for dense models): per layer
    the router (r x (H + E)), gate_up_proj at rank 2r (E x 2r x (H + 2I)) and down_proj (E x r x (I + H)), each
    where `targets` adapts it."""
    router, gate_up, down = parts or lora_parts(targets)
    h, i, e = m.hidden, m.intermediate, m.experts
    return m.layers * (router * r * (h + e) + gate_up * e * 2 * r * (h + 2 * i) + down * e * r * (i + h))


def merged_copy_bytes(m: MoeShape, weight_bytes: int, r: int, lora_on_experts: bool, checkpointing: bool) -> int:
    """ParamWrapper's W + B A of the whole expert stack, saved for backward by grouped_mm, with the B and A factors
    cast to the weight dtype that `baddbmm` saves: every MoE layer's copy lives until backward reaches it; with
    gradient checkpointing only the recomputed layer's."""
    if not lora_on_experts:
        return 0
    per_layer = m.experts * 3 * m.hidden * m.intermediate + lora_trainable(m, r) // m.layers
    return per_layer * weight_bytes * (1 if checkpointing else m.layers)


def dequantized_copy_bytes(m: MoeShape, weight_bytes: int) -> int:
    """One MoE layer under regime.quantize_experts: Bnb4bitParametrization's dequantize_4bit output for gate_up_proj
    and down_proj (the whole stack, the model dtype), which grouped_mm saves for the input gradient; the weight
    itself is a no-grad tensor, so nothing else is kept. Dequantized again in the recompute under checkpointing."""
    return m.experts * 3 * m.hidden * m.intermediate * weight_bytes


def routed_activation_bytes(m: MoeShape, tokens: int, a: int, gate_up_trains: bool = True, down_trains: bool = True,
                            router_trains: bool = True) -> int:
    """Saved for backward per MoE layer on the grouped_mm path (the block's input trains), S = tokens x top_k rows:
    the block input (T, H) read by the router, only where the router's weight trains; the gathered input (S, H) and
    the gated product (S, I), the inputs of the two grouped_mm, only where gate_up_proj / down_proj train (a frozen
    weight needs no input for its gradient); the gate_up output kept as act(gate) input, act(gate) and up (S, I)
    each, the down output (S, H) and the routing weights (S, 1); the router's fp32 softmax (T, E), top-k ids (T, k)
    int64, top-k values and their sum in fp32, int64 sort/permutation ids (S) x 3, and the int32 expert offsets (E).
    Checked tensor by tensor against saved_tensors_hooks (tests/formulas/test_moe.py), frozen parts too."""
    s, t = tokens * m.top_k, tokens
    routed = s * a * (m.hidden + 3 * m.intermediate + 1 + gate_up_trains * m.hidden + down_trains * m.intermediate)
    router = router_trains * t * m.hidden * a + t * m.experts * 4 + t * m.top_k * (8 + 4) + t * 4 + 3 * s * 8 \
        + 4 * m.experts
    return routed + router


# --- hooks called by components (params.param_plan and components.activations); no-ops on dense models ---

def add_lora_tensors(plan, cfg: RunConfig, by_dtype: dict[str, int]) -> None:
    """param_plan hook: the fp32 LoRA tensors peft puts on the router and fused experts (`lora_trainable`)."""
    rg = cfg.regime
    m = moe_shape(cfg) if rg.kind in ("lora", "qlora") else None
    if m is None:
        return
    from profiler.formulas.params import Tensor

    per_layer = lora_trainable(m, rg.lora.r, parts=adapted_parts(cfg)) // m.layers
    for li in range(m.layers if per_layer else 0):
        plan.trainable.append(Tensor(f"moe.{li}.lora", per_layer, 4))  # autocast_adapter_dtype -> fp32
        by_dtype["float32"] += 4 * per_layer
        plan.adapter_numel += per_layer


def expert_weight_bytes(cfg: RunConfig) -> int:
    """Bytes of an element of the expert stack grouped_mm multiplies: the model dtype (fp32 after
    prepare_model_for_kbit_training); under FSDP2 mixed precision with LoRA the experts are all-gathered and computed
    in param_dtype (_fsdp_param.py init_dtype_attrs), so W + B A is formed in it."""
    if cfg.parallel.param_dtype and cfg.regime.kind == "lora":
        return {"float32": 4}.get(cfg.parallel.param_dtype, 2)
    return 4 if kbit_fp32(cfg) else {"float32": 4}.get(cfg.model.dtype, 2)


def backward_transient_moe(cfg: RunConfig, tokens: int, weights_train: bool = False) -> int:
    """components hook: what one MoE layer holds during its experts' backward beyond what it saved and the hidden
    gradients, at its largest moment, the backward of the down projection's grouped_mm (the first one reached).

    transformers 5.23 integrations/moe.py `grouped_mm_experts_forward` multiplies the down output `proj_out`
    (S, H), S = tokens x top_k rows, by the routing weights and `_grouped_mm` casts its input to the weight dtype
    (`input.to(weight.dtype)`). That `mul`'s backward frees the saved `proj_out` (counted in
    `routed_activation_bytes`) and returns its gradient of the same shape: no net change. torch's grouped_mm
    backward then returns the gradient of its input (S, I) and, where the weight operand requires grad, of the
    weight: under LoRA on down_proj that operand is peft's ParamWrapper W + B A (peft tuners/lora/layer.py
    `_LoraFactorsProxy.forward`, one `baddbmm` of the whole expert stack), so the gradient is a full (E, H, I)
    stack in the weight dtype, alive until `baddbmm`'s backward has reduced it to the B and A gradients. A frozen
    stack (attention-only targets, quantized experts) has no weight gradient; where the expert weights themselves
    train (`weights_train`: full, or a trainable last layer under freeze) it is the parameter's new `.grad`, the
    same (E, H, I) bytes, alive from here on (the step's gradients count it at the end of backward). The
    gate_up_proj backward that follows holds less (by count): down's W + B A copy (E H I), its input (S, I),
    act(gate) and up (2 x (S, I)) are freed by then, and its own extras are (E, 2I, H), (S, 2I) and (S, H).
    Checked on the mixtral-8x7b stand-in (scripts/grid_consistency.py) with the tensor tracker: at the backward
    peak the live `_grouped_mm` backward outputs are exactly (E, H, I) + (S, I), beside the (S, H) `mul` gradient
    (LoRA all-linear with checkpointing, batch 4 x seq 2048 and 8192)."""
    m = moe_shape(cfg) if cfg.regime.kind != "inference" else None
    if m is None:
        return 0
    s, wb = tokens * m.top_k, expert_weight_bytes(cfg)
    down_trains = weights_train or (cfg.regime.kind in ("lora", "qlora") and adapted_parts(cfg)[2])
    return wb * (s * m.intermediate + down_trains * m.experts * m.hidden * m.intermediate)


def inference_layer_moe(cfg: RunConfig, tokens: int, a: int) -> int | None:
    """components.inference_bytes hook: what an MoE layer's MLP holds at once in a no-grad forward (None: dense).
    transformers 5.23 integrations/moe.py `grouped_mm_experts_forward`: the gathered input
    `selected_hidden_states_g` (S, H) stays referenced through the function, the up projection `proj_out`
    (S, 2I) is alive while `_apply_gate` (act(gate) * up over its chunk views) makes act(gate) (S, I) and the
    product (S, I): 4 x (S, I) + (S, H) with S = tokens x top_k, whatever the routing (grouped_mm covers all
    experts through offsets). A dense MLP of the same tokens holds 3 x (T, I) (components.inference_bytes)."""
    m = moe_shape(cfg)
    if m is None:
        return None
    s = tokens * m.top_k
    return a * (4 * s * m.intermediate + s * m.hidden)


def layer_bytes_moe(cfg: RunConfig, sh, plans: list, per_layer: list[int], kernel: str) -> list[int]:
    """components.activations hook: each MoE layer's dense-MLP terms (activations.layer_bytes with the MLP's
    intermediate) replaced by the routed ones and, under LoRA on the experts, ParamWrapper's saved W + B A."""
    m = moe_shape(cfg)
    if m is None:
        return per_layer
    from dataclasses import replace

    from profiler.formulas.activations import layer_bytes

    rg = cfg.regime
    parts = adapted_parts(cfg) if rg.kind in ("lora", "qlora") else (False, False, False)
    lora_experts = any(parts[1:])
    weight_bytes = expert_weight_bytes(cfg)
    merged = merged_copy_bytes(m, weight_bytes, rg.lora.r, lora_experts, False) // m.layers
    # quantize_experts: the dequantized stack (quant_state.dtype = the model dtype) that grouped_mm saves
    dequant = dequantized_copy_bytes(m, {"float32": 4}.get(cfg.model.dtype, 2)) if rg.quantize_experts else 0
    no_mlp = replace(sh, i=0)
    out = []
    for lp, total in zip(plans, per_layer, strict=True):
        dense_mlp = total - layer_bytes(no_mlp, lp, kernel, cfg.device)  # intermediate-wide terms
        dense_mlp += sh.a * sh.b * sh.s * sh.h if lp.linears_train else 0  # gate/up input: in the routed count
        grads = dense_mlp > 0 or lora_experts
        base = lp.linears_train  # full, or a trainable layer under freeze: the expert and router weights train
        routed = routed_activation_bytes(m, sh.b * sh.s, sh.a, base or parts[1], base or parts[2],
                                         base or parts[0]) if grads else 0
        out.append(total - dense_mlp + routed + merged + (dequant if grads else 0))
    return out


def forward_transient_moe(cfg: RunConfig) -> int:
    """components.activations hook: what one MoE layer holds while its forward runs beyond what it saves, where
    nothing is saved (gradient checkpointing): under regime.quantize_experts the two dequantized expert stacks,
    which the parametrization cache keeps until the experts module returns (bitsandbytes nn/parametrize.py
    `_register_parametrization_hooks`). Without checkpointing they are saved activations already (layer_bytes_moe)."""
    m = moe_shape(cfg) if cfg.regime.quantize_experts and cfg.train.gradient_checkpointing else None
    return dequantized_copy_bytes(m, {"float32": 4}.get(cfg.model.dtype, 2)) if m is not None else 0
