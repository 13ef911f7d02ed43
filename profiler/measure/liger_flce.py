"""`train.loss: liger`: a torch mirror of Liger's fused linear cross-entropy, patched into the model as Liger does.

Liger-Kernel 0.6.4 (not a dependency: it needs Triton and a GPU; read from its wheel) is what `use_liger_kernel=True`
(transformers/trainer.py:1494 -> integrations/liger.py `apply_liger_kernel`), axolotl's
`liger_fused_linear_cross_entropy` and LLaMA-Factory's `enable_liger_kernel` turn on. For a model instance it
replaces `forward` with its `lce_forward` (liger_kernel/transformers/monkey_patch.py:266-269, `MethodType`), which
in training with labels never computes logits (model/llama.py:239-253) and calls `LigerForCausalLMLoss`
(model/loss_utils.py:62-95) -> `LigerFusedLinearCrossEntropyFunction` (ops/fused_linear_cross_entropy.py:278-375).

`LigerFLCEMirror` allocates the tensors that function allocates, in the same dtypes and order (each line cited
below), so a simulation on fake tensors holds what the real run holds. The gradient is computed in the forward
and stored; the backward only scales it. The per-chunk cross-entropy is a Triton kernel that writes the loss and
overwrites the logits chunk with its gradient in place, allocating nothing; here it is `cross_entropy_kernel`, torch
ops on real tensors (the same values, with temporaries of the chunk) that a `device: cuda` simulation replaces by an
allocation-free stand-in (profiler/simulate/liger_cuda.py), as for TRL's kernels. Two departures that change no
allocation: `n_non_ignore` stays a tensor (Liger calls `.item()`, :75), and the backward always scales in place
(Liger skips the multiply when the incoming gradient is 1.0, :233).
Not modelled: the rest of what Liger patches (RMSNorm, SwiGLU MLP, RoPE: monkey_patch.py:250-293), its
FSDP1 redirection of a trainable head (model/llama.py:295), `accum_dtype` other than None (its `lce_forward`
passes none), z-loss, label smoothing, class weights, token scaling and token accuracy (all off by default).
"""

from __future__ import annotations

import types

import torch

from profiler.liger import LIGER_MODEL_TYPES, cdiv, liger_chunk_size

IGNORE_INDEX = -100


def cross_entropy_kernel(logits: torch.Tensor, target: torch.Tensor, loss_out: torch.Tensor, n_non_ignore,
                         softcap: float | None, has_gradients: bool) -> None:
    """`liger_cross_entropy_kernel` (ops/cross_entropy.py, reduction mean, no weights/smoothing/z-loss): per row,
    loss = (lse - x_y) / n_non_ignore into `loss_out`; with gradients, `logits` overwritten by
    (softmax(x) - onehot(y)) / n_non_ignore (times 1 - tanh^2 under softcapping); ignored rows get 0 for both."""
    z = logits.float()
    if softcap is not None:
        t = torch.tanh(z / softcap)
        z = softcap * t
    valid = target != IGNORE_INDEX
    y = target.clamp(min=0).unsqueeze(-1)
    lse = torch.logsumexp(z, dim=-1)
    loss_out.copy_(torch.where(valid, lse - z.gather(-1, y).squeeze(-1), 0.0) / n_non_ignore)
    if has_gradients:
        grad = torch.softmax(z, dim=-1)
        grad.scatter_add_(-1, y, torch.full_like(y, -1, dtype=grad.dtype))
        grad = grad * (valid.unsqueeze(-1) / n_non_ignore)
        if softcap is not None:
            grad = grad * (1 - t * t)
        logits.copy_(grad)


