"""Run configuration: YAML + dotted overrides, validated once on load, no side effects.

Every user mistake becomes a `ConfigError` whose message is one line naming the dotted key, the bad
value and the allowed values; the CLI prints it and exits 2 before anything is written.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = Path(__file__).resolve().parent / "models"  # package data: bundled architectures

Dtype = Literal["float32", "bfloat16", "float16"]

# Every numeric bound a config may reach, in one place (docs/configuration.md lists them, scripts/config_table.py):
# wide enough for any real run, narrow enough that a typo (10**30, 1e400GiB) is an error, not a hang.
LIMITS: dict[str, tuple[int, int]] = {
    "train.batch_size": (1, 65_536),
    "train.seq_len": (1, 2**24),  # 16M tokens
    "train.steps": (1, 10_000),
    "train.warmup_steps": (0, 1_000),
    "train.grad_accum_steps": (1, 4_096),
    "regime.lora.r": (1, 65_536),
    "regime.lora.alpha": (1, 65_536),
    "regime.freeze.trainable_layers": (0, 65_536),
    "regime.new_tokens": (0, 2**20),
    "seed": (0, 2**63 - 1),
    "max_memory": (1, 2**50),  # bytes: 1 PiB
}
# A CPU `run` without max_memory gets this share of the RAM available when it starts as its tracker
# budget, so a run that would not fit records status oom instead of swapping the machine.
DEFAULT_CPU_BUDGET_FRACTION = 0.9


MAX_ERROR_CHARS = 600  # a ConfigError line longer than this is cut in the middle (its start names the key)


class ConfigError(ValueError):
    """A one-line, user-facing configuration error (exit code 2). Whatever the message echoes, the line stays
    short: a message over MAX_ERROR_CHARS keeps its start (the key, the value) and its end (the allowed values)."""

    def __init__(self, message: object = "", *args: object):
        text = " ".join(str(message).split("\n"))
        if len(text) > MAX_ERROR_CHARS:
            cut = len(text) - MAX_ERROR_CHARS + 40
            text = f"{text[:400]} ... [{cut} characters cut] ... {text[-(MAX_ERROR_CHARS - 440):]}"
        super().__init__(text, *args)


def echo(value: Any, limit: int = 200) -> str:
    """repr(value) for an error line, at most about `limit` characters: reprlib stops walking a big nested
    value early (a long list shows its first items and `...`), so echoing never costs more than the cut."""
    import reprlib

    r = reprlib.Repr()  # keyword arguments only from Python 3.12
    r.maxlevel, r.maxtuple, r.maxlist, r.maxdict, r.maxset, r.maxlong = 3, 6, 6, 6, 6, 40
    r.maxstring = r.maxother = max(20, limit // 2)
    text = r.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _bounded(key: str, default: int) -> Any:
    lo, hi = LIMITS[key]
    return Field(default, ge=lo, le=hi)


def bundled_architectures() -> list[str]:
    """Names accepted by `model.arch`: the config.json files shipped in profiler/models/."""
    return sorted(p.stem for p in MODELS_DIR.glob("*.json"))


class ModelConfig(_Strict):
    """Which model, in which dtype. Exactly one source: arch (bundled architecture, random weights),
    path (local checkpoint dir or config.json) or hub (model id, needs network or a local HF cache)."""

    arch: str | None = None
    path: str | None = None
    hub: str | None = None
    dtype: Dtype = "bfloat16"
    # auto: what transformers picks for the model (sdpa where supported, else eager: Gemma-2's soft-capping)
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str | None) -> str | None:
        if arch is None:
            return arch
        if arch.endswith(".json"):
            if not Path(arch).is_file():
                raise ValueError(f"file {arch!r} does not exist")
            return arch
        allowed = bundled_architectures()
        if arch not in allowed:
            hint = difflib.get_close_matches(arch, allowed, n=1)
            msg = f"{arch!r} is not a bundled architecture; allowed: {', '.join(allowed)} or a config.json path"
            raise ValueError(msg + (f"; did you mean {hint[0]!r}?" if hint else ""))
        return arch

    @field_validator("path")
    @classmethod
    def _path_exists(cls, path: str | None) -> str | None:
        if path is not None and not Path(path).exists():
            raise ValueError(f"{path!r} does not exist")
        return path

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        given = [k for k in ("arch", "path", "hub") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of arch, path, hub (got {', '.join(given) or 'none'})")
        return self

    @property
    def user_supplied(self) -> bool:
        """A local config.json or checkpoint of the user's (not a bundled architecture, not a Hub id)."""
        return bool(self.path or (self.arch and self.arch.endswith(".json")))

    @property
    def name(self) -> str:
        """A short display name for tables and file names."""
        if self.arch and not self.arch.endswith(".json"):
            return self.arch  # bundled names contain dots (qwen2.5-0.5b): never strip a "suffix"
        if self.arch:  # .../NAME/config.json (a checkpoint's layout) or .../NAME.json
            p = Path(self.arch)
            return p.parent.name if p.name == "config.json" and p.parent.name else p.stem
        return Path(self.path).name if self.path else str(self.hub)


class LoraSettings(_Strict):
    """peft LoRA adapter; target_modules 'all-linear' targets every linear layer but the output head."""

    r: StrictInt = _bounded("regime.lora.r", 16)
    alpha: StrictInt = _bounded("regime.lora.alpha", 32)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: Literal["all-linear"] | list[str] = "all-linear"
    # dtype of the adapter weights: float32 is peft's autocast_adapter_dtype=True (get_peft_model's default);
    # TRL casts QLoRA adapters to bfloat16 (recipe trl)
    dtype: Dtype = "float32"


class FreezeSettings(_Strict):
    """Which parameters train under regime 'freeze': the last N decoder layers and/or named modules."""

    trainable_layers: StrictInt = _bounded("regime.freeze.trainable_layers", 2)
    trainable_modules: list[str] = Field(default_factory=list)


