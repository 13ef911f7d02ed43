"""Tests for profiler.measure.probes.tracker: exact byte counts on CPU, fake tensors and bitsandbytes 4-bit.

Run: `python -m pytest tests/measure/test_tracker.py -q`.
"""

from __future__ import annotations

import gc
import warnings
import weakref

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from profiler.categories import TRACKED
from profiler.measure.probes.tracker import PhaseMemory, TensorTracker, TrackerOutOfMemory

transformers = pytest.importorskip("transformers")

CATS = [c.value for c in TRACKED]


def tiny_config(**kw):
    return transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=256, **kw,
    )


def unique_bytes(tensors) -> int:
    """Bytes of distinct storages behind these tensors (tied weights and views once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        st = t.untyped_storage()
        seen[st.data_ptr() if st.data_ptr() else id(st)] = st.nbytes()
    return sum(seen.values())


def model_bytes(model) -> int:
    return unique_bytes([*model.parameters(), *model.buffers()])


def trainable_grad_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def ids_batch():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 16), generator=g)


def train_step(tr: TensorTracker, model, opt=None, step: int = 0, keep_output: bool = False):
    ids = ids_batch()
    with tr.phase("forward", step):
        out = model(input_ids=ids, labels=ids)
    with tr.phase("backward", step):
        out.loss.backward()
    if not keep_output:
        del out
    if opt is not None:
        with tr.phase("optimizer_step", step):
            opt.step()
            opt.zero_grad(set_to_none=True)


def assert_sums(pm: PhaseMemory):
    assert sorted(pm.breakdown) == sorted(CATS) and sorted(pm.end_breakdown) == sorted(CATS)
    assert sum(pm.breakdown.values()) == pm.peak_bytes
    assert sum(pm.end_breakdown.values()) == pm.end_bytes
    assert pm.peak_bytes >= pm.end_bytes


class StorageCounter(TorchDispatchMode):
    """An independent, category-free count: live bytes of distinct output storages, and their peak."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self.refs: dict[int, weakref.ref] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                st = t.untyped_storage()
                if id(st) not in self.refs:
                    self.refs[id(st)] = weakref.ref(st, self._free(id(st), st.nbytes()))
                    self.live += st.nbytes()
                    self.peak = max(self.peak, self.live)
        return out

    def _free(self, sid, n):
        def cb(_):
            self.refs.pop(sid, None)
            self.live -= n
        return cb


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ---- basic accounting ---------------------------------------------------------------------------
def test_hand_sequence_peak_and_views():
    with TensorTracker() as tr, tr.phase("forward"):
        a = torch.empty(1000)
        v = a.view(10, 100)[2:]  # views share a's storage: not counted again
        b = torch.empty(500)
        assert tr.live_bytes == 6000
        del a, v
        c = torch.empty(200)
        assert tr.live_bytes == 2800
    pm = tr.phases[-1]
    assert (pm.peak_bytes, pm.end_bytes, tr.peak_bytes) == (6000, 2800, 6000)
    assert_sums(pm)
    # b and c were made in forward and are alive at its end: activations; at the peak b was alive, a freed.
    assert pm.end_breakdown["activations"] == 2800
    assert pm.breakdown["activations"] == 2000 and pm.breakdown["temporaries"] == 4000
    del b, c
    assert tr.live_bytes == 0


def test_peak_resets_per_phase_and_records_on_exception():
    tr = TensorTracker()
    with tr.phase("a"):
        x = torch.empty(1000)
        del x
    with pytest.raises(ValueError), tr.phase("b", step=3):
        y = torch.empty(10)  # noqa: F841
        raise ValueError("boom")
    assert [(p.name, p.step, p.peak_bytes) for p in tr.phases] == [("a", None, 4000), ("b", 3, 40)]
    assert tr.peak_bytes == 4000


