"""`simulate -- python SCRIPT`: the dry-run of the user's own script (profiler/dryrun: child.py and run.py).

The Trainer example's dry-run (fake tensors, CPU semantics) equals, per phase and per category, the real CPU run of
the same script under `trace --`; bad cases end with one line and exit 2, leaving the script's folder as it was."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from profiler.config import REPO_ROOT

EXAMPLE = str(REPO_ROOT / "examples" / "train_trainer.py")
TRL = str(REPO_ROOT / "examples" / "train_trl_sft.py")


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "profiler", *args], capture_output=True, text=True,
                          cwd=cwd or REPO_ROOT, timeout=600)


def last(path: Path) -> dict:
    return json.loads(path.read_text().splitlines()[-1])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


CASES = {
    "trainer": (EXAMPLE, ["--steps", "4", "--seq-len", "96"]),
    "trainer-checkpointing": (EXAMPLE, ["--steps", "4", "--seq-len", "96", "--gradient-checkpointing"]),
    # SFTConfig defaults: bf16 autocast, gradient checkpointing; LoRA; TRL's chunked LM-head loss
    "trl-sft-lora": (TRL, ["--steps", "4", "--max-length", "96", "--lora"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_dry_run_equals_the_traced_cpu_run(tmp_path, case):
    """Rows of varied length cut at 96 characters: batches are padded, so the causal mask is built in some steps."""
    path, args = CASES[case]
    script = ["--", "python", path, *args]
    dry, real = tmp_path / "dry.jsonl", tmp_path / "real.jsonl"
    res = cli("simulate", "--gpu", "cpu", "--quiet", "--output", str(dry), *script, "--output-dir", str(tmp_path / "a"))
    assert res.returncode == 0, res.stderr[-2000:]
    res = cli("trace", "--steps", "3", "--picture", "none", "--output", str(real), *script,
              "--output-dir", str(tmp_path / "b"))
    assert res.returncode == 0, res.stderr[-2000:]
    d, r = last(dry), last(real)
    assert d["backend"] == "fake" and d["source"] == "dryrun" and r["backend"] == "cpu"
    key = ("step", "phase", "peak_allocated_bytes", "allocated_bytes", "breakdown")
    assert [{k: p[k] for k in key} for p in d["phases"]] == [{k: p[k] for k in key} for p in r["phases"]]
    assert len(d["phases"]) == 9
    lens = d["dryrun"]["seq_lens"]
    assert len(lens) == 3 and all(b == 2 and s <= 96 for b, s in lens)


def test_verdict_against_the_named_gpu(tmp_path):
    out = tmp_path / "dry.jsonl"
    res = cli("simulate", "--gpu", "rtx4090", "--output", str(out), "--", "python", EXAMPLE, "--steps", "4",
              "--seq-len", "32", "--output-dir", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr[-2000:]
    v = last(out)["dryrun"]["verdict"]
    assert v["gpu"] == "rtx4090" and v["fits"] is True and v["usable_bytes"] == v["total_bytes"] - v["context_bytes"]
    assert "fits: simulated allocated peak" in res.stdout


def test_qlora_builds_4bit_stand_ins_from_the_config(tmp_path):
    """`from_pretrained(quantization_config=BitsAndBytesConfig(4-bit))` on a config without weights: stand-ins."""
    out = tmp_path / "dry.jsonl"
    res = cli("simulate", "--gpu", "rtx4090", "--quiet", "--output", str(out), "--", "python", TRL, "--qlora",
              "--steps", "4", "--max-length", "64", "--output-dir", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr[-2000:]
    d = last(out)
    assert d["config"]["regime"] == {"kind": "qlora", "bits": 4} and d["config"]["device"] == "cuda"
    assert d["model"]["quantized_params"] > 0 and 0 < d["model"]["trainable_params"] < d["model"]["total_params"]
    assert sum(d["dryrun"]["attention_kernels"].values()) > 0


def _script(tmp_path: Path, body: str) -> Path:
    folder = tmp_path / "user"
    folder.mkdir()
    path = folder / "train.py"
    path.write_text(textwrap.dedent(body))
    return path


def _one_line_exit_2(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    return lines[0]


def test_a_loop_written_for_cuda_runs_on_the_simulated_device(tmp_path):
    """No Trainer: `.to("cuda")`, `.cuda()`, `device="cuda"`, `device_map`; the run stops after 1 + 2 steps of 5."""
    path = _script(tmp_path, """
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained("tiny-llama", device_map={"": 0}).to("cuda").cuda()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        model.train()
        for step in range(5):
            ids = torch.randint(0, 100, (2, 32), device="cuda")
            loss = model(input_ids=ids.to("cuda"), labels=ids.cuda()).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            print(f"step {step} loss {loss.item():.3f}")
    """)
    out = tmp_path / "dry.jsonl"
    res = cli("simulate", "--gpu", "h100", "--quiet", "--output", str(out), "--", "python", str(path))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "step 1 loss 1.000" in res.stdout and "step 2" not in res.stdout  # ends inside the 3rd step
    d = last(out)
    assert [(p["step"], p["phase"]) for p in d["phases"]] == [
        (s, ph) for s in range(3) for ph in ("forward", "backward", "optimizer_step")]
    assert d["dryrun"]["seq_lens"] == [[2, 32]] * 3 and d["dryrun"]["verdict"]["gpu"] == "h100-sxm"
    assert d["peaks"]["steady_peak_allocated_bytes"] > 0


def test_a_hub_model_without_a_cached_config_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    path = _script(tmp_path, """
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained("some-org/no-such-model-7b")
        print("loaded")
    """)
    before = snapshot(path.parent)
    res = cli("simulate", "--output", str(tmp_path / "o.jsonl"), "--", "python", str(path))
    line = _one_line_exit_2(res)
    assert "some-org/no-such-model-7b" in line and "loaded" not in res.stdout
    assert snapshot(path.parent) == before and not (tmp_path / "o.jsonl").exists()


def test_item_used_as_a_size_stops_at_the_script_line(tmp_path):
    path = _script(tmp_path, f"""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM
        config = AutoConfig.from_pretrained({str(REPO_ROOT / "profiler/models/tiny-llama.json")!r})
        model = AutoModelForCausalLM.from_config(config)
        opt = torch.optim.AdamW(model.parameters())
        ids = torch.randint(0, 100, (2, 16))
        out = model(input_ids=ids, labels=ids)
        print(f"loss {{out.loss.item():.3f}}")  # a placeholder: fine for logging
        keep = out.logits.argmax(-1).sum().item()
        buf = torch.zeros(int(keep), 1024)
    """)
    before = snapshot(path.parent)
    res = cli("simulate", "--output", str(tmp_path / "o.jsonl"), "--", "python", str(path))
    line = _one_line_exit_2(res)
    assert "train.py:11" in line and "train.py:10" in line and ".item()" in line
    assert "loss 1.000" in res.stdout
    assert snapshot(path.parent) == before and not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("launcher", [["torchrun", "--nproc_per_node", "2"],
                                      ["accelerate", "launch", "--num_processes", "2"]], ids=["torchrun", "accelerate"])
def test_an_unsupported_launcher_is_one_line(tmp_path, launcher):
    res = cli("simulate", "--", *launcher, EXAMPLE)
    line = _one_line_exit_2(res)
    assert repr(launcher[0]) in line and "not supported yet" in line
