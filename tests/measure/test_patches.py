"""profiler.measure.patches.patched: attributes set inside the block, back as they were after it, also after an
exception. Run: `python -m pytest tests/measure/test_patches.py`."""

from __future__ import annotations

import types

import pytest

from profiler.measure.patches import patched


def test_patched_restores_on_exit_and_on_error():
    ns = types.SimpleNamespace(a=1, b=2)
    with patched([(ns, "a", 10), (ns, "b", 20)]):
        assert (ns.a, ns.b) == (10, 20)
    assert (ns.a, ns.b) == (1, 2)
    with pytest.raises(RuntimeError), patched([(ns, "a", 10), (ns, "a", 11)]):
        assert ns.a == 11
        raise RuntimeError("boom")
    assert ns.a == 1  # patched twice: ends as it began
