"""The loss's own buffers in `components` for `train.loss: chunked` (TRL) and `liger`: saved, forward, backward bytes.

`train.loss: full` (the model's own loss on full (batch, seq, vocab) logits) stays in components.py. The two fused
losses never hold those logits; what they allocate instead is read off the libraries' source, line by line:

- chunked: trl 1.16 `ChunkedLogProbFunction` (trl/kernels/chunked_logprob.py) called by `add_fused_lm_head`
  (trl/trainer/utils.py:1548-1690), on CUDA (Triton: the fold kernels and `_addmm_fp32` allocate nothing) or on a
  device without Triton (torch fallback `_forward_tile` / `_backward_tile`: float32 temporaries of the tile).
- liger: liger-kernel 0.6.4 `fused_linear_cross_entropy_forward` (liger_kernel/ops/fused_linear_cross_entropy.py),
  as its `lce_forward` calls it in training (liger_kernel/transformers/model/llama.py:244-253, loss_utils.py:62-95);
  the torch mirror that `simulate` runs is profiler/measure/liger_flce.py (same tensors, same order).

Each function returns bytes beyond everything else alive (weights, optimizer state, the layers' saved activations):
`saved` (from the loss's forward to its backward), `forward` (the loss forward's peak beyond `saved`) and
`backward` (the loss backward's peak beyond `saved`).
"""

from __future__ import annotations

from dataclasses import dataclass

TRL_TOKEN_CHUNK = 4096  # trl/kernels/chunked_logprob.py:31 TOKEN_CHUNK_SIZE
TRL_VOCAB_CHUNK = 32768  # trl/trainer/utils.py:1506 _CHUNKED_LOGPROB_CHUNK_SIZE
LIGER_MAX_FUSED = 65536 // 2  # liger fused_linear_cross_entropy.py:13 MAX_FUSED_SIZE (the kernel's block, no memory)


@dataclass(frozen=True)
class LossInputs:
    """What the loss sees: tokens b x s, hidden width h, vocabulary v; bytes of the hidden states (a), of the matmul
    dtype (c: the autocast dtype, else the hidden dtype), of the head weight (w); whether the hidden states need a
    gradient (anything before the head trains) and whether the head weight trains."""

    b: int
    s: int
    h: int
    v: int
    a: int
    c: int
    w: int
    hidden_grad: bool
    head_grad: bool


@dataclass(frozen=True)
class LossBytes:
    saved: int
    forward: int
    backward: int


def chunked_bytes(x: LossInputs, cuda: bool) -> LossBytes:
    """TRL's chunked LM-head loss, N = b x (s - 1) scored tokens (every label valid; the last position has none).

    Forward (trl/trainer/utils.py `_fused_forward`, chunked_logprob.py `forward`):
    - utils.py:1618 `last_hidden_state[:, :-1]`, :1645 `hidden_states[mask]` (CUDA: the compact rows, a copy of N x h),
      :1648 `labels[mask]` (N int64): both saved for backward (chunked_logprob.py:386) with `log_z` and `entropy`
      (N fp32 each; SFTTrainer asks for entropy, sft_trainer.py:1146). The backbone output (b x s x h) is alive
      until the forward returns.
    - chunked_logprob.py:340-346: seven fp32 per-token accumulators (N each); :347 `mm_buf` of
      min(N, 4096) x 32768 in the compute dtype (the whole vocabulary chunk wide even when v is smaller);
      :352 `hidden[...].to(compute_dtype)` and :356 `weight[start:end].to(compute_dtype)` copy only where the
      dtypes differ.
    - CPU fallback `_forward_tile` (:235-254): `z = tile.float()` beside `z - new_m` and its `exp`: 12 bytes per
      element of the tile (rows x min(v, 32768)).
    Backward (chunked_logprob.py `backward`): :406-413 fp32 `grad_hidden` (N x h, when the hidden states need a
    gradient), fp32 `grad_weight` (v x h, when the head trains), a second `mm_buf`; :455-457 the casts back to the
    inputs' dtypes while the fp32 accumulators and the buffer are alive; the incoming per-token gradients (N fp32,
    twice: the sum's and the mask's backward). CPU fallback `_backward_tile` (:276-296): y, z, log_p, p, grad and the
    is-target terms alive at once: 33 bytes per tile element.
    """
    n = x.b * (x.s - 1)
    rows = min(n, TRL_TOKEN_CHUNK)
    cols = min(x.v, TRL_VOCAB_CHUNK)
    buf = rows * TRL_VOCAB_CHUNK * x.c
    hidden_cast = rows * x.h * x.c if x.a != x.c else 0
    weight_cast = cols * x.h * x.c if x.w != x.c else 0
    saved = n * (x.h * x.a + 8 + 4 + 4) + x.b * (x.s - 1)  # rows, targets, log_z, entropy; the label mask
    fwd = x.b * x.s * x.h * x.a + 7 * 4 * n + buf + hidden_cast + weight_cast + (0 if cuda else 12 * rows * cols)
    gh = 4 * n * x.h + (n * x.h * x.a if x.a != 4 else 0) if x.hidden_grad else 0
    gw = 4 * x.v * x.h + (x.v * x.h * x.w if x.w != 4 else 0) if x.head_grad else 0
    bwd = 8 * n + buf + hidden_cast + weight_cast + gh + gw + (0 if cuda else 33 * rows * cols)
    return LossBytes(saved, fwd, bwd)


