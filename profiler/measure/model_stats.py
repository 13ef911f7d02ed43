"""Parameter counts and weight bytes of a loaded model, quantization state included.

bitsandbytes stores a 4-bit weight as packed uint8 (numel/2 elements) plus its quantization state
(absmax, code, nested absmax with double quant); an 8-bit weight as int8 plus fp32 row scales (SCB).
Counting logical parameters and unique storage bytes keeps both truths.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor


def _storage_key(t: torch.Tensor) -> tuple:
    st = t.untyped_storage()
    if isinstance(t, FakeTensor):  # fake (profiler.simulate.backend): no data pointer; the storage object is stable
        return ("id", id(st))
    return (str(t.device), st.data_ptr()) if st.data_ptr() else ("id", id(st))


def quant_state_tensors(p) -> list[torch.Tensor]:
    """Tensors bitsandbytes keeps beside a quantized weight (Params4bit.quant_state, Int8Params.SCB)."""
    out: list[torch.Tensor] = []
    qs = getattr(p, "quant_state", None)
    while qs is not None:
        out += [t for t in (getattr(qs, "absmax", None), getattr(qs, "code", None), getattr(qs, "offset", None))
                if isinstance(t, torch.Tensor)]
        qs = getattr(qs, "state2", None)
    for attr in ("SCB", "CB"):
        t = getattr(p, attr, None)
        if isinstance(t, torch.Tensor):
            out.append(t)
    return out


def logical_numel(p) -> int:
    """Unpacked parameter count: a Params4bit of shape [n/2, 1] holds n parameters."""
    qs = getattr(p, "quant_state", None)
    if qs is not None and getattr(qs, "shape", None) is not None:
        return int(torch.Size(qs.shape).numel())
    return p.numel()


def is_quantized(p: torch.Tensor) -> bool:
    # memprof_quantized: profiler.simulate.fake_bnb stand-ins (plain fake tensors in place of the bnb subclasses)
    return type(p).__name__ in ("Params4bit", "Int8Params") or getattr(p, "memprof_quantized", False)


def module_quant_states(model: nn.Module) -> dict[int, object]:
    """id(weight) -> the QuantState its 4-bit layer keeps, for weights that lost theirs: FSDP2 replaces a
    Params4bit by a plain DTensor, and bitsandbytes then reads the layer's own `quant_state`
    (nn/modules.py fix_4bit_weight_quant_state_from_module). Each rank keeps the whole quant state.
    Also the packed data of a parameter quantized under a parametrization (bitsandbytes nn/parametrize.py
    replace_parameter_4bit, used for fused MoE experts: profiler.measure.moe_quant): the plain uint8 tensor is
    `parametrizations.<name>.original`, its QuantState is on the `Bnb4bitParametrization`."""
    out: dict[int, object] = {}
    for m in model.modules():
        if type(m).__name__ == "ParametrizationList":
            for step in m:
                if getattr(step, "quant_state", None) is not None:
                    out[id(m.original)] = step.quant_state
            continue
        qs, w = getattr(m, "quant_state", None), getattr(m, "weight", None)
        if qs is not None and isinstance(w, torch.Tensor) and getattr(w, "quant_state", None) is None:
            out[id(w)] = qs
    return out


class _WithState:
    """A parameter's quant state where the parameter itself no longer carries it (see module_quant_states)."""

    def __init__(self, qs):
        self.quant_state = qs


def weight_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Every tensor that is part of the model's weights: params, buffers and quantization state."""
    out: list[torch.Tensor] = []
    lost = module_quant_states(model)
    for p in model.parameters():
        if id(p) in lost:
            out += quant_state_tensors(_WithState(lost[id(p)]))
        p = getattr(p, "_local_tensor", p)  # FSDP2's DTensor parameter: this rank's shard holds the bytes
        out.append(p)
        out += quant_state_tensors(p)
    out += list(model.buffers())
    return out


def weight_bytes_by_dtype(model: nn.Module) -> dict[str, int]:
    """Unique storage bytes per dtype (tied and aliased storages counted once)."""
    seen: set = set()
    by: dict[str, int] = defaultdict(int)
    for t in weight_tensors(model):
        if t.device.type == "meta":
            continue
        key = _storage_key(t)
        if key in seen:
            continue
        seen.add(key)
        by[str(t.dtype).removeprefix("torch.")] += t.untyped_storage().nbytes()
    return dict(sorted(by.items()))


def model_stats(model: nn.Module, name: str) -> dict:
    """The ModelStats dict of profiler.schema."""
    cfg = getattr(model, "config", None)
    total = trainable = quantized = 0
    lost = module_quant_states(model)  # FSDP2-sharded 4-bit weights
    for p in model.parameters():
        n = logical_numel(_WithState(lost[id(p)]) if id(p) in lost else p)
        total += n
        trainable += n if p.requires_grad else 0
        quantized += n if is_quantized(p) or id(p) in lost else 0
    by = weight_bytes_by_dtype(model)
    return {
        "name": name,
        "model_type": getattr(cfg, "model_type", type(model).__name__),
        "total_params": total,
        "trainable_params": trainable,
        "quantized_params": quantized,
        "weight_bytes": sum(by.values()),
        "weight_bytes_by_dtype": by,
        "num_layers": getattr(cfg, "num_hidden_layers", None),
        "hidden_size": getattr(cfg, "hidden_size", None),
        "vocab_size": getattr(cfg, "vocab_size", None),
    }
