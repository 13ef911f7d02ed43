"""Saved activations of one training forward, per decoder layer, for the HF implementation.

Start: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models"
(https://arxiv.org/abs/2205.05198), sbh(34 + 5as/h) bytes per layer for GPT-3 style layers in fp16 with
dropout and eager attention. Adapted here to what HF transformers 5 Llama-style layers save (checked
tensor by tensor with `torch.autograd.graph.saved_tensors_hooks` on CPU), with `a` = activation bytes:
- RMSNorm upcasts to fp32: pow saves the fp32 input (4 bsh) and an fp32 rsqrt (4 bs); `weight * y` saves y
  (a bsh) only when the norm weight trains. With a == 4 the upcast is a no-op (input saved, 4 bsh).
- a linear saves its input only when its weight trains (q/k/v share one input, gate/up share one).
- SwiGLU: gate output, silu output and up output are saved (3 a bsi), the product (a bsi) by down_proj.
- attention kernel: flash / mem-efficient (CUDA SDPA, and CPU SDPA's flash kernel) save q, k, v (GQA:
  k/v at kv heads), the output (laid out b,s,h,d so o_proj's input shares it) and an fp32 logsumexp
  (b x heads x s); the math / eager paths save the s x s probabilities (eager: fp32 softmax + a copy) and
  repeat k/v to all heads; no dropout in Llama.
- LoRA (peft): each targeted linear casts its input to the fp32 adapter dtype and applies dropout: CPU
  dropout saves an fp32 noise tensor and the dropped input (8 b s in), CUDA's fused dropout a bool mask
  and the dropped input (5 b s in); with dropout 0 the fp32 cast alone (shared when already fp32);
  lora_A saves its output (4 b s r) for lora_B.
- nothing is saved before the first trainable parameter (frozen embeddings: layer 0's first norm and the
  first adapters' inputs of a LoRA model save less; frozen layers of `freeze` save nothing).
- gradient checkpointing (non-reentrant, per decoder layer) keeps each layer's input (a bsh); one layer's
  activations are recomputed at a time during backward.
- qk-norm (Qwen3): the per-head RMSNorms of q and k save like the layer norms, over q's and k's width.
- sliding window shorter than the sequence (Mistral, Phi-3): the mask is no longer all-causal, so SDPA gets
  an explicit b x 1 x s x s mask (saved in every layer) and transformers repeats k/v to all heads.
Other families (`layer_bytes` with the layer's `Block`, read off the meta-device model in arch.py): each block
norm and the MLP activation save what their meta-tensor probe measured (arch.probe_saved: RMSNorm variants,
Gemma's fp32 `1 + weight` norm, LayerNorm; gelu_new's four saved tensors); the data flow follows the block:
pre-norms and post-norms (Gemma-2/3 sandwich, OLMo-2 post-only), parallel attention/MLP (GPT-NeoX: a second
norm reading the same input; Falcon: one norm feeding both), a fused q|k|v without RoPE whose whole output stays
saved through q (GPT-2), hidden-state dropout masks (GPT-2), tanh soft-capping of eager attention scores
(Gemma-2: one more s x s tensor), SDPA's math kernel (fp32 q, k, v and probabilities; k/v broadcast when
Falcon-7B hands over its single k/v head). Which blocks this covers is decided in components.py
`not_modelled` from the meta-device model.
"""

from __future__ import annotations

from dataclasses import dataclass

from profiler.formulas.arch import Block

KERNELS = ("flash", "efficient", "math", "eager")


@dataclass(frozen=True)
class Shape:
    """Sizes that activations scale with (all ints)."""

    b: int
    s: int
    h: int
    kv: int  # kv heads x head_dim
    i: int  # MLP intermediate
    heads: int
    head_dim: int
    vocab: int
    a: int  # bytes of an activation element (the hidden-state stream)
    c: int = 0  # bytes of an element of SDPA's inputs (components.compute_dtype; autocast casts q/k/v); 0: a
    ac: int = 0  # bytes of the autocast dtype (train.autocast); 0: no autocast
    w: int = 4  # bytes of a LoRA adapter's weights in the forward (fp32; FSDP2 all-gathers them in param_dtype)
    kbit: bool = False  # the adapters wrap bitsandbytes layers (qlora): peft's bnb forward skips the input cast
    int8: bool = False  # 8-bit qlora: bitsandbytes MatMul8bitLt keeps its input (components.int8_kept_inputs)

    @property
    def sdpa(self) -> int:
        return self.c or self.a


