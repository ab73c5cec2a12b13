"""Report figures, each saved as PNG and SVG: time, peak memory, speedup and efficiency per
setting (one panel per batch size), and numerical error against the oracle for the whole run.

Adding a figure is one function here, ``fn(view: FigureView) -> Figure | str``, registered with
``@figure(name, scope=..., order=...)``; the report and its tests take it from ``FIGURES`` with
no other edit. ``scope="setting"`` (the default) draws it in every setting's section, saved as
``{name}_{setting.slug()}``; ``scope="run"`` draws it once over every row, saved as ``{name}``
in a section headed ``title``. ``order`` places it among its scope's figures (default 100:
after the built-in ones). A ``str`` returned instead of a figure says why it is not drawn, and
the report prints it in the figure's place.

Matplotlib's object API (``Figure``) is used, not pyplot: no global state, no GUI backend.
Colours are fixed per variant label across every figure of a report.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from harness.report_data import (
    CELL_STATUS,
    Setting,
    expected_mib,
    peak_mib,
    quartiles,
    safe_name,
    series,
)
from harness.report_plot import N_LABEL, empty, legend, log_axes, n_axis, panels
from harness.rows import Row
from harness.vocab import IDENTITY, MEASURED, Status

Scope = Literal["setting", "run"]


@dataclass(frozen=True)
class FigureView:
    """What every figure function is given: one setting's rows, or (run scope) all rows."""

    setting: Setting | None  # None for a run-wide figure
    rows: list[Row]
    names: dict[str, str]  # variant label -> legend text
    colour: dict[str, str]  # variant label -> colour, the same in every figure
    baseline: str  # the label speedups divide by

    def title(self) -> str:
        """The setting in words, or ``all settings`` for a run-wide figure."""
        return "all settings" if self.setting is None else self.setting.title()


Draw = Callable[[FigureView], Figure | str]


@dataclass(frozen=True)
class FigureKind:
    """A registered figure: its file-name stem, scope, place in the report and function."""

    name: str
    scope: Scope
    order: int
    draw: Draw
    title: str  # the heading of a run-wide figure's section


#: every report figure by name, filled by ``@figure``; read it through ``registered``
FIGURES: dict[str, FigureKind] = {}


def figure(name: str, scope: Scope = "setting", order: int = 100,
           title: str = "") -> Callable[[Draw], Draw]:
    """Register ``fn(view) -> Figure | str`` as the report figure ``name`` (its file stem)."""
    if scope not in ("setting", "run"):
        raise ValueError(f"figure {name!r}: scope must be 'setting' or 'run', not {scope!r}")
    if safe_name(name) != name:
        raise ValueError(f"figure name {name!r}: use letters, digits, '.', '_' or '-'")

    def register(fn: Draw) -> Draw:
        if name in FIGURES:
            raise ValueError(f"figure {name!r} is registered twice ({FIGURES[name].draw} "
                             f"and {fn})")
        FIGURES[name] = FigureKind(name, scope, order, fn, title or name)
        return fn
    return register


def registered(scope: Scope) -> list[FigureKind]:
    """The figures of one scope in report order: by ``order``, then by registration."""
    return sorted((k for k in FIGURES.values() if k.scope == scope), key=lambda k: k.order)


@figure("time", order=10)
def time_figure(view: FigureView) -> Figure:
    """Median time vs N per variant, log-log, IQR of the block times as a band."""
    rows, names, colour = view.rows, view.names, view.colour
    batches = sorted({r.b for r in rows})
    fig, axes = panels(batches, f"Median time per call vs N: {view.title()}")
    by = series(rows)
    for ax, b in zip(axes, batches, strict=True):
        mine = {label: rs for (label, bb), rs in by.items() if bb == b}
        for label, rs in mine.items():
            ns = [r.nq for r in rs]
            ax.plot(ns, [r.median_ms for r in rs], "o-", ms=3, color=colour[label],
                    label=names[label])
            q = [quartiles(r) or (r.median_ms, r.median_ms) for r in rs]
            ax.fill_between(ns, [x[0] for x in q], [x[1] for x in q], color=colour[label],
                            alpha=0.25, lw=0)
        log_axes(ax, "median time per call (ms); band: IQR of blocks",
                  [r for r in rows if r.b == b])
        if not mine:
            empty(ax)
    legend(axes[-1], outside=True)
    return fig


