"""The dry-run inside the user's script: fake models from config.json, real data, placeholders, stop after N steps.

`install()` runs from the child's sitecustomize (profiler/dryrun/bootstrap) before the script. The patches,
each undone by nothing (the process ends when the dry-run has its steps):

| patched                                                  | why                                                    |
|----------------------------------------------------------|--------------------------------------------------------|
| `PreTrainedModel._from_config`                            | every model build (from_config, and from_pretrained  |
|                                                          | below) happens on meta, bitsandbytes stand-ins are    |
|                                                          | swapped in (profiler.simulate.fake_bnb), the rest is   |
|                                                          | materialised as fake tensors (no weight bytes)        |
| `PreTrainedModel.from_pretrained`, `_BaseAutoModelClass.` | reads config.json only (local file/dir, HF cache,      |
| `from_pretrained`                                        | bundled name); never weights; `device_map` is ignored  |
|                                                          | (one simulated device); no config: one line, exit 2    |
| `_BaseDataLoaderIter.__next__`                            | the data pipeline runs on real tensors (the sampler's |
|                                                          | `randperm().tolist()`, the collator's padding), so the |
|                                                          | batches have the lengths the real run has              |
| `Tensor.item` / `__int__` / `__index__` (fake tensors,    | `.item()` in the script gets a placeholder that logs  |
| called from the script's own files)                      | and compares; turned into an int (a size, an index)   |
|                                                          | it would change what is allocated: one line, exit 2   |
| `aten._local_scalar_dense` in the fake mode               | library `.item()`/`bool()` (loss logging, Adam's step |
|                                                          | count, grad-norm): 1 (0 would divide by zero in Adam's |
|                                                          | bias correction; FACTS.md "Checked for the dry-run")  |
| `.to("cuda")`, `.cuda()`, `device="cuda"`, `.pin_memory()` | the simulated device: fake tensors are CPU tensors |
| TorchFunctionMode, `_CudaIsTheSimulatedDevice`)      | (autograd aborts on fake CUDA tensors in a CPU torch)  |
| `torch.cuda.*`, `torch.autocast("cuda")` (CUDA target) | answered as the GPU of --gpu (profiler.dryrun.cuda),  |
|                                                          | memory figures from the tracker (`_allocated`/`_peak`) |
| `Trainer.__init__`                                       | the same MemoryProfilerCallback as `trace` (so phases  |
|                                                          | match a traced real run); stops after N steps         |
| `register_optimizer_step_post_hook` (global)             | loops without a Trainer: a tracker opened at the first |
|                                                          | forward, the optimizer attached at its first step     |

The result (the tracker's record plus `dryrun` facts: sequence lengths, attention kernels) goes as JSON to
LLM_MEMPROF_DRYRUN_RESULT; the parent (profiler/dryrun/run.py) adds the verdict and writes the line.
A stop for a reason (a placeholder used as a size, no config) writes {"error": ...} there and exits 2.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import torch

_STATE: dict = {"sim": None, "mode_cm": None, "seq_lens": [], "models": [], "tracker": None, "steps": 0,
                "trainer": False, "quant": None}
_SITE = ("site-packages", "dist-packages", os.path.dirname(os.__file__))


def _env(name: str, default: str = "") -> str:
    return os.environ.get(f"LLM_MEMPROF_DRYRUN_{name}", default)


def _script_dir() -> str:
    return os.path.dirname(os.path.abspath(_env("SCRIPT") or sys.argv[0]))


def user_frame(stack=None) -> str | None:
    """file:line of the innermost frame in the script's own files (its folder, not a library), or None."""
    here = _script_dir()
    for fs in reversed(stack if stack is not None else traceback.extract_stack()[:-1]):
        f = os.path.abspath(fs.filename)
        if f.startswith(here + os.sep) and not any(s in f for s in _SITE) and "/profiler/" not in f:
            rel = os.path.relpath(f)
            return f"{f if rel.startswith('..') else rel}:{fs.lineno}"
    return None


def _finish(payload: dict, code: int) -> None:
    """Write the result JSON for the parent and end the process now, wherever the script is."""
    tmp = _env("RESULT") + ".part"
    with open(tmp, "w") as f:
        json.dump(payload, f, default=str)
    os.replace(tmp, _env("RESULT"))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def stop(message: str) -> None:
    """One line for the user (the parent prints it), exit 2."""
    _finish({"error": message}, 2)


