"""`components`: our first-principles model, built on a meta-device instance of the real model.

Weights, gradients and optimizer state are exact byte counts (params.py); activations follow
activations.py; the logits/loss buffers and the optimizer's temporaries are modelled per phase; the CUDA
context and allocator slack are named constants. The reported components are those of the phase with the
highest predicted peak (forward, backward or optimizer step of a steady-state step, where gradients from
the previous step are already freed by zero_grad(set_to_none=True)); every phase's peak is in `details`.
"""

from __future__ import annotations

from dataclasses import replace

from profiler.config import RunConfig
from profiler.formulas import Estimate, make_estimate, register
from profiler.formulas.activations import KERNELS, LayerPlan, Shape, layer_bytes, norm_bytes, probed_bytes
from profiler.formulas.arch import Arch, arch_of, hf_config_of
from profiler.formulas.loss_buffers import LossBytes, LossInputs, chunked_bytes, liger_bytes
from profiler.formulas.moe import (
    backward_transient_moe,
    forward_transient_moe,
    inference_layer_moe,
    layer_bytes_moe,
    moe_shape,
)
from profiler.formulas.params import DTYPE_BYTES, ParamPlan, lora_targets, param_plan
from profiler.formulas.zero_cast import kbit_fp32, zero_param_dtype
from profiler.packing import builds_packed_mask, geometry

# ASSUMPTIONS, not measurements: guesses until calibration (profiler calibrate) replaces them; every CUDA
# estimate says so in its notes (OVERHEAD_NOTE).
CUDA_CONTEXT_BYTES = 512 * 2**20  # assumed: CUDA context + torch/cuBLAS kernels (lazy loading), outside the allocator
ALLOCATOR_SLACK = 0.03  # assumed: caching-allocator reserve beyond the allocated peak (rounding, fragmentation)
OVERHEAD_NOTE = (f"overhead assumed (uncalibrated guesses): CUDA context {CUDA_CONTEXT_BYTES // 2**20} MiB + "
                 f"allocator slack {ALLOCATOR_SLACK:.0%} of the allocated peak")
BNB_8BIT_MIN_SIZE = 4096  # bitsandbytes min_8bit_size: smaller tensors keep fp32 optimizer state
BNB_8BIT_BLOCK = 256  # bitsandbytes 8-bit optimizer: one fp32 absmax per 256-block per state
BNB_QMAP_BYTES = 2 * 256 * 4  # "dynamic" + "udynamic" fp32 maps, allocated once
SOURCE = (
    "this repository (README, section Estimators); activations adapted from Korthikanti et al. 2022, "
    "https://arxiv.org/abs/2205.05198"
)

_QKV = ("q_proj", "k_proj", "v_proj", "c_attn", "query_key_value", "qkv_proj", "Wqkv")
_O = ("o_proj", "attn.c_proj", "attention.dense", "out_proj")
_GATE_UP = ("gate_proj", "up_proj", "c_fc", "fc1", "gate_up_proj", "dense_h_to_4h")
_DOWN = ("down_proj", "mlp.c_proj", "fc2", "dense_4h_to_h")


def compute_dtype(cfg: RunConfig) -> str:
    """The dtype the inputs of matmuls and of attention (SDPA) have in a training step, as the real run has them.

    - `train.autocast` bf16/fp16: that dtype. torch.autocast casts the inputs of the lower-precision ops before
      the op runs, and both the CUDA and the CPU lists hold linear/matmul/bmm and `scaled_dot_product_attention`
      (ATen aten/src/ATen/autocast_mode.h, `AT_FORALL_LOWER_PRECISION_FP`; autocast_mode.cpp registers it for
      the CUDA and CPU keys): SDPA's dispatcher (sdp_utils.cpp) sees cast q, k, v and picks its kernel on them.
    - otherwise the dtype the tensors have:
      - `regime.kind: qlora` with `prepare_kbit`: float32. peft `prepare_model_for_kbit_training`
        (peft/utils/other.py) casts every fp16/bf16 parameter left unquantized to fp32 (embeddings, norms,
        head), and bitsandbytes `Linear4bit.forward` / `Linear8bitLt` return their output in the input's dtype
        (bitsandbytes/nn/modules.py), so hidden states, q, k and v stay fp32 (FACTS.md).
      - `parallel.strategy: fsdp2` with `parallel.param_dtype`: that dtype. FSDP2's MixedPrecisionPolicy
        all-gathers each layer's parameters in param_dtype and, with its default `cast_forward_inputs=True`,
        casts the floating inputs of every sharded module's forward to it (torch/distributed/fsdp/_fully_shard/
        _fsdp_api.py MixedPrecisionPolicy, _fsdp_state.py `_pre_forward`): an fp32 model computes in bf16.
      - else `model.dtype`.
    """
    if cfg.train.autocast in ("bf16", "fp16"):
        return {"bf16": "bfloat16", "fp16": "float16"}[cfg.train.autocast]
    if kbit_fp32(cfg):  # not under DeepSpeed's bf16/fp16 cast of a QLoRA model (zero_cast.py)
        return "float32"
    if cfg.parallel.strategy == "fsdp2" and cfg.parallel.param_dtype:
        return cfg.parallel.param_dtype
    return cfg.model.dtype


def activation_bytes_per_element(cfg: RunConfig) -> int:
    """Bytes of an element of the hidden-state stream (what norms and most saved tensors hold): fp32 under
    prepare_kbit even with autocast (fp32 embeddings and norms, bitsandbytes casts back to the input dtype; the
    residual adds promote), else the compute dtype (compute_dtype)."""
    if kbit_fp32(cfg):
        return 4  # prepare_model_for_kbit_training makes embeddings/norms fp32: the hidden stream is fp32
    return DTYPE_BYTES[compute_dtype(cfg)]


