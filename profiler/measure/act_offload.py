"""TRL's activation offloading (`SFTConfig.activation_offloading`) around a step's forward and backward.

TRL 1.16 builds the manager once (trl/trainer/sft_trainer.py:1190-1193 `get_act_offloading_ctx_manager(model)`) and
enters it around each `training_step` (sft_trainer.py:1690-1693: forward and backward, not the optimizer step).
It is `OffloadActivations` (trl/models/activation_offloading.py), a `saved_tensors_hooks`: its pack hook
(`pack_tensor`) copies each saved tensor to (pinned) host memory and keeps an id, unless the tensor is not on the
accelerator, under `min_offload_size` (1024) bytes, a Parameter/Buffer, or shares storage with a parameter; a
non-contiguous tensor is made contiguous (a view with a storage offset is cloned) first. With `use_streams`
(default) the GPU tensor stays in a forward stash until a later pack drops ids <= tensor_id - max_fwd_stash_size (5:
the ids count every packed tensor), and a tensor whose storage is still in the stash is not offloaded again: it is
kept on the GPU (the same input saved by q/k/v or gate/up projections). The unpack hook brings the copy back to the
GPU (a fresh tensor) or returns the stashed one; the first backward node empties the stash. The output head
(`lm_head`, found on the model, `.module`, or a PEFT model's `base_model`) runs under `NoOpManager`, so its inputs
stay saved on the GPU.

On a real CUDA run the harness enters TRL's own manager. It cannot be built without an accelerator (its constructor
reads `torch.accelerator.current_accelerator().type`, None on a CPU-only torch), so a simulation (fake CPU tensors
standing for CUDA ones) enters `MirrorOffload`: the same pack/unpack decisions, where a host copy is bookkeeping
(its bytes are counted in `host_bytes`, never as GPU memory) and unpack allocates the tensor brought back.
Not modelled: the copy stream's timing (an event completes when the stash drops it) and the backward stash of
brought-back tensors kept until the next node (`bwd_tensor_stash`): a brought-back tensor lives as long as autograd
holds it, as in TRL's single-stream path (`unpack_tensor_single_stream`).
"""

from __future__ import annotations

import weakref
from contextlib import nullcontext

import torch
from torch.autograd.graph import saved_tensors_hooks

MIN_OFFLOAD_SIZE = 1024  # get_act_offloading_ctx_manager's defaults (trl 1.16)
MAX_FWD_STASH_SIZE = 5


