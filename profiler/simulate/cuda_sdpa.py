"""The SDPA kernel a CUDA GPU of a given architecture picks, and what that kernel allocates and saves.

`F.scaled_dot_product_attention` is replaced inside a `device: cuda` simulation by `CudaSdpa`, which chooses
the backend as torch's CUDA dispatcher does (aten/src/ATen/native/transformers/cuda/sdp_utils.cpp,
`select_sdp_backend`) for the configured `gpu_arch`, then runs a stand-in that allocates what that kernel
allocates. The rules name the torch version they were read from (`SDPA_RULES_TORCH`); under another torch the
record gets a warning (`rules_warning`).

Where the rules come from (torch 2.13.0, commit cf30153c):
- head counts: the installed 2.13 header include/ATen/native/transformers/sdp_utils_cpp.h,
  `check_batch_size_and_num_heads_dense<supports_gqa, requires_same_num_heads>`: a fused kernel takes fewer
  k/v heads only with `enable_gqa`; memory-efficient attention does not take grouped-query attention in 2.13
  (FACTS.md; upstream main has since allowed it);
- the rest from cuda/sdp_utils.cpp as stored for pytorch/pytorch commit 001f694aef6f922b4fdf6d27d59162d27bf3df58
  (the v2.13.0 file itself was not available to read; the functions below did not change in the parts used):
  priority flash > efficient > math, or cuDNN first where `check_prefer_cudnn_attention` holds: cuDNN
  runtime newer than 9.15.0 on sm90 / sm100 / sm103 (CUDA 12 wheels: minor 0 or 3). We assume the wheel's
  cuDNN is newer than 9.15.0 (torch 2.13's CUDA wheels pin cuDNN 9.x; not verified on a GPU:
  `scripts/simulate_vs_cuda.py` compares with `torch._fused_sdp_choice`); `TORCH_CUDNN_SDPA_DEPRIORITIZED=1`
  turns the preference off on a real run.
  flash: no mask; q/k/v head dims equal and <= 256; sm80..sm121; on sm86/sm89/sm120 training needs head dim
  <= 192 (or > 224 without dropout); causal needs seq_q == seq_k; fp16/bf16.
  memory-efficient: sm50..sm121; q and k head dims equal, q and v head dims multiples of the GEMM alignment
  (sm80+: 8 for fp16/bf16, 4 for fp32; sm7x: 8 for fp16, 1 for fp32); fp16/fp32, and bf16 on sm80+.
  cuDNN: sm80..sm121; fp16/bf16; takes a mask and (with enable_gqa) fewer k/v heads; head dim a multiple of 8
  and <= 128 (256 needs cuDNN > 9.22 with a new cudnn-frontend: not assumed); seq_k != 1; dropout a multiple
  of 1/16.
What each kernel allocates: flash and memory-efficient below (flash-attn 2 `flash_api.cpp`, cutlass); cuDNN by
the aten op itself, whose meta kernel torch ships (_meta_registrations.py `meta__scaled_dot_product_cudnn_
attention`: out in q's layout + logsumexp (b, h, s, 1) fp32; backward dq, dk, dv like q, k, v) and whose
autograd node saves q, k, v, the mask, out and logsumexp; a boolean mask becomes an additive mask of q's dtype
(attention.cpp `convert_boolean_attn_mask`). cuDNN's workspace is not modelled.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict

import torch

from profiler.simulate.cuda_autocast import lower_precision, no_autocast

SDPA_RULES_TORCH = "2.13"  # the torch version the rules were read from
DEFAULT_ARCH = "sm80"  # gpu_arch auto, and presets whose compute capability is not cited
_HALF = (torch.float16, torch.bfloat16)
_warned = False


def arch_tuple(arch: str) -> tuple[int, int]:
    """'sm89' -> (8, 9), 'sm100' -> (10, 0); 'auto' -> the default architecture."""
    digits = (DEFAULT_ARCH if arch in (None, "auto") else arch).removeprefix("sm")
    return int(digits[:-1]), int(digits[-1])


def rules_warning() -> str | None:
    """A line for records made under a torch the rules were not read from (None on torch 2.13); printed once
    per process on stderr."""
    global _warned
    if torch.__version__.startswith(SDPA_RULES_TORCH + "."):
        return None
    msg = (f"SDPA kernel rules were read from torch {SDPA_RULES_TORCH}; this is torch {torch.__version__}: the "
           "simulated attention kernel may differ from what this torch picks")
    if not _warned:
        print(f"warning: {msg}", file=sys.stderr)
        _warned = True
    return msg


def prefers_cudnn(arch: str) -> bool:
    major, minor = arch_tuple(arch)
    return major in (9, 10) and minor in (0, 3)


def _in(cc: tuple[int, int], lo: tuple[int, int], hi: tuple[int, int]) -> bool:
    return lo <= cc <= hi


def _heads_ok(q, k, v, enable_gqa: bool, supports_gqa: bool) -> bool:
    """sdp_utils_cpp.h check_batch_size_and_num_heads_dense (torch 2.13)."""
    if not q.shape[0] == k.shape[0] == v.shape[0]:
        return False
    hq, hk, hv = q.shape[-3], k.shape[-3], v.shape[-3]
    if enable_gqa and supports_gqa:
        return hk == hv and hq % hk == 0
    return hq == hk == hv


def _can_flash(q, k, v, mask, is_causal, enable_gqa, dropout, cc, grad) -> bool:
    d, dk, dv = q.shape[-1], k.shape[-1], v.shape[-1]
    if mask is not None or not (d == dk == dv <= 256) or not _in(cc, (8, 0), (12, 1)):
        return False
    if grad and (_in(cc, (8, 6), (8, 9)) or _in(cc, (12, 0), (12, 1))):
        if not (d <= 192 or (dropout == 0.0 and d > 224)):
            return False
    if is_causal and q.shape[-2] != k.shape[-2]:
        return False
    same = q.dtype == k.dtype == v.dtype
    return same and q.dtype in _HALF and _heads_ok(q, k, v, enable_gqa, supports_gqa=True)


def _can_efficient(q, k, v, cc) -> bool:
    if not _in(cc, (5, 0), (12, 1)):
        return False
    half = q.dtype in _HALF
    if cc[0] >= 8:
        align = 8 if half else 4
    else:
        align = 8 if half else 1
    d, dv = q.shape[-1], v.shape[-1]
    if not (d == k.shape[-1] and d % align == 0 and dv % align == 0 and d > 0 and dv > 0):
        return False
    dtypes = (*_HALF, torch.float32) if cc[0] >= 8 else (torch.float16, torch.float32)
    same = q.dtype == k.dtype == v.dtype
    return same and q.dtype in dtypes and _heads_ok(q, k, v, False, supports_gqa=False)


def _can_cudnn(q, k, v, enable_gqa, dropout, cc) -> bool:
    if not _in(cc, (8, 0), (12, 1)) or dropout * 16 != int(dropout * 16):
        return False
    same = q.dtype == k.dtype == v.dtype
    d, dv = q.shape[-1], v.shape[-1]
    return (same and q.dtype in _HALF and q.shape[0] <= 65535 and q.shape[1] <= 65535 and d <= 128
            and dv <= 128 and d % 8 == 0 and dv % 8 == 0 and k.shape[-2] != 1
            and _heads_ok(q, k, v, enable_gqa, supports_gqa=True))


def cuda_sdpa_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
                     is_causal: bool, enable_gqa: bool = False, arch: str = "auto", dropout_p: float = 0.0,
                     requires_grad: bool | None = None) -> str:
    """The backend torch 2.13's CUDA dispatcher picks on `arch` (module docstring): cudnn, flash, efficient
    or math. A caller passing k/v with fewer heads and no `enable_gqa` (Falcon-7B's multi-query attention
    calls SDPA directly) gets the math kernel, which broadcasts them and saves the s x s probabilities."""
    cc = arch_tuple(arch)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)) if requires_grad is None \
        else requires_grad
    order = ("cudnn", "flash", "efficient") if prefers_cudnn(arch) else ("flash", "efficient")
    for kernel in order:
        if kernel == "cudnn" and _can_cudnn(q, k, v, enable_gqa, dropout_p, cc):
            return kernel
        if kernel == "flash" and _can_flash(q, k, v, attn_mask, is_causal, enable_gqa, dropout_p, cc, grad):
            return kernel
        if kernel == "efficient" and _can_efficient(q, k, v, cc):
            return kernel
    return "math"


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


class _FlashAttention(torch.autograd.Function):
    """What aten._scaled_dot_product_flash_attention allocates on CUDA (flash-attn 2, flash_api.cpp):
    forward out (b, s, h, d)-contiguous viewed as (b, h, s, d) + logsumexp (b, h, s) fp32, both saved with
    q, k, v; backward dq/dk/dv, softmax_d (b, h, s128) fp32, dq_accum (b, s128, h, d32) fp32, and with
    grouped-query attention dk/dv expanded to all query heads before the reduction."""

    @staticmethod
    def forward(ctx, q, k, v, is_causal, scale):
        b, h, s, _ = q.shape
        out = torch.empty((b, s, h, v.shape[-1]), dtype=q.dtype, device=q.device).transpose(1, 2)
        lse = torch.empty((b, h, s), dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        b, h, s, d = q.shape
        hk, sk = k.shape[1], k.shape[2]
        dev = q.device
        dq = torch.empty((b, s, h, d), dtype=q.dtype, device=dev).transpose(1, 2)
        dk = torch.empty((b, sk, hk, d), dtype=k.dtype, device=dev).transpose(1, 2)
        dv = torch.empty((b, sk, hk, v.shape[-1]), dtype=v.dtype, device=dev).transpose(1, 2)
        softmax_d = torch.empty((b, h, _round_up(s, 128)), dtype=torch.float32, device=dev)
        dq_accum = torch.empty((b, _round_up(s, 128), h, _round_up(d, 32 if d <= 128 else 64)),
                               dtype=torch.float32, device=dev)
        expanded = []
        if hk != h:
            expanded = [torch.empty((b, sk, h, d), dtype=k.dtype, device=dev),
                        torch.empty((b, sk, h, v.shape[-1]), dtype=v.dtype, device=dev)]
        del softmax_d, dq_accum, expanded
        return dq, dk, dv, None, None


class _EfficientAttention(torch.autograd.Function):
    """aten._scaled_dot_product_efficient_attention on CUDA (cutlass mem-efficient): out (b, s, h, d) viewed
    as (b, h, s, d) + logsumexp (b, h, s32) fp32 saved with q, k, v and the additive mask; backward grads +
    delta (b, h, s) fp32."""

    @staticmethod
    def forward(ctx, q, k, v, bias, is_causal, scale):
        b, h, s, _ = q.shape
        out = torch.empty((b, s, h, v.shape[-1]), dtype=q.dtype, device=q.device).transpose(1, 2)
        lse = torch.empty((b, h, _round_up(s, 32)), dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse, bias)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, bias = ctx.saved_tensors
        b, h, s, _ = q.shape
        delta = torch.empty((b, h, s), dtype=torch.float32, device=q.device)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        del delta
        return dq, dk, dv, None, None, None


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """attention.cpp convert_boolean_attn_mask: a boolean mask becomes an additive one of q's dtype."""
    if mask is not None and mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return mask