def _oom_marks(ax: Axes, rows: list[Row], colour: dict[str, str]) -> None:
    """OOM (and predicted-OOM skips) at their expected peak, or the top of the axis."""
    top = ax.get_ylim()[1] if ax.has_data() else 1.0
    for r in rows:
        oom = r.status == Status.OOM
        if not oom and not (r.status == Status.SKIPPED and "OOM" in r.reason.upper()):
            continue
        y = expected_mib(r) or top
        ax.plot([r.nq], [y], "X" if oom else "x", ms=9, color=colour[r.label],
                mec="black" if oom else colour[r.label])


@figure("memory", order=20)
def memory_figure(view: FigureView) -> Figure:
    """Peak MiB vs N per variant, log-log; the analytic model as a thin dashed line; OOM marked."""
    rows, names, colour = view.rows, view.names, view.colour
    batches = sorted({r.b for r in rows})
    fig, axes = panels(batches, f"Peak memory vs N: {view.title()}")
    by = series(r for r in rows if peak_mib(r))
    for ax, b in zip(axes, batches, strict=True):
        mine = {label: rs for (label, bb), rs in by.items() if bb == b}
        for label, rs in mine.items():
            ax.plot([r.nq for r in rs], [peak_mib(r) for r in rs], "o-", ms=3,
                    color=colour[label], label=names[label])
            model = [(r.nq, expected_mib(r)) for r in rs if expected_mib(r)]
            if model:
                ax.plot(*zip(*model, strict=True), "--", lw=0.8, color=colour[label])
        log_axes(ax, "peak memory above inputs (MiB)", [r for r in rows if r.b == b])
        _oom_marks(ax, [r for r in rows if r.b == b], colour)
        if not mine:
            empty(ax)
    axes[-1].plot([], [], "k--", lw=0.8, label="memory model (expected)")
    axes[-1].plot([], [], "X", color="grey", mec="black", label="OOM (at its expected peak)")
    axes[-1].plot([], [], "x", color="grey", label="skipped: predicted OOM")
    legend(axes[-1], outside=True)
    return fig


def _speedup_matrix(rows: list[Row], baseline: str, b: int) -> tuple[list[str], list[int],
                                                                   np.ndarray, list[list[str]]]:
    mine = [r for r in rows if r.b == b]
    labels = sorted({r.label for r in mine})
    ns = sorted({r.nq for r in mine})
    base = {r.nq: r.median_ms for r in mine if r.label == baseline and r.status in MEASURED}
    grid = np.full((len(labels), len(ns)), np.nan)
    text = [[""] * len(ns) for _ in labels]
    for r in mine:
        i, j = labels.index(r.label), ns.index(r.nq)
        if r.status in MEASURED and r.median_ms and r.nq in base:
            grid[i, j] = base[r.nq] / r.median_ms
            text[i][j] = f"{grid[i, j]:.2g}x"
        else:
            text[i][j] = CELL_STATUS.get(r.status, "no base") if r.status not in MEASURED \
                else f"no {baseline}"
    return labels, ns, grid, text


