"""Compare two sets of rows case by case: the statistical core of the regression gate.

Groundwork for ``python -m harness compare`` (issue 5; not wired to the CLI yet). Cases match
by their full key. A case is ``worse`` only if the ratio of medians passes ``factor`` AND a
two-sided Mann-Whitney U test on the per-block times is significant after Benjamini-Hochberg
control over the whole grid (``scipy.stats``); beyond the factor but not significant is ``~``.
Fewer than ``min_samples`` blocks on either side is ``inconclusive``, never a silent pass.
Peak memory is compared separately with a tight relative tolerance.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from scipy import stats

from harness.rows import Row

FAILING = frozenset({"oom", "error", "mismatch", "crashed", "timeout"})
MEASURED = frozenset({"ok", "mismatch"})


@dataclass(frozen=True)
class Gate:
    """Thresholds of the gate."""

    factor: float = 1.10  # ratio of medians that counts as a change
    alpha: float = 0.002  # false-discovery rate over the grid (asv's p level)
    min_samples: int = 6  # per side, as asv requires for its rank test
    memory_tolerance: float = 0.02  # relative growth of peak memory that counts


@dataclass(frozen=True)
class Verdict:
    """One matched (or unmatched) case and its state."""

    key: str
    label: str
    state: str  # worse better same ~ new gone "now failing" fixed inconclusive
    ratio: float | None = None  # new median / base median
    p_value: float | None = None
    q_value: float | None = None  # Benjamini-Hochberg adjusted
    memory_ratio: float | None = None
    memory_worse: bool = False
    reason: str = ""


def _status_state(base: Row, new: Row) -> str | None:
    """States decided by statuses alone, or None when both were measured."""
    if base.status in MEASURED and new.status in FAILING - {"mismatch"}:
        return "now failing"
    if base.status == "ok" and new.status == "mismatch":
        return "now failing"
    if base.status in FAILING and new.status == "ok":
        return "fixed"
    if base.status not in MEASURED or new.status not in MEASURED:
        return "same"  # e.g. unavailable or skipped on both sides
    return None


def _memory(base: Row, new: Row, gate: Gate) -> tuple[float | None, bool]:
    peaks = [(b, n) for b, n in ((base.peak_fwd_mib, new.peak_fwd_mib),
                                 (base.peak_fwd_bwd_mib, new.peak_fwd_bwd_mib)) if b and n]
    if not peaks:
        return None, False
    ratio = max(n / b for b, n in peaks)
    return ratio, ratio > 1 + gate.memory_tolerance


def _time_state(ratio: float, q: float, gate: Gate) -> str:
    beyond = ratio > gate.factor or ratio < 1 / gate.factor
    if not beyond:
        return "same"
    if q >= gate.alpha:
        return "~"
    return "worse" if ratio > 1 else "better"


def compare_rows(
    base: Iterable[Row], new: Iterable[Row], gate: Gate | None = None
) -> list[Verdict]:
    """A verdict per case key present on either side."""
    gate = gate or Gate()
    old = {r.key: r for r in base}
    cur = {r.key: r for r in new}
    verdicts: dict[str, Verdict] = {}
    tests: list[tuple[str, float, float, float | None, bool]] = []
    for key in old.keys() | cur.keys():
        if key not in cur:
            verdicts[key] = Verdict(key, old[key].label, "gone")
            continue
        if key not in old:
            verdicts[key] = Verdict(key, cur[key].label, "new")
            continue
        b, n = old[key], cur[key]
        state = _status_state(b, n)
        mem_ratio, mem_worse = _memory(b, n, gate) if state is None else (None, False)
        if state is not None:
            verdicts[key] = Verdict(key, n.label, state, reason=f"{b.status} -> {n.status}")
        elif min(len(b.times_ms), len(n.times_ms)) < gate.min_samples:
            verdicts[key] = Verdict(key, n.label, "inconclusive", memory_ratio=mem_ratio,
                                    memory_worse=mem_worse,
                                    reason=f"fewer than {gate.min_samples} samples a side")
        else:
            p = stats.mannwhitneyu(n.times_ms, b.times_ms, alternative="two-sided").pvalue
            tests.append((key, n.median_ms / b.median_ms, float(p), mem_ratio, mem_worse))
    if tests:
        qs = stats.false_discovery_control([t[2] for t in tests], method="bh")
        for (key, ratio, p, mem_ratio, mem_worse), q in zip(tests, qs, strict=True):
            state = _time_state(ratio, float(q), gate)
            verdicts[key] = Verdict(key, cur[key].label, state, ratio, p, float(q), mem_ratio,
                                    mem_worse)
    return [verdicts[k] for k in sorted(verdicts)]


def exit_code(verdicts: Iterable[Verdict]) -> int:
    """0 pass, 1 regression (time, memory or now failing), 3 inconclusive."""
    verdicts = list(verdicts)
    if any(v.state in ("worse", "now failing") or v.memory_worse for v in verdicts):
        return 1
    return 3 if any(v.state == "inconclusive" for v in verdicts) else 0