class RegimeConfig(_Strict):
    """Which parameters train and how the base weights are stored."""

    kind: Literal["full", "freeze", "lora", "qlora", "inference"] = "full"
    bits: Literal[4, 8] = 4  # qlora only: 4-bit (nf4/fp4) or 8-bit (LLM.int8) base weights
    quant_type: Literal["nf4", "fp4"] = "nf4"  # qlora 4-bit only
    double_quant: bool = True  # qlora 4-bit: quantize the absmax constants too (saves ~0.4 bit/param)
    compute_dtype: Dtype = "bfloat16"  # qlora 4-bit: dtype of the dequantized weight in matmuls
    # qlora 4-bit: dtype the packed 4-bit weights are stored as (bnb_4bit_quant_storage); a float dtype lets
    # FSDP2 shard them (two 4-bit values per byte either way: the bytes do not change, only the element type)
    quant_storage: Literal["uint8", "bfloat16", "float16", "float32"] = "uint8"
    prepare_kbit: bool = True  # qlora: peft.prepare_model_for_kbit_training (upcasts norms/head to fp32)
    # qlora 4-bit on a mixture-of-experts model: quantize the fused 3-D expert weights too, as axolotl's
    # quantize_moe_experts does (bitsandbytes replace_parameter_4bit: packed 4-bit + a dequantizing parametrization)
    quantize_experts: bool = False
    lora: LoraSettings = Field(default_factory=LoraSettings)
    freeze: FreezeSettings = Field(default_factory=FreezeSettings)
    # inference: >0 runs generate() with a KV cache of this many tokens
    new_tokens: StrictInt = _bounded("regime.new_tokens", 0)

    @property
    def label(self) -> str:
        return f"qlora{self.bits}" if self.kind == "qlora" else self.kind


class OptimizerConfig(_Strict):
    """Optimizer; 8-bit and paged variants come from bitsandbytes (paged state lives in CUDA managed memory)."""

    # adamw_fused: torch.optim.AdamW(fused=True), transformers' default optim adamw_torch_fused
    name: Literal["sgd", "sgd_momentum", "adam", "adamw", "adamw_fused", "adamw_8bit", "paged_adamw_8bit"] = "adamw"
    lr: float = Field(1e-4, gt=0)  # finite (allow_inf_nan=False): a line never holds Infinity


class TrainConfig(_Strict):
    """Batch shape and step loop."""

    batch_size: StrictInt = _bounded("train.batch_size", 1)
    seq_len: StrictInt = _bounded("train.seq_len", 512)
    steps: StrictInt = _bounded("train.steps", 3)  # measured steps after warm-up; the last one is the steady state
    warmup_steps: StrictInt = _bounded("train.warmup_steps", 1)  # the first step allocates optimizer state lazily
    gradient_checkpointing: bool = False  # trades compute for activation memory
    autocast: Literal["none", "bf16", "fp16"] = "none"
    # recipes (profiler/recipes/stacks.py); the defaults are the plain loop's, and are left out of config_hash
    use_reentrant: bool = False  # gradient_checkpointing_kwargs use_reentrant (transformers' default: False)
    # full: the model's own loss on full (batch, seq, vocab) logits; chunked: TRL's fused LM head (needs trl);
    # liger: Liger-Kernel's fused linear cross-entropy (no logits; use_liger_kernel / enable_liger_kernel)
    loss: Literal["full", "chunked", "liger"] = "full"
    max_grad_norm: float = Field(0.0, ge=0.0)  # > 0: clip_grad_norm_ before each optimizer step (Trainer: 1.0)
    grad_accum_steps: StrictInt = _bounded("train.grad_accum_steps", 1)  # micro-batches per optimizer step
    # how a step's batch_size x seq_len tokens reach the model (profiler/measure/batch.py, docs/recipes.md):
    # none: one sequence per row; packed: batch_size rows of seq_len tokens, each row several sequences of doc_len
    # with position_ids restarting and no attention mask (transformers then builds a block-diagonal mask);
    # padding_free: TRL's collator, all batch_size x seq_len tokens in one row, position_ids restarting;
    # packed_4d: packed rows with the collator's own 4-D block-diagonal float mask (LLaMA-Factory neat_packing)
    packing: Literal["none", "packed", "padding_free", "packed_4d"] = "none"
    # packed / padding_free: tokens per packed sequence (your data's lengths); unset: seq_len (one per row / sample)
    doc_len: StrictInt | None = Field(None, ge=1, le=LIMITS["train.seq_len"][1])
    # TRL's SFTConfig.activation_offloading: saved activations go to (pinned) host memory in the forward and come
    # back in the backward (trl/models/activation_offloading.py; profiler/measure/act_offload.py)
    activation_offloading: bool = False

    @model_validator(mode="after")
    def _doc_len_fits(self) -> TrainConfig:
        if self.doc_len is not None and self.packing == "none":
            raise ValueError(f"train.doc_len: {self.doc_len} needs train.packing packed, padding_free or "
                             "packed_4d; "
                             "allowed with packing none: unset")
        if self.doc_len is not None and self.doc_len > self.seq_len:
            raise ValueError(f"train.doc_len: {self.doc_len} is longer than train.seq_len {self.seq_len}; "
                             f"allowed: 1..{self.seq_len}")
        return self


class OffloadSettings(_Strict):
    """CPU offload where the engine supports it: host memory instead of GPU memory for these bytes."""

    params: bool = False  # fsdp2 / zero3: sharded parameters (and, fsdp2, their gradients) live on the host
    optimizer: bool = False  # fsdp2 / zero1-3: optimizer state on the host (the step runs there)


