"""The `parallel:` section: bad combinations get one line and exit 2; one-process hashes do not move."""

from __future__ import annotations

import pytest
from conftest import CONFIGS

from profiler.cli import main
from profiler.config import ConfigError, load_config

TINY = str(CONFIGS / "tiny_full.yaml")


@pytest.mark.parametrize("overrides, words", [
    (["parallel.world_size=2"], ["parallel.world_size", "2", "ddp, fsdp2"]),
    (["parallel.strategy=ddp", "parallel.offload.optimizer=true"], ["parallel.offload", "ddp", "fsdp2"]),
    (["parallel.strategy=zero2", "parallel.offload.params=true"], ["parallel.offload.params", "zero3"]),
    (["parallel.strategy=fsdp2", "parallel.offload.params=true"], ["parallel.offload", "both"]),
    (["parallel.strategy=ddp", "parallel.param_dtype=float32"], ["parallel.param_dtype", "fsdp2"]),
    (["parallel.strategy=ddp", "parallel.reshard_after_forward=false"], ["reshard_after_forward", "fsdp2"]),
    (["parallel.strategy=fsdp2", "regime.kind=qlora", "regime.bits=8"],
     ["parallel.strategy", "qlora8", "fsdp2 (4-bit)"]),
    (["parallel.strategy=zero2", "regime.kind=qlora"], ["parallel.strategy", "zero2", "fsdp2 (4-bit), zero3 (4-bit)"]),
    (["parallel.strategy=zero3", "regime.kind=qlora", "regime.bits=8"],
     ["parallel.strategy", "qlora8", "weight.CB", "zero3 (4-bit)"]),
    (["parallel.strategy=zero3", "regime.kind=qlora", "regime.quant_storage=uint8"],
     ["regime.quant_storage", "uint8", "allowed with zero3: bfloat16"]),
    (["parallel.strategy=zero3", "regime.kind=qlora", "regime.quant_storage=float32"],
     ["regime.quant_storage", "float32", "rewriting the packed", "allowed: bfloat16"]),
    (["parallel.strategy=zero3", "regime.kind=qlora", "device=cuda", "parallel.offload.optimizer=true"],
     ["parallel.offload", "zero3 + qlora", "offload false"]),
    (["parallel.strategy=fsdp2", "regime.kind=qlora", "regime.quant_storage=uint8"],
     ["regime.quant_storage", "uint8", "bfloat16"]),
    (["parallel.strategy=fsdp2", "regime.kind=qlora", "parallel.init=meta"], ["parallel.init", "qlora", "auto, full"]),
    (["parallel.strategy=fsdp2", "optimizer.name=adamw_8bit"], ["optimizer.name", "adamw"]),
    (["parallel.strategy=fsdp2", "regime.kind=inference"], ["inference", "none"]),
    (["parallel.strategy=fsdp2", "parallel.world_size=0"], ["parallel.world_size", "0"]),
    (["parallel.strategy=tp"], ["parallel.strategy", "'tp'", "zero3"]),
    (["parallel.stratgy=ddp"], ["unknown key", "did you mean 'strategy'"]),
    (["parallel.strategy=zero3", "parallel.offload.params=true", "parallel.offload.optimizer=true"],
     ["parallel.offload", "device cuda"]),
])
def test_bad_parallel_config_is_one_line_exit_2(overrides, words, capsys, tmp_path):
    _assert_refused(overrides, words, capsys, tmp_path)


