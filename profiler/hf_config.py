"""A model's Hugging Face config, resolved and checked: `model.arch` (a bundled name or a config.json),
`model.path` (a checkpoint directory or config.json) or `model.hub` (an id) -> a PretrainedConfig that
AutoModelForCausalLM can build, or a one-line ConfigError naming the field.

Shared vocabulary: the measuring room (loading), the fake-tensor room (simulate), the formulas (arch) and
fit all read a model's architecture through here, none of them through another's room. transformers is
imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from profiler.config import MODELS_DIR, ConfigError, ModelConfig


def resolve_hf_config(mc: ModelConfig):
    """The HF config of the model, without loading any weights, checked to be a causal LM that
    transformers can build: anything else is a one-line ConfigError naming the field (exit 2)."""
    if mc.arch:
        field = "model.arch"
        src = mc.arch if mc.arch.endswith(".json") else str(MODELS_DIR / f"{mc.arch}.json")
    else:
        field = "model.path" if mc.path else "model.hub"
        src = mc.path or mc.hub
    if not mc.hub:
        check_config_json(field, Path(src))
    from transformers import AutoConfig

    try:
        hf_config = AutoConfig.from_pretrained(src)
    except Exception as exc:  # OSError, ValueError, KeyError, TypeError: transformers' words for a bad config
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{field}: cannot read a model config from {src!r} ({why})") from None
    check_causal_lm(hf_config, field, src)
    return hf_config


def resolve_attn_implementation(mc: ModelConfig, hf_config) -> str:
    """The attention implementation a run uses. `auto` is what transformers itself picks for the model
    (sdpa where the model class supports it, else eager: Gemma-2's soft-capping has no SDPA path, see
    transformers 5.23 models/gemma2/modeling_gemma2.py `Gemma2PreTrainedModel._supports_sdpa = False`); an
    explicit choice the model class does not support is a ConfigError naming the ones it does."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(hf_config)]
    except KeyError:  # a config class transformers does not map (remote code): transformers' default, sdpa
        return "sdpa" if mc.attn_implementation == "auto" else mc.attn_implementation
    supported = ["eager"] + [name for name, flag in (("sdpa", "_supports_sdpa"),
                                                      ("flash_attention_2", "_supports_flash_attn"))
                             if getattr(cls, flag, False)]
    impl = mc.attn_implementation
    if impl == "auto":
        return "sdpa" if "sdpa" in supported else "eager"
    if impl not in supported:
        raise ConfigError(f"model.attn_implementation: {impl!r} is not supported by {cls.__name__}; "
                          f"allowed: auto, {', '.join(supported)}")
    return impl


# transformers 5.23: the model types whose causal-LM class has no SDPA path (`_supports_sdpa = False`:
# models/gemma2/modeling_gemma2.py, models/gpt_oss/modeling_gpt_oss.py). Lets `config_hash` resolve `auto` for a
# bundled architecture from its config.json alone, without importing torch and the modeling code (5 s in a light
# process such as a sweep runner); tests/test_config_attention.py checks it against the classes for every bundled
# architecture, and any other source takes the full resolution.
NO_SDPA_MODEL_TYPES = frozenset({"gemma2", "gpt_oss"})


def _bundled_model_type(arch: str | None, path: str | None) -> str | None:
    """The model_type of a bundled architecture's config.json; None for any other source."""
    if not arch or path or arch.endswith(".json") or not (MODELS_DIR / f"{arch}.json").is_file():
        return None
    try:
        return json.loads((MODELS_DIR / f"{arch}.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None


@functools.cache
def _auto_attention(arch: str | None, path: str | None) -> str:
    model_type = _bundled_model_type(arch, path)
    if model_type:
        return "eager" if model_type in NO_SDPA_MODEL_TYPES else "sdpa"
    mc = ModelConfig(arch=arch, path=path)
    return resolve_attn_implementation(mc, resolve_hf_config(mc))


def hashed_attention(mc: ModelConfig) -> str:
    """The attention implementation as `RunConfig.config_hash` sees it: `auto` resolved to what it picks for a
    local source (a bundled architecture, a config.json, a checkpoint), so `auto` on Llama hashes like the
    explicit `sdpa` the shipped configs used to say, and `auto` on Gemma-2 like `eager`. A Hub id keeps `auto`
    (resolving it would need the network), as does a source whose config cannot be read (the run reports that)."""
    if mc.attn_implementation != "auto" or mc.hub:
        return mc.attn_implementation
    try:
        return _auto_attention(mc.arch, mc.path)
    except ConfigError:
        return "auto"


# Architecture sizes that must be positive integers where a config.json gives them.
SIZE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
             "intermediate_size", "vocab_size", "max_position_embeddings", "n_positions", "n_embd", "n_layer",
             "n_head", "n_inner")


def check_config_json(field: str, path: Path) -> None:
    """A local config.json (or a checkpoint directory holding one) is UTF-8 JSON: an object with a
    model_type. Checked here so the message says what is wrong, not transformers' 40 lines."""
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{field}: directory {str(path)!r} has no config.json; allowed: a checkpoint "
                              "directory with config.json, or a config.json file")
        path = path / "config.json"
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{field}: cannot read {str(path)!r} ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{field}: {str(path)!r} is not UTF-8 text (byte at offset {exc.start})") from None
    if not text.strip():
        raise ConfigError(f"{field}: {str(path)!r} is empty; allowed: a Hugging Face config.json")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{field}: {str(path)!r} is not JSON (line {exc.lineno}, column {exc.colno}: "
                          f"{exc.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{field}: {str(path)!r} holds a JSON {type(data).__name__}; allowed: a JSON object "
                          "(a Hugging Face config.json)")
    if not isinstance(data.get("model_type"), str):
        raise ConfigError(f"{field}: {str(path)!r} has no model_type; allowed: a Hugging Face config.json "
                          "with a model_type such as llama, mistral, qwen2, gpt2")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if data["model_type"] not in CONFIG_MAPPING_NAMES:
        import difflib

        import transformers

        hint = difflib.get_close_matches(data["model_type"], CONFIG_MAPPING_NAMES, n=1)
        raise ConfigError(f"{field}: {str(path)!r} has model_type {data['model_type']!r}, unknown to transformers "
                          f"{transformers.__version__}" + (f"; did you mean {hint[0]!r}?" if hint else ""))


