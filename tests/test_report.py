"""python -m harness report: files, valid images, table cells traced to rows, fits, robustness.

Built from the committed fixtures in tests/fixtures (tests/fixtures/make_report_fixtures.py
says how they were made and which rows were edited to carry every status). Figures are taken
from the registry (harness.report_figures.FIGURES): a newly registered one is checked here
with no edit; tests/test_report_registry.py covers the registry itself.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg

from harness.__main__ import main
from harness.report import build
from harness.report_data import crossover, group, peak_mib, scaling_slope, setting_of
from harness.report_figures import FigureView, memory_figure, registered, time_figure
from harness.report_plot import colours
from harness.report_text import legend_names
from harness.results import load
from harness.rows import Row
from harness.store import read_rows
from harness.vocab import MEASURED, Status

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RUN, SINGLE = FIXTURES / "report_run", FIXTURES / "single_n"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of the main fixture, built once."""
    out = tmp_path_factory.mktemp("report")
    return build(load([RUN]), out, "naive")


def rows() -> list[Row]:
    """The main fixture's rows."""
    return read_rows(RUN)


def check_image(path: Path) -> None:
    """A readable, non-blank PNG, or a parseable SVG document."""
    assert path.exists() and path.stat().st_size > 1000, path
    if path.suffix == ".png":
        pixels = mpimg.imread(path)
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 200 and pixels.std() > 0.01, path
    else:
        assert ET.parse(path).getroot().tag.endswith("svg"), path


def figure_names(slugs: set[str]) -> list[str]:
    """The figure file stems a report of these settings has: every registered figure that
    draws on the fixture (the others print their reason instead; see below)."""
    drawn = _drawn()
    run = [k.name for k in registered("run") if drawn[(k.name, None)]]
    return run + [f"{k.name}_{s}" for k in registered("setting") for s in sorted(slugs)
                  if drawn[(k.name, s)]]


def _drawn() -> dict[tuple[str, str | None], bool]:
    """(figure, setting slug or None) -> whether it draws on the fixture, or gives a reason."""
    from harness.report_data import group
    from harness.report_text import legend_names

    mine = rows()
    run = FigureView(None, mine, legend_names(mine), colours([r.label for r in mine]), "naive")
    out = {(k.name, None): not isinstance(k.draw(run), str) for k in registered("run")}
    for setting, rs in group(mine).items():
        view = FigureView(setting, rs, run.names, run.colour, "naive")
        out.update({(k.name, setting.slug()): not isinstance(k.draw(view), str)
                    for k in registered("setting")})
    return out


def test_a_figure_that_cannot_draw_says_why_in_the_report(report: Path) -> None:
    """Each registered figure that returns a reason on the fixture has that reason printed."""
    from harness.report_text import legend_names

    mine, text = rows(), report.read_text()
    run = FigureView(None, mine, legend_names(mine), colours([r.label for r in mine]), "naive")
    reasons = [k.draw(run) for k in registered("run")]
    for reason in (r for r in reasons if isinstance(r, str)):
        assert reason in text


def table(text: str, heading: str, caption: str) -> dict[str, list[str]]:
    """The markdown table after ``caption`` in section ``heading``: first cell -> cells."""
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = section.split(caption, 1)[1].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return {c[0]: c[1:] for c in (split_cells(ln) for ln in lines[start + 2:end])}


def split_cells(line: str) -> list[str]:
    """The cells of one markdown table line, empty ones kept."""
    return [x.strip() for x in line.strip()[1:-1].split(" | ")]


def footnote(text: str, mark: str) -> str:
    """The text of footnote ``[^n]``."""
    return re.search(rf"^\[\^{mark}\]: (.*)$", text, re.M).group(1)


def test_table_cells_come_from_the_rows(report: Path) -> None:
    """Every cell of both fwd tables is its row's number, or its status with the reason."""
    text = report.read_text()
    mine = [r for r in rows() if r.mode == "fwd"]
    ns = sorted({r.nq for r in mine})
    times = table(text, "cpu fp32 fwd full H=2 D=16", "Median time per call (ms):")
    memory = table(text, "cpu fp32 fwd full H=2 D=16", "Peak memory above the inputs")
    checked = 0
    for r in mine:
        t, m = times[f"{r.label}, B={r.b}"][ns.index(r.nq)], memory[f"{r.label}, B={r.b}"][
            ns.index(r.nq)]
        if r.status == Status.OK:
            assert (t, m) == (f"{r.median_ms:.3g}", f"{peak_mib(r):.3g}"), r.label
        elif r.status == Status.OOM:
            assert t == m == "OOM"
        else:
            mark = re.search(r"\[\^(\d+)\]", t).group(1)
            if r.status == Status.MISMATCH:
                assert t.startswith(f"{r.median_ms:.3g} mismatch")
                assert f"{r.check_max_abs:.3g} > allowed" in footnote(text, mark)
            else:
                assert t.startswith("n/a") and r.reason.split("(")[0] in footnote(text, mark)
        checked += 1
    assert checked == len(mine) == 36


