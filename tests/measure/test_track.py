"""`track()` around hand-written loops: the same per-phase peaks as `run` of the equivalent config (within
2 %), with an accelerate-prepared optimizer, peft LoRA, a bitsandbytes 8-bit optimizer and gradient
checkpointing; gradient accumulation, a loss computed outside the model, light mode, failures."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny

from profiler.measure.harness import run
from profiler.measure.loading import load_model
from profiler.measure.optimizers import make_optimizer
from profiler.measure.regimes import apply_regime, trainable_parameters
from profiler.measure.track import track, unwrap_optimizer
from profiler.schema import RunRecord


def build(cfg):
    """The model and optimizer `run` builds for this config, outside the harness."""
    torch.manual_seed(cfg.seed)
    model = apply_regime(load_model(cfg).model, cfg)
    return model, make_optimizer(cfg.optimizer, trainable_parameters(model))


def peaks(record: dict) -> dict[tuple[str, int], int]:
    return {(p["phase"], p["step"]): p["peak_allocated_bytes"] for p in record["phases"] if p["phase"] != "load"}


def assert_same_peaks(tracked: dict, ran: dict) -> None:
    want, got = peaks(ran), peaks(tracked)
    assert set(got) == set(want)
    for key, n in want.items():
        assert got[key] == pytest.approx(n, rel=0.02), key


@pytest.mark.parametrize("name,overrides,accelerate", [
    ("full", (), True),  # accelerate's AcceleratedOptimizer: no torch hook tables of its own
    ("lora", (), False),  # peft model
    ("full", ("optimizer.name=adamw_8bit",), False),  # bitsandbytes optimizer
    ("full", ("train.gradient_checkpointing=true",), False),
])
def test_track_matches_run(name, overrides, accelerate):
    cfg = tiny(name, *overrides)
    ran = run(cfg)
    model, opt = build(cfg)
    backward = lambda loss: loss.backward()  # noqa: E731
    if accelerate:
        from accelerate import Accelerator

        acc = Accelerator(cpu=True)
        model, opt = acc.prepare(model, opt)
        assert type(opt).__name__ == "AcceleratedOptimizer"
        backward = acc.backward
    batch = torch.randint(0, 512, (cfg.train.batch_size, cfg.train.seq_len))
    with track(model, opt, config=cfg) as t:
        for _ in range(cfg.train.warmup_steps + cfg.train.steps):
            loss = model(input_ids=batch, labels=batch).loss
            backward(loss)
            del loss
            opt.step()
            opt.zero_grad(set_to_none=True)
    RunRecord.model_validate(t.record)
    assert t.record["source"] == "track" and t.record["status"] == "ok"
    assert_same_peaks(t.record, ran)
    steady = [p for p in t.record["phases"] if p["step"] == 2]
    assert all(p["breakdown"]["weights"] > 0 for p in steady)
    assert steady[-1]["breakdown"]["optimizer"] > 0  # state attached through the unwrapped optimizer


def test_accumulation_and_loss_outside_the_model(tmp_path):
    """Two forward/backward pairs per optimizer step; the loss computed from the logits by hand still opens
    the backward phase before its gradient (b x s x V) is allocated."""
    cfg = tiny("full")
    model, opt = build(cfg)
    batch = torch.randint(0, 512, (2, 16))
    out = tmp_path / "tracked.jsonl"
    with track(model, opt, output=out) as t:
        for _ in range(2):
            for _ in range(2):
                logits = model(input_ids=batch).logits
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch.flatten())
                del logits
                loss.backward()
                del loss
            opt.step()
            opt.zero_grad(set_to_none=True)
    names = [(p["phase"], p["step"]) for p in t.record["phases"]]
    per_step = [("forward", 0), ("backward", 0)] * 2 + [("optimizer_step", 0)]
    assert names == per_step + [(n, 1) for n, _ in per_step]
    bwd = next(p for p in t.record["phases"] if p["phase"] == "backward")
    fp32_logits_grad = 2 * 16 * 512 * 4
    assert bwd["breakdown"]["temporaries"] >= fp32_logits_grad
    cfg_seen = t.record["config"]
    assert cfg_seen["train"]["batch_size"] == 2 and cfg_seen["train"]["seq_len"] == 16
    assert cfg_seen["regime"]["kind"] == "full" and cfg_seen["optimizer"]["name"] == "adamw"
    assert RunRecord.model_validate_json(out.read_text().splitlines()[-1]).source == "track"


def test_light_mode_on_cpu_records_rss():
    cfg = tiny("full")
    model, opt = build(cfg)
    batch = torch.randint(0, 512, (2, 16))
    with track(model, opt, mode="light") as t:
        for _ in range(2):
            model(input_ids=batch, labels=batch).loss.backward()
            opt.step()
            opt.zero_grad()
    rec = RunRecord.model_validate(t.record)
    assert t.record["memory_source"] == "rss" and t.record["tracking_mode"] == "light"
    assert [p.phase for p in rec.phases] == ["forward", "backward", "optimizer_step"] * 2
    assert all(p.breakdown is None and p.peak_allocated_bytes > 0 for p in rec.phases)


def test_exception_is_recorded_and_hooks_removed():
    cfg = tiny("full")
    model, opt = build(cfg)
    original = torch.autograd.backward
    with pytest.raises(RuntimeError, match="boom"):
        with track(model, opt) as t:
            model(input_ids=torch.randint(0, 512, (1, 8))).logits.sum().backward()
            raise RuntimeError("boom")
    assert torch.autograd.backward is original
    assert not model._forward_pre_hooks and not opt._optimizer_step_pre_hooks
    assert t.record["status"] == "error" and "boom" in t.record["error"]


def test_bad_arguments():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="mode: 'fast'.*allowed: breakdown, light"):
        track(model, mode="fast")
    with pytest.raises(TypeError, match="no torch.optim.Optimizer"):
        unwrap_optimizer(object())


def test_old_lines_get_a_source_from_their_backend():
    ran = run(tiny("full", "train.steps=1"))
    assert "source" not in ran
    assert RunRecord.model_validate(ran).source == "run"
    assert RunRecord.model_validate({**ran, "backend": "fake"}).source == "simulate"


def test_public_name():
    import profiler

    assert profiler.track is track
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        profiler.nothing  # noqa: B018


def test_cuda_baseline_excludes_what_this_process_holds():
    """CPU sibling of the CUDA path: track starts with the context and model already on the GPU."""
    from profiler.measure.track import others_baseline

    assert others_baseline(lambda: (10_000, 3_000), reserved_now=2_000) == 7_000  # per-process figure visible
    assert others_baseline(lambda: (10_000, None), reserved_now=2_000) == 8_000  # hidden (containers)


def test_extra_model_counts_as_weights():
    """A frozen reference model run beside the trained one (DPO): its parameters are weights."""
    cfg = tiny("full")
    model, opt = build(cfg)
    ref, _ = build(cfg)
    ref.requires_grad_(False)
    batch = torch.randint(0, 512, (2, 16))
    with track(model, opt, extra_models=[ref]) as t:
        with torch.no_grad():
            ref(input_ids=batch)
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
    fwd = t.record["phases"][0]
    assert fwd["phase"] == "forward" and fwd["breakdown"]["weights"] == 2 * t.record["model"]["weight_bytes"]


def test_an_unusable_output_is_refused_before_the_loop(tmp_path):
    """Issue 23, item 18: `track(..., output="/dev/null")` fails when called, before the user's loop runs,
    and leaves no hook behind."""
    from profiler.results import OutputError

    model = torch.nn.Linear(2, 2)
    for out in ("/dev/null", tmp_path):
        with pytest.raises(OutputError, match="output"):
            track(model, output=out)
    assert not model._forward_pre_hooks and torch.autograd.backward.__module__ == "torch.autograd"