def default_kernel(cfg: RunConfig, a: int | None = None, arch: Arch | None = None, mask: bool = False) -> str:
    """The attention path a run takes: eager; flash for flash_attention_2; on CPU SDPA's flash kernel, or
    its math kernel with attention dropout (GPT-2) or unrepeated k/v heads (Falcon-7B); on CUDA what SDPA's
    dispatcher picks (torch sdp_utils.cpp; simulate.backend.cuda_sdpa_kernel):
    flash for 16-bit without a mask, mem-efficient for fp32 or with a mask (transformers then repeats
    k/v to all heads), and the math kernel (s x s saved) where neither fused kernel takes the inputs:
    grouped-query k/v with `enable_gqa` in fp32 (mem-efficient has no GQA), or k/v with fewer heads and no
    `enable_gqa` (Falcon-7B). `auto` is what transformers picks for the model (eager for Gemma-2).
    `a`: bytes of an element of SDPA's inputs, by default those of `compute_dtype(cfg)` (under autocast the cast
    q, k, v: flash for a QLoRA model's fp32 q/k/v with bf16 autocast)."""
    impl = cfg.model.attn_implementation
    arch = arch or arch_of(cfg)
    if impl == "auto":
        impl = arch.default_attention
    if impl == "eager":
        return "eager"
    if impl == "flash_attention_2":
        return "flash"
    a = a or DTYPE_BYTES[compute_dtype(cfg)]
    mask = mask or arch.block.mask_always
    sdpa_kv = arch.block.sdpa_kv_heads
    if sdpa_kv is not None and sdpa_kv != arch.heads:
        return "math"  # fewer k/v heads and no enable_gqa: the fused kernels (CUDA and CPU) refuse them
    if cfg.device == "cpu":  # the CPU flash kernel takes masks and GQA, not dropout (sdp_utils_cpp.cpp)
        return "math" if arch.block.attn_dropout > 0 else "flash"
    if mask:
        return "efficient"
    if arch.kv_heads != arch.heads:  # transformers passes enable_gqa=True: flash only
        return "flash" if a == 2 and arch.head_dim <= 256 else "math"
    return "flash" if a == 2 and arch.head_dim <= 256 else "efficient"


def _match(name: str, keys: tuple[str, ...]) -> bool:
    return any(name == k or name.endswith("." + k) for k in keys)


def shape_of(arch: Arch, cfg: RunConfig, b: int | None = None, s: int | None = None) -> Shape:
    """The step's tensor geometry: b rows of s tokens as the model sees them (`train.packing: padding_free` puts
    batch x seq tokens in one row: profiler.packing.geometry)."""
    rows, width = geometry(cfg.train.packing, b or cfg.train.batch_size, s or cfg.train.seq_len)
    return Shape(
        b=rows,
        s=width,
        h=arch.hidden,
        kv=arch.kv_dim,
        i=arch.intermediate,
        heads=arch.heads,
        head_dim=arch.head_dim,
        vocab=arch.vocab,
        a=activation_bytes_per_element(cfg),
        c=DTYPE_BYTES[compute_dtype(cfg)],
        **lora_dtypes(cfg),
    )


def lora_dtypes(cfg: RunConfig) -> dict:
    """Shape's LoRA fields (activations.lora_input): the autocast dtype's bytes (0: none); the adapters' weight
    bytes in the forward: fp32 (peft get_peft_model's `autocast_adapter_dtype=True`, params.py), or FSDP2's
    param_dtype, in which its MixedPrecisionPolicy all-gathers every parameter of an fp32 model; and whether
    the adapters wrap bitsandbytes layers (qlora)."""
    ac = {"bf16": 2, "fp16": 2}.get(cfg.train.autocast, 0)
    pc = cfg.parallel
    w = DTYPE_BYTES[pc.param_dtype] if pc.strategy == "fsdp2" and pc.param_dtype else 4
    if zero_param_dtype(cfg):  # DeepSpeed cast the adapters to its bf16/fp16 dtype (zero_cast.py)
        w = DTYPE_BYTES[zero_param_dtype(cfg)]
    qlora = cfg.regime.kind == "qlora"
    return {"ac": ac, "w": w, "kbit": qlora, "int8": qlora and cfg.regime.bits == 8}


def not_modelled(arch: Arch) -> list[str]:
    """What the activation model (activations.py) does not cover in this model's block, read off the
    meta-device model. Norms and the MLP activation are measured on meta tensors (arch.probe_saved), so
    any norm class and activation is covered; what is left is data flow the model does not describe."""
    b = arch.block
    out = []
    if not b.norm_cost:
        out.append(f"{b.norm_type} (no block norm to probe)")
    if b.pre_norms not in (0, 1, 2) or b.post_norms not in (0, 2):
        out.append(f"{b.pre_norms} pre-norms and {b.post_norms} post-norms per layer")
    if b.qk_norm and not b.qk_norm_cost:
        out.append("qk-norm without a weight")
    if b.parallel and b.post_norms:
        out.append("parallel attention/MLP with post-norms")
    if arch.default_attention not in ("sdpa", "eager"):
        out.append(f"attention {arch.default_attention}")
    return out


def not_modelled_note(arch: Arch) -> str:
    """The line `estimate` prints for a family the activation model does not cover ('' when modelled)."""
    gaps = not_modelled(arch)
    if not gaps:
        return ""
    return f"{arch.model_type} not modelled; simulate is the reference ({', '.join(gaps)})"