class ParallelConfig(_Strict):
    """Data parallelism: how the training state is split over `world_size` ranks (one GPU each).
    none: one process; ddp: everything replicated, gradient buckets added; fsdp2: parameters, gradients and
    optimizer state sharded, layers all-gathered in flight; zero1/2/3 (DeepSpeed): optimizer state /
    + gradients / + parameters sharded."""

    strategy: Literal["none", "ddp", "fsdp2", "zero1", "zero2", "zero3"] = "none"
    world_size: StrictInt = Field(1, gt=0)  # ranks (GPUs); per-rank memory falls with it where sharded
    reshard_after_forward: bool = True  # fsdp2: free each layer's unsharded params after its forward
    param_dtype: Dtype | None = None  # fsdp2 MixedPrecisionPolicy: dtype layers compute in (all-gathered)
    reduce_dtype: Dtype | None = None  # fsdp2 MixedPrecisionPolicy: dtype of the gradient reduce-scatter
    offload: OffloadSettings = Field(default_factory=OffloadSettings)
    # fsdp2: how each rank gets its shards. meta: build on the meta device, fully_shard, then materialise only
    # the local shards (peak at load ~ the shards); full: build the whole model on every rank, then shard
    # (peak at load = the whole model); auto: meta for architecture-only (random-weight) models, else full
    init: Literal["auto", "meta", "full"] = "auto"


class MoeConfig(_Strict):
    """Mixture-of-experts models only: which token-to-expert routing a simulation assumes (README "Mixture-of-experts
    models"). balanced: each expert gets top_k x tokens / n_experts tokens; worst_case: every token picks the same
    top_k experts."""

    routing: Literal["balanced", "worst_case"] = "balanced"


class AllocatorSettings(_Strict):
    """The CUDA caching allocator's settings, in PYTORCH_ALLOC_CONF syntax (e.g. "expandable_segments:True"), that the
    reserved-memory replay models (docs/allocator.md); unset: the environment's PYTORCH_ALLOC_CONF /
    PYTORCH_CUDA_ALLOC_CONF. A real CUDA run applies them to torch's allocator too."""

    conf: str | None = None


# target_modules names peft 0.21 turns into target_parameters (lora.ParamWrapper) on transformers-5 MoE models
# (peft.utils.transformers_weight_conversion._MOE_TARGET_MODULE_MAPPING), plus the fused names themselves
MOE_LORA_NAMES = {"gate", "w1", "w2", "w3", "gate_proj", "up_proj", "down_proj", "gate_up_proj"}


def architecture_only(mc: ModelConfig) -> bool:
    """A source with no weights (bundled architecture or a config.json file): the model gets random weights."""
    return bool(mc.arch or (mc.path and Path(mc.path).is_file()))


def _config_json(mc: ModelConfig) -> dict:
    """An architecture-only or local source's config.json ({} for a source only a load can tell, like a Hub id)."""
    src = mc.arch if mc.arch and mc.arch.endswith(".json") else (MODELS_DIR / f"{mc.arch}.json" if mc.arch else mc.path)
    p = Path(src) if src else None
    if p is not None and p.is_dir():
        p = p / "config.json"
    if p is None or not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def model_type_of(mc: ModelConfig) -> str:
    """config.json's `model_type` where the source has one on disk ('' otherwise: a load tells)."""
    return str(_config_json(mc).get("model_type") or "")


def moe_experts(mc: ModelConfig) -> int:
    """Routed experts per MoE layer read off an architecture-only source's config.json (0: dense, or a source only a
    load can tell, like a Hub id). Read here so that settings peft refuses fail before any model is built."""
    data = _config_json(mc)
    data = data.get("text_config", data)
    return max(int(data.get(k) or 0) for k in ("num_local_experts", "num_experts", "n_routed_experts"))


# keys added after results were recorded: at these values they are left out of config_hash, so a config that does
# not use them keeps the hash it had before they existed
HASH_NEUTRAL = {"recipe": "plain", "regime.lora.dtype": "float32", "regime.quant_storage": "uint8",
                "regime.quantize_experts": False,
                "train.use_reentrant": False, "train.loss": "full", "train.max_grad_norm": 0.0,
                "train.grad_accum_steps": 1}
HASH_NEUTRAL.update({"train.packing": "none", "train.doc_len": None, "train.activation_offloading": False})