def test_saved_tensors_are_activations_weights_stay_weights():
    lin = torch.nn.Linear(64, 64)
    with TensorTracker() as tr:
        tr.attach(lin)
        weights = tr.live_bytes
        # made before forward, saved by linear for the weight grad: activation (requires grad, so the
        # weight is saved too, for the input grad)
        x = torch.randn(8, 64, requires_grad=True)
        z = torch.randn(8, 64)  # made before forward, used but not saved: stays a temporary
        with tr.phase("forward"):
            y = lin(x) + z
            assert tr.breakdown()["weights"] == weights  # the saved weight stays a weight
            assert tr.breakdown()["activations"] == 8 * 64 * 4
        with tr.phase("backward"):
            y.sum().backward()
    fw, bw = tr.phases
    assert fw.end_breakdown == {**dict.fromkeys(CATS, 0), "weights": weights,
                                "activations": 2 * 8 * 64 * 4, "temporaries": 8 * 64 * 4}  # x and y; z
    assert bw.end_breakdown["gradients"] == weights
    assert x.grad is not None and bw.end_breakdown["temporaries"] == 2 * 8 * 64 * 4  # z and x.grad
    assert_sums(fw)
    assert_sums(bw)


@pytest.mark.parametrize("tied", [False, True])
def test_weights_model_built_inside(tied):
    with TensorTracker() as tr:
        with tr.phase("load"):
            model = transformers.LlamaForCausalLM(tiny_config(tie_word_embeddings=tied))
            tr.attach(model)
    if tied:
        assert model.lm_head.weight is model.model.embed_tokens.weight
    assert tr.breakdown()["weights"] == model_bytes(model) == tr.live_bytes
    pm = tr.phases[0]
    assert_sums(pm)
    assert pm.end_breakdown["weights"] == model_bytes(model)
    assert pm.peak_bytes >= model_bytes(model)


def test_weights_model_built_outside_then_attached():
    model = transformers.LlamaForCausalLM(tiny_config())
    tr = TensorTracker()
    assert tr.live_bytes == 0
    tr.attach(model)  # storages never seen being created join the live set here
    assert tr.breakdown() == {**dict.fromkeys(CATS, 0), "weights": model_bytes(model)}


def test_from_pretrained_mmap_weights_join_at_attach(tmp_path):
    transformers.LlamaForCausalLM(tiny_config()).save_pretrained(tmp_path)
    with TensorTracker() as tr, tr.phase("load"):
        model = transformers.LlamaForCausalLM.from_pretrained(tmp_path)
        assert tr.breakdown()["weights"] == 0  # safetensors storages were not made by an op we saw
        tr.attach(model)
    assert tr.phases[0].end_breakdown["weights"] == model_bytes(model) == tr.live_bytes


def test_full_finetune_adamw_exact():
    torch.manual_seed(0)
    with TensorTracker() as tr:
        model = transformers.LlamaForCausalLM(tiny_config())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        tr.attach(model, opt)
        weights = model_bytes(model)
        train_step(tr, model, opt, step=0)
        train_step(tr, model, opt, step=1)
    fw, bw, st = tr.phases[3:6]
    n_train = sum(p.numel() for p in model.parameters())
    step_bytes = sum(s["step"].untyped_storage().nbytes() for s in opt.state.values())
    assert step_bytes == 4 * len(list(model.parameters()))
    optimizer = 2 * n_train * 4 + step_bytes
    assert bw.end_breakdown["gradients"] == trainable_grad_bytes(model) == 4 * n_train
    assert bw.end_breakdown["weights"] == weights
    assert st.end_breakdown["optimizer"] == optimizer and st.end_breakdown["gradients"] == 0
    # step 0: optimizer state is created during the step, and at its peak it already counts as optimizer
    st0 = tr.phases[2]
    assert st0.breakdown["optimizer"] == optimizer
    assert st0.breakdown["gradients"] == 4 * n_train
    for pm in tr.phases:
        assert_sums(pm)
    assert fw.end_breakdown["activations"] > 0
    assert bw.end_breakdown["activations"] < fw.end_breakdown["activations"]
    assert fw.module_at_peak is not None and bw.module_at_peak is not None
    assert st.module_at_peak is None


def test_peak_matches_independent_counter():
    torch.manual_seed(0)
    counter = StorageCounter()
    with counter, TensorTracker() as tr:
        model = transformers.LlamaForCausalLM(tiny_config())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        tr.attach(model, opt)
        peaks = []
        for step in range(2):
            ids = ids_batch()
            counter.peak = counter.live
            with tr.phase("forward", step):
                out = model(input_ids=ids, labels=ids)
            peaks.append(counter.peak)
            counter.peak = counter.live
            with tr.phase("backward", step):
                out.loss.backward()
            del out
            peaks.append(counter.peak)
            counter.peak = counter.live
            with tr.phase("optimizer_step", step):
                opt.step()
                opt.zero_grad()
            peaks.append(counter.peak)
            gc.collect()
        assert tr.live_bytes == counter.live
    assert [p.peak_bytes for p in tr.phases] == peaks
    assert tr.peak_bytes == max(peaks)


