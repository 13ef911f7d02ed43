"""`fit --from FILE` / `simulate --from FILE`: the config file a user already has, mapped to our keys.

One function per format, each returning a `FromFile`: the dotted keys it set (with the field each came from), the
model id the file names, the recipe of its stack, and every field it did not map with the reason. Formats:
- TRL `SFTConfig` / transformers `TrainingArguments`: JSON as `to_json_string()` writes it, or the same keys in
  YAML (recipe trl for an SFTConfig, trainer otherwise);
- axolotl YAML (recipe trainer: axolotl drives transformers' Trainer);
- LLaMA-Factory YAML (recipe trainer; it checkpoints by default, reentrant:
  src/llamafactory/hparams/model_args.py `disable_gradient_checkpointing=False`, `use_reentrant_gc=True`);
- accelerate config YAML (distributed_type, num_processes, mixed_precision, fsdp_config, deepspeed_config);
- DeepSpeed JSON (zero_optimization stage and offload, bf16/fp16, micro batch, clipping).
A value of "auto" (DeepSpeed / accelerate fill it from the TrainingArguments at launch) is left unmapped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profiler.recipes.stacks import REFUSED_OPTIMIZERS, TRAINER_OPTIMIZERS

FORMATS = ("trl", "trainer", "axolotl", "llamafactory", "accelerate", "deepspeed")
NO_MEMORY = "no effect on training memory (logging, saving, evaluation, data, schedule, hub)"


class FromFileError(ValueError):
    """A file `--from` cannot read or map (one line naming the field)."""


@dataclass
class FromFile:
    format: str
    path: str
    keys: dict[str, Any] = field(default_factory=dict)  # our dotted key -> value
    mapped: list[tuple[str, str]] = field(default_factory=list)  # (their field, our dotted key)
    ignored: dict[str, str] = field(default_factory=dict)  # their field -> why (memory-relevant ones)
    unread: list[str] = field(default_factory=list)  # fields with no memory effect
    model: str | None = None
    recipe: str | None = None

    def put(self, their: str, ours: str, value: Any) -> None:
        self.keys[ours] = value
        self.mapped.append((their, ours))

    def data(self) -> dict:
        """The keys as a nested config dict."""
        out: dict = {}
        for dotted, value in self.keys.items():
            *parents, last = dotted.split(".")
            node = out
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = value
        if self.recipe:
            out["recipe"] = self.recipe
        return out

    def lines(self) -> list[str]:
        """What was mapped and what was not, for stderr."""
        out = [f"--from {self.path} ({self.format}): mapped " + (", ".join(f"{a} -> {b}={json.dumps(self.keys[b])}"
                                                                    for a, b in self.mapped) or "nothing")]
        out += [f"  ignored {k}: {why}" for k, why in self.ignored.items()]
        if self.unread:
            out.append(f"  ignored {len(self.unread)} more fields, {NO_MEMORY}: {', '.join(self.unread)}")
        return out


def cli_base(path: str | Path, config: str | None, overrides: list[str]) -> dict:
    """The --from file's keys as a command's base config (`simulate`, `estimate`, `fit`): its mapped and ignored lines
    go to stderr, and the model it names (a Hub id) becomes model.hub unless the command gives a config or a model.*
    override. ConfigError (one line) for a file that cannot be read or mapped."""
    import sys

    from profiler.config import ConfigError

    try:
        parsed = read(path)
    except FromFileError as exc:
        raise ConfigError(str(exc)) from None
    for line in parsed.lines():
        print(line, file=sys.stderr)
    base = parsed.data()
    if parsed.model and config is None and not any(o.startswith("model.") for o in overrides):
        base["model"] = {**base.get("model", {}), "hub": parsed.model}
    return base


def read(path: str | Path) -> FromFile:
    """Detect the format of `path` and map it."""
    p = Path(path)
    if not p.is_file():
        raise FromFileError(f"--from: file {str(p)!r} does not exist")
    text = p.read_text(encoding="utf-8-sig")
    try:
        if p.suffix == ".json":
            doc = json.loads(text)
        else:
            from profiler.config import ConfigError, read_yaml

            try:
                doc = read_yaml(p)
            except ConfigError as exc:
                raise FromFileError(f"--from: {exc}") from None
    except json.JSONDecodeError as exc:
        raise FromFileError(f"--from: {p} is not JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(doc, dict):
        raise FromFileError(f"--from: {p}: top level must be a mapping")
    fmt = detect(doc)
    return PARSERS[fmt](doc, str(p))


def detect(doc: dict) -> str:
    if "zero_optimization" in doc or "train_micro_batch_size_per_gpu" in doc:
        return "deepspeed"
    if "distributed_type" in doc or "compute_environment" in doc:
        return "accelerate"
    if "base_model" in doc or "micro_batch_size" in doc or "sequence_len" in doc or "adapter" in doc:
        return "axolotl"
    if "finetuning_type" in doc or "cutoff_len" in doc or "quantization_bit" in doc:
        return "llamafactory"
    if "per_device_train_batch_size" in doc or "output_dir" in doc:
        return "trl" if {"max_length", "packing", "dataset_text_field", "max_seq_length"} & set(doc) else "trainer"
    raise FromFileError("--from: not a format this reads; allowed: a TRL SFTConfig / TrainingArguments JSON or YAML, "
                        "an axolotl or LLaMA-Factory YAML, an accelerate config, a DeepSpeed JSON")


def _auto(v: Any) -> bool:
    return isinstance(v, str) and v.lower() == "auto"


def _optim(res: FromFile, their: str, name: Any) -> None:
    if name in (None, ""):
        return
    if name in TRAINER_OPTIMIZERS:
        res.put(their, "optimizer.name", TRAINER_OPTIMIZERS[name])
    else:
        why = REFUSED_OPTIMIZERS.get(name, "not a transformers optim name")
        res.ignored[their] = f"{name!r}: {why}; simulated with the recipe's optimizer (set optimizer.name=...)"


def _precision(res: FromFile, their_bf16: str, bf16: Any, their_fp16: str, fp16: Any) -> None:
    """Trainer-style bf16 / fp16 flags: mixed precision through accelerate's autocast."""
    if bf16 in (True, "auto", "true"):
        res.put(their_bf16, "train.autocast", "bf16")
    elif fp16 in (True, "true"):
        res.put(their_fp16, "train.autocast", "fp16")
    elif bf16 is False and not fp16:
        res.put(their_bf16, "train.autocast", "none")


