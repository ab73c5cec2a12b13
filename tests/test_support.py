"""The support matrix agrees with what actually runs: every spec's probe case, measured,
is ``unavailable`` exactly where the matrix says no (with the same reason) and runs where it
says yes; the sweep records the matrix in its manifest and the report shows it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import variants
from harness.config import MeasureSettings
from harness.measure import measure
from harness.report_text import support_lines
from harness.specs import parse_spec
from harness.support import SCENARIOS, as_records, probe, support_matrix
from tests.conftest import run_harness

TINY = MeasureSettings(min_run_time=0.01, check=False, memory=False, roof=False)


def _specs(compiled: bool) -> list:
    """Every registered spec (defaults and presets); compiled flex only if ``compiled``."""
    registry = variants.load_all()
    labels = [name for name in registry] + [f"{name}@{p}" for name, v in registry.items()
                                            for p in v.presets]
    specs = [parse_spec(label, registry) for label in labels]
    return [s for s in specs if compiled or not getattr(s.cfg, "compiled", False)]


def _agrees(specs: list, scenarios: list[str]) -> None:
    cells = support_matrix(specs, ["cpu"], ["fp32"])
    by = {(c.label, c.scenario): c.reason for c in cells}
    wrong = []
    for spec in specs:
        for scenario in scenarios:
            row = measure(probe(spec, "cpu", "fp32", scenario), TINY)
            said = by[spec.label, scenario]
            ran = row.status != "unavailable"
            if ran == bool(said) or (said and row.reason != said) or (ran and row.status != "ok"):
                wrong.append(f"{spec.label} {scenario}: matrix {said or 'yes'!r}, "
                             f"row {row.status} {row.reason[:200]!r}")
    assert not wrong, "\n".join(wrong)


def test_matrix_agrees_with_what_runs() -> None:
    """forward, causal and backward of every spec that does not compile, on the CPU."""
    _agrees(_specs(compiled=False), ["forward", "causal", "backward"])


@pytest.mark.slow
def test_matrix_agrees_with_what_runs_compiled() -> None:
    """Every scenario of every spec, compiled flex and compile=true included (minutes)."""
    _agrees(_specs(compiled=True), list(SCENARIOS))


def test_lines_list_each_reason_once() -> None:
    """yes, or no (n) with reason n under the table; identical reasons share a number."""
    registry = variants.load_all(names=["naive", "sdpa"])
    specs = [parse_spec(label, registry) for label in ("naive", "sdpa")]
    text = "\n".join(support_lines(as_records(support_matrix(specs, ["cpu"], ["fp32"]))))
    assert "| naive | yes | yes | yes | yes |" in text
    assert "| sdpa | yes | yes | yes | no (1) |" in text
    assert "1. sdpa has no compiled mode" in text and "2. " not in text
    assert support_lines([]) == []


def test_sweep_records_it_and_the_report_and_cli_show_it(harness_env, tmp_path: Path) -> None:
    """The manifest holds the grid's matrix; report.md shows it; `support` prints it."""
    run = tmp_path / "run"
    sweep = run_harness(["sweep", "sweep=smoke", "variants=[naive,sdpa]", "seq_lens=[16]",
                         "modes=[fwd]", "causal=[false]", "min_run_time=0.01", "memory=false",
                         f"run_dir={run}"], harness_env)
    assert sweep.returncode == 0, sweep.stderr
    cells = json.loads((run / "manifest.json").read_text())["support"]
    assert {(c["label"], c["scenario"]) for c in cells} == {
        (label, s) for label in ("naive", "sdpa") for s in SCENARIOS}
    report = run_harness(["report", str(run)], harness_env)
    assert report.returncode == 0, report.stderr
    assert "## Support matrix" in (run / "report.md").read_text()
    printed = run_harness(["support", "variants=[naive,sdpa]", "dtypes=[fp32,bf16]"],
                          harness_env)
    assert printed.returncode == 0 and "**cpu bf16**" in printed.stdout
    bad = run_harness(["support", "dtypes=[fp33]"], harness_env)
    assert bad.returncode == 2 and "dtypes" in bad.stderr
