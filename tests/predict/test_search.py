"""solve_max: the polynomial guess, the check at answer and answer + 1, and the fallback when a step hides."""

from __future__ import annotations

import pytest

from profiler.predict.search import solve_max


def counting(fn):
    calls = []

    def need(v):
        calls.append(v)
        return fn(v)

    return need, calls


def brute(fn, limit, cap):
    return max((v for v in range(1, cap + 1) if fn(v) <= limit), default=0)


@pytest.mark.parametrize("limit", [100, 1_000, 1_234, 99_999])
def test_affine_needs_four_evaluations(limit):
    need, calls = counting(lambda b: 50 + 37 * b)
    sol = solve_max(need, limit, probes=(1, 2), cap=10_000)
    assert sol.value == brute(lambda b: 50 + 37 * b, limit, 10_000)
    assert len(set(calls)) <= 4  # probes 1, 2, then the answer and answer + 1
    assert "checked" in sol.check_text(1, "B")


def test_quadratic_in_seq():
    def fn(s):
        return 1000 + 3 * s + s * s // 50

    sol = solve_max(fn, 500_000, probes=(256, 512, 1024), cap=1 << 17, degree=2, field_name="seq_len")
    assert sol.value == brute(fn, 500_000, 20_000)
    assert sol.simulations <= 7


def test_steps_the_polynomial_misses_are_found_by_the_bracket():
    """Rounding up to 128 (as flash kernels do) makes memory a staircase: the answer is still exact."""
    def fn(s):
        return 1000 + 40 * ((s + 127) // 128 * 128)

    need, calls = counting(fn)
    sol = solve_max(need, 200_000, probes=(512, 1024), cap=1 << 16, field_name="seq_len")
    assert sol.value == brute(fn, 200_000, 1 << 16)
    assert fn(sol.value) <= 200_000 < fn(sol.value + 1)
    assert len(set(calls)) <= 20  # a bisection from 2 to 65536 alone takes 15


def test_nothing_fits_and_everything_fits():
    assert solve_max(lambda b: 10 * b, 5, probes=(1, 2), cap=100).value == 0
    sol = solve_max(lambda b: 7, 10, probes=(1, 2), cap=64)
    assert (sol.value, sol.capped) == (64, True)
    assert "capped at 64" in sol.check_text(1, "B")


def test_probes_stop_at_the_first_over_the_limit():
    """batch 1 already does not fit: batch 2 is never simulated (it could only be over too)."""
    need, calls = counting(lambda b: 100 * b)
    sol = solve_max(need, 50, probes=(1, 2), cap=64)
    assert sol.value == 0 and calls == [1]
    need, calls = counting(lambda s: 10 * s)
    sol = solve_max(need, 15_000, probes=(2048, 4096), cap=1 << 16)
    assert sol.value == 1500 and 4096 not in calls


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("together", [False, True])
def test_memory_that_is_not_monotone_still_gives_an_edge_below_every_miss(seed, together):
    """A segment-packed reserve can fit at v + 2 and not at v + 1. Whatever the search meets, the answer is an
    edge (it fits, answer + 1 does not) with no simulated miss below it, reached within the step limit."""
    import random

    from profiler.predict.search import run_steps, solve_steps

    rng = random.Random(seed)
    bumps = {v for v in range(2, 300) if rng.random() < 0.08}  # values whose need jumps over the limit

    def need(v):
        return 10**9 if v in bumps else 1000 + 37 * v

    limit = 1000 + 37 * 250
    sol = run_steps(solve_steps(limit, (1, 2), 1000, together=together), need)
    assert sol.value >= 1 and need(sol.value) <= limit < need(sol.value + 1)
    assert sol.value + 1 in sol.needed and "checked" in sol.check_text(1, "B")
    assert all(n <= limit for v, n in sol.needed.items() if v < sol.value)
