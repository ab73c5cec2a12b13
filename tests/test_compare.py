"""The compare core: states from statuses and statistics, memory, and exit codes."""

from __future__ import annotations

import random
from dataclasses import replace

from harness.compare import Gate, compare_rows, exit_code
from harness.rows import Row


def row(key: str, times: list[float], status: str = "ok", peak: float = 10.0) -> Row:
    """A synthetic row with given block times (ms) and forward peak (MiB)."""
    med = sorted(times)[len(times) // 2] if times else None
    return Row(key=key, variant="v", label=key, config={}, device="cpu", dtype="fp32",
               mode="fwd", causal=False, b=1, h=1, nq=8, nk=8, d=8, status=status,
               times_ms=tuple(times), median_ms=med, samples=len(times), peak_fwd_mib=peak)


def noisy(center: float, n: int = 20, seed: int = 0) -> list[float]:
    """n samples within +-3% of center."""
    rnd = random.Random(seed)
    return [center * (1 + rnd.uniform(-0.03, 0.03)) for _ in range(n)]


def test_slowdown_is_worse_and_same_is_same() -> None:
    """1.5x slower is worse; same distribution is same; exit 1."""
    base = [row("a", noisy(10, seed=1)), row("b", noisy(10, seed=2))]
    new = [row("a", noisy(15, seed=3)), row("b", noisy(10, seed=4))]
    states = {v.key: v.state for v in compare_rows(base, new)}
    assert states == {"a": "worse", "b": "same"}
    assert exit_code(compare_rows(base, new)) == 1


def test_faster_is_better_and_passes() -> None:
    """1.5x faster is better; exit 0."""
    v = compare_rows([row("a", noisy(15, seed=1))], [row("a", noisy(10, seed=2))])
    assert v[0].state == "better" and exit_code(v) == 0


def test_beyond_factor_but_not_significant_is_tilde() -> None:
    """A 20% shift buried in noise is '~', not worse."""
    rnd = random.Random(5)
    base = [10 * (1 + rnd.uniform(-0.8, 0.8)) for _ in range(6)]
    new = [12 * (1 + rnd.uniform(-0.8, 0.8)) for _ in range(6)]
    v = compare_rows([row("a", base)], [row("a", new)])
    assert v[0].state in ("~", "same") and exit_code(v) == 0


def test_too_few_samples_is_inconclusive() -> None:
    """Fewer than min_samples blocks a side: inconclusive, exit 3."""
    v = compare_rows([row("a", [10.0, 10.1])], [row("a", [20.0, 20.2])])
    assert v[0].state == "inconclusive" and exit_code(v) == 3


def test_status_transitions_new_and_gone() -> None:
    """ok -> oom is now failing; error -> ok is fixed; unmatched keys are new / gone."""
    base = [row("f", noisy(10)), row("x", [], status="error"), row("g", noisy(10))]
    new = [row("f", [], status="oom"), row("x", noisy(10)), row("n", noisy(10))]
    states = {v.key: v.state for v in compare_rows(base, new)}
    assert states == {"f": "now failing", "x": "fixed", "g": "gone", "n": "new"}
    assert exit_code(compare_rows(base, new)) == 1


def test_memory_growth_is_flagged_separately() -> None:
    """20% more peak memory with the same time is a regression."""
    base = row("a", noisy(10, seed=1), peak=100.0)
    new = replace(row("a", noisy(10, seed=2)), peak_fwd_mib=120.0)
    v = compare_rows([base], [new], Gate())
    assert v[0].state == "same" and v[0].memory_worse and exit_code(v) == 1