LIGER_LAYER_KERNELS = ("Liger's RMSNorm, SwiGLU MLP and RoPE kernels (liger_kernel/transformers/monkey_patch.py:"
                       "250-293) are not modelled: the model's own layers are simulated")


def _liger(res: FromFile, their: str, on: Any, flce: bool = True, why_not: str = "") -> None:
    """A Liger switch: its fused linear cross-entropy is `train.loss: liger` (no logits: the part that changes memory
    most); the layer kernels it also patches are listed as not modelled."""
    if on in (None, False, "", "false"):
        return
    if flce:
        res.put(their, "train.loss", "liger")
        res.ignored[f"{their} (layer kernels)"] = LIGER_LAYER_KERNELS
    else:
        res.ignored[their] = f"{why_not}; {LIGER_LAYER_KERNELS}"


# HF TrainingArguments / SFTConfig fields that change memory, with the fields that we read elsewhere
_HF_NOT_MODELLED = {
    "torch_compile": "torch.compile is not modelled",
    "activation_offloading": "an SFTConfig field (TRL's OffloadActivations); transformers' Trainer has none",
    "fsdp": "give the accelerate config with --from instead", "fsdp_config": "give the accelerate config with --from",
    "deepspeed": "give the DeepSpeed JSON with --from instead",
    "label_smoothing_factor": "label smoothing makes TRL compute full logits (not modelled)",
    "loss_type": "dft and nll both use the chunked head", "use_cpu": "fit is about a GPU",
    "per_device_eval_batch_size": "evaluation is not simulated", "model_init_kwargs": "read for dtype only",
    "max_length": "", "max_seq_length": "",
}


