"""Compare two result sets case by case: the statistical core of the regression gate.

Cases match by their full key. A case is ``worse`` only if the ratio of medians passes
``factor`` AND a two-sided Mann-Whitney U test on the per-block times is significant after
Benjamini-Hochberg control over the whole grid (``scipy.stats``); beyond the factor but not
significant is ``~``. Fewer than ``min_samples`` blocks on either side is ``inconclusive``,
never a silent pass. Peak memory is compared separately with a tight relative tolerance.

Normalised mode divides every time by a reference measured in the same run: the median of
another variant at the same shape (``sdpa``, say) or the run's measured GEMM roof. The README
says when that is sound. Sets whose fingerprints differ on a hard key are ``not comparable``
unless the caller compares across machines on purpose; so is a case whose variant
definition (semantics and REVISION) changed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from scipy import stats

from harness.results import ResultSet
from harness.rows import Row
from harness.vocab import FAILING, MEASURED, Status, describe

ROOF = "roof"  # the reference that divides by the run's measured GEMM roof
MACHINE_KEYS = frozenset({"device_model"})  # relaxed by across_machines
VERSION_KEYS = frozenset({"python", "torch", "xformers"})  # relaxed by across_versions
REGRESSION = ("worse", "now failing")
LESS_ACCURATE = "less accurate"  # reported beside the time state; a mismatch is "now failing"
#: display order, most urgent first
STATES = ("worse", "now failing", "not comparable", "inconclusive", "~", "fixed", "better",
          "new", "gone", "same")


@dataclass(frozen=True)
class Gate:
    """Thresholds of the gate."""

    factor: float = 1.10  # ratio of medians that counts as a change
    alpha: float = 0.002  # false-discovery rate over the grid (asv's p level)
    min_samples: int = 8  # per side: the fewest at which the rank test can reach alpha
    memory_tolerance: float = 0.02  # relative growth of peak memory that counts
    memory_floor_mib: float = 0.05  # ... and absolute growth (allocator granularity)
    error_factor: float = 2.0  # oracle error grown by more than this is "less accurate" ...
    error_share: float = 0.25  # ... when it also exceeds this share of the allowed error
    roof_tolerance: float = 0.15  # measured GEMM roofs further apart: warn, hosts differ


@dataclass(frozen=True)
class Verdict:
    """One matched (or unmatched) case and its state."""

    key: str
    case: str  # human-readable: label dtype mode mask B H N D
    variant: str  # the variant's label (name@preset)
    state: str
    ratio: float | None = None  # new / base of the medians (normalised when asked)
    p_value: float | None = None
    q_value: float | None = None  # Benjamini-Hochberg adjusted
    base_ms: float | None = None  # raw medians, as measured
    new_ms: float | None = None
    base_samples: int = 0
    new_samples: int = 0
    memory_ratio: float | None = None  # the larger of fwd and fwd+bwd peak ratios
    memory_state: str = ""  # "worse", "better" or ""
    error_ratio: float | None = None  # new / base of the oracle's max abs error
    accuracy_state: str = ""  # LESS_ACCURATE or ""
    reason: str = ""


def hard_differences(base: ResultSet, new: ResultSet) -> dict[str, str]:
    """Hard fingerprint keys both sets know and that differ: key -> the two values in words."""
    keys = sorted(base.hard.keys() & new.hard.keys())
    return {k: f"{k}: {base.hard[k]!r} vs {new.hard[k]!r}" for k in keys
            if base.hard[k] is not None and new.hard[k] is not None
            and base.hard[k] != new.hard[k]}


def _shape(row: Row) -> tuple[object, ...]:
    return (row.device, row.dtype, row.mode, row.causal, row.b, row.h, row.nq, row.nk, row.d)


def scales(rows: Iterable[Row], reference: str | None) -> dict[str, float | str]:
    """Per key: the factor that normalises its times, or why there is none."""
    rows = list(rows)
    if reference is None:
        return {r.key: 1.0 for r in rows}
    if reference == ROOF:
        return {r.key: r.roof_gflops if r.roof_gflops else "no measured roof in this row"
                for r in rows}
    refs = {_shape(r): r.median_ms for r in rows
            if r.label == reference and r.status == Status.OK and r.median_ms}
    return {r.key: 1.0 / refs[_shape(r)] if _shape(r) in refs
            else f"no ok {reference!r} row at this shape" for r in rows}


def _status_state(base: Row, new: Row) -> str | None:
    """States decided by statuses alone, or None when both were measured alike."""
    b_in, n_in = base.status in MEASURED, new.status in MEASURED
    if b_in and n_in:
        if base.status == Status.OK and new.status == Status.MISMATCH:
            return "now failing"
        return "fixed" if (base.status, new.status) == (Status.MISMATCH, Status.OK) else None
    if b_in:
        return "now failing"
    if n_in:
        return "fixed"
    return "now failing" if new.status in FAILING and base.status not in FAILING else "same"


def _memory(base: Row, new: Row, gate: Gate) -> tuple[float | None, str]:
    pairs = [(b, n) for b, n in ((base.peak_fwd_mib, new.peak_fwd_mib),
                                 (base.peak_fwd_bwd_mib, new.peak_fwd_bwd_mib)) if b and n]
    if not pairs:
        return None, ""
    b, n = max(pairs, key=lambda p: p[1] / p[0])
    if n > b * (1 + gate.memory_tolerance) and n - b > gate.memory_floor_mib:
        return n / b, "worse"
    low = min(pairs, key=lambda p: p[1] / p[0])
    if low[1] < low[0] / (1 + gate.memory_tolerance) and low[0] - low[1] > gate.memory_floor_mib:
        return low[1] / low[0], "better"
    return n / b, ""


def _accuracy(base: Row, new: Row, gate: Gate) -> tuple[float | None, str]:
    """(new/base max abs error, LESS_ACCURATE or ""): grown past the factor and the share."""
    b, n, allowed = base.check_max_abs, new.check_max_abs, new.check_allowed
    if b is None or n is None or not (math.isfinite(b) and math.isfinite(n)):
        return None, ""
    ratio = n / b if b > 0 else (1.0 if n == 0 else math.inf)
    if n > gate.error_factor * b and allowed and n > gate.error_share * allowed:
        return ratio, LESS_ACCURATE
    return ratio, ""


def smallest_p(n: int, m: int) -> float:
    """The smallest two-sided Mann-Whitney p-value n and m samples can give (fully separated)."""
    return float(stats.mannwhitneyu(range(n), range(n, n + m), alternative="two-sided").pvalue)


def _time_state(v: Verdict, q: float, gate: Gate, tests: int) -> tuple[str, str]:
    """(state, reason) from the ratio and the BH-adjusted q over ``tests`` tests."""
    ratio = v.ratio
    if not (ratio > gate.factor or ratio < 1 / gate.factor):
        return "same", v.reason
    if q < gate.alpha:
        return ("worse" if ratio > 1 else "better"), v.reason
    floor = smallest_p(v.base_samples, v.new_samples)
    if v.p_value <= floor * 1.0001:
        return "~", (f"samples fully separated, but {v.base_samples} and {v.new_samples} "
                     f"blocks cannot reach q < {gate.alpha:g} over {tests} tests: more blocks "
                     "(min_samples) would decide")
    return "~", v.reason


def _samples_problem(b: Row, n: Row, gate: Gate) -> str | None:
    """Why the time test cannot run on these rows, or None."""
    counts = (len(b.times_ms), len(n.times_ms))
    if min(counts) < gate.min_samples:
        note = n.extra.get("note") or b.extra.get("note") or ""
        return (f"{counts[0]} and {counts[1]} samples; {gate.min_samples} a side needed "
                f"(min_samples=) {note}").strip()
    values = [b.median_ms, n.median_ms, *b.times_ms, *n.times_ms]
    if not all(isinstance(x, int | float) and math.isfinite(x) and x > 0 for x in values):
        return "a median or block time that is missing, zero, negative or not finite"
    return None


def _judge(b: Row, n: Row, gate: Gate, scale: tuple[float | str, float | str],
           reference: str | None, blocked: str) -> Verdict:
    """A matched case's verdict; state "" with a p-value when the time test must decide."""
    common = {"key": b.key, "case": describe(n), "variant": n.label, "base_ms": b.median_ms,
              "new_ms": n.median_ms, "base_samples": len(b.times_ms),
              "new_samples": len(n.times_ms)}
    b_def, n_def = b.extra.get("definition"), n.extra.get("definition")
    if blocked or (b_def and n_def and b_def != n_def):
        why = blocked or f"variant definition changed: {b_def!r} -> {n_def!r}"
        return Verdict(**common, state="not comparable", reason=why)
    state = _status_state(b, n)
    if state is not None:
        why = f"{b.status} -> {n.status}"
        if state == "now failing" and n.reason:
            why += f": {n.reason.strip().splitlines()[0][:200]}"
        return Verdict(**common, state=state, reason=why)
    memory_ratio, memory_state = _memory(b, n, gate)
    error_ratio, accuracy_state = _accuracy(b, n, gate)
    common |= {"memory_ratio": memory_ratio, "memory_state": memory_state,
               "error_ratio": error_ratio, "accuracy_state": accuracy_state}
    if reference is not None and n.label == reference:
        return Verdict(**common, state="same", reason="the normalisation reference: not judged")
    for side, s in zip(("base", "new"), scale, strict=True):
        if isinstance(s, str):
            return Verdict(**common, state="inconclusive", reason=f"{side}: {s}")
    problem = _samples_problem(b, n, gate)
    if problem:
        return Verdict(**common, state="inconclusive", reason=problem)
    b_scale, n_scale = float(scale[0]), float(scale[1])
    ratio = (n.median_ms * n_scale) / (b.median_ms * b_scale)
    p = stats.mannwhitneyu([t * n_scale for t in n.times_ms], [t * b_scale for t in b.times_ms],
                           alternative="two-sided").pvalue
    return Verdict(**common, state="", ratio=ratio, p_value=float(p))