@figure("speedup", order=30)
def speedup_figure(view: FigureView) -> Figure | str:
    """Heatmap variant x N of baseline time / variant time, annotated (>1: faster)."""
    rows, baseline = view.rows, view.baseline
    if baseline not in {r.label for r in rows}:
        return (f"No speedup heatmap: the baseline {baseline!r} has no rows here "
                "(--baseline picks another).")
    batches = sorted({r.b for r in rows})
    n_labels = len({r.label for r in rows})
    fig = Figure(figsize=(max(5.5, 1.1 * len({r.nq for r in rows}) + 3) * len(batches),
                          0.42 * n_labels + 1.8), layout="constrained")
    axes = fig.subplots(1, len(batches), squeeze=False)[0]
    fig.suptitle(f"Speedup over {baseline} ({baseline} time / variant time): {view.title()}")
    for ax, b in zip(axes, batches, strict=True):
        labels, ns, grid, text = _speedup_matrix(rows, baseline, b)
        logs = np.log2(grid)
        span = float(np.nanmax(np.abs(logs))) if np.isfinite(logs).any() else 1.0
        image = ax.imshow(logs, cmap="RdYlGn", aspect="auto",
                          norm=TwoSlopeNorm(0.0, -max(span, 0.1), max(span, 0.1)))
        for i, j in np.ndindex(grid.shape):
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(ns)), [str(n) for n in ns])
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel(N_LABEL)
        ax.set_title(f"B={b}")
        bar = fig.colorbar(image, ax=ax, shrink=0.8)
        bar.set_label("log2 speedup (green: faster than " + baseline + ")")
    return fig


@figure("efficiency", order=40)
def efficiency_figure(view: FigureView) -> Figure:
    """Achieved GFLOP/s as % of the GEMM roof measured in the same run, vs N."""
    rows, names, colour = view.rows, view.names, view.colour
    batches = sorted({r.b for r in rows})
    fig, axes = panels(batches, f"Efficiency (% of the measured roof): {view.title()}")
    by = series(r for r in rows if r.efficiency is not None)
    roofs = sorted({round(r.roof_gflops) for r in rows if r.roof_gflops})
    for ax, b in zip(axes, batches, strict=True):
        mine = {label: rs for (label, bb), rs in by.items() if bb == b}
        for label, rs in mine.items():
            ax.plot([r.nq for r in rs], [100 * r.efficiency for r in rs], "o-", ms=3,
                    color=colour[label], label=names[label])
        n_axis(ax, [r for r in rows if r.b == b])
        ax.set_ylabel(f"% of roof ({', '.join(map(str, roofs))} GFLOP/s)")
        ax.grid(True, alpha=0.3)
        if not mine:
            empty(ax, "no efficiency (no roof or FLOP model)")
    legend(axes[-1], outside=True)
    return fig


