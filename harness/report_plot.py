"""The report's plotting helpers: a fixed colour per variant, saving as PNG and SVG, panels per
batch size, log axes over N, legends. Figures themselves live in harness/report_figures.py.

Matplotlib's object API (``Figure``) is used, not pyplot: no global state, no GUI backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from harness.report_data import safe_name
from harness.rows import Row

N_LABEL = "sequence length N (tokens)"
#: tab10, then the darker of tab20b's pairs: 20 distinct colours (the masks preset has 15
#: labels; "#8c564b", once here, was tab10's own brown C5)
PALETTE = [f"C{i}" for i in range(10)] + [
    "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173",
    "#5254a3", "#8ca252", "#bd9e39", "#ad494a", "#a55194"]


def colours(labels: Sequence[str]) -> dict[str, str]:
    """A fixed colour per variant label."""
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(sorted(set(labels)))}


def save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """Write the figure as PNG and SVG; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{safe_name(name)}.png", out_dir / f"{safe_name(name)}.svg"]
    for path in paths:  # never outside out_dir, whatever the name was built from
        if path.resolve().parent != out_dir.resolve():
            raise ValueError(f"figure {name!r} would be written outside {out_dir}")
    fig.savefig(paths[0], dpi=110, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None})
    return paths


def panels(batches: list[int], title: str, width: float = 5.2) -> tuple[Figure, list[Axes]]:
    """A figure with one panel per batch size, titled."""
    fig = Figure(figsize=(width * len(batches), 4.2), layout="constrained")
    axes = fig.subplots(1, len(batches), squeeze=False)[0]
    fig.suptitle(title)
    for ax, b in zip(axes, batches, strict=True):
        ax.set_title(f"B={b}")
    return fig, list(axes)


def empty(ax: Axes, what: str = "no measured rows") -> None:
    """Say in the panel that it has nothing to show."""
    ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes, color="grey")


def n_axis(ax: Axes, rows: list[Row]) -> None:
    """Log-2 N axis ticked at the measured N, written out (256, not 2^8)."""
    ax.set_xscale("log", base=2)
    ns = sorted({r.nq for r in rows})
    if ns:
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(N_LABEL)


def log_axes(ax: Axes, ylabel: str, rows: list[Row]) -> None:
    """Log-log axes over the measured N."""
    n_axis(ax, rows)
    ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)


def legend(ax: Axes, outside: bool = False) -> None:
    """A legend inside the axes, or outside to the right (many variants on a line plot)."""
    if not ax.get_legend_handles_labels()[0]:
        return
    if outside:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=7, loc="best")