def _layer_kind() -> str:
    """The kind of the attention layer calling SDPA (config.layer_types, e.g. full_attention /
    sliding_attention), read off transformers' `sdpa_attention_forward(module, ...)` frame."""
    frame = sys._getframe(2)
    for _ in range(6):
        if frame is None:
            break
        mod = frame.f_locals.get("module")
        if mod is not None and hasattr(mod, "layer_idx"):
            types = getattr(getattr(mod, "config", None), "layer_types", None)
            idx = mod.layer_idx
            if types and isinstance(idx, int) and idx < len(types):
                return str(types[idx])
            return "sliding_attention" if getattr(mod, "sliding_window", None) else "full_attention"
        frame = frame.f_back
    return "attention"


class CudaSdpa:
    """Stands in for F.scaled_dot_product_attention: allocates what the CUDA kernel would; counts kernels,
    in all and per layer kind."""

    def __init__(self, native, arch: str = "auto"):
        self.native = native
        self.arch = arch
        self.used: Counter[str] = Counter()
        self.by_kind: defaultdict[str, Counter[str]] = defaultdict(Counter)

    def __call__(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                 enable_gqa=False):
        # CUDA autocast lists scaled_dot_product_attention as lower precision: its kernel is chosen on the
        # cast inputs, and runs with autocast off (profiler.simulate.cuda_autocast)
        query, key, value, attn_mask = lower_precision(query, key, value, attn_mask)
        kind = _layer_kind()
        with no_autocast():
            kernel = cuda_sdpa_kernel(query, key, value, attn_mask, is_causal, enable_gqa, self.arch, dropout_p)
            self.used[kernel] += 1
            self.by_kind[kind][kernel] += 1
            return self._run(kernel, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)

    @staticmethod
    def _run(kernel, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
        if kernel == "flash":
            return _FlashAttention.apply(query, key, value, is_causal, scale)
        if kernel == "efficient":
            return _EfficientAttention.apply(query, key, value, _additive(attn_mask, query.dtype), is_causal, scale)
        if kernel == "cudnn":
            grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
            return torch.ops.aten._scaled_dot_product_cudnn_attention(
                query, key, value, _additive(attn_mask, query.dtype), grad, dropout_p, is_causal, False,
                scale=scale)[0]
        return torch.ops.aten._scaled_dot_product_attention_math(
            query, key, value, attn_mask, dropout_p, is_causal, None, scale=scale, enable_gqa=enable_gqa)[0]

    def kernels_by_kind(self) -> dict[str, str]:
        """Layer kind -> kernel(s) used, most used first ('flash', 'cudnn+math')."""
        return {kind: "+".join(k for k, _ in used.most_common()) for kind, used in self.by_kind.items()}