def layer_plans(plan: ParamPlan, cfg: RunConfig) -> tuple[list[LayerPlan], dict[str, bool]]:
    """Per-layer training plan plus flags for the parts outside the layers (embed, final norm, head)."""
    arch, rg = plan.arch, cfg.regime
    trainable = {t.name for t in plan.trainable}
    layer_train = [False] * arch.layers
    outside = {"embed": False, "final_norm": False, "head": False}
    head_names = {lin.name + ".weight" for lin in arch.linears if lin.is_head}
    for p in arch.params:
        if p.name not in trainable:
            continue
        if p.layer is not None:
            layer_train[p.layer] = True
        elif p.name in head_names:
            outside["head"] = True
        elif p.numel == arch.hidden or "norm" in p.name or "ln_f" in p.name:
            outside["final_norm"] = True
        else:
            outside["embed"] = True
    targets = lora_targets(arch, cfg) if rg.kind in ("lora", "qlora") else []
    per_layer: list[dict[str, int]] = [{"qkv": 0, "o": 0, "gu": 0, "down": 0} for _ in range(arch.layers)]
    for lin in targets:
        if lin.layer is None:
            continue
        short = lin.name.split(".", 3)[-1] if lin.name.count(".") >= 3 else lin.name
        for key, names in (("qkv", _QKV), ("o", _O), ("gu", _GATE_UP), ("down", _DOWN)):
            if _match(short, names) or _match(lin.name, names):
                per_layer[lin.layer][key] += 1
                break
    plans = []
    grad = outside["embed"]
    for li in range(arch.layers):
        lt = layer_train[li]
        q = per_layer[li]
        plans.append(
            LayerPlan(
                grad_in=grad,
                norms_train=lt,
                linears_train=lt,
                lora_qkv=q["qkv"],
                lora_o=q["o"],
                lora_gate_up=q["gu"],
                lora_down=q["down"],
                lora_r=rg.lora.r,
                lora_dropout=rg.lora.dropout > 0,
                gated=arch.gated_mlp,
                qk_norm=arch.block.qk_norm,
                block=arch.block,
            )
        )
        grad = grad or lt or any(q.values())
    outside["grad_at_end"] = grad
    return plans, outside


def int8_kept_inputs(arch: Arch, cfg: RunConfig, sh: Shape) -> int:
    """Bytes per decoder layer that 8-bit QLoRA keeps beyond autograd's saved tensors: bitsandbytes
    `MatMul8bitLt.forward` (bitsandbytes/autograd/_functions.py) stores its input in `ctx.tensors` (an
    attribute, not `save_for_backward`), so non-reentrant gradient checkpointing cannot drop it: each distinct
    input of a quantized linear (q/k/v share one, gate/up share one) stays alive until that layer's backward.
    0 outside qlora 8-bit (4-bit `MatMul4Bit` keeps only the packed weight)."""
    if cfg.regime.kind != "qlora" or cfg.regime.bits != 8:
        return 0
    widths: dict[str, int] = {}
    for lin in arch.linears:
        if lin.layer != 0 or not lin.quantizable:
            continue
        short = lin.name.split(".", 3)[-1] if lin.name.count(".") >= 3 else lin.name
        key = next((k for k, names in (("qkv", _QKV), ("o", _O), ("gu", _GATE_UP), ("down", _DOWN))
                    if _match(short, names) or _match(lin.name, names)), lin.name)
        widths[key] = lin.in_features
    return sh.a * sh.b * sh.s * sum(widths.values())


