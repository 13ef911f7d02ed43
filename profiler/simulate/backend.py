"""The fake-tensor backend: the measured run's harness on fake tensors (`simulate` command in commands/).

No GPU and no weight bytes: the model is built under `FakeTensorMode` (every tensor has shape, dtype and
storage size, no data), so any model size simulates on a laptop CPU; the tensor tracker counts live bytes
by category exactly as it does on a real CPU run. The result line has the run schema with `backend: fake`
and goes to results/simulated/<device>.jsonl (never mixed with measured lines in results/runs/).

What a `device: cuda` config simulates, and how:
- Tensors are fake *CPU* tensors: a CPU-only torch can create fake CUDA tensors, but autograd aborts on
  them (no CUDA device guard), so the run uses CPU fake tensors and picks kernels as CUDA would.
- Attention (`attn_implementation: sdpa`): `F.scaled_dot_product_attention` is replaced, inside the mode
  only, by the kernel torch 2.13's CUDA dispatcher picks on the config's `gpu_arch` (cuDNN first on
  sm90/sm100, else flash > memory-efficient > math) with the tensors that kernel allocates and saves
  (profiler.simulate.cuda_sdpa). The record's `attention_kernel` names the kernel(s) used,
  `attention_kernels` the kernel per layer kind, `sdpa_rules` the architecture and torch version.
- bitsandbytes layers become stand-ins with identical storage and transient buffers (profiler.simulate.fake_bnb).
- Autocast (train.autocast bf16/fp16) casts by CUDA's op lists, not CPU's (profiler.simulate.cuda_autocast);
  SDPA's inputs are cast before its kernel is chosen.
- Masks: only those the real run builds (`packed_sequence_indices`: transformers takes fake tensors for
  tracing and would build a packed-sequence mask with checkpointing; the answer comes from `train.packing`).
- bitsandbytes' 8-bit optimizers run their own step (its registered fake kernel); the one value they read
  off a tensor (the quantization map, built by `.tolist()`) gets a placeholder (`_bnb_dynamic_map`).
Where an op cannot run on fake tensors (data-dependent control flow, `.item()`, ops without a meta
kernel) the run fails with status error naming the op; no number is written for it.

"""

from __future__ import annotations

import sys
import types
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
    UnsupportedOperatorException,
)

from profiler.config import RunConfig, architecture_only
from profiler.measure.batch import packed_rows
from profiler.measure.harness import run
from profiler.measure.loading import (
    DTYPES,
    LoadedModel,
    bnb_config,
    resolve_attn_implementation,
    resolve_hf_config,
)
from profiler.measure.parallel import fake_process_group, rank_summary
from profiler.measure.patches import patched
from profiler.simulate.cuda_autocast import cuda_autocast
from profiler.simulate.cuda_sdpa import DEFAULT_ARCH, SDPA_RULES_TORCH, CudaSdpa, cuda_sdpa_kernel, rules_warning
from profiler.simulate.liger_cuda import liger_cuda_kernels
from profiler.simulate.trl_cuda import trl_cuda_kernels

_HALF = (torch.float16, torch.bfloat16)


class UntraceableOp(RuntimeError):
    """An op that cannot run on fake tensors; the message names it."""


_UNTRACEABLE = {DataDependentOutputException: "its result depends on tensor values",
                DynamicOutputShapeException: "its output shape depends on tensor values",
                UnsupportedOperatorException: "it has no fake/meta kernel"}


class _Mode(FakeTensorMode):
    """FakeTensorMode whose failures name the op (the harness records the message as status error)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        try:
            return super().__torch_dispatch__(func, types, args, kwargs)
        except tuple(_UNTRACEABLE) as exc:
            why = _UNTRACEABLE[type(exc)]
            raise UntraceableOp(f"op {func} cannot run on fake tensors ({why}); this model cannot be "
                                f"simulated, measure it with `python -m profiler run`") from None


def cuda_dropout(input, p: float = 0.5, training: bool = True, inplace: bool = False):
    """F.dropout as a CUDA run executes it: the fused `aten.native_dropout`, which saves a bool mask (one
    byte per element) for backward, where the CPU path multiplies by a noise tensor of the input's dtype."""
    if not training or p == 0.0:
        return input
    return torch.ops.aten.native_dropout(input, p, True)[0]


