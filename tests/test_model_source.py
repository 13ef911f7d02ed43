"""MODEL as typed: bundled name, config.json, checkpoint dir, Hub id (cache first, bounded network)."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from profiler.config import MODELS_DIR, ConfigError
from profiler.model_source import resolve_model


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """An empty HF cache and a Hub endpoint that never answers (a blackholed address: connect hangs)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "ENDPOINT", "https://10.255.255.1")
    return tmp_path / "hf" / "hub"


def test_bundled_name_and_config_json_and_checkpoint_dir(tmp_path):
    assert resolve_model("llama-3-8b").arch == "llama-3-8b"
    src = tmp_path / "my-model"
    src.mkdir()
    shutil.copy(MODELS_DIR / "tiny-llama.json", src / "config.json")
    by_dir, by_file = resolve_model(str(src)), resolve_model(str(src / "config.json"))
    assert by_dir.arch == by_file.arch == str(src / "config.json")
    assert by_dir.name == by_file.name == "my-model"


def test_hub_id_without_network_fails_fast_with_one_line(no_hub):
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        resolve_model("meta-llama/Llama-3.1-8B")
    assert time.perf_counter() - t0 < 2.0
    msg = str(err.value)
    assert "\n" not in msg and "cannot be reached" in msg and "config.json" in msg


def test_hub_offline_env_is_honoured(no_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set; give the model's config.json"):
        resolve_model("meta-llama/Llama-3.1-8B")


def test_hub_id_read_from_the_local_cache(no_hub):
    """The cache layout huggingface_hub reads with local_files_only=True: refs/main -> snapshots/<rev>/."""
    repo = no_hub / "models--someone--tiny"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    shutil.copy(MODELS_DIR / "tiny-llama.json", snap / "config.json")
    src = resolve_model("someone/tiny")
    assert src.how == "Hub (local cache)" and src.arch == str(snap / "config.json") and src.name == "someone/tiny"


def test_non_causal_config_is_refused(tmp_path):
    bert = tmp_path / "config.json"
    bert.write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"], "hidden_size": 64}))
    with pytest.raises(ConfigError, match=r"architectures \['BertForMaskedLM'\] are not causal LMs"):
        resolve_model(str(bert))
    t5 = tmp_path / "t5.json"
    t5.write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ConfigError, match="model_type 't5' is not a causal language model"):
        resolve_model(str(t5))


def test_typo_in_a_bundled_name():
    with pytest.raises(ConfigError, match="did you mean 'llama-3-8b'"):
        resolve_model("llama-3-8")
