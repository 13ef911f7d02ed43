"""The batch a training step feeds the model, built as the stack's data collator builds it (`train.packing`).

- none: `batch_size` rows of `seq_len` tokens, one sequence per row; `input_ids` only (labels are the same tensor),
  so transformers makes its own arange position_ids and, with nothing packed, SDPA runs with `is_causal` and no mask.
- padding_free: TRL's `DataCollatorForLanguageModeling(padding_free=True)` (trl/trainer/sft_trainer.py, `torch_call`,
  trl 1.16): every sequence of the batch concatenated into **one row**, no `attention_mask`, `position_ids` restarting
  at 0 at each sequence, `labels` a copy of the ids with -100 where a sequence starts, and the varlen-kernel keys
  `cu_seq_lens_q/k` (int32, sequences + 1), `max_length_q/k` and `seq_idx` (int32, one per token). SFTTrainer turns it
  on for `padding_free: true` or for `packing: true` with `packing_strategy` bfd / bfd_split (sft_trainer.py:916).
- packed: `batch_size` rows of `seq_len` tokens, each row several sequences with `position_ids` restarting and no
  attention mask (axolotl's multipack rows carry such position_ids).
- packed_4d: the same rows with the collator's own 4-D mask and no position ids: LLaMA-Factory `neat_packing` with
  sdpa / eager (src/llamafactory/data/collator.py `SFTDataCollatorWith4DAttentionMask`, `prepare_4d_attention_mask`):
  a (rows, 1, seq, seq) float mask, 0 within a sequence's causal block and the dtype's minimum elsewhere, built on
  the host and moved to the device with the batch. transformers passes a 4-D mask through as is
  (masking_utils `_preprocess_mask_arguments`: "If the mask is already 4D, simply return as-is"), so every layer's
  SDPA reads that one tensor. Its dtype: LLaMA-Factory's compute dtype (bf16 / fp16 with mixed precision); here the
  autocast dtype, else the model's (what SDPA accepts beside q).

The sequences: `batch_size` samples of `seq_len` tokens each, cut into pieces of `train.doc_len` (your data's
lengths; unset: one sequence per sample). A step always holds `batch_size x seq_len` tokens.

What transformers does with it (transformers 5.23 masking_utils.py): with `position_ids` given, no 2-D mask and no
cache, `_preprocess_mask_arguments` calls `find_packed_sequence_indices`; when some row holds more than one
sequence it returns the sequence index per token and `create_causal_mask` builds a block-diagonal causal mask
(`packed_sequence_compatibility_function`, `allow_is_causal_skip = False`): a (rows, 1, width, width) boolean mask
for sdpa, a float one of the model dtype for eager; flash_attention_2 builds none (`flash_attention_mask`) and runs
the varlen kernel from the position ids (modeling_flash_attention_utils.py `_is_packed_sequence`, rows = 1 only).
With a cache (`use_cache` true and no gradient checkpointing) the packing check is skipped: no mask.

Under fake tensors the position ids have no values; `packed_rows` gives the simulation the layout behind them, so it
answers `find_packed_sequence_indices` as the real run does (profiler.simulate.backend).
"""

from __future__ import annotations

import itertools
import weakref

import torch

from profiler.config import RunConfig
from profiler.packing import layout

_LAYOUTS: dict[int, tuple[weakref.ref, list[list[int]]]] = {}  # id(position_ids) -> (weakref to it, row layout)


def packed_rows(position_ids: torch.Tensor) -> list[list[int]] | None:
    """The row layout behind position ids this module built (None for any other tensor)."""
    hit = _LAYOUTS.get(id(position_ids))
    return hit[1] if hit is not None and hit[0]() is position_ids else None


def _positions(cfg: RunConfig, rows: list[list[int]]) -> torch.Tensor:
    """position_ids restarting at 0 at each sequence (trl `get_position_ids_from_packed_seq_lengths`): position
    (i mod seq_len) mod doc_len, computed in place so that only the final tensor exists (the collator's own work is on
    the host)."""
    t = cfg.train
    doc = min(t.doc_len or t.seq_len, t.seq_len)
    if t.packing == "packed":
        pos = torch.arange(t.seq_len, device=cfg.device).remainder_(doc).expand(len(rows), -1).contiguous()
    else:
        pos = torch.arange(t.seq_len * t.batch_size, device=cfg.device).remainder_(t.seq_len).remainder_(doc)[None]
    key = id(pos)
    _LAYOUTS[key] = (weakref.ref(pos, lambda _: _LAYOUTS.pop(key, None)), rows)
    return pos


def _sequence_index(cfg: RunConfig, width: int) -> torch.Tensor:
    """TRL's `seq_idx` (int32, 1 x width): the index of the sequence each token belongs to."""
    t = cfg.train
    doc = min(t.doc_len or t.seq_len, t.seq_len)
    per_sample = -(-t.seq_len // doc)
    tok = torch.arange(width, dtype=torch.int32, device=cfg.device)
    out = tok.div(t.seq_len, rounding_mode="floor").mul_(per_sample)
    out.add_(tok.remainder_(t.seq_len).div_(doc, rounding_mode="floor"))
    return out[None]


def mask_dtype(cfg: RunConfig) -> torch.dtype:
    """The dtype of packed_4d's mask: the autocast dtype, else the model's."""
    names = {"bf16": "bfloat16", "fp16": "float16"}
    return getattr(torch, names.get(cfg.train.autocast, cfg.model.dtype))


def block_mask(cfg: RunConfig) -> torch.Tensor:
    """LLaMA-Factory's `prepare_4d_attention_mask` for rows of sequences of doc_len: (rows, 1, seq, seq), 0 where a
    token may attend (same sequence, not later), the dtype's minimum elsewhere; one contiguous tensor on the device,
    as the batch the Trainer moves there."""
    t = cfg.train
    doc = min(t.doc_len or t.seq_len, t.seq_len)
    dtype = mask_dtype(cfg)
    pos = torch.arange(t.seq_len, device=cfg.device)
    seq = pos.div(doc, rounding_mode="floor")
    allowed = (seq[:, None] == seq[None, :]) & (pos[None, :] <= pos[:, None])
    del seq, pos
    row = torch.where(allowed, torch.zeros((), dtype=dtype, device=cfg.device), torch.finfo(dtype).min)
    del allowed
    return row.expand(t.batch_size, 1, -1, -1).contiguous()


def make_batch(cfg: RunConfig, vocab: int) -> dict:
    """The step's model inputs (keyword arguments of the forward, labels included) for `train.packing`."""
    device = cfg.device
    rows = layout(cfg)
    ids = torch.randint(0, vocab, (len(rows), sum(rows[0])), device=device)
    if cfg.train.packing == "none":
        return {"input_ids": ids, "labels": ids}
    if cfg.train.packing == "packed_4d":
        return {"input_ids": ids, "labels": ids.clone(), "attention_mask": block_mask(cfg)}
    pos = _positions(cfg, rows)
    batch = {"input_ids": ids, "labels": torch.where(pos == 0, -100, ids), "position_ids": pos}
    if cfg.train.packing == "padding_free":  # the varlen-kernel keys of TRL's collator (unused by sdpa / eager)
        lengths = rows[0]
        batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = torch.tensor(
            [0, *itertools.accumulate(lengths)], dtype=torch.int32, device=device)
        batch["max_length_q"] = batch["max_length_k"] = max(lengths)
        batch["seq_idx"] = _sequence_index(cfg, sum(lengths))
    return batch