class RunConfig(_Strict):
    """One measured run."""

    # which training stack's defaults fill unset keys (profiler/recipes/stacks.py); plain: the harness's own loop
    recipe: Literal["plain", "trl", "trainer"] = "plain"
    model: ModelConfig
    regime: RegimeConfig = Field(default_factory=RegimeConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    device: Literal["cuda", "cpu"] = "cuda"
    seed: StrictInt = _bounded("seed", 0)
    output: str | None = None  # JSONL file; default results/runs/<device-slug>.jsonl
    max_memory: str | int | None = None  # CPU only: tracker budget like "2GiB"; exceeding it records an oom
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)  # data parallelism (per-rank memory)
    moe: MoeConfig = Field(default_factory=MoeConfig)  # MoE models: routing a simulation assumes (dense: ignored)
    allocator: AllocatorSettings = Field(default_factory=AllocatorSettings)  # caching-allocator settings (replay)
    # simulate, device cuda: the GPU architecture whose SDPA kernel rules apply (profiler.simulate.cuda_sdpa);
    # `fit --gpu` sets it from the preset; auto: the sm80 rules (A100), as before the key existed
    gpu_arch: Literal["auto", "sm70", "sm75", "sm80", "sm86", "sm89", "sm90", "sm100", "sm120"] = "auto"

    _ignored: list[str] = PrivateAttr(default_factory=list)
    _defaults: dict[str, tuple[Any, str]] = PrivateAttr(default_factory=dict)  # key -> (value, why)

    @field_validator("max_memory", mode="before")
    @classmethod
    def _size_text(cls, value: Any) -> Any:
        if isinstance(value, float | bool):  # YAML .inf, 2.5: no unit, and not a union member to report
            raise ValueError(f"{value!r} is not a size; use a number with a unit like 512MiB, 2GiB, 80GB")
        return value

    @model_validator(mode="wrap")
    @classmethod
    def _drop_not_applicable(cls, data: Any, handler: ModelWrapValidatorHandler[RunConfig]) -> RunConfig:
        """Keys that do not apply to the regime are validated, then reset to their defaults, so a run has
        one identity (config_hash) whatever else the file sets; `ignored_keys` lists what was dropped.
        Before that, the recipe's defaults fill unset keys, then the settings a mixture-of-experts model needs
        (`derived_defaults`); `recipe_defaults` lists both."""
        filled: dict[str, tuple[Any, str]] = {}
        if isinstance(data, dict):
            from profiler.recipes.stacks import fill_recipe

            data, by_recipe = fill_recipe(data)
            filled = {k: (v, f"recipe {data.get('recipe')}") for k, v in by_recipe.items()}
            derived = derived_defaults(data)
            for key, (value, _) in derived.items():
                data = _with_path(data, key, value)
            filled.update(derived)
        cfg = handler(data)
        drop = [k for k in not_applicable_keys(cfg) if k not in filled]
        if drop:
            pruned = cfg.model_dump(exclude_unset=True)
            for dotted in drop:
                *parents, last = dotted.split(".")
                node = pruned
                for p in parents:
                    node = node[p]
                del node[last]
            cfg = handler(pruned)
        cfg._ignored = drop
        cfg._defaults = filled
        return cfg

    @property
    def recipe_defaults(self) -> dict[str, tuple[Any, str]]:
        """Keys this config did not set that a recipe or the model filled: key -> (value, why)."""
        return dict(self._defaults)

    @property
    def parallel_init(self) -> Literal["meta", "full"]:
        """How the model is built (`parallel.init` resolved): meta only under fsdp2, where `auto` picks it for
        architecture-only sources (random weights); a checkpoint loads whole (full)."""
        if self.parallel.init == "auto":
            meta = self.parallel.strategy == "fsdp2" and architecture_only(self.model) and self.regime.kind != "qlora"
            return "meta" if meta else "full"
        return self.parallel.init

    @property
    def ignored_keys(self) -> list[str]:
        """Dotted keys given in the config that do not apply to its regime (reset to defaults on load)."""
        return list(self._ignored)

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.max_memory is not None:
            try:
                parse_bytes(str(self.max_memory))  # a bare YAML number has no unit: rejected too
            except ValueError as exc:
                raise ValueError(f"max_memory: {exc}") from None
        if self.optimizer.name.startswith("paged") and self.device != "cuda":
            raise ValueError("optimizer.name: paged_adamw_8bit needs device: cuda (CUDA managed memory)")
        rg = self.regime
        targets = rg.lora.target_modules  # all-linear, or names peft maps onto the router / fused experts
        on_experts = targets == "all-linear" or bool(set(targets) & MOE_LORA_NAMES)
        moe = rg.kind in ("lora", "qlora") and moe_experts(self.model) > 1
        if moe and rg.lora.dropout != 0 and on_experts:
            raise ValueError(f"regime.lora.dropout: {rg.lora.dropout} is refused by peft for this mixture-of-experts "
                             "model (its fused expert parameters get lora.ParamWrapper, which has no dropout); "
                             "allowed: 0")
        if moe and rg.kind == "qlora" and rg.prepare_kbit and self.device == "cuda":  # the CPU kernel takes fp32
            raise ValueError("regime.prepare_kbit: true upcasts this mixture-of-experts model's fused experts to "
                             "float32, which torch's grouped_mm refuses on CUDA (bf16 only); allowed: false")
        if rg.quantize_experts:
            _check_quantize_experts(self)
        if self.train.loss == "chunked" and self.regime.kind != "inference":
            from profiler.recipes.stacks import trl_available

            if not trl_available():
                raise ValueError("train.loss: chunked runs TRL's fused LM head and needs trl (pip install "
                                 "'llm-memprof[trainer]'); allowed without trl: full")
        _check_liger(self)
        _check_activation_offloading(self)
        if self.train.packing == "packed_4d" and self.model.attn_implementation == "flash_attention_2":
            raise ValueError("train.packing: packed_4d is a collator's 4-D mask for sdpa / eager (flash_attention_2 "
                             "takes none: LLaMA-Factory unpads instead); allowed with flash_attention_2: none, packed, "
                             "padding_free")
        _check_parallel(self)
        return self

    def config_hash(self) -> str:
        """Identity of a run for resume/dedup: everything but where the result is written. Keys that do
        not apply to the regime were reset to defaults on load, so they never split one run in two."""
        data = self.model_dump(mode="json", exclude={"output"})
        pc = self.parallel
        auto = self.model_copy(update={"parallel": pc.model_copy(update={"init": "auto"})})
        if self.parallel_init == auto.parallel_init:  # what auto picks here: the hash the config had before `init`
            del data["parallel"]["init"]
            pc = pc.model_copy(update={"init": "auto"})
        if pc == ParallelConfig():
            del data["parallel"]  # one-process configs keep the hash they had before `parallel` existed
        if self.moe == MoeConfig():
            del data["moe"]  # the default moe section too: configs written before MoE support keep their hashes
        if self.allocator == AllocatorSettings():
            del data["allocator"]  # likewise for the allocator settings (unset: the environment's)
        if self.gpu_arch == "auto":
            del data["gpu_arch"]  # configs written before gpu_arch keep their hashes
        if self.model.attn_implementation == "auto":  # what auto resolves to: it is what changes memory, and
            from profiler.hf_config import hashed_attention  # the shipped configs said sdpa before they said auto

            data["model"]["attn_implementation"] = hashed_attention(self.model)
        for dotted, neutral in HASH_NEUTRAL.items():
            *parents, last = dotted.split(".")
            node = data
            for p in parents:
                node = node[p]
            if node[last] == neutral:
                del node[last]
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_quantize_experts(cfg: RunConfig) -> None:
    """regime.quantize_experts: true is modelled for what axolotl's quantize_moe_experts does with 4-bit: qlora
    4-bit, a model with fused experts, one process (its FSDP2/ZeRO paths are not modelled)."""
    rg = cfg.regime
    if rg.kind != "qlora" or rg.bits != 4:
        raise ValueError(f"regime.quantize_experts: true needs regime.kind: qlora with regime.bits: 4 (here "
                         f"{rg.label}); allowed: false, or kind qlora with bits 4")
    if moe_experts(cfg.model) < 2:
        raise ValueError(f"regime.quantize_experts: true needs a mixture-of-experts model with fused experts "
                         f"({cfg.model.name} has none); allowed: false")
    if cfg.parallel.strategy != "none":
        raise ValueError(f"regime.quantize_experts: true is modelled for one process only (parallel.strategy: "
                         f"{cfg.parallel.strategy}); allowed: false, or parallel.strategy: none")


