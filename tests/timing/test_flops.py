"""FLOPs and bytes per phase from the fake run (profiler.timing.flops): 6N / 8N, FlopCounterMode, collectives.

Convention of N: the parameters of the matmuls (every nn.Linear weight, the untied output head included; the input
embedding, a lookup, and the norms excluded), as Kaplan et al. 2020 count non-embedding parameters. The model is a
Llama with a 32-token vocabulary so that the head is under 1 % of N (the 8N formula assumes every matmul is
recomputed under checkpointing; HF checkpoints the decoder layers only, not the head).
"""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.checkpoint import set_checkpoint_early_stop
from torch.utils.flop_counter import FlopCounterMode

from profiler.config import REPO_ROOT, load_config
from profiler.simulate.backend import simulate
from profiler.timing.flops import WorkRecorder, attention_flops, collective_kind, step_work

B, S, H, FF, L, V, HEADS = 2, 256, 128, 512, 2, 32, 4


@pytest.fixture(scope="module")
def arch(tmp_path_factory) -> str:
    d = json.loads((REPO_ROOT / "profiler" / "models" / "tiny-llama.json").read_text())
    d.update(hidden_size=H, intermediate_size=FF, num_hidden_layers=L, num_attention_heads=HEADS,
             num_key_value_heads=HEADS, vocab_size=V)
    p = tmp_path_factory.mktemp("arch") / "config.json"
    p.write_text(json.dumps(d))
    return str(p)


def _cfg(arch: str, *overrides: str):
    return load_config(None, list(overrides), base={"model": {"arch": arch, "dtype": "bfloat16"}, "device": "cuda",
                                                    "train": {"batch_size": B, "seq_len": S}})


N_LAYERS = L * (4 * H * H + 3 * H * FF)  # q, k, v, o + gate, up, down
N = N_LAYERS + V * H  # + the untied head
T = B * S
DOWN = L * H * FF


def _attention(kernel: str, passes: float) -> float:
    """passes forward-equivalents of attention per layer: 1 fwd + 2.5 bwd (+1 recompute)."""
    q = torch.empty((B, HEADS, S, H // HEADS), device="meta")
    causal = kernel == "flash"  # the flash stand-in gets is_causal and no mask; `efficient` gets a mask here
    return L * passes * attention_flops(q, q, q, causal, backward=False)


def test_full_step_is_6N_tokens_plus_attention(arch):
    rec = simulate(_cfg(arch), primed=True, recorder=WorkRecorder())
    w = step_work(rec)
    assert rec["status"] == "ok"
    assert w["matmul_flops"] == 6 * N * T  # exact: forward 2NT, backward 4NT (weight and input gradients)
    expected = 6 * N * T + _attention(rec["attention_kernel"], 1 + 2.5)
    total = w["matmul_flops"] + w["attention_flops"]
    assert abs(total - expected) / expected < 0.02
    assert w["phases"]["forward"]["matmul_flops"] == 2 * N * T


def test_full_checkpointing_is_8N_tokens_plus_attention_without_early_stop(arch):
    """torch's non-reentrant checkpoint stops recomputing once every saved tensor is back (early stop, default
    on: torch/utils/checkpoint.py `_StopRecomputationError`): the last matmul of each layer (down_proj, whose
    output nothing saves) is not recomputed. With early stop off, the whole layer forward is: 8N."""
    cfg = _cfg(arch, "train.gradient_checkpointing=true")
    with set_checkpoint_early_stop(False):
        rec = simulate(cfg, primed=True, recorder=WorkRecorder())
    w = step_work(rec)
    expected = 8 * N * T + _attention(rec["attention_kernel"], 1 + 1 + 2.5)
    total = w["matmul_flops"] + w["attention_flops"]
    assert abs(total - expected) / expected < 0.02
    rec = simulate(cfg, primed=True, recorder=WorkRecorder())  # torch's default: early stop
    assert step_work(rec)["matmul_flops"] == 6 * N * T + 2 * (N_LAYERS - DOWN) * T


class _Both(WorkRecorder):
    """WorkRecorder plus torch's FlopCounterMode in the same phases (to compare the two)."""

    def __init__(self):
        super().__init__()
        self.torch_counts: dict[str, int] = {}

    def phase(self, name, step, warmup):
        from contextlib import contextmanager

        @contextmanager
        def both():
            with super(_Both, self).phase(name, step, warmup):
                if name == "load":
                    yield
                    return
                with FlopCounterMode(display=False) as fc:
                    yield
                self.torch_counts[name] = fc.get_total_flops()

        return both()


def test_matmul_flops_agree_with_flop_counter_mode_under_the_fake_mode():
    """Eager attention (every FLOP is an aten matmul): the counter's FLOPs equal FlopCounterMode's, phase by phase,
    inside the project's FakeTensorMode and the harness's phases."""
    cfg = load_config(REPO_ROOT / "configs" / "tiny_full.yaml", ["device=cuda", "model.attn_implementation=eager"])
    rec = _Both()
    out = simulate(cfg, primed=True, recorder=rec)
    work = step_work(out)["phases"]
    assert out["status"] == "ok" and rec.torch_counts["forward"] > 0
    for name in ("forward", "backward"):
        assert work[name]["matmul_flops"] + work[name]["attention_flops"] == rec.torch_counts[name]


def test_fsdp2_collectives_carry_the_unsharded_weights():
    """FSDP2 over 4 fake ranks: the forward all-gathers and the backward reduce-scatters carry every parameter once
    per step, in the parameters' dtype (bf16 here, no MixedPrecisionPolicy)."""
    cfg = load_config(REPO_ROOT / "configs" / "tiny_full.yaml",
                      ["device=cuda", "parallel.strategy=fsdp2", "parallel.world_size=4"])
    rec = simulate(cfg, primed=True, recorder=WorkRecorder())
    w = step_work(rec)
    weight_bytes = rec["model"]["total_params"] * 2  # tiny-llama: every parameter bf16, untied
    assert w["phases"]["forward"]["collectives"]["all_gather"]["bytes"] == weight_bytes
    assert w["phases"]["backward"]["collectives"]["reduce_scatter"]["bytes"] == weight_bytes


def test_without_a_recorder_the_record_is_unchanged():
    cfg = load_config(REPO_ROOT / "configs" / "tiny_full.yaml", ["device=cuda"])
    plain, counted = simulate(cfg, primed=True), simulate(cfg, primed=True, recorder=WorkRecorder())
    assert all("work" not in p for p in plain["phases"])
    peaks = [[p["peak_allocated_bytes"] for p in r["phases"]] for r in (plain, counted)]
    assert peaks[0] == peaks[1]
    assert any("work" in p for p in counted["phases"])


@pytest.mark.parametrize(("name", "kind"), [("allgather_into_tensor_coalesced_", "all_gather"),
                                            ("_reduce_scatter_base_", "reduce_scatter"), ("allreduce_", "all_reduce"),
                                            ("wait_tensor", None), ("all_gather_into_tensor", "all_gather")])
def test_collective_kinds(name, kind):
    assert collective_kind(name) == kind


def test_causal_attention_is_halved():
    q = torch.empty((1, 2, 128, 64), device="meta")
    full = attention_flops(q, q, q, False, backward=False)
    assert full == 4 * 1 * 2 * 128 * 128 * 64
    assert attention_flops(q, q, q, True, backward=False) == full // 2
    assert attention_flops(q, q, q, False, backward=True) == full * 5 // 2
