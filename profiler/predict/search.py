"""The largest batch (or seq) that fits, from a few simulations instead of a bisection over many.

Memory at a fixed seq is affine in batch (every activation, logit and gradient buffer is b x ...; weights and
optimizer state do not move), and piecewise polynomial in seq (linear with flash / memory-efficient attention,
quadratic where s x s probabilities are kept, with small steps where kernels round seq up). So: simulate at
two (or three) probe points, fit the polynomial, solve it for the budget, then simulate at the answer and at
answer + 1. If the pair does not bracket the limit (a step the polynomial missed), the known points narrow a
bracket and the search goes on by secant / bisection inside it, every step a real simulation. The result
says which simulations checked it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class MaxSolution:
    """The answer and the simulations behind it."""

    field: str  # "batch_size" or "seq_len"
    value: int  # largest value that fits; 0 when even 1 does not
    capped: bool  # True when `cap` itself fits (value == cap)
    cap: int
    model: str  # the polynomial used for the first guess
    guess: int | None  # the polynomial's answer before checking
    needed: dict[int, int] = field(default_factory=dict)  # value -> predicted bytes, every simulation run
    limit: int = 0  # bytes the prediction had to stay under

    @property
    def simulations(self) -> int:
        return len(self.needed)

    def check_text(self, unit: int = 2**30, unit_name: str = "GiB") -> str:
        """How the answer was checked, in words."""
        short = {"batch_size": "batch", "seq_len": "seq"}[self.field]

        def at(v: int) -> str:
            return f"{short} {v} needs {self.needed[v] / unit:.2f} {unit_name}"

        head = f"{self.model} through {self.simulations} simulations"
        if self.value == 0:
            return f"{head}; {at(1)}: over the limit ({self.limit / unit:.2f} {unit_name})"
        if self.capped:
            return f"{head}; {at(self.value)} and fits: capped at {self.cap}"
        if self.value + 1 not in self.needed:
            return f"{head}; {at(self.value)} (fits); not bracketed within the step limit"
        return f"{head}; checked: {at(self.value)} (fits), {at(self.value + 1)} (does not)"


def _poly_max(points: dict[int, int], degree: int, limit: int, cap: int) -> int:
    """Largest integer v in [1, cap] with poly(v) <= limit, for the least-squares polynomial through points."""
    xs = np.array(sorted(points), dtype=float)
    ys = np.array([points[int(x)] for x in xs], dtype=float)
    deg = min(degree, len(xs) - 1)
    coef = np.polyfit(xs, ys, deg)
    lo, hi = 1, cap
    if np.polyval(coef, hi) <= limit:
        return cap
    if np.polyval(coef, lo) > limit:
        return 1
    while hi - lo > 1:  # monotone between the probes and beyond: bisection on the polynomial, no simulation
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if np.polyval(coef, mid) <= limit else (lo, mid)
    return lo


def _bracket(memo: dict[int, int], limit: int) -> tuple[int, int | None]:
    """Largest evaluated value that fits, smallest that does not (None when every one fits)."""
    over = [v for v in memo if memo[v] > limit]
    return max(v for v in memo if memo[v] <= limit), (min(over) if over else None)


def solve_max(need: Callable[[int], int], limit: int, probes: tuple[int, ...], cap: int, degree: int = 1,
              field_name: str = "batch_size", known: dict[int, int] | None = None, max_steps: int = 20
              ) -> MaxSolution:
    """Largest v in [1, cap] with need(v) <= limit, assuming need grows with v.

    `need(v)` runs one simulation (results are memoised; `known` seeds them); `probes` are the points the
    polynomial of `degree` is fitted through."""
    memo: dict[int, int] = dict(known or {})

    def at(v: int) -> int:
        if v not in memo:
            memo[v] = need(v)
        return memo[v]

    model = f"{'affine' if degree == 1 else 'quadratic'} in {'batch' if field_name == 'batch_size' else 'seq'}"
    sol = MaxSolution(field_name, 0, False, cap, model, None, memo, limit)
    if at(1) > limit:
        return sol
    for p in probes:
        if 1 <= p <= cap:
            at(p)
    guess = _poly_max({v: memo[v] for v in memo}, degree, limit, cap) if len(memo) > 1 else 1
    sol.guess = guess
    width = None  # bracket width before the last step: a step that does not halve it is followed by bisection
    for _ in range(max_steps):
        lo, hi = _bracket(memo, limit)
        if hi is not None and hi == lo + 1:
            sol.value = lo
            return sol
        if lo == cap:
            sol.value, sol.capped = cap, True
            return sol
        slow = width is not None and hi is not None and (hi - lo) * 2 > width
        width = None if hi is None else hi - lo
        if slow or guess is None or not (lo <= guess < (hi if hi is not None else cap + 1)) or \
                (guess in memo and guess + 1 in memo):
            guess = (lo + hi) // 2 if hi is not None else min(cap, lo * 2)
        if at(guess) <= limit and guess + 1 <= cap:  # the check pair: the answer fits, answer + 1 does not
            at(guess + 1)
        # next guess: the secant through the two points nearest the limit on either side
        lo, hi = _bracket(memo, limit)
        if hi is not None and hi > lo + 1:
            slope = (memo[hi] - memo[lo]) / (hi - lo)
            guess = lo + int((limit - memo[lo]) // slope) if slope > 0 else (lo + hi) // 2
            guess = max(lo, min(guess, hi - 1))
        else:
            guess = None
    fits = [v for v in memo if memo[v] <= limit]
    sol.value = max(fits)
    return sol