def activations(
    cfg: RunConfig, b: int | None = None, s: int | None = None, kernel: str | None = None
) -> dict[str, int]:
    """Saved-activation bytes at the end of the forward, by part (layers, tail, logits), plus the
    recompute transient of one layer under gradient checkpointing."""
    plan = param_plan(cfg)
    arch = plan.arch
    sh = shape_of(arch, cfg, b, s)
    kernel_given = kernel
    kernel = kernel or default_kernel(cfg, sh.c, arch)
    if kernel not in KERNELS:
        raise ValueError(f"kernel {kernel!r}; allowed: {', '.join(KERNELS)}")
    plans, out = layer_plans(plan, cfg)
    windows = arch.block.windows or (arch.block.sliding_window,) * arch.layers
    for li, window in enumerate(windows):
        # the sliding-window mask reaches SDPA when it is no longer all-causal (s > window). Checkpointing (no KV
        # cache) does not change that in a real run: masking_utils' packed-sequence check finds no packing on real
        # position ids (checked on CPU: tests/formulas/test_compute_dtype.py); only fake tensors, which transformers
        # treats as tracing, get a mask there (a simulate gap, tests/formulas/known_differences.yaml: fake-mask)
        masked = bool(window and sh.s > window)
        if masked or arch.block.mask_always:
            layer_kernel = default_kernel(cfg, sh.c, arch, mask=True) if kernel_given is None else kernel
            plans[li] = replace(plans[li], mask=layer_kernel == "efficient" or masked, kernel=layer_kernel)
    packed = packed_mask_bytes(cfg, arch, sh, b, s)
    four_d = cfg.train.packing == "packed_4d" and cfg.regime.kind != "inference"
    if packed or four_d:  # the block-diagonal mask reaches SDPA in every layer, as a sliding-window one does
        for li, lp in enumerate(plans):
            layer_kernel = default_kernel(cfg, sh.c, arch, mask=True) if kernel_given is None else kernel
            plans[li] = replace(lp, mask=True, kernel=layer_kernel, mask_copy=not four_d)
    per_layer = [layer_bytes(sh, lp, kernel, cfg.device) for lp in plans]
    per_layer = layer_bytes_moe(cfg, sh, plans, per_layer, kernel)  # MoE hook (formulas/moe.py); dense: as is
    bs, bsh = sh.b * sh.s, sh.b * sh.s * sh.h
    ckpt = cfg.train.gradient_checkpointing
    layers = arch.layers * (sh.a * bsh + int8_kept_inputs(arch, cfg, sh)) if ckpt else sum(per_layer)
    any_grad = out["grad_at_end"]
    tail = 0
    blk = arch.block
    if any_grad:
        rope_rows = sh.b if cfg.train.packing in ("packed", "padding_free") else 1  # cos/sin per row of given ids
        tail += 2 * rope_rows * sh.s * sh.head_dim * sh.a if blk.rope else 0  # RoPE cos/sin, shared by layers
        if blk.norm_cost:
            tail += probed_bytes(blk.norm_cost, sh.a, bs, any_grad, out["final_norm"])
        else:
            tail += norm_bytes(sh, any_grad, out["final_norm"])
        tail += sh.a * bsh if out["head"] and cfg.train.loss == "full" else 0  # lm_head input (fused: loss_bytes)
        tail += 8 * bs * (2 if blk.learned_positions else 1) if out["embed"] else 0  # ids (+ position ids)
        tail += (bsh if cfg.device == "cuda" else sh.a * bsh) if blk.embed_dropout and out["embed"] else 0
    logits = (4 * bs * sh.vocab + 2 * 8 * bs) if any_grad else 0  # fp32 log_softmax output + labels
    # the packed mask: a checkpointed layer keeps it as an input for its recompute (to the end of backward); without
    # checkpointing only the decoder layers' forward holds it (SDPA saves its own additive copy per layer)
    tail += packed if ckpt else 0
    logits += autocast_head_copy(plan, cfg) if any_grad else 0  # freed with the logits, at the head's backward
    fused = loss_bytes(plan, cfg, sh, out)
    if fused is not None:  # chunked / liger: no logits; what the fused loss keeps for its backward instead
        logits = fused.saved
    # tanh of the capped logits, in the head's output dtype: the autocast dtype under autocast (F.linear is
    # lower_precision_fp, so Gemma-2's `logits / cap`, tanh and `* cap` run in bf16 even on a QLoRA model's fp32
    # hidden stream), else the hidden stream's
    logits += (sh.ac or sh.a) * bs * sh.vocab if any_grad and blk.final_softcap else 0
    # s x s tensors one layer holds while it runs, beyond what it saves (eager / math attention), in bytes per
    # score: forward, forward under checkpointing (nothing saved: the softmax output is transient too), backward.
    # math (fp32): the scores beside their softmax; backward: the gradients of the probabilities and of the
    # scores (with dropout the dropped copy and its mask are freed first: one). eager: softmax(x, dtype=fp32)
    # holds x and its fp32 copy beside the output; backward: the fp32 gradient beside the 16-bit one.
    probs = sh.b * sh.heads * sh.s * sh.s
    math_bwd = 4 if arch.block.attn_dropout > 0 else 8
    s2 = {"math": (4, 8, math_bwd), "eager": (4 + sh.a, 8 + sh.a, 4 + sh.a)}
    worst = max((s2.get(lp.kernel or kernel, (0, 0, 0)) for lp in plans), default=(0, 0, 0))
    # the attention half of a layer: what is saved when its attention runs (forward) or is differentiated
    # (backward: the MLP's saves are freed by then), i.e. the layer without its intermediate-wide MLP terms
    no_mlp = replace(sh, i=0)
    attn_half = [layer_bytes(no_mlp, lp, kernel, cfg.device) for lp in plans]
    return {
        "layers": layers,
        "tail": tail,
        "logits": logits,
        "recompute": max(per_layer) + int8_kept_inputs(arch, cfg, sh) if ckpt and per_layer else 0,
        "recompute_attention": max(attn_half) if ckpt and attn_half else 0,
        "mlp_last": (per_layer[-1] - attn_half[-1]) if per_layer and not ckpt else 0,
        "attn_fwd": probs * (worst[1] if ckpt else worst[0]),
        "experts_fwd": forward_transient_moe(cfg),  # MoE, quantized experts under checkpointing; else 0
        # MoE: grouped_mm's backward outputs in the last layer (the first in backward order); dense 0
        "experts_bwd": backward_transient_moe(cfg, sh.b * sh.s, bool(plans) and plans[-1].linears_train),
        "attn_bwd": probs * worst[2],
        # a trained tied embedding: its gradient from the embedding lookup and the sum with the head's gradient
        # are both alive at the end of backward (V x h each, the parameter's dtype)
        "tied_embed_grad": 2 * sh.vocab * sh.h * plan.param_itemsize if arch.tied and out["embed"] else 0,
        "kernel_index": KERNELS.index(kernel),
        "loss_forward": fused.forward if fused else None,
        "loss_backward": fused.backward if fused else None,
        "packed_mask_forward": 0 if ckpt else packed,  # held by the decoder layers' forward only
        "batch_resident": batch_extra_bytes(cfg, sh),  # held by the batch, in every phase
        "layer_last": per_layer[-1] if per_layer else 0,
        "shared_inputs": 2 * sh.a * bsh * arch.layers,  # offloading: q/k/v's and gate/up's input, kept once each
    }


