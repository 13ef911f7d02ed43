"""A small `transformers.Trainer` fine-tune (tiny Llama, random weights, CPU, a few steps) to try
`llm-memprof trace` on:

    python -m profiler trace -- python examples/train_trainer.py --output-dir /tmp/tiny-run

It knows nothing of the profiler: the trace command adds the callback. Exits 0 when training finished.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, Trainer, TrainingArguments

ARCH = Path(__file__).resolve().parents[1] / "profiler" / "models" / "tiny-llama.json"


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, n: int, seq: int, vocab: int):
        self.n, self.seq, self.vocab = n, seq, vocab

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        row = torch.randint(0, self.vocab, (self.seq,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": row, "labels": row}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output-dir", default="out/train_trainer")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64)
    a = ap.parse_args()
    config = AutoConfig.from_pretrained(ARCH)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    args = TrainingArguments(output_dir=a.output_dir, per_device_train_batch_size=a.batch_size, max_steps=a.steps,
                             optim="adamw_torch", learning_rate=1e-4, use_cpu=True, report_to="none",
                             save_strategy="no", logging_steps=1, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=RandomTokens(64, a.seq_len, config.vocab_size))
    result = trainer.train()
    print(f"trained {result.global_step} steps, loss {result.training_loss:.3f}")


if __name__ == "__main__":
    main()