@dataclass(frozen=True)
class LayerPlan:
    """Which parts of one decoder layer train (drives what autograd saves)."""

    grad_in: bool  # the layer input requires grad (something before it trains)
    norms_train: bool = False
    linears_train: bool = False  # base q/k/v/o/gate/up/down weights train
    lora_qkv: int = 0  # LoRA-targeted linears among q, k, v (input h wide, shared)
    lora_o: int = 0
    lora_gate_up: int = 0
    lora_down: int = 0  # input i wide
    lora_r: int = 0
    lora_dropout: bool = False
    gated: bool = True
    qk_norm: bool = False  # per-head RMSNorm on q and k (Qwen3): saves like a norm of q's and k's width
    mask: bool = False  # an explicit attention mask reaches SDPA (sliding window shorter than the sequence)
    mask_copy: bool = True  # SDPA saves a copy of its own (a boolean mask made additive); False: it saves the
    # caller's float mask itself, one tensor for every layer (a collator's 4-D mask: train.packing packed_4d)
    block: Block | None = None  # the layer as built (arch.py); None: a Llama-style block
    kernel: str | None = None  # this layer's attention kernel where it differs from the model's (Gemma-3)


def norm_bytes(sh: Shape, grad_in: bool, weight_trains: bool, width: int | None = None, rows: int = 1) -> int:
    """One RMSNorm over `width` (default hidden), `rows` normalized vectors per token (qk-norm: heads)."""
    bsh = sh.b * sh.s * (width or sh.h)
    if not grad_in and not weight_trains:
        return 0
    out = 0
    if grad_in:
        out += 4 * bsh + 4 * sh.b * sh.s * rows  # fp32 input of pow (the input itself when a == 4) + rsqrt
    if weight_trains:
        out += sh.a * bsh if sh.a < 4 else 4 * bsh  # y = normalized, saved for the weight's gradient
    return out


def probed_bytes(cost: tuple, a: int, rows: int, grad_in: bool, weight_trains: bool, shared_input: bool = False) -> int:
    """Bytes a norm saves over `rows` rows, from its meta-tensor probe (arch.probe_saved). `shared_input`:
    another module already saves the same input (NeoX's two norms read one hidden state)."""
    if not grad_in and not weight_trains:
        return 0
    for ca, g, w, per_row, const, own in cost:
        if ca == (2 if a < 4 else 4) and g == grad_in and w == weight_trains:
            return (per_row - (own if shared_input else 0)) * rows + const
    raise ValueError(f"no probe for a={a}, grad_in={grad_in}, weight_trains={weight_trains}")


def act_bytes(blk: Block | None, a: int, elements: int) -> int:
    """What the MLP activation saves over `elements` inputs (one tensor for silu/gelu, four for gelu_new)."""
    per = dict(blk.act_cost).get(2 if a < 4 else 4) if blk is not None and blk.act_cost else None
    return (per if per is not None else a) * elements