def _unmatched(row: Row, state: str) -> Verdict:
    ms = row.median_ms
    return Verdict(row.key, describe(row), row.label, state, reason=row.status,
                   base_ms=ms if state == "gone" else None, new_ms=ms if state == "new" else None)


def compare_rows(base: Iterable[Row], new: Iterable[Row], gate: Gate | None = None,
                 reference: str | None = None, blocked: str = "") -> list[Verdict]:
    """A verdict per case key present on either side (``blocked``: why none is comparable)."""
    gate = gate or Gate()
    old, cur = {r.key: r for r in base}, {r.key: r for r in new}
    old_scale, cur_scale = scales(old.values(), reference), scales(cur.values(), reference)
    verdicts: dict[str, Verdict] = {}
    for key in old.keys() | cur.keys():
        if key not in cur or key not in old:
            verdicts[key] = _unmatched(old[key], "gone") if key in old else _unmatched(
                cur[key], "new")
            continue
        verdicts[key] = _judge(old[key], cur[key], gate, (old_scale[key], cur_scale[key]),
                               reference, blocked)
    tested = [v for v in verdicts.values() if v.state == ""]
    if tested:
        qs = stats.false_discovery_control([v.p_value for v in tested], method="bh")
        for v, q in zip(tested, qs, strict=True):
            state, why = _time_state(v, float(q), gate, len(tested))
            verdicts[v.key] = replace(v, state=state, reason=why, q_value=float(q))
    return [verdicts[k] for k in sorted(verdicts)]


