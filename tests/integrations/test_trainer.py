"""MemoryProfilerCallback on CPU with tiny-llama: `transformers.Trainer` gives the per-phase peaks of
`profiler run` of the same config (within 2 %); TRL's SFTTrainer computes its loss through a fused, tiled LM
head, so only its optimizer step is comparable, and the tile shows in its forward breakdown."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CONFIGS, gpu, tiny
from transformers import Trainer, TrainingArguments

from profiler.config import load_config
from profiler.integrations import MemoryProfilerCallback, profile_trainer
from profiler.measure.harness import run
from profiler.measure.loading import load_model
from profiler.measure.regimes import apply_regime
from profiler.schema import RunRecord

# Trainer settings that match `run`: torch AdamW, no clipping, bf16 weights without autocast, constant lr
SAME_AS_RUN = dict(optim="adamw_torch", max_grad_norm=0.0, learning_rate=1e-4, weight_decay=0.0,
                   lr_scheduler_type="constant", report_to="none", use_cpu=True, save_strategy="no",
                   logging_steps=1, disable_tqdm=True, bf16=False)


class RandomTokens(torch.utils.data.Dataset):
    """Rows made on demand: a dataset held as one CPU tensor would count as live memory on the CPU."""

    def __init__(self, n: int, seq: int, vocab: int = 512):
        self.n, self.seq, self.vocab = n, seq, vocab

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        row = torch.randint(3, self.vocab, (self.seq,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": row, "labels": row}


@pytest.fixture(scope="module")
def cfg():
    return tiny("full")  # warm-up 1 + 2 measured steps, batch 2 x seq 64, AdamW, bf16


@pytest.fixture(scope="module")
def ran(cfg):
    return run(cfg)


def model_for(cfg):
    torch.manual_seed(cfg.seed)
    return apply_regime(load_model(cfg).model, cfg)


def peaks(record: dict) -> dict[tuple[str, int], int]:
    return {(p["phase"], p["step"]): p["peak_allocated_bytes"] for p in record["phases"] if p["phase"] != "load"}


def test_trainer_callback_matches_run(cfg, ran, tmp_path):
    steps = cfg.train.warmup_steps + cfg.train.steps
    cb = MemoryProfilerCallback(steps=steps, config=cfg, summary=False)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=cfg.train.batch_size,
                             max_steps=steps + 1, **SAME_AS_RUN)
    trainer = Trainer(model=model_for(cfg), args=args, train_dataset=RandomTokens(16, cfg.train.seq_len),
                      callbacks=[cb])
    trainer.train()
    want, got = peaks(ran), peaks(cb.record)
    assert set(got) == set(want)  # the 4th step ran untracked
    for key, n in want.items():
        assert got[key] == pytest.approx(n, rel=0.02), key
    line = json.loads((tmp_path / "memprof.jsonl").read_text().splitlines()[-1])
    assert RunRecord.model_validate(line).source == "track" and line["config_hash"] == cfg.config_hash()
    assert (tmp_path / "memprof-timeline.png").stat().st_size > 20_000
    logged = [h for h in trainer.state.log_history if "memprof/peak_allocated_MiB" in h]
    assert logged and logged[0]["memprof/peak_allocated_MiB"] == cb.record["peaks"]["peak_allocated_bytes"] / 2**20


def test_sft_trainer_callback(cfg, ran, tmp_path):
    """TRL 1.16's SFTTrainer never builds the b x s x V logits: it runs the LM head in tiles through a
    (tokens, 32768) buffer in the compute dtype, whatever the vocabulary. The optimizer step is the same as
    `run`'s; forward and backward carry that buffer."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    from trl import SFTConfig, SFTTrainer

    vocab = {f"t{i}": i for i in range(512)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                                  pad_token="t0", eos_token="t2")
    rows = torch.randint(3, 512, (16, cfg.train.seq_len), generator=torch.Generator().manual_seed(0))
    steps = cfg.train.warmup_steps + cfg.train.steps
    cb = MemoryProfilerCallback(steps=steps, config=cfg, summary=False, picture=False)
    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=cfg.train.batch_size,
                     max_steps=steps, max_length=None, **SAME_AS_RUN)
    SFTTrainer(model=model_for(cfg), args=args, train_dataset=Dataset.from_dict({"input_ids": rows.tolist()}),
               processing_class=tok, callbacks=[cb]).train()
    want, got = peaks(ran), peaks(cb.record)
    assert set(got) == set(want)
    for step in range(steps):
        assert got[("optimizer_step", step)] == pytest.approx(want[("optimizer_step", step)], rel=0.02)
    tokens = cfg.train.batch_size * (cfg.train.seq_len - 1)  # positions with a next-token label
    tile = tokens * 32768 * 2  # bf16
    fwd = next(p for p in cb.record["phases"] if p["phase"] == "forward" and p["step"] == 1)
    assert fwd["breakdown"]["temporaries"] >= tile
    assert got[("forward", 1)] > want[("forward", 1)]