def _with_path(data: dict, dotted: str, value: Any) -> dict:
    """A copy of `data` with one dotted key set (the sections on its path copied, never the caller's dicts)."""
    head, _, rest = dotted.partition(".")
    out = dict(data)
    out[head] = _with_path(out.get(head) if isinstance(out.get(head), dict) else {}, rest, value) if rest else value
    return out


def derived_defaults(data: dict) -> dict[str, tuple[Any, str]]:
    """Settings the config needs where the config dict left them unset (key -> (value, why)): FSDP-QLoRA's float
    quant storage (`_fsdp_qlora_defaults`) and what a mixture-of-experts model needs (`_moe_defaults`)."""
    out = _fsdp_qlora_defaults(data)
    out.update(_moe_defaults(data))
    return out


def _fsdp_qlora_defaults(data: dict) -> dict[str, tuple[Any, str]]:
    """qlora 4-bit under fsdp2 or zero3 with regime.quant_storage unset: the model's dtype, as PEFT's FSDP+QLoRA and
    DeepSpeed ZeRO-3 + QLoRA recipes set bnb_4bit_quant_storage (= torch_dtype, bfloat16): FSDP2 shards the packed
    weights only when they are stored as floats (accelerate 1.15 utils/fsdp_utils.py fsdp2_prepare_model leaves
    uint8 Params4bit out of sharding); DeepSpeed casts every float parameter to its bf16/fp16 dtype
    (`_check_zero3_qlora`)."""
    regime, parallel, model = (data.get(k) or {} for k in ("regime", "parallel", "model"))
    if not all(isinstance(d, dict) for d in (regime, parallel, model)):
        return {}
    strategy = parallel.get("strategy")
    if regime.get("kind") != "qlora" or regime.get("bits", 4) != 4 or strategy not in ("fsdp2", "zero3"):
        return {}
    if "quant_storage" in regime:
        return {}
    dtype = model.get("dtype", "bfloat16")
    if dtype not in ("bfloat16", "float16", "float32"):
        return {}
    if strategy == "zero3":
        return {"regime.quant_storage": (dtype, "zero3 + qlora: PEFT's DeepSpeed ZeRO-3 + QLoRA guide sets "
                                                 "bnb_4bit_quant_storage = the model dtype")}
    return {"regime.quant_storage": (dtype, "fsdp2 + qlora: FSDP2 shards 4-bit weights stored as floats "
                                             "(PEFT's FSDP+QLoRA: bnb_4bit_quant_storage = the model dtype)")}


def _moe_defaults(data: dict) -> dict[str, tuple[Any, str]]:
    """Settings a mixture-of-experts model needs where the config dict left them unset (key -> (value, why)), so
    that every bundled MoE model runs with the defaults: lora dropout 0 (peft's lora.ParamWrapper on fused experts
    has no dropout) and, under qlora, no prepare_model_for_kbit_training (it upcasts the fused experts to float32,
    which torch's grouped_mm refuses: "Expected inputs of BF16 type"). Malformed input is left to validation."""
    regime = data.get("regime") or {}
    if not isinstance(regime, dict) or regime.get("kind") not in ("lora", "qlora"):
        return {}
    lora = regime.get("lora") or {}
    if not isinstance(lora, dict):
        return {}
    try:
        experts = moe_experts(ModelConfig.model_validate(data.get("model")))
    except (ValidationError, TypeError, ValueError):
        return {}
    if experts < 2:
        return {}
    out: dict[str, tuple[Any, str]] = {}
    targets = lora.get("target_modules", "all-linear")
    on_experts = targets == "all-linear" or (isinstance(targets, list)
                                             and bool(set(map(str, targets)) & MOE_LORA_NAMES))
    if on_experts and "dropout" not in lora:
        out["regime.lora.dropout"] = (0.0, "mixture-of-experts: peft's lora.ParamWrapper on the fused experts "
                                      "refuses dropout")
    if regime["kind"] == "qlora" and "prepare_kbit" not in regime:
        out["regime.prepare_kbit"] = (False, "mixture-of-experts: prepare_model_for_kbit_training would upcast the "
                                      "fused experts to float32, which torch's grouped_mm refuses")
    return out


def user_data(cfg: RunConfig) -> dict:
    """What the config's author set (model_dump of set keys), without the keys a recipe or the model filled: a copy
    changed and validated again gets the defaults that fit the change (a switch to qlora gets TRL's qlora ones)."""
    data = cfg.model_dump(exclude_unset=True)
    for dotted in cfg.recipe_defaults:
        *parents, last = dotted.split(".")
        node = data
        for p in parents:
            node = node.get(p, {})
        node.pop(last, None)
    return data


_QLORA_ONLY = ("bits", "prepare_kbit")
_QLORA4_ONLY = ("quant_type", "double_quant", "compute_dtype", "quant_storage")


