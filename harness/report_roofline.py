"""The report's roofline: each row's FLOPs per byte against both measured ceilings.

Rows carry ``bytes_moved`` (the variant's traffic model, or inputs and outputs once:
harness/roofline.py), ``gib_s``, ``attainable_gflops`` = min(GEMM roof, copy bandwidth x
intensity) and ``roofline_efficiency``; this module only reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import median

import numpy as np
from matplotlib.figure import Figure

from harness.report_figures import FigureView, figure
from harness.report_plot import empty, legend
from harness.report_text import md_table
from harness.rows import Row
from harness.vocab import IO_ONLY_BYTES, MEASURED

GIB = 2**30


def _judged(rows: Sequence[Row]) -> list[Row]:
    """Measured rows with a traffic count and a roofline."""
    return [r for r in rows if r.status in MEASURED and r.bytes_moved and r.gflops
            and r.attainable_gflops and r.copy_gib_s]


def _largest(rows: Sequence[Row]) -> list[Row]:
    """Per (setting, label): the row at the largest B, then the largest N."""
    best: dict[tuple, Row] = {}
    for r in rows:
        k = (r.device, r.dtype, r.mode, r.causal, r.h, r.d, r.label)
        if k not in best or (r.b, r.nq) > (best[k].b, best[k].nq):
            best[k] = r
    return sorted(best.values(), key=lambda r: (r.device, r.dtype, r.mode, r.causal, r.label))


def roofline_lines(rows: Sequence[Row]) -> list[str]:
    """A table per row at its setting's largest B and N: intensity, GiB/s, both ceilings."""
    judged = _largest(_judged(rows))
    if not judged:
        return []
    body = [[r.label, f"{r.dtype} {r.mode} {'causal' if r.causal else 'full'}", str(r.b),
             str(r.nq), f"{r.flops / r.bytes_moved:.3g}", f"{r.gflops:.3g}", f"{r.gib_s:.3g}",
             f"{100 * r.gib_s / r.copy_gib_s:.0f}%", f"{r.attainable_gflops:.3g}",
             f"{100 * r.roofline_efficiency:.0f}%",
             f"{100 * r.efficiency:.0f}%" if r.efficiency is not None else "",
             str(r.extra.get("bound", "")),
             "I/O only" if r.extra.get("bytes_convention") == IO_ONLY_BYTES else "own model"]
            for r in judged]
    table = md_table(["variant", "case", "B", "N", "FLOP/byte", "GFLOP/s", "GiB/s",
                      "% of copy GiB/s", "attainable GFLOP/s", "% of roofline", "% of roof",
                      "bound", "bytes"], body)
    table[1] = "|---|---|---:|---:|" + "---:|" * 7 + "---|---|"
    return ["## Roofline", "",
            "Each variant at its setting's largest B and N. FLOP/byte: the row's FLOPs over "
            "the bytes it moves (`bytes`: the variant's own traffic model, or inputs and "
            "outputs once: too few bytes, so GiB/s and % of roofline are lower bounds). "
            "Attainable: min(GEMM roof, copy bandwidth x FLOP/byte), both measured in this "
            "run; `% of roofline` judges a memory-bound row (decode) by bandwidth, `% of "
            "roof` (compute only) is kept beside it.", "", *table]


@figure("roofline", order=45)
def roofline_figure(view: FigureView) -> Figure:
    """Achieved GFLOP/s against FLOPs per byte, under the compute roof and bandwidth line."""
    rows = _judged(view.rows)
    fig = Figure(figsize=(7.0, 4.8), layout="constrained")
    ax = fig.subplots()
    fig.suptitle(f"Roofline: {view.title()}")
    if not rows:
        empty(ax, "no traffic or roof in these rows")
        return fig
    roof, bw = median(r.roof_gflops for r in rows), median(r.copy_gib_s for r in rows)
    lines: dict[tuple[str, int], list[Row]] = {}
    for r in sorted(rows, key=lambda r: r.nq):
        lines.setdefault((r.label, r.b), []).append(r)
    for (label, b), rs in sorted(lines.items()):
        ax.plot([r.flops / r.bytes_moved for r in rs], [r.gflops for r in rs],
                "o-" if b == min(r.b for r in rows) else "s--", ms=3, color=view.colour[label],
                label=f"{view.names[label]}, B={b}")
    ridge = roof / (bw * GIB / 1e9)  # FLOP/byte where the two ceilings meet
    lo = min(min(r.flops / r.bytes_moved for r in rows) / 2, ridge / 4)
    hi = max(max(r.flops / r.bytes_moved for r in rows) * 2, 4 * ridge)
    x = np.geomspace(lo, hi, 200)
    ax.plot(x, np.minimum(roof, bw * GIB / 1e9 * x), "k-", lw=1,
            label=f"roofline: {roof:.0f} GFLOP/s, {bw:.1f} GiB/s copy")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("intensity (FLOP per byte moved)")
    ax.set_ylabel("achieved GFLOP/s")
    ax.grid(True, which="both", alpha=0.3)
    legend(ax, outside=True)
    return fig
