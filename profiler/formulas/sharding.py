"""Per-rank memory under data parallelism: what `components` becomes when the state is split over N ranks.

Called by `components` for `parallel.strategy != none`; the one-process phases it starts from are the
`details["<phase>:<component>"]` of components_estimate. Which bytes divide by N (`train.batch_size` is
per rank, so activations do not):

| strategy | weights | gradients | optimizer | comm_buffers (per phase) |
|---|---|---|---|---|
| ddp | 1 | 1 | 1 | gradient buckets = all gradients (DDP's default `gradient_as_bucket_view=False`) |
| fsdp2 | 1/N | 1/N | 1/N | unsharded root (embeddings, head, final norm) + 1 layer at the loss and the start |
| | | | | of backward, + 3 layers while the last layer's forward runs, + 2 layers, the previous layer's |
| | | | | reduce-scatter input (its trainable numel in reduce dtype) and the head's unsharded gradient in |
| | | | | the last layer's backward; the root twice + layer 0 twice at the start of forward; |
| | | | | the root + the embedding's unsharded gradient at the end of backward |
| zero1 | 1 | 1 | 1/N | reduce bucket |
| zero2 | 1 | 1/N | 1/N | reduce bucket |
| zero3 | 1/N | 1/N | 1/N | reduce bucket + 2 layers gathered (in flight + prefetch) |

FSDP2's layer counts are what its all-gather path holds at the phase peaks in simulate (flat all-gather
output + the per-parameter copy-out of one layer while the previous layer is still unsharded; in backward
the running layer's copy-out, the next layer's prefetched all-gather output and, behind a trainable layer, its
reduce-scatter input (`_fsdp2_layer_reduce`: LoRA's is adapter-sized, so 2 layers, not the 4 of full fine-tuning
that components once assumed for every regime); at the start of forward the root twice, flat output and copy-out, beside
layer 0's; at the end of backward the root and its first parameter's unsharded gradient), checked by
tests/formulas/test_sharding.py against simulate and by the consistency grid (tests/formulas/test_grid.py).
ZeRO (DeepSpeed, bf16/fp16 training): the optimizer holds an fp32 master copy next to the two fp32
Adam moments (12 bytes/param; 8 for fp32 training; Rajbhandari et al. 2020, https://arxiv.org/abs/1910.02054), and
DeepSpeed's default `reduce_bucket_size` is 5e8 elements. Offload moves the offloaded bytes to the host:
they leave the GPU total and appear in `details["host_bytes"]` (per rank).

FSDP2 + QLoRA (4-bit, `regime.quant_storage` a float dtype): the packed weights, 16-bit parameters and adapters
divide by N; bitsandbytes' quant state (absmax, codes) stays whole on every rank; the all-gathered layer is the
packed weights + norms + adapters (`_split_fsdp2`). Under LoRA/QLoRA the root is all-gathered again as backward
begins (2 x root beside every activation, `fsdp2_root_regather`), and a frozen head/embedding has no unsharded
gradient. Checked against simulate on llama-3-8b at world 2 and 8 (tests/formulas/test_sharding.py).
ZeRO-3 + QLoRA (4-bit, packed weights stored as the model's 16-bit dtype, as PEFT's guide runs it): the same split
(DeepSpeed partitions the packed storage like any parameter; the quant state is not a parameter, so whole on
every rank); comm_buffers are 2 gathered 4-bit layers, or the 16-bit head + one layer at the loss and the start
of backward when larger; every rank first holds the whole quantized model (`zero3_qlora_load_bytes`); DeepSpeed's
bf16 cast of the module (zero_cast.py). Checked against bytes counted from the architecture
(tests/formulas/test_zero3_qlora.py) and one real CPU step on tiny-llama (docs/parallel.md); not simulated.

Loading: with FSDP2's meta-device init (`parallel.init` meta, the default for architecture-only models) each
rank materialises only its shards, so the load phase (shards + buffers) is below every step phase and is not
modelled. With `parallel.init: full` (a checkpoint) every rank first builds the whole model: a `load` phase
holding all the weights, which is then the per-rank peak whenever it exceeds the steps'.
"""

from __future__ import annotations

