"""fit_searches: the verdict and the longest sequence first, the token line as the batch search's first guess,
and the same answers as a brute force over every value, alone or two points at a time."""

from __future__ import annotations

import pytest

from profiler.config import load_config
from profiler.predict.fit import Predictor, fit_searches, modelled_allowance

CAP = 2048  # tiny-llama's max_position_embeddings: the longest sequence the search may answer


def tiny(batch: int = 1, seq: int = 64):
    return load_config(None, [f"train.batch_size={batch}", f"train.seq_len={seq}", "train.steps=1"],
                       base={"model": {"arch": "tiny-llama"}, "regime": {"kind": "full"}, "device": "cuda"})


class Analytic(Predictor):
    """A predictor whose 'simulation' is a formula of (batch, seq): the search logic alone, in milliseconds."""

    def __init__(self, fn, usable: int, kernel: str = "flash"):
        super().__init__(modelled_allowance(), usable)
        self.fn, self.kernel, self.asked = fn, kernel, []

    def record(self, cfg):
        key = cfg.config_hash()
        if key not in self.records:
            self.asked.append((cfg.train.batch_size, cfg.train.seq_len))
            self.records[key] = {"attention_kernel": self.kernel, "need": self.fn(cfg.train.batch_size,
                                                                                   cfg.train.seq_len)}
        return self.records[key]

    def needed(self, cfg) -> int:
        return self.record(cfg)["need"]


def brute(fn, limit: int, cap: int) -> int:
    return max((v for v in range(1, cap + 1) if fn(v) <= limit), default=0)


def linear(b: int, s: int) -> int:
    return 5_000 + 3 * b * s


def quadratic(b: int, s: int) -> int:
    return 5_000 + b * (3 * s + s * s // 50)


def staircase(b: int, s: int) -> int:  # kernels that round seq up to 128, allocator segments of 2 KiB
    return 5_000 + 2048 * -(-(3 * b * ((s + 127) // 128 * 128)) // 2048)


@pytest.mark.parametrize("together", [False, True])
def test_where_the_longest_sequence_fits_two_simulations_answer_it_and_the_token_line_guesses_batch(together):
    pred = Analytic(linear, usable=200_000)
    pred.record(tiny())  # the verdict, simulated before the searches
    batch, seq = fit_searches(pred, tiny(), together)
    assert (seq.value, seq.capped) == (CAP, True) and seq.simulations == 2
    assert batch.value == brute(lambda b: linear(b, 64), 200_000, 4096)
    assert batch.model.startswith("affine in tokens") and "checked" in batch.check_text(1, "B")
    assert len(pred.asked) == 4  # verdict, longest sequence, the answer and answer + 1: no probe


@pytest.mark.parametrize("fn,kernel", [(linear, "flash"), (quadratic, "eager"), (staircase, "flash")])
@pytest.mark.parametrize("usable", [30_000, 60_000, 500_000])
@pytest.mark.parametrize("together", [False, True])
def test_answers_equal_a_brute_force(fn, kernel, usable, together):
    pred = Analytic(fn, usable, kernel)
    pred.record(tiny(batch=2))
    batch, seq = fit_searches(pred, tiny(batch=2), together)
    assert batch.value == brute(lambda b: fn(b, 64), usable, 4096)
    assert seq.value == brute(lambda s: fn(2, s), usable, CAP)
    assert len(pred.asked) <= 24


def test_together_asks_for_the_same_answers_in_no_more_rounds():
    alone, both = Analytic(staircase, 60_000), Analytic(staircase, 60_000)
    for p in (alone, both):
        p.record(tiny())
    a, b = fit_searches(alone, tiny(), False), fit_searches(both, tiny(), True)
    assert [s.value for s in a] == [s.value for s in b]
    assert set(alone.asked) <= set(both.asked)


@pytest.mark.parametrize("together", [False, True])
def test_a_verdict_that_does_not_fit_skips_the_longest_sequence_and_every_probe_above_it(together):
    pred = Analytic(linear, usable=5_100)
    pred.record(tiny())
    batch, seq = fit_searches(pred, tiny(), together)
    assert (1, CAP) not in pred.asked
    assert (2, 64) not in pred.asked and (1, 128) not in pred.asked  # over at (1, 64): larger can only be over
    assert batch.value == 0 and seq.value == brute(lambda s: linear(1, s), 5_100, CAP)
