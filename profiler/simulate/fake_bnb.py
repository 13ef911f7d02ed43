"""bitsandbytes stand-ins for fake-tensor runs (profiler.simulate.backend).

A `Params4bit` / `Int8Params` is a tensor subclass whose construction quantizes real data, so it cannot
hold a fake tensor. The stand-ins below subclass `bnb.nn.Linear4bit` / `bnb.nn.Linear8bitLt` (so peft's
LoRA dispatch and `prepare_model_for_kbit_training` treat them exactly as the real layers) but hold plain
tensors with the storage bytes bitsandbytes keeps, and their forward/backward allocate the tensors
bitsandbytes' kernels allocate (installed source: bitsandbytes/autograd/_functions.py, backends/*/ops.py):

4-bit (`MatMul4Bit`, `gemm_4bit`):
  weight  packed uint8 [(n+1)//2, 1], or in `bnb_4bit_quant_storage` dtype S [(n+1)//(2*S.itemsize), 1]
          (_ops.py quantize_4bit fake kernel; the same bytes, viewed back as uint8 by dequantize_4bit); quant
          state absmax fp32 [n/64] and code fp32 [16], or with double
          quant absmax uint8 [n/64] + offset fp32 [] + state2 (absmax fp32 [n/64/256], code fp32 [256]).
  forward the input cast to compute dtype; nested absmax dequantized (fp32 [n/64], twice on CUDA); the
          dequantized weight [out, in] in compute dtype (transient) and the output. On CUDA, M <= 4 rows
          use the fused kernel (no dequantized weight); bitsandbytes' per-GPU heuristic may also pick it
          for 5 <= M <= 1536, which we do not model (the backward dequantizes the full weight anyway).
  backward re-dequantizes (fp32 absmax [n/64]; weight [out, in] in the stored dtype, cast to the
          gradient dtype when they differ) and matmuls; nothing but the packed weight is saved.
  cache   with double quant, the process's first quantize_4bit (its quantize_blockwise) caches
          `create_dynamic_map().to(device)` (fp32 [256], 1,024 bytes) in the module-level
          `bitsandbytes.functional.name2qmap["dynamic"]` for good (functional.py, quantize_blockwise), on
          CUDA as on CPU; each state2.code is a copy of it. `replace_linear_layers` holds one per model.
8-bit (`MatMul8bitLt` on CUDA and in eval; `MatMul8bitFp` when training on CPU):
  weight  int8 [out, in] + SCB fp32 [out].
  CUDA    input cast to fp16, int8 copy + fp32 row scales, outlier mask (threshold > 0), int32 product,
          fp16 then input-dtype output; saves the input; backward dequantizes CB to the input dtype.
          Outlier columns are data dependent: we assume none (subA empty).
  CPU     dequantizes CB to the input dtype, F.linear; saves the input; backward as CUDA.
FSDP2 (fully_shard) replaces the weight by a plain DTensor (no quant_state): Linear4bit.forward then recovers the
quant state from the module (nn/modules.py fix_4bit_weight_quant_state_from_module, "This happens for example for
fsdp"); the stand-in does the same. Its re-wrap of the weight as a Params4bit is an alias (no bytes).
The test `tests/test_simulate.py` checks weight bytes and forward+backward peak bytes of the CPU paths
against real bitsandbytes layers on CPU (allocator events from torch.profiler).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import bitsandbytes as bnb
import torch
from bitsandbytes.autograd._functions import MatmulLtState
from bitsandbytes.functional import QuantState
from torch import nn

BLOCKSIZE_4BIT = 64  # bnb Params4bit default (transformers keeps it)
NESTED_BLOCKSIZE = 256  # compress_statistics: absmax quantized in blocks of 256
FUSED_4BIT_MAX_ROWS = 4  # bnb backends/cuda/ops.py _GEMM_4BIT_CUSTOM_FLOOR_M: fused kernel, no dequant
QUANTIZED_MARK = "memprof_quantized"  # read by profiler.measure.model_stats.is_quantized
# where replace_linear_layers keeps its stand-in for bnb's cached dynamic map: an underscore attribute, so the
# tracker counts it as the real run does (a storage outside the model, alive from the first quantization on)
DYNAMIC_MAP_ATTR = "_memprof_bnb_dynamic_map"
DYNAMIC_MAP_SIZE = 256  # create_dynamic_map(): 2**8 fp32 entries


def _blocks(n: int, size: int) -> int:
    return (n + size - 1) // size


def quant_state_4bit(shape: tuple[int, int], dtype: torch.dtype, quant_type: str, double_quant: bool,
                     device: torch.device | str = "cpu") -> QuantState:
    """A QuantState with tensors of the shapes bitsandbytes' quantize_4bit produces (values uninitialised)."""
    n = math.prod(shape)
    nb = _blocks(n, BLOCKSIZE_4BIT)
    code = torch.empty(16, dtype=torch.float32, device=device)
    if not double_quant:
        return QuantState(absmax=torch.empty(nb, dtype=torch.float32, device=device), shape=torch.Size(shape),
                          code=code, blocksize=BLOCKSIZE_4BIT, quant_type=quant_type, dtype=dtype)
    state2 = QuantState(absmax=torch.empty(_blocks(nb, NESTED_BLOCKSIZE), dtype=torch.float32, device=device),
                        code=torch.empty(256, dtype=torch.float32, device=device), blocksize=NESTED_BLOCKSIZE,
                        dtype=torch.float32)
    return QuantState(absmax=torch.empty(nb, dtype=torch.uint8, device=device), shape=torch.Size(shape),
                      code=code, blocksize=BLOCKSIZE_4BIT, quant_type=quant_type, dtype=dtype,
                      offset=torch.empty((), dtype=torch.float32, device=device), state2=state2)