from profiler.config import RunConfig
from profiler.formulas import Estimate, make_estimate
from profiler.formulas.params import DTYPE_BYTES, ParamPlan, four_bit_bytes

PHASES = ("forward", "backward_start", "backward_last_layer", "backward_end", "optimizer_step")  # components' keys
# fsdp2: the moments of a step whose all-gathered bytes differ (components' details keys `<moment>:<component>`)
FSDP2_MOMENTS = ("forward_loss", "forward_last_layer", "backward_start", "backward_last_layer", "backward_end",
                 "optimizer_step")
ZERO_REDUCE_BUCKET = 500_000_000  # DeepSpeed ZeRO default reduce_bucket_size (elements)
ADAM_MASTER_BYTES = 4  # fp32 master weights DeepSpeed keeps for 16-bit training
FSDP2_FORWARD_LAYERS = 3
FSDP2_BACKWARD_LAYERS = 2  # running layer copy-out + prefetched all-gather output (+ _fsdp2_layer_reduce)
ZERO3_LAYERS = 2
FSDP2_ROOT_START, FSDP2_ROOT_START_LAYERS = 2, 2  # forward start: the root twice, layer 0 twice (see shard)


def _split(plan: ParamPlan) -> tuple[int, int, int]:
    """(bytes of the largest decoder layer, bytes outside the layers, bytes of the output head) as stored."""
    arch = plan.arch
    item = plan.param_itemsize
    per_layer: dict[int, int] = {}
    outside = 0
    for p in arch.params:
        if p.layer is None:
            outside += p.numel * item
        else:
            per_layer[p.layer] = per_layer.get(p.layer, 0) + p.numel * item
    head = sum(lin.in_features * lin.out_features for lin in arch.linears if lin.is_head) * item
    return max(per_layer.values(), default=0), outside, head


def _split_fsdp2(plan: ParamPlan, cfg: RunConfig) -> tuple[int, int, int, int, bool, bool]:
    """FSDP2, as its all-gathers hold the parameters: (largest decoder layer, bytes outside the layers, output head,
    bytes every rank keeps whole, head trains, embedding trains). A layer holds its base parameters, its LoRA
    adapters (FSDP2 shards and all-gathers every parameter of the module, trainable or not) and, under qlora 4-bit,
    the packed weights: ceil(n/2) bytes each, in `regime.quant_storage` dtype (bitsandbytes _ops.py quantize_4bit:
    [(n+1)//(2*itemsize), 1]). The quant state (absmax, nested absmax, codes) is not a parameter: bitsandbytes
    keeps it on the layer (Linear4bit.quant_state), whole on every rank, and never all-gathers it. Under
    `parallel.param_dtype` every floating parameter whose dtype differs is all-gathered in it (the packed weights
    too when quant_storage differs, _fsdp_param.py init_dtype_attrs; bnb's PEFT recipe keeps them equal)."""
    arch, rg = plan.arch, cfg.regime
    mp = DTYPE_BYTES[cfg.parallel.param_dtype] if cfg.parallel.param_dtype else None
    base = mp or plan.param_itemsize
    quant = {lin.name + ".weight": lin for lin in arch.linears
             if rg.kind == "qlora" and rg.bits == 4 and not lin.is_head and lin.quantizable}
    trainable = {t.name for t in plan.trainable}
    per_layer: dict[int, int] = {}
    outside = replicated = 0
    for p in arch.params:
        if p.name in quant:
            packed = -(-p.numel // 2)
            nbytes = packed if mp is None or mp == DTYPE_BYTES.get(rg.quant_storage, 1) else packed * mp // (
                DTYPE_BYTES[rg.quant_storage])
            replicated += sum(four_bit_bytes(p.numel, rg.double_quant).values()) - packed
        else:
            nbytes = p.numel * base
        if p.layer is None:
            outside += nbytes
        else:
            per_layer[p.layer] = per_layer.get(p.layer, 0) + nbytes
    layer_of = {lin.name: lin.layer for lin in arch.linears}
    for t in plan.trainable:  # LoRA adapters: `<linear>.lora_A` / `.lora_B`
        owner = t.name.rsplit(".", 1)[0]
        if owner in layer_of and t.name.rsplit(".", 1)[-1].startswith("lora_"):
            nbytes = t.numel * (mp or t.itemsize)
            if layer_of[owner] is None:
                outside += nbytes
            else:
                per_layer[layer_of[owner]] += nbytes
    heads = [lin.name + ".weight" for lin in arch.linears if lin.is_head]
    head = sum(lin.in_features * lin.out_features for lin in arch.linears if lin.is_head) * base
    embed_trains = any(p.layer is None and p.name not in heads and p.name in trainable and p.numel > arch.hidden
                       for p in arch.params)
    return (max(per_layer.values(), default=0), outside, head, replicated, any(h in trainable for h in heads),
            embed_trains)