def test_sgd_has_no_optimizer_state():
    with TensorTracker() as tr:
        model = transformers.LlamaForCausalLM(tiny_config())
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        tr.attach(model, opt)
        train_step(tr, model, opt)
    assert tr.phases[-1].end_breakdown["optimizer"] == 0
    assert tr.phases[-1].breakdown["optimizer"] == 0
    assert tr.phases[-1].breakdown["gradients"] == trainable_grad_bytes(model)


def test_lora_only_adapter_grads_and_state():
    peft = pytest.importorskip("peft")
    base = transformers.LlamaForCausalLM(tiny_config())
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules="all-linear"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in trainable)
    assert 0 < n_train < sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    tr = TensorTracker()
    tr.attach(model, opt)
    assert tr.breakdown()["weights"] == model_bytes(model)
    train_step(tr, model, opt)
    fw, bw, st = tr.phases
    assert bw.end_breakdown["gradients"] == 4 * n_train
    assert st.end_breakdown["optimizer"] == 2 * 4 * n_train + 4 * len(trainable)
    assert st.end_breakdown["weights"] == model_bytes(model)
    assert fw.module_at_peak is not None
    for pm in tr.phases:
        assert_sums(pm)


def test_gradient_checkpointing_reduces_forward_activations():
    def forward_activations(ckpt: bool) -> tuple[int, int]:
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(tiny_config())
        model.train()
        if ckpt:
            model.gradient_checkpointing_enable()
        tr = TensorTracker()
        tr.attach(model)
        train_step(tr, model)
        assert_sums(tr.phases[0])
        assert_sums(tr.phases[1])
        assert tr.phases[1].end_breakdown["gradients"] == trainable_grad_bytes(model)
        return tr.phases[0].end_breakdown["activations"], tr.phases[0].peak_bytes

    plain, plain_peak = forward_activations(False)
    ckpt, ckpt_peak = forward_activations(True)
    assert 0 < ckpt < plain
    assert ckpt_peak < plain_peak


# ---- bitsandbytes -------------------------------------------------------------------------------
def test_bnb_4bit_weights_include_quant_state():
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        bnb.nn.Linear4bit(64, 64, quant_type="nf4", compute_dtype=torch.float32),
        torch.nn.ReLU(),
        bnb.nn.Linear4bit(64, 64, quant_type="nf4", compute_dtype=torch.float32),
    ).to("cpu")  # .to(device) quantizes Params4bit
    parts = [model[0].bias, model[2].bias]
    for lin in (model[0], model[2]):
        w = lin.weight
        assert type(w).__name__ == "Params4bit" and w.bnb_quantized and w.dtype == torch.uint8
        qs = w.quant_state
        parts += [w, qs.absmax, qs.code]
        if qs.offset is not None:
            parts.append(qs.offset)
        if qs.state2 is not None:
            parts += [qs.state2.absmax, qs.state2.code]
    expected = unique_bytes(parts)
    packed = 64 * 64 // 2
    assert expected > 2 * (packed + 64 * 4)  # packed weights + biases + quant state
    tr = TensorTracker()
    tr.attach(model)
    assert tr.breakdown()["weights"] == expected
    x = torch.randn(4, 64, requires_grad=True)
    with tr.phase("forward"):
        y = model(x)
    with tr.phase("backward"):
        y.sum().backward()
    assert x.grad is not None and x.grad.shape == (4, 64)
    fw, bw = tr.phases
    assert fw.end_breakdown["activations"] > 0
    assert bw.end_breakdown["weights"] == expected
    assert bw.end_breakdown["gradients"] == 2 * 64 * 4  # only the fp32 biases train
    for pm in tr.phases:
        assert_sums(pm)


