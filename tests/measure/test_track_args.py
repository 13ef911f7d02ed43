"""`track(...)` arguments are checked when the session is made, before the user's loop runs."""

from __future__ import annotations

import pytest
import torch

from profiler.config import ConfigError
from profiler.measure.track import track


@pytest.mark.parametrize("warmup", [-1, 1001, 1.5, True, "2"])
def test_warmup_steps_outside_the_run_config_bound_is_refused(warmup):
    model = torch.nn.Linear(4, 4)
    with pytest.raises(ConfigError, match=r"warmup_steps: .* is not allowed; allowed: a whole number 0\.\.1000"):
        track(model, torch.optim.SGD(model.parameters(), lr=0.1), warmup_steps=warmup)


def test_warmup_steps_zero_is_accepted():
    model = torch.nn.Linear(4, 4)
    assert track(model, warmup_steps=0).warmup_steps == 0