def test_light_mode_every_step_and_logging_through_the_trainer(cfg, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=3, **SAME_AS_RUN)
    trainer = Trainer(model=model_for(cfg), args=args, train_dataset=RandomTokens(16, 16))
    cb = profile_trainer(trainer, steps=None, mode="light", summary=False, picture=False)
    trainer.train()
    rec = RunRecord.model_validate(cb.record)
    assert [(p.phase, p.step) for p in rec.phases] == [(n, s) for s in range(3)
                                                        for n in ("forward", "backward", "optimizer_step")]
    assert cb.record["memory_source"] == "rss" and all(p.breakdown is None for p in rec.phases)
    assert rec.config["train"]["batch_size"] == 2 and rec.config["train"]["seq_len"] == 16
    logged = [h for h in trainer.state.log_history if "memprof/peak_allocated_MiB" in h]
    assert len(logged) == 1 and "epoch" in logged[0]  # went through trainer.log, not straight into history


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode: 'full'.*allowed: breakdown, light"):
        MemoryProfilerCallback(mode="full")
    with pytest.raises(ValueError, match="steps: 0"):
        MemoryProfilerCallback(steps=0)


@gpu
@pytest.mark.gpu
def test_trainer_callback_on_cuda_adds_up_to_nvml(tmp_path):
    """CPU sibling: test_trainer_callback_matches_run (same callback, same Trainer settings). On CUDA each
    phase's categories plus untracked, allocator slack and context add up to NVML peak - baseline, the
    tracked categories are within 2 % of max_memory_allocated, and no component is negative."""
    cfg = load_config(CONFIGS / "llama7b_full.yaml", ["model.arch=qwen2.5-0.5b", "train.seq_len=256"])
    model = model_for(cfg)
    cb = MemoryProfilerCallback(steps=2, config=cfg, summary=False, picture=False)
    same = {**SAME_AS_RUN, "use_cpu": False}
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=1, max_steps=2, **same)
    Trainer(model=model, args=args, train_dataset=RandomTokens(4, 256, model.config.vocab_size),
            callbacks=[cb]).train()
    rec = RunRecord.model_validate(cb.record)
    assert rec.status == "ok" and rec.backend == "cuda" and rec.nvml is not None
    for p in rec.phases:
        bd = p.breakdown
        tracked = sum(bd[k] for k in ("weights", "gradients", "optimizer", "activations", "temporaries"))
        assert abs(p.peak_allocated_bytes - tracked) <= 0.02 * p.peak_allocated_bytes, p
        assert sum(bd.values()) == p.nvml_peak_bytes - rec.nvml.baseline_used_bytes
        assert bd["allocator"] >= 0 and bd["context"] >= 0, p


def test_an_unusable_output_is_refused_before_the_training(cfg, tmp_path):
    """Issue 23, item 18: an output that cannot take lines fails at once, not after the training."""
    from profiler.results import OutputError

    with pytest.raises(OutputError, match="output '/dev/null' is a character device"):
        MemoryProfilerCallback(output="/dev/null")
    (tmp_path / "memprof.jsonl").mkdir()  # the default output, <output_dir>/memprof.jsonl, is a directory
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=2, **SAME_AS_RUN)
    trainer = Trainer(model=model_for(cfg), args=args, train_dataset=RandomTokens(8, 16))
    profile_trainer(trainer, summary=False, picture=False)
    with pytest.raises(OutputError, match="is a directory"):
        trainer.train()
    assert trainer.state.global_step == 0  # no step ran
