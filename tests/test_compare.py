"""The regression gate: states, statistics, normalisation, fingerprints and memory."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from harness.compare import (
    Gate,
    compare,
    compare_rows,
    confirm,
    geometric_means,
    scales,
    smallest_p,
)
from harness.results import ResultSet
from harness.rows import Row

HARD = {"device": "cpu", "device_model": "Test CPU", "python": "3.11.7", "torch": "2.13.0"}


def row(key: str, times: list[float], status: str = "ok", peak: float = 10.0,
        label: str | None = None, n: int = 8, **kw: object) -> Row:
    """A synthetic row with given block times (ms) and forward peak (MiB)."""
    med = sorted(times)[len(times) // 2] if times else None
    return Row(key=key, variant=label or key, label=label or key, config={}, device="cpu",
               dtype="fp32", mode="fwd", causal=False, b=1, h=1, nq=n, nk=n, d=8,
               status=status, times_ms=tuple(times), median_ms=med, samples=len(times),
               peak_fwd_mib=peak if status == "ok" else None, **kw)


def noisy(center: float, n: int = 20, seed: int = 0) -> list[float]:
    """n samples within +-3% of center."""
    rnd = random.Random(seed)
    return [center * (1 + rnd.uniform(-0.03, 0.03)) for _ in range(n)]


def states(base: list[Row], new: list[Row], **kw: object) -> dict[str, str]:
    """key -> state of compare_rows."""
    return {v.key: v.state for v in compare_rows(base, new, **kw)}


def sides(base: list[Row], new: list[Row], new_hard: dict | None = None) -> tuple:
    """Two ResultSets with the test fingerprint (or another one for new)."""
    return (ResultSet("base", tuple(base), ("base",), HARD),
            ResultSet("new", tuple(new), ("new",), new_hard or HARD))


def test_slowdown_is_worse_and_same_is_same() -> None:
    """1.5x slower is worse; same distribution is same; exit 1."""
    base = [row("a", noisy(10, seed=1)), row("b", noisy(10, seed=2))]
    new = [row("a", noisy(15, seed=3)), row("b", noisy(10, seed=4))]
    assert states(base, new) == {"a": "worse", "b": "same"}
    assert compare(*sides(base, new)).exit_code() == 1


def test_faster_is_better_and_passes() -> None:
    """1.5x faster is better; exit 0."""
    c = compare(*sides([row("a", noisy(15, seed=1))], [row("a", noisy(10, seed=2))]))
    assert c.verdicts[0].state == "better" and c.exit_code() == 0


def test_beyond_factor_but_not_significant_is_tilde() -> None:
    """A 20% shift buried in noise is '~', never worse."""
    base = [5.0, 15.0, 8.0, 12.0, 10.0, 9.0, 11.0, 10.5]
    new = [1.2 * t for t in base]  # every sample 20% slower, ranks thoroughly mixed
    v = compare_rows([row("a", base)], [row("a", new)])[0]
    assert v.state == "~" and v.ratio > 1.1 and v.q_value >= Gate().alpha


def test_within_factor_is_same_even_if_significant() -> None:
    """A 5% shift with tight samples is significant but under the factor: same."""
    v = compare_rows([row("a", noisy(10, seed=1))], [row("a", noisy(10.5, seed=2))])[0]
    assert v.state == "same" and v.p_value < 0.01


def test_false_discovery_control_spans_the_grid() -> None:
    """q-values are Benjamini-Hochberg adjusted p-values: never below the raw p."""
    base = [row(f"k{i}", noisy(10, n=8, seed=i)) for i in range(30)]
    new = [row(f"k{i}", noisy(11.5, n=8, seed=100 + i)) for i in range(30)]
    for v in compare_rows(base, new):
        assert v.q_value >= v.p_value


def test_too_few_samples_is_inconclusive() -> None:
    """Fewer than min_samples blocks a side: inconclusive, exit 3, the reason says so."""
    base, new = [row("a", [10.0, 10.1])], [row("a", [20.0, 20.2])]
    c = compare(*sides(base, new))
    assert c.verdicts[0].state == "inconclusive" and c.exit_code() == 3
    assert "2 and 2 samples; 8 a side needed" in c.verdicts[0].reason


def test_status_transitions_new_and_gone() -> None:
    """ok -> oom is now failing; error -> ok is fixed; unmatched keys are new / gone."""
    base = [row("f", noisy(10)), row("x", [], status="error"), row("g", noisy(10))]
    new = [row("f", [], status="oom", reason="out of memory"), row("x", noisy(10)),
           row("n", noisy(10))]
    assert states(base, new) == {"f": "now failing", "x": "fixed", "g": "gone", "n": "new"}
    assert compare(*sides(base, new)).exit_code() == 1


def test_ok_to_mismatch_unavailable_or_skipped_is_now_failing() -> None:
    """Losing a measurement in any way fails; unavailable on both sides is same."""
    base = [row("m", noisy(10)), row("u", noisy(10)), row("s", noisy(10)),
            row("both", [], status="unavailable"), row("err", [], status="unavailable")]
    new = [row("m", noisy(10), status="mismatch"), row("u", [], status="unavailable"),
           row("s", [], status="skipped"), row("both", [], status="unavailable"),
           row("err", [], status="error")]
    assert states(base, new) == {"m": "now failing", "u": "now failing", "s": "now failing",
                                 "both": "same", "err": "now failing"}


def test_memory_growth_is_flagged_separately() -> None:
    """20% more peak memory with the same time is a regression; 1% is not."""
    base = [row("a", noisy(10, seed=1), peak=100.0), row("b", noisy(10, seed=3), peak=100.0)]
    new = [row("a", noisy(10, seed=2), peak=120.0), row("b", noisy(10, seed=4), peak=101.0)]
    c = compare(*sides(base, new))
    by = {v.key: v for v in c.verdicts}
    assert by["a"].state == "same" and by["a"].memory_state == "worse"
    assert by["b"].memory_state == "" and c.exit_code() == 1


def test_tiny_memory_jitter_under_the_floor_is_ignored() -> None:
    """+10% of a 0.1 MiB peak is below the 0.05 MiB floor."""
    v = compare_rows([row("a", noisy(10), peak=0.1)], [row("a", noisy(10), peak=0.11)])[0]
    assert v.memory_state == ""


def test_changed_definition_is_not_comparable() -> None:
    """Same key, different definition (semantics or REVISION): not comparable, exit 2."""
    base = [row("a", noisy(10), extra={"definition": "softmax attention; revision 0"})]
    new = [row("a", noisy(30), extra={"definition": "softmax attention; revision 1"})]
    c = compare(*sides(base, new))
    assert c.verdicts[0].state == "not comparable" and "revision 1" in c.verdicts[0].reason
    assert c.exit_code() == 2


def test_regression_outranks_not_comparable() -> None:
    """A real regression elsewhere still exits 1."""
    base = [row("a", noisy(10), extra={"definition": "x"}), row("b", noisy(10, seed=1))]
    new = [row("a", noisy(10), extra={"definition": "y"}), row("b", noisy(20, seed=2))]
    assert compare(*sides(base, new)).exit_code() == 1


def uniform_slowdown(factor: float, seed: int) -> list[Row]:
    """Three variants at two shapes; every time scaled by factor (a slower machine)."""
    rows = []
    for n in (8, 16):
        for name, ms in (("sdpa", 1.0), ("naive", 2.0), ("linear", 3.0)):
            rows.append(row(f"{name}-{n}", noisy(ms * n * factor, seed=seed + n + len(name)),
                            label=name, n=n, roof_gflops=100 / factor))
    return rows


def test_other_machine_is_not_comparable_without_the_flag() -> None:
    """Differing hard keys: every matched case is not comparable, naming the key."""
    base, new = uniform_slowdown(1.0, 0), uniform_slowdown(1.6, 50)
    c = compare(*sides(base, new, {**HARD, "device_model": "Slow CPU"}))
    assert {v.state for v in c.verdicts} == {"not comparable"} and c.exit_code() == 2
    assert "device_model: 'Test CPU' vs 'Slow CPU'" in c.verdicts[0].reason


def test_normalised_comparison_across_machines_is_sound() -> None:
    """A uniformly 1.6x slower machine: raw says worse, normalised by sdpa or roof: same."""
    base, new = uniform_slowdown(1.0, 0), uniform_slowdown(1.6, 50)
    pair = sides(base, new, {**HARD, "device_model": "Slow CPU"})
    raw = compare(*pair, across_machines=True)
    assert {v.state for v in raw.verdicts} == {"worse"}
    for reference in ("sdpa", "roof"):
        c = compare(*pair, reference=reference, across_machines=True)
        assert c.exit_code() == 0, c.counts()
        judged = [v for v in c.verdicts if v.ratio is not None]
        assert all(abs(v.ratio - 1) < 0.05 for v in judged)
    ref = {v.key: v for v in compare(*pair, reference="sdpa", across_machines=True).verdicts}
    assert ref["sdpa-8"].ratio is None and "reference" in ref["sdpa-8"].reason


def test_normalised_still_catches_a_real_regression() -> None:
    """On the slower machine, naive is also 1.5x slower in its own right: worse."""
    base, new = uniform_slowdown(1.0, 0), uniform_slowdown(1.6, 50)
    new = [replace(r, times_ms=tuple(t * 1.5 for t in r.times_ms), median_ms=r.median_ms * 1.5)
           if r.label == "naive" else r for r in new]
    c = compare(*sides(base, new, {**HARD, "device_model": "Slow CPU"}), reference="sdpa",
                across_machines=True)
    assert {v.variant for v in c.verdicts if v.state == "worse"} == {"naive"}
    assert geometric_means(c.verdicts)["naive"][0] > 1.4


def test_missing_reference_is_inconclusive() -> None:
    """No ok sdpa row at a shape: that shape cannot be normalised."""
    base = uniform_slowdown(1.0, 0)
    new = [replace(r, status="error", times_ms=(), median_ms=None) if r.key == "sdpa-16"
           else r for r in uniform_slowdown(1.0, 9)]
    found = scales(new, "sdpa")
    assert isinstance(found["naive-16"], str) and isinstance(found["naive-8"], float)
    by = {v.key: v.state for v in compare_rows(base, new, reference="sdpa")}
    assert by["naive-16"] == "inconclusive" and by["sdpa-16"] == "now failing"


def test_across_machines_does_not_excuse_other_versions() -> None:
    """Another torch blocks even across machines; --across-versions allows it."""
    base, new = uniform_slowdown(1.0, 0), uniform_slowdown(1.0, 50)
    pair = sides(base, new, {**HARD, "device_model": "Other", "torch": "2.12.0"})
    c = compare(*pair, across_machines=True)
    assert c.exit_code() == 2 and "torch: '2.13.0' vs '2.12.0'" in c.blocked
    assert "device_model" not in c.blocked
    assert compare(*pair, across_machines=True, across_versions=True).exit_code() == 0


def test_confirmation_keeps_only_reproduced_regressions() -> None:
    """worse in the first new run only is '~' after confirm; worse in both stays worse."""
    base = [row("a", noisy(10, seed=1)), row("b", noisy(10, seed=2), peak=10.0)]
    first = [row("a", noisy(15, seed=3)), row("b", noisy(15, seed=4), peak=13.0)]
    again = [row("a", noisy(10, seed=5)), row("b", noisy(15, seed=6), peak=10.0)]
    c1, c2 = compare(*sides(base, first)), compare(*sides(base, again))
    assert c1.exit_code() == 1
    done = {v.key: v for v in confirm(c1, c2, "run2").verdicts}
    assert done["a"].state == "~" and "not reproduced in run2 (same)" in done["a"].reason
    assert done["b"].state == "worse" and done["b"].memory_state == ""
    assert confirm(c1, c2, "run2").exit_code() == 1


def test_confirmation_run_that_is_not_comparable_blocks() -> None:
    """A --confirm run from another machine cannot clear anything: not comparable, exit 2."""
    base, first = [row("a", noisy(10, seed=1))], [row("a", noisy(15, seed=3))]
    c1 = compare(*sides(base, first))
    c2 = compare(*sides(base, [row("a", noisy(10, seed=5))], {**HARD, "torch": "2.12.0"}))
    done = confirm(c1, c2, "run2")
    assert done.exit_code() == 2 and done.verdicts[0].state == "not comparable"


def test_confirmation_run_missing_a_case_keeps_its_regression() -> None:
    """No evidence against a regression is no reason to drop it."""
    base = [row("a", noisy(10, seed=1)), row("b", noisy(10, seed=2))]
    c1 = compare(*sides(base, [row("a", noisy(15, seed=3)), row("b", noisy(10, seed=4))]))
    c2 = compare(*sides(base, [row("b", noisy(10, seed=6))]))
    assert confirm(c1, c2, "run2").exit_code() == 1


def test_worse_then_now_failing_is_reproduced() -> None:
    """A case worse in one run and failing in the other is a regression both times."""
    base = [row("a", noisy(10, seed=1))]
    c1 = compare(*sides(base, [row("a", noisy(15, seed=3))]))
    c2 = compare(*sides(base, [row("a", [], status="crashed")]))
    assert confirm(c1, c2, "run2").verdicts[0].state == "worse"


def test_nothing_in_common_is_not_a_pass() -> None:
    """Disjoint keys: every case new or gone, exit 2."""
    c = compare(*sides([row("a", noisy(10))], [row("b", noisy(10))]))
    assert c.matched() == 0 and c.exit_code() == 2


@pytest.mark.parametrize("bad", [0.0, float("nan"), float("inf")])
def test_zero_or_non_finite_times_are_inconclusive(bad: float) -> None:
    """A zero or NaN median or block never divides or reaches the rank test."""
    times = noisy(10)
    broken = replace(row("a", times), median_ms=bad)
    v = compare_rows([row("a", times)], [broken])[0]
    assert v.state == "inconclusive" and "not finite" in v.reason
    v = compare_rows([row("a", times)], [row("a", [*times[:-1], bad])])[0]
    assert v.state == "inconclusive"


def test_separated_but_too_few_samples_says_so() -> None:
    """8 blocks a side, fully separated, among 200 tests: BH cannot reach alpha; the reason
    says more blocks would decide instead of a silent '~'."""
    base = [row(f"k{i}", noisy(10, n=8, seed=i)) for i in range(200)]
    new = [row(f"k{i}", noisy(10, n=8, seed=300 + i)) for i in range(200)]
    new[0] = row("k0", noisy(20, n=8, seed=7))
    v = {x.key: x for x in compare_rows(base, new)}["k0"]
    assert v.state == "~" and "more blocks (min_samples) would decide" in v.reason
    assert smallest_p(8, 8) == pytest.approx(2 / 12870)


def test_changed_definition_in_an_ab_run_is_reported_not_fatal() -> None:
    """Between two revisions a changed definition is expected: reported, exit from the rest."""
    base = [row("a", noisy(10), extra={"definition": "rev 0"}), row("b", noisy(10, seed=5))]
    new = [row("a", noisy(30), extra={"definition": "rev 1"}), row("b", noisy(10, seed=6))]
    c = replace(compare(*sides(base, new)), revisions=True)
    assert c.verdicts[0].state == "not comparable" and c.exit_code() == 0
    blocked = replace(c, blocked="fingerprints differ (torch)")
    assert blocked.exit_code() == 2


@pytest.mark.parametrize(("new_err", "allowed", "expected"), [
    (5e-6, 1e-5, "less accurate"),  # 5x the error and half the allowance
    (1.5e-6, 1e-5, ""),  # grew, but by less than the factor
    (5e-6, 1e-4, ""),  # grew 5x, but still 5% of the allowance
    (0.5e-6, 1e-5, ""),  # more accurate
])
def test_accuracy_is_judged_beside_time(new_err: float, allowed: float, expected: str) -> None:
    """Oracle error past the factor and the share of its allowance is 'less accurate'."""
    checked = {"check_ok": True, "check_allowed": allowed}
    base = [row("a", noisy(10), check_max_abs=1e-6, **checked)]
    new = [row("a", noisy(10, seed=9), check_max_abs=new_err, **checked)]
    c = compare(*sides(base, new))
    v = c.verdicts[0]
    assert v.accuracy_state == expected and v.error_ratio == pytest.approx(new_err / 1e-6)
    assert v.state == "same" and c.exit_code() == 0  # reported, not a regression
    assert (c.memory_counts().get("less accurate", 0) == 1) == bool(expected)


def test_mismatch_is_a_regression_not_just_less_accurate() -> None:
    """A case whose check turned to mismatch is 'now failing' (exit 1)."""
    base = [row("a", noisy(10), check_max_abs=1e-6, check_allowed=1e-5)]
    new = [row("a", noisy(10), status="mismatch", check_max_abs=1e-3, check_allowed=1e-5)]
    c = compare(*sides(base, new))
    assert c.verdicts[0].state == "now failing" and c.exit_code() == 1


@pytest.mark.parametrize(("new_roof", "warned"), [(181.0, True), (420.0, False)])
def test_roofs_that_differ_are_warned_about(new_roof: float, warned: bool) -> None:
    """Roofs 430 vs 181 GFLOP/s (two hosts of one kind seen here): a warning; 430/420: none."""
    base = [row("a", noisy(10), roof_gflops=430.0)]
    new = [row("a", noisy(10), roof_gflops=new_roof)]
    c = compare(*sides(base, new))
    assert bool(c.warnings) == warned
    if warned:
        assert "base 430 vs new 181 GFLOP/s" in c.warnings[0] and "harness ab" in c.warnings[0]
