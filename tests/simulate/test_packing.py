"""`train.packing`: the batch is TRL's padding-free collator output (or packed rows), transformers builds its
block-diagonal mask from the position ids in a real CPU run, and `simulate` reproduces that run byte for byte.
Run: `python -m pytest tests/simulate/test_packing.py`."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny

from profiler.config import ConfigError, load_config
from profiler.measure.batch import block_mask, layout, make_batch
from profiler.measure.harness import run
from profiler.simulate.backend import simulate


def _peaks(record: dict) -> list[tuple]:
    return [(p["phase"], p["step"], p["peak_allocated_bytes"], p["allocated_bytes"]) for p in record["phases"]]


def _step_peak(record: dict, phase: str) -> int:
    return next(p["peak_allocated_bytes"] for p in record["phases"] if p["phase"] == phase and p["step"] == 1)


def test_padding_free_batch_is_trls_collator_output():
    """Same keys, dtypes, shapes and values (but the random ids) as DataCollatorForLanguageModeling(padding_free)
    on batch_size samples of seq_len tokens whose packed sequences have doc_len tokens (bfd's seq_lengths)."""
    trl = pytest.importorskip("trl.trainer.sft_trainer")
    cfg = tiny("full", "device=cpu", "train.batch_size=3", "train.seq_len=10", "train.packing=padding_free",
               "train.doc_len=4")
    ours = make_batch(cfg, vocab=100)
    sample = {"input_ids": list(range(10)), "seq_lengths": [4, 4, 2]}
    theirs = trl.DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True).torch_call([sample] * 3)
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        if isinstance(value, torch.Tensor):
            assert (ours[key].shape, ours[key].dtype) == (value.shape, value.dtype), key
            if key not in ("input_ids", "labels"):
                assert torch.equal(ours[key], value), key
        else:
            assert ours[key] == value, key
    assert torch.equal(ours["labels"] == -100, theirs["labels"] == -100)
    assert layout(cfg) == [[4, 4, 2] * 3]


def test_packed_rows_and_unpacked_batch():
    cfg = tiny("full", "train.batch_size=2", "train.seq_len=6", "train.packing=packed", "train.doc_len=4")
    batch = make_batch(cfg, vocab=50)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1]] * 2
    assert "attention_mask" not in batch and "cu_seq_lens_q" not in batch
    plain = make_batch(tiny("full", "train.batch_size=2", "train.seq_len=6"), vocab=50)
    assert set(plain) == {"input_ids", "labels"} and plain["labels"] is plain["input_ids"]


@pytest.mark.parametrize("overrides", [
    ("train.packing=padding_free", "train.doc_len=16"),
    ("train.packing=packed", "train.doc_len=16", "train.autocast=bf16"),
    ("train.packing=padding_free", "recipe=trl", "train.loss=full"),  # TRL: use_cache=False, checkpointing
    ("train.packing=packed_4d", "train.doc_len=16"),  # LLaMA-Factory neat_packing: the collator's 4-D mask
], ids=["padding-free", "packed-bf16", "trl-padding-free", "packed-4d"])
@pytest.mark.parametrize("checkpointing", [True, False], ids=["ckpt", "no-ckpt"])
def test_simulate_reproduces_real_packed_run(overrides, checkpointing):
    cfg = tiny("full", "train.steps=1", f"train.gradient_checkpointing={str(checkpointing).lower()}", *overrides)
    real, fake = run(cfg), simulate(cfg)
    assert (fake["status"], real["status"]) == ("ok", "ok"), (fake["error"], real["error"])
    assert _peaks(fake) == _peaks(real)
    assert [p["breakdown"] for p in fake["phases"]] == [p["breakdown"] for p in real["phases"]]