@figure("error", scope="run", order=10, title="Numerical error against the oracle")
def error_figure(view: FigureView) -> Figure:
    """Max |error| against the float64 oracle per variant and dtype, and error / allowed."""
    colour = view.colour
    checked = [r for r in view.rows if r.check_max_abs is not None and r.check_allowed]
    labels = sorted({r.label for r in checked})
    dtypes = sorted({r.dtype for r in checked})
    fig = Figure(figsize=(max(8.0, 0.9 * len(labels) + 3), 4.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    fig.suptitle("Numerical error against the float64 oracle (worst tensor of each case)")
    markers = dict(zip(dtypes, "os^Dv", strict=False))
    for k, dtype in enumerate(dtypes):
        for i, label in enumerate(labels):
            mine = [r for r in checked if r.label == label and r.dtype == dtype]
            x = i + (k - (len(dtypes) - 1) / 2) * 0.18
            xs = np.full(len(mine), x)
            left.scatter(xs, [r.check_max_abs for r in mine], s=12, marker=markers[dtype],
                         color=colour[label])
            left.scatter(xs, [r.check_allowed for r in mine], s=60, marker="_", color="black")
            right.scatter(xs, [r.check_max_abs / r.check_allowed for r in mine], s=12,
                          marker=markers[dtype], color=colour[label])
        right.scatter([], [], marker=markers[dtype], color="grey", label=dtype)
    left.scatter([], [], marker="_", color="black", s=60, label="allowed (tolerance)")
    right.axhline(1.0, color="red", ls="--", lw=1, label="tolerance: error = allowed")
    for ax, ylabel in ((left, "max |error| (output units)"), (right, "max |error| / allowed")):
        ax.set_yscale("log")
        ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
        legend(ax) if labels else empty(ax, "no oracle checks in these rows")
    return fig


def mask_of(row: Row) -> str:
    """What a row computes, without its revision: rows of one mask share it, whichever
    variant computed them (the patterns of variants/patterns.py are described once)."""
    return str(row.extra.get("definition", "")).split("; revision")[0] or row.variant


@figure("masks", scope="run", order=20, title="Each mask: every variant that computes it")
def masks_figure(view: FigureView) -> Figure | str:
    """Forward time vs N per mask (one panel per mask and masking), each variant a line."""
    rows = [r for r in view.rows if r.mode == "fwd" and r.status in MEASURED and r.median_ms]
    if rows:
        b, dtype = min(r.b for r in rows), sorted({r.dtype for r in rows})[0]
        rows = [r for r in rows if r.b == b and r.dtype == dtype]
    groups: dict[tuple[str, bool], list[Row]] = {}
    for r in rows:
        groups.setdefault((mask_of(r), r.causal), []).append(r)
    groups = {k: rs for k, rs in groups.items() if len({r.label for r in rs}) > 1}
    if len({mask for mask, _ in groups}) < 2:
        return ("No per-mask figure: these rows hold fewer than two masks computed by more "
                "than one variant (the time figures show them).")
    fig = Figure(figsize=(5.4 * min(3, len(groups)), 4.0 * -(-len(groups) // 3)),
                 layout="constrained")
    axes = fig.subplots(-(-len(groups) // 3), min(3, len(groups)), squeeze=False).ravel()
    fig.suptitle(f"Forward time per call vs N, by mask ({dtype}, B={b})")
    for ax, ((mask, causal), mine) in zip(axes, sorted(groups.items()), strict=False):
        for label in sorted({r.label for r in mine}):
            rs = sorted((r for r in mine if r.label == label), key=lambda r: r.nq)
            ax.plot([r.nq for r in rs], [r.median_ms for r in rs], "o-", ms=3,
                    color=view.colour[label], label=view.names[label])
        log_axes(ax, "median time per call (ms)", mine)
        ax.set_title(f"{mask[:60]}{'...' if len(mask) > 60 else ''}, "
                     f"{'causal' if causal else 'full'}", fontsize=8)
        legend(ax)
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    return fig


def _twin(row: Row) -> str:
    """A row's case without torch.compile (``IDENTITY`` only): its eager twin's identity."""
    return json.dumps([getattr(row, f) for f in IDENTITY], sort_keys=True)


@figure("compile", scope="run", order=30, title="Compile time beside steady-state time")
def compile_figure(view: FigureView) -> Figure | str:
    """Cold and warm-cache compile time of each compiled case beside its steady-state time
    and, where the run has it, the same case's eager time."""
    rows = [r for r in view.rows if r.extra.get("compile_s") is not None and r.median_ms]
    if not rows:
        return "No compile figure: no compiled cases in these rows (compile=[true] adds them)."
    rows.sort(key=lambda r: (r.label, r.dtype, r.mode, r.causal, r.b, r.nq))
    eager = {_twin(r): r.median_ms / 1e3 for r in view.rows
             if not r.compile and r.median_ms and r.status in MEASURED}
    fig = Figure(figsize=(max(7.0, 0.55 * len(rows) + 3), 4.6), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(rows))
    bars = (("compile, cold (s)", [r.extra["compile_s"] for r in rows]),
            ("compile, warm cache (s)", [r.extra.get("compile_warm_s") or np.nan for r in rows]),
            ("eager call (s)", [eager.get(_twin(r), np.nan) for r in rows]),
            ("compiled call (s)", [r.median_ms / 1e3 for r in rows]))
    for i, (name, values) in enumerate(bars):
        ax.bar(x + (i - 1.5) * 0.2, values, width=0.2, label=name)
    ax.set_yscale("log")
    ax.set_xticks(x, [f"{r.label} {r.dtype} {r.mode} {'causal' if r.causal else 'full'} N={r.nq}"
                      for r in rows], rotation=40, ha="right", fontsize=7)
    ax.set_ylabel("seconds (log)")
    ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("torch.compile: compile time (outside the timed region), the eager call and "
                 "the compiled call it buys")
    legend(ax)
    return fig
