"""How long can I go? Per series of cases (a variant spec at one dtype, mode, mask, B, ...),
the longest N whose measured peak plus inputs fits a memory budget.

The search starts from the memory model's guess (the largest power of two it predicts to fit;
1024 without a model), doubles while measured runs fit and halves while they do not, then
bisects between the longest that fit and the shortest that did not, to ``resolution``
tokens. Every probe is an ordinary case, measured by the sweep's worker and stored as a row:
the answer is a row, never a prediction. A probe that runs out of memory, crashes, or is
skipped as a predicted OOM does not fit. The report derives the table from the rows
(harness/report_longest.py), given the budget the run recorded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from harness.cases import Case
from harness.footprint import fits
from harness.rows import Row

MIN_N = 16


def with_n(case: Case, n: int) -> Case:
    """The case at context or sequence length n."""
    return dataclasses.replace(case, nq=n, nk=n)


def first_guess(case: Case, budget: float, predicted: Callable[[Case], int | None],
                max_n: int) -> int:
    """The largest power of two (>= MIN_N) whose predicted bytes fit; 1024 without a model."""
    if predicted(with_n(case, MIN_N)) is None:
        return min(1024, max_n)
    n = MIN_N
    while n * 2 <= max_n and (predicted(with_n(case, n * 2)) or 0) <= budget:
        n *= 2
    return n


@dataclass(frozen=True)
class Answer:
    """One series' result: the longest N that fit (0: none), the shortest that did not."""

    template: Case
    longest: int
    too_long: int | None  # None: fit up to max_n


def search(template: Case, budget: float, probe: Callable[[Case], Row], *, guess: int,
           max_n: int, resolution: int) -> Answer:
    """Doubling from ``guess`` then bisection; every step one measured probe."""
    good, bad = 0, None
    n = guess
    while True:  # bracket: good fits, bad does not (or max_n fits)
        if fits(probe(with_n(template, n)), budget):
            good = n
            if n >= max_n or bad is not None:
                break
            n = min(max_n, n * 2)
        else:
            bad = n
            if n <= MIN_N or good:
                break
            n = max(MIN_N, n // 2)
    while bad is not None and good and bad - good > max(resolution, 1):
        mid = (good + bad) // 2 // resolution * resolution or (good + bad) // 2
        if mid in (good, bad):
            break
        if fits(probe(with_n(template, mid)), budget):
            good = mid
        else:
            bad = mid
    return Answer(template, good, bad)


def templates(all_cases: Iterable[Case]) -> list[Case]:
    """One case per series (the first N of the grid stands for all)."""
    seen: dict[str, Case] = {}
    for case in all_cases:
        seen.setdefault(with_n(case, 1).key(), case)
    return list(seen.values())
