"""The report's figure registry and its sources of truth: a figure registered in a test (one
function, one decorator, no other edit) lands in report.md as PNG and SVG; legends read the
config diff the rows carry; report code never imports the variants.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from harness import report_figures
from harness.report import build
from harness.report_data import setting_of
from harness.report_figures import FigureView, figure, registered
from harness.report_text import legend_names
from harness.results import load
from harness.store import read_rows

ROOT = Path(__file__).resolve().parents[1]
SINGLE = ROOT / "tests" / "fixtures" / "single_n"


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> dict:
    """A copy of the figure registry for this test: what it registers is gone afterwards."""
    copy = dict(report_figures.FIGURES)
    monkeypatch.setattr(report_figures, "FIGURES", copy)
    return copy


def row_count_figure(view: FigureView) -> Figure:
    """A throwaway figure: how many rows the view holds."""
    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    ax.bar([0], [len(view.rows)])
    ax.set_title(f"{len(view.rows)} rows: {view.title()}")
    return fig


def test_a_registered_setting_figure_is_drawn_saved_and_linked(registry, tmp_path) -> None:
    """One decorated function: a PNG and SVG per setting, linked after the built-in figures."""
    seen: list[FigureView] = []

    @figure("throwaway")
    def throwaway(view: FigureView) -> Figure:
        seen.append(view)
        return row_count_figure(view)

    assert registry["throwaway"].draw is throwaway and registry["throwaway"].scope == "setting"
    text = build(load([SINGLE]), tmp_path, "naive").read_text()
    settings = sorted({setting_of(r) for r in read_rows(SINGLE)})
    assert [v.setting for v in seen] == settings
    for setting in settings:
        stem = f"throwaway_{setting.slug()}"
        assert (tmp_path / "figures" / f"{stem}.png").stat().st_size > 1000
        assert (tmp_path / "figures" / f"{stem}.svg").stat().st_size > 1000
        link = f"![throwaway: {setting.title()}](figures/{stem}.png)"
        section = text.split(f"## {setting.title()}\n", 1)[1].split("\n## ", 1)[0]
        assert link in section
        assert section.index(f"](figures/efficiency_{setting.slug()}.png)") < section.index(link)


def test_a_registered_run_figure_gets_its_section_or_its_reason(registry, tmp_path) -> None:
    """Run scope: drawn once over every row under its title; a str return is printed instead."""
    @figure("everything", scope="run", order=5, title="Every row at once")
    def everything(view: FigureView) -> Figure:
        assert view.setting is None and len(view.rows) == len(read_rows(SINGLE))
        return row_count_figure(view)

    @figure("nothing", scope="run", order=50, title="Nothing to see")
    def nothing(view: FigureView) -> str:
        return "No nothing figure: it never draws."

    text = build(load([SINGLE]), tmp_path, "naive").read_text()
    for ext in ("png", "svg"):
        assert (tmp_path / "figures" / f"everything.{ext}").stat().st_size > 1000
    assert not list((tmp_path / "figures").glob("nothing*"))
    assert "## Every row at once\n\n![everything](figures/everything.png)\n" in text
    assert "## Nothing to see\n\nNo nothing figure: it never draws.\n" in text
    heads = [ln for ln in text.splitlines() if ln.startswith("## ")]
    order = ["## Every row at once", "## Numerical error against the oracle", "## Nothing to see"]
    assert [h for h in heads if h in order] == order
    assert heads.index(order[-1]) < heads.index(f"## {setting_of(read_rows(SINGLE)[0]).title()}")


def test_registration_refuses_a_clash_a_bad_scope_and_a_path(registry) -> None:
    """A second 'time', an unknown scope or a name that is not a file stem: refused."""
    with pytest.raises(ValueError, match="registered twice"):
        figure("time")(row_count_figure)
    with pytest.raises(ValueError, match="scope"):
        figure("other", scope="variant")
    with pytest.raises(ValueError, match="figure name"):
        figure("../escape")
    built_in = ["time", "memory", "speedup", "efficiency"]  # the report's order since v1
    assert [k.name for k in registered("setting") if k.name in built_in] == built_in
    assert "error" in [k.name for k in registered("run")]


def test_legends_name_the_config_diff_rows_carry() -> None:
    """The row's config_diff when it has one (empty: the label alone); older rows: the config."""
    base = next(r for r in read_rows(SINGLE) if r.label == "sparse")
    assert base.config and "config_diff" not in base.extra  # the fixture predates the diff
    new = replace(base, label="sparse@w8",
                  extra={**base.extra, "config_diff": {"window": 8}})
    default = replace(base, label="sparse@default", extra={**base.extra, "config_diff": {}})
    bare = replace(base, label="plain", config={})
    names = legend_names([base, new, default, bare])
    assert names["sparse@w8"] == "sparse@w8 (window=8)"
    assert names["sparse@default"] == "sparse@default"
    assert names["plain"] == "plain"
    assert names["sparse"].startswith("sparse (") and "window=256" in names["sparse"]


def test_report_code_never_imports_the_variants() -> None:
    """No import of ``variants`` in the report modules, even inside a function; nor at run."""
    for path in sorted((ROOT / "harness").glob("report*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "variants" for n in names), (path.name, names)
    code = ("import sys; from pathlib import Path; import harness.report; "
            "from harness.report_text import legend_names, missing_lines, variant_lines; "
            "from harness.store import read_rows; "
            f"rows = read_rows(Path({str(SINGLE)!r})); legend_names(rows); variant_lines(rows); "
            "missing_lines(rows, 'naive'); assert 'variants' not in sys.modules, 'imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