@dataclass(frozen=True)
class Comparison:
    """Every verdict, and what the comparison was made under."""

    verdicts: tuple[Verdict, ...]
    gate: Gate
    reference: str | None = None
    differences: tuple[str, ...] = ()  # hard fingerprint keys that differ, in words
    blocked: str = ""  # why nothing was compared (differences not allowed), or ""
    allowed: tuple[str, ...] = ()  # "machines", "versions": differences compared on purpose
    confirmed_by: str = ""  # the result set regressions had to reproduce in, if any
    warnings: tuple[str, ...] = ()  # what a reader must know (hosts of different speed)
    revisions: bool = False  # two revisions of the code: a changed definition is expected
    missing: tuple[str, ...] = ()  # why a side may lack cases (torn line, interrupted run)
    allow_missing: bool = False  # the user accepts incomplete inputs (--allow-missing)

    def counts(self) -> dict[str, int]:
        """Number of cases per state, in display order."""
        found = [v.state for v in self.verdicts]
        return {s: found.count(s) for s in STATES if s in found}

    def memory_counts(self) -> dict[str, int]:
        """Number of cases whose peak memory is worse or better."""
        found = [v.memory_state for v in self.verdicts if v.memory_state]
        counts = {f"memory {s}": found.count(s) for s in ("worse", "better") if s in found}
        less = sum(v.accuracy_state == LESS_ACCURATE for v in self.verdicts)
        return counts | ({LESS_ACCURATE: less} if less else {})

    def matched(self) -> int:
        """Cases present on both sides."""
        return sum(v.state not in ("new", "gone") for v in self.verdicts)

    def exit_code(self) -> int:
        """0 pass, 1 regression (time, memory or now failing), 2 not comparable (or nothing
        in common), 3 inconclusive (or an input that is not whole, unless allowed). With
        ``revisions`` (an A/B run of two revisions), cases
        whose variant definition changed are reported, not fatal."""
        states = {v.state for v in self.verdicts}
        if states & set(REGRESSION) or any(v.memory_state == "worse" for v in self.verdicts):
            return 1
        fatal = bool(self.blocked) or not self.revisions
        if ("not comparable" in states and fatal) or not self.matched():
            return 2
        if self.missing and not self.allow_missing:
            return 3
        return 3 if "inconclusive" in states else 0