def offloaded_activations(act: dict[str, int]) -> int:
    """`train.activation_offloading` (TRL OffloadActivations, profiler/measure/act_offload.py): the saved bytes that
    are on the host, not the GPU, at the end of the forward. Kept on the GPU: the tail (the head's input, which
    runs under NoOpManager, and the final norm's saves, still in the forward stash of the last <= 5 packed tensors),
    the loss's saved log-probabilities (the last packed: in the stash until the first backward node), and in every
    layer one copy of an input several projections save (q/k/v, gate/up: a storage still in the stash is not
    offloaded again, `pack_tensor`'s deduplication). Everything else the layers save goes to the host.
    Under gradient checkpointing (non-reentrant) the checkpoint's own saved-tensor hooks are the innermost ones in
    each layer and its inputs are held by the checkpoint frame: nothing of the layers is offloaded (0)."""
    if act["recompute"]:
        return 0
    return max(0, act["layers"] - act["shared_inputs"])


def loss_bytes(plan: ParamPlan, cfg: RunConfig, sh: Shape, out: dict[str, bool]) -> LossBytes | None:
    """The fused loss's buffers (formulas/loss_buffers.py) for `train.loss` chunked or liger; None for full.
    The head weight's bytes as the loss reads it: fp32 after prepare_model_for_kbit_training (qlora), FSDP2's
    param_dtype where set, else the stored parameter dtype."""
    if cfg.train.loss == "full":
        return None
    pc = cfg.parallel
    w = 4 if cfg.regime.kind == "qlora" and cfg.regime.prepare_kbit else plan.param_itemsize
    w = DTYPE_BYTES[pc.param_dtype] if pc.strategy == "fsdp2" and pc.param_dtype else w
    x = LossInputs(b=sh.b, s=sh.s, h=sh.h, v=sh.vocab, a=sh.a, c=sh.ac or sh.a, w=w,
                   hidden_grad=out["grad_at_end"], head_grad=out["head"])
    return liger_bytes(x) if cfg.train.loss == "liger" else chunked_bytes(x, cfg.device == "cuda")


def lora_forward_transient(plan: ParamPlan, cfg: RunConfig, sh: Shape) -> int:
    """Bytes one LoRA linear of the last decoder layer holds while its forward runs, beyond what it saves (the largest
    over its targeted linears: the down projection's intermediate-wide input). peft lora/layer.py `Linear.forward`
    rebinds `x = self._cast_input_dtype(x, lora_A.weight.dtype)` (a copy where the dtypes differ; peft's bnb layers
    cast only with autocast off, lora/bnb.py) and runs `lora_B(lora_A(dropout(x)))`: under autocast lora_A saves its
    own autocast-dtype copy (activations.lora_input), so the cast input and the dropped copy in the adapter dtype are
    alive but unsaved until the forward returns; without autocast lora_A saves what it gets. The peak of the forward
    and, under checkpointing, of the last layer's recompute when the loss holds no logits (train.loss chunked/liger).
    """
    if cfg.regime.kind not in ("lora", "qlora"):
        return 0
    last = plan.arch.layers - 1
    widths = [lin.in_features for lin in lora_targets(plan.arch, cfg) if lin.layer == last]
    if not widths:
        return 0
    drop = cfg.regime.lora.dropout > 0
    a, w, ac = sh.a, sh.w, sh.ac
    cast = not (sh.kbit and ac) and a != w  # peft's input cast makes a copy
    t = w if cast else a  # the dtype dropout and lora_A see
    if ac:
        per = (w if cast else 0) + (t if drop and t != ac else 0)
    else:
        per = w if cast and drop else 0
    return per * sh.b * sh.s * max(widths)


BNB_FUSED_4BIT_MAX_ROWS = 4  # bitsandbytes backends/cuda/ops.py: up to 4 rows the fused kernel dequantizes nothing


