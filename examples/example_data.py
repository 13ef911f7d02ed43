"""What the example scripts share: the JSONL dataset shipped in examples/data/, a character-level tokenizer
built offline with the `tokenizers` library, and `--model` resolved to a config or a checkpoint.

Nothing here knows the profiler: these are ordinary fine-tuning helpers that need no network.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "tiny_sft.jsonl"
BUNDLED = HERE.parent / "profiler" / "models"  # architecture configs (config.json files) shipped with the repo
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


def char_tokenizer():
    """A PreTrainedTokenizerFast over single characters (printable ASCII), built at run time: no download."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + [chr(c) for c in range(32, 127)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


def rows(path: str | Path = DATA) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def model_source(model: str) -> tuple[str, bool]:
    """(what from_pretrained / AutoConfig take, whether it holds weights). A bundled name (e.g. tiny-llama,
    llama-3-8b) or a config.json has no weights: the example builds the model from its config."""
    p = Path(model)
    if (BUNDLED / f"{model}.json").is_file():
        return str(BUNDLED / f"{model}.json"), False
    if p.suffix == ".json":
        return str(p), False
    if p.is_dir():
        return str(p), any(p.glob("*.safetensors")) or any(p.glob("*.bin"))
    return model, True  # a Hub id


def load_model(model: str, dtype, **kwargs):
    """from_pretrained for a checkpoint, from_config (random weights) for an architecture without weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    src, weights = model_source(model)
    if weights or kwargs.get("quantization_config") is not None:
        return AutoModelForCausalLM.from_pretrained(src, dtype=dtype, **kwargs)
    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src), dtype=dtype, **kwargs)
