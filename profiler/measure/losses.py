"""The loss a stack computes, as it computes it: the model's own (full logits) or TRL's chunked LM head.

`train.loss: chunked` patches the model with TRL's own `add_fused_lm_head` (trl/trainer/utils.py:1548, trl 1.16),
exactly as SFTTrainer does (trl/trainer/sft_trainer.py:1144-1147: on the PEFT base model, outputs log_probs,
entropy and is_top1), and calls it with `fused_lm_head=True` (sft_trainer.py:1611). Its autograd function
(trl/kernels/chunked_logprob.py `ChunkedLogProbFunction`) projects `TOKEN_CHUNK_SIZE` (4096) tokens x 32768 vocabulary
columns at a time into one fixed tile buffer, so no (batch, seq, vocab) logits exist; backward recomputes each
tile into a second such buffer and accumulates the hidden / head gradients in float32.
Under a trainer recipe with autocast, the outputs are cast to float32 as accelerate's native AMP does
(accelerate/accelerator.py:1824-1835, utils/operations.py:889 `convert_to_fp32`): the full logits get a float32
copy at the end of the forward.
`train.loss: liger` (Liger-Kernel's fused linear cross-entropy) is profiler/measure/liger_flce.py.
"""

from __future__ import annotations

import torch

from profiler.config import RunConfig

SFT_OUTPUTS = ("log_probs", "entropy", "is_top1")  # what SFTTrainer asks of the fused head (metrics included)


def add_chunked_loss(model: torch.nn.Module) -> None:
    """Patch `model` (a PEFT model or a plain one) with TRL's fused LM head, as SFTTrainer does."""
    from trl.trainer.utils import add_fused_lm_head

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    add_fused_lm_head(base, outputs=SFT_OUTPUTS)


def accelerate_amp(cfg: RunConfig) -> bool:
    """Whether the forward runs under accelerate's native AMP (a trainer recipe with autocast on): its outputs are
    cast to float32 after the autocast forward."""
    return cfg.recipe != "plain" and cfg.train.autocast != "none"


def forward_loss(model, batch: dict, cfg: RunConfig, autocast) -> torch.Tensor:
    """One forward to the loss on the step's inputs (profiler.measure.batch: input_ids, labels and, packed, the
    collator's position_ids); every other output dropped, as Trainer.compute_loss does. Under recipe trl with packing,
    `use_cache=False` as SFTTrainer.compute_loss passes it (trl/trainer/sft_trainer.py:1564): with a cache transformers
    skips its packed-sequence check and builds no block-diagonal mask (masking_utils `_preprocess_mask_arguments`)."""
    kwargs = {"fused_lm_head": True} if cfg.train.loss == "chunked" else {}
    if cfg.recipe == "trl" and cfg.train.packing != "none":
        kwargs["use_cache"] = False
    with autocast:
        out = model(**batch, **kwargs)
    if accelerate_amp(cfg):
        from accelerate.utils.operations import convert_to_fp32

        out = convert_to_fp32(out)
    loss = out.loss
    del out
    return loss