def not_applicable_keys(cfg: RunConfig) -> list[str]:
    """Dotted keys set in `cfg` that its regime never reads: 4/8-bit settings outside qlora (4-bit ones
    under qlora 8-bit too), lora.* outside lora/qlora, freeze.* outside freeze, new_tokens outside
    inference, and optimizer.* / train.gradient_checkpointing under inference (nothing trains)."""
    rg = cfg.regime
    keys = []
    if rg.kind != "qlora":
        keys += [f"regime.{k}" for k in (*_QLORA_ONLY, *_QLORA4_ONLY)]
    elif rg.bits == 8:
        keys += [f"regime.{k}" for k in _QLORA4_ONLY]
    if rg.kind not in ("lora", "qlora"):
        keys.append("regime.lora")
    if rg.kind != "freeze":
        keys.append("regime.freeze")
    if rg.kind != "inference":
        keys.append("regime.new_tokens")
    else:
        keys += ["optimizer", "train.gradient_checkpointing", "train.packing", "train.doc_len"]
    return [k for k in keys if _is_set(cfg, k)]


def ignored_note(cfg: RunConfig) -> str | None:
    """One line for stderr naming the keys the config set that its regime does not read (None when none):
    they were reset to their defaults, so the user knows they changed nothing."""
    keys = cfg.ignored_keys
    if not keys:
        return None
    return (f"note: {', '.join(keys)} {'does' if len(keys) == 1 else 'do'} not apply to regime "
            f"{cfg.regime.label}; ignored (reset to {'its default' if len(keys) == 1 else 'their defaults'})")


def _is_set(model: BaseModel, dotted: str) -> bool:
    *parents, last = dotted.split(".")
    for p in parents:
        if p not in model.model_fields_set:
            return False
        model = getattr(model, p)
    return last in model.model_fields_set


def default_cpu_budget() -> int:
    """DEFAULT_CPU_BUDGET_FRACTION of the RAM available now (psutil if installed, else /proc/meminfo)."""
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except ImportError:
        available = _meminfo_available()
    return max(1, int(available * DEFAULT_CPU_BUDGET_FRACTION))


def _meminfo_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the kernel reports kB (KiB)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _check_liger(cfg: RunConfig) -> None:
    """`train.loss: liger` only where Liger's fused linear cross-entropy runs (profiler/liger.py): training, on CUDA
    (Triton), a model type liger-kernel patches, and not under recipe trl (TRL 1.16 SFTTrainer refuses it and keeps
    its own chunked head: trl/trainer/sft_trainer.py:1127-1140)."""
    if cfg.train.loss != "liger":
        return
    from profiler.liger import LIGER_MODEL_TYPES, LIGER_VERSION

    if cfg.regime.kind == "inference":
        raise ValueError("train.loss: liger is a training loss (no logits only when labels are given in training); "
                         "allowed with regime.kind inference: full")
    if cfg.device != "cuda":
        raise ValueError(f"train.loss: liger runs Liger-Kernel's Triton kernels, CUDA only; allowed with device "
                         f"{cfg.device}: full, chunked")
    if cfg.recipe == "trl":
        raise ValueError("train.loss: liger is refused by TRL 1.16's SFTTrainer, which keeps its own chunked LM "
                         "head (use_liger_kernel applies only Liger's layer kernels there); allowed with recipe trl: "
                         "chunked, full")
    mt = model_type_of(cfg.model)
    if mt and mt not in LIGER_MODEL_TYPES:
        raise ValueError(f"train.loss: liger: liger-kernel {LIGER_VERSION} has no patch for model type {mt!r} "
                         "(MODEL_TYPE_TO_APPLY_LIGER_FN, profiler/liger.py); allowed for this model: full, chunked")


def _check_activation_offloading(cfg: RunConfig) -> None:
    """`train.activation_offloading: true` only where TRL applies it: training (SFTTrainer.training_step wraps
    forward + backward, trl/trainer/sft_trainer.py:1690-1693) on an accelerator (OffloadActivations moves only
    tensors on `torch.accelerator.current_accelerator()`, and cannot be built without one)."""
    if not cfg.train.activation_offloading:
        return
    if cfg.regime.kind == "inference":
        raise ValueError("train.activation_offloading: true offloads the tensors autograd saves for backward, a "
                         "training step's; allowed with regime.kind inference: false")
    if cfg.device != "cuda":
        raise ValueError(f"train.activation_offloading: true moves activations from the GPU to the host; allowed "
                         f"with device {cfg.device}: false")