def shard(cfg: RunConfig, est: Estimate, plan: ParamPlan, overhead) -> Estimate:
    """The one-process estimate `est` as one rank of `cfg.parallel` sees it; `overhead(cfg, allocated)`
    is components' CUDA context + allocator slack."""
    pc = cfg.parallel
    n, s = pc.world_size, pc.strategy
    div = {"weights": 1, "gradients": 1, "optimizer": 1}
    if s in ("fsdp2", "zero3"):
        div = {"weights": n, "gradients": n, "optimizer": n}
    elif s == "zero2":
        div = {"weights": 1, "gradients": n, "optimizer": n}
    elif s == "zero1":
        div = {"weights": 1, "gradients": 1, "optimizer": n}
    layer, outside, head = _split(plan)
    replicated, head_grad, embed_grad = 0, bool(plan.trainable_bytes), bool(plan.trainable_bytes)
    zero3_qlora = s == "zero3" and cfg.regime.kind == "qlora"
    if s == "fsdp2" or zero3_qlora:  # unsharded copies (in param_dtype), the 4-bit quant state kept whole
        layer, outside, head, replicated, head_trains, embed_trains = _split_fsdp2(plan, cfg)
        if cfg.regime.kind in ("lora", "qlora", "freeze"):  # frozen head / embedding: no unsharded gradient
            head_grad, embed_grad = head_trains, embed_trains
    grads = plan.trainable_bytes
    zero_opt = None  # DeepSpeed's optimizer: fp32 Adam moments (+ fp32 master weights for 16-bit training)
    if s.startswith("zero") and cfg.optimizer.name in ("adam", "adamw"):
        zero_opt = (8 + (ADAM_MASTER_BYTES if plan.param_itemsize == 2 else 0)) * plan.trainable_numel
    bucket = min(ZERO_REDUCE_BUCKET, plan.trainable_numel) * plan.param_itemsize
    comm = {
        "ddp": dict.fromkeys(PHASES, grads),
        # fsdp2, per moment: at the loss and the start of backward the root and the last layer (not resharded:
        # backward needs it first); while the last layer runs, 3 layers (forward) / 4 layers and the head's
        # unsharded gradient (backward); at the end the root and its first parameter's (the embedding's,
        # head-sized) unsharded gradient awaiting its reduce-scatter
        "fsdp2": {"forward_loss": outside + layer,
                  "forward_last_layer": outside + FSDP2_FORWARD_LAYERS * layer,
                  "backward_start": outside + layer,
                  "backward_last_layer": outside + FSDP2_BACKWARD_LAYERS * layer + _fsdp2_layer_reduce(cfg, plan)
                  + (head if head_grad else 0),
                  "backward_end": outside + (head if embed_grad else 0),
                  "optimizer_step": 0},
        "zero1": dict.fromkeys(PHASES, bucket),
        "zero2": dict.fromkeys(PHASES, bucket),
        "zero3": {"forward": ZERO3_LAYERS * layer, "backward_start": ZERO3_LAYERS * layer + bucket,
                  "backward_last_layer": ZERO3_LAYERS * layer + bucket, "backward_end": ZERO3_LAYERS * layer + bucket,
                  "optimizer_step": 0},
    }[s]
    if zero3_qlora:  # at the loss and as backward begins the 16-bit head is gathered, beside a 4-bit layer
        for ph in ("forward", "backward_start"):
            comm[ph] = max(comm[ph], head + layer + (bucket if ph != "forward" else 0))
    # an MoE model without checkpointing: the last layer's experts backward (components, backward_experts), the first
    # layer in backward order, so no later layer's reduce-scatter input is alive yet (_fsdp2_layer_reduce)
    experts = "backward_experts:weights" in est.details
    if experts:
        comm["backward_experts"] = {"fsdp2": outside + FSDP2_BACKWARD_LAYERS * layer + (head if head_grad else 0),
                                    "zero3": ZERO3_LAYERS * layer + bucket}.get(s, comm["backward_last_layer"])
    host = 0
    phases: dict[str, dict[str, int]] = {}
    for ph in (*(FSDP2_MOMENTS if s == "fsdp2" else PHASES), *(["backward_experts"] if experts else [])):
        parts = {c: v for c, v in est.details.items() if c.startswith(ph + ":")}
        comps = {k.split(":", 1)[1]: v for k, v in parts.items()}
        for c, d in div.items():
            if c in comps:
                comps[c] = -(-(comps[c] - (replicated if c == "weights" else 0)) // d) + (
                    replicated if c == "weights" else 0)
        if zero_opt is not None and comps.get("optimizer"):
            comps["optimizer"] = -(-zero_opt // div["optimizer"])
        if ph == "optimizer_step":
            comps["temporaries"] = -(-comps.get("temporaries", 0) // div["optimizer"])
        comps["comm_buffers"] = comm[ph]
        off = _offloaded(cfg, comps, replicated)
        host = max(host, sum(off.values()))
        for c, v in off.items():
            comps[c] -= v
        phases[ph] = comps
    if s == "fsdp2":  # the root's all-gather: its flat output stays alive (AllGatherState) until layer 0's
        # all-gather is waited on, beside the root's unsharded parameters and layer 0's flat output + copy-out,
        # before any activation exists; the peak of shallow models whose embeddings and head outweigh a layer
        loss, last = phases.pop("forward_loss"), phases.pop("forward_last_layer")
        phases["forward"] = max(loss, last, key=lambda c: sum(c.values()))
        phases["forward_start"] = {c: loss[c] for c in ("weights", "optimizer") if c in loss} | {
            "comm_buffers": FSDP2_ROOT_START * outside + FSDP2_ROOT_START_LAYERS * layer}
        moments = [phases.pop(k) for k in ("backward_start", "backward_last_layer", "backward_end")]
        if fsdp2_root_regather(cfg):  # the root all-gathered again as backward begins: all activations, no loss
            # gradient yet, the root's flat all-gather output beside its copied-out parameters
            moments.append({c: v for c, v in moments[0].items() if c != "temporaries"}
                           | {"comm_buffers": FSDP2_ROOT_START * outside})
        moments.append(_fsdp2_root_reduce(cfg, plan, moments[2]))  # [2]: backward_end
    else:
        # the last layer's backward too: with s x s attention (math / eager kernels) at long sequences its
        # transients are the step's peak, on every rank as in one process
        moments = [phases.pop(k) for k in ("backward_start", "backward_last_layer", "backward_end")]
    if experts:
        moments.append(phases.pop("backward_experts"))
    phases["backward"] = max(moments, key=lambda c: sum(c.values()))
    if s == "fsdp2" and cfg.parallel_init == "full":  # every rank builds the whole model, then fully_shard splits it
        # (peft makes the adapters in float32, autocast_adapter_dtype; a 16-bit regime.lora.dtype is TRL's cast after)
        lora = cfg.regime.kind in ("lora", "qlora")
        upcast = plan.adapter_numel * (4 - DTYPE_BYTES[cfg.regime.lora.dtype]) if lora else 0
        phases["load"] = {"weights": est.details.get("forward:weights", 0) + upcast}
    if zero3_qlora:
        phases["load"] = {"weights": zero3_qlora_load_bytes(cfg)}
    peak = max(phases, key=lambda k: sum(phases[k].values()))
    out = dict(phases[peak])
    out["overhead"] = overhead(cfg, sum(out.values()))
    details = {f"{ph}:{c}": v for ph, cs in phases.items() for c, v in cs.items()}
    details |= {f"peak_{ph}": sum(cs.values()) for ph, cs in phases.items()}
    details |= {"host_bytes": host, "world_size": n, "unsharded_layer_bytes": layer, "unsharded_root_bytes": outside}
    note = f"{s} x {n}, per rank; peak in {peak}"
    kernel = next((part for part in est.notes.split("; ") if part.startswith("attention kernel")), "")
    if host:
        note += f"; offload: {host / 2**30:.2f} GiB on the host per rank"
    tail = "; ".join(part for part in (kernel, est.notes.rsplit("; ", 1)[-1] if "overhead assumed" in est.notes else "")
                     if part)
    return make_estimate(est.estimator, out, est.source, f"{note}; {tail}" if tail else note, details=details)


def zero3_qlora_load_bytes(cfg: RunConfig) -> int:
    """ZeRO-3 + QLoRA: what each rank holds before `deepspeed.initialize` partitions the model. transformers 5.23
    builds a quantized model without `deepspeed.zero.Init` (modeling_utils.py `get_init_context`: zero.Init only
    when "not is_quantized"; the bitsandbytes quantizer's `update_device_map` puts it whole on the current GPU),
    so every rank loads and quantizes the whole model, then peft adds the adapters (fp32, autocast_adapter_dtype)
    and `prepare_model_for_kbit_training` (when set) its fp32 copies of the unquantized parameters. DeepSpeed then
    casts every float parameter to its bf16/fp16 dtype one at a time (zero_cast.py): the largest unquantized
    parameter's cast copy is alive beside the rest. The whole model as built = `param_plan` without the cast."""
    from profiler.formulas.params import param_plan

    one = cfg.parallel.model_copy(update={"strategy": "none", "world_size": 1})
    built = param_plan(cfg.model_copy(update={"parallel": one}))
    upcast = built.adapter_numel * (4 - DTYPE_BYTES[cfg.regime.lora.dtype])
    cast = DTYPE_BYTES.get(cfg.model.dtype, 4)
    quant = {lin.name + ".weight" for lin in built.arch.linears if not lin.is_head and lin.quantizable}
    copy = max((p.numel * cast for p in built.arch.params if p.name not in quant), default=0) if (
        built.param_itemsize != cast) else 0
    return built.weight_bytes + upcast + copy


def fsdp2_root_regather(cfg: RunConfig) -> bool:
    """Whether the root's parameters are all-gathered again at the start of backward, beside the flat output of
    that all-gather (as at the start of forward: 2 x the root). `fully_shard(model, reshard_after_forward=True)`,
    as profiler.measure.parallel passes it, frees the root after its forward (torch 2.13 _fsdp_state.py
    `_lazy_init` keeps the root unsharded only when reshard_after_forward was left None). Counted for the
    LoRA/QLoRA regimes, where simulate shows it at llama-3-8b (tests/formulas/test_sharding.py); not checked for
    full fine-tuning, where the older moment model (root + 1 layer) stands (known_differences: fsdp2-shallow)."""
    return cfg.parallel.reshard_after_forward and cfg.regime.kind in ("lora", "qlora")


def _fsdp2_layer_grads(cfg: RunConfig, plan: ParamPlan) -> tuple[dict[int, int], int, int, int]:
    """({decoder layer: trainable numel} for the layers whose backward runs, the first such layer, the bytes of a
    gradient element as computed (param_dtype, else as stored), as reduced (reduce_dtype, else as computed)).
    Frozen layers below the first trainable one never run a backward (nothing upstream needs a gradient)."""
    pc = cfg.parallel
    layer_of = {p.name: p.layer for p in plan.arch.params}
    layer_of |= {lin.name: lin.layer for lin in plan.arch.linears}
    per_layer: dict[int, int] = {}
    for t in plan.trainable:
        name = t.name if t.name in layer_of else t.name.rsplit(".", 1)[0]  # an adapter: `<linear>.lora_A`
        layer = layer_of.get(name)
        if layer is not None:
            per_layer[layer] = per_layer.get(layer, 0) + t.numel
    root_trains = any(t.name in layer_of and layer_of[t.name] is None for t in plan.trainable)
    first = 0 if root_trains or not per_layer else min(per_layer)
    grad_item = DTYPE_BYTES[pc.param_dtype] if pc.param_dtype else plan.param_itemsize
    reduce_item = DTYPE_BYTES[pc.reduce_dtype] if pc.reduce_dtype else grad_item
    return per_layer, first, grad_item, reduce_item


def _fsdp2_layer_reduce(cfg: RunConfig, plan: ParamPlan) -> int:
    """The reduce-scatter input a layer's backward leaves alive while the next layer (in backward order) runs: the
    largest decoder layer's trainable numel in `reduce_dtype` (else the dtype its gradients are computed in).

    torch/distributed/fsdp/_fully_shard/_fsdp_param_group.py `post_backward` calls _fsdp_collectives.py
    `foreach_reduce`, which allocates the reduce-scatter input for the layer's *gradients* only (frozen
    parameters have none), and the group keeps it in `_reduce_scatter_state` until the next group's reduce
    waits on it. So while a layer computes its backward (its unsharded parameters, and the previous layer's
    all-gather output, prefetched by `pre_backward` -> `_backward_prefetch`: 2 layers) full fine-tuning also holds
    the layer-sized buffer of the layer after it (3 layers at the peak: simulate at mistral-7b depth 6), LoRA only
    adapters' (2 layers), and a freeze regime one only where two running layers follow each other."""
    per_layer, first, _, reduce_item = _fsdp2_layer_grads(cfg, plan)
    return max((n for j, n in per_layer.items() if j - 1 >= first), default=0) * reduce_item


def _fsdp2_root_reduce(cfg: RunConfig, plan: ParamPlan, end: dict[str, int]) -> dict[str, int]:
    """The last moment of an FSDP2 backward: the root group's (embeddings, final norm, head) post-backward.

    torch/distributed/fsdp/_fully_shard/_fsdp_param_group.py `FSDPParamGroup.post_backward` takes the unsharded
    gradients off the parameters, reshards (frees) the all-gathered root parameters, then calls
    _fsdp_collectives.py `foreach_reduce`, which allocates the reduce-scatter input (every gradient's numel,
    dim-0 padded to the world size) in `reduce_dtype` (`reduce_dtype or grad_dtype`) and copies the gradients
    into it before `unsharded_grads.clear()` drops them. So at the copy-in both are alive: the root's unsharded
    gradients in the dtype the root computed in (`param_dtype`, else the stored dtype) and the reduce-scatter input
    in `reduce_dtype`. With an fp32 model, param_dtype bf16 and reduce_dtype fp32 (torchtitan's policy) that is
    6 bytes per root parameter, above the last layer's backward on models whose embeddings and head outweigh a
    few layers. The layers' gradients are sharded by then; the root's sharded gradients do not exist yet.
    `end`: the backward_end moment (weights, optimizer, gradients of this rank)."""
    pc = cfg.parallel
    root_names = {p.name for p in plan.arch.params if p.layer is None}
    root = sum(t.numel for t in plan.trainable if t.name in root_names)
    if not root:
        return {}
    grad_item = DTYPE_BYTES[pc.param_dtype] if pc.param_dtype else plan.param_itemsize
    reduce_item = DTYPE_BYTES[pc.reduce_dtype] if pc.reduce_dtype else grad_item
    padded = -(-root // pc.world_size) * pc.world_size  # each gradient is dim-0 padded; the total, to within a row
    root_item = next(t.itemsize for t in plan.trainable if t.name in root_names)
    out = {c: v for c, v in end.items() if c in ("weights", "optimizer")}
    out["gradients"] = max(end.get("gradients", 0) - -(-root * root_item // pc.world_size), 0)
    out["comm_buffers"] = root * grad_item + padded * reduce_item
    return out


def _offloaded(cfg: RunConfig, comps: dict[str, int], on_device: int = 0) -> dict[str, int]:
    """Bytes of this phase that CPU offload keeps on the host instead of the GPU; `on_device`: weight bytes that
    are not parameters and stay (the 4-bit quant state: FSDP2's CPUOffloadPolicy moves only the sharded
    parameters, _fsdp_param.py `_init_sharded_param`)."""
    off = cfg.parallel.offload
    out: dict[str, int] = {}
    if off.optimizer:
        out["optimizer"] = comps.get("optimizer", 0)
    if off.params:
        out["weights"] = max(0, comps.get("weights", 0) - on_device)
        if cfg.parallel.strategy == "fsdp2":  # CPUOffloadPolicy: sharded gradients go to the host too
            out["gradients"] = comps.get("gradients", 0)
    return {c: v for c, v in out.items() if c in comps}  # a phase without gradients (forward) has none to move
