"""Liger-Kernel facts (liger-kernel 0.6.4, read from its wheel): the model types it patches, its chunk size.

Kept in the vocabulary so that the config check, the torch mirror that runs (profiler/measure/liger_flce.py) and
the estimator (profiler/formulas/loss_buffers.py) share one reading of the source; liger-kernel itself is not a
dependency (it needs Triton and a GPU).
"""

from __future__ import annotations

LIGER_VERSION = "0.6.4"

# liger_kernel/transformers/monkey_patch.py:2747-2786 MODEL_TYPE_TO_APPLY_LIGER_FN: `use_liger_kernel=True`
# (transformers/integrations/liger.py `apply_liger_kernel` -> `_apply_liger_kernel_to_instance`) patches only these
# model types; any other is left as it is (monkey_patch.py:2838-2840 logs "no Liger kernels supported")
LIGER_MODEL_TYPES = (
    "gemma", "gemma2", "gemma3_text", "gemma3", "glm4", "glm4v", "glm4v_moe", "internvl", "llama", "llama4_text",
    "llama4", "llava", "granite", "mllama", "mllama_text_model", "mistral", "mixtral", "olmo2", "olmo3", "qwen2",
    "qwen3", "qwen3_moe", "qwen2_vl", "qwen2_vl_text", "qwen2_5_vl", "qwen2_5_vl_text", "qwen3_next", "qwen3_vl",
    "qwen3_vl_text", "qwen3_vl_moe", "qwen3_vl_moe_text", "smollm3", "phi3", "paligemma", "falcon_h1", "smolvlm",
    "hunyuan_v1_dense", "hunyuan_v1_moe",
)


def cdiv(a: int, b: int) -> int:
    """triton.cdiv."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """triton.next_power_of_2: the smallest power of two >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def liger_chunk_size(bt: int, h: int, v: int) -> int:
    """Tokens per chunk of Liger's fused linear cross-entropy (ops/fused_linear_cross_entropy.py:51-52): the logits
    chunk (chunk x V) is about as large as the input (BT x H). `inc_factor = cdiv(V, H)`,
    `chunk_size = next_power_of_2(cdiv(BT, inc_factor))`."""
    return next_power_of_2(cdiv(bt, cdiv(v, h)))
