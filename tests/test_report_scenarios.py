"""The per-mask and compile figures draw from rows alone: rows of one mask from different
variants share a panel; compiled rows show compile time beside steady-state time."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from matplotlib.figure import Figure

from harness.report_figures import FigureView, compile_figure, mask_of, masks_figure
from harness.report_plot import colours
from harness.report_text import legend_names, variant_lines
from harness.rows import Row
from harness.store import read_rows

RUN = Path(__file__).resolve().parent / "fixtures" / "report_run"
WINDOW = "sparse softmax (sliding window |i-j|<=2 (causal: i-2<=j<=i), diagonal included)"


def _view(rows: list[Row]) -> FigureView:
    return FigureView(None, rows, legend_names(rows), colours([r.label for r in rows]), "naive")


def _as(row: Row, label: str, definition: str, **extra: object) -> Row:
    """The row relabelled as another variant computing ``definition``."""
    return replace(row, label=label, variant=label.partition("+")[0],
                   extra={**row.extra, "definition": f"{definition}; revision 0", **extra})


def test_rows_of_one_mask_from_several_variants_share_a_panel() -> None:
    """Two masks, each computed by two variants: one panel each, a line per variant."""
    base = [r for r in read_rows(RUN) if r.label == "naive" and r.mode == "fwd"
            and r.status == "ok"]
    rows = [*base, *(_as(r, "sdpa", "softmax attention") for r in base),
            *(_as(r, "sparse", WINDOW) for r in base), *(_as(r, "flex@window", WINDOW)
                                                         for r in base)]
    assert mask_of(rows[-1]) == WINDOW
    fig = masks_figure(_view(rows))
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 2
    assert sorted(len(ax.get_lines()) for ax in panels) == [2, 2]


def test_one_mask_only_gives_a_reason_not_a_figure() -> None:
    """Rows of plain softmax attention only: the figure says why it is not drawn."""
    rows = [r for r in read_rows(RUN) if r.label in ("naive", "sdpa")]
    assert masks_figure(_view(rows)).startswith("No per-mask figure")


def test_compile_figure_shows_cold_warm_eager_and_compiled() -> None:
    """Four bars per compiled row: compile cold and warm, the eager twin's call (the same
    case without compile, where the run has it), the compiled call; no compiled rows: a
    reason."""
    base = [r for r in read_rows(RUN) if r.label == "naive" and r.status == "ok"][:3]
    assert isinstance(compile_figure(_view(base)), str)
    compiled = [replace(_as(r, "naive+compile", "softmax attention", compile_s=12.5,
                            compile_warm_s=1.5), compile=True, median_ms=r.median_ms / 4)
                for r in base]
    fig = compile_figure(_view([*base[:2], *compiled]))
    assert isinstance(fig, Figure)
    bars = {c.get_label(): [p.get_height() for p in c.patches] for c in fig.axes[0].containers}
    assert len(bars) == 4 and all(len(h) == len(compiled) for h in bars.values())
    assert bars["eager call (s)"][:2] == [r.median_ms / 1e3 for r in base[:2]]
    assert bars["eager call (s)"][2] != bars["eager call (s)"][2]  # NaN: no eager twin
    assert bars["compiled call (s)"] == [r.median_ms / 1e3 for r in compiled]


def test_the_variant_table_says_how_flops_count() -> None:
    """Each variant's FLOP convention, from the rows (older rows: not recorded)."""
    row = next(r for r in read_rows(RUN) if r.label == "naive")
    marked = replace(row, extra={**row.extra, "flops_convention": "all Nq x Nk pairs"})
    assert "all Nq x Nk pairs" in "\n".join(variant_lines([marked]))
    assert "(not recorded)" in "\n".join(variant_lines([row]))