def _hf(doc: dict, path: str, fmt: str) -> FromFile:
    res = FromFile(fmt, path, recipe=fmt)
    read_keys = set()

    def take(k: str) -> Any:
        read_keys.add(k)
        return doc.get(k)

    if (v := take("per_device_train_batch_size")) is not None:
        res.put("per_device_train_batch_size", "train.batch_size", int(v))
    for k in ("max_length", "max_seq_length"):
        if (v := take(k)) is not None:
            res.put(k, "train.seq_len", int(v))
            break
    ck = take("activation_checkpointing")
    gc = take("gradient_checkpointing")
    if ck is not None or gc is not None:
        res.put("activation_checkpointing" if ck is not None else "gradient_checkpointing",  # the alias second
                "train.gradient_checkpointing", bool(ck if ck is not None else gc))
    kwargs = take("gradient_checkpointing_kwargs") or take("activation_checkpointing_kwargs") or {}
    if isinstance(kwargs, dict) and "use_reentrant" in kwargs:
        res.put("gradient_checkpointing_kwargs.use_reentrant", "train.use_reentrant", bool(kwargs["use_reentrant"]))
    _precision(res, "bf16", take("bf16"), "fp16", take("fp16"))
    _optim(res, "optim", take("optim"))
    if (v := take("learning_rate")) is not None:
        res.put("learning_rate", "optimizer.lr", float(v))
    if (v := take("max_grad_norm")) is not None:
        res.put("max_grad_norm", "train.max_grad_norm", float(v))
    if (v := take("gradient_accumulation_steps")) is not None:
        res.put("gradient_accumulation_steps", "train.grad_accum_steps", int(v))
    lkc = take("liger_kernel_config")
    lkc = lkc if isinstance(lkc, dict) else {}
    if fmt == "trl":  # SFTTrainer drops Liger's fused loss for its own chunked head
        _liger(res, "use_liger_kernel", take("use_liger_kernel"), flce=False,
               why_not="TRL 1.16 SFTTrainer applies Liger with fused_linear_cross_entropy=False and keeps its chunked "
                       "LM head (trl/trainer/sft_trainer.py:1127-1140; True there is an error)")
    else:  # transformers/trainer.py:1494 apply_liger_kernel(model, liger_kernel_config): every kernel on by default
        _liger(res, "use_liger_kernel", take("use_liger_kernel"), flce=lkc.get("fused_linear_cross_entropy", True),
               why_not="liger_kernel_config sets fused_linear_cross_entropy false: the model's own loss runs")
    _hf_packing(res, take("packing"), take("packing_strategy"), take("padding_free"), fmt)
    if fmt == "trl" and (v := take("activation_offloading")) is not None:  # sft_trainer.py:1190-1193, 1690-1693
        res.put("activation_offloading", "train.activation_offloading", bool(v))
    mik = take("model_init_kwargs")
    if isinstance(mik, dict) and mik.get("dtype", mik.get("torch_dtype")) in ("bfloat16", "float16", "float32"):
        res.put("model_init_kwargs.dtype", "model.dtype", mik.get("dtype", mik.get("torch_dtype")))
    for k, why in _HF_NOT_MODELLED.items():
        if k in doc and k not in read_keys and doc[k] not in (None, False, "nll", 0, 0.0):
            res.ignored[k] = why
    res.unread = sorted(k for k in doc if k not in read_keys and k not in res.ignored)
    return res



DOC_LEN_HINT = ("the lengths of your packed sequences are your data's: set train.doc_len=N (tokens a sequence; "
                "unset: one sequence per seq_len tokens)")


def _hf_packing(res: FromFile, packing: Any, strategy: Any, padding_free: Any, fmt: str) -> None:
    """TRL's packing / padding_free (trl/trainer/sft_trainer.py:916: padding-free for `padding_free`, or for `packing`
    with strategy bfd / bfd_split, the default; sft_config.py `packing_strategy = "bfd"`). `wrapped` packing without
    padding_free: full rows of max_length with an all-ones attention mask, the unpacked batch."""
    strategy = strategy or "bfd"
    if padding_free or (packing and strategy in ("bfd", "bfd_split")):
        their = "padding_free" if padding_free else f"packing/packing_strategy={strategy}"
        res.put(their, "train.packing", "padding_free")
        res.ignored["(sequence lengths)"] = DOC_LEN_HINT
        if padding_free and not packing:
            res.ignored["padding_free"] = ("without packing each sample keeps its length: train.seq_len is "
                                           "max_length, an upper bound; set it to your samples' typical length")
    elif packing:
        res.put(f"packing/packing_strategy={strategy}", "train.packing", "none")  # rows of max_length, no mask
    if fmt == "trainer" and (packing or padding_free):
        res.ignored["packing"] = "packing / padding_free are SFTConfig fields: read as TRL's collator uses them"