def _check_parallel(cfg: RunConfig) -> None:
    """Combinations of `parallel` with the rest of the config that no engine runs."""
    pc = cfg.parallel
    s = pc.strategy
    if s == "none" and pc.world_size > 1:
        raise ValueError(f"parallel.world_size: {pc.world_size} needs a parallel.strategy; "
                         "allowed: ddp, fsdp2, zero1, zero2, zero3 (or world_size 1)")
    if s in ("none", "ddp") and (pc.offload.params or pc.offload.optimizer):
        raise ValueError(f"parallel.offload: strategy {s} cannot offload; allowed with fsdp2, zero1-3")
    if s in ("zero1", "zero2") and pc.offload.params:
        raise ValueError(f"parallel.offload.params: {s} keeps whole parameters on every GPU; allowed: "
                         "zero3 or fsdp2 (zero1/2 offload the optimizer only)")
    if s == "fsdp2" and pc.offload.params != pc.offload.optimizer:
        raise ValueError("parallel.offload: fsdp2's CPUOffloadPolicy moves parameters, gradients and "
                         "optimizer state together; allowed: params and optimizer both true or both false")
    if s != "fsdp2":
        for key in ("param_dtype", "reduce_dtype"):
            if getattr(pc, key) is not None:
                raise ValueError(f"parallel.{key}: the mixed-precision policy is fsdp2's; allowed with "
                                 f"strategy fsdp2 (strategy is {s})")
    if s != "fsdp2" and pc.reshard_after_forward is not True:
        raise ValueError(f"parallel.reshard_after_forward: an fsdp2 setting; allowed with strategy fsdp2 "
                         f"(strategy is {s})")
    if pc.init == "meta" and s != "fsdp2":
        raise ValueError(f"parallel.init: meta materialises fsdp2's local shards only; allowed with strategy {s}: "
                         "auto, full")
    if pc.init == "meta" and not architecture_only(cfg.model):
        raise ValueError("parallel.init: meta starts from random weights, and loading a checkpoint's shards "
                         "(model.path directory, model.hub) is not supported; allowed with a checkpoint: auto, full")
    if s == "none":
        return
    if cfg.regime.kind == "inference":
        raise ValueError(f"parallel.strategy: {pc.strategy} shards training state; allowed with regime.kind "
                         "inference: none")
    rg = cfg.regime
    if rg.kind == "qlora" and s != "ddp" and not (s in ("fsdp2", "zero3") and rg.bits == 4):
        why = ("8-bit weights: bitsandbytes' Int8Params keeps a second reference to the whole int8 weight "
               "(weight.CB, then Linear8bitLt's state.CB) that sharding the parameter does not free" if rg.bits == 8
               else "ZeRO-1/2 + QLoRA not modelled yet")
        raise ValueError(f"parallel.strategy: {s} with qlora{rg.bits} is not modelled ({why}); allowed with qlora: "
                         "none, ddp, fsdp2 (4-bit), zero3 (4-bit)")
    if rg.kind == "qlora" and s == "fsdp2" and rg.quant_storage == "uint8":
        # accelerate 1.15 fsdp2_prepare_model leaves uint8 Params4bit out of sharding (ignored_params): "Default
        # uint8 quant_storage cannot survive fully_shard's DTensor conversion"
        raise ValueError("regime.quant_storage: uint8 packed weights are not sharded by FSDP2 (accelerate leaves "
                         "them out); allowed with fsdp2: bfloat16, float16, float32 (PEFT's FSDP-QLoRA: bfloat16)")
    if rg.kind == "qlora" and s == "zero3":
        _check_zero3_qlora(cfg)
    if rg.kind == "qlora" and pc.init == "meta":
        raise ValueError("parallel.init: meta is not used with qlora (accelerate loads the quantized model whole on "
                         "every rank, then shards it); allowed with qlora: auto, full")
    if cfg.optimizer.name.endswith("8bit") and pc.strategy != "ddp":
        allowed = "adam, adamw" if s.startswith("zero") else "sgd, sgd_momentum, adam, adamw"  # as the next check
        raise ValueError(f"optimizer.name: {cfg.optimizer.name} (bitsandbytes) does not run on sharded "
                         f"parameters; allowed with strategy {pc.strategy}: {allowed}")
    if s.startswith("zero") and cfg.optimizer.name not in ("adam", "adamw"):
        raise ValueError(f"optimizer.name: {cfg.optimizer.name} under {s} (DeepSpeed runs torch's Adam/AdamW "
                         "here); allowed: adam, adamw")
    if (pc.offload.params or pc.offload.optimizer) and cfg.device != "cuda":
        raise ValueError("parallel.offload: offloads from GPU to host; allowed with device cuda only")


def _check_zero3_qlora(cfg: RunConfig) -> None:
    """ZeRO-3 + QLoRA 4-bit as PEFT's guide runs it (docs/source/accelerate/deepspeed.md, "Use PEFT QLoRA and
    DeepSpeed with ZeRO3"): bnb_4bit_quant_storage = the model's dtype. DeepSpeed 0.19.8's bf16/fp16 mode casts
    every floating parameter to that dtype at initialize (runtime/engine.py `_cast_module_mixed_precision`, a
    value cast: packed 4-bit bytes stored in another float dtype would be rewritten), so a 16-bit model needs
    the same storage dtype; uint8 storage is not the stack's recipe and is not checked here."""
    rg, pc = cfg.regime, cfg.parallel
    if rg.quant_storage == "uint8":
        raise ValueError("regime.quant_storage: uint8 is not how ZeRO-3 + QLoRA is run (PEFT's guide stores the "
                         "packed weights as the model dtype) and is not modelled; allowed with zero3: bfloat16, "
                         "float16, float32")
    if cfg.model.dtype in ("bfloat16", "float16") and rg.quant_storage != cfg.model.dtype:
        raise ValueError(f"regime.quant_storage: {rg.quant_storage} under zero3 with a {cfg.model.dtype} model: "
                         f"DeepSpeed casts every floating parameter to {cfg.model.dtype}, rewriting the packed "
                         f"4-bit bytes; allowed: {cfg.model.dtype}")
    if pc.offload.params or pc.offload.optimizer:
        raise ValueError("parallel.offload: zero3 + qlora with CPU offload is not modelled (PEFT's guide reports "
                         "more GPU memory with offload than without); allowed with qlora: offload false")


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str | int) -> int:
    """'80GiB' -> 85899345920; GiB = 2^30, GB = 10^9."""
    if isinstance(text, int):
        return _check_size(text, text)
    s = str(text).strip().lower().replace(" ", "")
    num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(num):]
    try:
        value = float(num)
    except ValueError:
        value = -1.0
    # a bare number is ambiguous (bytes? GiB? GB?); nan/inf are not sizes
    if unit not in _UNITS or unit == "" or not value >= 0:  # `not >=`: nan too; inf is out of range below
        raise ValueError(f"{text!r} is not a size; use a number with a unit like 512MiB, 2GiB, 80GB")
    return _check_size(text, value * _UNITS[unit])


