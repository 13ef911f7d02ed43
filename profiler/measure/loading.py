"""Build the model a run measures: bundled architecture with random weights, local checkpoint, or Hub id.

Memory does not depend on weight values, so bundled architectures get random weights. Unquantized builds
happen directly on the target device in the target dtype (seconds for 7B on a GPU). Quantized builds go
through transformers' `BitsAndBytesConfig` + `from_pretrained`, the path users take with real checkpoints:
the random weights are written once as a safetensors checkpoint to a cache dir, tensor by tensor (never
the whole model in host memory), and loaded from there, so the measured modules are what a user gets.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

from profiler.config import ConfigError, ModelConfig, RunConfig, architecture_only
from profiler.hf_config import (  # noqa: F401 - re-exported: what this module's callers imported from here
    SIZE_KEYS,
    check_causal_lm,
    check_model_source,
    resolve_attn_implementation,
    resolve_hf_config,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SHARD_BYTES = 2 * 2**30


@dataclass
class LoadedModel:
    model: torch.nn.Module
    hf_config: PretrainedConfig
    source: str  # "arch:<name>", a path, or "hub:<id>"


def cache_dir() -> Path:
    """Where random-weight checkpoints live: $LLM_MEMPROF_CACHE, else $XDG_CACHE_HOME/llm-memprof, else
    ~/.cache/llm-memprof. Shared by every checkout on the machine (the key holds no path)."""
    if os.environ.get("LLM_MEMPROF_CACHE"):
        return Path(os.environ["LLM_MEMPROF_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llm-memprof"


def bnb_config(cfg: RunConfig):
    """transformers BitsAndBytesConfig for qlora, None otherwise."""
    rg = cfg.regime
    if rg.kind != "qlora":
        return None
    from transformers import BitsAndBytesConfig

    if rg.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=rg.quant_type,
        bnb_4bit_use_double_quant=rg.double_quant,
        bnb_4bit_compute_dtype=DTYPES[rg.compute_dtype],
        bnb_4bit_quant_storage=getattr(torch, rg.quant_storage),
    )


_BLOCK = 1 << 20


@functools.cache
def _random_block(dtype: torch.dtype) -> torch.Tensor:
    return (torch.randn(_BLOCK, generator=torch.Generator().manual_seed(0)) * 0.02).to(dtype)


def _init_tensor(name: str, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """Plausible values, fast, on the host: N(0, 0.02) matrices (a 1M-value random block tiled: values do
    not change memory, and memcpy speed keeps a 70B checkpoint to minutes), ones for norm weights,
    zeros for biases."""
    if len(shape) == 1 and "norm" in name or name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
        return torch.ones(shape, dtype=dtype)
    if name.endswith(".bias") or len(shape) <= 1:
        return torch.zeros(shape, dtype=dtype)
    n = shape.numel()
    block = _random_block(dtype)
    return block.repeat(-(-n // _BLOCK))[:n].reshape(shape).clone()


def random_checkpoint(hf_config: PretrainedConfig, dtype: torch.dtype, key: str) -> Path:
    """Write (once) a safetensors checkpoint with random weights for `hf_config`; return its directory.

    Safe when several runs start at once on an empty cache: writers take a lock file per key (the others
    wait, then find the checkpoint), write into a temporary directory inside the cache and rename it into
    place atomically, so a reader never sees a partial checkpoint. A writer that died left only a
    `.tmp-*` directory, which the next writer of that key removes."""
    root = cache_dir() / "checkpoints"
    target = root / key
    if (target / "config.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if (target / "config.json").exists():  # another run wrote it while we waited
            return target
        for stale in root.glob(f".tmp-{key}-*"):  # left by a writer that died mid-write
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=root))
        try:
            _write_checkpoint(hf_config, dtype, tmp, target)
            tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from its other users
            try:
                tmp.rename(target)  # atomic; fails if a writer without the lock (older code) won
            except OSError:
                if not (target / "config.json").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # the loser of a rename race discards its copy
    return target


def _write_checkpoint(hf_config: PretrainedConfig, dtype: torch.dtype, folder: Path, target: Path) -> None:
    """Shards + index + config.json (written last) into `folder`, tensor by tensor."""
    from safetensors.torch import save_file

    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    seen: set[int] = set()
    entries = []
    for name, t in meta.state_dict(keep_vars=True).items():
        if id(t) in seen:  # tied weights are stored once, as a real checkpoint does
            continue
        seen.add(id(t))
        entries.append((name, t.shape))
    del meta
    total = sum(shape.numel() for _, shape in entries) * torch.empty((), dtype=dtype).element_size()
    if total > 2**30:
        print(f"writing a random-weight checkpoint once ({total / 2**30:.1f} GiB) to {target}",
              file=sys.stderr, flush=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    weight_map: dict[str, str] = {}
    for name, shape in entries:
        t = _init_tensor(name, shape, dtype)
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            _write_shard(shards[-1], folder, len(shards), save_file)
            shards[-1] = {}
            shards.append({})
            size = 0
        shards[-1][name] = t
        weight_map[name] = len(shards)
        size += nbytes
    n = len(shards)
    _write_shard(shards[-1], folder, n, save_file)
    names = {i: f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)}
    for i in range(1, n + 1):
        (folder / f"shard-{i}.safetensors").rename(folder / names[i])
    index = {"metadata": {}, "weight_map": {k: names[v] for k, v in weight_map.items()}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    cfg = _canonical_config(hf_config)
    cfg["dtype"] = str(dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(cfg))


def _write_shard(tensors: dict, folder: Path, index: int, save_file) -> None:
    if tensors:
        save_file(tensors, str(folder / f"shard-{index}.safetensors"), metadata={"format": "pt"})


def prepare_source(cfg: RunConfig) -> None:
    """Write the random-weight checkpoint a quantized load needs, *before* the measured run starts, so
    neither its host work nor any device memory shows in the load phase or the NVML baseline."""
    if bnb_config(cfg) is not None and architecture_only(cfg.model):
        hf_config = resolve_hf_config(cfg.model)
        random_checkpoint(hf_config, DTYPES[cfg.model.dtype], _checkpoint_key(cfg.model, hf_config))


def check_cache(cfg: RunConfig) -> None:
    """Before a run: a quantized load of a bare architecture needs the checkpoint cache. One that cannot
    hold the checkpoint (a file where the folder should be, not writable while the checkpoint is missing)
    is a ConfigError naming the variable that put it there, not an error line after the run started."""
    if bnb_config(cfg) is None or not architecture_only(cfg.model):
        return
    var = next((v for v in ("LLM_MEMPROF_CACHE", "XDG_CACHE_HOME") if os.environ.get(v)), "HOME")
    root = cache_dir() / "checkpoints"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{var}: checkpoint cache {str(root)!r} cannot be created ({exc.strerror}); allowed: "
                          "a writable directory") from None
    if not os.access(root, os.W_OK | os.X_OK):
        hf_config = resolve_hf_config(cfg.model)
        if not (root / _checkpoint_key(cfg.model, hf_config) / "config.json").exists():
            raise ConfigError(f"{var}: checkpoint cache {str(root)!r} is not writable and holds no checkpoint "
                              "for this model; allowed: a writable directory")


def _checkpoint_key(mc: ModelConfig, hf_config: PretrainedConfig) -> str:
    """`<model_type>-<dtype>-<digest>`: the digest covers the architecture's content, the dtype and the
    versions of the libraries that shape the file, never a path (two checkouts share one copy)."""
    model_type = re.sub(r"[^A-Za-z0-9_.-]", "_", str(hf_config.model_type or "model"))
    return f"{model_type}-{mc.dtype}-{_config_digest(hf_config, mc.dtype)}"


def load_model(cfg: RunConfig) -> LoadedModel:
    """Build the run's model on cfg.device, quantized per the regime (on the meta device for parallel.init meta)."""
    mc = cfg.model
    hf_config = resolve_hf_config(mc)
    dtype = DTYPES[mc.dtype]
    quant = bnb_config(cfg)
    common = {"dtype": dtype, "attn_implementation": resolve_attn_implementation(mc, hf_config)}
    device_map = {"": 0} if cfg.device == "cuda" else {"": "cpu"}
    arch_only = architecture_only(mc)
    if arch_only and quant is None:
        # parallel.init meta (fsdp2): parameters stay on meta until fully_shard has split them, then each rank
        # materialises its own shards (profiler.measure.parallel.materialize_shards)
        with torch.device("meta" if cfg.parallel_init == "meta" else cfg.device):
            model = AutoModelForCausalLM.from_config(hf_config, **common)
        return LoadedModel(model, model.config, f"arch:{mc.name}")  # model.config: attention as resolved
    if arch_only:
        src = str(random_checkpoint(hf_config, dtype, _checkpoint_key(mc, hf_config)))
        label = f"arch:{mc.name}"
    else:
        src = mc.path or mc.hub
        label = mc.path or f"hub:{mc.hub}"
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=quant, device_map=device_map, **common)
    if cfg.regime.quantize_experts:  # axolotl's quantize_moe_experts (profiler.measure.moe_quant)
        from profiler.measure.moe_quant import quantize_experts

        quantize_experts(model, cfg.regime.quant_type, cfg.regime.double_quant)
    return LoadedModel(model, model.config, label)


def _canonical_config(hf_config: PretrainedConfig) -> dict:
    """The architecture as content: config.json's keys without where it was read from or which
    transformers wrote it (`_name_or_path`, `transformers_version`, other private keys)."""
    return {k: v for k, v in hf_config.to_dict().items() if not k.startswith("_") and k != "transformers_version"}


def _library_versions() -> dict[str, str]:
    import safetensors
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "safetensors": safetensors.__version__}


def _config_digest(hf_config: PretrainedConfig, dtype: str = "") -> str:
    blob = json.dumps({"config": _canonical_config(hf_config), "dtype": dtype, "versions": _library_versions()},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
