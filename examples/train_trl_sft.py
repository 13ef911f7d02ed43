"""A TRL `SFTTrainer` fine-tune (full, `--lora` or `--qlora`) on the JSONL shipped in examples/data/, with a
character tokenizer built offline, to try `llm-memprof trace` and the dry-run on:

    python -m profiler simulate --gpu rtx4090 -- python examples/train_trl_sft.py --model llama-3-8b --qlora

`--model`: a bundled architecture, a config.json or a checkpoint directory. `--qlora` loads 4-bit NF4 with
double quantization (bitsandbytes; a real run needs a CUDA GPU and weights). It knows nothing of the profiler.
"""

from __future__ import annotations

import argparse

import torch
from datasets import Dataset
from example_data import char_tokenizer, load_model, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-llama", help="bundled name, config.json or checkpoint directory")
    ap.add_argument("--output-dir", default="out/train_trl_sft")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--lora", action="store_true", help="LoRA r=16 on the attention and MLP projections")
    ap.add_argument("--qlora", action="store_true", help="--lora on a 4-bit NF4 (double-quant) base")
    ap.add_argument("--packing", action="store_true")
    ap.add_argument("--fixed-length", action="store_true", help="repeat each row's text to at least --max-length "
                    "characters (then cut): every batch is exactly (batch, max-length), with no padding")
    a = ap.parse_args()
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    quant = None
    if a.qlora:
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
    model = load_model(a.model, torch.bfloat16, **({"quantization_config": quant} if quant else {}))
    peft = None
    if a.lora or a.qlora:
        peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    cuda = torch.cuda.is_available()
    args = SFTConfig(output_dir=a.output_dir, per_device_train_batch_size=a.batch_size, max_steps=a.steps,
                     max_length=a.max_length, packing=a.packing, learning_rate=1e-4, logging_steps=1,
                     save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=not cuda, seed=0,
                     bf16=True, dataset_text_field="text")
    texts = [r["text"] for r in rows()]
    if a.fixed_length:
        texts = [(t + " ") * (a.max_length // (len(t) + 1) + 1) for t in texts]
    data = Dataset.from_list([{"text": t} for t in texts])
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=char_tokenizer(),
                         peft_config=peft)
    print(f"device {args.device}, cuda available {cuda}")
    result = trainer.train()
    print(f"trained {result.global_step} steps, loss {result.training_loss:.3f}")


if __name__ == "__main__":
    main()