def _check_size(text: str | int, value: float) -> int:
    lo, hi = LIMITS["max_memory"]
    if not lo <= value <= hi:
        raise ValueError(f"{text!r} is out of range; allowed: 1 byte to 1 PiB ({hi} bytes)")
    return int(value)


def format_validation_error(err: ValidationError) -> str:
    """A pydantic ValidationError of a RunConfig as the one line load_config raises (key, value, allowed)."""
    return _format_error(err, {})


def _format_error(err: ValidationError, data: dict) -> str:
    """First pydantic error as one line: dotted key, bad value, allowed values."""
    e = err.errors()[0]
    loc = [str(p) for p in e["loc"] if not str(p).startswith(("function-after", "literal", "list", "int"))]
    key = ".".join(loc) or "config"
    if e["type"] == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = sorted(model.model_fields) if model else []
        hint = difflib.get_close_matches(loc[-1], allowed, n=1)
        msg = f"{key}: unknown key; allowed keys: {', '.join(allowed)}"
        return msg + (f"; did you mean {hint[0]!r}?" if hint else "")
    if e["type"] == "missing":
        return f"{key}: required key is missing"
    value = e.get("input")
    if e["type"] in ("greater_than_equal", "less_than_equal") and key in LIMITS:
        lo, hi = LIMITS[key]
        return f"{key}: {echo(value)} is out of range; allowed: {lo}..{hi}"
    if e["type"] == "finite_number":
        return f"{key}: {echo(value)} is invalid: must be a finite number (not .inf or .nan)"
    if e["type"] == "literal_error":
        allowed = e.get("ctx", {}).get("expected", "")
        return f"{key}: {echo(value)} is not allowed; allowed: {allowed}"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "value_error":
        return msg if not loc else f"{key}: {msg}"  # whole-config checks name their own key
    return f"{key}: {echo(value)} is invalid: {msg}"


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(part)
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


# A run config is ~100 YAML nodes and a sweep grid a few thousand; beyond these a file is refused before it is
# built: nesting deeper than MAX_YAML_DEPTH (PyYAML's composer recurses: 100k `[` is a RecursionError), or more
# than MAX_YAML_NODES nodes once every alias is expanded (a "billion laughs" file is small on disk, but each
# `*alias` is one more copy of its anchor for everything that walks the value afterwards).
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 100_000
MAX_YAML_BYTES = 4 * 2**20


class YamlLoader(yaml.SafeLoader):
    """yaml.SafeLoader (no `!!python/...` tags) that refuses a key given twice in one mapping (PyYAML
    would keep the last silently, so a second `train:` would replace the first), nesting deeper than
    MAX_YAML_DEPTH and documents of more than MAX_YAML_NODES nodes with aliases expanded."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._expanded = 0  # nodes composed so far, an alias counting as the whole node it repeats
        self._sizes: dict[int, int] = {}  # id(node) -> expanded size, for nodes whose composition finished

    def _count(self, n: int, mark) -> None:
        self._expanded += n
        if self._expanded > MAX_YAML_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"more than {MAX_YAML_NODES} values once aliases are expanded (refused before "
                "building them; a config is a few hundred)", mark)

    def compose_node(self, parent, index):  # yaml.composer.Composer.compose_node, with the two limits
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)
            if id(node) not in self._sizes:
                raise yaml.composer.ComposerError(None, None, "an alias inside the node it names (a recursive "
                                                  "structure)", mark)
            self._count(self._sizes[id(node)], mark)
            return node
        mark = self.peek_event().start_mark
        if self._depth >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", mark)
        self._depth += 1
        before = self._expanded
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._count(1, mark)
        self._sizes[id(node)] = self._expanded - before
        return node


def _unique_mapping(loader: YamlLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    first: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then overriding one of its keys is fine
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            seen = key in first
        except TypeError:  # unhashable key: construct_mapping names it
            continue
        if seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first given at line {first[key] + 1})", key_node.start_mark)
        first[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


YamlLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error as one line: where (line) and what."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}" if mark else ""
    problem = str(getattr(exc, "problem", None) or exc).splitlines()[0]
    if "could not determine a constructor for the tag" in problem:
        problem += " (only plain YAML: no !!python or other custom tags)"
    return f"malformed YAML{where}: {problem}"


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file (UTF-8, safe tags, unique keys); ConfigError naming the file on any problem."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist" if not p.exists()
                          else f"config file {str(p)!r} is not a regular file")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config file {str(p)!r} cannot be read: {exc.strerror}") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{p}: {len(raw)} bytes; allowed: up to {MAX_YAML_BYTES // 2**20} MiB (a config is a "
                          "few KiB)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                          "save the file as UTF-8") from None
    try:
        return yaml.load(text, Loader=YamlLoader)  # noqa: S506 - YamlLoader is a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: {yaml_problem(exc)}") from None


def parse_override(item: str) -> tuple[str, Any]:
    """`key.sub=value` -> ("key.sub", the value read as YAML, the same limits as a file); "" is None."""
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        return key, yaml.load(raw, Loader=YamlLoader) if raw != "" else None  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}={echo(raw)}: {yaml_problem(exc)}") from None


def _set_dotted(data: dict, item: str) -> None:
    dotted, value = parse_override(item)
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: cannot override inside a non-mapping value")
    node[parts[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), base: dict | None = None,
                recipe: str | None = None) -> RunConfig:
    """Read a YAML file (or `base` dict), apply `key.sub=value` overrides, validate; ConfigError on any problem.
    `recipe` (a command's --recipe) replaces the file's; with a recipe=... override too it is refused."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        p = Path(path)
        loaded = read_yaml(p)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of keys (model, regime, optimizer, train, ...)")
        data.update(loaded)
    if recipe is not None:
        from profiler.recipes.options import recipe_into

        data = recipe_into(data, recipe, overrides)
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r}: use key.sub=value, e.g. train.batch_size=4")
        _set_dotted(data, item)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, data)) from None