class CpuSdpa:
    """Pass-through on CPU targets (the fake run dispatches to the CPU kernels already); labels the kernel."""

    def __init__(self, native):
        self.native = native
        self.used: Counter[str] = Counter()

    def __call__(self, query, key, value, *args, **kwargs):
        dense = query.dtype in (*_HALF, torch.float32) and query.shape[-1] == value.shape[-1]
        self.used["flash_cpu" if dense else "math"] += 1
        return self.native(query, key, value, *args, **kwargs)


def packed_sequence_indices(flash: bool = False):
    """transformers.masking_utils.find_packed_sequence_indices as the real run answers it for the harness's
    batches. transformers treats a fake tensor as tracing (utils/import_utils.py `is_tracing`), so under
    FakeTensorMode the function skips its `(packed_sequence_mask[:, -1] == 0).all()` check and returns the
    indices: the model would then build a 4-D mask whatever the batch. Here the same tensors are allocated (diff,
    cumsum, the comparison) and the answer is the real run's, from the layout behind the position ids
    (profiler.measure.batch `packed_rows`, `train.packing`): the indices when some row holds more than one sequence,
    else None. The model's own arange position ids (train.packing none) have no layout: one sequence per row, None.
    `flash` (a flash_attention_2 model simulated on the SDPA stand-in): None always, as flash_attention_mask builds
    no mask from the indices (the varlen kernel reads the position ids instead)."""

    def find_packed_sequence_indices(position_ids: torch.Tensor) -> torch.Tensor | None:
        first_dummy_value = position_ids[:, :1] - 1
        position_diff = torch.diff(position_ids, prepend=first_dummy_value, dim=-1)
        packed_sequence_mask = (position_diff != 1).cumsum(-1)
        unpacked = (packed_sequence_mask[:, -1] == 0).all()  # the real run's check; not read (no values)
        del unpacked
        rows = packed_rows(position_ids)
        if flash or rows is None or all(len(r) == 1 for r in rows):
            return None
        return packed_sequence_mask

    return find_packed_sequence_indices


def _bnb_dynamic_map(native):
    """bitsandbytes.functional.create_dynamic_map with a placeholder value: the table (fp32 [256] for the
    default 8 bits) is built by `.tolist()` of linspace values, which fake tensors cannot give, and its values
    never change what is allocated. The 8-bit optimizers build it once (optim/optimizer.py `fill_qmap`) and
    keep it as qmap1/qmap2; the step itself is bitsandbytes' own op, whose registered fake kernel
    (_ops.py `optimizer_update_8bit_blockwise`) allocates nothing, as the CUDA kernel updates in place."""

    def create_dynamic_map(*args, **kwargs):
        from torch._subclasses.fake_tensor import unset_fake_temporarily

        with unset_fake_temporarily():
            table = native(*args, **kwargs)
        return torch.empty(table.shape, dtype=table.dtype)

    return create_dynamic_map


def _optim_modules() -> list:
    import importlib

    names = ("optimizer", "adam", "adamw", "sgd", "adagrad", "rmsprop", "adamax", "nadam", "radam", "asgd",
             "adadelta", "rprop")
    mods = []
    for n in names:
        try:
            mods.append(importlib.import_module(f"torch.optim.{n}"))
        except ImportError:
            continue
    return [m for m in mods if hasattr(m, "_default_to_fused_or_foreach")]


def _cuda_foreach_default(params, differentiable: bool, use_fused: bool = False) -> tuple[bool, bool]:
    """torch.optim.optimizer._default_to_fused_or_foreach as it answers for CUDA parameters: foreach."""
    if torch.jit.is_scripting() or differentiable:
        return False, False
    return bool(use_fused), not use_fused