def _storage_id(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


class MirrorOffload(saved_tensors_hooks):
    """OffloadActivations' pack/unpack decisions (use_streams as TRL's default) on fake tensors; `host_bytes`
    is what sits in host memory now, `host_peak` its most."""

    def __init__(self, model: torch.nn.Module, use_streams: bool = True, min_offload_size: int = MIN_OFFLOAD_SIZE,
                 max_fwd_stash_size: int = MAX_FWD_STASH_SIZE) -> None:
        self.use_streams = use_streams
        self.min_bytes = min_offload_size
        self.max_stash = max_fwd_stash_size
        self.param_storages = {_storage_id(p) for p in model.parameters()}  # update_model_params
        self.host_bytes = self.host_peak = self.offloaded_bytes = 0
        self._reset()
        super().__init__(self._pack, self._unpack)

    def _reset(self) -> None:
        self.tracker: dict[int, tuple] = {}  # id -> (tensor, False) kept, or (meta, True) on the host
        self.fwd_stash: dict[int, torch.Tensor] = {}
        self.storage_to_id: dict[tuple, tuple] = {}  # key -> (id, weakref to the storage)
        self.tensor_id = 0
        self.first_node = None

    def __enter__(self):
        self._reset()  # OffloadActivations.__enter__ clears the previous step's state
        self.host_bytes = 0
        return super().__enter__()

    def __exit__(self, *args):
        self.fwd_stash.clear()
        return super().__exit__(*args)

    def _keep(self, tid: int, t: torch.Tensor) -> int:
        self.tracker[tid] = (t.detach(), False)
        return tid

    def _pack(self, t: torch.Tensor) -> int:
        self.tensor_id += 1
        tid = self.tensor_id
        # _get_unique_tensor_key: (data_ptr + storage_offset, dtype); a fake tensor has no data_ptr, so the storage,
        # matched only while it is alive (an address a freed storage had is not the same storage)
        storage = t.untyped_storage()
        key = (storage._cdata, t.storage_offset(), t.dtype)
        if self.use_streams and key in self.storage_to_id and self.storage_to_id[key][1]() is storage:
            self.storage_to_id[key] = (tid, weakref.ref(storage))
            return self._keep(tid, t)
        if (t.element_size() * t.nelement() < self.min_bytes or isinstance(t, torch.nn.Parameter)
                or _storage_id(t) in self.param_storages):
            return self._keep(tid, t)
        broadcast = 0 in t.stride()
        if not broadcast and (not t.is_contiguous() or t.storage_offset() != 0):
            t = t.clone(memory_format=torch.contiguous_format) if t.storage_offset() != 0 else t.contiguous()
        if self.use_streams:
            for old in [i for i in self.fwd_stash if i <= tid - self.max_stash]:
                del self.fwd_stash[old]
                self.storage_to_id = {k: v for k, v in self.storage_to_id.items() if v[0] != old}
        nbytes = t.untyped_storage().nbytes() if broadcast else t.element_size() * t.nelement()
        self.tracker[tid] = ((t.shape, t.stride(), t.storage_offset(), t.dtype, nbytes, broadcast), True)
        self.host_bytes += nbytes
        self.offloaded_bytes += nbytes
        self.host_peak = max(self.host_peak, self.host_bytes)
        if self.use_streams:
            self.fwd_stash[tid] = t.detach()
            self.storage_to_id[key] = (tid, weakref.ref(storage))
        return tid

    def _unpack(self, tid: int) -> torch.Tensor:
        node = torch._C._current_autograd_node()
        if self.first_node is None:
            self.first_node = node
        elif node != self.first_node:  # the first backward node's hook emptied the forward stash
            self.fwd_stash.clear()
        value, on_host = self.tracker.pop(tid)
        if not on_host:
            return value
        if tid in self.fwd_stash:
            self.host_bytes -= value[4]
            return self.fwd_stash.pop(tid)
        shape, stride, offset, dtype, nbytes, broadcast = value
        self.host_bytes -= nbytes
        if broadcast:
            flat = torch.empty(nbytes // torch.empty((), dtype=dtype).element_size(), dtype=dtype)
            return torch.as_strided(flat, shape, stride, offset)
        return torch.empty_strided(shape, stride, dtype=dtype)


def _head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The module get_act_offloading_ctx_manager opts out for a Hugging Face model: `lm_head` (after `.module`
    and a PEFT model's `base_model`), else `output`."""
    m = getattr(model, "module", model)
    if hasattr(m, "base_model") and hasattr(m, "peft_config"):
        m = m.base_model
    for name in ("output", "lm_head"):
        head = getattr(m, name, None)
        if isinstance(head, torch.nn.Module):
            return head
    return None


def offload_context(model: torch.nn.Module, enabled: bool, fake: bool):
    """The context the harness enters around each micro-batch's forward + backward: TRL's manager on a real
    accelerator, `MirrorOffload` with the head opted out (TRL's NoOpManager) on fake tensors, else a null one."""
    if not enabled:
        return nullcontext()
    if not fake:
        from trl.models.activation_offloading import get_act_offloading_ctx_manager

        return get_act_offloading_ctx_manager(model=model)
    from trl.models.activation_offloading import NoOpManager

    ctx = MirrorOffload(model)
    head = _head(model)
    if head is not None:
        noop = NoOpManager()
        head.register_forward_pre_hook(lambda *args: noop.__enter__())
        head.register_forward_hook(lambda *args: noop.__exit__(), always_call=True)
    return ctx
