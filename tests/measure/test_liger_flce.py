"""The torch mirror of Liger's fused linear cross-entropy (profiler/measure/liger_flce.py): its chunk size is
Liger's, it allocates the tensors Liger's source allocates (shapes, dtypes), it computes torch's cross-entropy and
its gradients on real CPU tensors, and `train.loss: liger` is refused, in one line naming the key and the allowed
values, where Liger's fused loss does not run. Run: `python -m pytest tests/measure/test_liger_flce.py`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from profiler.config import ConfigError, load_config
from profiler.liger import liger_chunk_size
from profiler.measure.liger_flce import LigerFLCEMirror, liger_causal_lm_loss


@pytest.mark.parametrize(("bt", "h", "v", "chunk"), [
    (4096 * 4, 4096, 32000, 2048),  # the example in liger's own comment (fused_linear_cross_entropy.py:46)
    (4096, 4096, 128256, 128),  # Llama-3: inc_factor 32
    (8 * 8192, 3584, 152064, 2048),  # Qwen2.5-7B, 8 x 8192 tokens: inc_factor 43, cdiv -> 1525 -> 2048
    (512, 64, 512, 64),  # tiny-llama: inc_factor 8
    (1, 4096, 128256, 1),
])
def test_chunk_size_is_liger_s(bt, h, v, chunk):
    assert liger_chunk_size(bt, h, v) == chunk


class _Allocs(TorchDispatchMode):
    """Every op's tensor outputs, as (op name, shape, dtype), in order."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, tuple, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.seen.append((func.__name__, tuple(t.shape), t.dtype))
        return out


def test_mirror_allocates_liger_s_tensors():
    """Liger's forward for BT=96, H=16, V=200 (chunk 8): grad_input zeros_like(input) (:55), grad_weight
    zeros_like(weight) in its dtype (:60), loss_1d fp32 (:69), per chunk an 8 x 200 logits chunk (:96)."""
    bt, h, v = 96, 16, 200
    x = torch.randn(bt, h, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(v, h, dtype=torch.bfloat16, requires_grad=True)
    target = torch.randint(0, v, (bt,))
    with _Allocs() as rec:
        LigerFLCEMirror.apply(x, w, target)
    seen = rec.seen
    assert seen[0] == ("zeros_like.default", (bt, h), torch.bfloat16)
    assert seen[1] == ("zeros_like.default", (v, h), torch.bfloat16)
    assert seen[2] == ("zeros.default", (bt,), torch.float32)
    logits = [s for s in seen if s[0] == "mm.default" and s[1] == (8, v)]
    assert len(logits) == bt // 8  # one logits chunk per 8 tokens, never (BT, V)
    assert not any(s[1] == (bt, v) for s in seen)


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_mirror_is_torch_cross_entropy_on_real_tensors(softcap):
    torch.manual_seed(0)
    x = torch.randn(37, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 50, (37,))
    t[3] = -100
    loss = LigerFLCEMirror.apply(x, w, t, None, softcap)
    (2 * loss).backward()
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    z = x2 @ w2.t()
    ref = F.cross_entropy(softcap * torch.tanh(z / softcap) if softcap else z, t)
    (2 * ref).backward()
    assert loss.dtype == torch.float32  # loss_1d is fp32 (:69)
    assert torch.allclose(loss.double(), ref, rtol=1e-6)
    assert torch.allclose(x.grad, x2.grad, atol=1e-7) and torch.allclose(w.grad, w2.grad, atol=1e-7)


def test_causal_lm_loss_shifts_like_the_model():
    """LigerForCausalLMLoss pads the labels with -100 and shifts them (loss_utils.py:77-78): the model's own loss."""
    torch.manual_seed(1)
    hidden = torch.randn(2, 9, 8, dtype=torch.float64)
    w = torch.randn(30, 8, dtype=torch.float64)
    labels = torch.randint(0, 30, (2, 9))
    logits = hidden @ w.t()
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 30), labels[:, 1:].reshape(-1))
    assert torch.allclose(liger_causal_lm_loss(hidden, w, labels, 8).double(), ref, rtol=1e-6)


def _liger(**over):
    base = {"model": {"arch": "tiny-llama"}, "device": "cuda", "recipe": "trainer", "regime": {"kind": "lora"},
            "train": {"loss": "liger"}}
    for k, v in over.items():
        base[k] = v
    return load_config(None, [], base=base)


@pytest.mark.parametrize(("over", "says"), [
    ({"regime": {"kind": "inference"}}, "allowed with regime.kind inference: full"),
    ({"device": "cpu"}, "allowed with device cpu: full, chunked"),
    ({"recipe": "trl"}, "allowed with recipe trl: chunked, full"),
    ({"model": {"arch": "gpt2"}}, "no patch for model type 'gpt2'"),
    ({"model": {"arch": "pythia-6.9b"}}, "no patch for model type 'gpt_neox'"),
])
def test_liger_refused_where_it_does_not_run(over, says):
    with pytest.raises(ConfigError) as err:
        _liger(**over)
    msg = str(err.value)
    assert "train.loss" in msg and says in msg and "\n" not in msg


def test_liger_accepted_for_patched_families():
    for arch in ("tiny-llama", "qwen2.5-7b", "mistral-7b", "gemma-2-9b", "phi-3-mini", "mixtral-8x7b"):
        assert _liger(model={"arch": arch}).train.loss == "liger"
