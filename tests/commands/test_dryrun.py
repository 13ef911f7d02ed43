"""`simulate -- python SCRIPT`: the dry-run of the user's own script (profiler/dryrun: child.py and run.py).

Each example's dry-run (fake tensors, CPU semantics) equals, per phase and per category, the real CPU run of the
same script (Trainer and TRL under `trace --`, the accelerate loop under tests/commands/loop_truth.py); under
`--gpu NAME` the scripts see torch.cuda as that GPU and take their CUDA path; bad cases end with one line and
exit 2, leaving the script's folder as it was."""

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
LOOP = str(REPO_ROOT / "examples" / "train_accelerate_loop.py")


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
    # bitsandbytes 0.50 quantizes and runs NF4 on the CPU: the real run loads a saved tiny checkpoint
    "trl-sft-qlora": (TRL, ["--steps", "4", "--max-length", "96", "--qlora", "--model", "CHECKPOINT"]),
}
KEY = ("step", "phase", "peak_allocated_bytes", "allocated_bytes", "breakdown")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    """tiny-llama with random bf16 weights saved as a checkpoint directory (the real QLoRA run quantizes it)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama-ckpt")
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(REPO_ROOT / "profiler" / "models" / "tiny-llama.json")
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("case", list(CASES))
def test_dry_run_equals_the_traced_cpu_run(tmp_path, case, request):
    """Rows of varied length cut at 96 characters: batches are padded, so the causal mask is built in some steps."""
    path, args = CASES[case]
    if "CHECKPOINT" in args:
        args = [request.getfixturevalue("tiny_checkpoint") if a == "CHECKPOINT" else a for a in args]
    script = ["--", "python", path, *args]
    dry, real = tmp_path / "dry.jsonl", tmp_path / "real.jsonl"
    res = cli("simulate", "--gpu", "cpu", "--quiet", "--output", str(dry), *script, "--output-dir", str(tmp_path / "a"))
    assert res.returncode == 0, res.stderr[-2000:]
    res = cli("trace", "--steps", "3", "--picture", "none", "--output", str(real), *script,
              "--output-dir", str(tmp_path / "b"))
    assert res.returncode == 0, res.stderr[-2000:]
    d, r = last(dry), last(real)
    assert d["backend"] == "fake" and d["source"] == "dryrun" and r["backend"] == "cpu"
    assert [{k: p[k] for k in KEY} for p in d["phases"]] == [{k: p[k] for k in KEY} for p in r["phases"]]
    assert len(d["phases"]) == 9
    lens = d["dryrun"]["seq_lens"]
    assert len(lens) == 3 and all(b == 2 and s <= 96 for b, s in lens)


def test_loop_dry_run_equals_its_real_cpu_run(tmp_path):
    """The accelerate loop (no Trainer, bf16 weights), warm-up included. Its DataLoader shuffles with its own
    generator: with the global one the order would differ (the real from_config draws its random init from it,
    the dry-run's fake build draws nothing). Rows cut at 32 characters (none is shorter: no padding); with a
    padded bf16 batch the warm-up forward differs (docs/dryrun.md, "Checked")."""
    args = [LOOP, "--steps", "4", "--seq-len", "32"]
    dry, real = tmp_path / "dry.jsonl", tmp_path / "real.json"
    res = cli("simulate", "--gpu", "cpu", "--quiet", "--output", str(dry), "--", "python", *args)
    assert res.returncode == 0, res.stderr[-2000:]
    res = subprocess.run([sys.executable, str(Path(__file__).with_name("loop_truth.py")), str(real), "3", *args],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    d, r = last(dry), json.loads(real.read_text())
    assert r["backend"] == "cpu" and d["source"] == "dryrun"
    assert [{k: p[k] for k in KEY} for p in d["phases"]] == [{k: p[k] for k in KEY} for p in r["phases"]]
    assert len(d["phases"]) == 9


PROBE = """
    import json, torch
    from transformers import AutoModelForCausalLM
    c = torch.cuda
    out = {"available": c.is_available(), "count": c.device_count(), "current": c.current_device(),
           "name": c.get_device_name(), "name0": c.get_device_name(torch.device("cuda", 0)),
           "capability": list(c.get_device_capability(0)), "bf16": c.is_bf16_supported(),
           "bf16_native": c.is_bf16_supported(including_emulation=False)}
    p = c.get_device_properties(0)
    out.update(total=p.total_memory, major=p.major, minor=p.minor)
    c.set_device(0); c.set_device("cuda:0"); c.synchronize(); c.empty_cache()
    out["before_model"] = c.memory_allocated()
    model = AutoModelForCausalLM.from_pretrained("tiny-llama").to(torch.device("cuda", 0)).cuda()
    out["weights"] = c.memory_allocated()
    out["mem_get_info"] = list(c.mem_get_info())
    out["model_device"] = str(next(model.parameters()).device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for step in range(4):
        ids = torch.randint(0, 100, (2, 32), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out.setdefault("autocast", [torch.is_autocast_enabled(), torch.is_autocast_enabled("cpu")])
            logits = model(input_ids=ids.to("cuda")).logits
            out.setdefault("logits_dtype", str(logits.dtype))
        logits.float().mean().backward()
        out.setdefault("live", c.memory_allocated())
        out.setdefault("peak", c.max_memory_allocated())
        out.setdefault("reserved", [c.memory_reserved(), c.max_memory_reserved()])
        c.reset_peak_memory_stats()
        out.setdefault("peak_after_reset", c.max_memory_allocated())
        out.setdefault("stats", c.memory_stats()["allocated_bytes.all.peak"])
        opt.step()
        opt.zero_grad()
        print("PROBE " + json.dumps(out), flush=True)
"""


def _probe(res: subprocess.CompletedProcess) -> dict:
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads([ln for ln in res.stdout.splitlines() if ln.startswith("PROBE ")][-1][6:])


def test_torch_cuda_answers_as_the_named_gpu(tmp_path):
    """Every faked torch.cuda function, called by a hand-written script under --gpu rtx4090 (gpus.csv: NVIDIA
    GeForce RTX 4090, 24,564 MiB, compute capability 8.9)."""
    path = _script(tmp_path, PROBE)
    out = tmp_path / "dry.jsonl"
    p = _probe(cli("simulate", "--gpu", "rtx4090", "--quiet", "--output", str(out), "--", "python", str(path)))
    total = 24564 * 2**20
    assert p["available"] is True and p["count"] == 1 and p["current"] == 0
    assert p["name"] == p["name0"] == "NVIDIA GeForce RTX 4090"
    assert p["capability"] == [8, 9] and (p["major"], p["minor"]) == (8, 9) and p["total"] == total
    assert p["bf16"] is True and p["bf16_native"] is True
    assert p["before_model"] == 0  # no model built yet
    assert p["weights"] > 0 and p["model_device"] == "cpu"  # fake CPU tensors stand for the GPU's
    free, tot = p["mem_get_info"]
    assert tot == total and free == total - 512 * 2**20 - p["weights"]  # less the CUDA context (cuda_context.csv)
    assert p["autocast"] == [True, True] and p["logits_dtype"] == "torch.bfloat16"
    assert p["peak"] > p["live"] > p["weights"] and p["reserved"] == [p["live"], p["peak"]]
    assert p["peak_after_reset"] == p["live"] == p["stats"]
    d = last(out)
    assert d["dryrun"]["cuda"]["autocast"] == {"bfloat16": 3}
    assert {"get_device_properties", "mem_get_info", "reset_peak_memory_stats"} <= set(d["dryrun"]["cuda"]["asked"])
    assert set(d["dryrun"]["attention_kernels"]) <= {"flash", "efficient", "cudnn", "math"}


def test_under_gpu_cpu_torch_cuda_is_untouched(tmp_path):
    """The CPU sibling: `--gpu cpu` keeps torch's own answers (no CUDA on this machine)."""
    path = _script(tmp_path, """
        import torch
        print("PROBE", torch.cuda.is_available(), torch.cuda.device_count())
    """)
    res = cli("simulate", "--gpu", "cpu", "--", "python", str(path))
    assert "PROBE False 0" in res.stdout


def test_device_properties_without_a_gpu_is_one_line(tmp_path):
    path = _script(tmp_path, """
        import torch
        print("available", torch.cuda.is_available())
        print(torch.cuda.get_device_properties(0).total_memory)
    """)
    res = cli("simulate", "--output", str(tmp_path / "o.jsonl"), "--", "python", str(path))
    line = _one_line_exit_2(res)
    assert "get_device_properties" in line and "--gpu NAME" in line and "available True" in res.stdout


EXAMPLES = {
    "trainer": (EXAMPLE, ["--bf16", "--steps", "4", "--seq-len", "64"], "cuda:0", True),
    "trl-sft-lora": (TRL, ["--lora", "--steps", "4", "--max-length", "96"], "cuda:0", True),
    "accelerate-loop": (LOOP, ["--steps", "4", "--seq-len", "96"], "cuda", False),
}


@pytest.mark.parametrize("case", list(EXAMPLES))
def test_examples_take_their_cuda_path(tmp_path, case):
    """Under --gpu rtx4090 each example sees CUDA: Trainer/accelerate put it on cuda, bf16 autocast is CUDA's
    (`torch.autocast("cuda")`, accelerate/utils/modeling.py get_mixed_precision_context_manager), attention takes
    the CUDA kernels of sm89 (no `flash_cpu`)."""
    path, args, device, autocast = EXAMPLES[case]
    out = tmp_path / "dry.jsonl"
    extra = ["--output-dir", str(tmp_path / "run")] if path != LOOP else []
    res = cli("simulate", "--gpu", "rtx4090", "--quiet", "--output", str(out), "--", "python", path, *args, *extra)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"device {device}, cuda available True" in res.stdout
    d = last(out)["dryrun"]
    assert d["cuda"]["device_name"] == "NVIDIA GeForce RTX 4090" and d["cuda"]["asked"]["is_available"] > 0
    kernels = d["attention_kernels"]
    assert set(kernels) <= {"flash", "efficient", "cudnn", "math"} and kernels["flash"] > 0
    if autocast:  # Trainer / TRL: bf16 through accelerate's autocast on the cuda device, after its bf16 check
        assert d["cuda"]["autocast"].get("bfloat16", 0) >= 3 and d["cuda"]["asked"]["is_bf16_supported"] > 0
    else:
        assert d["cuda"]["autocast"] == {}


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


def test_trl_dry_run_agrees_with_fit_on_matched_settings():
    """scripts/dryrun_vs_fit.py on tiny-llama (QLoRA-4, seq 96, batch 2, rtx4090): the TRL example with
    --fixed-length against `fit --recipe trl` on the same settings. Every phase's peak is within 2 %; the dry-run
    holds a few KiB more: the batch tensors TRL's collator adds to the harness's one (labels, position_ids,
    attention_mask: 3 x 2 x 96 x 8 bytes) and small tensors of TRL's own (docs/dryrun.md)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dryrun_vs_fit", REPO_ROOT / "scripts" / "dryrun_vs_fit.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    dry = mod.dryrun_record("tiny-llama", "qlora4", 96, 2, "rtx4090")
    fit = mod.fit_record("tiny-llama", "qlora4", 96, 2, "rtx4090")
    assert {tuple(s) for s in dry["dryrun"]["seq_lens"]} == {(2, 96)}
    assert fit["config"]["train"]["seq_len"] == 96 and fit["config"]["recipe"] == "trl"
    df = mod.table(dry, fit)
    assert len(df) == 6  # steps 0 and 1, three phases each
    extra = df["dry-run bytes"] - df["fit bytes"]
    assert (extra >= 3 * 2 * 96 * 8).all() and (extra <= 8192).all(), df.to_string()
    assert (df["diff %"].abs() <= 2).all()