def compare(base: ResultSet, new: ResultSet, gate: Gate | None = None,
            reference: str | None = None, across_machines: bool = False,
            across_versions: bool = False, allow_missing: bool = False) -> Comparison:
    """Compare two result sets; differing hard fingerprint keys block it unless allowed:
    ``across_machines`` allows another device model, ``across_versions`` other versions of
    Python, torch and xformers."""
    gate = gate or Gate()
    diffs = hard_differences(base, new)
    allowed = (MACHINE_KEYS if across_machines else set()) | (
        VERSION_KEYS if across_versions else set())
    refused = [text for key, text in diffs.items() if key not in allowed]
    blocked = "fingerprints differ (" + "; ".join(refused) + ")" if refused else ""
    verdicts = compare_rows(base.rows, new.rows, gate, reference, blocked)
    flags = ("machines",) * across_machines + ("versions",) * across_versions
    missing = tuple(f"{side}: {p}" for side, s in (("base", base), ("new", new))
                    for p in s.problems)
    return Comparison(tuple(verdicts), gate, reference, tuple(diffs.values()), blocked, flags,
                      warnings=(*roof_warnings(base, new, gate.roof_tolerance), *base.noise,
                                *new.noise), missing=missing,
                      allow_missing=allow_missing)


def median_roof(s: ResultSet) -> float | None:
    """The median GEMM roof (GFLOP/s) the set's rows measured, or its manifest's, or None."""
    values = sorted(r.roof_gflops for r in s.rows if r.roof_gflops)
    if values:
        return values[(len(values) - 1) // 2]
    return s.soft.get("roof_gflops")


def roof_warnings(base: ResultSet, new: ResultSet, tolerance: float) -> tuple[str, ...]:
    """A warning when the two sides' measured roofs differ by more than ``tolerance``."""
    b, n = median_roof(base), median_roof(new)
    if not b or not n or max(b / n, n / b) <= 1 + tolerance:
        return ()
    return (f"measured GEMM roofs differ: base {b:.0f} vs new {n:.0f} GFLOP/s ({n / b:.2f}x, "
            f"more than {tolerance:.0%}): the runs come from hosts (or host states) of "
            "different speed, so raw ratios mix the machine with the code; measure both "
            "sides in one job (python -m harness ab) or normalise (--normalise)",)


def confirm(first: Comparison, again: Comparison, name: str) -> Comparison:
    """Keep a regression of ``first`` only where ``again`` (a second new run against the same
    base) shows it too; a transient disturbance rarely hits the same case twice. A case the
    second run lacks keeps its verdict; a second run that is not comparable blocks all."""
    if again.blocked:
        why = f"confirmation run {name}: {again.blocked}"
        return replace(first, verdicts=tuple(replace(v, state="not comparable", reason=why)
                                             for v in first.verdicts), blocked=why)
    second = {v.key: v for v in again.verdicts}
    verdicts = []
    for v in first.verdicts:
        w = second.get(v.key)
        w = None if w is None or w.state == "gone" else w  # no evidence either way
        if v.state in REGRESSION and w is not None and w.state not in REGRESSION:
            v = replace(v, state="~", reason=f"{v.reason}; not reproduced in {name} "
                        f"({w.state})".lstrip("; "))
        if v.memory_state == "worse" and w is not None and w.memory_state != "worse":
            v = replace(v, memory_state="", reason=f"{v.reason}; memory growth not "
                        f"reproduced in {name}".lstrip("; "))
        verdicts.append(v)
    return replace(first, verdicts=tuple(verdicts), confirmed_by=name)


def geometric_means(verdicts: Sequence[Verdict]) -> dict[str, tuple[float, int]]:
    """Per variant: the geometric mean of its judged ratios and how many there were."""
    ratios: dict[str, list[float]] = {}
    for v in verdicts:
        if v.ratio is not None:
            ratios.setdefault(v.variant, []).append(v.ratio)
    return {name: (float(stats.gmean(r)), len(r)) for name, r in sorted(ratios.items())}
