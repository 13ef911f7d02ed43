"""A small `transformers.Trainer` fine-tune on the JSONL shipped in examples/data/ (character tokenizer, no
download) to try `llm-memprof trace` and the dry-run on:

    python -m profiler trace -- python examples/train_trainer.py --output-dir /tmp/tiny-run
    python -m profiler simulate --gpu rtx4090 -- python examples/train_trainer.py --model llama-3-8b --bf16

`--model`: a bundled architecture (tiny-llama, llama-3-8b, ...), a config.json (random weights: fine for
memory, and for a real CPU run of a tiny model) or a checkpoint directory. It knows nothing of the profiler.
Exits 0 when training finished.
"""

from __future__ import annotations

import argparse

import torch
from example_data import char_tokenizer, load_model, rows
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments


class TextRows(torch.utils.data.Dataset):
    """The shipped rows, tokenized, each cut to at most `seq` tokens (lengths vary: the collator pads)."""

    def __init__(self, tokenizer, seq: int):
        self.items = [tokenizer(r["text"], truncation=True, max_length=seq) for r in rows()]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return dict(self.items[i])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-llama", help="bundled name, config.json or checkpoint directory")
    ap.add_argument("--output-dir", default="out/train_trainer")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64, help="longest sequence (rows are cut to it)")
    ap.add_argument("--bf16", action="store_true", help="bf16 weights and autocast")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    a = ap.parse_args()
    tokenizer = char_tokenizer()
    dtype = torch.bfloat16
    model = load_model(a.model, dtype)
    cuda = torch.cuda.is_available()
    args = TrainingArguments(output_dir=a.output_dir, per_device_train_batch_size=a.batch_size, max_steps=a.steps,
                             optim="adamw_torch", learning_rate=1e-4, use_cpu=not cuda, report_to="none",
                             save_strategy="no", logging_steps=1, disable_tqdm=True, bf16=a.bf16,
                             gradient_checkpointing=a.gradient_checkpointing, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=TextRows(tokenizer, a.seq_len),
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    print(f"device {args.device}, cuda available {cuda}, bf16 {a.bf16}")
    result = trainer.train()
    print(f"trained {result.global_step} steps, loss {result.training_loss:.3f}")


if __name__ == "__main__":
    main()