def materialize_meta(model: torch.nn.Module, device: str = "cpu") -> None:
    """Give every parameter and buffer still on meta an empty tensor on `device` (fake under FakeTensorMode),
    keeping ties and requires_grad. With the quantized layers already swapped in, the bf16 weights they
    replace are never allocated, as transformers' quantizing loader never holds them all at once."""
    memo: dict[int, torch.Tensor] = {}
    for mod in model.modules():
        for table, wrap in ((mod._parameters, True), (mod._buffers, False)):
            for name, t in list(table.items()):
                if t is None or t.device.type != "meta":
                    continue
                if id(t) not in memo:
                    new = torch.empty_like(t, device=device)
                    memo[id(t)] = torch.nn.Parameter(new, requires_grad=t.requires_grad) if wrap else new
                table[name] = memo[id(t)]


def greedy_generate(model, input_ids: torch.Tensor, max_new_tokens: int, **_: object) -> torch.Tensor:
    """HF `generate` (greedy, no early stop) as a plain decode loop: generate's stopping checks call
    `.item()`, which fake tensors cannot answer. Same tensors as generate: a prefill that keeps only the
    last position's logits (`logits_to_keep=1`), then one token at a time on the growing DynamicCache.
    tests/test_simulate.py checks the tokens and the CPU peak against the real `generate`."""
    out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
    past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    sequence = torch.cat([input_ids, token], dim=-1)
    for _ in range(max_new_tokens - 1):
        out = model(input_ids=token, past_key_values=past, use_cache=True)
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        sequence = torch.cat([sequence, token], dim=-1)
    return sequence


def _forced_router(routing: str):
    """A TopKRouter.forward (transformers 5: returns logits, top-k scores, top-k expert ids) whose assignment is fixed
    instead of read off the logits: balanced gives token t its experts (t*k + j) mod E, so each expert gets
    k*T/E tokens; worst_case gives every token experts 0..k-1. Logits and scores keep the router's autograd path."""

    def forward(self, hidden_states):
        hidden_states = hidden_states.reshape(-1, self.hidden_dim)
        logits = torch.nn.functional.linear(hidden_states, self.weight)
        probs = torch.nn.functional.softmax(logits.float(), dim=-1)
        t = torch.arange(hidden_states.shape[0], device=hidden_states.device)[:, None]
        j = torch.arange(self.top_k, device=hidden_states.device)[None, :]
        idx = (t * self.top_k + j) % self.num_experts if routing == "balanced" else j.expand(t.shape[0], -1)
        scores = probs.gather(-1, idx)
        scores = scores / scores.sum(dim=-1, keepdim=True)
        return logits, scores.to(logits.dtype), idx

    return forward


def force_routing(model: torch.nn.Module, routing: str) -> list[torch.nn.Module]:
    """Make every transformers TopKRouter of `model` route as `moe.routing` says; returns the routers patched.
    Fake runs do (their routers have no values to route by); a real run can too (`forced_routing`), to compare
    with the same run under the model's own routing."""
    routers = [m for m in model.modules() if type(m).__name__.endswith("TopKRouter") and hasattr(m, "top_k")]
    for m in routers:
        m.forward = types.MethodType(_forced_router(routing), m)
    return routers


@contextmanager
def forced_routing(model: torch.nn.Module, routing: str) -> Iterator[int]:
    """`force_routing` inside the block only; yields how many routers it patched."""
    routers = force_routing(model, routing)
    try:
        yield len(routers)
    finally:
        for m in routers:
            del m.forward