class Placeholder(float):
    """What `.item()` on a fake value returns in the script: logs, formats and compares like the number 1;
    used as an int (a size, an index, a count: `int()`, `range()`, slicing) it stops the dry-run, since the
    real value would decide how much is allocated."""

    where: str = "?"

    def __new__(cls, value: float, where: str):
        obj = super().__new__(cls, value)
        obj.where = where
        return obj

    def _stop(self, *_):
        use = user_frame() or "?"
        stop(f"{use}: a value read with .item() at {self.where} is used as an int (a size, an index or a count); "
             f"fake tensors have no values, so the dry-run cannot know what the real run allocates there; "
             f"keep .item() for logging, or measure this script on a GPU with `llm-memprof trace --`")

    __index__ = __int__ = __trunc__ = _stop


def _item(native):
    def item(self):
        from torch._subclasses.fake_tensor import FakeTensor

        if isinstance(self, FakeTensor):
            where = user_frame()
            if where is not None:
                return Placeholder(1.0, where)
        return native(self)

    return item


def _index(native, name: str):
    def convert(self):
        from torch._subclasses.fake_tensor import FakeTensor

        if isinstance(self, FakeTensor) and (where := user_frame()) is not None:
            stop(f"{where}: {name}() of a tensor computed on the model's outputs is used as an int (a size, an index "
                 f"or a count); fake tensors have no values, so the dry-run cannot know what the real run "
                 f"allocates there; measure this script on a GPU with `llm-memprof trace --`")
        return native(self)

    return convert


def _enter_mode() -> None:
    if _STATE["mode_cm"] is not None:
        return
    from profiler.simulate.backend import Simulation, _Mode

    class _DryMode(_Mode):
        """The simulation's fake mode with a placeholder for library `.item()` / `bool()`."""

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                t = args[0]
                return True if t.dtype == torch.bool else (1 if not t.is_floating_point() else 1.0)
            return super().__torch_dispatch__(func, types, args, kwargs)

    sim = Simulation(_env("TARGET", "cuda"), _env("ARCH", "auto"))
    sim.fake_mode = _DryMode(allow_non_fake_inputs=True)
    cm = sim.mode()  # SDPA kernel per GPU arch, CUDA autocast op lists, foreach optimizers (profiler.simulate)
    cm.__enter__()
    _STATE.update(sim=sim, mode_cm=cm)
    from transformers import masking_utils

    # the mode answers from the harness's batch layout (train.packing); the script's batches carry real position ids
    masking_utils.find_packed_sequence_indices = _STATE["packed"]


def _resolve_config(name, kwargs: dict):
    """The HF config for from_pretrained's first argument: config.json only, never weights."""
    from transformers import AutoConfig

    from profiler.config import ConfigError
    from profiler.model_source import resolve_model

    if kwargs.get("config") is not None and not isinstance(kwargs["config"], str):
        return kwargs.pop("config")
    kwargs.pop("config", None)
    try:
        src = resolve_model(str(name))
    except ConfigError as exc:
        stop(f"{user_frame() or 'from_pretrained'}: {exc}")
    arch = src.arch
    path = arch if arch.endswith(".json") else None
    if path is None:
        from profiler.hf_config import MODELS_DIR

        path = str(MODELS_DIR / f"{arch}.json")
    try:
        return AutoConfig.from_pretrained(path)
    except Exception as exc:  # transformers' words for a bad config
        stop(f"{user_frame() or 'from_pretrained'}: cannot read a model config from {path!r} ({exc})")


_LOAD_ONLY = ("device_map", "low_cpu_mem_usage", "trust_remote_code", "revision", "cache_dir", "token",
              "local_files_only", "use_safetensors", "max_memory", "offload_folder", "offload_state_dict",
              "force_download", "subfolder", "variant", "weights_only", "key_mapping", "tp_plan", "use_kernels")


def _from_pretrained_kwargs(kwargs: dict) -> dict:
    for k in _LOAD_ONLY:
        kwargs.pop(k, None)
    _STATE["quant"] = kwargs.pop("quantization_config", None)
    dtype = kwargs.pop("dtype", kwargs.pop("torch_dtype", None))
    out = {k: kwargs.pop(k) for k in ("attn_implementation",) if k in kwargs}
    if dtype is not None:
        out["dtype"] = dtype
    return out