def _finish(res: FromFile, doc: dict, seen: set[str], unmodelled: dict[str, str]) -> FromFile:
    """Record the set fields we know but do not model (with why) and every field we never read."""
    seen.update(unmodelled)
    res.ignored.update({k: why for k, why in unmodelled.items() if doc.get(k) not in (None, False, "")})
    res.unread = sorted(k for k in doc if k not in seen)
    return res

def parse_trl(doc: dict, path: str) -> FromFile:
    """A TRL SFTConfig (recipe trl: its defaults, chunked loss included, fill what the file leaves unset)."""
    return _hf(doc, path, "trl")


def parse_trainer(doc: dict, path: str) -> FromFile:
    """A transformers TrainingArguments (recipe trainer)."""
    return _hf(doc, path, "trainer")


def parse_axolotl(doc: dict, path: str) -> FromFile:
    res = FromFile("axolotl", path, recipe="trainer", model=doc.get("base_model"))
    seen = {"base_model"}

    def take(k: str) -> Any:
        seen.add(k)
        return doc.get(k)

    adapter, in4, in8 = take("adapter"), take("load_in_4bit"), take("load_in_8bit")
    if adapter in ("lora", "qlora"):
        if in4 or adapter == "qlora" and not in8:
            res.put("adapter/load_in_4bit", "regime.kind", "qlora")
            res.put("load_in_4bit", "regime.bits", 4)
        elif in8:
            res.put("adapter/load_in_8bit", "regime.kind", "qlora")
            res.put("load_in_8bit", "regime.bits", 8)
        else:
            res.put("adapter", "regime.kind", "lora")
    elif adapter is None:
        res.put("adapter", "regime.kind", "full")
    for theirs, ours, cast in (("lora_r", "regime.lora.r", int), ("lora_alpha", "regime.lora.alpha", int),
                               ("lora_dropout", "regime.lora.dropout", float), ("sequence_len", "train.seq_len", int),
                               ("micro_batch_size", "train.batch_size", int),
                               ("gradient_accumulation_steps", "train.grad_accum_steps", int),
                               ("learning_rate", "optimizer.lr", float),
                               ("max_grad_norm", "train.max_grad_norm", float)):
        v = take(theirs)
        if v is not None and (not theirs.startswith("lora_") or res.keys.get("regime.kind") in ("lora", "qlora")):
            res.put(theirs, ours, cast(v))
    if take("quantize_moe_experts"):  # axolotl src/axolotl/monkeypatch/moe_quant.py (profiler.measure.moe_quant)
        if doc.get("lora_target_linear"):  # axolotl's own check (utils/schemas/config.py check_quantize_moe_experts)
            raise FromFileError("--from: lora_target_linear: true is refused by axolotl with quantize_moe_experts: "
                                "true; allowed: lora_target_modules (a list), or quantize_moe_experts: false")
        res.put("quantize_moe_experts", "regime.quantize_experts", True)
    if take("lora_target_linear"):
        res.put("lora_target_linear", "regime.lora.target_modules", "all-linear")
    elif (t := take("lora_target_modules")):
        res.put("lora_target_modules", "regime.lora.target_modules", list(t))
    gc = take("gradient_checkpointing")
    if gc is not None:
        res.put("gradient_checkpointing", "train.gradient_checkpointing", bool(gc))
        if isinstance(gc, str):
            res.ignored["gradient_checkpointing"] = f"{gc!r} (offloaded) is modelled as plain checkpointing"
    kw = take("gradient_checkpointing_kwargs")
    if isinstance(kw, dict) and "use_reentrant" in kw:
        res.put("gradient_checkpointing_kwargs.use_reentrant", "train.use_reentrant", bool(kw["use_reentrant"]))
    _precision(res, "bf16", take("bf16"), "fp16", take("fp16"))
    _optim(res, "optimizer", take("optimizer"))
    flash = bool(take("flash_attention"))
    if flash:
        res.put("flash_attention", "model.attn_implementation", "flash_attention_2")
    _liger(res, "liger_fused_linear_cross_entropy", take("liger_fused_linear_cross_entropy"))  # axolotl LigerPlugin
    if take("sample_packing"):
        # axolotl core/trainers/base.py `_create_multipack_sampler`: with flash attention (multipack_real_batches off)
        # one bin of micro_batch_size x sequence_len tokens a step, the attention mask dropped
        # (sample_packing_drop_attention_mask), position ids restarting: padding-free; without it micro_batch_size
        # rows of sequence_len, whose collator mask (sequence numbers) transformers reads as a padding mask
        res.put("sample_packing" + ("/flash_attention" if flash else ""), "train.packing",
                "padding_free" if flash else "packed")
        res.ignored["(sequence lengths)"] = DOC_LEN_HINT
        if not flash:
            res.ignored["sample_packing"] = ("without flash attention axolotl keeps its attention mask of sequence "
                                             "numbers: transformers builds a (rows, 1, seq, seq) causal + padding "
                                             "mask where a row has padding, the size of the packed mask modelled")
    return _finish(res, doc, seen, {
                   **{k: LIGER_LAYER_KERNELS for k in ("liger_rms_norm", "liger_glu_activation", "liger_rope",
                                                       "liger_layer_norm")},
                   "liger_cross_entropy": "Liger's cross-entropy on full logits (no fused head): not modelled",
                   "pad_to_sequence_len": "every row is sequence_len tokens already",
                   "deepspeed": "give the DeepSpeed JSON with --from instead",
                   "fsdp": "give the accelerate config with --from", "fsdp_config": "FSDP settings are not read here",
                   "lora_target_parameters": "adapters on named parameters (axolotl's patched peft on quantized "
                                             "experts) are not modelled",
                   "lora_fan_in_fan_out": "no memory effect", "xformers_attention": "xformers is not modelled",
                   "tf32": "no memory effect",
                   "unsloth_lora_mlp": "unsloth kernels are not modelled"})