class Simulation:
    """The FakeBackend of profiler.measure.harness: fake mode, fake model, the attention kernel a run would pick."""

    def __init__(self, target_device: str, gpu_arch: str = "auto"):
        self.target = target_device
        self.arch = gpu_arch
        self.fake_mode = _Mode(allow_non_fake_inputs=True)
        self.sdpa: CudaSdpa | CpuSdpa | None = None
        self.flash_standin = False  # set by simulate(): a flash_attention_2 model runs on the SDPA stand-in

    @contextmanager
    def mode(self) -> Iterator[None]:
        native = torch.nn.functional.scaled_dot_product_attention
        self.sdpa = CudaSdpa(native, self.arch) if self.target == "cuda" else CpuSdpa(native)
        swap = torch.utils.swap_tensors
        memo = self.fake_mode.fake_tensor_converter.tensor_memo

        def swap_fake(t1, t2):
            # Module.to() swaps fake parameters, which fails while the converter's memo holds weakrefs to
            # them; the memo only caches real->fake conversions, so dropping it is safe.
            memo.clear()
            return swap(t1, t2)

        from transformers import masking_utils

        patches: list[tuple[object, str, object]] = [
            (torch.nn.functional, "scaled_dot_product_attention", self.sdpa),
            (torch.utils, "swap_tensors", swap_fake),
            (masking_utils, "find_packed_sequence_indices", packed_sequence_indices(self.flash_standin)),
        ]
        bnb_functional = sys.modules.get("bitsandbytes.functional")  # imported before the mode when used
        if bnb_functional is not None:
            patches.append((bnb_functional, "create_dynamic_map", _bnb_dynamic_map(bnb_functional.create_dynamic_map)))
            import peft

            from profiler.simulate.fake_bnb import prepare_kbit_sparing_standins

            # bnb_4bit_quant_storage bf16/fp16: peft spares Params4bit from its fp32 upcast by class name
            patches.append((peft, "prepare_model_for_kbit_training",
                            prepare_kbit_sparing_standins(peft.prepare_model_for_kbit_training)))
        if self.target == "cuda":  # torch.optim picks foreach kernels for CUDA params (not for fake ones)
            patches += [(m, "_default_to_fused_or_foreach", _cuda_foreach_default) for m in _optim_modules()]
            patches.append((torch.nn.functional, "dropout", cuda_dropout))
        with (patched(patches), self.fake_mode, cuda_autocast() if self.target == "cuda" else nullcontext(),
              trl_cuda_kernels(self.target == "cuda"),  # train.loss chunked: TRL's CUDA path
              liger_cuda_kernels(self.target == "cuda")):  # train.loss liger: its Triton kernel allocates nothing
            yield

    def load_model(self, cfg: RunConfig) -> LoadedModel:
        from transformers import AutoModelForCausalLM

        mc = cfg.model
        hf_config = resolve_hf_config(mc)
        impl = resolve_attn_implementation(mc, hf_config)
        attn = "sdpa" if impl == "flash_attention_2" else impl
        quant = bnb_config(cfg)
        # quantized: build on meta, swap in the stand-ins, then materialise the rest, so the load peak is the
        # quantized weights (transformers quantizes tensor by tensor while loading), not a bf16 model
        # (unquantized too: materialising skips the init kernels, which cost time and change no byte)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config, dtype=DTYPES[mc.dtype],
                                                     attn_implementation=attn)
        if quant is not None:
            from profiler.simulate.fake_bnb import replace_linear_layers

            replace_linear_layers(model, quant, cuda=self.target == "cuda", device="cpu")
            if cfg.regime.quantize_experts:  # axolotl's quantize_moe_experts (fake_bnb.replace_expert_params)
                from profiler.simulate.fake_bnb import replace_expert_params

                replace_expert_params(model, quant, device="cpu")
        if cfg.parallel_init == "meta":  # stays on meta: fully_shard, then each rank materialises its shards
            return self._finish(model, cfg, hf_config)
        materialize_meta(model, "cpu")
        head, embed = model.get_output_embeddings(), model.get_input_embeddings()
        if quant is None and architecture_only(mc) and head is not None and head.weight is embed.weight:
            # a real from_config build allocates the head untied, then ties it: one transient head weight
            del_me = torch.empty_like(head.weight)
            del del_me
        return self._finish(model, cfg, hf_config)

    def _finish(self, model, cfg: RunConfig, hf_config) -> LoadedModel:
        force_routing(model, cfg.moe.routing)  # MoE: the routing assumption stands in for the router's values
        model.generate = types.MethodType(greedy_generate, model)
        return LoadedModel(model, hf_config, f"fake:{cfg.model.name}")

    def attention_kernel(self, cfg: RunConfig, loaded: LoadedModel) -> str:
        """Before the run: the prediction from the config (the record gets the kernels actually used)."""
        impl = resolve_attn_implementation(cfg.model, loaded.hf_config)
        if impl != "sdpa":
            return impl
        if self.target != "cuda":
            return "flash_cpu"
        text = loaded.hf_config.get_text_config()
        heads = getattr(text, "num_attention_heads", 1)
        d = getattr(text, "head_dim", None) or text.hidden_size // heads
        autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}
        dtype = autocast.get(cfg.train.autocast, DTYPES[cfg.model.dtype])
        with torch.device("meta"):
            q = torch.empty((1, 1, 2, d), dtype=dtype)
        return cuda_sdpa_kernel(q, q, q, None, True, arch=self.arch, requires_grad=cfg.regime.kind != "inference")

    def kernels_used(self) -> str | None:
        if self.sdpa is None or not self.sdpa.used:
            return None
        return "+".join(k for k, _ in self.sdpa.used.most_common())


