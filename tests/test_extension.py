"""Adding a variant is one module in variants/, adding a figure one decorated function: a
throwaway of each, with no other edit, is seen by sweep, check, report and the tests
parametrised over the registry."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from harness import report_figures
from harness.report import build
from harness.report_figures import FigureView, figure
from harness.results import load
from tests.conftest import ROOT, run_harness

NAME = "zz_throwaway"
MODULE = f'''
"""A throwaway variant written by tests/test_extension.py (deleted when the test ends)."""
from dataclasses import dataclass

import torch

from variants.contract import SoftmaxAttention, Supports, always_available, default_scale

NAME = "{NAME}"
PRESETS = {{}}
SUPPORTS = Supports()
unavailable_reason = always_available


@dataclass(frozen=True)
class Config:
    """No settings."""


def computes(cfg: Config) -> SoftmaxAttention:
    """Exact softmax attention."""
    return SoftmaxAttention()


def attention(q, k, v, *, causal, scale, cfg):
    """softmax(q k^T * scale) v through torch's SDPA: (B, H, Nq, D)."""
    s = default_scale(q.shape[-1], scale)
    return torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=causal and q.shape[-2] == k.shape[-2], scale=s)
'''


@pytest.fixture
def throwaway_variant() -> Iterator[Path]:
    """variants/zz_throwaway.py for the length of the test, then gone."""
    path = ROOT / "variants" / f"{NAME}.py"
    assert not path.exists(), f"{path} is left over from an earlier run"
    path.write_text(textwrap.dedent(MODULE))
    try:
        yield path
    finally:
        path.unlink()
        for cached in (ROOT / "variants" / "__pycache__").glob(f"{NAME}.*"):
            cached.unlink()


@pytest.mark.slow
def test_a_new_variant_module_and_figure_need_no_other_edit(
    throwaway_variant: Path, tmp_path: Path, harness_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The module alone puts the variant into check, a sweep's `variants: []`, the report and
    the registry-parametrised contract tests; one decorated function puts a figure into the
    report."""
    check = run_harness(["check", f"variants=[{NAME}]", "dtypes=[fp32]", "causal=[false]",
                         "backward=false"], harness_env)
    assert check.returncode == 0, check.stderr
    assert NAME in check.stdout

    run = tmp_path / "run"
    sweep = run_harness(["sweep", "sweep=smoke", "seq_lens=[16]", "modes=[fwd]",
                         "causal=[false]", "min_samples=1", "min_run_time=0.01", "memory=false",
                         "exclude=[sdpa@*,xformers@*,memory_efficient@*,sparse@*,flex*,masked@*]",
                         f"run_dir={run}"], harness_env)
    assert sweep.returncode == 0, sweep.stderr
    rows = [json.loads(line) for line in (run / "rows.jsonl").read_text().splitlines()]
    mine = [r for r in rows if r["variant"] == NAME]
    assert len(mine) == 1 and mine[0]["status"] == "ok", mine

    copy = dict(report_figures.FIGURES)
    monkeypatch.setattr(report_figures, "FIGURES", copy)

    @figure("zz_labels")
    def labels(view: FigureView) -> Figure:
        """A throwaway figure: one bar per variant label."""
        fig = Figure(figsize=(4, 3))
        names = sorted({r.label for r in view.rows})
        fig.subplots().bar(range(len(names)), [1] * len(names), tick_label=names)
        return fig

    text = build(load([run]), tmp_path / "report", "naive").read_text()
    assert NAME in text and "figures/zz_labels_" in text
    assert list((tmp_path / "report" / "figures").glob("zz_labels_*.svg"))

    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_contract.py", "tests/test_variants.py", "-k", NAME],
        cwd=ROOT, env=harness_env, capture_output=True, text=True, timeout=600)
    assert tests.returncode == 0, tests.stdout[-3000:]
    summary = tests.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary, summary