def liger_bytes(x: LossInputs) -> LossBytes:
    """Liger's fused linear cross-entropy as its `lce_forward` runs it in training, BT = b x s tokens (loss_utils.py:77
    pads the labels with -100 instead of dropping the last position). The gradients are computed in the forward and
    saved; the backward only scales them in place.

    Forward (liger_kernel/ops/fused_linear_cross_entropy.py `fused_linear_cross_entropy_forward`):
    - :55 `grad_input = zeros_like(_input)` (BT x h, the hidden dtype) and :58-64 `grad_weight = zeros_like(weight)`
      (v x h in the weight's dtype: `lce_forward` passes no accum_dtype) when the head trains: both saved (:340).
    - :69 `loss_1d` (BT fp32), :74 the target mask (BT bool); loss_utils.py:77-78 the padded (b x (s+1)) and shifted
      (b x s) int64 labels; the backbone output (b x s x h) alive until the forward returns.
    - per chunk of `liger_chunk_size` tokens (:51-52): :96 `logits_chunk` (chunk x v, the matmul dtype), overwritten
      in place with its gradient by the Triton kernel (:144); then one of: :195 `grad_logits_chunk @ weight`
      (chunk x h), or, when the head trains, :198 `torch.mm(...)` (v x h) and its `.float()` copy. Under autocast a
      weight (or input) stored in another dtype is cast for each matmul (a frozen leaf's cast is not cached).
    Backward: the slice `hidden_states[:, 0:, :]` (model/llama.py:225) gets a full b x s x h gradient copy.
    """
    from profiler.liger import liger_chunk_size

    bt = x.b * x.s
    chunk = min(liger_chunk_size(bt, x.h, x.v), bt)
    grad_in = bt * x.h * x.a if x.hidden_grad else 0
    grad_w = x.v * x.h * x.w if x.hidden_grad and x.head_grad else 0
    saved = grad_in + grad_w
    fixed = x.b * x.s * x.h * x.a + 4 * bt + bt + 8 * x.b * (x.s + 1) + 8 * bt
    logits = chunk * x.v * x.c
    w_cast = x.v * x.h * x.c if x.w != x.c else 0
    in_cast = chunk * x.h * x.c if x.a != x.c else 0
    steps = [w_cast + in_cast]  # :96 the logits matmul
    if x.hidden_grad:
        steps.append(w_cast + chunk * x.h * x.c)  # :195 grad_input chunk
        if x.head_grad:  # :198 the head's gradient chunk and its fp32 copy
            steps.append(in_cast + x.v * x.h * x.c + (x.v * x.h * 4 if x.c != 4 else 0))
    fwd = fixed + logits + max(steps)
    bwd = x.b * x.s * x.h * x.a if x.hidden_grad else 0
    return LossBytes(saved, fwd, bwd)