def dequant_transient(plan: ParamPlan, cfg: RunConfig, sh: Shape) -> int:
    """Bytes a 4-bit quantized linear of the last layer holds while its matmul runs: bitsandbytes 0.50 `gemm_4bit`
    (autograd/_functions.py MatMul4Bit.forward; backends/cuda/ops.py) dequantizes the whole weight [out, in] into
    `bnb_4bit_compute_dtype` (fp32 block scales beside it: two buffers with double quant) before the matmul, and its
    backward dequantizes it again (profiler/simulate/fake_bnb.py, checked against real layers). The largest
    quantized linear's; 0 outside qlora 4-bit and on CUDA for at most 4 rows (the fused kernel)."""
    rg = cfg.regime
    if rg.kind != "qlora" or rg.bits != 4 or (cfg.device == "cuda" and sh.b * sh.s <= BNB_FUSED_4BIT_MAX_ROWS):
        return 0
    last = plan.arch.layers - 1
    sizes = [lin.in_features * lin.out_features for lin in plan.arch.linears if lin.layer == last and lin.quantizable]
    if not sizes:
        return 0
    n = max(sizes)
    scales = 4 * (-(-n // 64)) * (2 if rg.double_quant and cfg.device == "cuda" else 1)
    return n * DTYPE_BYTES[rg.compute_dtype] + scales


def training_kv_cache(plan: ParamPlan, cfg: RunConfig, sh: Shape) -> int:
    """The KV cache a training forward builds without gradient checkpointing, counted under the fused losses (where
    the forward, not the logits, can be the peak; 0 otherwise and under checkpointing).

    transformers 5.23 fills `use_cache` from the config (utils/generic.py:1012-1060 `merge_with_config_defaults`,
    True by default) and turns it off only under gradient checkpointing in training; LlamaModel.forward
    (modeling_llama.py:372) then makes a DynamicCache whose first `update` concatenates each layer's k and v into new
    tensors (cache_utils.py:136-137), alive until the model's output is dropped. Liger's `lce_forward` passes
    `use_cache` through (model/llama.py:208-220); TRL's fused head sets it False (trl/trainer/utils.py:1612). k and v
    are in the dtype RoPE leaves them: the projection's (autocast) dtype promoted with the cos/sin of the hidden
    stream's. Layers with a sliding window keep only the window (not modelled: left out)."""
    if cfg.train.loss != "liger" or cfg.train.gradient_checkpointing:
        return 0
    arch = plan.arch
    windows = arch.block.windows or (arch.block.sliding_window,) * arch.layers
    full_layers = sum(1 for w in windows if not w)
    return 2 * full_layers * sh.b * sh.s * sh.kv * max(sh.a, sh.ac)


def packed_mask_bytes(cfg: RunConfig, arch: Arch, sh: Shape, b: int | None = None, s: int | None = None) -> int:
    """The boolean block-diagonal mask transformers builds for packed rows under sdpa (rows x 1 x s x s, 1 byte an
    element: masking_utils `sdpa_mask`, `allow_is_causal_skip=False` for packed sequences), 0 where none is built
    (profiler.packing.builds_packed_mask) or where the kernel takes none: flash_attention_2 runs the varlen
    kernel from the position ids (`flash_attention_mask` returns no mask); eager builds its float mask packed or not."""
    impl = cfg.model.attn_implementation
    impl = arch.default_attention if impl == "auto" else impl
    if cfg.train.packing not in ("packed", "padding_free") or impl != "sdpa":
        return 0
    use_cache = bool(getattr(hf_config_of(cfg).get_text_config(), "use_cache", True))
    if not builds_packed_mask(cfg, use_cache, b, s):
        return 0
    return sh.b * sh.s * sh.s


def batch_extra_bytes(cfg: RunConfig, sh: Shape) -> int:
    """What a packed batch holds beyond the ids (profiler.measure.batch.make_batch), for the whole step: a labels copy
    (int64), position_ids (int64) or packed_4d's rows x 1 x s x s float mask (the autocast dtype, else the model's),
    and TRL's padding-free seq_idx (int32)."""
    p = cfg.train.packing
    if p == "none" or cfg.regime.kind == "inference":
        return 0
    tokens = sh.b * sh.s
    if p == "packed_4d":
        item = {"bf16": 2, "fp16": 2}.get(cfg.train.autocast) or DTYPE_BYTES[cfg.model.dtype]
        return 8 * tokens + item * sh.b * sh.s * sh.s
    return 16 * tokens + (4 * tokens if p == "padding_free" else 0)


def autocast_head_copy(plan: ParamPlan, cfg: RunConfig) -> int:
    """Bytes of the autocast-dtype copy of a frozen output head stored in another dtype, saved for backward.

    Under autocast F.linear is lower_precision_fp (ATen autocast_mode.h): its weight is cast to the autocast
    dtype, and the cast is cached only for a leaf that requires grad (autocast_mode.cpp `cached_cast`; also
    profiler/simulate/cuda_autocast.py). A frozen head therefore gets a fresh copy, which linear saves for the
    gradient of its input (the hidden states, which require grad whenever anything before the head trains). The
    case: QLoRA with prepare_kbit, whose head peft `prepare_model_for_kbit_training` upcast to fp32 (params.py;
    bitsandbytes leaves the head unquantized), under bf16 autocast: V x h in bf16 (1 GiB for Llama-3-8B).
    A trained head's copy is cached and counted nowhere here (an fp32 model under autocast: not in the grid);
    frozen fp32 linears inside the layers likewise (none in the regimes of a 16-bit model but the MoE router).
    Under FSDP2 with `param_dtype` the head the forward sees is the all-gathered param_dtype copy."""
    ac = {"bf16": 2, "fp16": 2}.get(cfg.train.autocast, 0)
    pc = cfg.parallel  # FSDP2's MixedPrecisionPolicy hands the forward param_dtype copies: no cast then
    item = DTYPE_BYTES[pc.param_dtype] if pc.strategy == "fsdp2" and pc.param_dtype else plan.param_itemsize
    if not ac or item == ac:
        return 0
    trainable = {t.name for t in plan.trainable}
    return sum(ac * lin.in_features * lin.out_features for lin in plan.arch.linears
               if lin.is_head and lin.name + ".weight" not in trainable)


def optimizer_bytes(plan: ParamPlan, cfg: RunConfig) -> tuple[int, int]:
    """(state bytes, step temporaries) for the trainable tensors."""
    name = cfg.optimizer.name
    ts = plan.trainable
    if not ts or name == "sgd":
        return 0, 0
    if name == "sgd_momentum":
        return sum(t.numel * t.itemsize for t in ts), 0
    if name == "adamw_fused":  # torch's _fused_adamw_: one kernel, no temporaries; `step` is a tensor on the device
        return sum(2 * t.numel * t.itemsize for t in ts) + 4 * len(ts), 0
    if name in ("adam", "adamw"):
        state = sum(2 * t.numel * t.itemsize for t in ts)
        if cfg.device == "cpu":
            state += 4 * len(ts)  # fp32 `step` tensors live on the param's device only on CPU
            temp = 2 * max(t.numel * t.itemsize for t in ts)  # single-tensor path: sqrt + div per param
        else:
            temp = sum(t.numel * t.itemsize for t in ts)  # foreach path: _foreach_sqrt of all exp_avg_sq
        return state, temp
    state = 0
    eight_bit = False
    for t in ts:
        if t.numel < BNB_8BIT_MIN_SIZE:
            state += 2 * 4 * t.numel
        else:
            eight_bit = True
            state += 2 * t.numel + 2 * 4 * (-(-t.numel // BNB_8BIT_BLOCK))
    return state + (BNB_QMAP_BYTES if eight_bit else 0), 0


def inference_bytes(
    plan: ParamPlan, cfg: RunConfig, b: int | None = None, s: int | None = None
) -> dict[str, int]:
    """KV cache and forward transients of a no-grad forward (+ generate)."""
    arch = plan.arch
    sh = shape_of(arch, cfg, b, s)
    n = cfg.regime.new_tokens
    kv_per_token = 2 * arch.layers * sh.kv * sh.a * sh.b
    mlp_tmp = (3 if arch.gated_mlp else 2) * sh.a * sh.b * sh.s * sh.i
    moe_tmp = inference_layer_moe(cfg, sh.b * sh.s, sh.a)  # routed rows (formulas/moe.py); None: dense
    if moe_tmp is not None:  # dense MLP layers beside the MoE ones (mlp_only_layers) hold less than an MoE layer
        mlp_tmp = max(moe_tmp, mlp_tmp if moe_shape(cfg).layers < arch.layers else 0)
    layer_tmp = mlp_tmp + 2 * sh.a * sh.b * sh.s * sh.h
    # logits; with tanh soft-capping (Gemma-2) `logits / cap`, tanh and `* cap` each make a new b x s x V
    # tensor while the previous one is alive: two at a time
    logits = sh.a * sh.b * sh.s * sh.vocab * (2 if arch.block.final_softcap else 1)
    fwd = kv_per_token * sh.s + max(layer_tmp, logits, math_attention_inference(cfg, arch, sh))
    gen = kv_per_token * (sh.s + n) + layer_tmp if n else 0
    return {
        "kv_cache": kv_per_token * (sh.s + n if n and gen >= fwd else sh.s),
        "temporaries": max(fwd, gen) - kv_per_token * (sh.s + n if n and gen >= fwd else sh.s),
    }


def math_attention_inference(cfg: RunConfig, arch: Arch, sh: Shape) -> int:
    """What a no-grad forward holds while SDPA's math kernel runs one layer (0 for other kernels).

    torch `_scaled_dot_product_attention_math` (CompositeImplicitAutograd; its aten ops traced on CPU tensors
    under no_grad): 16-bit q, k, v are upcast to fp32 (`_to_copy`), q is scaled (`mul`), the fp32 scores
    (`bmm`) get the mask added (`add`: a second s x s tensor), `_safe_softmax` replaces them, and a copy of the
    probabilities in the input dtype is its second output. At the mask add and at the softmax two fp32 s x s
    tensors are alive (8 bytes per score), beside the upcast and the scaled q (8 bytes per q element) and the
    layer's own tensors: its input and norm output, the q/k/v projections and the RoPE'd q (transformers
    modeling_falcon.py FalconAttention). Falcon-7B takes this kernel (one k/v head without `enable_gqa`)."""
    if default_kernel(cfg, DTYPE_BYTES[compute_dtype(cfg)], arch) != "math":
        return 0
    bs = sh.b * sh.s
    bsq, bsk = bs * sh.heads * sh.head_dim, bs * sh.kv
    scores = 8 * sh.b * sh.heads * sh.s * sh.s
    q32 = (8 if sh.a < 4 else 4) * bsq  # fp32 copy (16-bit input only) and the scaled q
    layer = sh.a * (2 * bs * sh.h + bsq + 2 * bsk + bsq)
    return scores + q32 + layer


def overhead_bytes(cfg: RunConfig, allocated: int) -> int:
    """CUDA only, and assumed: the two guessed constants above (OVERHEAD_NOTE), not a measured figure."""
    return CUDA_CONTEXT_BYTES + int(ALLOCATOR_SLACK * allocated) if cfg.device == "cuda" else 0


def _overhead_note(cfg: RunConfig) -> str:
    return f"; {OVERHEAD_NOTE}" if cfg.device == "cuda" else ""


def components_estimate(
    cfg: RunConfig, b: int | None = None, s: int | None = None, kernel: str | None = None
) -> Estimate:
    plan = param_plan(cfg)
    W = plan.weight_bytes
    if cfg.regime.kind == "inference":
        inf = inference_bytes(plan, cfg, b, s)
        alloc = W + inf["kv_cache"] + inf["temporaries"]
        return make_estimate(
            "components",
            {
                "weights": W,
                # no_grad saves nothing for backward: the KV cache is a temporary, as the tracker files it
                "temporaries": inf["kv_cache"] + inf["temporaries"],
                "overhead": overhead_bytes(cfg, alloc),
            },
            SOURCE,
            "; ".join(filter(None, (not_modelled_note(plan.arch),
                                    "inference: temporaries include the KV cache (details: kv_cache)"))
                      ) + _overhead_note(cfg),
            details=inf,
        )
    G = plan.trainable_bytes
    Opt, opt_tmp = optimizer_bytes(plan, cfg)
    act = activations(cfg, b, s, kernel)
    A = act["layers"] + act["tail"] + act["logits"]
    host = offloaded_activations(act) if cfg.train.activation_offloading else 0
    A -= host  # on the host from the forward until backward brings each layer's back
    back = act["layer_last"] if host else 0  # the last layer's activations, brought back for its backward
    sh = shape_of(plan.arch, cfg, b, s)
    bsv = sh.b * sh.s * sh.vocab
    fwd_tmp = sh.a * bsv + (4 * bsv if sh.a < 4 else 0)  # logits + their fp32 upcast during the loss
    bwd_start_tmp = 8 * bsv  # nll grad + log_softmax grad, before any layer's backward
    if act["loss_forward"] is not None:  # chunked / liger (loss_buffers.py): the fused loss's own buffers
        fwd_tmp, bwd_start_tmp = act["loss_forward"], act["loss_backward"]
    hidden_grads = 2 * sh.a * sh.b * sh.s * sh.h  # hidden-state gradients in flight
    bwd_end_tmp = hidden_grads + act["recompute"] + act["tied_embed_grad"]
    lora_tmp = max(lora_forward_transient(plan, cfg, sh), dequant_transient(plan, cfg, sh)) if act["loss_forward"] \
        is not None else 0  # counted under the fused losses, where the loss no longer hides the layers' transients
    kv = training_kv_cache(plan, cfg, sh)
    recompute_tmp = act["recompute"] + (lora_tmp if act["recompute"] else 0)
    backward = (  # its start (activations, loss gradients), the last layer's backward once the loss
        # gradients are freed (checkpointing: its recompute too), and its end (gradients): the largest is the peak
        {"weights": W, "optimizer": Opt, "activations": A, "temporaries": bwd_start_tmp},
        {"weights": W, "optimizer": Opt, "activations": A - act["logits"] - act["mlp_last"] + back,
         "temporaries": hidden_grads + max(recompute_tmp, act["recompute_attention"] + act["attn_bwd"])},
        {"weights": W, "optimizer": Opt, "gradients": G, "temporaries": bwd_end_tmp},
    )
    # an MoE model: the last layer's backward starts in its experts (formulas/moe.py backward_transient_moe), on top
    # of the recomputed layer's saves under checkpointing, else of every layer's saves but the loss's (its MLP saves
    # are freed only later, for the attention half: backward_last_layer); sharding.py gives it its own comm
    experts = {"weights": W, "optimizer": Opt, "activations": A - act["logits"] + back,
               "temporaries": hidden_grads + recompute_tmp + act["experts_bwd"]} if act["experts_bwd"] else None
    mask_fwd = act["packed_mask_forward"]  # alive in the decoder layers only, freed before the loss
    forward = (  # the loss (logits and their fp32 copy), or the last layer's attention (s x s kernels), or the
        # last layer's LoRA down projection (its unsaved input casts)
        {"weights": W, "optimizer": Opt, "activations": A, "temporaries": fwd_tmp + kv},
        {"weights": W, "optimizer": Opt, "activations": A - act["logits"] - act["mlp_last"],
         "temporaries": max(act["attn_fwd"], act["experts_fwd"]) + kv + mask_fwd},
        {"weights": W, "optimizer": Opt, "activations": A - act["logits"], "temporaries": lora_tmp + kv + mask_fwd},
    )
    for c in (*forward, *backward, *filter(None, [experts])):  # a packed batch's own tensors: every phase
        c["temporaries"] += act["batch_resident"]
    phases = {
        "forward": max(forward, key=lambda c: sum(c.values())),
        "backward": max((*backward, *filter(None, [experts])), key=lambda c: sum(c.values())),
        "optimizer_step": {"weights": W, "optimizer": Opt, "gradients": G,
                           "temporaries": opt_tmp + act["batch_resident"]},
    }
    peak_phase = max(phases, key=lambda k: sum(phases[k].values()))
    comps = dict(phases[peak_phase])
    comps["overhead"] = overhead_bytes(cfg, sum(comps.values()))
    details = {f"peak_{k}": sum(v.values()) for k, v in phases.items()}
    details |= {f"{ph}:{c}": v for ph, cs in phases.items() for c, v in cs.items()}  # phase:component
    details |= {f"backward_{e}:{c}": v for e, cs in zip(("start", "last_layer", "end"), backward, strict=True)
                for c, v in cs.items()}
    details |= {f"backward_experts:{c}": v for c, v in (experts or {}).items()}
    details |= {f"forward_{e}:{c}": v for e, cs in zip(("loss", "last_layer", "last_lora"), forward, strict=True)
                for c, v in cs.items()}
    details |= {
        "weights": W,
        "gradients": G,
        "optimizer_state": Opt,
        "activations_saved": A,
        "activations_layers": act["layers"],
        "activations_logits": act["logits"],
        "optimizer_temporaries": opt_tmp,
    }
    if host:
        details["activations_offloaded_host"] = host
    kern = KERNELS[act["kernel_index"]]
    notes = f"peak in {peak_phase}; attention kernel {kern}" + _overhead_note(cfg)
    if host:
        notes += (f"; activation offloading: {host / 2**30:.2f} GiB of saved activations on the host (TRL "
                  "OffloadActivations; stash and deduplicated inputs kept)")
    gap = not_modelled_note(plan.arch)
    return make_estimate("components", comps, SOURCE, f"{gap}; {notes}" if gap else notes, details=details)


@register("components")
def components(cfg: RunConfig) -> Estimate:
    """Our component model: exact weights (bitsandbytes quantization state, modules left unquantized,
    fp32 upcasts of prepare_model_for_kbit_training, fp32 LoRA adapters), gradients of trainable
    parameters, optimizer state per optimizer (bitsandbytes 8-bit blocks), activations per layer for the
    HF implementation and attention kernel, fp32 logits/loss buffers, and CUDA context + allocator slack.

    Source: this repository (README, section Estimators); activations adapted from Korthikanti et al. 2022,
    "Reducing Activation Recomputation in Large Transformer Models", https://arxiv.org/abs/2205.05198
    """
    est = components_estimate(cfg)
    if cfg.parallel.strategy == "none":
        return est
    from profiler.formulas.sharding import shard  # per rank under data parallelism

    return shard(cfg, est, param_plan(cfg), overhead_bytes)