def _masks_seen(cfg) -> list:
    """The attn_mask of every SDPA call of a real CPU run (shape, dtype and values)."""
    seen = []
    native = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, *args, **kwargs):
        seen.append(None if attn_mask is None else attn_mask.detach().clone())
        return native(q, k, v, attn_mask, *args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        rec = run(cfg)
    finally:
        torch.nn.functional.scaled_dot_product_attention = native
    assert rec["status"] == "ok", rec["error"]
    return seen


def test_packed_rows_get_transformers_block_diagonal_mask():
    """Several sequences in a row: SDPA gets a (rows, 1, seq, seq) boolean mask, causal within each sequence and
    False across sequences; one sequence a row (doc_len = seq_len): no mask (is_causal)."""
    base = ("train.steps=1", "train.warmup_steps=0", "train.gradient_checkpointing=true", "train.packing=packed")
    masks = _masks_seen(tiny("full", *base, "train.doc_len=16"))
    seq = 64
    doc = torch.arange(seq) // 16
    pos = torch.arange(seq)
    expected = (doc[:, None] == doc[None, :]) & (pos[None, :] <= pos[:, None])
    assert masks and all(m is not None and m.dtype == torch.bool and m.shape == (2, 1, seq, seq) for m in masks)
    assert all(torch.equal(m[r, 0], expected) for m in masks for r in range(2))
    assert all(m is None for m in _masks_seen(tiny("full", *base, "train.doc_len=64")))


def test_packed_4d_mask_is_llamafactory_block_diagonal():
    """LLaMA-Factory prepare_4d_attention_mask: 0 where a token sees a key of its own sequence at or before it, the
    dtype's minimum elsewhere; (rows, 1, seq, seq) in the autocast dtype (else the model's); no position ids."""
    cfg = tiny("full", "train.batch_size=2", "train.seq_len=8", "train.packing=packed_4d", "train.doc_len=3",
               "train.autocast=fp16")
    mask = block_mask(cfg)
    doc, pos = torch.arange(8) // 3, torch.arange(8)
    allowed = (doc[:, None] == doc[None, :]) & (pos[None, :] <= pos[:, None])
    assert (mask.shape, mask.dtype) == ((2, 1, 8, 8), torch.float16)
    assert torch.equal(mask[1, 0] == 0, allowed)
    assert torch.all(mask[0, 0][~allowed] == torch.finfo(torch.float16).min)
    assert set(make_batch(cfg, vocab=10)) == {"input_ids", "labels", "attention_mask"}


def test_mask_term_in_the_peak():
    """The same batch tensors with and without a mask (packed, doc_len 16 vs 64): with checkpointing the forward
    holds the one boolean mask (rows x seq x seq bytes) beyond the unmasked run, in the real run and in simulate."""
    base = ("train.steps=1", "train.gradient_checkpointing=true", "train.packing=packed")
    masked, plain = (tiny("full", *base, f"train.doc_len={d}") for d in (16, 64))
    mask_bytes = 2 * 64 * 64
    for runner in (run, simulate):
        assert _step_peak(runner(masked), "forward") - _step_peak(runner(plain), "forward") == mask_bytes


def test_flash_attention_2_packing_builds_no_mask():
    """flash_attention_2 (simulated on the SDPA stand-in): flash_attention_mask builds no mask from packed position
    ids, the varlen kernel reads them; the simulation's SDPA calls therefore stay on the flash kernel, no mask."""
    cfg = tiny("full", "device=cuda", "model.attn_implementation=flash_attention_2", "train.steps=1",
               "train.gradient_checkpointing=true", "train.packing=padding_free", "train.doc_len=16")
    rec = simulate(cfg)
    assert rec["status"] == "ok", rec["error"]
    assert rec["attention_kernel"] == "flash_attention_2"
    sdpa = simulate(cfg.model_copy(update={"model": cfg.model.model_copy(update={"attn_implementation": "sdpa"})}))
    assert sdpa["attention_kernel"] != "flash"  # with the mask: a kernel that takes masks
    assert rec["peaks"]["steady_peak_allocated_bytes"] < sdpa["peaks"]["steady_peak_allocated_bytes"]


def test_bad_packing_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"train\.packing.*allowed"):
        tiny("full", "train.packing=bfd")
    with pytest.raises(ConfigError, match=r"train\.doc_len: 8 needs train\.packing"):
        tiny("full", "train.doc_len=8")
    with pytest.raises(ConfigError, match=r"train\.doc_len: 100 is longer than train\.seq_len 64"):
        tiny("full", "train.packing=packed", "train.doc_len=100")


def test_default_packing_keeps_config_hashes():
    plain = tiny("full")
    assert tiny("full", "train.packing=none").config_hash() == plain.config_hash()
    assert tiny("full", "train.packing=packed").config_hash() != plain.config_hash()
    assert load_config(None, [], base={"model": {"arch": "tiny-llama"}}).train.packing == "none"
