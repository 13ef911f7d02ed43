"""Silence library chatter that says nothing about memory (kept in one place so it is easy to undo)."""

from __future__ import annotations

import logging
import os
import warnings


def quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", message=r"MatMul8bitLt")
    warnings.filterwarnings("ignore", message=r".*use_cache=True.*gradient checkpointing")
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated")
    warnings.filterwarnings("ignore", message=r"`gradient_checkpointing_enable` is deprecated")  # peft's kbit prep
    warnings.filterwarnings("ignore", message=r"fan_in_fan_out is set to False")  # peft on GPT-2 Conv1D: it fixes it
    for name in ("bitsandbytes", "transformers", "peft", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