def parse_llamafactory(doc: dict, path: str) -> FromFile:
    res = FromFile("llamafactory", path, recipe="trainer", model=doc.get("model_name_or_path"))
    seen = {"model_name_or_path"}

    def take(k: str) -> Any:
        seen.add(k)
        return doc.get(k)

    ft, bits = take("finetuning_type") or "lora", take("quantization_bit")
    method = take("quantization_method") or "bitsandbytes"
    if ft == "lora" and bits in (4, 8) and method == "bitsandbytes":
        res.put("finetuning_type/quantization_bit", "regime.kind", "qlora")
        res.put("quantization_bit", "regime.bits", bits)
    elif ft in ("lora", "full", "freeze"):
        res.put("finetuning_type", "regime.kind", ft)
        if bits:
            res.ignored["quantization_bit"] = f"{method} {bits}-bit is not modelled (bitsandbytes 4/8 only)"
    else:
        raise FromFileError(f"--from: finetuning_type: {ft!r} is not modelled; allowed: lora, full, freeze")
    for theirs, ours, cast in (("lora_rank", "regime.lora.r", int), ("lora_alpha", "regime.lora.alpha", int),
                               ("lora_dropout", "regime.lora.dropout", float), ("cutoff_len", "train.seq_len", int),
                               ("per_device_train_batch_size", "train.batch_size", int),
                               ("gradient_accumulation_steps", "train.grad_accum_steps", int),
                               ("learning_rate", "optimizer.lr", float),
                               ("max_grad_norm", "train.max_grad_norm", float)):
        if (v := take(theirs)) is not None:
            res.put(theirs, ours, cast(v))
    if res.keys.get("regime.kind") in ("lora", "qlora"):  # LLaMA-Factory's defaults (hparams/finetuning_args.py)
        r = int(res.keys.get("regime.lora.r", 8))
        for key, value in (("regime.lora.r", r), ("regime.lora.alpha", 2 * r), ("regime.lora.dropout", 0.0)):
            if key not in res.keys:
                res.put(f"(default of {key.rsplit('.', 1)[-1]})", key, value)
    target = take("lora_target")
    if target == "all":
        res.put("lora_target", "regime.lora.target_modules", "all-linear")
    elif target:
        res.put("lora_target", "regime.lora.target_modules", [t.strip() for t in str(target).split(",")])
    res.put("disable_gradient_checkpointing", "train.gradient_checkpointing",
            not take("disable_gradient_checkpointing"))
    res.put("use_reentrant_gc", "train.use_reentrant", bool(doc.get("use_reentrant_gc", True)))
    seen.add("use_reentrant_gc")
    _precision(res, "bf16", take("bf16"), "fp16", take("fp16"))
    _optim(res, "optim", take("optim"))
    fa2 = take("flash_attn") == "fa2"
    if fa2:
        res.put("flash_attn", "model.attn_implementation", "flash_attention_2")
    # model/loader.py: apply_liger_kernel(..., require_logits=(stage not in ["pt", "sft"])); with logits required it
    # passes fused_linear_cross_entropy=False (model/model_utils/liger_kernel.py)
    stage = take("stage") or "sft"
    _liger(res, "enable_liger_kernel", take("enable_liger_kernel"), flce=stage in ("pt", "sft"),
           why_not=f"stage {stage} needs logits: LLaMA-Factory turns Liger's fused cross-entropy off")
    packing, neat = take("packing"), take("neat_packing")
    if neat:  # data/collator.py SFTDataCollatorWith4DAttentionMask(block_diag_attn=neat_packing)
        # sdpa / eager: prepare_4d_attention_mask, a (rows, 1, seq, seq) float mask from the collator; fa2: no mask,
        # the packed rows unpadded and read by the varlen kernel from their position ids
        res.put("neat_packing" + ("/flash_attn" if fa2 else ""), "train.packing", "packed" if fa2 else "packed_4d")
        res.ignored["(sequence lengths)"] = DOC_LEN_HINT
    elif packing:  # rows of cutoff_len with an all-ones attention mask: sequences attend across (no block mask)
        res.put("packing", "train.packing", "none")
    return _finish(res, doc, seen, {
                   "deepspeed": "give the DeepSpeed JSON with --from instead",
                   "upcast_layernorm": "fp32 norms are not modelled here",
                   "use_unsloth": "unsloth is not modelled",
                   "use_unsloth_gc": "unsloth is not modelled"})


