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

from collections.abc import Callable, Generator
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


def _fitting(memo: dict[int, int], limit: int) -> list[int]:
    """Evaluated values that fit and lie below every evaluated value that does not. Memory is not always monotone
    (the replayed reserve packs into 2 MiB / 20 MiB segments, kernels round seq up): a value that fits above one
    that does not is not trusted, so the answer is always an edge below the first known miss."""
    over = [v for v in memo if memo[v] > limit]
    hi = min(over) if over else None
    return sorted(v for v in memo if memo[v] <= limit and (hi is None or v < hi))


def _bracket(memo: dict[int, int], limit: int) -> tuple[int, int | None]:
    """Largest trusted value that fits (`_fitting`), smallest that does not (None when every one fits)."""
    over = [v for v in memo if memo[v] > limit]
    return _fitting(memo, limit)[-1], (min(over) if over else None)


Asks = list[int]  # values a search needs next: evaluated together (a second worker may take half)


def solve_steps(limit: int, probes: tuple[int, ...], cap: int, degree: int = 1, field_name: str = "batch_size",
                known: dict[int, int] | None = None, max_steps: int = 20, start: int | None = None,
                model: str | None = None, together: bool = False) -> Generator[Asks, dict[int, int], MaxSolution]:
    """solve_max as a generator, so a driver can run two searches side by side and simulate the points they ask
    for in two processes: it yields the values it needs next and is sent {value: needed bytes} for them.

    `start`: a first guess from elsewhere (fit's token line through the verdict and the longest sequence), which
    replaces the probe polynomial; `model` names it. `together`: ask for the probes at once, and for the
    answer's check pair (guess, guess + 1) at once, instead of one after the other (the second only where the
    first fits). The answer is the same either way; together may simulate one point more, in parallel."""
    memo: dict[int, int] = dict(known or {})

    def ask(values: list[int]) -> Generator[Asks, dict[int, int], None]:
        todo = [v for v in dict.fromkeys(values) if v not in memo]
        if todo:
            memo.update((yield todo))

    poly = f"{'affine' if degree == 1 else 'quadratic'} in {'batch' if field_name == 'batch_size' else 'seq'}"
    sol = MaxSolution(field_name, 0, False, cap, model or poly, None, memo, limit)
    ordered = sorted(p for p in probes if 1 <= p <= cap)
    if together:  # a probe above a known point over the limit could only be over too: not asked for
        over_known = min((v for v in memo if memo[v] > limit), default=None)
        yield from ask([p for p in ordered if over_known is None or p <= over_known])
    else:
        for p in ordered:
            yield from ask([p])
            if memo[p] > limit:  # a larger probe would be over too: the bracket starts here
                break
    if not _fitting(memo, limit):  # 1 is simulated only when no probe (below any miss) fits
        yield from ask([1])
        if memo[1] > limit:
            return sol
    guess = start
    if guess is None:
        # the polynomial through the degree + 1 largest points that fit and the smallest that does not
        fit_pts = _fitting(memo, limit)[-(degree + 1):]
        over = sorted(v for v in memo if memo[v] > limit)[:1]
        pts = {v: memo[v] for v in (fit_pts + over)[-(degree + 1):]} if over else {v: memo[v] for v in fit_pts}
        guess = _poly_max(pts, degree, limit, cap) if len(pts) > 1 else 1
    sol.guess = guess
    weight = {"lo": 1.0, "hi": 1.0}  # Illinois: an end kept twice in a row counts half in the next secant
    kept: str | None = None
    for _ in range(max_steps):
        lo, hi = _bracket(memo, limit)
        if hi is not None and hi == lo + 1:
            sol.value = lo
            return sol
        if lo == cap:
            sol.value, sol.capped = cap, True
            return sol
        top = hi if hi is not None else cap + 1
        if guess is None or not lo < guess < top:  # no usable model point: double, or halve the bracket
            guess = min(cap, lo * 2) if hi is None else (lo + hi) // 2
        pair = guess + 1 < top  # the model says guess is the answer: check the pair (answer + 1 over)
        yield from ask([guess, guess + 1] if together and pair else [guess])
        if memo[guess] <= limit and pair:
            yield from ask([guess + 1])
        new_lo, new_hi = _bracket(memo, limit)
        stay = None if (new_lo != lo) == (new_hi != hi) else ("hi" if new_lo != lo else "lo")
        for end in ("lo", "hi"):
            weight[end] = weight[end] / 2 if end == stay == kept else 1.0
        kept = stay
        lo, hi = new_lo, new_hi
        if hi is None:  # every point fits: extrapolate the secant through the two largest
            xs = sorted(memo)[-2:]
            slope = (memo[xs[1]] - memo[xs[0]]) / (xs[1] - xs[0]) if len(xs) == 2 else 0
            # at least lo + 1: a line that says lo + 1 is over is checked there, not by doubling lo
            guess = lo + max(1, int((limit - memo[lo]) // slope)) if slope > 0 else None
        elif hi > lo + 1:  # regula falsi inside the bracket (Illinois-weighted)
            f_lo, f_hi = (memo[lo] - limit) * weight["lo"], (memo[hi] - limit) * weight["hi"]
            guess = lo + int(-f_lo / (f_hi - f_lo) * (hi - lo)) if f_hi > f_lo else (lo + hi) // 2
            guess = max(lo + 1, min(guess, hi - 1))
    sol.value = _bracket(memo, limit)[0]
    return sol


def run_steps(steps: Generator[Asks, dict[int, int], MaxSolution], need: Callable[[int], int]) -> MaxSolution:
    """Drive one search, one need(v) after the other."""
    try:
        asks = next(steps)
        while True:
            asks = steps.send({v: need(v) for v in asks})
    except StopIteration as done:
        return done.value


def solve_max(need: Callable[[int], int], limit: int, probes: tuple[int, ...], cap: int, degree: int = 1,
              field_name: str = "batch_size", known: dict[int, int] | None = None, max_steps: int = 20
              ) -> MaxSolution:
    """Largest v in [1, cap] with need(v) <= limit, assuming need grows with v.

    `need(v)` runs one simulation (results are memoised; `known` seeds them); `probes` are the points the
    polynomial of `degree` is fitted through."""
    return run_steps(solve_steps(limit, probes, cap, degree, field_name, known, max_steps), need)
