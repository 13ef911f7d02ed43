"""The batch layout `train.packing` describes: the sequences in each row, the tokens a row, and whether transformers
builds a block-diagonal mask for it. Pure arithmetic on the config (no torch): profiler/measure/batch.py builds the
tensors from it, profiler/formulas/components.py models their bytes.
"""

from __future__ import annotations

from profiler.config import RunConfig


def layout(cfg: RunConfig) -> list[list[int]]:
    """The sequence lengths in each row of the batch (`train.packing`, `train.doc_len`)."""
    t = cfg.train
    if t.packing == "none":
        return [[t.seq_len]] * t.batch_size
    # packed_4d: rows as packed (the 4-D mask carries the boundaries)
    doc = min(t.doc_len or t.seq_len, t.seq_len)
    sample = [doc] * (t.seq_len // doc) + ([t.seq_len % doc] if t.seq_len % doc else [])
    return [sample * t.batch_size] if t.packing == "padding_free" else [sample] * t.batch_size


def geometry(packing: str, batch_size: int, seq_len: int) -> tuple[int, int]:
    """(rows, tokens per row) of the batch the model sees: padding_free puts every token in one row."""
    return (1, batch_size * seq_len) if packing == "padding_free" else (batch_size, seq_len)


def builds_packed_mask(cfg: RunConfig, use_cache: bool, batch_size: int | None = None,
                       seq_len: int | None = None) -> bool:
    """Whether transformers detects packing in this batch and builds a block-diagonal mask (for sdpa / eager; the
    mask interface decides whether one is materialised): position ids given (packing), some row holding more than
    one sequence (`find_packed_sequence_indices`), and no cache (`_preprocess_mask_arguments` checks only with
    `past_key_values` None: the model's `use_cache` off, as gradient checkpointing in training
    (utils/generic.py `merge_with_config_defaults`) and TRL's compute_loss (`use_cache=False`) set it)."""
    t = cfg.train
    if t.packing in ("none", "packed_4d") or cfg.regime.kind == "inference":
        return False
    b, s = batch_size or t.batch_size, seq_len or t.seq_len
    doc = min(t.doc_len or s, s)
    per_row = -(-s // doc) * (b if t.packing == "padding_free" else 1)
    cache = use_cache and not t.gradient_checkpointing and cfg.recipe != "trl"
    return per_row > 1 and not cache
