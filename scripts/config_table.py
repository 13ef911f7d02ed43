"""Write the run-config reference table into docs/configuration.md from the pydantic models (a test keeps them in sync).

Run: python scripts/config_table.py [--print] [--check]

Replaces the text between `<!-- config-table:begin -->` and `<!-- config-table:end -->` of docs/configuration.md
with one row per key of profiler.config.RunConfig: the default, the allowed values (Literal types, bounds from the
fields' constraints, which `LIMITS` in profiler/config.py sets) read from the models, and the memory effect from
NOTES below (one entry per key: a key added to the config without an entry here fails the test). --print only
prints the table; --check exits 1 when the page's block differs (nothing written).
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path

import annotated_types as at
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from profiler.config import DEFAULT_CPU_BUDGET_FRACTION, LIMITS, RunConfig, bundled_architectures

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/docblock.py, also when a test loads this file
import docblock  # noqa: E402

PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
BEGIN, END = "<!-- config-table:begin -->", "<!-- config-table:end -->"

# key -> (what the type cannot say about the allowed values, appended to what it says; memory effect).
# `{archs}` is replaced by the bundled architectures (profiler/models/*.json).
NOTES: dict[str, tuple[str, str]] = {
    "recipe": ("", "which stack's memory-relevant defaults fill the keys a config leaves unset "
                   "([recipes](recipes.md)); plain: this tool's loop"),
    "model.arch": ("a name in `profiler/models/` ({archs}) or a path to any HF `config.json` of a causal LM "
                   "(see below)", "architecture, random weights"),
    "model.path": ("local checkpoint directory with a `config.json` (real weights)", ""),
    "model.hub": ("Hub model id (needs network or a local HF cache)", ""),
    "model.dtype": ("", "bytes/param of unquantized weights"),
    "model.attn_implementation": ("(auto: what transformers picks for the model: sdpa, or eager for Gemma-2)",
                                  "eager keeps b·h·s² attention probabilities"),
    "regime.kind": ("", "which parameters train"),
    "regime.bits": ("", "qlora: base weights in 4-bit (NF4/FP4) or 8-bit (LLM.int8)"),
    "regime.quant_type": ("", "qlora 4-bit"),
    "regime.double_quant": ("", "qlora 4-bit: quantized absmax (~0.4 bit/param less)"),
    "regime.compute_dtype": ("", "qlora 4-bit: dtype of the dequantized weight in matmuls"),
    "regime.quant_storage": ("", "qlora 4-bit: dtype the packed weights are stored as (bnb_4bit_quant_storage; same "
                                 "bytes); a float dtype lets FSDP2 / ZeRO-3 shard them (unset under fsdp2, zero3: the "
                                 "model's dtype)"),
    "regime.prepare_kbit": ("", "qlora: `peft.prepare_model_for_kbit_training` (casts norms, embeddings, head to "
                                "fp32)"),
    "regime.quantize_experts": ("", "qlora 4-bit, MoE: the fused 3-D experts in 4-bit too, as axolotl's "
                                    "`quantize_moe_experts` does ([MoE](moe.md)); dequantized whole per layer in "
                                    "forward and kept for backward"),
    "regime.lora.r": ("", "r·(in+out) trainable params per targeted linear"),
    "regime.lora.alpha": ("", ""),
    "regime.lora.dropout": ("", "> 0: a dropped copy of each targeted linear's input (0: peft uses `nn.Identity`, "
                                "lora/layer.py `update_layer`)"),
    "regime.lora.target_modules": ("(e.g. `[q_proj, v_proj]`)", "which linears get adapters"),
    "regime.lora.dtype": ("", "dtype of the adapter weights (float32: peft's `autocast_adapter_dtype=True`)"),
    "regime.freeze.trainable_layers": ("(more than the model has: all)", "the last N decoder layers train"),
    "regime.freeze.trainable_modules": ("module names (e.g. `[lm_head]`)", "extra modules that train"),
    "regime.new_tokens": ("", "inference: `generate()` this many tokens (KV cache)"),
    "optimizer.name": ("", "state: sgd none, sgd_momentum 1 moment, adam / adamw / adamw_fused "
                           "(`torch.optim.AdamW(fused=True)`) 2 moments, adamw_8bit 8-bit moments, paged_adamw_8bit "
                           "8-bit moments in CUDA managed memory"),
    "optimizer.lr": ("", ""),
    "train.batch_size": ("", "activations ∝ batch"),
    "train.seq_len": ("", "activations ∝ seq (eager attention ∝ seq²); logits ∝ seq·vocab"),
    "train.steps": ("", "measured steps; the last is the steady state"),
    "train.warmup_steps": ("", "the first step also allocates the optimizer state"),
    "train.gradient_checkpointing": ("", "keeps only layer inputs; recomputes in backward"),
    "train.autocast": ("", "`torch.autocast` around forward"),
    "train.use_reentrant": ("", "which checkpointing implementation (`gradient_checkpointing_kwargs`; transformers' "
                                "default false)"),
    "train.loss": ("(chunked needs trl; liger: CUDA, not recipe trl)",
                   "full: (batch, seq, vocab) logits; chunked: TRL's fused LM head, a tile at a time; liger: Liger's "
                   "fused linear cross-entropy, no logits ([recipes](recipes.md))"),
    "train.max_grad_norm": ("(0: no clipping)", "> 0: `clip_grad_norm_` before each optimizer step"),
    "train.grad_accum_steps": ("", "micro-batches per optimizer step ([recipes](recipes.md))"),
    "train.packing": ("", "padding_free: one row of batch·seq tokens; packed / packed_4d: block-diagonal mask "
                          "(rows·seq² under sdpa; none with flash_attention_2) ([recipes](recipes.md))"),
    "train.doc_len": ("1..seq_len, with packing (unset: seq_len)", "tokens per packed sequence: whether a row "
                      "holds several (then the mask)"),
    "train.activation_offloading": ("(training, device cuda)", "TRL's `activation_offloading`: saved activations to "
                                    "the host in the forward, back in the backward ([recipes](recipes.md))"),
    "device": ("", ""),
    "seed": ("", ""),
    "output": ("path", "where the line is appended (a regular file or a new path)"),
    "max_memory": ("size like `2GiB`, `512MiB`, `80GB` (GiB = 2^30, GB = 10^9), {size_range}",
                   "CPU only: tracker budget; exceeding it records `oom`"),
    "parallel.strategy": ("", "which of weights / gradients / optimizer state divide by world_size "
                              "([parallel](parallel.md))"),
    "parallel.world_size": ("(> 1 needs a strategy)", "ranks, one GPU each; `profiler run` starts them through "
                                                      "torchrun"),
    "parallel.reshard_after_forward": ("(fsdp2)", "false keeps every layer's unsharded params from forward to "
                                                  "backward"),
    "parallel.param_dtype": ("(fsdp2)", "MixedPrecisionPolicy: dtype of the all-gathered params"),
    "parallel.reduce_dtype": ("(fsdp2)", "MixedPrecisionPolicy: dtype of the reduce-scatter"),
    "parallel.offload.params": ("(fsdp2: together with optimizer; zero3; CUDA)",
                                "sharded parameters (fsdp2: and their gradients) kept on the host instead of the "
                                "GPU"),
    "parallel.offload.optimizer": ("(fsdp2: together with params; zero1-3; CUDA)",
                                   "optimizer state kept on the host instead of the GPU"),
    "parallel.init": ("(meta: fsdp2, architecture-only models)",
                      "meta: each rank materialises only its shards (load peak ~ the shards); full: the whole model "
                      "on every rank first"),
    "moe.routing": ("", "MoE: the routing `simulate` assumes (grouped_mm: no byte depends on it); see [MoE](moe.md)"),
    "allocator.conf": ("PYTORCH_ALLOC_CONF syntax, e.g. `expandable_segments:True`",
                       "the caching allocator's reserve in the replay ([allocator](allocator.md)); unset: the "
                       "environment's"),
    "gpu_arch": ("", "`simulate`, device cuda: whose SDPA kernel rules apply (auto: sm80); `fit --gpu` sets it "
                     "from the preset ([simulate-cuda.md](simulate-cuda.md))"),
}

# defaults that are None in the model but stand for a behaviour
DEFAULT_TEXT = {
    "output": "./results/runs/<device-slug>.jsonl",
    "max_memory": f"CPU `run`: {DEFAULT_CPU_BUDGET_FRACTION:.0%} of available RAM".replace("%", " %"),
}


def _is_model(ann) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def leaves(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[tuple[str, typing.Any]]:
    """(dotted key, pydantic FieldInfo) of every leaf key, in the models' order."""
    out = []
    for name, field in model.model_fields.items():
        if _is_model(field.annotation):
            out += leaves(field.annotation, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", field))
    return out


def _power(n: int) -> str:
    """A bound as written in the table: 2^k where it is one (from 2^20 on), else the digits."""
    if n >= 2**20 and (n + 1) & n == 0:
        return f"2^{(n + 1).bit_length() - 1}−1"
    if n >= 2**20 and n & (n - 1) == 0:
        return f"{n} (2^{n.bit_length() - 1})"
    return str(n)


def _size(n: int) -> str:
    for unit, k in (("PiB", 50), ("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 2**k and n % 2**k == 0:
            return f"{n >> k} {unit}"
    return f"{n} byte" + ("s" if n != 1 else "")


def _bounds(field) -> str:
    m = {type(c): c for c in field.metadata}
    lo = m[at.Ge].ge if at.Ge in m else None
    hi = m[at.Le].le if at.Le in m else None
    if field.annotation is int and lo is not None and hi is not None:
        return f"{lo}..{_power(hi)}"
    parts = []
    if at.Gt in m:
        parts.append(f"> {m[at.Gt].gt}")
    if lo is not None:
        parts.append(f"≥ {lo}")
    if at.Lt in m:
        parts.append(f"< {m[at.Lt].lt}")
    if hi is not None:
        parts.append(f"≤ {hi}")
    if field.annotation is float:
        parts.insert(0, "finite")  # _Strict: allow_inf_nan=False
    return ", ".join(parts)


def _literal(ann) -> list:
    return list(typing.get_args(ann)) if typing.get_origin(ann) is typing.Literal else []


def allowed_from_type(field) -> str:
    """What the annotation and its constraints allow, in words ('' for free text)."""
    ann = field.annotation
    if ann is bool:
        return "bool"
    if _literal(ann):
        return ", ".join(str(v) for v in _literal(ann))
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = typing.get_args(ann)
        lits = [v for a in args for v in _literal(a)]
        if lits:
            words = ", ".join(f"`{v}`" if any(a is not type(None) and not _literal(a) for a in args) else str(v)
                              for v in lits)
            if any(typing.get_origin(a) is list for a in args):
                words += " or a list of names"
            if type(None) in args:
                words += " or unset"
            return words
        return ""
    if ann in (int, float):
        return _bounds(field)
    return ""


def _default(key: str, field) -> str:
    if key in DEFAULT_TEXT:
        return DEFAULT_TEXT[key]
    if field.default is PydanticUndefined:
        return "[]" if field.default_factory is list else "–"
    v = field.default
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def rows() -> list[tuple[str, str, str, str]]:
    """(key, default, allowed, memory effect) of every leaf key; KeyError naming a key NOTES lacks."""
    lo, hi = LIMITS["max_memory"]
    fill = {"archs": ", ".join(bundled_architectures()), "size_range": f"{_size(lo)} to {_size(hi)}"}
    out = []
    for key, field in leaves():
        if key not in NOTES:
            raise KeyError(f"{key}: no entry in scripts/config_table.py NOTES (allowed values, memory effect)")
        extra, effect = NOTES[key]
        generated = allowed_from_type(field)
        extra = extra.format(**fill)
        allowed = f"{generated} {extra}".strip() if generated else extra
        out.append((key, _default(key, field), allowed, effect))
    return out


def markdown() -> str:
    lines = ["| key | default | allowed | memory effect |", "|---|---|---|---|"]
    lines += [f"| `{k}` | {d} | {a} | {e} |" for k, d, a, e in rows()]
    return "\n".join(lines)


NOTE = "generated by `python scripts/config_table.py` from profiler/config.py"


def page_block(page: Path = PAGE) -> str:
    """The block between the markers of the page, as written (without the generated-by comment)."""
    return docblock.page_block(page, BEGIN, END)


def main(argv: list[str] | None = None) -> int:
    return docblock.main(argv, __doc__.splitlines()[0], {PAGE: markdown}, BEGIN, END, NOTE, PAGE.parents[1])


if __name__ == "__main__":
    sys.exit(main())
