"""MODEL as a user types it -> the `model.arch` a run config takes: a bundled name, a config.json, a checkpoint
directory, or a Hub id (only its config.json is read: the local HF cache first, then the Hub with a short
bound, so no network means one line in about a second, not huggingface_hub's ~26 s of retries).

Nothing here imports torch or transformers: a bad MODEL is answered before the heavy imports.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from profiler.config import ConfigError, bundled_architectures
from profiler.hf_config import check_config_json

REACH_TIMEOUT_S = 1.2  # one HTTPS request to the Hub endpoint; beyond it the Hub counts as unreachable
DOWNLOAD_TIMEOUT_S = 10  # config.json is a few KiB once the Hub answered


@dataclass(frozen=True)
class ModelSource:
    """Where the architecture comes from: `arch` goes into model.arch; `name` is what the user typed."""

    name: str
    arch: str  # bundled name or a config.json path
    how: str  # "bundled", "config.json", "checkpoint directory", "Hub (local cache)", "Hub (downloaded)"


def _hint(model: str) -> str:
    return (f"give the model's config.json instead: download it from https://huggingface.co/{model}/blob/main/"
            f"config.json and run `fit path/to/config.json`")


def _reachable(url: str, timeout: float = REACH_TIMEOUT_S) -> bool:
    """Does the endpoint answer an HTTPS request within `timeout` (name lookup and TLS included)? A bare TCP
    connect is not enough: some networks accept any connection and then never answer."""
    import urllib.error
    import urllib.request

    ok: list[bool] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            ok.append(True)
        except urllib.error.HTTPError:  # any HTTP answer means the Hub is there
            ok.append(True)
        except (OSError, ValueError):
            ok.append(False)

    t = threading.Thread(target=probe, daemon=True)  # getaddrinfo has no timeout of its own
    t.start()
    t.join(timeout + 0.3)
    return bool(ok and ok[0])


def check_cache_dirs() -> None:
    """HF_HOME / HF_HUB_CACHE (huggingface_hub.constants) name folders: one that exists as a file is a ConfigError
    naming the variable (huggingface_hub itself fails with NotADirectoryError on its token file)."""
    from huggingface_hub import constants

    for var, path in (("HF_HOME", constants.HF_HOME), ("HF_HUB_CACHE", constants.HF_HUB_CACHE)):
        p = Path(path)
        bad = next((q for q in (p, *p.parents) if q.exists() and not q.is_dir()), None)
        if bad is not None:
            raise ConfigError(f"{var}: {str(p)!r} is not a directory ({str(bad)!r} is a file); allowed: a directory "
                              f"for the Hugging Face cache, or unset {var}")


def hub_config(repo_id: str) -> tuple[Path, str]:
    """config.json of a Hub model: from the local HF cache, else downloaded (if the Hub answers quickly)."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    check_cache_dirs()
    try:
        return Path(hf_hub_download(repo_id, "config.json", local_files_only=True)), "Hub (local cache)"
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        pass
    except OSError as exc:  # a cache file or folder that cannot be read (permissions, a file in a folder's place)
        raise ConfigError(f"model {repo_id!r}: the Hugging Face cache cannot be read ({exc.strerror}: "
                          f"{exc.filename}); fix it, or point HF_HOME at a directory") from None
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE") or constants.HF_HUB_OFFLINE
    if offline:
        raise ConfigError(f"model {repo_id!r}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                          + _hint(repo_id))
    if not _reachable(constants.ENDPOINT):
        raise ConfigError(f"model {repo_id!r}: not in the local Hugging Face cache and {constants.ENDPOINT} "
                          f"cannot be reached; " + _hint(repo_id))
    try:
        path = hf_hub_download(repo_id, "config.json", etag_timeout=DOWNLOAD_TIMEOUT_S)
    except GatedRepoError:
        raise ConfigError(f"model {repo_id!r}: gated on the Hub (log in with `hf auth login` after accepting its "
                          f"licence), or " + _hint(repo_id)) from None
    except RepositoryNotFoundError:
        raise ConfigError(f"model {repo_id!r}: no such model on the Hub (or it is private); allowed: a bundled "
                          f"name ({', '.join(bundled_architectures())}), a config.json, a checkpoint directory "
                          f"or a Hub id") from None
    except EntryNotFoundError:
        raise ConfigError(f"model {repo_id!r}: the Hub repository has no config.json") from None
    except (HfHubHTTPError, OSError) as exc:
        raise ConfigError(f"model {repo_id!r}: cannot read config.json from the Hub ({str(exc).splitlines()[0]}); "
                          + _hint(repo_id)) from None
    return Path(path), "Hub (downloaded)"


def check_causal(config_json: Path, name: str) -> None:
    """Reject what is not a readable config.json (not UTF-8, not JSON, no model_type: hf_config's checks) and
    configs that are not causal LMs (e.g. BERT's masked LM, T5) before anything is built."""
    check_config_json(f"model {name!r}", config_json)
    data = json.loads(config_json.read_bytes().decode("utf-8"))  # checked just above: a JSON object
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL

    mt = data["model_type"]
    if mt not in CAUSAL:
        raise ConfigError(f"model {name!r}: model_type {mt!r} is not a causal language model; allowed: a "
                          f"model_type with an AutoModelForCausalLM class (llama, mistral, qwen2, gpt2, ...)")
    archs = data.get("architectures") or []
    causal_classes = set(CAUSAL.values())
    if archs and not any(a in causal_classes or a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise ConfigError(f"model {name!r}: architectures {archs} are not causal LMs (fit predicts causal-LM "
                          f"fine-tuning); allowed: a *ForCausalLM architecture")


def resolve_model(model: str) -> ModelSource:
    """Bundled name, path to a config.json or a checkpoint directory, or a Hub id (owner/name)."""
    if model in bundled_architectures():
        return ModelSource(model, model, "bundled")
    p = Path(model).expanduser()
    if p.is_dir():
        cfg = p / "config.json"
        if not cfg.is_file():
            raise ConfigError(f"model {model!r}: directory has no config.json")
        check_causal(cfg, model)
        return ModelSource(p.resolve().name, str(cfg), "checkpoint directory")
    if p.is_file():
        check_causal(p, model)
        name = p.parent.name if p.name == "config.json" and p.parent.name else p.stem
        return ModelSource(name, str(p), "config.json")
    if model.endswith(".json") or model.startswith((".", "/", "~")) or model.count("/") != 1:
        import difflib

        close = difflib.get_close_matches(model, bundled_architectures(), n=1)
        raise ConfigError(f"model {model!r}: not a bundled name, an existing config.json or directory, nor a Hub id "
                          f"(owner/name); bundled: {', '.join(bundled_architectures())}"
                          + (f"; did you mean {close[0]!r}?" if close else ""))
    path, how = hub_config(model)
    check_causal(path, model)
    return ModelSource(model, str(path), how)