def _patch_transformers() -> None:
    from transformers.modeling_utils import PreTrainedModel
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

    native_from_config = PreTrainedModel._from_config.__func__

    def _from_config(cls, config, **kwargs):
        _enter_mode()
        if kwargs.get("dtype") == "auto" or kwargs.get("torch_dtype") == "auto":
            kwargs.pop("torch_dtype", None)
            kwargs["dtype"] = config.dtype or torch.float32
        with torch.device("meta"):
            model = native_from_config(cls, config, **kwargs)
        quant, _STATE["quant"] = _STATE["quant"], None
        if quant is not None:
            from profiler.simulate.backend import materialize_meta
            from profiler.simulate.fake_bnb import replace_linear_layers

            replace_linear_layers(model, quant, cuda=_env("TARGET", "cuda") == "cuda", device="cpu")
            model.is_quantized = True
            model.is_loaded_in_4bit = bool(getattr(quant, "load_in_4bit", False))
            model.is_loaded_in_8bit = bool(getattr(quant, "load_in_8bit", False))
            model.config.quantization_config = quant
            from transformers.quantizers.auto import AutoHfQuantizer

            # what Trainer/peft/TRL ask of a quantized model (trainer_utils.validate_quantization_for_training:
            # `hf_quantizer.is_trainable`); the quantizer itself never loads anything here
            model.hf_quantizer = AutoHfQuantizer.from_config(quant)
            # Trainer does not move a bitsandbytes model (trainer.py: `quantization_method != BITS_AND_BYTES`);
            # a move would swap the packed weights for plain tensors
            model.quantization_method = quant.quant_method
            # a bitsandbytes load always has a device map; with it accelerate's prepare_model leaves the model
            # where it is (accelerator.py prepare_model) instead of `.to(device)`
            model.hf_device_map = {"": "cuda:0" if _env("TARGET", "cuda") == "cuda" else "cpu"}
        from profiler.simulate.backend import materialize_meta

        materialize_meta(model, "cpu")
        model.register_forward_pre_hook(_on_forward, with_kwargs=True)
        _STATE["models"].append(model)
        return model

    def from_pretrained(cls, name, *model_args, **kwargs):
        config = _resolve_config(name, kwargs)
        built = _from_pretrained_kwargs(kwargs)
        if issubclass(cls, _BaseAutoModelClass):
            model = cls.from_config(config, **built)
        else:
            model = cls._from_config(config, **built)
        model.eval()  # as from_pretrained returns it
        return model

    PreTrainedModel._from_config = classmethod(_from_config)
    PreTrainedModel.from_pretrained = classmethod(from_pretrained)
    _BaseAutoModelClass.from_pretrained = classmethod(from_pretrained)

    import transformers.trainer as trainer_mod

    native_init = trainer_mod.Trainer.__init__

    def __init__(self, *args, **kwargs):
        native_init(self, *args, **kwargs)
        from profiler.integrations.trainer import profile_trainer

        _STATE["trainer"] = True
        cb = profile_trainer(self, steps=int(_env("STEPS", "3")), mode="breakdown", output=None, picture=False,
                             summary=False, warmup_steps=int(_env("WARMUP", "1")))
        cb._finish = lambda state: _done(cb.tracker.stop())
        _STATE["callback"] = cb
        cb.output = _env("RESULT") + ".track.jsonl"  # not output_dir (the parent writes the line)

    trainer_mod.Trainer.__init__ = __init__


def _on_forward(module, args, kwargs) -> None:
    tr = _STATE["tracker"]
    if getattr(tr, "_bw_depth", 0) == 0:
        mask = kwargs.get("attention_mask")
        _STATE["attention_mask"] = real_of(mask) if isinstance(mask, torch.Tensor) else None
    if torch.is_grad_enabled() or not module.training:
        ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
        if isinstance(ids, torch.Tensor) and ids.dim() >= 2 and getattr(tr, "_bw_depth", 0) == 0:
            _STATE["seq_lens"].append(list(ids.shape))
    if tr is None and not _STATE["trainer"]:
        from profiler.measure.track import Tracker

        tr = Tracker(module, None, mode="breakdown", warmup_steps=int(_env("WARMUP", "1")))
        _STATE["tracker"] = tr
        tr.start()
        tr._on_forward(module, args, kwargs)


def _step_pre(optimizer, args, kwargs) -> None:
    tr = _STATE["tracker"]
    if tr is None or _STATE["trainer"] or tr.optimizer is not None:
        return
    from profiler.measure.track import unwrap_optimizer

    tr.optimizer = unwrap_optimizer(optimizer)
    tr.tracker.attach(None, tr.optimizer)
    # instance hooks run after the global ones (torch/optim/optimizer.py `profile_hook_step`): these
    # already fire for this first step
    tr._handles.append(tr.optimizer.register_step_pre_hook(tr._on_step_pre))
    tr._handles.append(tr.optimizer.register_step_post_hook(tr._on_step_post))


