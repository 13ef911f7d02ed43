"""Optimizers by name: torch's SGD/Adam/AdamW and bitsandbytes' 8-bit and paged AdamW."""

from __future__ import annotations

import torch

from profiler.config import OptimizerConfig


def make_optimizer(oc: OptimizerConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """State is created lazily on the first step (that is why the first step is reported apart)."""
    if not params:
        raise ValueError("no trainable parameters: nothing to optimize")
    if oc.name == "sgd":
        return torch.optim.SGD(params, lr=oc.lr)
    if oc.name == "sgd_momentum":
        return torch.optim.SGD(params, lr=oc.lr, momentum=0.9)
    if oc.name == "adam":
        return torch.optim.Adam(params, lr=oc.lr)
    if oc.name == "adamw":
        return torch.optim.AdamW(params, lr=oc.lr)
    if oc.name == "adamw_fused":  # transformers' adamw_torch_fused (trainer_optimizer.py: AdamW(fused=True))
        return torch.optim.AdamW(params, lr=oc.lr, fused=True)
    import bitsandbytes as bnb

    if oc.name == "adamw_8bit":
        return bnb.optim.AdamW8bit(params, lr=oc.lr)
    if oc.name == "paged_adamw_8bit":
        return bnb.optim.PagedAdamW8bit(params, lr=oc.lr)
    raise ValueError(f"optimizer.name {oc.name!r} unknown")  # unreachable: config validation comes first