def parse_accelerate(doc: dict, path: str) -> FromFile:
    res = FromFile("accelerate", path)
    seen = {"distributed_type", "num_processes", "mixed_precision", "fsdp_config", "deepspeed_config"}
    dt = str(doc.get("distributed_type", "NO")).upper()
    n = doc.get("num_processes")
    if dt == "FSDP":
        fc = doc.get("fsdp_config") or {}
        if int(fc.get("fsdp_version", 1)) != 2:
            raise FromFileError("--from: fsdp_config.fsdp_version: 1 is not modelled; allowed: 2 (FSDP2)")
        res.put("distributed_type", "parallel.strategy", "fsdp2")
        if "fsdp_reshard_after_forward" in fc:
            res.put("fsdp_config.fsdp_reshard_after_forward", "parallel.reshard_after_forward",
                    bool(fc["fsdp_reshard_after_forward"]))
        if fc.get("fsdp_offload_params"):
            res.put("fsdp_config.fsdp_offload_params", "parallel.offload.params", True)
            res.put("fsdp_config.fsdp_offload_params", "parallel.offload.optimizer", True)
        if "fsdp_activation_checkpointing" in fc:
            res.put("fsdp_config.fsdp_activation_checkpointing", "train.gradient_checkpointing",
                    bool(fc["fsdp_activation_checkpointing"]))
        for k in fc:
            if k not in ("fsdp_version", "fsdp_reshard_after_forward", "fsdp_offload_params",
                         "fsdp_activation_checkpointing"):
                res.ignored[f"fsdp_config.{k}"] = "not modelled (fully_shard wraps each decoder layer and the root)"
    elif dt == "DEEPSPEED":
        dc = doc.get("deepspeed_config") or {}
        stage = dc.get("zero_stage")
        if stage in (1, 2, 3):
            res.put("deepspeed_config.zero_stage", "parallel.strategy", f"zero{stage}")
        if dc.get("offload_optimizer_device") == "cpu":
            res.put("deepspeed_config.offload_optimizer_device", "parallel.offload.optimizer", True)
        if dc.get("offload_param_device") == "cpu":
            res.put("deepspeed_config.offload_param_device", "parallel.offload.params", True)
        for k in dc:
            if k not in ("zero_stage", "offload_optimizer_device", "offload_param_device"):
                res.ignored[f"deepspeed_config.{k}"] = "not modelled"
        if "zero3_init_flag" in dc:  # transformers modeling_utils.py get_init_context: zero.Init if not is_quantized
            res.ignored["deepspeed_config.zero3_init_flag"] = ("not modelled (the whole model is built on every rank "
                                                               "first); with QLoRA transformers never uses zero.Init")
    elif dt == "MULTI_GPU":
        res.put("distributed_type", "parallel.strategy", "ddp")
    elif dt != "NO":
        raise FromFileError(f"--from: distributed_type: {dt!r} is not modelled; allowed: NO, MULTI_GPU, FSDP, "
                            "DEEPSPEED")
    if n is not None and dt != "NO":
        res.put("num_processes", "parallel.world_size", int(n))
    mp = doc.get("mixed_precision")
    if mp in ("bf16", "fp16"):
        res.put("mixed_precision", "train.autocast", mp)
    elif mp == "no":
        res.put("mixed_precision", "train.autocast", "none")
    elif mp is not None:
        res.ignored["mixed_precision"] = f"{mp!r} is not modelled"
    res.unread = sorted(k for k in doc if k not in seen)
    return res