def _step_post(optimizer, args, kwargs) -> None:
    _STATE["steps"] += 1
    tr = _STATE["tracker"]
    if tr is not None and not _STATE["trainer"] and _STATE["steps"] >= int(_env("STEPS", "3")):
        # the step's phase lasts to the next forward in `track`; here the run ends after the step itself
        _done(tr.stop())


def _done(record: dict) -> None:
    sim = _STATE["sim"]
    record["dryrun"] = {"seq_lens": _STATE["seq_lens"], "optimizer_steps": _STATE["steps"],
                        "attention_kernels": dict(sim.sdpa.used) if sim is not None and sim.sdpa else {},
                        "script": _env("SCRIPT")}
    if (cuda := _STATE.get("cuda")) is not None:  # what the script and its libraries asked of torch.cuda
        record["dryrun"]["cuda"] = {"device_name": cuda.name, "asked": dict(sorted(cuda.asked.items())),
                                    "autocast": dict(cuda.autocast)}
    _finish({"record": record}, 0)


_REAL: dict = {}  # id(fake batch tensor) -> (weakref to it, the real tensor it copies)


def real_of(t: torch.Tensor) -> torch.Tensor | None:
    """The real batch tensor a fake batch tensor stands for (its values), or None."""
    hit = _REAL.get(id(t))
    return hit[1] if hit is not None and hit[0]() is t else None


def _fake_copy(t: torch.Tensor) -> torch.Tensor:
    import weakref

    # a fresh fake tensor of the same size and layout, made by an op with no tensor input: the tracker sees
    # it allocated now, as it sees the collator's output in a real run (an op on the real tensor would show
    # it the real storage too; the converter's copy would be counted only from its first use)
    fake = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, requires_grad=t.requires_grad)
    key = id(fake)
    _REAL[key] = (weakref.ref(fake, lambda _: _REAL.pop(key, None)), t)
    return fake


def _to_fake(obj):
    from collections.abc import Mapping

    if isinstance(obj, torch.Tensor):
        return _fake_copy(obj)
    if isinstance(obj, Mapping):
        return type(obj)({k: _to_fake(v) for k, v in obj.items()})
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_to_fake(v) for v in obj)
    return obj


def _unfake_next(native):
    """The data pipeline on real tensors with no mode at all (neither fake nor tracker: its tensors are not
    the device's), then each batch tensor becomes one fake tensor of its size (the one storage the real
    batch has on the device), its real values kept aside for the answers that need them."""

    def __next__(self):
        from torch.utils._python_dispatch import _disable_current_modes

        if _STATE["mode_cm"] is None:
            return native(self)
        with _disable_current_modes():
            batch = native(self)
        return _to_fake(batch)

    return __next__


def _packed_indices(native):
    """transformers.masking_utils.find_packed_sequence_indices as the real run answers it: transformers takes
    a fake tensor for tracing (utils/import_utils.py `is_tracing`) and skips its `(mask[:, -1] == 0).all()`
    check, building a 4-D mask the real run does not build. The same tensors are allocated; the answer comes
    from the real position_ids of the batch (the data pipeline is real) or, for the model's own arange
    (a fake tensor: one sequence per row), is None as in the real run."""

    def find_packed_sequence_indices(position_ids):
        from torch._subclasses.fake_tensor import FakeTensor
        from torch.utils._python_dispatch import _disable_current_modes

        first_dummy_value = position_ids[:, :1] - 1
        position_diff = torch.diff(position_ids, prepend=first_dummy_value, dim=-1)
        packed_sequence_mask = (position_diff != 1).cumsum(-1)
        real_ids = position_ids if not isinstance(position_ids, FakeTensor) else real_of(position_ids)
        if real_ids is None:  # the model's own arange: one sequence per row
            return None
        with _disable_current_modes():  # neither fake nor counted: the real batch is not the device's
            real = native(real_ids)
        return None if real is None else packed_sequence_mask

    return find_packed_sequence_indices


