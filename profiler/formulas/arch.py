"""Architecture facts for estimators, read off a meta-device instance of the real HF model.

No hand-typed sizes: every parameter count comes from `AutoModelForCausalLM.from_config` built on the
`meta` device (no memory, no weights, seconds even for 70B), so tied embeddings, biases, GQA projections
and norms are counted exactly as transformers builds them. What a layer's norms and MLP activation save for
backward is measured the same way: each is run once on meta tensors (`probe_saved`), so a new norm class or
activation needs no hand-typed term.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from profiler.config import ConfigError, RunConfig


@dataclass(frozen=True)
class Linear:
    """One matmul weight (nn.Linear or GPT-2's Conv1D)."""

    name: str
    in_features: int
    out_features: int
    has_bias: bool
    layer: int | None  # decoder-layer index, None outside the repeated blocks
    is_head: bool  # the output projection (lm_head); never quantized, never a LoRA target
    # transformers' replace_with_bnb_linear converts `type(m) is nn.Linear` or Conv1D only: a subclass
    # (Falcon's FalconLinear) stays in the model dtype under QLoRA
    quantizable: bool = True


@dataclass(frozen=True)
class Param:
    name: str
    numel: int
    layer: int | None
    owner: str  # qualified name of the owning module
    ndim: int = 2  # fused MoE experts are 3-D (regime.quantize_experts picks them by this and their name)


@dataclass(frozen=True)
class Block:
    """How one decoder layer is built, read off the meta-device model's first layer (module types and
    names) and, for what modules cannot show (data flow, attention scores), off the HF config."""

    norm_type: str  # class name of the layer's norms, e.g. LlamaRMSNorm, Gemma2RMSNorm, LayerNorm
    norms: int  # norms on the residual stream per layer (2 pre-norms; 4 with Gemma's post-norms)
    qk_norm: bool  # per-head RMSNorm on q and k (Qwen3, Gemma-3, OLMo-2)
    activation: str  # class name of the MLP activation, e.g. SiLUActivation, GELUTanh
    dropout: float  # the largest Dropout p in the model (GPT-2: 0.1)
    learned_positions: bool  # a second embedding table (GPT-2's wpe)
    parallel: bool  # attention and MLP read the same input (Falcon parallel_attn, NeoX parallel residual)
    softcap: bool  # tanh soft-capping of attention scores or logits (Gemma-2)
    sliding_window: int | None  # sliding-window attention (Mistral, Gemma)
    # --- what the activation model (activations.py) needs, read off the same layer and config
    pre_norms: int = 2  # norms before attention / MLP (0: OLMo-2; 1: Falcon-7B's one norm feeds both)
    post_norms: int = 0  # norms on the attention and MLP outputs (Gemma-2/3 sandwich, OLMo-2)
    norm_cost: tuple = ()  # SavedCost rows of one block norm, measured on meta tensors (probe_saved)
    qk_norm_cost: tuple = ()  # the same for q_norm (k_norm is alike), per normalized row
    qk_norm_width: int = 0  # q_norm's width: head_dim (per head: Qwen3, Gemma-3) or q width (OLMo-2)
    act_cost: tuple = ()  # (a, bytes saved per input element) of the MLP activation (gelu_new: 4 tensors)
    rope: bool = True  # rotary q/k: q is a new tensor; without it a fused qkv output stays saved (GPT-2)
    fused_qkv: bool = False  # one projection makes q, k and v (GPT-2 c_attn, NeoX, Falcon)
    layer_dropouts: int = 0  # Dropout(p > 0) on the hidden stream per layer (GPT-2: resid + mlp)
    embed_dropout: bool = False  # Dropout(p > 0) after the embeddings (GPT-2 drop)
    attn_softcap: bool = False  # eager attention: tanh soft-capping saves one more s x s tensor (Gemma-2)
    final_softcap: bool = False  # tanh soft-capping of the logits saves one more b x s x V tensor (Gemma-2)
    windows: tuple = ()  # sliding window of each layer (None: full attention; Gemma-3 alternates)
    mask_always: bool = False  # the model always hands SDPA an explicit mask (Falcon, to add ALiBi onto)
    sdpa_kv_heads: int | None = None  # k/v heads SDPA gets without enable_gqa or repeat (Falcon-7B MQA: 1)
    attn_dropout: float = 0.0  # dropout_p handed to the attention kernel in training (GPT-2 attn_pdrop)


def probe_saved(module: nn.Module, width: int, a: int, grad_in: bool, weight_trains: bool) -> tuple[int, int, int]:
    """What `module` saves for backward, measured by running it on meta tensors (no memory, no data):
    (bytes per input row, constant bytes, bytes per row that are the input itself). Rows of `width`
    elements in the activation dtype (a = 2: bfloat16, 4: float32); the module's parameters in that dtype
    too, trainable or not. Two runs (1 and 2 rows) separate the per-row part from the constant (Gemma's
    fp32 `1 + weight`)."""
    import copy

    dtype = torch.bfloat16 if a == 2 else torch.float32
    m = copy.deepcopy(module).to(dtype)
    for p in m.parameters():
        p.requires_grad_(weight_trains)
    params = {p.untyped_storage()._cdata for p in m.parameters()}
    out = []
    for rows in (1, 2):
        x = torch.empty(rows, width, dtype=dtype, device="meta", requires_grad=grad_in)
        seen: dict[int, int] = {}
        own = x.untyped_storage()._cdata

        def pack(t, seen=seen):
            key = t.untyped_storage()._cdata
            if key not in params:
                seen[key] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            m(x)
        out.append((sum(seen.values()), seen.get(own, 0)))
    (one, in1), (two, in2) = out
    return two - one, 2 * one - two, in2 - in1


def _costs(module: nn.Module | None, width: int) -> tuple:
    """((a, grad_in, weight_trains, per_row, const, input_per_row), ...) for a = 2 and 4."""
    if module is None:
        return ()
    return tuple((a, g, w, *probe_saved(module, width, a, g, w))
                 for a in (2, 4) for g, w in ((True, False), (True, True), (False, True)))


def _act_cost(module: nn.Module | None, width: int) -> tuple:
    if module is None:
        return ()
    return tuple((a, probe_saved(module, width, a, True, False)[0] // width) for a in (2, 4))


def _windows(hf, n_layers: int) -> tuple:
    if getattr(hf, "use_sliding_window", True) is False or not getattr(hf, "sliding_window", None):
        return (None,) * n_layers
    types = getattr(hf, "layer_types", None)
    if types:  # Gemma-2/3: "sliding_attention" / "full_attention" per layer
        return tuple(hf.sliding_window if t == "sliding_attention" else None for t in types[:n_layers])
    return (hf.sliding_window,) * n_layers


def block_of(model: nn.Module, layer: nn.Module, hf, n_layers: int = 1) -> Block:
    leaves = [(n, m) for n, m in layer.named_modules() if n and not list(m.children())]
    norms = [(n, type(m).__name__) for n, m in leaves if "norm" in type(m).__name__.lower()]
    qk = [n for n, _ in norms if n.rsplit(".", 1)[-1] in ("q_norm", "k_norm")]
    acts = [type(m).__name__ for n, m in leaves if "act" in n.rsplit(".", 1)[-1]]
    act_mods = [m for n, m in leaves if "act" in n.rsplit(".", 1)[-1]]
    drops = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    drops += [float(getattr(hf, k, 0.0) or 0.0) for k in ("attention_dropout", "attn_pdrop")]
    embeds = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    window = getattr(hf, "sliding_window", None) if getattr(hf, "use_sliding_window", True) is not False else None
    block_norms = [(n, m) for n, m in leaves if "norm" in type(m).__name__.lower()
                   and n.rsplit(".", 1)[-1] not in ("q_norm", "k_norm")]
    # post-norms: a norm on the MLP's output exists (Gemma's sandwich, OLMo-2); the attention output then has
    # one too, and the remaining norms are pre-norms (Gemma: 2, OLMo-2: 0)
    post = 2 if any(n.rsplit(".", 1)[-1] == "post_feedforward_layernorm" for n, _ in block_norms) else 0
    hidden = hf.hidden_size
    qn = next((m for n, m in leaves if n.rsplit(".", 1)[-1] == "q_norm"), None)
    qk_width = qn.weight.numel() if qn is not None and getattr(qn, "weight", None) is not None else 0
    inter = getattr(hf, "intermediate_size", None) or getattr(hf, "n_inner", None) or 4 * hidden
    # layer dropouts act on the hidden stream; attention dropout goes to the SDPA kernel as dropout_p
    layer_drops = [n for n, m in layer.named_modules() if isinstance(m, nn.Dropout) and m.p > 0
                   and "attn_dropout" not in n and "attention_dropout" not in n]
    base = getattr(model, getattr(model, "base_model_prefix", "model"), model)
    embed_drop = any(isinstance(m, nn.Dropout) and m.p > 0 for m in base.children())
    fused = any(n.rsplit(".", 1)[-1] in ("c_attn", "query_key_value", "qkv_proj", "Wqkv") for n, _ in leaves)
    falcon_mqa = hf.model_type == "falcon" and getattr(hf, "multi_query", False) and not getattr(
        hf, "new_decoder_architecture", False)
    return Block(
        norm_type=norms[0][1] if norms else "none",
        norms=len(norms) - len(qk),
        qk_norm=bool(qk),
        activation=acts[0] if acts else "none",
        dropout=max(drops, default=0.0),
        learned_positions=len(embeds) > 1,
        parallel=bool(getattr(hf, "parallel_attn", False) or getattr(hf, "use_parallel_residual", False)),
        softcap=bool(getattr(hf, "attn_logit_softcapping", None) or getattr(hf, "final_logit_softcapping", None)),
        sliding_window=window,
        pre_norms=len(block_norms) - post,
        post_norms=post,
        norm_cost=_costs(block_norms[0][1] if block_norms else None, hidden),
        qk_norm_cost=_costs(qn, qk_width),
        qk_norm_width=qk_width,
        act_cost=_act_cost(act_mods[0] if act_mods else None, inter),
        rope=any("rotary" in type(m).__name__.lower() for m in model.modules()),
        fused_qkv=fused,
        layer_dropouts=len(layer_drops),
        embed_dropout=embed_drop,
        attn_softcap=bool(getattr(hf, "attn_logit_softcapping", None)),
        final_softcap=bool(getattr(hf, "final_logit_softcapping", None)),
        windows=_windows(hf, n_layers),
        # modeling_falcon.py: the mask is always materialised (ALiBi is added onto it), and the old
        # architecture's multi-query k/v reach F.scaled_dot_product_attention with 1 head, no enable_gqa
        mask_always=hf.model_type == "falcon",
        sdpa_kv_heads=1 if falcon_mqa else None,
        attn_dropout=max(float(getattr(hf, k, 0.0) or 0.0) for k in ("attention_dropout", "attn_pdrop")),
    )


@dataclass(frozen=True)
class Arch:
    """What the estimators need to know about a model, all counts exact."""

    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    gated_mlp: bool  # SwiGLU-style (gate, up, down) vs two-matrix MLP
    rms_norm: bool
    params: tuple[Param, ...]  # unique parameters (tied weights once)
    linears: tuple[Linear, ...]
    buffers: tuple[tuple[str, int, int], ...]  # (name, numel, itemsize in the built dtype)
    layer_prefix: str  # e.g. "model.layers"
    base_prefix: str  # the AutoModel part, e.g. "model"
    block: Block
    norm_names: tuple[tuple[str, str], ...]  # (name in the layer, class name) of the first layer's norms
    default_attention: str  # what transformers picks with no attn_implementation (sdpa, or eager)

    @property
    def total_params(self) -> int:
        return sum(p.numel for p in self.params)

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


def hf_config_of(cfg: RunConfig):
    from profiler.hf_config import resolve_hf_config

    return resolve_hf_config(cfg.model)


def arch_of(cfg: RunConfig) -> Arch:
    """The Arch of cfg.model (cached per architecture). The config passes the same check as `run`
    (resolve_hf_config: a causal LM with positive sizes); one transformers cannot build is a ConfigError."""
    hf = hf_config_of(cfg)
    try:
        return _arch_cached(json.dumps(hf.to_dict(), sort_keys=True, default=str))
    except Exception as exc:  # transformers' own checks while building the meta model (e.g. head sizes)
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(f"model: transformers cannot build {cfg.model.name!r} ({hf.model_type}) from its "
                          f"config: {type(exc).__name__}: {why}") from None


def meta_model(hf_config, dtype: torch.dtype = torch.float32) -> nn.Module:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(hf_config, dtype=dtype)


def _layer_list(model: nn.Module, n: int) -> str:
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n:
            return name
    raise ValueError(f"cannot find the {n} decoder layers of {type(model).__name__}")


@lru_cache(maxsize=32)
def _arch_cached(hf_json: str) -> Arch:
    from transformers import AutoConfig

    d = json.loads(hf_json)
    hf = AutoConfig.for_model(d.pop("model_type"), **d)
    model = meta_model(hf, torch.float32)
    text = hf.get_text_config() if hasattr(hf, "get_text_config") else hf
    n_layers = text.num_hidden_layers
    prefix = _layer_list(model, n_layers)
    heads = text.num_attention_heads
    hidden = text.hidden_size
    kv = getattr(text, "num_key_value_heads", None) or heads
    attn0 = next((m for n, m in model.get_submodule(prefix)[0].named_children() if "att" in n), None)
    kv = getattr(attn0, "num_kv_heads", None) or kv  # Falcon: 1 k/v head with multi_query (config says heads)
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    inter = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * hidden
    act = str(getattr(text, "hidden_act", None) or getattr(text, "activation_function", "gelu"))
    head = model.get_output_embeddings()

    def layer_of(name: str) -> int | None:
        if name.startswith(prefix + "."):
            return int(name[len(prefix) + 1 :].split(".")[0])
        return None

    seen: set[int] = set()
    params = []
    for mod_name, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{mod_name}.{pname}" if mod_name else pname
            params.append(Param(full, p.numel(), layer_of(full), mod_name, p.ndim))
    linears = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            linears.append(
                Linear(
                    name, mod.in_features, mod.out_features, mod.bias is not None, layer_of(name), mod is head,
                    type(mod) is nn.Linear,
                )
            )
        elif type(mod).__name__ == "Conv1D":  # GPT-2: weight is [in, out]
            fin, fout = mod.weight.shape
            linears.append(Linear(name, fin, fout, mod.bias is not None, layer_of(name), mod is head))
    bufs = tuple((n, b.numel(), b.element_size()) for n, b in model.named_buffers())
    base = getattr(model, "base_model_prefix", "model")
    norm_names = {type(m).__name__.lower() for m in model.modules()}
    return Arch(
        model_type=hf.model_type,
        hidden=hidden,
        layers=n_layers,
        heads=heads,
        kv_heads=kv,
        head_dim=head_dim,
        intermediate=inter,
        vocab=text.vocab_size,
        tied=bool(getattr(hf, "tie_word_embeddings", False)),
        gated_mlp=any(lin.name.endswith("gate_proj") for lin in linears) or act in ("silu", "swiglu"),
        rms_norm=any("rmsnorm" in n for n in norm_names),
        params=tuple(params),
        linears=tuple(linears),
        buffers=bufs,
        layer_prefix=prefix,
        base_prefix=base,
        block=block_of(model, model.get_submodule(prefix)[0], text, n_layers),
        norm_names=tuple((n, type(m).__name__) for n, m in model.get_submodule(prefix)[0].named_modules()
                         if "norm" in type(m).__name__.lower()),
        default_attention=model.config._attn_implementation,
    )