def _assert_refused(overrides, words, capsys, tmp_path) -> None:
    """`run` with these overrides: exit 2, one line naming `words`, no traceback, no output file."""
    out = tmp_path / "o.jsonl"
    assert main(["run", TINY, *overrides, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert all(w in err for w in words), err
    assert not out.exists()


def test_default_parallel_keeps_the_hash_of_one_process_configs():
    # Hashes computed before `parallel` existed: resume/dedup of existing result files must still match.
    assert load_config(TINY).config_hash() == "3f0ce8d2ea8bedae"
    assert load_config(CONFIGS / "llama7b_qlora4.yaml").config_hash() == "62b2b84553cca126"
    assert load_config(TINY, ["parallel.world_size=1", "parallel.strategy=none"]).config_hash() == "3f0ce8d2ea8bedae"


def test_parallel_settings_change_the_hash():
    hashes = {load_config(TINY, ov).config_hash() for ov in (
        [], ["parallel.strategy=ddp"], ["parallel.strategy=fsdp2"],
        ["parallel.strategy=fsdp2", "parallel.world_size=8"],
        ["parallel.strategy=fsdp2", "parallel.reshard_after_forward=false"])}
    assert len(hashes) == 5


def test_zero3_at_world_size_1_is_valid():
    cfg = load_config(TINY, ["parallel.strategy=zero3"])
    assert cfg.parallel.world_size == 1
    with pytest.raises(ConfigError):
        load_config(TINY, ["parallel.strategy=zero3", "parallel.world_size=-1"])


def test_parallel_init_resolves_and_keeps_the_hashes_of_fsdp2_configs():
    """`parallel.init: auto` (the default) is meta under fsdp2 for architecture-only models, full otherwise; the
    hashes a config had before `init` existed do not move, and an explicit value equal to auto's choice hashes
    the same (one run, one identity)."""
    fsdp2 = ["parallel.strategy=fsdp2"]
    assert load_config(TINY, fsdp2).parallel_init == "meta"
    assert load_config(TINY, ["parallel.strategy=ddp"]).parallel_init == "full"
    assert load_config(TINY).parallel_init == "full"
    assert load_config(TINY, fsdp2).config_hash() == "2d0a2723dd978a52"  # computed before `init` existed
    assert load_config(TINY, [*fsdp2, "parallel.world_size=8"]).config_hash() == "6a96f3e6178860b4"
    assert load_config(TINY, [*fsdp2, "parallel.init=meta"]).config_hash() == "2d0a2723dd978a52"
    assert load_config(TINY, [*fsdp2, "parallel.init=full"]).config_hash() != "2d0a2723dd978a52"
    assert load_config(TINY, ["parallel.init=full"]).config_hash() == "3f0ce8d2ea8bedae"


def test_parallel_init_meta_outside_fsdp2_or_with_a_checkpoint_is_one_line_exit_2(capsys, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text((CONFIGS.parent / "profiler/models/tiny-llama.json").read_text())
    for overrides, words in (
        (["parallel.strategy=ddp", "parallel.init=meta"], ["parallel.init", "fsdp2", "ddp", "auto, full"]),
        (["parallel.strategy=fsdp2", "parallel.init=meta", "model.arch=null", f"model.path={ckpt}"],
         ["parallel.init", "checkpoint", "auto, full"]),
    ):
        _assert_refused(overrides, words, capsys, tmp_path)
    # a checkpoint directory under fsdp2 loads whole (auto -> full): valid
    from_ckpt = load_config(TINY, ["parallel.strategy=fsdp2", "model.arch=null", f"model.path={ckpt}"])
    assert from_ckpt.parallel_init == "full"


def test_zero3_qlora4_is_accepted_with_the_float_storage_derived(capsys):
    """Issue 20 item 4: ZeRO-3 + QLoRA 4-bit is estimated (components); quant_storage left unset becomes the model's
    dtype, as PEFT's ZeRO-3 + QLoRA guide sets bnb_4bit_quant_storage, and the CLI estimate exits 0."""
    cfg = load_config(TINY, ["parallel.strategy=zero3", "parallel.world_size=2", "regime.kind=qlora",
                             "model.dtype=bfloat16"])
    assert cfg.regime.quant_storage == "bfloat16"
    assert main(["estimate", TINY, "parallel.strategy=zero3", "parallel.world_size=2", "regime.kind=qlora",
                 "model.dtype=bfloat16", "--estimator", "components"]) == 0
    assert "zero3 x 2, per rank" in capsys.readouterr().out