def parse_deepspeed(doc: dict, path: str) -> FromFile:
    res = FromFile("deepspeed", path)
    seen = {"zero_optimization", "bf16", "fp16", "train_micro_batch_size_per_gpu", "gradient_clipping",
            "gradient_accumulation_steps"}
    zo = doc.get("zero_optimization") or {}
    stage = zo.get("stage", 0)
    if stage in (1, 2, 3):
        res.put("zero_optimization.stage", "parallel.strategy", f"zero{stage}")
    if (zo.get("offload_optimizer") or {}).get("device") == "cpu":
        res.put("zero_optimization.offload_optimizer.device", "parallel.offload.optimizer", True)
    if (zo.get("offload_param") or {}).get("device") == "cpu":
        res.put("zero_optimization.offload_param.device", "parallel.offload.params", True)
    for k in zo:
        if k not in ("stage", "offload_optimizer", "offload_param"):
            res.ignored[f"zero_optimization.{k}"] = "buckets and prefetch sizes are not modelled"
    for k, ours in (("bf16", "bfloat16"), ("fp16", "float16")):
        en = (doc.get(k) or {}).get("enabled")
        if en is True:
            res.put(f"{k}.enabled", "model.dtype", ours)
        elif _auto(en):
            res.ignored[f"{k}.enabled"] = "auto: the TrainingArguments decide at launch"
    for k, ours in (("train_micro_batch_size_per_gpu", "train.batch_size"),
                    ("gradient_clipping", "train.max_grad_norm"),
                    ("gradient_accumulation_steps", None)):
        v = doc.get(k)
        if v is None:
            continue
        if _auto(v):
            res.ignored[k] = "auto: the TrainingArguments decide at launch"
        elif ours is None:
            res.ignored[k] = "DeepSpeed accumulates inside its engine (not modelled)"
        else:
            res.put(k, ours, float(v) if ours.endswith("norm") else int(v))
    res.unread = sorted(k for k in doc if k not in seen)
    if "parallel.strategy" in res.keys:
        res.ignored["(world size)"] = "a DeepSpeed JSON does not say how many GPUs: set parallel.world_size=N"
    return res


PARSERS = {"trl": parse_trl, "trainer": parse_trainer, "axolotl": parse_axolotl, "llamafactory": parse_llamafactory,
           "accelerate": parse_accelerate, "deepspeed": parse_deepspeed}