def test_bnb_8bit_weights_include_scb():
    bnb = pytest.importorskip("bitsandbytes")
    lin = bnb.nn.Linear8bitLt(64, 64, has_fp16_weights=False).to("cpu")
    w = lin.weight
    assert type(w).__name__ == "Int8Params" and w.SCB is not None
    tr = TensorTracker()
    tr.attach(lin)
    assert tr.breakdown()["weights"] == unique_bytes([w, w.SCB, lin.bias]) == 64 * 64 + 64 * 4 + 64 * 4


# ---- budget -------------------------------------------------------------------------------------
def test_budget_raises_with_phase():
    tr = TensorTracker(budget_bytes=4096)
    keep = []
    with pytest.raises(TrackerOutOfMemory) as err, tr.phase("forward", step=1):
        keep.append(torch.empty(512))  # 2048 bytes: fits
        keep.append(torch.empty(1024))  # 4096 more: over budget
    e = err.value
    assert isinstance(e, MemoryError)
    assert (e.phase, e.requested_bytes, e.live_bytes, e.budget_bytes) == ("forward", 4096, 2048, 4096)
    assert len(keep) == 1 and tr.live_bytes == 2048
    assert tr.phases[-1].name == "forward" and tr.phases[-1].peak_bytes == 2048


def test_budget_raises_inside_backward():
    model = transformers.LlamaForCausalLM(tiny_config())
    tr = TensorTracker()
    tr.attach(model)
    ids = ids_batch()
    with tr.phase("forward"):
        out = model(input_ids=ids, labels=ids)
    tr.budget_bytes = tr.live_bytes + 1024
    with pytest.raises(TrackerOutOfMemory) as err, tr.phase("backward"):
        out.loss.backward()
    assert err.value.phase == "backward"
    assert tr.phases[-1].peak_bytes <= tr.budget_bytes


# ---- fake tensors -------------------------------------------------------------------------------
@pytest.mark.parametrize("fake_outer", [True, False])
def test_fake_tensor_mode_either_order(fake_outer):
    tr, fake = TensorTracker(), FakeTensorMode()
    outer, inner = (fake, tr) if fake_outer else (tr, fake)
    with outer, inner:
        with tr.phase("load"):
            a = torch.empty(1000)
            b = torch.empty(10, 10, dtype=torch.float16)
            v = a[:10]
            assert type(a).__name__ == "FakeTensor"
            assert tr.live_bytes == 4000 + 200
            del a, v
            assert tr.live_bytes == 200
            model = transformers.LlamaForCausalLM(tiny_config())
            tr.attach(model)
        weights = model_bytes(model)
        train_step(tr, model)
    del b
    load, fw, bw = tr.phases
    assert load.peak_bytes >= weights + 200 and load.end_breakdown["weights"] == weights
    assert bw.end_breakdown["gradients"] == trainable_grad_bytes(model)
    assert fw.end_breakdown["activations"] > 0
    for pm in tr.phases:
        assert_sums(pm)


# ---- hooks --------------------------------------------------------------------------------------
def test_hooks_removed_on_exit_and_close():
    mod = torch.nn.modules.module
    before = (len(mod._global_forward_pre_hooks), len(mod._global_forward_hooks))
    model = torch.nn.Linear(4, 4)
    tr = TensorTracker()
    tr.attach(model)
    with tr:
        assert len(mod._global_forward_pre_hooks) == before[0] + 1
    assert (len(mod._global_forward_pre_hooks), len(mod._global_forward_hooks)) == before
    assert model.weight._post_accumulate_grad_hooks
    tr.close()
    assert not model.weight._post_accumulate_grad_hooks


# ---- leaks --------------------------------------------------------------------------------------
def test_oom_run_frees_the_model():
    """Issue 9 item 9: a forward abandoned by an OOM must not keep weights or saved activations alive.
    The saved-tensor hook returned the tensor itself: a saved output then holds its own grad_fn (a cycle
    through C++ that gc cannot see), and with it the whole graph and the parameters."""
    import gc

    from conftest import run_watching_the_model, tiny

    rec, refs = run_watching_the_model(tiny("full", "max_memory=400KiB"))
    assert rec["status"] == "oom" and rec["oom_phase"] == "forward", (rec["status"], rec.get("oom_phase"))
    gc.collect()
    assert refs and all(r() is None for r in refs), f"{sum(r() is not None for r in refs)} of {len(refs)} alive"