class LigerFLCEMirror(torch.autograd.Function):
    """`LigerFusedLinearCrossEntropyFunction` (ops/fused_linear_cross_entropy.py:278-375) with reduction mean."""

    @staticmethod
    def forward(ctx, _input: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, bias: torch.Tensor | None = None,
                softcap: float | None = None, accum_dtype: torch.dtype | None = None) -> torch.Tensor:
        # fused_linear_cross_entropy_forward (:16-228)
        device = _input.device
        input_requires_grad = _input.requires_grad  # :38 (inside Function.forward: the input's own flag)
        BT, H = _input.shape  # :47
        V = weight.shape[0]  # :48
        chunk_size = liger_chunk_size(BT, H, V)  # :51-52 inc_factor = cdiv(V, H); next_power_of_2(cdiv(BT, inc))
        num_chunks = cdiv(BT, chunk_size)  # :53
        grad_input = torch.zeros_like(_input, device=device)  # :55
        grad_weight = grad_bias = None  # :65-67
        if input_requires_grad:  # :58-64
            dtype = weight.dtype if accum_dtype is None else accum_dtype
            grad_weight = torch.zeros_like(weight, dtype=dtype) if weight.requires_grad else None
            grad_bias = torch.zeros_like(bias, dtype=dtype) if bias is not None else None
        loss_1d = torch.zeros(BT, dtype=torch.float32, device=device)  # :69
        target_mask = target != IGNORE_INDEX  # :74
        n_non_ignore = target_mask.sum()  # :75 (`.item()` there)
        for chunk_id in range(num_chunks):  # :90
            start_idx, end_idx = chunk_id * chunk_size, min((chunk_id + 1) * chunk_size, BT)  # :91-92
            _input_chunk = _input[start_idx:end_idx]  # :93
            logits_chunk = _input_chunk @ weight.t()  # :96 (autocast: the autocast dtype)
            if bias is not None:
                logits_chunk = logits_chunk + bias  # :98
            target_chunk = target[start_idx:end_idx]  # :100
            loss_1d_slice = loss_1d[start_idx:end_idx]  # :135
            logits_chunk = logits_chunk.contiguous()  # :140
            target_chunk = target_chunk.contiguous()  # :141
            cross_entropy_kernel(logits_chunk, target_chunk, loss_1d_slice, n_non_ignore, softcap,
                                 input_requires_grad)  # :144-173, in place
            grad_logits_chunk = logits_chunk  # :186
            if input_requires_grad:
                grad_input[start_idx:end_idx] = grad_logits_chunk @ weight  # :195
            if grad_weight is not None and input_requires_grad:
                grad_weight += torch.mm(grad_logits_chunk.t(), _input_chunk).float()  # :198
            if bias is not None and input_requires_grad:
                torch.add(input=grad_bias, other=grad_logits_chunk.sum(dim=0), out=grad_bias, alpha=1.0)  # :201
        loss = torch.sum(loss_1d)  # :219
        grad_weight = grad_weight.to(weight.dtype) if grad_weight is not None else None  # :225
        grad_bias = grad_bias.to(bias.dtype) if grad_bias is not None else None  # :226
        # :340-344
        ctx.save_for_backward(grad_input.detach(), grad_weight.detach() if grad_weight is not None else None,
                              grad_bias.detach() if bias is not None else None)
        return loss

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        # fused_linear_cross_entropy_backward (:231-275): the stored gradients scaled in place (element_mul_kernel)
        grad_input, grad_weight, grad_bias = ctx.saved_tensors  # :356
        grad_input.mul_(grad_output)
        if grad_weight is not None:
            grad_weight.mul_(grad_output)
        if grad_bias is not None:
            grad_bias.mul_(grad_output)
        return grad_input, grad_weight, None, grad_bias, None, None  # :360-375


def liger_causal_lm_loss(hidden_states: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, hidden_size: int,
                         softcap: float | None = None) -> torch.Tensor:
    """`LigerForCausalLMLoss` (model/loss_utils.py:62-95) without `shift_labels`: labels padded with -100 and
    shifted (:77-78: a (b, s+1) and a (b, s) int64 tensor), hidden states flattened (a view), reduction mean."""
    labels = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)
    shift_labels = labels[..., 1:].contiguous()
    hidden_states = hidden_states.view(-1, hidden_size)
    shift_labels = shift_labels.view(-1).to(hidden_states.device)
    return LigerFLCEMirror.apply(hidden_states, weight, shift_labels, None, softcap)


def liger_model_type(model: torch.nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", None) or ""


def add_liger_loss(model: torch.nn.Module) -> None:
    """Patch `model` (a PEFT model or a plain one; Liger patches the PEFT base model, integrations/liger.py
    `unwrap_peft_model`) with a forward that, in training with labels, runs the backbone and the mirror without
    logits, as `lce_forward` does (model/llama.py:201-279); otherwise the model's own forward."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_type = liger_model_type(base)
    if model_type not in LIGER_MODEL_TYPES:
        raise ValueError(f"train.loss: liger: liger-kernel has no patch for model type {model_type!r} "
                         "(MODEL_TYPE_TO_APPLY_LIGER_FN); allowed for it: full, chunked")
    original_forward = base.forward
    text_config = base.config.get_text_config()
    softcap = getattr(text_config, "final_logit_softcapping", None)  # gemma2/gemma3 lce_forward pass it

    def lce_forward(self, input_ids=None, labels=None, **kwargs):
        if not (self.training and labels is not None):  # :239-241 skip_logits
            return original_forward(input_ids=input_ids, labels=labels, **kwargs)
        if getattr(text_config, "output_router_logits", False):  # mixtral / qwen3_moe lce_forward
            kwargs.setdefault("output_router_logits", True)
        outputs = self.base_model(input_ids=input_ids, **kwargs)  # :208-220
        hidden_states = outputs[0]  # :222
        kept = hidden_states[:, slice(0, None), :]  # :224-225 (logits_to_keep 0: a view)
        loss = liger_causal_lm_loss(kept, self.get_output_embeddings().weight, labels, text_config.hidden_size,
                                    softcap)  # :244-253
        if kwargs.get("output_router_logits"):
            from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

            aux = load_balancing_loss_func(outputs.router_logits, text_config.num_local_experts
                                           if hasattr(text_config, "num_local_experts") else text_config.num_experts,
                                           text_config.num_experts_per_tok, kwargs.get("attention_mask"))
            loss = loss + getattr(text_config, "router_aux_loss_coef", 0.0) * aux
        return CausalLMOutputWithPast(loss=loss, logits=None)  # :272-279 (no logits)

    base.forward = types.MethodType(lce_forward, base)
