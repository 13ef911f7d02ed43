"""The --recipe option that fit, simulate, estimate and sweep share (config key `recipe`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def add_recipe_argument(parser: argparse.ArgumentParser, default_text: str = "plain") -> None:
    """--recipe trl|trainer|plain; None when not given (the config's recipe, else the command's default, stands)."""
    parser.add_argument("--recipe", choices=["trl", "trainer", "plain"],
                        help="the training stack whose memory-relevant defaults fill unset keys: trl (TRL "
                        "SFTTrainer: checkpointing, bf16 autocast, chunked loss, bf16 QLoRA adapters), trainer "
                        "(transformers Trainer with bf16), plain (this tool's own loop) (default: the config's "
                        f"recipe, else {default_text}); explicit flags and key=value overrides win")


def recipe_into(data: dict, flag: str | None, overrides: Sequence[str], default: str | None = None) -> dict:
    """`data` with its recipe resolved: --recipe, else the file's `recipe`, else `default` (None: leave it unset).
    --recipe together with a recipe=... override is refused: two answers to one question."""
    from profiler.config import ConfigError

    given = [o for o in overrides if o.split("=", 1)[0].strip() == "recipe"]
    if flag and given:
        raise ConfigError(f"--recipe: {flag} conflicts with the override {given[-1]!r}; give one of them")
    out = dict(data)
    if flag:
        out["recipe"] = flag
    elif "recipe" not in out and default and not given:
        out["recipe"] = default
    return out