def test_statuses_and_reasons_are_listed(report: Path) -> None:
    """What is missing is said: each non-ok status with its reason."""
    text = report.read_text()
    assert "naive: oom in 1 case(s): DefaultCPUAllocator" in text
    assert "naive: skipped in 1 case(s): predicted OOM" in text
    assert "linear: error in 1 case(s): RuntimeError: injected" in text
    assert "xformers: unavailable in 12 case(s): xformers 0.0.35 has no CPU kernels" in text
    assert "**Oracle mismatch** (timed, but wrong): sdpa" in text


def test_scaling_exponents_match_an_independent_fit(report: Path) -> None:
    """The table's exponent is the least-squares slope of log time on log N from the rows."""
    text = report.read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("| cpu fp32 fwd full")]
    found = {(c[2], int(c[1])): c for c in map(split_cells, lines)}
    for (label, b), cells in found.items():
        pts = sorted((r.nq, r.median_ms) for r in rows() if r.label == label and r.b == b
                     and r.mode == "fwd" and r.status in MEASURED)
        x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
        slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
        assert cells[4] == f"{slope:.2f}", (label, b)
    assert found[("linear", 1)][6] != ""  # sub-quadratic: a crossover cell
    assert found[("sdpa", 1)][6] == ""


def test_crossover_interpolates_on_log_axes() -> None:
    """Known cases: crossing at a point, between points, never, always, too few."""
    assert crossover([100, 200, 400], [2.0, 1.0, 0.5]) == "200"
    assert crossover([100, 400], [2.0, 0.5]) == "200"  # log-linear midpoint
    assert crossover([100, 200, 400], [0.5, 2.0, 0.5]) == f"{math.sqrt(200 * 400):.0f}"
    assert crossover([100, 200], [2.0, 3.0]) == "none in range"
    assert crossover([100, 200], [0.5, 0.4]) == "faster at every N (from 100)"
    assert crossover([100], [0.5]) == "needs >= 2 N"
    assert scaling_slope([100, 200, 400], [1.0, 4.0, 16.0]) == pytest.approx(2.0)
    assert scaling_slope([100], [1.0]) is None


def test_figures_have_log_axes_units_legends_and_oom_marks() -> None:
    """The time and memory figures as a reader needs them."""
    all_rows = rows()
    groups = group(all_rows)
    setting = next(s for s in groups if s.mode == "fwd")
    view = FigureView(setting, groups[setting], legend_names(all_rows),
                      colours([r.label for r in all_rows]), "naive")
    fig = time_figure(view)
    assert [ax.get_title() for ax in fig.axes] == ["B=1", "B=2"]
    for ax in fig.axes:
        assert ax.get_xscale() == ax.get_yscale() == "log" and "(ms)" in ax.get_ylabel()
        assert "(tokens)" in ax.get_xlabel()
    legend = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
    assert "naive" in legend and any(t.startswith("sparse") for t in legend)
    fig = memory_figure(view)
    b2 = fig.axes[1]
    assert "(MiB)" in b2.get_ylabel()
    assert any(line.get_marker() == "X" and list(line.get_xdata()) == [128]
               for line in b2.get_lines())  # naive's OOM at N=128, B=2
    assert any(line.get_linestyle() == "--" for line in b2.get_lines())  # memory model


def test_single_n_run_still_reports(tmp_path: Path) -> None:
    """One sequence length: a report that says so, with n/a exponents, and every figure."""
    out = build(load([SINGLE]), tmp_path, "naive")
    text = out.read_text()
    assert "Only 1 measured N ([64]): no scaling exponents or crossovers." in text
    assert "| n/a | n/a |" in text and "needs >= 2 N" in text
    slugs = {setting_of(r).slug() for r in read_rows(SINGLE)}
    pngs = {p.stem for p in (tmp_path / "figures").glob("*.png")}
    assert pngs == set(figure_names(slugs))  # every registered figure, per setting


def test_absent_baseline_says_so_and_skips_heatmaps(tmp_path: Path) -> None:
    """--baseline naming no rows: no heatmaps, and the report says why, in each section."""
    out = build(load([RUN]), tmp_path, "flash_attention_9")
    text = out.read_text()
    assert "baseline 'flash_attention_9' is not in this run" in text
    assert text.count("No speedup heatmap: the baseline 'flash_attention_9' has no rows here "
                      "(--baseline picks another).") == 2
    assert not list((tmp_path / "figures").glob("speedup_*"))


def test_cli_writes_into_the_newest_run_and_refuses_empty(tmp_path: Path, capsys) -> None:
    """No RUN: the newest run under --results-dir; nothing there: exit 2 with the reason."""
    import shutil

    shutil.copytree(SINGLE, tmp_path / "2026-01-01_00-00-00")
    shutil.copytree(RUN, tmp_path / "2026-02-01_00-00-00")
    assert main(["report", "--results-dir", str(tmp_path)]) == 0
    assert (tmp_path / "2026-02-01_00-00-00" / "report.md").exists()
    assert "report: " in capsys.readouterr().out
    assert main(["report", "--results-dir", str(tmp_path / "nothing")]) == 2
    assert "no run directories" in capsys.readouterr().err


def test_report_of_a_pytest_benchmark_file_goes_beside_it(tmp_path: Path, capsys) -> None:
    """RUN may be an exported JSON file: the report lands in a folder next to it."""
    assert main(["export", str(RUN), "--out", str(tmp_path / "x.json")]) == 0
    assert main(["report", str(tmp_path / "x.json")]) == 0
    assert (tmp_path / "report" / "report.md").exists()