def _absmax_fp32(qs: QuantState) -> list[torch.Tensor]:
    """The fp32 block scales gemm_4bit builds before dequantizing (nested: dequantized, then + offset; the
    CUDA fallback keeps both buffers alive until its linear, so we do too)."""
    if not qs.nested:
        return [qs.absmax]
    absmax_dq = torch.empty(qs.absmax.shape, dtype=torch.float32, device=qs.absmax.device)
    return [absmax_dq, absmax_dq + qs.offset]


def _gemm_4bit(A: torch.Tensor, qs: QuantState, bias: torch.Tensor | None, cuda: bool) -> torch.Tensor:
    rows = A.numel() // A.shape[-1]
    if cuda and rows <= FUSED_4BIT_MAX_ROWS:  # fused cgemm_4bit kernel: only the output
        return torch.empty((*A.shape[:-1], qs.shape[0]), dtype=A.dtype, device=A.device)
    scales = _absmax_fp32(qs)
    if not cuda:  # backends/default/ops.py: the dequantized absmax is a temporary of the addition
        scales = scales[-1:]
    weight = torch.empty(qs.shape, dtype=A.dtype, device=A.device)  # dequantize_4bit output
    out = torch.nn.functional.linear(A, weight, bias)
    del weight, scales
    return out


class _MatMul4Bit(torch.autograd.Function):
    """bnb MatMul4Bit: nothing saved but the packed weight; backward re-dequantizes."""

    @staticmethod
    def forward(ctx, A, B, bias, qs: QuantState, cuda: bool):
        out = _gemm_4bit(A, qs, bias, cuda)
        ctx.qs = qs
        ctx.B = B
        ctx.dtype_bias = None if bias is None else bias.dtype
        return out

    @staticmethod
    def backward(ctx, grad_output):
        req_a, _, req_bias, _, _ = ctx.needs_input_grad
        grad_a = grad_bias = None
        if req_bias:
            grad_bias = grad_output.sum(0, dtype=ctx.dtype_bias)
        if req_a:
            qs = ctx.qs
            absmax = qs.absmax
            if qs.nested:  # F.dequantize_4bit: dequantize_blockwise then += offset (in place)
                absmax = torch.empty(qs.absmax.shape, dtype=torch.float32, device=qs.absmax.device)
                absmax += qs.offset
            weight = torch.empty(qs.shape, dtype=qs.dtype, device=grad_output.device).to(grad_output.dtype)
            del absmax
            grad_a = torch.matmul(grad_output, weight)
        return grad_a, None, grad_bias, None, None