def simulate(cfg: RunConfig, on_step=None, *, primed: bool = False, recorder=None) -> dict:
    """Run `cfg` on fake tensors through profiler.measure.harness.run; returns the RunRecord dict (backend fake).

    `primed` (for searches that simulate many configs, e.g. `fit`): the warm-up forward and backward are
    skipped where that keeps every peak (profiler.measure.harness.primable); the record then has
    `primed_optimizer: true` and no warm-up forward/backward phases. About 40 % faster.
    `recorder` (optional, profiler.measure.harness.PhaseRecorder): e.g. profiler.timing's FLOP/byte counter;
    without it the run is unchanged."""
    target = cfg.device
    sim = Simulation(target, cfg.gpu_arch)
    impl = resolve_attn_implementation(cfg.model, resolve_hf_config(cfg.model))
    sim.flash_standin = impl == "flash_attention_2"  # its packed batches get no mask (flash_attention_mask)
    # The harness places the batch and autocast on cfg.device; fake tensors here are CPU tensors.
    # A fake step is deterministic: after the first measured step, more steps repeat it exactly.
    train = cfg.train.model_copy(update={"steps": 1})
    run_cfg = cfg.model_copy(update={"device": "cpu", "train": train})
    pc = cfg.parallel
    if pc.strategy.startswith("zero"):
        return _not_simulated(cfg, f"DeepSpeed {pc.strategy} cannot run on fake tensors; its per-rank memory "
                              "is predicted by `python -m profiler estimate` (components, deepspeed_zero)")
    if pc.offload.params or pc.offload.optimizer:
        return _not_simulated(cfg, "CPU offload is not simulated (fake tensors have one device); its per-rank "
                              "memory is predicted by `python -m profiler estimate`")
    with fake_process_group(pc.world_size) if pc.strategy != "none" else nullcontext():
        record = run(run_cfg, fake=sim, on_step=on_step, prime_optimizer=primed, replay_allocator=target == "cuda",
                     recorder=recorder)
    if pc.strategy != "none":  # rank 0 of world_size symmetric ranks
        record["ranks"] = [rank_summary(record)]
        record["max_rank_peak_allocated_bytes"] = record["ranks"][0]["peak_allocated_bytes"]
    record["simulated_steps"] = cfg.train.warmup_steps + 1
    record["config"] = cfg.model_dump(mode="json")
    record["config_hash"] = cfg.config_hash()
    if impl == "flash_attention_2":
        record["attention_kernel"] = "flash_attention_2"
    elif impl == "sdpa":
        record["attention_kernel"] = sim.kernels_used() or record.get("attention_kernel")
        if target == "cuda":
            if isinstance(sim.sdpa, CudaSdpa) and sim.sdpa.by_kind:
                record["attention_kernels"] = sim.sdpa.kernels_by_kind()
            arch = cfg.gpu_arch if cfg.gpu_arch != "auto" else DEFAULT_ARCH
            record["sdpa_rules"] = {"gpu_arch": arch, "torch": SDPA_RULES_TORCH,
                                    "assumed": cfg.gpu_arch == "auto"}
            if (warn := rules_warning()) is not None:
                record.setdefault("warnings", []).append(warn)
    record["simulated_device"] = target
    return record


def _not_simulated(cfg: RunConfig, why: str) -> dict:
    """A line with status error saying why this config has no simulation (nothing else is filled in)."""
    import uuid
    from datetime import UTC, datetime

    from profiler.measure.env import collect_env

    return {"run_id": uuid.uuid4().hex, "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "config_hash": cfg.config_hash(), "config": cfg.model_dump(mode="json"), "status": "error",
            "error": f"NotSimulated: {why}", "backend": "fake", "env": collect_env("cpu"),
            "simulated_device": cfg.device}
