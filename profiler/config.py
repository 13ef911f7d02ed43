"""Run configuration: YAML + dotted overrides, validated once on load, no side effects.

Every user mistake becomes a `ConfigError` whose message is one line naming the dotted key, the bad
value and the allowed values; the CLI prints it and exits 2 before anything is written.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = Path(__file__).resolve().parent / "models"  # package data: bundled architectures

Dtype = Literal["float32", "bfloat16", "float16"]


class ConfigError(ValueError):
    """A one-line, user-facing configuration error (exit code 2)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"

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

    r: StrictInt = Field(16, gt=0)
    alpha: StrictInt = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: Literal["all-linear"] | list[str] = "all-linear"


class FreezeSettings(_Strict):
    """Which parameters train under regime 'freeze': the last N decoder layers and/or named modules."""

    trainable_layers: StrictInt = Field(2, ge=0)
    trainable_modules: list[str] = Field(default_factory=list)


class RegimeConfig(_Strict):
    """Which parameters train and how the base weights are stored."""

    kind: Literal["full", "freeze", "lora", "qlora", "inference"] = "full"
    bits: Literal[4, 8] = 4  # qlora only: 4-bit (nf4/fp4) or 8-bit (LLM.int8) base weights
    quant_type: Literal["nf4", "fp4"] = "nf4"  # qlora 4-bit only
    double_quant: bool = True  # qlora 4-bit: quantize the absmax constants too (saves ~0.4 bit/param)
    compute_dtype: Dtype = "bfloat16"  # qlora 4-bit: dtype of the dequantized weight in matmuls
    prepare_kbit: bool = True  # qlora: peft.prepare_model_for_kbit_training (upcasts norms/head to fp32)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    freeze: FreezeSettings = Field(default_factory=FreezeSettings)
    new_tokens: StrictInt = Field(0, ge=0)  # inference: >0 runs generate() with a KV cache of this many tokens

    @property
    def label(self) -> str:
        return f"qlora{self.bits}" if self.kind == "qlora" else self.kind


class OptimizerConfig(_Strict):
    """Optimizer; 8-bit and paged variants come from bitsandbytes (paged state lives in CUDA managed memory)."""

    name: Literal["sgd", "sgd_momentum", "adam", "adamw", "adamw_8bit", "paged_adamw_8bit"] = "adamw"
    lr: float = Field(1e-4, gt=0)


class TrainConfig(_Strict):
    """Batch shape and step loop."""

    batch_size: StrictInt = Field(1, gt=0)
    seq_len: StrictInt = Field(512, gt=0)
    steps: StrictInt = Field(3, gt=0)  # measured steps after warm-up; the last one is the steady state
    warmup_steps: StrictInt = Field(1, ge=0)  # the first step allocates optimizer state lazily
    gradient_checkpointing: bool = False  # trades compute for activation memory
    autocast: Literal["none", "bf16", "fp16"] = "none"


class RunConfig(_Strict):
    """One measured run."""

    model: ModelConfig
    regime: RegimeConfig = Field(default_factory=RegimeConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    device: Literal["cuda", "cpu"] = "cuda"
    seed: StrictInt = 0
    output: str | None = None  # JSONL file; default results/runs/<device-slug>.jsonl
    max_memory: str | int | None = None  # CPU only: tracker budget like "2GiB"; exceeding it records an oom

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.max_memory is not None:
            try:
                parse_bytes(str(self.max_memory))  # a bare YAML number has no unit: rejected too
            except ValueError as exc:
                raise ValueError(f"max_memory: {exc}") from None
        if self.optimizer.name.startswith("paged") and self.device != "cuda":
            raise ValueError("optimizer.name: paged_adamw_8bit needs device: cuda (CUDA managed memory)")
        return self

    def config_hash(self) -> str:
        """Identity of a run for resume/dedup: everything but where the result is written."""
        data = self.model_dump(mode="json", exclude={"output"})
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str | int) -> int:
    """'80GiB' -> 85899345920; GiB = 2^30, GB = 10^9."""
    if isinstance(text, int):
        return text
    s = str(text).strip().lower().replace(" ", "")
    num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(num):]
    try:
        value = float(num)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or unit == "" or value < 0:  # a bare number is ambiguous (bytes? GiB? GB?)
        raise ValueError(f"{text!r} is not a size; use a number with a unit like 512MiB, 2GiB, 80GB")
    return int(value * _UNITS[unit])


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
    if e["type"] == "literal_error":
        allowed = e.get("ctx", {}).get("expected", "")
        return f"{key}: {value!r} is not allowed; allowed: {allowed}"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "value_error":
        return msg if not loc else f"{key}: {msg}"  # whole-config checks name their own key
    return f"{key}: {value!r} is invalid: {msg}"


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(part)
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _set_dotted(data: dict, dotted: str, raw: str) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: cannot override inside a non-mapping value")
    node[parts[-1]] = yaml.safe_load(raw) if raw != "" else None


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), base: dict | None = None
                ) -> RunConfig:
    """Read a YAML file (or `base` dict), apply `key.sub=value` overrides, validate; ConfigError on any problem."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{p}: malformed YAML{where}: {getattr(exc, 'problem', exc)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of keys (model, regime, optimizer, train, ...)")
        data.update(loaded)
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r}: use key.sub=value, e.g. train.batch_size=4")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), raw)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, data)) from None