def _not_tracing(native):
    """masking_utils.is_tracing as the real run answers it: transformers counts a fake tensor as tracing
    (utils/import_utils.py `is_tracing`) and then never skips the causal mask (masking_utils
    `_ignore_causal_mask_sdpa`); in the dry-run a fake tensor stands for a real one."""

    def is_tracing(tensor=None):
        from torch._subclasses.fake_tensor import FakeTensor

        return native(None if isinstance(tensor, FakeTensor) else tensor)

    return is_tracing


def _fast_all(native):
    """masking_utils.fast_all on a fake padding mask: the same ops, the answer from the real attention_mask
    of the batch in the model's forward (cut to the mask's length); the placeholder (True) without one."""

    def fast_all(tensor):
        from torch._subclasses.fake_tensor import FakeTensor

        out = native(tensor)
        real = _STATE.get("attention_mask")
        if isinstance(tensor, FakeTensor) and real is not None and real.dim() == 2:
            from torch.utils._python_dispatch import _disable_current_modes

            with _disable_current_modes():  # neither fake nor counted: the real batch is not the device's
                return bool(real[:, : tensor.shape[-1]].bool().all())
        return out

    return fast_all


def _is_cuda(device) -> bool:
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, torch.device) and device.type == "cuda"


class _CudaIsTheSimulatedDevice(torch.overrides.TorchFunctionMode):
    """`.to("cuda")`, `.cuda()` and `device="cuda"` in the script land on the simulated device (the fake
    tensors are CPU tensors: a CPU torch can make fake CUDA tensors, but autograd aborts on them)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda or func is torch.Tensor.pin_memory:  # pinned host memory: not the GPU's
            return args[0]
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        if func is torch.Tensor.to and any(_is_cuda(a) for a in args[1:]):
            args = tuple("cpu" if i and _is_cuda(a) else a for i, a in enumerate(args))
        return func(*args, **kwargs)


def install() -> None:
    """Every patch of the table in this module's docstring."""
    from torch.utils.data import dataloader

    it = dataloader._BaseDataLoaderIter
    it.__next__ = _unfake_next(it.__next__)
    torch.Tensor.item = _item(torch.Tensor.item)
    torch.Tensor.__int__ = _index(torch.Tensor.__int__, "int")
    torch.Tensor.__index__ = _index(torch.Tensor.__index__, "index")
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    register_optimizer_step_pre_hook(_step_pre)
    register_optimizer_step_post_hook(_step_post)
    _patch_transformers()
    from transformers import masking_utils

    _STATE["packed"] = _packed_indices(masking_utils.find_packed_sequence_indices)
    masking_utils.find_packed_sequence_indices = _STATE["packed"]
    masking_utils.is_tracing = _not_tracing(masking_utils.is_tracing)
    masking_utils.fast_all = _fast_all(masking_utils.fast_all)
    _STATE["cuda_mode"] = _CudaIsTheSimulatedDevice()
    _STATE["cuda_mode"].__enter__()
    if _env("TARGET", "cuda") == "cuda":
        _answer_cuda()


def _tensor_tracker():
    """The TensorTracker counting now (the loop's Tracker or the Trainer callback's), or None before it opens."""
    tr = _STATE["tracker"] or getattr(_STATE.get("callback"), "tracker", None)
    return getattr(tr, "tracker", None)


def _weight_bytes() -> int:
    """Bytes of the built models' fake parameters and buffers (each storage once)."""
    seen: dict[int, int] = {}
    for model in _STATE["models"]:
        for t in [*model.parameters(), *model.buffers()]:
            st = t.untyped_storage()
            seen[id(st)] = st.nbytes()
    return sum(seen.values())


def _allocated() -> int:
    tt = _tensor_tracker()
    return tt.live_bytes if tt is not None else _weight_bytes()


def _peak() -> int:
    tt = _tensor_tracker()
    return tt.peak_bytes if tt is not None else _weight_bytes()


def _reset_peak() -> None:
    tt = _tensor_tracker()
    if tt is not None:  # torch.cuda.reset_peak_memory_stats: the peak starts again from what is live
        tt._peak = tt.live_bytes


def _answer_cuda() -> None:
    """torch.cuda as the GPU of --gpu (profiler.dryrun.cuda); the patches stay for the life of the process."""
    from profiler.dryrun.cuda import Memory, SimulatedCuda
    from profiler.predict.gpus import gpu_by_name

    gpu = gpu_by_name(_env("GPU")) if _env("GPU") else None
    _STATE["cuda"] = cuda = SimulatedCuda(gpu, Memory(_allocated, _peak, _reset_peak), stop)
    for obj, name, value in cuda.patches():
        setattr(obj, name, value)