class FakeLinear4bit(bnb.nn.Linear4bit):
    """Stands in for bnb.nn.Linear4bit on fake tensors: same storage bytes, same transient buffers."""

    def __init__(self, in_features: int, out_features: int, bias: bool, compute_dtype: torch.dtype,
                 quant_type: str, double_quant: bool, weight_dtype: torch.dtype, cuda: bool,
                 device: torch.device | str = "cpu", quant_storage: torch.dtype = torch.uint8):
        nn.Module.__init__(self)  # bnb's __init__ would quantize real data
        self.in_features, self.out_features = in_features, out_features
        n = in_features * out_features
        qs = quant_state_4bit((out_features, in_features), weight_dtype, quant_type, double_quant, device)
        packed = torch.empty(((n + 1) // (2 * quant_storage.itemsize), 1), dtype=quant_storage, device=device)
        weight = nn.Parameter(packed, requires_grad=False)
        weight.quant_state = qs
        weight.blocksize = BLOCKSIZE_4BIT
        weight.compress_statistics = double_quant
        weight.quant_type = quant_type
        weight.quant_storage = quant_storage
        weight.bnb_quantized = True
        setattr(weight, QUANTIZED_MARK, True)
        self.weight = weight
        self.bias = nn.Parameter(torch.empty(out_features, dtype=weight_dtype, device=device),
                                 requires_grad=False) if bias else None
        self.compute_dtype = compute_dtype
        self.compute_type_is_set = True
        self.quant_state = qs
        self.quant_storage = quant_storage
        self.support_avx512bf16_for_cpu = False
        self.cuda_kernels = cuda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # under FSDP2 the weight is a plain tensor: bnb takes the module's quant state (fix_4bit_weight_...)
        qs = getattr(self.weight, "quant_state", None) or self.quant_state
        inp_dtype = x.dtype
        x = x.to(self.compute_dtype)
        bias = self.bias
        if bias is not None:
            if bias.dtype != x.dtype:
                bias.data = bias.data.to(x.dtype)
            bias = bias.to(self.compute_dtype)
        bias_grad = bias is not None and bias.requires_grad
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or bias_grad)
        if needs_grad:
            out = _MatMul4Bit.apply(x, self.weight, bias, qs, self.cuda_kernels)
        else:
            out = _gemm_4bit(x, qs, bias, self.cuda_kernels)
        return out.to(inp_dtype)


class _MatMul8bitLt(torch.autograd.Function):
    """bnb MatMul8bitLt on CUDA (int8 matmul); outlier columns assumed absent (data dependent)."""

    @staticmethod
    def forward(ctx, A, B, bias, state: MatmulLtState):
        input_shape = A.shape
        if A.dim() == 3:
            A = A.reshape(-1, A.shape[-1])
        rows, n_out = A.shape[0], state.CB.shape[0]
        a16 = A.to(torch.float16)  # int8_vectorwise_quant(A.to(fp16), threshold)
        sca = torch.empty(rows, dtype=torch.float32, device=A.device)
        ca = torch.empty(A.shape, dtype=torch.int8, device=A.device)
        if state.threshold > 0.0:
            outliers = a16.abs() >= state.threshold
            del outliers
        del a16
        sub_a = torch.empty(0, dtype=A.dtype, device=A.device) if state.threshold > 0.0 else None
        out_i32 = torch.empty((rows, n_out), dtype=torch.int32, device=A.device)  # int8_linear_matmul
        out16 = torch.empty((rows, n_out), dtype=torch.float16, device=A.device)  # int8_mm_dequant
        if bias is not None and bias.dtype != torch.float16:
            out16.add_(bias)
        output = out16.to(A.dtype)
        del out_i32, out16, ca, sca
        ctx.state = state
        ctx.grad_shape = input_shape
        ctx.dtype_A = A.dtype
        ctx.dtype_bias = None if bias is None else bias.dtype
        ctx.tensors = (None, sub_a, A) if any(ctx.needs_input_grad[:2]) else (None, None, None)
        if len(input_shape) == 3:
            return output.reshape((*input_shape[:-1], n_out))
        return output

    @staticmethod
    def backward(ctx, grad_output):
        return _int8_backward(ctx, grad_output)


class _MatMul8bitFp(torch.autograd.Function):
    """bnb MatMul8bitFp (training on CPU/XPU): dequantize CB, F.linear."""

    @staticmethod
    def forward(ctx, A, B, bias, state: MatmulLtState):
        cb = state.CB.data.to(A.dtype).mul_(state.SCB.unsqueeze(1).mul(1.0 / 127.0))
        output = torch.nn.functional.linear(A, cb, bias)
        ctx.state = state
        ctx.dtype_A = A.dtype
        ctx.grad_shape = A.shape
        ctx.A = A
        ctx.dtype_bias = None if bias is None else bias.dtype
        return output

    @staticmethod
    def backward(ctx, grad_output):
        return _int8_backward(ctx, grad_output)


def _int8_backward(ctx, grad_output):
    req_a, _, req_bias, _ = ctx.needs_input_grad
    state = ctx.state
    grad_a = grad_bias = None
    if req_bias:
        grad_bias = grad_output.sum(0, dtype=ctx.dtype_bias)
    if grad_output.dim() == 3:
        grad_output = grad_output.reshape(-1, grad_output.shape[-1]).contiguous()
    if req_a:
        cb = state.CB.to(ctx.dtype_A, copy=True).mul_(state.SCB.unsqueeze(1).mul(1.0 / 127.0))
        grad_a = torch.matmul(grad_output.to(ctx.dtype_A), cb).view(ctx.grad_shape)
    return grad_a, None, grad_bias, None


class FakeLinear8bitLt(bnb.nn.Linear8bitLt):
    """Stands in for bnb.nn.Linear8bitLt (has_fp16_weights=False) on fake tensors."""

    def __init__(self, in_features: int, out_features: int, bias: bool, threshold: float,
                 weight_dtype: torch.dtype, cuda: bool, device: torch.device | str = "cpu"):
        nn.Module.__init__(self)
        self.in_features, self.out_features = in_features, out_features
        weight = nn.Parameter(torch.empty((out_features, in_features), dtype=torch.int8, device=device),
                              requires_grad=False)
        scb = torch.empty(out_features, dtype=torch.float32, device=device)
        weight.SCB = scb
        weight.has_fp16_weights = False
        setattr(weight, QUANTIZED_MARK, True)
        self.weight = weight
        self.bias = nn.Parameter(torch.empty(out_features, dtype=weight_dtype, device=device),
                                 requires_grad=False) if bias else None
        self.state = MatmulLtState()
        self.state.threshold = threshold
        self.state.has_fp16_weights = False
        self.state.use_pool = threshold > 0.0
        self.state.CB = weight  # init_8bit_state: CB is the int8 weight's storage
        self.state.SCB = scb
        self.index = None
        self.cuda_kernels = cuda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.state.is_training = self.training
        if self.bias is not None and self.bias.dtype != x.dtype:
            self.bias.data = self.bias.data.to(x.dtype)
        if self.training and not self.cuda_kernels:
            return _MatMul8bitFp.apply(x, self.weight, self.bias, self.state)
        return _MatMul8bitLt.apply(x, self.weight, self.bias, self.state)


@contextmanager
def packed_weights_hidden(model: nn.Module) -> Iterator[None]:
    """While entered, the 4-bit stand-ins with a float `quant_storage` hold a 0-element uint8 placeholder as their
    weight. peft's prepare_model_for_kbit_training upcasts every fp16/bf16 parameter to fp32 unless its class is
    named Params4bit (peft/utils/other.py); a real bf16-stored Params4bit is spared, but a fake tensor cannot be
    one (nn.Parameter of a tensor subclass returns the fake tensor itself), so the stand-in is hidden instead."""
    hidden = [(m, m.weight) for m in model.modules()
              if isinstance(m, FakeLinear4bit) and m.weight.dtype.is_floating_point]
    for m, _ in hidden:
        m._parameters["weight"] = nn.Parameter(torch.empty(0, dtype=torch.uint8), requires_grad=False)
    try:
        yield
    finally:
        for m, w in hidden:
            m._parameters["weight"] = w


def prepare_kbit_sparing_standins(native):
    """peft.prepare_model_for_kbit_training that leaves float-stored 4-bit stand-ins as the real Params4bit are."""

    def prepare_model_for_kbit_training(model, *args, **kwargs):
        with packed_weights_hidden(model):
            return native(model, *args, **kwargs)

    return prepare_model_for_kbit_training


def replace_linear_layers(model: nn.Module, quant_config, cuda: bool, device: str | None = None) -> int:
    """Swap every nn.Linear / Conv1D that transformers' bnb quantizer would convert for a stand-in, the way
    `replace_with_bnb_linear` chooses them (lm_head, tied and fp32-kept modules stay). Returns the count.
    `device` places the stand-ins (default: where the replaced layer's weight is, e.g. meta). With 4-bit
    double quant, `model.<DYNAMIC_MAP_ATTR>` also holds the 1,024-byte dynamic map bnb caches per process
    (one per simulated run: a real run in the same process reuses the cache, and the tracker counts it there
    when the first quantize_blockwise takes it as input)."""
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.base import HfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    skip = HfQuantizer.get_modules_to_not_convert(model, quant_config.llm_int8_skip_modules,
                                                  getattr(model, "_keep_in_fp32_modules", None))
    qc = quant_config
    eight_bit = qc.load_in_8bit
    replaced = 0
    for name, module in list(model.named_modules()):
        if not should_convert_module(name, skip):
            continue
        if not (isinstance(module, Conv1D) or type(module) is nn.Linear):
            continue
        if isinstance(module, Conv1D):
            in_f, out_f = module.weight.shape
        else:
            in_f, out_f = module.in_features, module.out_features
        has_bias = module.bias is not None
        dtype, where = module.weight.dtype, device or module.weight.device
        if eight_bit:
            new = FakeLinear8bitLt(in_f, out_f, has_bias, qc.llm_int8_threshold, dtype, cuda, where)
        else:
            if qc.bnb_4bit_use_double_quant and not hasattr(model, DYNAMIC_MAP_ATTR):
                setattr(model, DYNAMIC_MAP_ATTR, torch.empty(DYNAMIC_MAP_SIZE, dtype=torch.float32, device=where))
            new = FakeLinear4bit(in_f, out_f, has_bias, qc.bnb_4bit_compute_dtype, qc.bnb_4bit_quant_type,
                                 qc.bnb_4bit_use_double_quant, dtype, cuda, where, qc.bnb_4bit_quant_storage)
        new.source_cls = type(module)
        new.requires_grad_(False)
        new.train(module.training)
        model.set_submodule(name, new)
        replaced += 1
    setattr(model, "is_loaded_in_8bit" if eight_bit else "is_loaded_in_4bit", True)
    return replaced



def replace_expert_params(model: nn.Module, quant_config, device: str = "cpu") -> int:
    """axolotl's quantize_moe_experts on a fake model (profiler.measure.moe_quant says what it does): each expert
    parameter becomes the packed uint8 [numel/2, 1] that bitsandbytes' replace_parameter_4bit stores (it calls
    quantize_4bit with the default uint8 quant_storage and blocksize 64, whatever bnb_4bit_quant_storage says), with
    the quant state `quant_state_4bit` builds for the Linear4bit stand-ins, under bitsandbytes' own
    `Bnb4bitParametrization` and hooks, registered as replace_parameter_4bit registers them. Only its quantize step
    is replaced (it calls .item()); dequantize_4bit has fake kernels, so the forward runs bitsandbytes' code and
    allocates what it allocates. Call on the meta model, before materialising: the 16-bit experts never exist."""
    import torch.nn.utils.parametrize as P
    from bitsandbytes.nn.parametrize import Bnb4bitParametrization, _register_parametrization_hooks

    from profiler.measure.moe_quant import expert_param_names

    qc = quant_config
    chosen = expert_param_names(model)
    if chosen and qc.bnb_4bit_use_double_quant and not hasattr(model, DYNAMIC_MAP_ATTR):
        setattr(model, DYNAMIC_MAP_ATTR, torch.empty(DYNAMIC_MAP_SIZE, dtype=torch.float32, device=device))
    for mod_name, pname in chosen:
        module = model.get_submodule(mod_name)
        old = getattr(module, pname)
        n = old.numel()
        qs = quant_state_4bit(tuple(old.shape), old.dtype, qc.bnb_4bit_quant_type, qc.bnb_4bit_use_double_quant,
                              device)
        packed = torch.empty(((n + 1) // 2, 1), dtype=torch.uint8, device=device)
        setattr(module, pname, nn.Parameter(packed, requires_grad=False))
        P.register_parametrization(module, pname, Bnb4bitParametrization(qs), unsafe=True)
        _register_parametrization_hooks(module, pname)
    return len(chosen)