def attention_bytes(sh: Shape, kernel: str, o_proj_saves: bool, mask: bool = False, kv_repeated: bool = True,
                    mask_copy: bool = True) -> int:
    """q, k, v, output/probabilities saved by the attention kernel (and o_proj's input where distinct).
    With an explicit mask (sliding window), transformers repeats k/v to all heads for SDPA and the kernel
    saves the b x 1 x s x s mask (activation dtype) in every layer. SDPA's math kernel computes in fp32
    (it upcasts 16-bit q, k, v: torch `_scaled_dot_product_attention_math`), repeats k/v to all heads for
    `enable_gqa` (kv_repeated) and broadcasts them otherwise (Falcon-7B's one k/v head)."""
    a = sh.a
    bsq = sh.b * sh.s * sh.heads * sh.head_dim
    bsk = sh.b * sh.s * sh.kv
    if kernel in ("flash", "efficient"):  # the fused kernels save their (autocast-cast) inputs and output
        a = sh.sdpa
        s_lse = sh.s if kernel == "flash" else -(-sh.s // 32) * 32
        if mask:
            return 4 * a * bsq + 4 * sh.b * sh.heads * s_lse + (a * sh.b * sh.s * sh.s if mask_copy else 0)
        return a * bsq + 2 * a * bsk + a * bsq + 4 * sh.b * sh.heads * s_lse
    probs = sh.b * sh.heads * sh.s * sh.s
    qkv = 3 * a * bsq  # k/v repeated to all heads (repeat_kv / GQA expansion)
    out = a * bsq if o_proj_saves else 0  # transpose(1, 2).contiguous() copy fed to o_proj
    if kernel == "math":
        return 4 * bsq + 2 * 4 * (bsq if kv_repeated else bsk) + 4 * probs + out
    return qkv + (4 + (a if a < 4 else 0)) * probs + out  # eager: fp32 softmax + cast copy


def lora_input(sh: Shape, in_bytes: int | None = None) -> tuple[int, bool]:
    """(bytes of an element of what lora_A multiplies, whether that is the layer's input itself).

    peft lora/layer.py `Linear.forward` casts the input to the adapter's dtype (`_cast_input_dtype(x,
    lora_A.weight.dtype)`: fp32 adapters, or FSDP2's param_dtype copies) before `lora_A(dropout(x))`; peft
    lora/bnb.py `Linear4bit/Linear8bitLt.forward` does so only when autocast is off (`requires_conversion = not
    torch.is_autocast_enabled()`). Under autocast lora_A's linear casts its input to the autocast dtype (ATen
    autocast_mode.h lower_precision_fp; the cast is cached only for leaf tensors that require grad, so each
    adapter makes its own copy) and saves that copy; a cast to the dtype a tensor already has returns the tensor.
    `in_bytes`: the layer input's element bytes (default sh.a)."""
    a = in_bytes or sh.a
    if sh.ac:
        return sh.ac, (a == sh.ac) if sh.kbit else (a == sh.w == sh.ac)
    return sh.w, a == sh.w


def lora_bytes(sh: Shape, n_linears: int, width: int, lp: LayerPlan, device: str, no_grad: int = 0,
               in_bytes: int | None = None, input_saved: bool = False) -> int:
    """Inputs saved by the LoRA branch of n_linears adapters whose input is `width` wide (lora_input: what
    lora_A saves, per adapter unless it is the shared input itself; with dropout the dropped copy and the
    dropout mask: CPU an fp32 noise tensor, CUDA's fused dropout a bool mask), and lora_A's outputs (b s r,
    saved by lora_B, in the dtype lora_A computes in). 8-bit qlora: the base layers' MatMul8bitLt keeps the
    input itself too (bitsandbytes autograd/_functions.py `ctx.tensors = (CAt, subA, A)` when an input
    requires grad), counted here unless the adapters save that very tensor or `input_saved` (o_proj's input:
    the attention output, which SDPA saves)."""
    if n_linears == 0:
        return 0
    bsw = sh.b * sh.s * width
    t, shared = lora_input(sh, in_bytes)
    if lp.lora_dropout:
        mask = 4 * bsw if device == "cpu" else bsw  # CPU: fp32 noise tensor; CUDA: bool mask
        per = t * bsw + mask
        total = n_linears * per - no_grad * mask  # no mask saved where the input does not require grad
    else:
        total = (1 if shared else n_linears) * t * bsw
    if sh.int8 and not input_saved and no_grad < n_linears and (lp.lora_dropout or not shared):
        total += (in_bytes or sh.a) * bsw
    return total + n_linears * t * sh.b * sh.s * lp.lora_r  # lora_A outputs


def layer_bytes(sh: Shape, lp: LayerPlan, kernel: str, device: str) -> int:
    """Bytes autograd saves for one decoder layer."""
    blk = lp.block
    if blk is None or not blk.norm_cost:
        return _llama_layer_bytes(sh, lp, lp.kernel or kernel, device)
    kernel = lp.kernel or kernel
    bs, bsh, bsi, a = sh.b * sh.s, sh.b * sh.s * sh.h, sh.b * sh.s * sh.i, sh.a
    tr, nt = lp.linears_train, lp.norms_train
    mask_bytes = 1 if device == "cuda" else a  # CUDA native_dropout: a bool mask; CPU: a noise tensor

    def norm(grad_in: bool, shared: bool = False) -> int:
        return probed_bytes(blk.norm_cost, a, bs, grad_in, nt, shared)

    total = norm(lp.grad_in) if blk.pre_norms else 0  # input norm (OLMo-2: none)
    total += a * bsh if tr else 0  # q/k/v input (normed hidden; OLMo-2: the layer input)
    total += lora_bytes(sh, lp.lora_qkv, sh.h, lp, device, 0 if lp.grad_in or nt else lp.lora_qkv)
    grad_attn = lp.grad_in or tr or lp.lora_qkv > 0 or nt
    if grad_attn:
        if lp.qk_norm and blk.qk_norm_cost:
            w = blk.qk_norm_width
            total += probed_bytes(blk.qk_norm_cost, a, bs * (sh.heads * sh.head_dim // w), True, nt)
            total += probed_bytes(blk.qk_norm_cost, a, bs * (sh.kv // w), True, nt)
        total += attention_bytes(sh, kernel, tr, lp.mask, blk.sdpa_kv_heads is None, lp.mask_copy)
        if blk.fused_qkv and not blk.rope and kernel in ("flash", "efficient"):
            total += 2 * a * bs * sh.kv  # q is a view of the fused q|k|v output, which stays saved (GPT-2)
        if blk.attn_dropout > 0 and kernel == "math":  # dropout of the fp32 probabilities: mask + output
            total += (4 if device == "cpu" else 1) * sh.b * sh.heads * sh.s * sh.s + 4 * sh.b * sh.heads * sh.s * sh.s
        if blk.attn_softcap and kernel in ("eager", "math"):
            total += a * sh.b * sh.heads * sh.s * sh.s  # tanh of the scores (Gemma-2)
    total += lora_bytes(sh, lp.lora_o, sh.h, lp, device, 0 if grad_attn else lp.lora_o, sh.sdpa, True)
    attn_out = grad_attn or lp.lora_o > 0
    if blk.post_norms:
        total += norm(attn_out)  # post-attention norm on o_proj's output
    total += bsh * mask_bytes if blk.layer_dropouts and attn_out else 0  # resid dropout (GPT-2)
    if blk.parallel:  # the MLP reads the layer input too: its own norm (NeoX) or the attention's (Falcon)
        grad_mlp = lp.grad_in or nt
        if blk.pre_norms >= 2:
            total += norm(lp.grad_in, shared=True)
            total += a * bsh if tr else 0  # MLP input: the second norm's output
    else:
        grad_mlp = attn_out
        if blk.pre_norms >= 2:
            total += norm(grad_mlp)  # pre-MLP norm
        total += a * bsh if tr else 0  # gate/up input
    total += lora_bytes(sh, lp.lora_gate_up, sh.h, lp, device, 0 if grad_mlp else lp.lora_gate_up)
    if grad_mlp or lp.lora_gate_up or tr:
        total += act_bytes(blk, a, bsi)  # the activation's own saves (gate or fc output ...)
        total += 2 * a * bsi if lp.gated else 0  # act(gate) * up saves both
        total += a * bsi if tr else 0  # down_proj input
    total += lora_bytes(sh, lp.lora_down, sh.i, lp, device)
    mlp_out = grad_mlp or lp.lora_gate_up > 0 or lp.lora_down > 0 or tr
    if blk.post_norms:
        total += norm(mlp_out)  # post-MLP norm
    total += bsh * mask_bytes * (blk.layer_dropouts - 1) if blk.layer_dropouts > 1 and mlp_out else 0
    return total


def _llama_layer_bytes(sh: Shape, lp: LayerPlan, kernel: str, device: str) -> int:
    """A Llama-style block (RMSNorm pre-norms, SwiGLU), for plans built without the block's probes."""
    bsh, bsi, a = sh.b * sh.s * sh.h, sh.b * sh.s * sh.i, sh.a
    tr = lp.linears_train
    total = norm_bytes(sh, lp.grad_in, lp.norms_train)  # input norm
    total += a * bsh if tr else 0  # q/k/v input (the normed hidden)
    total += lora_bytes(sh, lp.lora_qkv, sh.h, lp, device, 0 if lp.grad_in or lp.norms_train else lp.lora_qkv)
    grad_attn = lp.grad_in or tr or lp.lora_qkv > 0 or lp.norms_train
    if grad_attn:
        if lp.qk_norm:
            total += norm_bytes(sh, True, lp.norms_train, sh.heads * sh.head_dim, sh.heads)
            total += norm_bytes(sh, True, lp.norms_train, sh.kv, sh.kv // sh.head_dim)
        total += attention_bytes(sh, kernel, tr, lp.mask, mask_copy=lp.mask_copy)
    total += lora_bytes(sh, lp.lora_o, sh.h, lp, device, 0 if grad_attn else lp.lora_o, sh.sdpa, True)
    grad_mlp = grad_attn or lp.lora_o > 0
    total += norm_bytes(sh, grad_mlp, lp.norms_train)  # post-attention norm
    total += a * bsh if tr else 0  # gate/up input
    total += lora_bytes(sh, lp.lora_gate_up, sh.h, lp, device, 0 if grad_mlp else lp.lora_gate_up)
    if grad_mlp or lp.lora_gate_up:
        total += (3 if lp.gated else 1) * a * bsi  # gate out, silu out, up out (GELU MLP: fc out)
        total += a * bsi if tr else 0  # down_proj input
    total += lora_bytes(sh, lp.lora_down, sh.i, lp, device)
    return total