def check_causal_lm(hf_config, field: str, src: str) -> None:
    """What every command (run, simulate, estimate, sweep) needs of a model config: a class that
    AutoModelForCausalLM builds (decoder-only), with positive sizes."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL

    if hf_config.model_type not in CAUSAL:
        raise ConfigError(
            f"{field}: {src!r} is a {hf_config.model_type!r} model ({type(hf_config).__name__}), which "
            "AutoModelForCausalLM cannot build; allowed: decoder-only (causal LM) model types such as "
            "llama, mistral, qwen2, gpt2")
    text = hf_config.get_text_config()
    for key in SIZE_KEYS:
        value = getattr(text, key, None)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{field}: {src!r} has {key} = {value!r}; allowed: a positive integer")


@functools.cache
def _checked(arch: str | None, path: str | None) -> None:
    resolve_hf_config(ModelConfig(arch=arch, path=path))


def check_model_source(mc: ModelConfig) -> None:
    """Validation-time check of a user-supplied local config.json or checkpoint (cached per source), for
    commands that do not build the model themselves (sweep). Bundled architectures are known good and
    Hub ids need the network, so both are left to the run."""
    if mc.user_supplied:
        _checked(mc.arch, mc.path)


# rope types whose `factor` stretches the positions the model was trained on (transformers
# modeling_rope_utils: _compute_linear_scaling_rope_parameters, _compute_dynamic_ntk_parameters,
# _compute_yarn_parameters, _compute_llama3_parameters, _compute_longrope_parameters)
SCALED_ROPE = ("linear", "dynamic", "yarn", "llama3", "longrope")


def position_limit(hf_config) -> tuple[int, str] | None:
    """(the longest sequence the config allows, what says so), or None where it sets no limit. GPT-2 style
    models have a learned table of n_positions rows (an index beyond it is an error); rotary models give
    max_position_embeddings, stretched by a rope scaling factor: factor x original_max_position_embeddings
    where the config's rope parameters have one (yarn, llama3, linear, dynamic NTK, longrope; transformers
    5 keeps them in `rope_parameters`, nested per layer type for models like Gemma-3)."""
    text = hf_config.get_text_config()
    n = getattr(text, "n_positions", None)
    if isinstance(n, int) and n > 0:
        return n, "n_positions"
    mpe = getattr(text, "max_position_embeddings", None)
    if not isinstance(mpe, int) or mpe <= 0:
        return None
    limit, why = mpe, "max_position_embeddings"
    rope = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
    groups = [rope] if "rope_type" in rope or "type" in rope or "factor" in rope else \
        [v for v in rope.values() if isinstance(v, dict)]
    for rp in groups:
        kind, factor = rp.get("rope_type", rp.get("type")), rp.get("factor")
        if kind in SCALED_ROPE and isinstance(factor, int | float) and factor > 1:
            stretched = int(factor * (rp.get("original_max_position_embeddings") or mpe))
            if stretched > limit:
                limit, why = stretched, (f"{kind} rope scaling: factor {factor:g} x "
                                         f"{rp.get('original_max_position_embeddings') or mpe} positions")
    return limit, why


def check_seq_len(mc: ModelConfig, seq_len: int, field: str = "train.seq_len") -> None:
    """ConfigError where `seq_len` is beyond the positions the model's config allows (position_limit)."""
    found = position_limit(resolve_hf_config(mc))
    if found is not None and seq_len > found[0]:
        raise ConfigError(f"{field}: {seq_len} is beyond the positions of {mc.name!r}; allowed: 1..{found[0]} "
                          f"({found[1]})")
