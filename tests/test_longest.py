"""How long can I go: the search brackets and bisects on measured probes, never on the model;
a real search's rows give the report's table."""

from __future__ import annotations

import json

import pytest

import variants as registry
from harness.cases import Case
from harness.footprint import MIB, held_bytes
from harness.longest import first_guess, search, templates, with_n
from harness.report_longest import longest_table
from harness.rows import Row
from harness.specs import default_specs
from harness.vocab import Status
from tests.conftest import run_harness

SPECS = default_specs(registry.load_all())
NAIVE = next(s for s in SPECS if s.label == "naive")


def _case(n: int = 64) -> Case:
    return Case(NAIVE, "cpu", "fp32", "fwd", False, 1, 1, n, n, 16)


def _probe_with_limit(limit: int, seen: list[int]):
    """A fake probe: fits (1 MiB held) up to ``limit``, out of memory beyond."""
    def probe(case: Case) -> Row:
        seen.append(case.nq)
        ok = case.nq <= limit
        return Row(key=case.key(), variant="naive", label="naive", config={}, device="cpu",
                   dtype="fp32", mode="fwd", causal=False, b=1, h=1, nq=case.nq, nk=case.nq,
                   d=16, status=Status.OK if ok else Status.OOM,
                   peak_fwd_mib=0.5 if ok else None)
    return probe


@pytest.mark.parametrize("guess, limit", [(1024, 3000), (65536, 3000), (16, 100000),
                                          (1024, 8)])
def test_search_brackets_then_bisects_to_the_resolution(guess, limit) -> None:
    """From any guess, up by doubling or down by halving, then bisection: the answer is the
    longest probed N that fit, within the resolution of the limit."""
    seen: list[int] = []
    answer = search(_case(), 100.0 * MIB, _probe_with_limit(limit, seen), guess=guess,
                    max_n=65536, resolution=64)
    if limit < 16:
        assert answer.longest == 0 and answer.too_long == 16
        return
    assert answer.longest <= limit and answer.longest in seen
    if limit < 65536:
        assert answer.too_long is not None and answer.too_long - answer.longest <= 64
        assert answer.too_long > limit
    else:
        assert answer.longest == 65536 and answer.too_long is None
    assert len(seen) == len(set(seen)) and len(seen) < 20


def test_the_first_guess_follows_the_memory_model() -> None:
    """The largest power of two the model predicts within the budget."""
    def predicted(case: Case) -> int:
        return case.nq * case.nq * 4

    assert first_guess(_case(), 4 * 1024 * 1024, predicted, 1 << 20) == 1024
    assert first_guess(_case(), 4 * 1024 * 1024, lambda c: None, 1 << 20) == 1024
    assert first_guess(_case(), 4 * 1024 * 1024, predicted, 256) == 256


def test_one_template_per_series() -> None:
    """Cases differing only in N are one series."""
    cases = [_case(64), _case(128), Case(NAIVE, "cpu", "fp32", "fwd", True, 1, 1, 64, 64, 16)]
    assert len(templates(cases)) == 2 and with_n(cases[0], 512).nq == 512


def test_a_real_search_stores_its_probes_and_the_report_table(harness_env, tmp_path) -> None:
    """sweep sweep=longest at an 8 MiB budget: naive stops far shorter than sdpa; every
    answer is a row whose held bytes fit; the report shows the table."""
    run = tmp_path / "run"
    done = run_harness(["sweep", "sweep=longest", "variants=[naive,sdpa]", "modes=[fwd]",
                        "memory_budget_mib=8", "longest_max_n=8192", "check=false",
                        "min_run_time=0.01", f"run_dir={run}"], harness_env)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((run / "manifest.json").read_text())
    answers = {a["case"].split()[0]: a for a in manifest["longest"]["answers"]}
    assert 0 < answers["naive"]["longest"] < answers["sdpa"]["longest"]
    rows = [Row.from_dict(json.loads(line)) for line in (run / "rows.jsonl").open()]
    best = {r.label: r for r in rows if r.nq == answers[r.label]["longest"]}
    assert all(held_bytes(r) <= 8 * MIB for r in best.values())
    table = longest_table(rows, 8)
    assert [line[5] for line in table] == [str(answers["naive"]["longest"]),
                                          str(answers["sdpa"]["longest"])]
    done = run_harness(["report", str(run)], harness_env)
    assert done.returncode == 0 and "## How long can I go?" in (run / "report.md").read_text()
