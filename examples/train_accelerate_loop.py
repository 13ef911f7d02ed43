"""A hand-written training loop with 🤗 accelerate (no Trainer) on the JSONL shipped in examples/data/
(character tokenizer, no download), to try `llm-memprof trace`/`track` and the dry-run on:

    python -m profiler simulate --gpu rtx4090 -- python examples/train_accelerate_loop.py --model llama-3-8b

`--model`: a bundled architecture, a config.json or a checkpoint directory. It knows nothing of the profiler.
"""

from __future__ import annotations

import argparse

import torch
from accelerate import Accelerator
from example_data import char_tokenizer, load_model, rows
from transformers import DataCollatorForLanguageModeling


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-llama", help="bundled name, config.json or checkpoint directory")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=256, help="longest sequence (rows are cut to it)")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    tokenizer = char_tokenizer()
    model = load_model(a.model, torch.bfloat16)
    if a.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    items = [tokenizer(r["text"], truncation=True, max_length=a.seq_len) for r in rows()]
    # its own generator: the order does not depend on how many random numbers the model's init drew
    loader = torch.utils.data.DataLoader(items, batch_size=a.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(0),
                                         collate_fn=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    print(f"device {accelerator.device}, cuda available {torch.cuda.is_available()}")
    model.train()
    step = 0
    while step < a.steps:
        for batch in loader:
            loss = model(**batch).loss
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            print(f"step {step} loss {loss.item():.3f}")
            if step == a.steps:
                break


if __name__ == "__main__":
    main()
